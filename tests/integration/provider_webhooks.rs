//! Each provider's refund webhook, sent by the sandbox as the provider would (signed its
//! way, some twice, some late, some first with a forged signature), through the HTTP
//! ingress -> `provider.webhooks` -> inbox -> the refund's final state.
//!
//! Status polling is pushed out of the way (`POLL_INITIAL_MS` of hours), so a refund that
//! completes here was completed by its provider's webhook.

use crate::helpers::*;
use refund_sandbox::{Payment, Provider, SandboxConfig};
use refund_worker::domain::RefundStatus;
use refund_worker::providers::signing::hmac_sha256_hex;
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
        ..Options::default()
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
        // Three refund notifications and three pay-in ones (BPN's order was told, the
        // other two payments were first seen in their refund calls).
        w.delivered >= 6 + w.duplicates && w.abandoned == 0
    })
    .await;
    let w = app.sandbox.ledger().webhooks;
    assert_eq!(
        w.bad_signatures, w.bad_signatures_refused,
        "every forged signature is refused"
    );
    let applied: Vec<(String, String)> = sqlx::query_as(
        "SELECT provider, state FROM provider_webhook_inbox
         WHERE state = 'APPLIED' AND refund_reference IS NOT NULL ORDER BY provider",
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

/// The state of BVNK's refund (payout) notification, not of the pay-in one the sandbox sends
/// when the refund call names a pay-in it has never seen.
const PAYOUT_STATE: &str = "SELECT state FROM provider_webhook_inbox
     WHERE provider = 'bvnk' AND convert_from(body, 'UTF8') LIKE '%payout:status-change%'";

#[tokio::test]
async fn a_webhook_that_arrives_before_its_refund_is_parked_then_applied() {
    // The sandbox would take an hour to complete it: only the early webhook can.
    let mut app =
        TestApp::spawn_with(webhook_driven(0.0, 0.0, 0.0, Duration::from_secs(3600))).await;
    app.start_worker();
    let base = app.http_base.clone();
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
        let state: Option<String> = sqlx::query_scalar(PAYOUT_STATE)
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
    let state: String = sqlx::query_scalar(PAYOUT_STATE)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "APPLIED");
    app.cleanup().await;
}

/// Each provider's pay-in notification, sent by the sandbox when it is told about a payment
/// (signed its way, some twice, some late, some first forged), reaches the pay-ins ledger
/// with its exact amount; a refund command without `paymentAmount` is then guarded by it.
#[tokio::test]
async fn each_providers_payin_notification_feeds_the_ledger_the_guard_reads() {
    let mut app =
        TestApp::spawn_with(webhook_driven(0.5, 0.5, 0.5, Duration::from_millis(150))).await;
    app.start_worker();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // (provider, name, transaction, paid, currency, refund amount)
    let payins = [
        (
            Provider::VaServices,
            "va_services",
            format!("txn-{tag}"),
            "250.50",
            "NGN",
            "100.00",
        ),
        (
            Provider::Bpn,
            "bpn",
            format!("ORDER-{tag}"),
            "25.17",
            "USD",
            "25.17",
        ),
        (
            Provider::BinancePay,
            "binance_pay",
            digits(),
            "0.88000000",
            "USDT",
            "0.50",
        ),
        (
            Provider::Bvnk,
            "bvnk",
            format!("payin-{tag}"),
            "150.10",
            "EUR",
            "150.10",
        ),
    ];
    for (provider, _, transaction, paid, currency, _) in &payins {
        app.sandbox.add_payment(Payment {
            provider: *provider,
            transaction_reference: transaction.clone(),
            amount: paid.parse().unwrap(),
            currency: (*currency).into(),
        });
    }
    for (_, name, transaction, paid, _, _) in &payins {
        app.eventually(&format!("{name}'s pay-in in the ledger"), || async {
            let amount: Option<String> = sqlx::query_scalar(
                "SELECT amount::text FROM pay_ins
                 WHERE provider = $1 AND transaction_reference = $2 AND succeeded",
            )
            .bind(name)
            .bind(transaction)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
            // Exactly as paid: 0.88000000 stays 0.88000000, 250.50 stays 250.50.
            amount.as_deref() == Some(*paid)
        })
        .await;
    }
    for (_, name, transaction, _, currency, amount) in &payins {
        let r = reference(&format!("payin-{name}"));
        let mut command = json!({
            "refundReference": r, "provider": name, "transactionReference": transaction,
            "amount": amount, "currency": currency, "reason": "Order cancelled!",
        });
        if *name == "va_services" {
            command["destination"] = json!({"accountNumber": "0040088210", "bankCode": "000012"});
        }
        app.publish(&command).await;
        let guard = || async {
            let source: Option<Option<String>> =
                sqlx::query_scalar("SELECT guard_source FROM refunds WHERE refund_reference = $1")
                    .bind(&r)
                    .fetch_optional(&app.pool)
                    .await
                    .unwrap();
            source.flatten()
        };
        app.eventually(&format!("{name}'s refund stored"), || async {
            guard().await.is_some()
        })
        .await;
        assert_eq!(
            guard().await.as_deref(),
            Some("ledger"),
            "{name}: a command without paymentAmount is guarded by the pay-ins ledger"
        );
    }
    let w = app.sandbox.ledger().webhooks;
    assert_eq!(w.bad_signatures_accepted, 0, "no forged pay-in is accepted");
    app.cleanup().await;
}
