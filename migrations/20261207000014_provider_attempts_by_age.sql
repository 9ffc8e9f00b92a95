-- no-transaction
-- Retention (`RETENTION`): provider calls are found by age through a BRIN summary (calls
-- are logged in about the order they start; never updated), not by walking the primary key.
CREATE INDEX CONCURRENTLY IF NOT EXISTS provider_attempts_by_age
    ON provider_attempts USING brin (started_at);
