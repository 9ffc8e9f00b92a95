-- Vacuum the tables the worker uses as queues as they churn, not after a fifth of them is
-- dead (PostgreSQL's default, `autovacuum_vacuum_scale_factor` 0.2).
--
-- The relay stamps every outbox row published (an UPDATE that leaves the partial index
-- `outbox_unpublished`), the dispatcher moves each refund's `next_attempt_at` a few times,
-- the inbox marks each provider webhook applied, merchant deliveries count their attempts.
-- Until VACUUM removes them, the dead index entries those updates leave sit in front of the
-- live ones the relay and the dispatcher look for (`ORDER BY id` from the oldest, `ORDER BY
-- next_attempt_at` from the earliest), so each of their scans reads past every dead entry
-- since the last vacuum: on a table of millions of rows the relay fell behind a steady
-- 500 refunds/s within three minutes with vacuum off (BENCHMARKS.md, ninth session). With
-- these settings autovacuum comes after about 1% of a table changed (plus a floor of 1,000
-- rows), and without the cost delay that would stretch a vacuum of a busy table over
-- minutes. Storage parameters only: no rewrite, a brief SHARE UPDATE EXCLUSIVE lock each.
-- They take effect only where autovacuum is on (PostgreSQL's default).
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE refunds SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE provider_webhook_inbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE webhook_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
