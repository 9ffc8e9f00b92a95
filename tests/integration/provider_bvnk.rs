//! BVNK end to end: RabbitMQ command -> worker -> Hawk-signed estimate and refund against the
//! sandbox -> PostgreSQL -> status events, including 4-eyes approval and the fee.

use crate::helpers::*;
use refund_sandbox::{Faults, Payment, Provider};
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::providers::bvnk::{idempotency_key, AWAITING_APPROVAL};
use refund_worker::store;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// A valid BVNK command (no destination: refunds go back to the original method).
pub fn bvnk_command(reference: &str, amount: &str) -> Value {
    json!({
        "refundReference": reference,
        "provider": "bvnk",
        "transactionReference": format!("payin-{reference}"),
        "amount": amount,
        "currency": "EUR",
        "reason": "Order cancelled!",
        "metadata": {"orderId": "ORD9876"}
    })
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

#[tokio::test]
async fn bvnk_refund_completes_once_with_the_exact_amount_and_its_fee_kept() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bvnk-happy");
    app.publish(&bvnk_command(&r, "25.17")).await;

    let pending = app.wait_for(&r, RefundStatus::Pending).await;
    assert_eq!(pending.provider.as_deref(), Some("bvnk"));
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("25.17"));
    assert_eq!(done.attempts, 1);

    let ledger = app.sandbox.ledger();
    let at_bvnk = ledger.refund(&r).expect("BVNK has it");
    assert_eq!(at_bvnk.refund_amount, "25.17");
    assert_eq!(at_bvnk.submit_count, 1);
    assert_eq!(at_bvnk.transaction_reference, format!("payin-{r}"));
    // As sent, byte for byte: the value is a string with its exact digits.
    assert!(
        at_bvnk.request_body.contains(r#""value":"25.17""#),
        "{}",
        at_bvnk.request_body
    );
    let sent: Value = serde_json::from_str(&at_bvnk.request_body).unwrap();
    assert_eq!(
        sent,
        json!({
            "customerReference": r,
            "amount": {"value": "25.17", "currency": "EUR"},
            "metadata": {"orderId": "ORD9876"}
        })
    );
    assert_eq!(ledger.refunds.len(), 1);
    assert_eq!(ledger.submit_calls, 1);
    assert!(ledger.details_calls >= 1, "the estimate was asked first");
    assert_eq!(ledger.rejected_auth, 0, "every call passed Hawk");

    let view = store::refunds::show(&app.pool, &r).await.unwrap().unwrap();
    assert_eq!(view.refund.status, "COMPLETED");
    assert_eq!(view.refund.provider_fee, Some(dec("1.00")));
    assert_eq!(view.refund.provider_fee_currency.as_deref(), Some("EUR"));
    assert_eq!(view.refund.provider_status.as_deref(), Some("COMPLETED"));
    assert!(
        view.refund.provider_reference.is_some(),
        "the payout id from the status"
    );
    assert_ne!(idempotency_key(&r), idempotency_key(&format!("{r}x")));
    app.cleanup().await;
}

#[tokio::test]
async fn bvnk_refund_waits_for_approval_then_completes_when_approved() {
    let mut app = TestApp::spawn().await;
    app.sandbox.bvnk_four_eyes(true);
    app.start_worker();
    let r = reference("bvnk-4eyes");
    app.publish(&bvnk_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;

    let pool = app.pool.clone();
    let reference = r.clone();
    app.eventually("provider status awaiting_approval", || {
        let pool = pool.clone();
        let reference = reference.clone();
        async move {
            let view = store::refunds::show(&pool, &reference)
                .await
                .unwrap()
                .unwrap();
            view.refund.provider_status.as_deref() == Some(AWAITING_APPROVAL)
        }
    })
    .await;
    // Still pending well past the completion delay: it waits for a person.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(app.db_status(&r).await.as_deref(), Some("PENDING"));
    assert_eq!(
        app.sandbox.ledger().refund(&r).unwrap().status,
        "PENDING_APPROVAL"
    );

    app.sandbox.bvnk_approve(&r).expect("waiting for approval");
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("10.00"));
    assert_eq!(app.sandbox.ledger().refund(&r).unwrap().submit_count, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn bvnk_rejected_approval_fails_the_refund_with_approval_rejected() {
    let mut app = TestApp::spawn().await;
    app.sandbox.bvnk_four_eyes(true);
    app.start_worker();
    let r = reference("bvnk-reject");
    app.publish(&bvnk_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    let sandbox = app.sandbox.clone();
    let key = r.clone();
    app.eventually("the refund reached BVNK", || {
        let found = sandbox.ledger().refund(&key).is_some();
        async move { found }
    })
    .await;
    app.sandbox.bvnk_reject(&r).expect("waiting for approval");
    let failed = app.wait_for(&r, RefundStatus::RefundFail).await;
    let reason = failed.failure_reason.expect("reason");
    assert_eq!(reason.code, FailureCode::ApprovalRejected);
    assert!(reason.message.contains("REJECTED"), "{}", reason.message);
    app.cleanup().await;
}

#[tokio::test]
async fn bvnk_over_refund_fails_from_the_estimate_without_a_refund_call() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bvnk-over");
    let mut cmd = bvnk_command(&r, "6.00");
    cmd["transactionReference"] = json!("payin-small");
    app.sandbox.add_payment(Payment {
        provider: Provider::Bvnk,
        transaction_reference: "payin-small".into(),
        amount: dec("5.00"),
        currency: "EUR".into(),
    });
    app.publish(&cmd).await;
    let failed = app.wait_for(&r, RefundStatus::RefundFail).await;
    let reason = failed.failure_reason.expect("reason");
    assert_eq!(reason.code, FailureCode::AmountExceedsRefundable);
    assert!(
        reason.message.contains("maxAvailableToRefund 5.00 EUR"),
        "{}",
        reason.message
    );
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.submit_calls, 0, "no refund call was made");
    assert!(ledger.refunds.is_empty());
    assert_eq!(ledger.details_calls, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn bvnk_timeout_after_accept_is_resolved_by_status_without_a_second_refund() {
    let mut app = TestApp::spawn().await;
    // The sandbox records the refund, then hangs 3 s; our provider timeout is 1 s.
    app.faults(Faults {
        timeout_after_accept_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("bvnk-timeout");
    app.publish(&bvnk_command(&r, "7.50")).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.injected_timeouts, 1);
    assert_eq!(ledger.refunds.len(), 1, "never two refunds");
    assert_eq!(
        ledger.refund(&r).unwrap().submit_count,
        1,
        "never sent twice"
    );
    let view = store::refunds::show(&app.pool, &r).await.unwrap().unwrap();
    let calls: Vec<_> = view
        .attempts
        .iter()
        .map(|a| (a.call.as_str(), a.outcome.as_str()))
        .collect();
    assert_eq!(calls[0], ("submit", "unknown"), "{calls:?}");
    assert_eq!(calls[1].0, "status", "{calls:?}");
    // The fee is learnt from the status answer when the submit's answer was lost.
    assert_eq!(view.refund.provider_fee, Some(dec("1.00")));
    app.cleanup().await;
}
