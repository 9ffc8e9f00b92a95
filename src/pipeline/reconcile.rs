//! Reconciliation: what a provider says of our refunds, against our database.
//!
//! - **VA Services** documents a list of its refunds (`GET /va/refunds`, Spring-style pages):
//!   it is read to the end ([`VA_PAGE_SIZE`] a page, at most [`VA_MAX_PAGES`] pages), so a
//!   refund VA has and we do not is found too, and amounts are compared.
//! - **The others** document no list: each of our refunds in the window is looked up through
//!   the adapter's own status lookup (at most [`CONCURRENCY`] at once). A status answer
//!   carries no amount, so amounts are compared only for VA.
//!
//! Mismatches (each printed with both sides):
//! - `missingHere`: the provider has a refund we do not (VA only);
//! - `missingAtProvider`: ours is `COMPLETED` and the provider has no such refund;
//! - `statusDiffers`: ours `COMPLETED` and theirs failed, ours `REFUND_FAIL` and theirs
//!   succeeded, or ours final and theirs still in progress;
//! - `amountDiffers`: both have the refund with different amounts.
//!
//! Our `PENDING` refunds are in flight and only checked for amount. BPN shows one refund state
//! per *order*, not per refund: a refund of ours BPN never accepted (failed before or at the
//! refund call, so no provider reference) has no state there, and the order's state (another
//! refund's) would read as a false mismatch; such refunds are counted `notCompared`. A lookup the provider did
//! not answer clearly (an error, an answer we cannot attribute) is an error, not a mismatch:
//! the reconciliation is incomplete for that refund.

use super::Context;
use crate::domain::{ProviderName, ProviderOutcome, RefundCommand};
use crate::providers::va_services::{outcome_of, VaServices};
use crate::providers::RefundRequest;
use crate::store::recovery::{self, WindowRefund};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::HashMap;

/// Status lookups in flight at once.
pub const CONCURRENCY: usize = 8;
/// VA list page size.
pub const VA_PAGE_SIZE: u32 = 100;
/// VA list pages read at most.
pub const VA_MAX_PAGES: u32 = 1000;

/// What kind of mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum MismatchKind {
    /// The provider has a refund we do not.
    MissingHere,
    /// Ours is completed; the provider has no such refund.
    MissingAtProvider,
    /// Final statuses differ, or ours is final and theirs is not.
    StatusDiffers,
    /// The amounts differ.
    AmountDiffers,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Side {
    /// Ours: PENDING, COMPLETED, REFUND_FAIL. Theirs: succeeded, failed, pending, absent
    /// (with the provider's own word in `detail`).
    pub status: String,
    /// The amount, when known.
    pub amount: Option<String>,
    /// The provider's status word or reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A difference between the provider and us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mismatch {
    /// What differs.
    pub kind: MismatchKind,
    /// The refund.
    pub refund_reference: String,
    /// Our side (none when we do not have it).
    pub ours: Option<Side>,
    /// Theirs.
    pub theirs: Side,
}

/// What a reconciliation found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The provider.
    pub provider: ProviderName,
    /// Refunds created at or after this time (both sides).
    pub since: Option<DateTime<Utc>>,
    /// How the provider was read: `list` (VA) or `status` lookups.
    pub method: &'static str,
    /// Our refunds compared.
    pub compared: usize,
    /// Refunds the provider listed (VA).
    pub listed: Option<usize>,
    /// Our refunds with nothing at the provider to compare with (BPN refunds it never
    /// accepted: its one state per order would be another refund's).
    pub not_compared: usize,
    /// The differences.
    pub mismatches: Vec<Mismatch>,
    /// Refunds the provider did not answer clearly about, and why.
    pub errors: Vec<String>,
}

/// Why a reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The provider is not configured.
    #[error("provider {0} is not configured")]
    NotConfigured(ProviderName),
    /// The provider's list could not be read.
    #[error("{0}")]
    Provider(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The provider's side, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Theirs {
    Succeeded,
    Failed,
    Pending,
    Absent,
}

impl Theirs {
    fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Absent => "absent",
        }
    }
}

/// The provider's side and its own word, or why it said nothing certain.
type Answer = Result<(Theirs, Option<String>), String>;

/// `Err(reason)` when the answer says nothing certain about the refund.
fn classify(outcome: &ProviderOutcome) -> Answer {
    match outcome {
        ProviderOutcome::Succeeded {
            provider_status, ..
        } => Ok((Theirs::Succeeded, Some(provider_status.clone()))),
        ProviderOutcome::Accepted {
            provider_status, ..
        } => Ok((Theirs::Pending, Some(provider_status.clone()))),
        ProviderOutcome::Failed(r) => Ok((
            Theirs::Failed,
            Some(format!("{}: {}", r.code.as_str(), r.message)),
        )),
        ProviderOutcome::NotFound => Ok((Theirs::Absent, None)),
        ProviderOutcome::Retryable { reason, .. } | ProviderOutcome::Unknown { reason } => {
            Err(reason.clone())
        }
    }
}

/// The status mismatch of ours against theirs, if any (see the module comment).
fn status_mismatch(ours: &str, theirs: Theirs) -> Option<MismatchKind> {
    match (ours, theirs) {
        ("COMPLETED", Theirs::Absent) => Some(MismatchKind::MissingAtProvider),
        ("COMPLETED", Theirs::Failed | Theirs::Pending)
        | ("REFUND_FAIL", Theirs::Succeeded | Theirs::Pending) => Some(MismatchKind::StatusDiffers),
        _ => None,
    }
}

fn our_side(r: &WindowRefund) -> Side {
    Side {
        status: r.status.clone(),
        amount: r.amount.map(|a| a.to_string()),
        detail: None,
    }
}

/// Compares one refund of ours with the provider's answer.
fn compare(
    ours: &WindowRefund,
    theirs: Theirs,
    detail: Option<String>,
    their_amount: Option<Decimal>,
) -> Vec<Mismatch> {
    let side = Side {
        status: theirs.as_str().into(),
        amount: their_amount.map(|a| a.to_string()),
        detail,
    };
    let mut found = Vec::new();
    if let Some(kind) = status_mismatch(&ours.status, theirs) {
        found.push(Mismatch {
            kind,
            refund_reference: ours.refund_reference.clone(),
            ours: Some(our_side(ours)),
            theirs: side.clone(),
        });
    }
    // Compared as numbers: 10 and 10.00 are the same amount.
    if let (Some(a), Some(b)) = (ours.amount, their_amount) {
        if a != b && theirs != Theirs::Absent {
            found.push(Mismatch {
                kind: MismatchKind::AmountDiffers,
                refund_reference: ours.refund_reference.clone(),
                ours: Some(our_side(ours)),
                theirs: side,
            });
        }
    }
    found
}

/// Reconciles `provider` for refunds created at or after `since` (all time without).
pub async fn run(
    ctx: &Context,
    provider: ProviderName,
    since: Option<DateTime<Utc>>,
) -> Result<Report, ReconcileError> {
    let from = since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let until = Utc::now() + chrono::TimeDelta::seconds(1);
    let ours =
        recovery::refunds_in_window(&ctx.pool, from, until, Some(provider.as_str()), false).await?;
    match provider {
        ProviderName::VaServices => reconcile_va(ctx, since, ours).await,
        other => reconcile_by_status(ctx, other, since, ours).await,
    }
}

async fn reconcile_va(
    ctx: &Context,
    since: Option<DateTime<Utc>>,
    ours: Vec<WindowRefund>,
) -> Result<Report, ReconcileError> {
    let provider = ProviderName::VaServices;
    let settings = ctx
        .config
        .providers
        .get(&provider)
        .ok_or(ReconcileError::NotConfigured(provider))?;
    let va =
        VaServices::new(settings.clone()).map_err(|e| ReconcileError::Provider(e.to_string()))?;
    let zone = va.timezone();
    let listed = va
        .list_all(VA_PAGE_SIZE, VA_MAX_PAGES)
        .await
        .map_err(ReconcileError::Provider)?;
    let listed_count = listed.len();
    // Theirs in the window (a refund without a readable date is kept: better one look too
    // many than a refund missed).
    let theirs: Vec<_> = listed
        .into_iter()
        .filter(|r| match (since, r.created_at(zone)) {
            (Some(s), Some(created)) => created >= s,
            _ => true,
        })
        .collect();
    let by_ref: HashMap<&str, &WindowRefund> = ours
        .iter()
        .map(|r| (r.refund_reference.as_str(), r))
        .collect();
    // Theirs we do not have in the window may be ours from before it.
    let unknown: Vec<String> = theirs
        .iter()
        .filter_map(|t| t.refund_reference.clone())
        .filter(|r| !by_ref.contains_key(r.as_str()))
        .collect();
    let older = recovery::refunds_by_reference(&ctx.pool, provider.as_str(), &unknown).await?;
    let older: HashMap<&str, &WindowRefund> = older
        .iter()
        .map(|r| (r.refund_reference.as_str(), r))
        .collect();
    let mut mismatches = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for t in &theirs {
        let Some(reference) = t.refund_reference.as_deref() else {
            errors.push("VA listed a refund without a refundReference".into());
            continue;
        };
        let amount = t
            .refund_amount
            .as_ref()
            .and_then(|a| crate::domain::parse_amount(a).ok());
        let (state, detail) = match classify(&outcome_of(t, zone)) {
            Ok(c) => c,
            Err(reason) => {
                errors.push(format!("{reference}: {reason}"));
                continue;
            }
        };
        let detail = detail.or_else(|| t.refund_status.clone());
        match by_ref.get(reference).or_else(|| older.get(reference)) {
            Some(ours) => {
                seen.insert(reference.to_owned());
                mismatches.extend(compare(ours, state, detail, amount));
            }
            None => mismatches.push(Mismatch {
                kind: MismatchKind::MissingHere,
                refund_reference: reference.to_owned(),
                ours: None,
                theirs: Side {
                    status: state.as_str().into(),
                    amount: amount.map(|a| a.to_string()),
                    detail,
                },
            }),
        }
    }
    // Ours that VA does not list.
    for r in &ours {
        if !seen.contains(&r.refund_reference) {
            mismatches.extend(compare(r, Theirs::Absent, None, None));
        }
    }
    Ok(Report {
        provider,
        since,
        method: "list",
        compared: ours.len(),
        listed: Some(listed_count),
        not_compared: 0,
        mismatches,
        errors,
    })
}

/// Whether the provider's status lookup can speak for this refund: BPN answers per order, so
/// a failed refund BPN never accepted (no provider reference) has nothing there of its own.
fn comparable(provider: ProviderName, r: &WindowRefund) -> bool {
    !(provider == ProviderName::Bpn && r.status == "REFUND_FAIL" && r.provider_reference.is_none())
}

/// The request an adapter looks a stored refund up with, as the dispatcher builds it.
fn request_of(r: &WindowRefund) -> Result<RefundRequest, String> {
    let cmd = RefundCommand::from_value(r.command.clone()).map_err(|e| e.message())?;
    Ok(RefundRequest::from_command(
        cmd,
        r.provider_reference.clone(),
    ))
}

async fn reconcile_by_status(
    ctx: &Context,
    provider: ProviderName,
    since: Option<DateTime<Utc>>,
    ours: Vec<WindowRefund>,
) -> Result<Report, ReconcileError> {
    let adapter = ctx
        .providers
        .get(provider)
        .ok_or(ReconcileError::NotConfigured(provider))?;
    let (ours, skipped): (Vec<WindowRefund>, Vec<WindowRefund>) =
        ours.into_iter().partition(|r| comparable(provider, r));
    let answers: Vec<(usize, Answer)> = futures::stream::iter(ours.iter().enumerate())
        .map(|(i, r)| {
            let adapter = adapter.clone();
            async move {
                let answer = match request_of(r) {
                    Ok(request) => classify(&adapter.status(&request).await),
                    Err(e) => Err(format!("stored command unreadable: {e}")),
                };
                (i, answer)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut answers = answers;
    answers.sort_by_key(|(i, _)| *i);
    let mut mismatches = Vec::new();
    let mut errors = Vec::new();
    for (i, answer) in answers {
        let r = &ours[i];
        match answer {
            Ok((state, detail)) => mismatches.extend(compare(r, state, detail, None)),
            Err(reason) => errors.push(format!("{}: {reason}", r.refund_reference)),
        }
    }
    Ok(Report {
        provider,
        since,
        method: "status",
        compared: ours.len(),
        listed: None,
        not_compared: skipped.len(),
        mismatches,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_that_disagree_are_mismatches_pending_ones_are_not() {
        use MismatchKind::*;
        let cases = [
            ("COMPLETED", Theirs::Succeeded, None),
            ("COMPLETED", Theirs::Failed, Some(StatusDiffers)),
            ("COMPLETED", Theirs::Pending, Some(StatusDiffers)),
            ("COMPLETED", Theirs::Absent, Some(MissingAtProvider)),
            ("REFUND_FAIL", Theirs::Succeeded, Some(StatusDiffers)),
            ("REFUND_FAIL", Theirs::Pending, Some(StatusDiffers)),
            ("REFUND_FAIL", Theirs::Failed, None),
            ("REFUND_FAIL", Theirs::Absent, None),
            ("PENDING", Theirs::Succeeded, None),
            ("PENDING", Theirs::Failed, None),
            ("PENDING", Theirs::Absent, None),
        ];
        for (ours, theirs, expected) in cases {
            assert_eq!(
                status_mismatch(ours, theirs),
                expected,
                "{ours} vs {theirs:?}"
            );
        }
    }

    #[test]
    fn an_unclear_answer_is_an_error_not_a_mismatch() {
        assert!(classify(&ProviderOutcome::Unknown {
            reason: "timeout".into()
        })
        .is_err());
        assert!(classify(&ProviderOutcome::Retryable {
            reason: "HTTP 503".into(),
            retry_after: None,
            may_have_reached_provider: true
        })
        .is_err());
        assert_eq!(
            classify(&ProviderOutcome::NotFound).map(|c| c.0),
            Ok(Theirs::Absent)
        );
    }
}
