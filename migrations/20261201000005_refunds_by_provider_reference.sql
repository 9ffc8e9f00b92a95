-- Provider webhooks that name the provider's own refund id (BVNK, BPN) look the refund up
-- by it. Without this index every such webhook scanned the whole refunds table: 1 ms per
-- webhook at 3,000 refunds in the benchmark, growing with the table.
CREATE INDEX refunds_by_provider_reference ON refunds (provider, provider_reference)
    WHERE provider_reference IS NOT NULL;

-- Webhooks that name only the payment (BPN knows refunds by their order) look refunds up
-- by (provider, transaction_reference) whatever their status; the partial index (status
-- <> 'REFUND_FAIL') could not serve that, so each such webhook scanned the table. One
-- full index serves both that look-up and the over-refund guard's sum.
DROP INDEX refunds_by_payment;
CREATE INDEX refunds_by_payment ON refunds (provider, transaction_reference);
