-- Operator review, operator resolution and the guard's source.
--
-- A refund whose outcome no machine can settle (still unknown or pending at the provider
-- after REVIEW_AFTER, or contradicted by the provider's own webhooks) is flagged for
-- review: `review_reason` and `review_since` say why and since when. The flag never stops
-- the dispatcher: it keeps polling on a slow schedule, and a final answer clears it. An
-- operator may also resolve it by hand (failure code RESOLVED_BY_OPERATOR for a failure).
--
-- `guard_source` says what the over-refund guard judged the refund against: the command's
-- paymentAmount, the pay-ins ledger, the provider's own refundable amount (checked before
-- the refund call), or nothing.
ALTER TABLE refunds
    ADD COLUMN review_reason TEXT,
    ADD COLUMN review_since  TIMESTAMPTZ,
    ADD COLUMN guard_source  TEXT CHECK (guard_source IN ('command', 'ledger', 'provider', 'none')),
    ADD CONSTRAINT refunds_review_pair CHECK ((review_reason IS NULL) = (review_since IS NULL));

-- One more failure code. NOT VALID: every existing row satisfied the narrower list, and
-- validating would read the whole table under the migration's lock.
ALTER TABLE refunds DROP CONSTRAINT refunds_failure_code_check;
ALTER TABLE refunds ADD CONSTRAINT refunds_failure_code_check
    CHECK (failure_code IN ('INVALID_COMMAND', 'AMOUNT_EXCEEDS_REFUNDABLE', 'NOT_REFUNDABLE',
        'PROVIDER_REJECTED', 'RETRIES_EXHAUSTED', 'APPROVAL_REJECTED', 'RESOLVED_BY_OPERATOR'))
    NOT VALID;
