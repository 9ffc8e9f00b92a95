//! Operator review in PostgreSQL: flagging refunds for review, an operator's resolution,
//! and the review queue. The rules are [`crate::domain::review`]'s; these functions read
//! and write inside the caller's transaction (the review sweep, the admin API), with the
//! history row and the outbox event of every change.

use super::refunds::{event_for, record_transitions, RefundRow, ROW_COLUMNS};
use super::{EventSink, StoreError};
use crate::domain::fanout::{review_flags, StatusChange};
use crate::domain::review::{
    overdue_reason, plan_resolution, ResolvePlan, ResolveRefused, ResolveRequest,
};
use crate::domain::{RefundEvent, RefundStatus, Resolution, Review};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

/// History cause of a review flag.
pub(crate) const CAUSE_REVIEW: &str = "flagged for review";
/// History cause of an operator's resolution.
pub(crate) const CAUSE_RESOLVED: &str = "resolved by operator";
/// History cause of an operator confirming a flagged final status.
pub(crate) const CAUSE_ACKNOWLEDGED: &str = "review acknowledged by operator";
/// History cause of an operator's recheck.
pub(crate) const CAUSE_RECHECK: &str = "recheck requested by operator";

/// Flags the named refunds for review (those not flagged already), each with its reason,
/// and writes a history row and a `refund.status.review_required` event for each. The
/// event goes to the broker only: merchants get webhooks for status changes, and a review
/// changes no status.
pub(crate) async fn flag(
    tx: &mut PgConnection,
    flags: &[(String, String)],
    sink: &EventSink,
) -> Result<Vec<RefundEvent>, StoreError> {
    if flags.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<RefundRow> = sqlx::query_as(&format!(
        "UPDATE refunds r SET review_reason = u.reason, review_since = now(), updated_at = now()
         FROM UNNEST($1::text[], $2::text[]) AS u(ref, reason)
         WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
             AND r.review_since IS NULL
         RETURNING {ROW_COLUMNS}"
    ))
    .bind(flags.iter().map(|f| f.0.as_str()).collect::<Vec<_>>())
    .bind(flags.iter().map(|f| f.1.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let (Some(reason), Some(since)) = (row.review_reason.clone(), row.review_since) else {
            return Err(StoreError::Corrupt(format!(
                "refund {} flagged without a reason",
                row.refund_reference
            )));
        };
        let status = parse_status(row)?;
        let mut event = event_for(row, status, failure_of(row))?;
        event.occurred_at = since;
        event.review = Some(Review { reason, since });
        events.push(event);
    }
    write_history_and_outbox(tx, &events, CAUSE_REVIEW, sink).await?;
    Ok(events)
}

/// Flags up to `limit` pending refunds accepted more than `review_after` ago and not
/// flagged yet, in the caller's transaction. Returns their events.
pub(crate) async fn flag_overdue(
    tx: &mut PgConnection,
    review_after: Duration,
    limit: i64,
    sink: &EventSink,
) -> Result<Vec<RefundEvent>, StoreError> {
    // By `refunds_by_status (status, created_at)`: the pending refunds older than the
    // limit, which are few. SKIP LOCKED: a refund a dispatcher is recording now is flagged
    // on the next sweep, if it is still open then.
    let overdue: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT refund_reference, phase, provider_status FROM refunds
         WHERE status = 'PENDING' AND review_since IS NULL
             AND created_at < now() - make_interval(secs => $1)
         ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(review_after.as_secs_f64())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if overdue.is_empty() {
        return Ok(Vec::new());
    }
    let flags: Vec<(String, String)> = overdue
        .into_iter()
        .map(|(reference, phase, provider_status)| {
            let reason = overdue_reason(review_after, &phase, provider_status.as_deref());
            (reference, reason)
        })
        .collect();
    flag(tx, &flags, sink).await
}

/// What an operator's resolution did.
// The event is the answer's whole point and is moved once; boxing it would cost an
// allocation per refund on the hot path to save stack space nobody runs short of.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Resolved {
    /// The refund became final; its event (with `resolution`) is in the outbox.
    Finished(RefundEvent),
    /// A flagged final refund's status was confirmed and the flag cleared.
    Acknowledged,
}

/// Why a resolution was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No such refund.
    #[error("refund {0} not found")]
    NotFound(String),
    /// The rules refused it.
    #[error(transparent)]
    Refused(#[from] ResolveRefused),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ResolveError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Applies an operator's resolution of `reference`, under the refund's row lock, with its
/// history row and (for a final status) its event and merchant webhook, in the caller's
/// transaction (which it leaves unchanged when it answers an error).
pub(crate) async fn resolve(
    tx: &mut PgConnection,
    reference: &str,
    request: &ResolveRequest,
    sink: &EventSink,
) -> Result<Resolved, ResolveError> {
    let current: Option<(String, bool)> = sqlx::query_as(
        "SELECT status, review_since IS NOT NULL FROM refunds
         WHERE refund_reference = $1 FOR UPDATE",
    )
    .bind(reference)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, in_review)) = current else {
        return Err(ResolveError::NotFound(reference.to_owned()));
    };
    let current = RefundStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("refund {reference} has status {status}")))?;
    let reason = request.reason.trim();
    match plan_resolution(current, in_review, request)? {
        ResolvePlan::Finish { status, failure } => {
            // The same columns a provider's final answer sets; the claim (if a dispatcher
            // holds one) is taken away, so its later record finds the refund final.
            let row: RefundRow = sqlx::query_as(&format!(
                "UPDATE refunds SET status = $2, phase = 'FINAL', next_attempt_at = NULL,
                     claim_token = NULL, failure_code = $3, failure_message = $4,
                     provider_reference = COALESCE($5, provider_reference),
                     review_reason = NULL, review_since = NULL,
                     updated_at = now(), finished_at = now()
                 WHERE refund_reference = $1 AND status = 'PENDING'
                 RETURNING {ROW_COLUMNS}"
            ))
            .bind(reference)
            .bind(status.as_str())
            .bind(failure.as_ref().map(|f| f.code.as_str()))
            .bind(failure.as_ref().map(|f| f.message.as_str()))
            .bind(request.provider_reference.as_deref())
            .fetch_one(&mut *tx)
            .await?;
            let mut event = event_for(&row, status, failure)?;
            event.resolution = Some(Resolution {
                by: "operator".into(),
                reason: reason.to_owned(),
            });
            let write = StatusChange {
                from: Some(current),
                event: &event,
                cause: CAUSE_RESOLVED,
                detail: Some(reason),
            };
            record_transitions(tx, &[write], sink).await?;
            Ok(Resolved::Finished(event))
        }
        ResolvePlan::Acknowledge => {
            sqlx::query(
                "UPDATE refunds SET review_reason = NULL, review_since = NULL, updated_at = now()
                 WHERE refund_reference = $1",
            )
            .bind(reference)
            .execute(&mut *tx)
            .await?;
            note(tx, reference, current, CAUSE_ACKNOWLEDGED, Some(reason)).await?;
            Ok(Resolved::Acknowledged)
        }
    }
}

/// Adds a history row that changes no status (an operator's action), in the caller's
/// transaction. `false` when there is no such refund.
pub(crate) async fn note_action(
    tx: &mut PgConnection,
    reference: &str,
    cause: &str,
    detail: Option<&str>,
) -> Result<bool, StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM refunds WHERE refund_reference = $1")
            .bind(reference)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(status) = status.as_deref().and_then(RefundStatus::parse) else {
        return Ok(false);
    };
    note(tx, reference, status, cause, detail).await?;
    Ok(true)
}

async fn note(
    tx: &mut PgConnection,
    reference: &str,
    status: RefundStatus,
    cause: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refund_transitions (refund_reference, from_status, to_status, cause, detail)
         VALUES ($1, $2, $2, $3, $4)",
    )
    .bind(reference)
    .bind(status.as_str())
    .bind(cause)
    .bind(detail)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Refunds in review, longest waiting first.
pub(crate) async fn in_review(pool: &PgPool, limit: i64) -> Result<Vec<RefundRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM refunds WHERE review_since IS NOT NULL
         ORDER BY review_since, refund_reference LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// History rows and outbox events for review flags (no merchant webhook; what to write is
/// [`review_flags`]'s).
async fn write_history_and_outbox(
    tx: &mut PgConnection,
    events: &[RefundEvent],
    cause: &str,
    sink: &EventSink,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = review_flags(events, cause)
        .map_err(|e| StoreError::Corrupt(format!("event does not serialize: {e}")))?;
    sqlx::query(
        "WITH t AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::uuid[],
                 $5::timestamptz[], $6::text[], $7::jsonb[])
                 WITH ORDINALITY AS t(refund_reference, status, detail, event_id, occurred_at,
                     routing_key, payload, n)),
         history AS (
             INSERT INTO refund_transitions
                 (refund_reference, from_status, to_status, cause, detail, event_id, occurred_at)
             SELECT refund_reference, status, status, $8, detail, event_id, occurred_at
             FROM t ORDER BY n)
         INSERT INTO outbox (event_id, exchange, routing_key, payload)
         SELECT event_id, $9, routing_key, payload FROM t ORDER BY n",
    )
    .bind(&rows.refund_reference)
    .bind(&rows.to_status)
    .bind(&rows.detail)
    .bind(&rows.event_id)
    .bind(&rows.occurred_at)
    .bind(&rows.routing_key)
    .bind(&rows.payload)
    .bind(cause)
    .bind(&sink.exchange)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn parse_status(row: &RefundRow) -> Result<RefundStatus, StoreError> {
    RefundStatus::parse(&row.status).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "refund {} has status {}",
            row.refund_reference, row.status
        ))
    })
}

/// A failed refund's reason, as stored.
fn failure_of(row: &RefundRow) -> Option<crate::domain::FailureReason> {
    let code = row
        .failure_code
        .as_deref()
        .and_then(crate::domain::FailureCode::parse)?;
    Some(crate::domain::FailureReason::new(
        code,
        row.failure_message.clone().unwrap_or_default(),
    ))
}
