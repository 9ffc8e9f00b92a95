-- Provider webhooks that name the provider's own refund id (BVNK, BPN) look the refund up
-- by it. Without this index every such webhook scanned the whole refunds table: 1 ms per
-- webhook at 3,000 refunds in the benchmark, growing with the table.
CREATE INDEX refunds_by_provider_reference ON refunds (provider, provider_reference)
    WHERE provider_reference IS NOT NULL;
