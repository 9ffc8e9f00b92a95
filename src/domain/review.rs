//! Operator review: the refunds no machine can settle, and what an operator may do to them.
//!
//! A refund is flagged for review when its outcome is still open after `REVIEW_AFTER`
//! (unknown, unmapped, or pending at the provider), or when the provider's own webhooks
//! contradict each other. The flag changes no status: the dispatcher keeps asking the
//! provider on a slow schedule and a final answer still finishes the refund (and clears
//! the flag). An operator can also *resolve* it by hand. These rules are pure; the store
//! applies them inside its transaction.

use super::refund::{transition, FailureCode, FailureReason, RefundStatus, Transition};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;

/// Routing key of the event that flags a refund for review.
pub(crate) const REVIEW_ROUTING_KEY: &str = "refund.status.review_required";

/// Why a refund needs an operator, and since when (the `review` object of its event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Review {
    /// What is open, in words.
    pub reason: String,
    /// When the refund was flagged, RFC 3339 UTC.
    #[serde(serialize_with = "rfc3339_utc")]
    pub since: DateTime<Utc>,
}

/// Who settled a refund by hand, and why (the `resolution` object of its final event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resolution {
    /// Always `operator` today.
    pub by: String,
    /// The reason the operator gave.
    pub reason: String,
}

/// What the over-refund guard judged a refund against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardSource {
    /// The command's (or an earlier command's) `paymentAmount`.
    Command,
    /// The pay-ins ledger: a provider's payment notification.
    Ledger,
    /// The provider's own refundable amount, asked before the refund call (BVNK's
    /// estimate, BPN's order).
    Provider,
    /// Nothing: only the provider's own refusal protects the payment.
    None,
}

impl GuardSource {
    /// Stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Ledger => "ledger",
            Self::Provider => "provider",
            Self::None => "none",
        }
    }
}

/// The reason a refund still open after `review_after` is flagged with.
pub(crate) fn overdue_reason(
    review_after: Duration,
    phase: &str,
    provider_status: Option<&str>,
) -> String {
    let open = match phase {
        "NOT_SUBMITTED" => "the provider has not accepted it yet",
        "SUBMITTING" => "whether the provider has it is still unknown",
        _ => "the provider still reports it in progress",
    };
    let status = provider_status
        .map(|s| format!(" (provider status {s})"))
        .unwrap_or_default();
    format!(
        "no final answer after {}: {open}{status}",
        humanize(review_after)
    )
}

/// The reason a refund whose provider webhooks contradict each other is flagged with.
pub(crate) fn contradiction_reason(ours: RefundStatus, theirs: RefundStatus) -> String {
    format!("provider webhooks contradict each other: the refund is {ours}, a notification says {theirs}")
}

/// `90s`, `15m`, `24h`, `2d` for messages.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What an operator asked a refund to become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    /// `COMPLETED` or `REFUND_FAIL`.
    pub status: RefundStatus,
    /// Why (required, kept in the history and the event).
    pub reason: String,
    /// The provider's id for the refund, when the operator knows it.
    pub provider_reference: Option<String>,
}

/// What resolving does to the refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvePlan {
    /// A pending refund in review becomes final, with this failure for `REFUND_FAIL`.
    Finish {
        /// The final status.
        status: RefundStatus,
        /// For `REFUND_FAIL`: code `RESOLVED_BY_OPERATOR` with the operator's reason.
        failure: Option<FailureReason>,
    },
    /// A final refund flagged by contradicting webhooks, confirmed in its current status:
    /// the flag is cleared, the status stays.
    Acknowledge,
}

/// Why an operator's resolution was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveRefused {
    /// The request itself is wrong (answered 400).
    #[error("{0}")]
    Invalid(String),
    /// The refund is already final in another status: never moved backwards (409).
    #[error("refund is already {current}; a final status never changes (asked for {asked})")]
    AlreadyFinal {
        /// Its status.
        current: RefundStatus,
        /// What was asked.
        asked: RefundStatus,
    },
    /// The refund is pending but not in review: the machine may still finish it (409).
    #[error("refund is PENDING and not in review: the worker is still settling it with the provider (use recheck, or wait until it is flagged for review)")]
    NotInReview,
}

/// Longest reason an operator may give for a resolution.
pub(crate) const MAX_REASON_CHARS: usize = 500;

/// Decides an operator's resolution of a refund in `current` status (`in_review`: whether
/// it is flagged). Forward only, through [`transition`].
pub(crate) fn plan_resolution(
    current: RefundStatus,
    in_review: bool,
    request: &ResolveRequest,
) -> Result<ResolvePlan, ResolveRefused> {
    if request.reason.trim().is_empty() {
        return Err(ResolveRefused::Invalid(
            "reason is required: say why the refund is resolved by hand".into(),
        ));
    }
    if request.reason.chars().count() > MAX_REASON_CHARS {
        return Err(ResolveRefused::Invalid(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    if !request.status.is_final() {
        return Err(ResolveRefused::Invalid(format!(
            "status must be COMPLETED or REFUND_FAIL, not {}",
            request.status
        )));
    }
    match transition(current, request.status) {
        Transition::Apply if in_review => Ok(ResolvePlan::Finish {
            status: request.status,
            failure: (request.status == RefundStatus::RefundFail).then(|| {
                FailureReason::new(FailureCode::ResolvedByOperator, request.reason.trim())
            }),
        }),
        Transition::Apply => Err(ResolveRefused::NotInReview),
        Transition::Unchanged if in_review => Ok(ResolvePlan::Acknowledge),
        Transition::Unchanged | Transition::Stale | Transition::Contradiction => {
            Err(ResolveRefused::AlreadyFinal {
                current,
                asked: request.status,
            })
        }
    }
}

fn rfc3339_utc<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefundStatus::*;

    fn ask(status: RefundStatus) -> ResolveRequest {
        ResolveRequest {
            status,
            reason: "confirmed with the provider's support".into(),
            provider_reference: None,
        }
    }

    #[test]
    fn a_pending_refund_in_review_is_resolved_either_way() {
        assert_eq!(
            plan_resolution(Pending, true, &ask(Completed)),
            Ok(ResolvePlan::Finish {
                status: Completed,
                failure: None
            })
        );
        let failed = plan_resolution(Pending, true, &ask(RefundFail));
        assert!(matches!(
            failed,
            Ok(ResolvePlan::Finish { status: RefundFail, failure: Some(f) })
                if f.code == FailureCode::ResolvedByOperator && f.message.contains("support")
        ));
    }

    #[test]
    fn never_backwards_never_over_a_final_status_never_while_the_machine_can_finish() {
        for current in [Completed, RefundFail] {
            for asked in [Completed, RefundFail] {
                let r = plan_resolution(current, false, &ask(asked));
                assert_eq!(r, Err(ResolveRefused::AlreadyFinal { current, asked }));
            }
        }
        // Flagged by a contradiction: confirming the status it has clears the flag, the
        // other final status is still refused.
        assert_eq!(
            plan_resolution(Completed, true, &ask(Completed)),
            Ok(ResolvePlan::Acknowledge)
        );
        assert!(matches!(
            plan_resolution(Completed, true, &ask(RefundFail)),
            Err(ResolveRefused::AlreadyFinal { .. })
        ));
        assert_eq!(
            plan_resolution(Pending, false, &ask(Completed)),
            Err(ResolveRefused::NotInReview)
        );
        assert!(matches!(
            plan_resolution(Pending, true, &ask(Pending)),
            Err(ResolveRefused::Invalid(_))
        ));
        let mut blank = ask(Completed);
        blank.reason = "  ".into();
        assert!(matches!(
            plan_resolution(Pending, true, &blank),
            Err(ResolveRefused::Invalid(m)) if m.contains("reason")
        ));
    }

    #[test]
    fn reasons_say_what_is_open() {
        let r = overdue_reason(Duration::from_secs(86_400), "SUBMITTING", None);
        assert_eq!(
            r,
            "no final answer after 1d: whether the provider has it is still unknown"
        );
        let r = overdue_reason(Duration::from_secs(90), "ACCEPTED", Some("PROCESSING"));
        assert!(r.contains("90s") && r.contains("PROCESSING"), "{r}");
        assert!(contradiction_reason(Completed, RefundFail).contains("REFUND_FAIL"));
    }
}
