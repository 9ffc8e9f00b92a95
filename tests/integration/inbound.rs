//! Inbound provider webhooks: HTTP ingress -> `provider.webhooks` -> inbox -> state.
//!
//! Provider-specific refund webhooks are tested end to end with each provider; here the
//! shared machinery: signatures at the ingress, broker-down answers, deduplication, the
//! pay-ins ledger feeding the over-refund guard, and the inbox's ordering rules (late,
//! repeated, contradicting and early webhooks), driven through the store directly.

use crate::helpers::*;
use refund_worker::domain::{
    FailureCode, FailureReason, ProviderName, ProviderOutcome, RefundStatus,
};
use refund_worker::providers::signing::hmac_sha256_hex;
use refund_worker::providers::{ProviderWebhook, WebhookKind};
use refund_worker::store::provider_webhooks::{self as inbox, Applied};
use serde_json::{json, Value};
use std::sync::Arc;

const SECRET: &str = "sandbox-webhook-secret";

fn va_pay_in(transaction_reference: &str, amount: &str, trace: &str) -> String {
    format!(
        r#"{{"transactionType":"CREDIT","amount":{amount},"narration":"order","classificationCode":"NIP","success":true,"traceID":"{trace}","transactionReference":"{transaction_reference}","accountID":"0040088210","transactionTime":"25/01/2024 01:35:27 AM"}}"#
    )
}

async fn post_va(base: &str, body: &str, signature: Option<String>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/webhooks/va_services"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(sig) = signature {
        request = request.header("X-VA-Signature", sig);
    }
    request.send().await.expect("ingress reachable")
}

fn sign(body: &str) -> String {
    hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()])
}

async fn pay_in(app: &TestApp, transaction_reference: &str) -> Option<(String, i32)> {
    sqlx::query_as(
        "SELECT amount::text, notifications FROM pay_ins
         WHERE provider = 'va_services' AND transaction_reference = $1",
    )
    .bind(transaction_reference)
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_signed_pay_in_is_queued_applied_once_and_guards_refunds() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    let txn = reference("txn-payin");
    let body = va_pay_in(&txn, "40.50", &reference("trace"));

    let answer = post_va(&base, &body, Some(sign(&body))).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    app.eventually("the pay-in is in the ledger", || async {
        pay_in(&app, &txn).await.is_some()
    })
    .await;
    // The provider retries the same notification: accepted again, applied once.
    assert_eq!(post_va(&base, &body, Some(sign(&body))).await.status(), 200);
    app.eventually("the repeat is recorded as a duplicate", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_webhook_inbox WHERE provider = 'va_services'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(pay_in(&app, &txn).await, Some(("40.50".into(), 1)));

    // The command has no paymentAmount: the ledger's amount is the guard.
    let over = reference("over-payin");
    let mut cmd = va_command(&over, "40.51");
    cmd["transactionReference"] = json!(txn);
    app.publish(&cmd).await;
    let e = app.wait_for(&over, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::AmountExceedsRefundable);
    assert!(f.message.contains("40.50"), "{}", f.message);
    let fits = reference("fits-payin");
    let mut cmd = va_command(&fits, "40.50");
    cmd["transactionReference"] = json!(txn);
    app.publish(&cmd).await;
    app.wait_for(&fits, RefundStatus::Completed).await;
    app.cleanup().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_queued() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    let txn = reference("txn-forged");
    let body = va_pay_in(&txn, "10.00", "trace-forged");
    let forged = sign(&body.replace("10.00", "99.00"));
    for signature in [None, Some(forged), Some("abc".into()), Some(String::new())] {
        let answer = post_va(&base, &body, signature).await;
        assert_eq!(answer.status(), 401);
        let error: Value = answer.json().await.unwrap();
        assert_eq!(error["error"]["code"], "bad_signature");
        assert!(!error.to_string().contains(SECRET));
    }
    // Unknown providers and oversized bodies are refused before any work.
    let unknown = reqwest::Client::new()
        .post(format!("{base}/webhooks/paypal"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let huge = "x".repeat(300 * 1024);
    assert_eq!(post_va(&base, &huge, Some(sign(&huge))).await.status(), 413);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_webhook_inbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 0, "a refused webhook must never be queued");
    app.cleanup().await;
}

#[tokio::test]
async fn the_ingress_answers_503_when_the_broker_cannot_take_the_webhook() {
    let app = TestApp::spawn().await;
    let mut config = (*app.ctx.config).clone();
    // Nothing listens on port 9: the broker is "down".
    config.amqp_url = "amqp://guest:guest@127.0.0.1:9/%2f".into();
    let router = refund_worker::http::router(refund_worker::http::AppState {
        pool: app.pool.clone(),
        status: Arc::new(refund_worker::pipeline::worker::Status::default()),
        config: Arc::new(config),
        topology: app.topology.clone(),
        providers: app.ctx.providers.clone(),
        context: app.ctx.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let body = va_pay_in("txn-down", "10.00", "trace-down");
    let answer = post_va(&format!("http://{addr}"), &body, Some(sign(&body))).await;
    assert_eq!(answer.status(), 503);
    let error: Value = answer.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable");
    app.cleanup().await;
}

/// The next message on the webhooks' dead-letter queue (waiting up to 5 s): its body and
/// the reason header.
async fn next_dead_letter(app: &TestApp) -> (Vec<u8>, String) {
    let channel = app.connection.create_channel().await.unwrap();
    for _ in 0..100 {
        if let Some(msg) = channel
            .basic_get(
                app.topology.webhooks_dlq.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let reason = refund_worker::broker::topology::header_str(
                msg.delivery.properties.headers(),
                refund_worker::broker::ERROR_HEADER,
            )
            .expect("a dead letter carries its reason");
            return (msg.delivery.data, reason);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no dead letter within 5 s");
}

#[tokio::test]
async fn a_webhook_the_consumer_cannot_parse_is_dead_lettered_with_the_reason() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    // Signed correctly, but not a notification: no transactionReference.
    let body = r#"{"amount": 5, "success": true}"#;
    assert_eq!(post_va(&base, body, Some(sign(body))).await.status(), 200);
    let (data, reason) = next_dead_letter(&app).await;
    assert_eq!(data, body.as_bytes());
    assert!(reason.contains("transactionReference"), "{reason}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_webhook_the_database_refuses_is_dead_lettered_and_its_batch_mates_are_applied() {
    // One lane, so the two messages waiting when the worker starts share a batch.
    let mut app = TestApp::spawn_with(Options {
        env: vec![("WEBHOOK_LANES", "1".into())],
        ..Options::default()
    })
    .await;
    let base = app.serve_http().await;
    let good_txn = reference("wh-good");
    let good = va_pay_in(&good_txn, "10.00", &reference("trace-good"));
    // Valid JSON, but PostgreSQL text cannot hold the NUL in the payment reference.
    let bad = va_pay_in("bad\\u0000ref", "10.00", &reference("trace-bad"));
    for body in [&bad, &good] {
        assert_eq!(post_va(&base, body, Some(sign(body))).await.status(), 200);
    }
    app.start_worker();
    let mut applied = None;
    for _ in 0..100 {
        applied = pay_in(&app, &good_txn).await;
        if applied.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(applied.is_some(), "the good pay-in is applied");
    let (data, reason) = next_dead_letter(&app).await;
    assert_eq!(data, bad.as_bytes());
    assert!(
        reason.contains("the database refused this webhook"),
        "{reason}"
    );
    app.cleanup().await;
}

fn refund_webhook(reference: &str, outcome: ProviderOutcome, id: &str) -> ProviderWebhook {
    ProviderWebhook {
        event_id: Some(id.into()),
        kind: WebhookKind::Refund {
            refund_reference: Some(reference.into()),
            provider_reference: None,
            transaction_reference: None,
            outcome,
        },
    }
}

fn succeeded() -> ProviderOutcome {
    ProviderOutcome::Succeeded {
        provider_reference: Some("prov-1".into()),
        provider_status: "COMPLETED".into(),
        fee: None,
    }
}

#[tokio::test]
async fn with_several_lanes_each_payment_keeps_its_notifications_in_queue_order() {
    // The default is one lane; several lanes must still apply everything, once, and keep
    // each payment's notifications in the order they were queued (the ledger keeps the
    // last status it was given).
    let mut app = TestApp::spawn_with(Options {
        env: vec![("WEBHOOK_LANES", "3".into())],
        ..Options::default()
    })
    .await;
    let base = app.serve_http().await;
    let payments: Vec<String> = (0..9).map(|i| reference(&format!("lanes-{i}"))).collect();
    // Queued before the worker starts, so the lanes find them waiting together.
    for txn in &payments {
        for (amount, trace) in [("10.00", "first"), ("20.00", "second"), ("30.00", "third")] {
            let body = va_pay_in(txn, amount, &reference(trace));
            assert_eq!(post_va(&base, &body, Some(sign(&body))).await.status(), 200);
        }
    }
    app.start_worker();
    app.eventually("every notification is in the inbox", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_webhook_inbox
             WHERE provider = 'va_services' AND state = 'APPLIED'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n == 27
    })
    .await;
    for txn in &payments {
        assert_eq!(
            pay_in(&app, txn).await,
            Some(("30.00".into(), 3)),
            "payment {txn}: the last notification queued is the one kept, each applied once"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn refund_webhooks_are_applied_once_in_order_and_contradictions_are_raised() {
    let app = TestApp::spawn().await;
    let r = reference("wh-order");
    // Arrives before the refund exists: parked, not lost.
    let early = refund_webhook(&r, succeeded(), "evt-early");
    let sink = app.ctx.sink.clone();
    let va = ProviderName::VaServices;
    let parked = receive_webhook(&app.pool, va, b"early", 0, &early, &sink)
        .await
        .unwrap();
    assert_eq!(parked, Applied::Parked);

    // The refund appears (no worker runs, so it stays PENDING until the webhook applies).
    let cmd = serde_json::to_vec(&va_command(&r, "10.00")).unwrap();
    let stored = refund_worker::pipeline::intake::handle(&app.ctx, &cmd)
        .await
        .unwrap();
    assert!(matches!(
        stored,
        refund_worker::pipeline::intake::IntakeOutcome::Stored(_)
    ));
    let applied = retry_parked(&app.pool, va, "id:evt-early", &early, false, &sink)
        .await
        .unwrap();
    assert!(
        matches!(&applied, Applied::Transitioned(e) if e.status == RefundStatus::Completed),
        "{applied:?}"
    );
    assert_eq!(app.db_status(&r).await.as_deref(), Some("COMPLETED"));

    // The same webhook again: a duplicate. A late PENDING: nothing changes.
    let again = receive_webhook(&app.pool, va, b"early", 0, &early, &sink)
        .await
        .unwrap();
    assert_eq!(again, Applied::Duplicate);
    let late = refund_webhook(
        &r,
        ProviderOutcome::Accepted {
            provider_reference: None,
            provider_status: "PENDING".into(),
            fee: None,
        },
        "evt-late",
    );
    let unchanged = receive_webhook(&app.pool, va, b"late", 0, &late, &sink)
        .await
        .unwrap();
    assert!(
        matches!(unchanged, Applied::Unchanged { .. }),
        "{unchanged:?}"
    );

    // A failure after success: recorded and raised, never applied.
    let contra = refund_webhook(
        &r,
        ProviderOutcome::Failed(FailureReason::new(
            FailureCode::ProviderRejected,
            "reversed",
        )),
        "evt-contra",
    );
    let raised = receive_webhook(&app.pool, va, b"contra", 0, &contra, &sink)
        .await
        .unwrap();
    assert!(
        matches!(
            raised,
            Applied::Contradiction {
                ours: RefundStatus::Completed,
                theirs: RefundStatus::RefundFail,
                ..
            }
        ),
        "{raised:?}"
    );
    assert_eq!(app.db_status(&r).await.as_deref(), Some("COMPLETED"));
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_key, state FROM provider_webhook_inbox ORDER BY received_at, event_key",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![
            ("id:evt-early".into(), "APPLIED".into()),
            ("id:evt-late".into(), "UNCHANGED".into()),
            ("id:evt-contra".into(), "CONTRADICTION".into()),
        ]
    );
    // Exactly one COMPLETED transition, from the webhook.
    let causes: Vec<String> = sqlx::query_scalar(
        "SELECT cause FROM refund_transitions WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(&r)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // The contradiction flagged the refund for an operator, once; its status stays.
    assert_eq!(
        causes,
        vec!["command received", "provider webhook", "flagged for review"]
    );
    let review: (Option<String>, String) =
        sqlx::query_as("SELECT review_reason, status FROM refunds WHERE refund_reference = $1")
            .bind(&r)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        review
            .0
            .as_deref()
            .is_some_and(|m| m.contains("contradict")),
        "{review:?}"
    );
    assert_eq!(review.1, "COMPLETED");
    app.cleanup().await;
}

#[tokio::test]
async fn a_batch_of_webhooks_applies_as_if_they_came_one_at_a_time_in_one_transaction() {
    let app = TestApp::spawn().await;
    let va = ProviderName::VaServices;
    let sink = app.ctx.sink.clone();
    let (a, b, unknown) = (reference("wh-ba"), reference("wh-bb"), reference("wh-bu"));
    for r in [&a, &b] {
        let cmd = serde_json::to_vec(&va_command(r, "10.00")).unwrap();
        refund_worker::pipeline::intake::handle(&app.ctx, &cmd)
            .await
            .unwrap();
    }
    // Stored before the batch: its repeat inside the batch is a duplicate.
    let seen = refund_webhook(&b, succeeded(), "evt-b-seen");
    receive_webhook(&app.pool, va, b"seen", 0, &seen, &sink)
        .await
        .unwrap();
    let progress = |id: &str, provider_reference: Option<&str>, status: &str| {
        refund_webhook(
            &a,
            ProviderOutcome::Accepted {
                provider_reference: provider_reference.map(Into::into),
                provider_status: status.into(),
                fee: None,
            },
            id,
        )
    };
    let (p1, p2) = (
        progress("evt-a-1", Some("PRV-A"), "RECEIVED"),
        progress("evt-a-2", None, "PROCESSING"),
    );
    let done = refund_webhook(&a, succeeded(), "evt-a-done");
    let contra = refund_webhook(
        &a,
        ProviderOutcome::Failed(FailureReason::new(
            FailureCode::ProviderRejected,
            "reversed",
        )),
        "evt-a-contra",
    );
    let early = refund_webhook(&unknown, succeeded(), "evt-u");
    let batch: Vec<(&[u8], &ProviderWebhook)> = vec![
        (b"p1", &p1),
        (b"p2", &p2),
        (b"done", &done),
        (b"done", &done),
        (b"contra", &contra),
        (b"seen", &seen),
        (b"early", &early),
    ];
    let items: Vec<inbox::Incoming<'_>> = batch
        .iter()
        .map(|(body, webhook)| inbox::Incoming {
            provider: va,
            body,
            part: 0,
            webhook,
        })
        .collect();
    let applied =
        refund_worker::pipeline::provider_webhooks::receive_batch(&app.pool, &items, &sink)
            .await
            .unwrap();
    // now() is the transaction's start: one value across the batch's rows, one transaction.
    let moments: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT updated_at) FROM provider_webhook_inbox
         WHERE event_key LIKE 'id:evt-a-%' OR event_key = 'id:evt-u'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(moments, 1, "one transaction for the whole batch");
    let labels: Vec<&str> = applied.iter().map(Applied::label).collect();
    assert_eq!(
        labels,
        [
            "unchanged",
            "unchanged",
            "applied",
            "duplicate",
            "contradiction",
            "duplicate",
            "parked"
        ]
    );
    // The in-progress statuses merged before the final one: the provider's reference from
    // the first, the final status word from the webhook that finished it.
    let row: (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT status, provider_reference, provider_status FROM refunds WHERE refund_reference = $1",
    )
    .bind(&a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "COMPLETED".into(),
            Some("prov-1".into()),
            Some("COMPLETED".into())
        )
    );
    let transitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refund_transitions WHERE refund_reference = $1 AND to_status = 'COMPLETED'
             AND from_status IS DISTINCT FROM to_status",
    )
    .bind(&a)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(transitions, 1);
    let states: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_key, state FROM provider_webhook_inbox WHERE event_key LIKE 'id:evt-%'
         ORDER BY event_key",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("id:evt-a-1", "UNCHANGED"),
            ("id:evt-a-2", "UNCHANGED"),
            ("id:evt-a-contra", "CONTRADICTION"),
            ("id:evt-a-done", "APPLIED"),
            ("id:evt-b-seen", "APPLIED"),
            ("id:evt-u", "PARKED"),
        ]
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_source_over_its_rate_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("WEBHOOK_INGRESS_RATE_PER_SEC", "1".into()),
            ("WEBHOOK_INGRESS_BURST", "2".into()),
        ],
        ingress: true,
        ..Options::default()
    })
    .await;
    let base = app.http_base.clone();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..5 {
        let body = va_pay_in(&format!("txn-rate-{i}"), "1.00", &format!("trace-rate-{i}"));
        let answer = post_va(&base, &body, Some(sign(&body))).await;
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            retry_after = answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let error: Value = answer.json().await.unwrap();
            assert_eq!(error["error"]["code"], "rate_limited");
        }
    }
    // The burst of 2 passes (the broker is up: 200), the rest is refused before any work.
    assert_eq!(statuses[..2], [200, 200]);
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(
        retry_after.is_some_and(|s| (1..=2).contains(&s)),
        "{retry_after:?}"
    );
    app.cleanup().await;
}
