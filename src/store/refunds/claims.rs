//! Claiming due refunds for a dispatcher (`FOR UPDATE SKIP LOCKED` plus a lease), and
//! recording its steps: the provider's answer, under the claim's token, with the attempts
//! log and, for a final status, its fan-out.

use super::transitions::{finish_many, record_transitions, FinishArrays, StepArrays};
use super::{
    event_for, lock_in_order, CallRecord, ClaimedRefund, RefundRow, StoreUpdate, ROW_COLUMNS,
};
use crate::domain::fanout::StatusChange;
use crate::domain::{transition, Phase, RefundEvent, RefundStatus, Transition};
use crate::store::{EventSink, StoreError};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// Claims up to `limit` due refunds for one dispatcher, reserving them for `lease`.
///
/// A refund that was `NOT_SUBMITTED` becomes `SUBMITTING` (and counts an attempt) in the
/// same statement, before the provider is called: if this worker dies mid-call, whoever
/// claims it next asks the provider for its status instead of sending it again.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedRefund>, StoreError> {
    let token = Uuid::new_v4();
    let rows: Vec<ClaimRow> = sqlx::query_as(&claim_due_statement())
        .bind(limit)
        .bind(lease.as_secs_f64())
        .bind(token)
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(|r| r.claimed(token)).collect()
}

/// The dispatcher's claim of due refunds: `$1` the batch, `$2` the lease in seconds, `$3`
/// the claim token (the bench explains it on a big table).
pub(crate) fn claim_due_statement() -> String {
    claim_sql(
        "SELECT refund_reference AS due_reference, phase AS phase_before FROM refunds
         WHERE status = 'PENDING' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
}

/// The claim itself, for the refunds a `due` query picks (`due_reference`, `phase_before`;
/// `$2` is the lease in seconds, `$3` the token). Claim and read in one statement:
/// RETURNING gives the rows as updated.
fn claim_sql(due: &str) -> String {
    format!(
        "WITH due AS ({due})
         UPDATE refunds r SET
             next_attempt_at = now() + make_interval(secs => $2),
             claim_token = $3,
             phase = CASE WHEN r.phase = 'NOT_SUBMITTED' THEN 'SUBMITTING' ELSE r.phase END,
             attempts = r.attempts + CASE WHEN r.phase = 'NOT_SUBMITTED' THEN 1 ELSE 0 END,
             updated_at = now()
         FROM due WHERE r.refund_reference = due.due_reference
         RETURNING {ROW_COLUMNS}, due.phase_before, r.command"
    )
}

/// Why one refund could not be claimed by [`claim_one`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOne {
    /// No refund with that reference.
    NotFound,
    /// The refund is final: nothing to ask the provider.
    Final(String),
    /// A dispatcher holds it right now (its step will record the provider's answer).
    Busy,
}

/// Claims one pending refund now, due or not, exactly as [`claim_due`] claims due ones
/// (an operator's recheck): unless a dispatcher holds a live claim on it.
pub async fn claim_one(
    pool: &PgPool,
    reference: &str,
    lease: Duration,
) -> Result<Result<ClaimedRefund, ClaimOne>, StoreError> {
    let token = Uuid::new_v4();
    let row: Option<ClaimRow> = sqlx::query_as(&claim_sql(
        "SELECT refund_reference AS due_reference, phase AS phase_before FROM refunds
         WHERE refund_reference = $1 AND status = 'PENDING'
             AND NOT (claim_token IS NOT NULL AND next_attempt_at > now())
         FOR UPDATE SKIP LOCKED",
    ))
    .bind(reference)
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_optional(pool)
    .await?;
    if let Some(r) = row {
        return Ok(Ok(r.claimed(token)?));
    }
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM refunds WHERE refund_reference = $1")
            .bind(reference)
            .fetch_optional(pool)
            .await?;
    Ok(Err(match status {
        None => ClaimOne::NotFound,
        Some(s) if s != RefundStatus::Pending.as_str() => ClaimOne::Final(s),
        Some(_) => ClaimOne::Busy,
    }))
}

/// A claimed row as `claim_due` reads it back.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    row: RefundRow,
    phase_before: String,
    command: Value,
}

impl ClaimRow {
    fn claimed(self, token: Uuid) -> Result<ClaimedRefund, StoreError> {
        let phase_before = Phase::parse(&self.phase_before)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown phase {}", self.phase_before)))?;
        Ok(ClaimedRefund {
            row: self.row,
            phase_before,
            command: self.command,
            token,
        })
    }
}

/// One claimed refund's step outcome, for [`record_steps`].
#[derive(Debug, Clone, Copy)]
pub struct StepRecord<'a> {
    /// The refund as claimed; its outcome is recorded only under its claim token.
    pub claimed: &'a ClaimedRefund,
    /// Submits beyond the one counted at claim time.
    pub extra_submits: i32,
    /// The step's provider calls, in the order they were made.
    pub calls: &'a [CallRecord],
    /// The change to make.
    pub update: &'a StoreUpdate,
}

/// Records the result of a dispatcher step on a claimed refund, with its provider calls,
/// and (for a final status) the transition and its outbox event, in the caller's
/// transaction.
///
/// Returns the event when one was produced, or `None` when the claim was lost (the lease
/// expired and another worker took over) or nothing changed. [`record_steps`] with one step.
pub async fn record_step(
    tx: &mut PgConnection,
    claimed: &ClaimedRefund,
    extra_submits: i32,
    calls: &[CallRecord],
    update: StoreUpdate,
    sink: &EventSink,
) -> Result<Option<RefundEvent>, StoreError> {
    let step = StepRecord {
        claimed,
        extra_submits,
        calls,
        update: &update,
    };
    let mut events = record_steps(tx, &[step], sink).await?;
    Ok(events.pop().flatten())
}

/// History cause of a refund [`record_steps`] finished as COMPLETED.
pub const CAUSE_PROVIDER_CONFIRMED: &str = "provider confirmed the refund";
/// History cause of a refund [`record_steps`] finished otherwise.
///
/// With [`CAUSE_PROVIDER_CONFIRMED`], what tells the dispatcher's finishes apart from a
/// provider webhook's in `refund_transitions` (the bench counts record transactions by them).
pub const CAUSE_PROVIDER_OUTCOME: &str = "provider outcome";

/// Records many dispatcher steps in the caller's transaction (one per batch, committed by
/// [`crate::pipeline::dispatch`]): for each claimed refund still under
/// its claim, its new schedule or final status, its provider calls, and (for a final
/// status) the transition, outbox event and merchant webhook.
///
/// A handful of set-based statements per batch instead of about five round trips per
/// refund: one `UPDATE ... FROM UNNEST` for the reschedules, one for the finishes, one
/// [`record_transitions`], one `provider_attempts` insert. Returns, in `steps` order, each
/// step's event, or `None` for a reschedule or a lost claim (the lease expired and another
/// worker took over, or a provider webhook finished the refund first). A lost claim
/// changes nothing on the refund, but its calls are logged: the provider was called. A
/// call is logged once however often its step is recorded (`provider_attempts_once`).
///
/// Rows are locked in `refund_reference` order first ([`lock_in_order`]), as a webhook batch
/// locks them, so two batches sharing refunds cannot wait for each other; should a
/// deadlock happen anyway, it is a retryable error ([`crate::error::sqlx_is_retryable`])
/// and the whole batch can be tried again.
pub async fn record_steps(
    tx: &mut PgConnection,
    steps: &[StepRecord<'_>],
    sink: &EventSink,
) -> Result<Vec<Option<RefundEvent>>, StoreError> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    // A claimed refund is PENDING; the conditional updates below are the database's half of
    // the rule (they change nothing unless the refund is still pending and under our
    // claim), this is the state machine's half. Checked before any work is done.
    for s in steps {
        if let StoreUpdate::Finish { status, .. } = s.update {
            let current = RefundStatus::Pending;
            if transition(current, *status) != Transition::Apply {
                return Err(StoreError::Corrupt(format!(
                    "dispatcher asked for {current} -> {status}"
                )));
            }
        }
    }
    // Indices into `steps`.
    let (finishes, reschedules): (Vec<usize>, Vec<usize>) =
        (0..steps.len()).partition(|&i| matches!(steps[i].update, StoreUpdate::Finish { .. }));

    let mut applied = vec![false; steps.len()];
    let mut events: Vec<Option<RefundEvent>> = vec![None; steps.len()];
    // Lock every step's row first, in key order: the updates below lock reschedules, then
    // finishes, each in whatever order their join runs, and a provider webhook batch locks
    // its refunds in key order; without this the two could each wait for the other.
    lock_in_order(
        tx,
        steps
            .iter()
            .map(|s| s.claimed.row.refund_reference.as_str()),
    )
    .await?;

    if !reschedules.is_empty() {
        let mut rows = RescheduleArrays::default();
        for &i in &reschedules {
            let s = &steps[i];
            if let StoreUpdate::Reschedule {
                phase,
                delay,
                failed,
                provider_reference,
                provider_status,
                fee,
            } = s.update
            {
                rows.step.push(s, provider_reference, provider_status, fee);
                rows.phase.push(phase.as_str());
                rows.delay.push(delay.as_secs_f64());
                rows.failed.push(*failed);
            }
        }
        // The unnested columns are named unlike any column of `refunds`, so nothing in
        // SET or RETURNING is ambiguous.
        let done: Vec<(String, Uuid)> = sqlx::query_as(
            "UPDATE refunds r SET phase = u.new_phase,
                 next_attempt_at = now() + make_interval(secs => u.delay_secs),
                 claim_token = NULL, attempts = r.attempts + u.add_submits,
                 failures = CASE WHEN u.failed THEN r.failures + 1 ELSE 0 END,
                 polls = r.polls + u.add_polls,
                 provider_reference = COALESCE(u.new_provider_reference, r.provider_reference),
                 provider_status = COALESCE(u.new_provider_status, r.provider_status),
                 provider_fee = COALESCE(u.new_fee, r.provider_fee),
                 provider_fee_currency = COALESCE(u.new_fee_currency, r.provider_fee_currency),
                 updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::float8[], $5::int4[],
                     $6::bool[], $7::int4[], $8::text[], $9::text[], $10::numeric[], $11::text[],
                     $12::text[])
                 AS u(ref, tok, new_phase, delay_secs, add_submits, failed, add_polls,
                     new_provider_reference, new_provider_status, new_fee, new_fee_currency,
                     from_status)
             -- `= ANY($1)` as well as the join: the refunds side is then always an index
             -- look-up of these references, never a scan, whatever the join's plan.
             WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
                 AND r.claim_token = u.tok AND r.status = u.from_status
             RETURNING r.refund_reference, u.tok",
        )
        .persistent(false) // planned per execution: see the store module's "Plans"
        .bind(&rows.step.reference)
        .bind(&rows.step.token)
        .bind(&rows.phase)
        .bind(&rows.delay)
        .bind(&rows.step.extra_submits)
        .bind(&rows.failed)
        .bind(&rows.step.polls)
        .bind(&rows.step.provider_reference)
        .bind(&rows.step.provider_status)
        .bind(&rows.step.fee)
        .bind(&rows.step.fee_currency)
        .bind(&rows.step.from_status)
        .fetch_all(&mut *tx)
        .await?;
        for i in reschedules {
            let c = steps[i].claimed;
            applied[i] = done
                .iter()
                .any(|(r, t)| *r == c.row.refund_reference && *t == c.token);
        }
    }

    let mut finished: Vec<(usize, RefundStatus)> = Vec::new();
    if !finishes.is_empty() {
        let mut rows = FinishArrays::default();
        for &i in &finishes {
            let s = &steps[i];
            if let StoreUpdate::Finish {
                status,
                failure,
                provider_reference,
                provider_status,
                fee,
            } = s.update
            {
                rows.step.push(s, provider_reference, provider_status, fee);
                rows.push_status(*status, failure.as_ref());
            }
        }
        let done = finish_many(tx, &rows).await?;
        for i in finishes {
            let s = &steps[i];
            let Some(row) = done.iter().find(|d| {
                d.row.refund_reference == s.claimed.row.refund_reference
                    && d.tok == Some(s.claimed.token)
            }) else {
                continue;
            };
            let StoreUpdate::Finish {
                status, failure, ..
            } = s.update
            else {
                continue;
            };
            applied[i] = true;
            events[i] = Some(event_for(&row.row, *status, failure.clone())?);
            finished.push((i, *status));
        }
    }

    if !applied.contains(&true) && steps.iter().all(|s| s.calls.is_empty()) {
        // Every claim was lost and no call was made: nothing to write.
        return Ok(events);
    }

    // History, outbox and webhooks in `steps` order (the order the relay publishes in).
    finished.sort_by_key(|&(i, _)| i);
    let writes: Vec<StatusChange<'_>> = finished
        .iter()
        .filter_map(|&(i, status)| {
            events[i].as_ref().map(|event| StatusChange {
                from: Some(RefundStatus::Pending),
                event,
                cause: match status {
                    RefundStatus::Completed => CAUSE_PROVIDER_CONFIRMED,
                    _ => CAUSE_PROVIDER_OUTCOME,
                },
                detail: None,
            })
        })
        .collect();
    record_transitions(tx, &writes, sink).await?;

    // Every step's calls in one statement, in `steps` order and call order (the attempts
    // log is read back in id order), those of lost claims included.
    let calls: Vec<(&str, &CallRecord)> = steps
        .iter()
        .flat_map(|s| {
            s.calls
                .iter()
                .map(|c| (s.claimed.row.refund_reference.as_str(), c))
        })
        .collect();
    if !calls.is_empty() {
        sqlx::query(
            "INSERT INTO provider_attempts (refund_reference, call, outcome, detail, started_at, latency_ms)
             SELECT ref, call, outcome, detail, started_at, latency_ms
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int4[])
                 WITH ORDINALITY AS a(ref, call, outcome, detail, started_at, latency_ms, n)
             ORDER BY n
             ON CONFLICT (refund_reference, started_at, call) DO NOTHING",
        )
        .bind(calls.iter().map(|(r, _)| *r).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.call).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.outcome.as_str()).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.detail.as_deref()).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.started_at).collect::<Vec<_>>())
        .bind(
            calls
                .iter()
                .map(|(_, c)| i32::try_from(c.latency.as_millis()).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(events)
}

/// `record_steps`' reschedules as the columns of its `UNNEST`.
#[derive(Default)]
struct RescheduleArrays<'a> {
    step: StepArrays<'a>,
    phase: Vec<&'static str>,
    delay: Vec<f64>,
    failed: Vec<bool>,
}
