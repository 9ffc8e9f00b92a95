//! Status changes: making refunds final ([`finish_many`]) and writing each change's
//! fan-out ([`record_transitions`]: history row, outbox event, merchant webhook delivery;
//! what to write is [`crate::domain::fanout`]'s).

use super::{RefundRow, StepRecord, ROW_COLUMNS};
use crate::domain::fanout::{fanout, StatusChange};
use crate::domain::{FailureReason, Fee, RefundEvent, RefundStatus};
use crate::store::{EventSink, StoreError};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// Writes the history row, the outbox event and (when the refund has a callback URL or
/// there is a default) the merchant webhook delivery of a status change.
pub(crate) async fn record_transition(
    tx: &mut PgConnection,
    from: Option<RefundStatus>,
    event: &RefundEvent,
    cause: &str,
    sink: &EventSink,
) -> Result<(), StoreError> {
    let change = StatusChange {
        from,
        event,
        cause,
        detail: None,
    };
    record_transitions(tx, &[change], sink).await
}

/// [`record_transition`] for many status changes at once, in the caller's transaction.
///
/// One statement with data-modifying CTEs over `UNNEST`ed arrays: three inserts per change
/// for the price of one round trip per batch, which matters because every refund makes at
/// least two status changes. The outbox rows get ids in `changes` order, which is the order
/// the relay publishes them in. The merchant webhook goes to the refund's `callbackUrl`,
/// else to the sink's default, else nowhere.
pub async fn record_transitions(
    tx: &mut PgConnection,
    changes: &[StatusChange<'_>],
    sink: &EventSink,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let rows = fanout(changes)
        .map_err(|e| StoreError::Corrupt(format!("event does not serialize: {e}")))?;
    sqlx::query(
        "WITH t AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::uuid[], $7::timestamptz[], $8::text[], $9::jsonb[], $10::text[])
                 WITH ORDINALITY AS t(refund_reference, from_status, to_status, cause, detail,
                     event_id, occurred_at, routing_key, payload, provider, n)),
         history AS (
             INSERT INTO refund_transitions
                 (refund_reference, from_status, to_status, cause, detail, event_id, occurred_at)
             SELECT refund_reference, from_status, to_status, cause, detail, event_id, occurred_at
             FROM t ORDER BY n),
         outbox AS (
             INSERT INTO outbox (event_id, exchange, routing_key, payload)
             SELECT event_id, $11, routing_key, payload FROM t ORDER BY n)
         INSERT INTO webhook_deliveries
             (event_id, refund_reference, provider, event_status, url, payload, state, next_attempt_at)
         SELECT event_id, refund_reference, provider, to_status, url, payload, 'queued', now()
         FROM (
             -- A scalar subquery, not a join: always one primary-key probe per event. As a
             -- join, a plan made while the table was small (stale statistics) scanned the
             -- whole refunds table for every status change, and grew with it.
             SELECT t.*, COALESCE(
                 (SELECT r.command->>'callbackUrl' FROM refunds r
                  WHERE r.refund_reference = t.refund_reference), $12) AS url
             FROM t) w
         WHERE url IS NOT NULL
         ORDER BY n
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&rows.refund_reference)
    .bind(&rows.from_status)
    .bind(&rows.to_status)
    .bind(&rows.cause)
    .bind(&rows.detail)
    .bind(&rows.event_id)
    .bind(&rows.occurred_at)
    .bind(&rows.routing_key)
    .bind(&rows.payload)
    .bind(&rows.provider)
    .bind(&sink.exchange)
    .bind(sink.webhook_default_url.as_deref())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The columns `record_steps`' two updates (and a webhook batch's finishes) share, one
/// entry per refund.
#[derive(Default)]
pub(crate) struct StepArrays<'a> {
    pub(super) reference: Vec<&'a str>,
    pub(super) token: Vec<Option<Uuid>>,
    pub(super) extra_submits: Vec<i32>,
    pub(super) polls: Vec<i32>,
    pub(super) provider_reference: Vec<Option<&'a str>>,
    pub(super) provider_status: Vec<Option<&'a str>>,
    pub(super) fee: Vec<Option<Decimal>>,
    pub(super) fee_currency: Vec<Option<&'a str>>,
    /// The status the refund must still have: always PENDING. A join column rather than a
    /// constant `status = 'PENDING'`, which let the planner pick the partial index
    /// `refunds_due` and, on statistics that said few refunds were pending, read every
    /// pending refund instead of probing the primary key (seen at 41 ms per update).
    pub(super) from_status: Vec<&'static str>,
}

impl<'a> StepArrays<'a> {
    /// Adds one step with what its provider told us.
    pub(super) fn push(
        &mut self,
        step: &StepRecord<'a>,
        provider_reference: &'a Option<String>,
        provider_status: &'a Option<String>,
        fee: &'a Option<Fee>,
    ) {
        let polls = step.calls.iter().filter(|c| c.call == "status").count();
        self.push_row(
            &step.claimed.row.refund_reference,
            Some(step.claimed.token),
            (step.extra_submits, i32::try_from(polls).unwrap_or(i32::MAX)),
            provider_reference.as_deref(),
            provider_status.as_deref(),
            fee.as_ref(),
        );
    }

    /// Adds one refund: under `token` (the dispatcher's claim) or, without one, whoever
    /// holds it (a provider webhook); `counts` are (extra submits, status polls).
    fn push_row(
        &mut self,
        reference: &'a str,
        token: Option<Uuid>,
        counts: (i32, i32),
        provider_reference: Option<&'a str>,
        provider_status: Option<&'a str>,
        fee: Option<&'a Fee>,
    ) {
        self.reference.push(reference);
        self.from_status.push(RefundStatus::Pending.as_str());
        self.token.push(token);
        self.extra_submits.push(counts.0);
        self.polls.push(counts.1);
        self.provider_reference.push(provider_reference);
        self.provider_status.push(provider_status);
        self.fee.push(fee.map(|f| f.amount));
        self.fee_currency.push(fee.map(|f| f.currency.as_str()));
    }
}

/// Refunds to make final, as the columns of [`finish_many`]'s `UNNEST`.
#[derive(Default)]
pub(crate) struct FinishArrays<'a> {
    pub(super) step: StepArrays<'a>,
    status: Vec<&'static str>,
    failure_code: Vec<Option<&'static str>>,
    failure_message: Vec<Option<&'a str>>,
}

impl<'a> FinishArrays<'a> {
    /// Adds a refund finished by a provider webhook: no claim token (whoever holds a claim
    /// loses it, and its later `record_steps` finds the refund no longer pending), no calls.
    pub(crate) fn push_webhook(
        &mut self,
        reference: &'a str,
        status: RefundStatus,
        failure: Option<&'a FailureReason>,
        provider_reference: Option<&'a str>,
        provider_status: Option<&'a str>,
        fee: Option<&'a Fee>,
    ) {
        self.step.push_row(
            reference,
            None,
            (0, 0),
            provider_reference,
            provider_status,
            fee,
        );
        self.push_status(status, failure);
    }

    pub(super) fn push_status(&mut self, status: RefundStatus, failure: Option<&'a FailureReason>) {
        self.status.push(status.as_str());
        self.failure_code.push(failure.map(|f| f.code.as_str()));
        self.failure_message
            .push(failure.map(|f| f.message.as_str()));
    }

    /// How many refunds are listed.
    pub(crate) fn len(&self) -> usize {
        self.status.len()
    }
}

/// A refund made final by [`finish_many`], with the claim it was finished under.
#[derive(sqlx::FromRow)]
pub(crate) struct FinishedRow {
    /// The row after the change.
    #[sqlx(flatten)]
    pub row: RefundRow,
    /// The claim token it was finished under (none for a webhook).
    pub tok: Option<Uuid>,
}

/// Makes the listed refunds final, in one statement: each only while it is still `PENDING`
/// and, where a token is given, still under that claim. Returns the rows it changed.
///
/// The rows are those the caller locked or claimed; the state machine's check
/// ([`transition`]) is the caller's, this conditional update is the database's half.
pub(crate) async fn finish_many(
    tx: &mut PgConnection,
    rows: &FinishArrays<'_>,
) -> Result<Vec<FinishedRow>, StoreError> {
    if rows.len() == 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(&format!(
        "UPDATE refunds r SET status = u.new_status, phase = 'FINAL', next_attempt_at = NULL,
             claim_token = NULL, failure_code = u.new_failure_code,
             failure_message = u.new_failure_message, attempts = r.attempts + u.add_submits,
             polls = r.polls + u.add_polls,
             provider_reference = COALESCE(u.new_provider_reference, r.provider_reference),
             provider_status = COALESCE(u.new_provider_status, r.provider_status),
             provider_fee = COALESCE(u.new_fee, r.provider_fee),
             provider_fee_currency = COALESCE(u.new_fee_currency, r.provider_fee_currency),
             -- A final answer settles what a review was waiting for.
             review_reason = NULL, review_since = NULL,
             updated_at = now(), finished_at = now()
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[],
                 $7::int4[], $8::text[], $9::text[], $10::numeric[], $11::text[], $12::text[])
             AS u(ref, tok, new_status, new_failure_code, new_failure_message, add_submits,
                 add_polls, new_provider_reference, new_provider_status, new_fee,
                 new_fee_currency, from_status)
         -- `= ANY($1)` as well as the join: the refunds side is then always an index
         -- look-up of these references, never a scan, whatever the join's plan.
         WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
             AND (u.tok IS NULL OR r.claim_token = u.tok) AND r.status = u.from_status
         RETURNING {ROW_COLUMNS}, u.tok"
    ))
    .persistent(false) // planned per execution: see the store module's "Plans"
    .bind(&rows.step.reference)
    .bind(&rows.step.token)
    .bind(&rows.status)
    .bind(&rows.failure_code)
    .bind(&rows.failure_message)
    .bind(&rows.step.extra_submits)
    .bind(&rows.step.polls)
    .bind(&rows.step.provider_reference)
    .bind(&rows.step.provider_status)
    .bind(&rows.step.fee)
    .bind(&rows.step.fee_currency)
    .bind(&rows.step.from_status)
    .fetch_all(&mut *tx)
    .await?)
}
