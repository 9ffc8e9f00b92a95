//! Each provider's refund webhook, sent by the sandbox as the provider would (signed its
//! way, some twice, some late, some first with a forged signature), through the HTTP
//! ingress -> `provider.webhooks` -> inbox -> the refund's final state.
//!
//! Status polling is pushed out of the way (`POLL_INITIAL_MS` of hours), so a refund that
//! completes here was completed by its provider's webhook.

use crate::helpers::*;
use refund_worker::domain::RefundStatus;
use refund_worker::providers::signing::hmac_sha256_hex;
use refund_worker::sandbox::{Payment, Provider, SandboxConfig};
use serde_json::{json, Value};
use std::time::Duration;

fn webhook_driven(duplicates: f64, reorder: f64, forged: f64, completion: Duration) -> Options {
    Options {
        sandbox: SandboxConfig {
            completion_delay: completion,
            hang: Duration::from_secs(3),
            webhook_duplicate_rate: duplicates,
            webhook_reorder_rate: reorder,
            webhook_bad_signature_rate: forged,
            ..SandboxConfig::default()
        },
        env: vec![
            ("POLL_INITIAL_MS", "36000000".into()),
            ("POLL_MAX_MS", "36000000".into()),
            ("PARKED_RETRY_MS", "200".into()),
        ],
        ingress: true,
    }
}

fn digits() -> String {
    // Binance Pay prepay ids are numeric and at most 19 characters.
    let n = uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000_000_000;
    format!("{n:018}")
}

fn commands(tag: &str) -> Vec<(String, Value)> {
    let bpn = reference(&format!("{tag}-bpn"));
    let bnb = reference(&format!("{tag}-bnb"));
    let bvnk = reference(&format!("{tag}-bvnk"));
    vec![
        (
            bpn.clone(),
            json!({"refundReference": bpn, "provider": "bpn",
                   "transactionReference": format!("ORDER-{bpn}"), "amount": "25.17",
                   "currency": "USD", "reason": "Order cancelled!"}),
        ),
        (
            bnb.clone(),
            json!({"refundReference": bnb, "provider": "binance_pay",
                   "transactionReference": digits(), "amount": "25.17",
                   "currency": "USDT", "reason": "Customer returned the goods"}),
        ),
        (
            bvnk.clone(),
            json!({"refundReference": bvnk, "provider": "bvnk",
                   "transactionReference": format!("payin-{bvnk}"), "amount": "25.17",
                   "currency": "EUR", "reason": "Order cancelled!"}),
        ),
    ]
}

async fn causes(app: &TestApp, reference: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT to_status, cause FROM refund_transitions WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(reference)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn every_providers_refund_webhook_completes_its_refund_exactly_once() {
    let mut app =
        TestApp::spawn_with(webhook_driven(0.5, 0.5, 0.5, Duration::from_millis(150))).await;
    app.start_worker();
    let refunds = commands("wh");
    for (reference, command) in &refunds {
        if command["provider"] == "bpn" {
            app.sandbox.add_payment(Payment {
                provider: Provider::Bpn,
                transaction_reference: command["transactionReference"].as_str().unwrap().into(),
                amount: "25.17".parse().unwrap(),
                currency: "USD".into(),
            });
        }
        app.publish(command).await;
        let done = app.wait_for(reference, RefundStatus::Completed).await;
        assert_eq!(done.amount.as_deref(), Some("25.17"));
    }
    for (reference, command) in &refunds {
        assert_eq!(
            causes(&app, reference).await,
            vec![
                ("PENDING".to_string(), "command received".to_string()),
                ("COMPLETED".to_string(), "provider webhook".to_string()),
            ],
            "{} must be completed by its webhook, once",
            command["provider"]
        );
    }
    // Let duplicates and late copies arrive, then check what the ingress and inbox did.
    app.eventually("every notification delivered", || async {
        let w = app.sandbox.ledger().webhooks;
        w.delivered >= 3 + w.duplicates && w.abandoned == 0
    })
    .await;
    let w = app.sandbox.ledger().webhooks;
    assert_eq!(
        w.bad_signatures, w.bad_signatures_refused,
        "every forged signature is refused"
    );
    let applied: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider, state FROM provider_webhook_inbox WHERE state = 'APPLIED' ORDER BY provider",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        applied,
        vec![
            ("binance_pay".into(), "APPLIED".into()),
            ("bpn".into(), "APPLIED".into()),
            ("bvnk".into(), "APPLIED".into()),
        ]
    );
    for (reference, _) in &refunds {
        let events = app.events_for(reference);
        assert_eq!(
            events
                .iter()
                .filter(|e| e.status == RefundStatus::Completed)
                .count(),
            1
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_webhook_that_arrives_before_its_refund_is_parked_then_applied() {
    // The sandbox would take an hour to complete it: only the early webhook can.
    let mut app =
        TestApp::spawn_with(webhook_driven(0.0, 0.0, 0.0, Duration::from_secs(3600))).await;
    app.start_worker();
    let base = app.http_base.clone().expect("ingress");
    let r = reference("early-bvnk");
    let body = json!({
        "event": "bvnk:payment:payout:status-change",
        "eventId": uuid::Uuid::new_v4().to_string(),
        "data": {"status": "COMPLETED", "customerReference": r,
                 "transactionReference": format!("payout-{r}"),
                 "amount": {"value": 25.17, "currencyCode": "EUR"}}
    })
    .to_string();
    let signature = hmac_sha256_hex(
        SandboxConfig::default().webhook_secret.as_bytes(),
        &[body.as_bytes()],
    );
    let answer = reqwest::Client::new()
        .post(format!("{base}/webhooks/bvnk"))
        .header("x-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    app.eventually("the webhook is parked", || async {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM provider_webhook_inbox WHERE provider = 'bvnk'")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        state.as_deref() == Some("PARKED")
    })
    .await;

    let (_, command) = commands("early")
        .into_iter()
        .find(|(_, c)| c["provider"] == "bvnk")
        .unwrap();
    let mut command = command;
    command["refundReference"] = json!(r);
    app.publish(&command).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(
        causes(&app, &r).await.last().map(|(_, c)| c.clone()),
        Some("provider webhook".to_string())
    );
    let state: String =
        sqlx::query_scalar("SELECT state FROM provider_webhook_inbox WHERE provider = 'bvnk'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(state, "APPLIED");
    app.cleanup().await;
}
