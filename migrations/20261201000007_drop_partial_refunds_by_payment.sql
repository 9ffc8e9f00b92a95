-- no-transaction
-- Superseded by refunds_by_payment_any_status.
DROP INDEX CONCURRENTLY IF EXISTS refunds_by_payment;
