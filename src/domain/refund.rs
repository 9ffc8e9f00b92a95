//! The refund state machine.
//!
//! A refund has a *status* that merchants see (`PENDING` -> `COMPLETED` | `REFUND_FAIL`,
//! forward only) and a *phase* that records what we know about the provider's side while
//! it is pending: whether it has the refund, may have it, or certainly has not. The phase
//! is what makes retries safe: a refund in `Submitting` may exist at the provider, so it is
//! never re-sent before the provider's status has been asked.
//!
//! [`transition`] and [`decide`] are the only places these rules live; the store applies
//! their results and the database re-checks them (conditional updates, a trigger).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The status merchants see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    /// Accepted by refund-worker, not final yet.
    Pending,
    /// The provider confirmed the refund.
    Completed,
    /// The refund will not happen; see the failure reason.
    RefundFail,
}

impl RefundStatus {
    /// Database and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::RefundFail => "REFUND_FAIL",
        }
    }

    /// Parses the database and wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "COMPLETED" => Some(Self::Completed),
            "REFUND_FAIL" => Some(Self::RefundFail),
            _ => None,
        }
    }

    /// Routing key of the status event (`refund.status.pending`...).
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Pending => "refund.status.pending",
            Self::Completed => "refund.status.completed",
            Self::RefundFail => "refund.status.refund_fail",
        }
    }

    /// Whether no further change is possible.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the outcome of applying a new status to a refund is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move forward: record it and publish an event.
    Apply,
    /// Same status again (a repeated poll or webhook): nothing to do.
    Unchanged,
    /// An older status arriving late (PENDING after COMPLETED): ignored.
    Stale,
    /// A final status contradicting another final status: never applied, raised as an alert.
    Contradiction,
}

/// The one place that says which status changes are allowed.
pub fn transition(from: RefundStatus, to: RefundStatus) -> Transition {
    use RefundStatus::*;
    match (from, to) {
        (Pending, Completed) | (Pending, RefundFail) => Transition::Apply,
        (Pending, Pending) | (Completed, Completed) | (RefundFail, RefundFail) => {
            Transition::Unchanged
        }
        (Completed, Pending) | (RefundFail, Pending) => Transition::Stale,
        (Completed, RefundFail) | (RefundFail, Completed) => Transition::Contradiction,
    }
}

/// What we know of the provider's side of a pending refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The provider certainly does not have it: safe to submit.
    NotSubmitted,
    /// A submit was sent and its outcome is unknown: ask for status before any resubmit.
    Submitting,
    /// The provider has it: poll its status (or wait for a webhook).
    Accepted,
    /// The refund reached a final status.
    Final,
}

impl Phase {
    /// Database form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotSubmitted => "NOT_SUBMITTED",
            Self::Submitting => "SUBMITTING",
            Self::Accepted => "ACCEPTED",
            Self::Final => "FINAL",
        }
    }

    /// Parses the database form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "NOT_SUBMITTED" => Some(Self::NotSubmitted),
            "SUBMITTING" => Some(Self::Submitting),
            "ACCEPTED" => Some(Self::Accepted),
            "FINAL" => Some(Self::Final),
            _ => None,
        }
    }
}

/// Failure codes carried by `REFUND_FAIL` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureCode {
    /// The command failed validation (or names a provider that is not configured).
    InvalidCommand,
    /// More than the payment allows would be refunded.
    AmountExceedsRefundable,
    /// The provider says the payment cannot be refunded.
    NotRefundable,
    /// The provider rejected the refund; its message is kept.
    ProviderRejected,
    /// Every retry failed and the provider certainly does not have the refund.
    RetriesExhausted,
    /// A 4-eyes approval was rejected at the provider.
    ApprovalRejected,
    /// An operator resolved a refund in review as failed (the provider never gave a final
    /// answer; the operator's reason is the message).
    ResolvedByOperator,
}

impl FailureCode {
    /// Wire and database form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCommand => "INVALID_COMMAND",
            Self::AmountExceedsRefundable => "AMOUNT_EXCEEDS_REFUNDABLE",
            Self::NotRefundable => "NOT_REFUNDABLE",
            Self::ProviderRejected => "PROVIDER_REJECTED",
            Self::RetriesExhausted => "RETRIES_EXHAUSTED",
            Self::ApprovalRejected => "APPROVAL_REJECTED",
            Self::ResolvedByOperator => "RESOLVED_BY_OPERATOR",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::InvalidCommand,
            Self::AmountExceedsRefundable,
            Self::NotRefundable,
            Self::ProviderRejected,
            Self::RetriesExhausted,
            Self::ApprovalRejected,
            Self::ResolvedByOperator,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Why a refund failed: a code for machines, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FailureReason {
    /// Machine-readable code.
    pub code: FailureCode,
    /// Human-readable, specific message (the provider's own where there is one).
    pub message: String,
}

impl FailureReason {
    /// Builds a reason.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Which provider call produced an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The refund request itself.
    Submit,
    /// A status lookup.
    Status,
}

/// A fee the provider charges for a refund, kept on the refund as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fee {
    /// Exact amount.
    pub amount: rust_decimal::Decimal,
    /// Currency code, as the provider gave it.
    pub currency: String,
}

/// The classified result of one provider call: every adapter maps its responses onto this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    /// The provider has the refund and it is in progress.
    Accepted {
        /// The provider's id for the refund, if it gave one.
        provider_reference: Option<String>,
        /// The provider's own status word.
        provider_status: String,
        /// The provider's fee for the refund, where it reports one (BVNK).
        fee: Option<Fee>,
    },
    /// The refund is done.
    Succeeded {
        /// The provider's id for the refund, if it gave one.
        provider_reference: Option<String>,
        /// The provider's own status word.
        provider_status: String,
        /// The provider's fee for the refund, where it reports one (BVNK).
        fee: Option<Fee>,
    },
    /// The refund will not happen.
    Failed(FailureReason),
    /// A transient failure (connect error, 5xx, 429, "busy").
    Retryable {
        /// What happened, for the attempt log.
        reason: String,
        /// The provider's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// Whether the request may have been processed (false for connect errors and 429).
        may_have_reached_provider: bool,
    },
    /// The request was sent but no answer came (timeout): it may have been applied.
    Unknown {
        /// What happened.
        reason: String,
    },
    /// Status lookup: the provider has no such refund.
    NotFound,
}

impl ProviderOutcome {
    /// A short class label (for metrics and the attempts table) and the detail.
    pub fn describe(&self) -> (&'static str, Option<String>) {
        match self {
            ProviderOutcome::Accepted {
                provider_status, ..
            } => ("accepted", Some(provider_status.clone())),
            ProviderOutcome::Succeeded {
                provider_status, ..
            } => ("succeeded", Some(provider_status.clone())),
            ProviderOutcome::Failed(r) => (
                "failed",
                Some(format!("{}: {}", r.code.as_str(), r.message)),
            ),
            ProviderOutcome::Retryable { reason, .. } => ("retryable", Some(reason.clone())),
            ProviderOutcome::Unknown { reason } => ("unknown", Some(reason.clone())),
            ProviderOutcome::NotFound => ("not_found", None),
        }
    }
}

/// How long to wait before the next look at a pending refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Retry after a failure: exponential backoff with jitter, at least `retry_after`.
    Backoff {
        /// The provider's requested minimum delay.
        retry_after: Option<Duration>,
    },
    /// The provider has it: poll its status on the polling schedule.
    Poll,
}

/// What to do with a pending refund after a provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Mark it `COMPLETED`.
    Complete {
        /// The provider's id for the refund.
        provider_reference: Option<String>,
        /// The provider's status word.
        provider_status: String,
        /// The provider's fee, when reported.
        fee: Option<Fee>,
    },
    /// Mark it `REFUND_FAIL`.
    Fail(FailureReason),
    /// The provider confirmed it has no such refund: submit now (same idempotency key).
    Submit,
    /// Stay `PENDING` in `phase` and look again later.
    Wait {
        /// The phase to record.
        phase: Phase,
        /// When to look again.
        wait: Wait,
        /// The provider's id, when this call revealed it.
        provider_reference: Option<String>,
        /// The provider's status word, when known.
        provider_status: Option<String>,
        /// The provider's fee, when reported.
        fee: Option<Fee>,
    },
}

/// Decides the next step for a pending refund from the outcome of one provider call.
///
/// `phase` is the phase before the call; `attempts` counts submits made so far (including
/// this one when `call` is `Submit`); `max_attempts` bounds submits. A refund the provider
/// may have accepted is never failed for running out of attempts: it stays pending.
pub fn decide(
    phase: Phase,
    call: CallKind,
    outcome: ProviderOutcome,
    attempts: u32,
    max_attempts: u32,
) -> Decision {
    use ProviderOutcome as O;
    let backoff = |phase, retry_after| Decision::Wait {
        phase,
        wait: Wait::Backoff { retry_after },
        provider_reference: None,
        provider_status: None,
        fee: None,
    };
    match (call, outcome) {
        (
            _,
            O::Succeeded {
                provider_reference,
                provider_status,
                fee,
            },
        ) => Decision::Complete {
            provider_reference,
            provider_status,
            fee,
        },
        (_, O::Failed(reason)) => Decision::Fail(reason),
        (
            _,
            O::Accepted {
                provider_reference,
                provider_status,
                fee,
            },
        ) => Decision::Wait {
            phase: Phase::Accepted,
            wait: Wait::Poll,
            provider_reference,
            provider_status: Some(provider_status),
            fee,
        },
        // The request never got processed: safe to send again, or to give up.
        (
            CallKind::Submit,
            O::Retryable {
                reason,
                retry_after,
                may_have_reached_provider: false,
            },
        ) => {
            if attempts >= max_attempts {
                Decision::Fail(FailureReason::new(
                    FailureCode::RetriesExhausted,
                    format!("gave up after {attempts} attempts; last error: {reason}"),
                ))
            } else {
                backoff(Phase::NotSubmitted, retry_after)
            }
        }
        // It may exist at the provider now: the next step asks for its status first.
        (
            CallKind::Submit,
            O::Retryable {
                retry_after,
                may_have_reached_provider: true,
                ..
            },
        ) => backoff(Phase::Submitting, retry_after),
        (CallKind::Submit, O::Unknown { .. }) | (CallKind::Submit, O::NotFound) => {
            backoff(Phase::Submitting, None)
        }
        // Status lookups that fail say nothing new: keep what we knew.
        (CallKind::Status, O::Retryable { retry_after, .. }) => backoff(phase, retry_after),
        (CallKind::Status, O::Unknown { .. }) => backoff(phase, None),
        (CallKind::Status, O::NotFound) => match phase {
            // Confirmed absent after a failed or unknown submit: send it again, if allowed.
            Phase::NotSubmitted | Phase::Submitting => {
                if attempts >= max_attempts {
                    Decision::Fail(FailureReason::new(
                        FailureCode::RetriesExhausted,
                        format!(
                            "gave up after {attempts} attempts; the provider confirms it has no such refund"
                        ),
                    ))
                } else {
                    Decision::Submit
                }
            }
            // It had accepted it once: never resubmit, keep polling (and let people look).
            Phase::Accepted | Phase::Final => Decision::Wait {
                phase,
                wait: Wait::Poll,
                provider_reference: None,
                provider_status: Some("NOT_FOUND".into()),
                fee: None,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RefundStatus::*;

    #[test]
    fn transitions_only_go_forward() {
        assert_eq!(transition(Pending, Completed), Transition::Apply);
        assert_eq!(transition(Pending, RefundFail), Transition::Apply);
        assert_eq!(transition(Completed, Pending), Transition::Stale);
        assert_eq!(transition(RefundFail, Pending), Transition::Stale);
        assert_eq!(transition(Completed, RefundFail), Transition::Contradiction);
        assert_eq!(transition(RefundFail, Completed), Transition::Contradiction);
        for s in [Pending, Completed, RefundFail] {
            assert_eq!(transition(s, s), Transition::Unchanged);
        }
    }

    #[test]
    fn names_round_trip() {
        for s in [Pending, Completed, RefundFail] {
            assert_eq!(RefundStatus::parse(s.as_str()), Some(s));
        }
        for p in [
            Phase::NotSubmitted,
            Phase::Submitting,
            Phase::Accepted,
            Phase::Final,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(
            FailureCode::parse("APPROVAL_REJECTED"),
            Some(FailureCode::ApprovalRejected)
        );
        assert_eq!(
            serde_json::to_string(&FailureCode::AmountExceedsRefundable).unwrap(),
            "\"AMOUNT_EXCEEDS_REFUNDABLE\""
        );
    }

    fn retryable(reached: bool) -> ProviderOutcome {
        ProviderOutcome::Retryable {
            reason: "HTTP 500".into(),
            retry_after: None,
            may_have_reached_provider: reached,
        }
    }

    #[test]
    fn a_refund_the_provider_may_have_is_never_failed_for_retries() {
        let d = decide(
            Phase::NotSubmitted,
            CallKind::Submit,
            retryable(true),
            99,
            5,
        );
        assert!(matches!(
            d,
            Decision::Wait {
                phase: Phase::Submitting,
                ..
            }
        ));
        let d = decide(
            Phase::NotSubmitted,
            CallKind::Submit,
            ProviderOutcome::Unknown {
                reason: "timeout".into(),
            },
            99,
            5,
        );
        assert!(matches!(
            d,
            Decision::Wait {
                phase: Phase::Submitting,
                ..
            }
        ));
        let d = decide(Phase::Accepted, CallKind::Status, retryable(true), 99, 5);
        assert!(matches!(
            d,
            Decision::Wait {
                phase: Phase::Accepted,
                ..
            }
        ));
    }

    #[test]
    fn unsent_requests_exhaust_into_refund_fail() {
        let d = decide(
            Phase::NotSubmitted,
            CallKind::Submit,
            retryable(false),
            5,
            5,
        );
        assert!(matches!(d, Decision::Fail(r) if r.code == FailureCode::RetriesExhausted));
        let d = decide(
            Phase::NotSubmitted,
            CallKind::Submit,
            retryable(false),
            2,
            5,
        );
        assert!(matches!(
            d,
            Decision::Wait {
                phase: Phase::NotSubmitted,
                ..
            }
        ));
    }

    #[test]
    fn unknown_outcome_is_resolved_by_status_before_resubmit() {
        assert_eq!(
            decide(
                Phase::Submitting,
                CallKind::Status,
                ProviderOutcome::NotFound,
                1,
                5
            ),
            Decision::Submit
        );
        let found = decide(
            Phase::Submitting,
            CallKind::Status,
            ProviderOutcome::Accepted {
                provider_reference: None,
                provider_status: "PENDING".into(),
                fee: None,
            },
            1,
            5,
        );
        assert!(matches!(
            found,
            Decision::Wait {
                phase: Phase::Accepted,
                wait: Wait::Poll,
                ..
            }
        ));
        // Accepted once, missing now: keep polling, never resubmit.
        assert!(matches!(
            decide(
                Phase::Accepted,
                CallKind::Status,
                ProviderOutcome::NotFound,
                1,
                5
            ),
            Decision::Wait {
                phase: Phase::Accepted,
                ..
            }
        ));
    }

    #[test]
    fn success_and_final_failure_are_final() {
        let fee = Fee {
            amount: rust_decimal::Decimal::new(150, 2),
            currency: "EUR".into(),
        };
        let ok = ProviderOutcome::Succeeded {
            provider_reference: Some("p1".into()),
            provider_status: "COMPLETED".into(),
            fee: Some(fee.clone()),
        };
        // The fee travels with the decision so it is kept on the refund.
        assert!(matches!(
            decide(Phase::Accepted, CallKind::Status, ok, 1, 5),
            Decision::Complete { fee: Some(f), .. } if f == fee
        ));
        let fail = ProviderOutcome::Failed(FailureReason::new(FailureCode::ProviderRejected, "no"));
        assert!(matches!(
            decide(Phase::NotSubmitted, CallKind::Submit, fail, 1, 5),
            Decision::Fail(_)
        ));
    }
}
