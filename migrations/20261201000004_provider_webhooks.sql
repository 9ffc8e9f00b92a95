-- Inbound provider webhooks.
--
-- The inbox deduplicates them: one row per (provider, event key), where the key is the
-- provider's own event id, or `sha256:<hex>` of the raw body when the provider gives none.
-- The row records what applying it did, and keeps the raw body so a webhook parked because
-- its refund was not known yet can be applied later.
CREATE TABLE provider_webhook_inbox (
    provider          TEXT        NOT NULL,
    event_key         TEXT        NOT NULL,
    -- Which of the notifications parsed from `body` this row is (most bodies hold one).
    part              INTEGER     NOT NULL DEFAULT 0,
    body              BYTEA       NOT NULL,
    state             TEXT        NOT NULL CHECK (state IN
                          ('APPLIED', 'UNCHANGED', 'CONTRADICTION', 'PARKED', 'UNMATCHED', 'IGNORED')),
    refund_reference  TEXT,
    detail            TEXT,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    park_attempts     INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, event_key)
);
CREATE INDEX provider_webhook_inbox_parked ON provider_webhook_inbox (received_at)
    WHERE state = 'PARKED';

-- The pay-ins ledger: the latest status of every payment a provider told us about
-- (VA Services pay-in notifications, BPN transaction status, Binance Pay PAY, BVNK
-- pay-ins). The over-refund guard reads its amount when a command carries no paymentAmount.
CREATE TABLE pay_ins (
    provider              TEXT        NOT NULL,
    transaction_reference TEXT        NOT NULL,
    amount                NUMERIC     CHECK (amount IS NULL OR amount > 0),
    currency              TEXT,
    status                TEXT        NOT NULL,
    succeeded             BOOLEAN     NOT NULL,
    event_key             TEXT        NOT NULL,
    notifications         INTEGER     NOT NULL DEFAULT 1,
    first_seen_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, transaction_reference)
);
