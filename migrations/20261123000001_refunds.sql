-- The refund pipeline's tables. PostgreSQL is the source of truth and the idempotency
-- guard: a refund row per refundReference, its transitions, one row per provider call,
-- and the outbox of events waiting to be published.

-- Payments we know the amount of. The over-refund guard locks this row (SELECT ... FOR
-- UPDATE) so concurrent workers refunding the same payment are serialised.
CREATE TABLE payments (
    provider              TEXT        NOT NULL,
    transaction_reference TEXT        NOT NULL,
    payment_amount        NUMERIC     CHECK (payment_amount IS NULL OR payment_amount > 0),
    currency              TEXT,
    amount_source         TEXT        CHECK (amount_source IN ('command', 'ledger')),
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, transaction_reference)
);

CREATE TABLE refunds (
    refund_reference      TEXT        PRIMARY KEY,
    -- Text, not an enum: an INVALID_COMMAND refund keeps the provider name it was given.
    provider              TEXT,
    transaction_reference TEXT,
    amount                NUMERIC     CHECK (amount IS NULL OR amount > 0),
    currency              TEXT,
    status                TEXT        NOT NULL CHECK (status IN ('PENDING', 'COMPLETED', 'REFUND_FAIL')),
    phase                 TEXT        NOT NULL CHECK (phase IN ('NOT_SUBMITTED', 'SUBMITTING', 'ACCEPTED', 'FINAL')),
    provider_reference    TEXT,
    provider_status       TEXT,
    failure_code          TEXT        CHECK (failure_code IN ('INVALID_COMMAND', 'AMOUNT_EXCEEDS_REFUNDABLE',
                                          'NOT_REFUNDABLE', 'PROVIDER_REJECTED', 'RETRIES_EXHAUSTED', 'APPROVAL_REJECTED')),
    failure_message       TEXT,
    -- Provider submits made; consecutive failed calls (drives the backoff); status polls.
    attempts              INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    failures              INTEGER     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    polls                 INTEGER     NOT NULL DEFAULT 0 CHECK (polls >= 0),
    -- When the scheduler should look at it next; NULL once final.
    next_attempt_at       TIMESTAMPTZ,
    -- Set by the worker that claimed it; a result is recorded only with the same token.
    claim_token           UUID,
    command               JSONB       NOT NULL,
    command_hash          TEXT        NOT NULL,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at           TIMESTAMPTZ,
    -- Status and phase move together; a final refund is never scheduled again.
    CONSTRAINT refunds_pending_is_scheduled CHECK ((status = 'PENDING') = (next_attempt_at IS NOT NULL)),
    CONSTRAINT refunds_final_phase CHECK ((status = 'PENDING') = (phase <> 'FINAL')),
    CONSTRAINT refunds_fail_has_reason CHECK ((status = 'REFUND_FAIL') = (failure_code IS NOT NULL)),
    CONSTRAINT refunds_valid_has_money CHECK (failure_code = 'INVALID_COMMAND'
        OR (provider IS NOT NULL AND transaction_reference IS NOT NULL AND amount IS NOT NULL AND currency IS NOT NULL))
);

-- The scheduler's work list.
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'PENDING';
-- The over-refund guard's sum.
CREATE INDEX refunds_by_payment ON refunds (provider, transaction_reference) WHERE status <> 'REFUND_FAIL';
CREATE INDEX refunds_by_status ON refunds (status, created_at);

-- Forward-only, enforced by the database as well as by the code: a final status never
-- changes, whatever SQL a future change or an operator runs.
CREATE FUNCTION refunds_forward_only() RETURNS trigger AS $$
BEGIN
    IF OLD.status <> 'PENDING' AND NEW.status IS DISTINCT FROM OLD.status THEN
        RAISE EXCEPTION 'refund % is % and cannot become %', OLD.refund_reference, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.amount IS DISTINCT FROM NEW.amount OR OLD.refund_reference <> NEW.refund_reference THEN
        RAISE EXCEPTION 'refund % amount and reference are immutable', OLD.refund_reference
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER refunds_forward_only BEFORE UPDATE ON refunds
    FOR EACH ROW EXECUTE FUNCTION refunds_forward_only();

-- Every status change with its cause.
CREATE TABLE refund_transitions (
    id               BIGSERIAL   PRIMARY KEY,
    refund_reference TEXT        NOT NULL REFERENCES refunds (refund_reference),
    from_status      TEXT,
    to_status        TEXT        NOT NULL,
    cause            TEXT        NOT NULL,
    detail           TEXT,
    event_id         UUID,
    occurred_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX refund_transitions_by_refund ON refund_transitions (refund_reference, id);

-- One row per provider call.
CREATE TABLE provider_attempts (
    id               BIGSERIAL   PRIMARY KEY,
    refund_reference TEXT        NOT NULL REFERENCES refunds (refund_reference),
    call             TEXT        NOT NULL CHECK (call IN ('submit', 'status')),
    outcome          TEXT        NOT NULL,
    detail           TEXT,
    started_at       TIMESTAMPTZ NOT NULL,
    latency_ms       INTEGER     NOT NULL
);
CREATE INDEX provider_attempts_by_refund ON provider_attempts (refund_reference, id);

-- Events committed with the state change they describe; the relay publishes them with
-- publisher confirms and stamps published_at. A crash between the two republishes the same
-- event_id, so consumers can dedupe.
CREATE TABLE outbox (
    id           BIGSERIAL   PRIMARY KEY,
    event_id     UUID        NOT NULL UNIQUE,
    exchange     TEXT        NOT NULL,
    routing_key  TEXT        NOT NULL,
    payload      JSONB       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
