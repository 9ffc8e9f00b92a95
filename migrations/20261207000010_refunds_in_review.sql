-- no-transaction
-- The review queue (`GET /v1/refunds?review=true`, `refunds review`, the in-review gauge):
-- refunds flagged for review, oldest first, without reading the refunds table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS refunds_in_review
    ON refunds (review_since) WHERE review_since IS NOT NULL;
