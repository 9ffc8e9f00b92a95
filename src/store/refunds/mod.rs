//! Refund rows, split by job:
//!
//! - [`intake`]: storing new refunds (the payments' lock the over-refund guard needs, the
//!   insert, a command that failed validation); the judging is [`crate::domain::intake`]'s.
//! - [`claims`]: claiming due refunds for a dispatcher and recording its steps.
//! - [`transitions`]: making refunds final and writing each status change's fan-out
//!   (history, outbox, merchant webhook; [`crate::domain::fanout`] says what).
//! - [`queries`]: the operator's reads (one refund, pages of refunds).
//!
//! Here: the row types they share, the lock every multi-refund change takes first, and the
//! event of a row. Every function that writes takes the caller's transaction
//! (`&mut PgConnection`, callers pass `&mut tx`, a `Transaction` derefs to one): the caller decides when it commits, and
//! what to do between the reads and the writes.

pub(crate) mod claims;
pub(crate) mod intake;
pub(crate) mod queries;
pub(crate) mod transitions;

pub use crate::domain::intake::{Intake, IntakeItem};
pub use claims::{
    claim_due, claim_one, record_step, record_steps, ClaimOne, StepRecord,
    CAUSE_PROVIDER_CONFIRMED, CAUSE_PROVIDER_OUTCOME,
};
pub use intake::{
    insert_new, intake_invalid, lock_payments, save_learned_amounts, stored, Preclaim,
};
pub use queries::{list, show, ListFilter, RefundPage, DEFAULT_PAGE, MAX_PAGE};
pub use transitions::record_transitions;
pub(crate) use transitions::{finish_many, record_transition, FinishArrays};

use super::StoreError;
use crate::domain::{FailureReason, Fee, Phase, RefundEvent, RefundStatus};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// A refund row as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Refund)]
pub struct RefundRow {
    /// Reference.
    pub refund_reference: String,
    /// Provider wire name.
    pub provider: Option<String>,
    /// Original payment.
    pub transaction_reference: Option<String>,
    /// Exact amount.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
    /// Currency.
    pub currency: Option<String>,
    /// PENDING, COMPLETED, REFUND_FAIL.
    #[schema(schema_with = crate::schema::api::refund_status)]
    pub status: String,
    /// What we know of the provider's side.
    #[schema(schema_with = crate::schema::api::phase)]
    pub phase: String,
    /// Provider's id.
    pub provider_reference: Option<String>,
    /// Provider's last status word.
    pub provider_status: Option<String>,
    /// The provider's fee for the refund, where it reports one (BVNK).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub provider_fee: Option<Decimal>,
    /// Currency of `providerFee`.
    pub provider_fee_currency: Option<String>,
    /// Failure code, when failed.
    pub failure_code: Option<String>,
    /// Failure message, when failed.
    pub failure_message: Option<String>,
    /// Provider submits made.
    pub attempts: i32,
    /// Consecutive failed calls.
    pub failures: i32,
    /// Status polls made.
    pub polls: i32,
    /// Next scheduled look (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the command was accepted.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it became final.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it is flagged for operator review (none when it is not).
    pub review_reason: Option<String>,
    /// Since when it is flagged for review.
    pub review_since: Option<DateTime<Utc>>,
    /// What the over-refund guard judged it against: `command`, `ledger`, `provider`,
    /// `none` (null for refunds stored before this was recorded, and invalid commands).
    #[schema(schema_with = crate::schema::api::guard_source_or_null)]
    pub guard_source: Option<String>,
}

/// One row of a refund's transition history.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Transition)]
pub struct TransitionRow {
    /// Previous status (none for the first).
    pub from_status: Option<String>,
    /// New status.
    pub to_status: String,
    /// What caused it.
    pub cause: String,
    /// Details (failure message, provider status).
    pub detail: Option<String>,
    /// The event published for it.
    pub event_id: Option<Uuid>,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// One provider call as recorded.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProviderAttempt)]
pub struct AttemptRow {
    /// `submit` or `status`.
    #[schema(schema_with = crate::schema::api::attempt_call)]
    pub call: String,
    /// Classified outcome.
    pub outcome: String,
    /// Details.
    pub detail: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub latency_ms: i32,
}

/// Everything an operator wants to see about one refund.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    /// The refund.
    pub refund: RefundRow,
    /// Its status history.
    pub transitions: Vec<TransitionRow>,
    /// Its provider calls.
    pub attempts: Vec<AttemptRow>,
}

/// A refund claimed by one dispatcher for one step.
#[derive(Debug, Clone)]
pub struct ClaimedRefund {
    /// The row after claiming.
    pub row: RefundRow,
    /// The phase before claiming (a `NotSubmitted` refund is moved to `Submitting` by the
    /// claim itself, so a crash during the call is known to be an unknown outcome).
    pub phase_before: Phase,
    /// The command as received.
    pub command: Value,
    /// The claim's token; results are recorded only under it.
    pub token: Uuid,
}

/// One provider call, for the attempts log.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// `submit` or `status`.
    pub call: &'static str,
    /// Classified outcome label.
    pub outcome: String,
    /// Details.
    pub detail: Option<String>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Duration.
    pub latency: Duration,
}

/// The change a dispatcher step makes to a claimed refund.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUpdate {
    /// Becomes final.
    Finish {
        /// COMPLETED or REFUND_FAIL.
        status: RefundStatus,
        /// For REFUND_FAIL.
        failure: Option<FailureReason>,
        /// Provider's id.
        provider_reference: Option<String>,
        /// Provider's status word.
        provider_status: Option<String>,
        /// Provider's fee, if reported.
        fee: Option<Fee>,
    },
    /// Stays pending.
    Reschedule {
        /// Phase to record.
        phase: Phase,
        /// Delay before the next look.
        delay: Duration,
        /// Whether this step failed (grows the backoff) or made progress (resets it).
        failed: bool,
        /// Provider's id, if learned.
        provider_reference: Option<String>,
        /// Provider's status word, if learned.
        provider_status: Option<String>,
        /// Provider's fee, if reported.
        fee: Option<Fee>,
    },
}

pub(crate) const ROW_COLUMNS: &str =
    "refund_reference, provider, transaction_reference, amount, currency, status, phase,
    provider_reference, provider_status, provider_fee, provider_fee_currency, failure_code, failure_message, attempts, failures, polls,
    next_attempt_at, created_at, updated_at, finished_at, review_reason, review_since, guard_source";

/// Locks the refunds named (repeats allowed) in key order, and returns their statuses.
///
/// Every transaction that changes several refunds locks them through here first, so two of
/// them always take the locks in the same order and never deadlock.
pub(crate) async fn lock_in_order<'r>(
    tx: &mut PgConnection,
    references: impl IntoIterator<Item = &'r str>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut references: Vec<&str> = references.into_iter().collect();
    references.sort_unstable();
    references.dedup();
    if references.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT refund_reference, status FROM refunds
         WHERE refund_reference = ANY($1) ORDER BY refund_reference FOR UPDATE",
    )
    .persistent(false) // planned per execution: see the store module's "Plans"
    .bind(&references)
    .fetch_all(&mut *tx)
    .await?)
}

/// Builds the status event for a refund row.
pub(crate) fn event_for(
    row: &RefundRow,
    status: RefundStatus,
    failure: Option<FailureReason>,
) -> Result<RefundEvent, StoreError> {
    Ok(RefundEvent {
        event_id: Uuid::new_v4(),
        refund_reference: row.refund_reference.clone(),
        provider: row.provider.clone(),
        transaction_reference: row.transaction_reference.clone(),
        provider_reference: row.provider_reference.clone(),
        amount: row.amount.map(|a| a.to_string()),
        currency: row.currency.clone(),
        status,
        failure_reason: failure,
        attempts: row.attempts,
        occurred_at: row.finished_at.unwrap_or(row.updated_at),
        review: None,
        resolution: None,
    })
}
