//! The provider-webhook decision: which refund a webhook names, and what it does to it.
//!
//! Pure: the store looks the candidates up and locks the refunds, then [`pick`] chooses the
//! refund each webhook names and [`decide`] judges each webhook, in arrival order, against
//! the status the batch's earlier webhooks left, noting what to write in a [`Changes`]
//! plan (in-progress statuses merged per refund, final statuses through the one state
//! machine, [`transition`]). The store writes the plan in a few set-based statements, so a
//! batch is judged exactly as if its webhooks had come one at a time.

use super::{
    transition, FailureReason, Fee, ProviderOutcome, RefundEvent, RefundStatus, Transition,
};
use std::collections::HashMap;

/// What applying one provider webhook did.
// The event is the answer's whole point and is moved once; boxing it would cost an
// allocation per refund on the hot path to save stack space nobody runs short of.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Seen before (same provider and event key): nothing changed.
    Duplicate,
    /// The refund became final; its event is in the outbox.
    Transitioned(RefundEvent),
    /// Known, and nothing to change: a repeat of the final status, a late non-final status
    /// after a final one, or a still-pending status (provider status word updated).
    Unchanged {
        /// The refund.
        refund_reference: String,
    },
    /// A final status contradicting the refund's final status: recorded, raised, not applied.
    Contradiction {
        /// The refund.
        refund_reference: String,
        /// Our status.
        ours: RefundStatus,
        /// What the provider now says.
        theirs: RefundStatus,
    },
    /// No refund matches yet (the webhook raced the provider's HTTP answer): kept, and
    /// applied when the refund appears.
    Parked,
    /// Several refunds could match (only the payment was named): kept for an operator.
    Unmatched {
        /// Why.
        reason: String,
    },
    /// A payment status, kept in the pay-ins ledger.
    PayIn,
    /// A notification refund-worker has no use for.
    Ignored,
}

impl Applied {
    /// Inbox state and metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Transitioned(_) => "applied",
            Self::Unchanged { .. } => "unchanged",
            Self::Contradiction { .. } => "contradiction",
            Self::Parked => "parked",
            Self::Unmatched { .. } => "unmatched",
            Self::PayIn => "pay_in",
            Self::Ignored => "ignored",
        }
    }

    /// The state its inbox row is left in.
    pub fn inbox_state(&self) -> &'static str {
        match self {
            Self::Duplicate | Self::Unchanged { .. } => "UNCHANGED",
            Self::Transitioned(_) | Self::PayIn => "APPLIED",
            Self::Contradiction { .. } => "CONTRADICTION",
            Self::Parked => "PARKED",
            Self::Unmatched { .. } => "UNMATCHED",
            Self::Ignored => "IGNORED",
        }
    }
}

/// What applying a webhook did, and what its inbox row says about it.
#[derive(Debug, Clone)]
pub(crate) struct Decided {
    /// What it did.
    pub applied: Applied,
    /// The refund it concerns, when known.
    pub refund_reference: Option<String>,
    /// What happened, for an operator.
    pub detail: Option<String>,
}

impl Decided {
    /// Gives a still parked webhook up: no refund appeared for it, so it is kept as
    /// unmatched, for an operator. Anything else is left as it is.
    pub(crate) fn give_up(&mut self) {
        if self.applied == Applied::Parked {
            let reason = "no refund appeared for this webhook".to_owned();
            self.detail = Some(reason.clone());
            self.applied = Applied::Unmatched { reason };
        }
    }
}

/// A refund that one of a webhook's keys names, as the store looks them up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    /// 1: by our reference, 2: by the provider's, 3: by the payment.
    pub via: i32,
    /// The refund.
    pub refund_reference: String,
    /// Its status.
    pub status: String,
    /// When it was accepted (of several, the oldest is taken).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The refund a webhook names, from its candidates: by our reference, then the provider's
/// (the one still pending should it name several, as BPN's order id names every partial
/// refund of the order; else the oldest), then the payment (only when exactly one refund of
/// that payment is pending, or exactly one exists). `Err` says why it is ambiguous.
pub(crate) fn pick(
    mut candidates: Vec<&Candidate>,
    payment: Option<&str>,
) -> Result<Option<String>, String> {
    candidates.sort_by_key(|c| (c.via, c.created_at));
    match candidates.first() {
        None => return Ok(None),
        Some(c) if c.via < 3 => {
            let same: Vec<&&Candidate> = candidates.iter().filter(|x| x.via == c.via).collect();
            let pending: Vec<&&&Candidate> =
                same.iter().filter(|x| x.status == "PENDING").collect();
            return match (same.len(), pending.as_slice()) {
                (2.., [only]) => Ok(Some(only.refund_reference.clone())),
                _ => Ok(Some(c.refund_reference.clone())),
            };
        }
        Some(_) => {}
    }
    let pending: Vec<&Candidate> = candidates
        .iter()
        .copied()
        .filter(|c| c.status == "PENDING")
        .collect();
    match (candidates.as_slice(), pending.as_slice()) {
        ([only], _) | (_, [only]) => Ok(Some(only.refund_reference.clone())),
        (all, _) => Err(format!(
            "{} refunds of payment {} could match; the webhook names no refund",
            all.len(),
            payment.unwrap_or_default()
        )),
    }
}

/// What a batch's refund webhooks do to the refunds, decided under their locks.
#[derive(Default)]
pub(crate) struct Changes<'a> {
    /// In-progress statuses, one per refund (later ones merged into earlier ones).
    pub progress: Vec<Progress<'a>>,
    /// Final statuses, at most one per refund (the state machine sees to it).
    pub finishes: Vec<FinishPlan<'a>>,
}

/// What the provider says of a refund still in progress at its end.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Progress<'a> {
    /// The refund.
    pub reference: String,
    /// The provider's id, when it says one.
    pub provider_reference: Option<&'a str>,
    /// The provider's status word.
    pub provider_status: &'a str,
    /// The provider's fee, when it reports one.
    pub fee: Option<&'a Fee>,
}

/// One refund a webhook makes final.
pub(crate) struct FinishPlan<'a> {
    /// Which webhook of the batch makes it final.
    pub at: usize,
    /// The status it had (pending).
    pub from: RefundStatus,
    /// The refund.
    pub reference: String,
    /// The final status.
    pub status: RefundStatus,
    /// Why it failed, for `REFUND_FAIL`.
    pub failure: Option<&'a FailureReason>,
    /// The provider's id, when it says one.
    pub provider_reference: Option<&'a str>,
    /// The provider's status word, when it says one.
    pub provider_status: Option<&'a str>,
    /// The provider's fee, when it reports one.
    pub fee: Option<&'a Fee>,
}

/// Decides one refund webhook against the refund's status as the batch has left it, and
/// notes the change to make in `changes`. `None` when it makes the refund final (its event
/// exists only once the update returned the row).
pub(crate) fn decide<'a>(
    found: Result<Option<String>, String>,
    outcome: &'a ProviderOutcome,
    current: &mut HashMap<String, RefundStatus>,
    at: usize,
    changes: &mut Changes<'a>,
) -> Option<Applied> {
    let reference = match found {
        Ok(Some(reference)) => reference,
        Ok(None) => return Some(Applied::Parked),
        Err(reason) => return Some(Applied::Unmatched { reason }),
    };
    // Named but not locked: it matched by a key that changed before the lock; try later.
    let Some(&from) = current.get(&reference) else {
        return Some(Applied::Parked);
    };
    let unchanged = || Applied::Unchanged {
        refund_reference: reference.clone(),
    };
    let (target, failure, provider_reference, provider_status, fee) = match outcome {
        ProviderOutcome::Succeeded {
            provider_reference,
            provider_status,
            fee,
        } => (
            RefundStatus::Completed,
            None,
            provider_reference.as_deref(),
            Some(provider_status.as_str()).filter(|s| !s.is_empty()),
            fee.as_ref(),
        ),
        ProviderOutcome::Failed(reason) => {
            (RefundStatus::RefundFail, Some(reason), None, None, None)
        }
        ProviderOutcome::Accepted {
            provider_reference,
            provider_status,
            fee,
        } => {
            if from == RefundStatus::Pending {
                let now = Progress {
                    reference: reference.clone(),
                    provider_reference: provider_reference.as_deref(),
                    provider_status,
                    fee: fee.as_ref(),
                };
                // One row per refund in the update: a later status merges into an earlier one
                // as the second of two single updates would have.
                match changes
                    .progress
                    .iter_mut()
                    .find(|p| p.reference == reference)
                {
                    Some(earlier) => {
                        *earlier = Progress {
                            provider_reference: now
                                .provider_reference
                                .or(earlier.provider_reference),
                            fee: now.fee.or(earlier.fee),
                            ..now
                        }
                    }
                    None => changes.progress.push(now),
                }
            }
            return Some(unchanged());
        }
        // Parsers classify webhooks as final or in progress; anything else says nothing.
        ProviderOutcome::Retryable { .. }
        | ProviderOutcome::Unknown { .. }
        | ProviderOutcome::NotFound => return Some(unchanged()),
    };
    match transition(from, target) {
        Transition::Apply => {
            current.insert(reference.clone(), target);
            changes.finishes.push(FinishPlan {
                at,
                from,
                reference,
                status: target,
                failure,
                provider_reference,
                provider_status,
                fee,
            });
            None
        }
        Transition::Unchanged | Transition::Stale => Some(unchanged()),
        Transition::Contradiction => Some(Applied::Contradiction {
            refund_reference: reference,
            ours: from,
            theirs: target,
        }),
    }
}

/// The inbox's view of a refund webhook's result: the refund it concerns and a detail.
pub(crate) fn refund_result(applied: Applied, outcome: &ProviderOutcome) -> Decided {
    let refund_reference = match &applied {
        Applied::Transitioned(e) => Some(e.refund_reference.clone()),
        Applied::Unchanged { refund_reference }
        | Applied::Contradiction {
            refund_reference, ..
        } => Some(refund_reference.clone()),
        _ => None,
    };
    let detail = match &applied {
        Applied::Contradiction { ours, theirs, .. } => {
            Some(format!("provider says {theirs}, refund is {ours}"))
        }
        Applied::Unmatched { reason } => Some(reason.clone()),
        _ => {
            let (label, detail) = outcome.describe();
            Some(match detail {
                Some(d) => format!("{label}: {d}"),
                None => label.to_owned(),
            })
        }
    };
    Decided {
        applied,
        refund_reference,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureCode;

    fn candidate(via: i32, reference: &str, status: &str, age_secs: i64) -> Candidate {
        Candidate {
            via,
            refund_reference: reference.into(),
            status: status.into(),
            created_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1000 - age_secs),
        }
    }

    #[test]
    fn pick_prefers_our_reference_then_the_providers_then_the_payment() {
        let ours = candidate(1, "R-ours", "COMPLETED", 0);
        let theirs = candidate(2, "R-theirs", "PENDING", 5);
        let payment = candidate(3, "R-payment", "PENDING", 9);
        assert_eq!(
            pick(vec![&payment, &theirs, &ours], Some("P")),
            Ok(Some("R-ours".into()))
        );
        assert_eq!(
            pick(vec![&payment, &theirs], Some("P")),
            Ok(Some("R-theirs".into()))
        );
        assert_eq!(
            pick(vec![&payment], Some("P")),
            Ok(Some("R-payment".into()))
        );
        assert_eq!(pick(vec![], Some("P")), Ok(None));
    }

    #[test]
    fn pick_takes_the_oldest_of_several_provider_matches() {
        let young = candidate(2, "R-young", "PENDING", 1);
        let old = candidate(2, "R-old", "PENDING", 50);
        assert_eq!(pick(vec![&young, &old], None), Ok(Some("R-old".into())));
    }

    #[test]
    fn of_several_provider_matches_the_one_pending_is_taken() {
        // BPN: every refund of an order has the order id as the provider's reference.
        let done = candidate(2, "R-first", "COMPLETED", 50);
        let open = candidate(2, "R-second", "PENDING", 1);
        assert_eq!(pick(vec![&done, &open], None), Ok(Some("R-second".into())));
        let also_done = candidate(2, "R-second", "COMPLETED", 1);
        assert_eq!(
            pick(vec![&also_done, &done], None),
            Ok(Some("R-first".into()))
        );
    }

    #[test]
    fn pick_by_payment_needs_one_refund_or_one_pending() {
        let done = candidate(3, "R-done", "COMPLETED", 9);
        let pending = candidate(3, "R-pending", "PENDING", 5);
        let other = candidate(3, "R-other", "PENDING", 1);
        assert_eq!(
            pick(vec![&done, &pending], Some("P-1")),
            Ok(Some("R-pending".into()))
        );
        let ambiguous = pick(vec![&done, &pending, &other], Some("P-1"));
        assert_eq!(
            ambiguous,
            Err("3 refunds of payment P-1 could match; the webhook names no refund".into())
        );
        let both_final = candidate(3, "R-failed", "REFUND_FAIL", 2);
        assert!(pick(vec![&done, &both_final], Some("P-1")).is_err());
    }

    #[test]
    fn giving_up_turns_only_a_parked_webhook_into_an_unmatched_one() {
        let mut parked = Decided {
            applied: Applied::Parked,
            refund_reference: None,
            detail: None,
        };
        parked.give_up();
        let reason = "no refund appeared for this webhook".to_owned();
        assert_eq!(parked.detail.as_deref(), Some(reason.as_str()));
        assert_eq!(parked.applied, Applied::Unmatched { reason });
        let mut ignored = Decided {
            applied: Applied::Ignored,
            refund_reference: None,
            detail: Some("kind".into()),
        };
        ignored.give_up();
        assert_eq!(ignored.applied, Applied::Ignored);
        assert_eq!(ignored.detail.as_deref(), Some("kind"));
    }

    #[test]
    fn the_inbox_row_says_which_refund_and_what_happened() {
        let unchanged = refund_result(
            Applied::Unchanged {
                refund_reference: "R-1".into(),
            },
            &succeeded(),
        );
        assert_eq!(unchanged.refund_reference.as_deref(), Some("R-1"));
        assert_eq!(unchanged.detail.as_deref(), Some("succeeded: SUCCESS"));
        assert_eq!(unchanged.applied.inbox_state(), "UNCHANGED");
        let raised = refund_result(
            Applied::Contradiction {
                refund_reference: "R-2".into(),
                ours: RefundStatus::Completed,
                theirs: RefundStatus::RefundFail,
            },
            &succeeded(),
        );
        assert_eq!(raised.refund_reference.as_deref(), Some("R-2"));
        assert_eq!(
            raised.detail.as_deref(),
            Some("provider says REFUND_FAIL, refund is COMPLETED")
        );
        let unmatched = refund_result(
            Applied::Unmatched {
                reason: "two match".into(),
            },
            &succeeded(),
        );
        assert_eq!(
            (unmatched.refund_reference, unmatched.detail.as_deref()),
            (None, Some("two match"))
        );
    }

    fn succeeded() -> ProviderOutcome {
        ProviderOutcome::Succeeded {
            provider_reference: Some("PR-1".into()),
            provider_status: "SUCCESS".into(),
            fee: None,
        }
    }

    fn accepted(reference: Option<&str>, status: &str) -> ProviderOutcome {
        ProviderOutcome::Accepted {
            provider_reference: reference.map(Into::into),
            provider_status: status.into(),
            fee: None,
        }
    }

    #[test]
    fn decide_sees_what_earlier_webhooks_of_the_batch_did() {
        let mut current = HashMap::from([("R-1".to_owned(), RefundStatus::Pending)]);
        let mut changes = Changes::default();
        let (done, failed) = (
            succeeded(),
            ProviderOutcome::Failed(FailureReason::new(FailureCode::ProviderRejected, "no")),
        );
        let found = || Ok(Some("R-1".to_owned()));
        // The first final status is applied (its event comes from the update) ...
        assert_eq!(decide(found(), &done, &mut current, 0, &mut changes), None);
        assert_eq!(current["R-1"], RefundStatus::Completed);
        // ... a repeat of it changes nothing, a contradicting one is raised, not applied.
        assert_eq!(
            decide(found(), &done, &mut current, 1, &mut changes),
            Some(Applied::Unchanged {
                refund_reference: "R-1".into()
            })
        );
        assert_eq!(
            decide(found(), &failed, &mut current, 2, &mut changes),
            Some(Applied::Contradiction {
                refund_reference: "R-1".into(),
                ours: RefundStatus::Completed,
                theirs: RefundStatus::RefundFail,
            })
        );
        // A late in-progress status after the final one writes nothing.
        let late = accepted(None, "PROCESSING");
        decide(found(), &late, &mut current, 3, &mut changes);
        assert!(changes.progress.is_empty());
        assert_eq!(changes.finishes.len(), 1);
        assert_eq!(changes.finishes[0].from, RefundStatus::Pending);
        assert_eq!(changes.finishes[0].provider_status, Some("SUCCESS"));
    }

    #[test]
    fn decide_merges_in_progress_statuses_of_one_refund() {
        let mut current = HashMap::from([("R-1".to_owned(), RefundStatus::Pending)]);
        let mut changes = Changes::default();
        let (first, second) = (
            accepted(Some("PR-9"), "RECEIVED"),
            accepted(None, "PROCESSING"),
        );
        for (at, outcome) in [&first, &second].into_iter().enumerate() {
            let applied = decide(
                Ok(Some("R-1".into())),
                outcome,
                &mut current,
                at,
                &mut changes,
            );
            assert_eq!(
                applied,
                Some(Applied::Unchanged {
                    refund_reference: "R-1".into()
                })
            );
        }
        assert_eq!(changes.progress.len(), 1);
        let merged = &changes.progress[0];
        assert_eq!(
            (
                merged.reference.as_str(),
                merged.provider_reference,
                merged.provider_status
            ),
            ("R-1", Some("PR-9"), "PROCESSING")
        );
    }

    #[test]
    fn decide_parks_what_it_cannot_find_and_keeps_ambiguity_for_an_operator() {
        let mut current = HashMap::new();
        let mut changes = Changes::default();
        let done = succeeded();
        assert_eq!(
            decide(Ok(None), &done, &mut current, 0, &mut changes),
            Some(Applied::Parked)
        );
        // Named, but not among the locked rows.
        assert_eq!(
            decide(
                Ok(Some("R-gone".into())),
                &done,
                &mut current,
                0,
                &mut changes
            ),
            Some(Applied::Parked)
        );
        assert_eq!(
            decide(
                Err("two match".into()),
                &done,
                &mut current,
                0,
                &mut changes
            ),
            Some(Applied::Unmatched {
                reason: "two match".into()
            })
        );
        assert!(changes.finishes.is_empty() && changes.progress.is_empty());
    }
}
