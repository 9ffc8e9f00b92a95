-- no-transaction
-- Retention (`RETENTION`): published outbox rows are found by age, not by walking the
-- primary key (which, once the young rows start, reads the rest of the table to find none,
-- and which the planner rightly leaves for a sequential scan on a big table). BRIN on
-- `created_at`: rows arrive in time order, a row is published after it is created, the
-- summary costs a few pages for any table size, adds nothing to an insert's work, and is
-- on a column that is never updated (the relay's UPDATE stays as it was).
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_by_age
    ON outbox USING brin (created_at);
