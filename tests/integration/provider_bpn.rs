//! BPN end to end: RabbitMQ command -> PostgreSQL -> the BPN adapter -> the sandbox's BPN.
//!
//! BPN refunds virtual-account orders by `orderId` (the command's `transactionReference`),
//! whole or in part, and knows no reference of ours, so the sandbox ledger lists an order's
//! first refund under the order id (`orderId#n` for the n-th).

use crate::helpers::*;
use refund_sandbox::{Faults, ForcedOutcome, OutcomeStatus, Payment, Provider};
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::store;
use serde_json::{json, Value};

/// A valid BPN command refunding the whole order `order_id`.
fn bpn_command(reference: &str, order_id: &str, amount: &str) -> Value {
    json!({
        "refundReference": reference,
        "provider": "bpn",
        "transactionReference": order_id,
        "amount": amount,
        "currency": "USD",
        "reason": "Order cancelled!"
    })
}

fn order(app: &TestApp, order_id: &str, amount: &str) {
    app.sandbox.add_payment(Payment {
        provider: Provider::Bpn,
        transaction_reference: order_id.into(),
        amount: amount.parse().unwrap(),
        currency: "USD".into(),
    });
}

#[tokio::test]
async fn a_bpn_order_refund_goes_pending_then_completed_once_with_the_exact_amount() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bpn-happy");
    let order_id = format!("VA-{r}");
    order(&app, &order_id, "25.17");
    let mut cmd = bpn_command(&r, &order_id, "0");
    // A JSON number, as many publishers send it: must never pass through f64.
    cmd["amount"] = serde_json::from_str("25.17").unwrap();
    app.publish(&cmd).await;

    let pending = app.wait_for(&r, RefundStatus::Pending).await;
    assert_eq!(pending.provider.as_deref(), Some("bpn"));
    assert_eq!(pending.amount.as_deref(), Some("25.17"));
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("25.17"));
    assert_eq!(done.provider_reference.as_deref(), Some(order_id.as_str()));

    let ledger = app.sandbox.ledger();
    let at_bpn = ledger.refund(&order_id).expect("BPN has the refund");
    assert_eq!(at_bpn.submit_count, 1);
    assert_eq!(at_bpn.refund_amount, "25.17");
    assert_eq!(at_bpn.status, "REFUNDED");
    assert_eq!(
        at_bpn.request_body,
        format!(r#"{{"orderId":"{order_id}"}}"#)
    );
    assert_eq!(ledger.submit_calls, 1);
    assert_eq!(ledger.rejected_auth, 0, "every call was signed correctly");
    app.cleanup().await;
}

#[tokio::test]
async fn bpn_partial_refunds_by_amount_and_by_pay_in_complete_and_never_exceed_the_order() {
    // With the ingress: the second refund of an order is settled by BPN's refund webhook (the
    // order's one refund state cannot be told apart from the first refund's).
    let mut app = TestApp::spawn_with(Options {
        ingress: true,
        ..Options::default()
    })
    .await;
    app.start_worker();
    let (part, over, pay_in) = (
        reference("bpn-part"),
        reference("bpn-over"),
        reference("bpn-payin"),
    );
    let order_id = format!("VA-{part}");
    order(&app, &order_id, "25.17");
    app.publish(&bpn_command(&part, &order_id, "10.00")).await;
    let done = app.wait_for(&part, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("10.00"));
    // 15.17 is left: 15.18 fails before any refund call.
    let calls = app.sandbox.ledger().submit_calls;
    app.publish(&bpn_command(&over, &order_id, "15.18")).await;
    let e = app.wait_for(&over, RefundStatus::RefundFail).await;
    let f = e.failure_reason.unwrap();
    assert_eq!(f.code, FailureCode::AmountExceedsRefundable);
    assert!(f.message.contains("15.17 of 25.17"), "{}", f.message);
    assert_eq!(app.sandbox.ledger().submit_calls, calls);
    // The rest, by pay-in reference.
    let mut cmd = bpn_command(&pay_in, &order_id, "15.17");
    cmd["metadata"] = json!({ "bpnPayInReference": "PAYIN-2" });
    app.publish(&cmd).await;
    app.wait_for(&pay_in, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(
        ledger.refund(&order_id).unwrap().request_body,
        format!(r#"{{"amount":10.00,"orderId":"{order_id}"}}"#)
    );
    let second = ledger.refund(&format!("{order_id}#2")).unwrap();
    assert_eq!(
        second.request_body,
        format!(r#"{{"amount":15.17,"orderId":"{order_id}","transactionReference":"PAYIN-2"}}"#)
    );
    assert_eq!((second.submit_count, ledger.submit_calls), (1, 2));
    app.cleanup().await;
}

#[tokio::test]
async fn a_bpn_rejection_and_a_second_refund_of_the_order_fail_with_their_codes() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        reject_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("bpn-reject");
    let order_id = format!("VA-{r}");
    order(&app, &order_id, "40.00");
    app.publish(&bpn_command(&r, &order_id, "40.00")).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.unwrap();
    assert_eq!(f.code, FailureCode::ProviderRejected);
    assert!(f.message.contains("status 20005"), "{}", f.message);
    assert!(f.message.contains("traceId"), "{}", f.message);

    // The order refunded by one command cannot be refunded by another.
    let first = reference("bpn-first");
    let second = reference("bpn-second");
    let shared = format!("VA-{first}");
    order(&app, &shared, "12.50");
    app.publish(&bpn_command(&first, &shared, "12.50")).await;
    app.wait_for(&first, RefundStatus::Completed).await;
    app.publish(&bpn_command(&second, &shared, "12.50")).await;
    let e = app.wait_for(&second, RefundStatus::RefundFail).await;
    assert_eq!(e.failure_reason.unwrap().code, FailureCode::NotRefundable);
    assert_eq!(
        app.sandbox.ledger().refund(&shared).unwrap().submit_count,
        1
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_bpn_refund_failing_at_bpn_becomes_refund_fail() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bpn-bankfail");
    let order_id = format!("VA-{r}");
    order(&app, &order_id, "7.00");
    app.sandbox.set_outcome(
        Provider::Bpn,
        &order_id,
        ForcedOutcome {
            status: OutcomeStatus::Failed,
        },
    );
    app.publish(&bpn_command(&r, &order_id, "7.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.unwrap();
    assert_eq!(f.code, FailureCode::ProviderRejected);
    assert!(f.message.contains("REFUND_FAILED"), "{}", f.message);
    app.cleanup().await;
}

#[tokio::test]
async fn a_bpn_timeout_after_accept_is_resolved_by_the_order_lookup_without_resending() {
    let mut app = TestApp::spawn().await;
    // The sandbox records the refund, then hangs 3 s; our provider timeout is 1 s.
    app.faults(Faults {
        timeout_after_accept_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("bpn-timeout");
    let order_id = format!("VA-{r}");
    order(&app, &order_id, "99.99");
    app.publish(&bpn_command(&r, &order_id, "99.99")).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.injected_timeouts, 1);
    assert_eq!(
        ledger.refund(&order_id).unwrap().submit_count,
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
    assert_eq!(calls[1].0, "status", "status asked first: {calls:?}");
    app.cleanup().await;
}
