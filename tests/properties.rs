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

// ---------------------------------------------------------------------------------------
// Ambiguous answers to a status lookup never fail a refund, for every adapter.
// ---------------------------------------------------------------------------------------

use refund_worker::domain::ProviderName;
use refund_worker::providers::{binance_pay, bpn, bvnk, classify_status, va_services};
use reqwest::StatusCode;

/// What a status lookup makes of one HTTP answer, the way each adapter does it: 429/5xx
/// through `classify_status`, the rest through the adapter's pure status interpreter.
fn lookup(
    provider: ProviderName,
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
) -> ProviderOutcome {
    let http = StatusCode::from_u16(status).expect("a valid status");
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
        headers.insert(reqwest::header::RETRY_AFTER, v);
    }
    if let Some(outcome) = classify_status(http, &headers) {
        return outcome;
    }
    match provider {
        ProviderName::VaServices => {
            va_services::interpret(http, body, false, chrono_tz::Africa::Lagos)
        }
        ProviderName::Bpn => bpn::interpret_status(http, body, "order-1"),
        ProviderName::BinancePay => binance_pay::interpret(http, body, CallKind::Status, None),
        ProviderName::Bvnk => bvnk::interpret_status(http, body, "ref-1"),
    }
}

fn provider() -> impl Strategy<Value = ProviderName> {
    prop_oneof![
        Just(ProviderName::VaServices),
        Just(ProviderName::Bpn),
        Just(ProviderName::BinancePay),
        Just(ProviderName::Bvnk),
    ]
}

fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::NotSubmitted),
        Just(Phase::Submitting),
        Just(Phase::Accepted),
        Just(Phase::Final),
    ]
}

/// Not JSON at all: HTML from a proxy, text, binary (the leading `<` keeps it from parsing).
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(|mut tail| {
        let mut body = b"<".to_vec();
        body.append(&mut tail);
        body
    })
}

/// A word none of the adapters knows (the `X_` prefix keeps it off every table).
fn unknown_word() -> impl Strategy<Value = String> {
    "[A-Z_]{1,12}".prop_map(|w| format!("X_{w}"))
}

/// The provider's own error envelope, with a code and message we do not know (never one of
/// the documented "no such refund" codes).
fn error_envelope(provider: ProviderName) -> BoxedStrategy<Vec<u8>> {
    let text = "[a-zA-Z0-9]{0,24}";
    match provider {
        ProviderName::VaServices => (text, "[0-9]{1,3}")
            .prop_map(|(m, c)| {
                serde_json::json!({"requestSuccessful": false, "responseMessage": m, "responseCode": c, "responseBody": null})
            })
            .boxed(),
        ProviderName::Bpn => (1i64..100_000, text)
            .prop_filter("20001 is BPN's no-such-order", |(c, _)| *c != 20001)
            .prop_map(|(c, m)| serde_json::json!({"status": c, "message": m, "data": null, "traceId": "t"}))
            .boxed(),
        ProviderName::BinancePay => ("[0-9]{6,9}", text)
            .prop_filter("documented no-such-refund codes", |(c, _)| c != "400202" && c != "400607")
            .prop_map(|(c, m)| serde_json::json!({"status": "FAIL", "code": c, "data": null, "errorMessage": m}))
            .boxed(),
        ProviderName::Bvnk => text
            .prop_map(|m| serde_json::json!({"code": "ERROR", "message": m}))
            .boxed(),
    }
    .prop_map(|v| v.to_string().into_bytes())
    .boxed()
}

/// A successful answer naming our refund with a status word nobody documented.
fn unknown_status_word(provider: ProviderName, word: &str) -> Vec<u8> {
    let v = match provider {
        ProviderName::VaServices => {
            serde_json::json!({"requestSuccessful": true, "responseMessage": "success", "responseCode": "0",
            "responseBody": {"refundReference": "ref-1", "refundStatus": word}})
        }
        ProviderName::Bpn => serde_json::json!({"status": 0, "message": "success", "traceId": "t",
            "data": {"orderId": "order-1", "amount": "1.00", "status": "SUCCESS", "refundStatus": word}}),
        ProviderName::BinancePay => {
            serde_json::json!({"status": "SUCCESS", "code": "000000", "errorMessage": "",
            "data": {"refundRequestId": "ref-1", "refundStatus": word}})
        }
        ProviderName::Bvnk => serde_json::json!([{"customerReference": "ref-1", "status": word}]),
    };
    v.to_string().into_bytes()
}

/// One ambiguous answer to a status lookup: (HTTP status, body, Retry-After).
fn ambiguous(provider: ProviderName) -> BoxedStrategy<(u16, Vec<u8>, Option<String>)> {
    let retry_after = proptest::option::of(prop_oneof![
        "[0-9]{1,25}",
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        "[a-z ]{0,8}",
    ]);
    let refused = prop_oneof![
        Just(401u16),
        Just(403u16),
        Just(400u16),
        Just(409u16),
        Just(422u16),
        Just(200u16)
    ];
    let transient = prop_oneof![Just(429u16), 500u16..600];
    prop_oneof![
        // 401/403/4xx/5xx/429 with garbage.
        (
            prop_oneof![refused.clone(), transient.clone()],
            garbage(),
            retry_after.clone()
        )
            .prop_map(|(s, b, r)| (s, b, r)),
        // 404 with garbage: not the provider's "not found".
        (Just(404u16), garbage(), Just(None)),
        // The provider's error envelope, refused or transient.
        (
            prop_oneof![refused, transient],
            error_envelope(provider),
            retry_after
        )
            .prop_map(|(s, b, r)| (s, b, r)),
        // A status word nobody documented.
        unknown_word().prop_map(move |w| (200u16, unknown_status_word(provider, &w), None)),
    ]
    .boxed()
}

proptest! {
    /// For every adapter, an ambiguous answer to a status lookup (auth errors, 404 with
    /// garbage, 5xx, 429, garbage or error-envelope bodies, unknown status words) is never
    /// a failure: whatever the phase and the attempts made, `decide` does not fail the refund.
    #[test]
    fn an_ambiguous_status_answer_never_fails_a_refund(
        (provider, (status, body, retry_after)) in provider().prop_flat_map(|p| (Just(p), ambiguous(p))),
        phase in phase(),
        attempts in 0u32..12,
        max in 1u32..10,
    ) {
        let outcome = lookup(provider, status, &body, retry_after.as_deref());
        if let ProviderOutcome::Retryable { retry_after: Some(wait), .. } = &outcome {
            prop_assert!(*wait <= refund_worker::retry::MAX_RETRY_AFTER, "{:?}", wait);
        }
        let decision = decide(phase, CallKind::Status, outcome.clone(), attempts, max);
        prop_assert!(
            !matches!(decision, Decision::Fail(_)),
            "{:?} HTTP {} {:?} -> {:?} -> {:?}",
            provider, status, String::from_utf8_lossy(&body), outcome, decision
        );
    }
}
