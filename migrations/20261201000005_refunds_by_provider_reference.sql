-- no-transaction
-- Provider webhooks that name the provider's own refund id (BVNK, BPN) look the refund up
-- by it. Without this index every such webhook scanned the whole refunds table: 1 ms per
-- webhook at 3,000 refunds in the benchmark, growing with the table.
--
-- This and the next index migrations build CONCURRENTLY, outside a transaction, one
-- statement per file: on a large refunds table a plain CREATE INDEX would block every
-- worker's writes until it finished. Should one be interrupted, drop the INVALID index it
-- leaves (`\d refunds` shows it) before starting a worker again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refunds_by_provider_reference
    ON refunds (provider, provider_reference) WHERE provider_reference IS NOT NULL;
