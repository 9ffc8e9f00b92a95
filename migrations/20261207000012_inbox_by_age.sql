-- no-transaction
-- Retention (`RETENTION`): the inbox has no serial id to walk in order, so settled rows are
-- found by age. BRIN: rows arrive in time order, so a block range summary is enough, costs
-- a few pages for any table size, and adds nothing to an insert's work.
CREATE INDEX CONCURRENTLY IF NOT EXISTS provider_webhook_inbox_by_age
    ON provider_webhook_inbox USING brin (received_at);
