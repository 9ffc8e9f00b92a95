//! The provider path: submit, poll, retries, final failures, unknown outcomes.

use crate::helpers::*;
use refund_sandbox::{Faults, ForcedOutcome, OutcomeStatus};
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::store;
use serde_json::json;

#[tokio::test]
async fn a_refund_goes_pending_then_completed_with_2517_exact_end_to_end() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("happy");
    let mut cmd = va_command(&r, "0");
    // A JSON number, as many publishers send it: must never pass through f64.
    cmd["amount"] = serde_json::from_str("25.17").unwrap();
    app.publish(&cmd).await;

    let pending = app.wait_for(&r, RefundStatus::Pending).await;
    assert_eq!(pending.amount.as_deref(), Some("25.17"));
    assert_eq!(pending.provider.as_deref(), Some("va_services"));
    assert_eq!(pending.transaction_reference, Some(format!("txn-{r}")));
    assert!(pending.failure_reason.is_none());

    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("25.17"));
    assert_eq!(done.currency.as_deref(), Some("NGN"));
    assert_eq!(done.attempts, 1);
    assert_eq!(done.provider_reference.as_deref(), Some(r.as_str()));
    assert_ne!(done.event_id, pending.event_id);

    let ledger = app.sandbox.ledger();
    let at_provider = ledger.refund(&r).expect("provider has it");
    assert_eq!(at_provider.refund_amount, "25.17");
    assert!(
        at_provider.request_body.contains(r#""refundAmount":25.17"#),
        "{}",
        at_provider.request_body
    );
    assert!(at_provider
        .request_body
        .contains(r#""destinationAccountNumber":"0040088210""#));
    assert_eq!(at_provider.submit_count, 1);

    // The operator's view: history with causes, and every provider call.
    let view = store::refunds::show(&app.pool, &r)
        .await
        .unwrap()
        .expect("refund");
    assert_eq!(view.refund.status, "COMPLETED");
    assert_eq!(view.refund.phase, "FINAL");
    let history: Vec<_> = view
        .transitions
        .iter()
        .map(|t| (t.from_status.clone(), t.to_status.clone()))
        .collect();
    assert_eq!(
        history,
        vec![
            (None, "PENDING".to_string()),
            (Some("PENDING".into()), "COMPLETED".into())
        ]
    );
    assert_eq!(
        view.attempts.first().map(|a| a.call.as_str()),
        Some("submit")
    );
    assert_eq!(
        view.attempts.last().map(|a| a.outcome.as_str()),
        Some("succeeded")
    );
    app.cleanup().await;
}

#[tokio::test]
async fn provider_500s_are_retried_and_the_refund_is_made_once() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        fail_next: 3,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("retry");
    app.publish(&va_command(&r, "10.00")).await;
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.injected_failures, 3);
    assert_eq!(ledger.refund(&r).unwrap().submit_count, 1);
    assert!(done.attempts >= 2, "retried: {} attempts", done.attempts);
    let view = store::refunds::show(&app.pool, &r).await.unwrap().unwrap();
    let retryable = view
        .attempts
        .iter()
        .filter(|a| a.outcome == "retryable")
        .count();
    assert_eq!(retryable, 3, "{:?}", view.attempts);
    app.cleanup().await;
}

#[tokio::test]
async fn a_final_provider_error_fails_the_refund_with_the_providers_message() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        reject_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("reject");
    app.publish(&va_command(&r, "10.00")).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::ProviderRejected);
    assert!(f.message.contains("responseCode 99"), "{}", f.message);
    assert_eq!(
        app.sandbox.ledger().submit_calls,
        1,
        "a final error is not retried"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn the_providers_balance_check_is_a_final_failure() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    app.sandbox.add_payment(refund_sandbox::Payment {
        provider: refund_sandbox::Provider::VaServices,
        transaction_reference: "txn-small".into(),
        amount: "5.00".parse().unwrap(),
        currency: "NGN".into(),
    });
    let r = reference("over");
    let mut cmd = va_command(&r, "6.00");
    cmd["transactionReference"] = json!("txn-small");
    app.publish(&cmd).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    assert!(e
        .failure_reason
        .unwrap()
        .message
        .contains("Refund amount exceeds refundable amount"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_that_fails_at_the_bank_becomes_refund_fail() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bankfail");
    app.sandbox.set_outcome(
        refund_sandbox::Provider::VaServices,
        &r,
        ForcedOutcome {
            status: OutcomeStatus::Failed,
        },
    );
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.unwrap();
    assert_eq!(f.code, FailureCode::ProviderRejected);
    assert!(f.message.contains("FAILED"), "{}", f.message);
    app.cleanup().await;
}

#[tokio::test]
async fn a_timeout_after_the_provider_accepted_is_resolved_by_status_without_resubmitting() {
    let mut app = TestApp::spawn().await;
    // The sandbox records the refund, then hangs 3 s; our provider timeout is 1 s.
    app.faults(Faults {
        timeout_after_accept_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("timeout");
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.injected_timeouts, 1);
    assert_eq!(
        ledger.refund(&r).unwrap().submit_count,
        1,
        "never sent twice"
    );
    assert_eq!(ledger.submit_calls, 1);
    let view = store::refunds::show(&app.pool, &r).await.unwrap().unwrap();
    let calls: Vec<_> = view
        .attempts
        .iter()
        .map(|a| (a.call.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(calls[0], ("submit", "unknown"), "{calls:?}");
    assert_eq!(
        calls[1].0, "status",
        "status asked before anything else: {calls:?}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn unsent_requests_exhaust_retries_into_refund_fail() {
    // A provider that refuses connections never got the refund: after MAX_SUBMIT_ATTEMPTS
    // the refund fails RETRIES_EXHAUSTED (it is safe to say the money did not move).
    let mut app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_VA_SERVICES_BASE_URL", "http://127.0.0.1:9".into()),
            ("MAX_SUBMIT_ATTEMPTS", "3".into()),
        ],
        ..Options::default()
    })
    .await;
    app.start_worker();
    let r = reference("exhaust");
    app.publish(&va_command(&r, "10.00")).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.unwrap();
    assert_eq!(f.code, FailureCode::RetriesExhausted);
    assert!(
        f.message.starts_with("gave up after 3 attempts"),
        "{}",
        f.message
    );
    assert_eq!(e.attempts, 3);
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_the_provider_may_have_is_never_failed_for_retries() {
    // Every call times out after being accepted: the refund must stay PENDING (and be
    // polled), not REFUND_FAIL, however many attempts that takes.
    let mut app = TestApp::spawn_with(Options {
        env: vec![("MAX_SUBMIT_ATTEMPTS", "1".into())],
        ..Options::default()
    })
    .await;
    app.faults(Faults {
        timeout_after_accept_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("maybe");
    app.publish(&va_command(&r, "10.00")).await;
    app.eventually("the provider recorded the refund", || async {
        app.sandbox.ledger().refund(&r).is_some()
    })
    .await;
    // From now on every status lookup times out too.
    app.faults(Faults {
        latency_ms: Some(1_500),
        ..Faults::default()
    });
    app.eventually("several unknown-outcome rounds", || async {
        let v = store::refunds::show(&app.pool, &r).await.unwrap().unwrap();
        v.attempts.iter().filter(|a| a.outcome == "unknown").count() >= 3
    })
    .await;
    assert_eq!(app.db_status(&r).await.as_deref(), Some("PENDING"));
    // The provider recovers: the refund completes, and was made once.
    app.faults(Faults {
        latency_ms: Some(0),
        ..Faults::default()
    });
    app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(app.sandbox.ledger().refund(&r).unwrap().submit_count, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn the_relay_publishes_only_its_own_exchanges_events() {
    // A database shared with workers of another name prefix (demos, tests) may hold events
    // for an exchange this broker lacks; publishing one would fail every batch for ever.
    let mut app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO outbox (event_id, exchange, routing_key, payload)
         VALUES (gen_random_uuid(), 'some-other-prefix.refunds', 'refund.status.pending', '{}')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let r = reference("relay-own");
    let cmd = serde_json::to_vec(&va_command(&r, "10.00")).unwrap();
    refund_worker::pipeline::intake::handle(&app.ctx, &cmd)
        .await
        .unwrap();
    let outcome = refund_worker::pipeline::relay::step(&app.ctx, &app.publisher)
        .await
        .expect("the foreign event does not break the batch");
    assert_eq!(
        outcome,
        refund_worker::pipeline::relay::RelayOutcome::Published(1)
    );
    assert_eq!(
        app.wait_for(&r, RefundStatus::Pending)
            .await
            .refund_reference,
        r
    );
    let foreign: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE exchange = 'some-other-prefix.refunds' AND published_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(foreign, 1, "left for its own worker");
    app.cleanup().await;
}
