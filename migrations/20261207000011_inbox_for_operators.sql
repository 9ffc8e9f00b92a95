-- no-transaction
-- The provider webhooks an operator looks at (`GET /v1/provider-webhooks?state=...`,
-- `inbox list`): parked, unmatched and contradicting ones, without reading the whole inbox.
CREATE INDEX CONCURRENTLY IF NOT EXISTS provider_webhook_inbox_for_operators
    ON provider_webhook_inbox (state, received_at)
    WHERE state IN ('PARKED', 'UNMATCHED', 'CONTRADICTION');
