//! Property tests: money parsing and formatting round-trip exactly, and no sequence of
//! provider outcomes or webhooks moves a refund backwards.

use proptest::prelude::*;
use refund_worker::domain::{
    decide, format_amount, json_number, parse_amount, transition, CallKind, Decision, FailureCode,
    FailureReason, Phase, ProviderOutcome, RefundStatus, Transition,
};
use rust_decimal::Decimal;

fn amount() -> impl Strategy<Value = Decimal> {
    // Up to 18 integer digits and 0..=8 decimals: every amount a currency can carry.
    (0u64..1_000_000_000_000_000_000, 0u32..=8)
        .prop_map(|(mantissa, scale)| Decimal::from_i128_with_scale(mantissa as i128, scale))
}

proptest! {
    #[test]
    fn amounts_round_trip_through_text_and_json(a in amount()) {
        let text = format_amount(a);
        prop_assert!(!text.contains('e') && !text.contains('E'), "{}", text);
        let back = parse_amount(&serde_json::Value::String(text.clone())).unwrap();
        prop_assert_eq!(back, a);
        // As a JSON number, serialised and parsed again, never through f64.
        let json = serde_json::to_string(&json_number(a)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(parse_amount(&value).unwrap(), a);
    }

    #[test]
    fn junk_never_parses_as_an_amount(s in "[^0-9]{1,12}|[0-9]+[eE][0-9]+|[0-9]*\\.\\.[0-9]*|0x[0-9a-f]+") {
        prop_assert!(parse_amount(&serde_json::Value::String(s)).is_err());
    }
}

fn status() -> impl Strategy<Value = RefundStatus> {
    prop_oneof![
        Just(RefundStatus::Pending),
        Just(RefundStatus::Completed),
        Just(RefundStatus::RefundFail),
    ]
}

fn outcome() -> impl Strategy<Value = ProviderOutcome> {
    prop_oneof![
        Just(ProviderOutcome::Accepted {
            provider_reference: None,
            provider_status: "PENDING".into(),
            fee: None
        }),
        Just(ProviderOutcome::Succeeded {
            provider_reference: None,
            provider_status: "DONE".into(),
            fee: None
        }),
        Just(ProviderOutcome::Failed(FailureReason::new(
            FailureCode::ProviderRejected,
            "no"
        ))),
        any::<bool>().prop_map(|reached| ProviderOutcome::Retryable {
            reason: "5xx".into(),
            retry_after: None,
            may_have_reached_provider: reached
        }),
        Just(ProviderOutcome::Unknown {
            reason: "timeout".into()
        }),
        Just(ProviderOutcome::NotFound),
    ]
}

fn rank(s: RefundStatus) -> u8 {
    match s {
        RefundStatus::Pending => 0,
        RefundStatus::Completed | RefundStatus::RefundFail => 1,
    }
}

proptest! {
    /// Applying any sequence of status reports with `transition` (as the store does) never
    /// moves a refund backwards and never changes a final status.
    #[test]
    fn no_sequence_moves_a_refund_backwards(reports in proptest::collection::vec(status(), 0..40)) {
        let mut current = RefundStatus::Pending;
        let mut final_status = None;
        for next in reports {
            match transition(current, next) {
                Transition::Apply => {
                    prop_assert!(rank(next) > rank(current));
                    current = next;
                    final_status.get_or_insert(next);
                }
                Transition::Unchanged | Transition::Stale | Transition::Contradiction => {}
            }
            if let Some(f) = final_status { prop_assert_eq!(current, f); }
        }
    }

    /// Whatever the provider answers, in any order: once the provider may have a refund
    /// (accepted, unknown, or a possibly-processed error), `decide` never fails it for
    /// retries and never resubmits it without a NotFound from a status lookup first.
    #[test]
    fn a_refund_the_provider_may_have_is_never_resubmitted_blindly(
        outcomes in proptest::collection::vec(outcome(), 1..30),
        max in 1u32..6,
    ) {
        let mut phase = Phase::NotSubmitted;
        let mut attempts = 0u32;
        for o in outcomes {
            let call = if phase == Phase::NotSubmitted { attempts += 1; CallKind::Submit } else { CallKind::Status };
            let was_not_found = o == ProviderOutcome::NotFound && call == CallKind::Status;
            match decide(phase, call, o, attempts, max) {
                Decision::Complete { .. } => break,
                Decision::Fail(reason) => {
                    if reason.code == FailureCode::RetriesExhausted {
                        // Only when the provider certainly does not have it.
                        prop_assert!(phase == Phase::NotSubmitted || (phase == Phase::Submitting && was_not_found),
                            "failed for retries in {:?}", phase);
                    }
                    break;
                }
                Decision::Submit => {
                    prop_assert!(was_not_found, "resubmitted without a NotFound");
                    prop_assert!(phase != Phase::Accepted, "an accepted refund was resubmitted");
                    phase = Phase::NotSubmitted;
                }
                Decision::Wait { phase: next, .. } => {
                    if phase == Phase::Accepted { prop_assert_eq!(next, Phase::Accepted); }
                    phase = next;
                }
            }
        }
    }
}
