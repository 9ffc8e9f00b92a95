-- no-transaction
-- Retention (`RETENTION`): merchant delivery attempts are found by age through a BRIN
-- summary (attempts are logged in the order they are made; never updated).
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_attempts_by_age
    ON webhook_attempts USING brin (attempted_at);
