//! Binance Pay end to end: RabbitMQ command in, the sandbox's Binance Pay API (signed
//! requests checked exactly), PostgreSQL state and status events out.

use crate::helpers::*;
use refund_sandbox::{Faults, Payment, Provider};
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::providers::binance_pay::refund_request_id;
use serde_json::{json, Value};

/// Binance's prepayId of the paid order (at most 19 characters).
const PREPAY_ID: &str = "383729303729303";

/// A valid Binance Pay command.
fn binance_command(reference: &str, amount: &str) -> Value {
    json!({
        "refundReference": reference,
        "provider": "binance_pay",
        "transactionReference": PREPAY_ID,
        "amount": amount,
        "currency": "USDT",
        "reason": "Customer returned the goods",
    })
}

fn order(amount: &str) -> Payment {
    serde_json::from_value(json!({
        "provider": "binance_pay",
        "transactionReference": PREPAY_ID,
        "amount": amount,
        "currency": "USDT",
    }))
    .expect("payment")
}

#[tokio::test]
async fn binance_refund_goes_pending_then_completed_exactly_once() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("bnb");
    let mut cmd = binance_command(&r, "0");
    cmd["amount"] = serde_json::from_str("25.17").unwrap();
    app.publish(&cmd).await;

    let pending = app.wait_for(&r, RefundStatus::Pending).await;
    assert_eq!(pending.amount.as_deref(), Some("25.17"));
    assert_eq!(pending.provider.as_deref(), Some("binance_pay"));
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("25.17"));
    assert_eq!(done.currency.as_deref(), Some("USDT"));
    assert_eq!(done.provider_reference.as_deref(), Some(r.as_str()));

    let ledger = app.sandbox.ledger();
    let at_provider = ledger.refund(&r).expect("Binance has it");
    assert_eq!(at_provider.provider, Provider::BinancePay);
    assert_eq!(at_provider.transaction_reference, PREPAY_ID);
    assert_eq!(at_provider.refund_amount, "25.17");
    assert!(
        at_provider.request_body.contains(r#""refundAmount":25.17"#),
        "{}",
        at_provider.request_body
    );
    assert!(at_provider
        .request_body
        .contains(&format!(r#""refundRequestId":"{r}""#)));
    assert_eq!(at_provider.submit_count, 1);
    assert_eq!(at_provider.status, "REFUND_SUCCESS");
    assert_eq!(ledger.rejected_auth, 0, "every request was signed right");
    assert_eq!(app.db_status(&r).await.as_deref(), Some("COMPLETED"));
    app.cleanup().await;
}

#[tokio::test]
async fn binance_over_refund_fails_with_amount_exceeds_refundable() {
    let mut app = TestApp::spawn().await;
    app.sandbox.add_payment(order("10.00"));
    app.start_worker();
    let r = reference("bnb-over");
    app.publish(&binance_command(&r, "10.01")).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::AmountExceedsRefundable);
    assert!(f.message.contains("400604"), "{}", f.message);
    assert!(
        f.message.contains("Refundable amount: 10.00"),
        "{}",
        f.message
    );
    let ledger = app.sandbox.ledger();
    assert!(ledger.refund(&r).is_none());
    assert_eq!(ledger.submit_calls, 1, "a final error is not retried");
    app.cleanup().await;
}

#[tokio::test]
async fn binance_rejection_fails_not_refundable() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        reject_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("bnb-reject");
    app.publish(&binance_command(&r, "1")).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::NotRefundable);
    assert!(f.message.contains("ORDER_NOT_REFUNDABLE"), "{}", f.message);
    app.cleanup().await;
}

#[tokio::test]
async fn binance_timeout_after_accept_is_resolved_by_query_without_a_second_refund() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        timeout_after_accept_next: 1,
        ..Faults::default()
    });
    app.start_worker();
    // Longer than Binance's 64 characters: sent as its derived refundRequestId.
    let r = format!("{}-{}", reference("bnb-unknown"), "x".repeat(40));
    assert!(r.len() > 64);
    let id = refund_request_id(&r);
    app.publish(&binance_command(&r, "7.50")).await;
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.provider_reference.as_deref(), Some(id.as_str()));
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.injected_timeouts, 1);
    let at_provider = ledger
        .refund(&id)
        .expect("Binance has it under the derived id");
    // The wire form drops trailing zeros (`format_amount`): the same exact value.
    assert_eq!(at_provider.refund_amount, "7.5");
    assert_eq!(at_provider.submit_count, 1, "never resent blindly");
    assert!(ledger.status_calls >= 1);
    app.cleanup().await;
}

#[tokio::test]
async fn binance_order_without_refund_attempts_left_fails_not_refundable() {
    let mut app = TestApp::spawn().await;
    app.sandbox.add_payment(order("100"));
    app.start_worker();
    // The sandbox's MAX_REFUND_ATTEMPTS (crates/sandbox/src/binance_pay.rs).
    let attempts = 10;
    let refs: Vec<String> = (0..attempts)
        .map(|i| reference(&format!("bnb-a{i}")))
        .collect();
    for r in &refs {
        app.publish(&binance_command(r, "1")).await;
    }
    for r in &refs {
        app.wait_for(r, RefundStatus::Completed).await;
    }
    // Binance's last attempt refunded the whole remainder: the order is used up.
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.refunds.len(), refs.len());
    let last = reference("bnb-none");
    app.publish(&binance_command(&last, "1")).await;
    let e = app.wait_for(&last, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::NotRefundable);
    assert!(
        f.message.contains("REFUND_ATTEMPTS_EXHAUSTED"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("no refund attempts left"),
        "{}",
        f.message
    );
    assert!(app.sandbox.ledger().refund(&last).is_none());
    app.cleanup().await;
}
