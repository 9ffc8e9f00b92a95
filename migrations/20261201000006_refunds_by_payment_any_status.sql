-- no-transaction
-- Webhooks that name only the payment (BPN knows refunds by their order) look refunds up
-- by (provider, transaction_reference) whatever their status. The partial index
-- `refunds_by_payment` (status <> 'REFUND_FAIL') cannot serve that, so each such webhook
-- scanned the table (31 ms at 6,000 refunds). This full index serves both that look-up and
-- the over-refund guard's sum; the next migration drops the partial one.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refunds_by_payment_any_status
    ON refunds (provider, transaction_reference);
