-- The fee a provider reports for a refund (BVNK's estimate and refund responses carry one),
-- kept on the refund as reported. Both or neither are set.
ALTER TABLE refunds
    ADD COLUMN provider_fee          NUMERIC,
    ADD COLUMN provider_fee_currency TEXT,
    ADD CONSTRAINT refunds_provider_fee_pair
        CHECK ((provider_fee IS NULL) = (provider_fee_currency IS NULL)),
    ADD CONSTRAINT refunds_provider_fee_not_negative
        CHECK (provider_fee IS NULL OR provider_fee >= 0);
