-- no-transaction
-- A provider call is logged even when its step's claim was lost (a provider webhook
-- finished the refund first): the provider was called, and the audit trail must say so.
-- A step can then be recorded twice (a retry after a commit whose answer was lost), so a
-- call is identified by its refund, kind and start time, and logged once.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS provider_attempts_once
    ON provider_attempts (refund_reference, started_at, call);
