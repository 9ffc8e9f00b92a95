-- Outbound merchant webhooks: one delivery per status event with an endpoint, queued in
-- the same transaction as the event, and one row per delivery attempt.

CREATE TABLE webhook_deliveries (
    id               BIGSERIAL   PRIMARY KEY,
    -- One delivery per event; a resend re-queues this row, never a copy.
    event_id         UUID        NOT NULL UNIQUE,
    refund_reference TEXT        NOT NULL REFERENCES refunds (refund_reference),
    provider         TEXT,
    event_status     TEXT        NOT NULL,
    url              TEXT        NOT NULL,
    payload          JSONB       NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('queued', 'delivered', 'failed')),
    -- Attempts in all; attempts in the current round (a resend starts a new round, which
    -- restarts the retry schedule).
    attempts         INTEGER     NOT NULL DEFAULT 0,
    round_attempts   INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    claim_token      UUID,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at     TIMESTAMPTZ,
    CONSTRAINT webhook_deliveries_queued_is_scheduled CHECK ((state = 'queued') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'queued';
CREATE INDEX webhook_deliveries_by_refund ON webhook_deliveries (refund_reference, id);
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (created_at) WHERE state = 'failed';

CREATE TABLE webhook_attempts (
    id               BIGSERIAL   PRIMARY KEY,
    delivery_id      BIGINT      NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at     TIMESTAMPTZ NOT NULL,
    status_code      INTEGER,
    latency_ms       INTEGER     NOT NULL,
    response_excerpt TEXT,
    error            TEXT
);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);
