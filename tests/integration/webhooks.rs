//! Outbound merchant webhooks: signing, retries, 410, SSRF policy, resend.

use crate::helpers::*;
use refund_worker::domain::RefundStatus;
use refund_worker::merchant_webhooks::signing::SigningKey;
use serde_json::{json, Value};
use std::collections::HashMap;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn header(r: &wiremock::Request, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Checks a received request's signature the way a merchant would.
fn verify(r: &wiremock::Request) -> Value {
    let key = SigningKey::from_secret(WEBHOOK_SECRET).unwrap();
    let now = chrono::Utc::now().timestamp();
    key.verify(
        &header(r, "webhook-id"),
        &header(r, "webhook-timestamp"),
        &header(r, "webhook-signature"),
        &r.body,
        now,
        300,
    )
    .expect("signature verifies");
    serde_json::from_slice(&r.body).expect("JSON body")
}

#[tokio::test]
async fn a_merchant_endpoint_that_is_down_then_up_gets_each_event_once_in_order() {
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&merchant)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200).set_body_string("thanks"))
        .with_priority(2)
        .mount(&merchant)
        .await;

    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("hook");
    let mut cmd = va_command(&r, "25.17");
    cmd["callbackUrl"] = json!(format!("{}/hook", merchant.uri()));
    app.publish(&cmd).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    app.eventually("both deliveries delivered", || async {
        let d = app.deliveries(&r).await;
        d.len() == 2 && d.iter().all(|d| d.state == "delivered")
    })
    .await;

    let requests = merchant.received_requests().await.unwrap();
    // The first request is the PENDING event: COMPLETED waits until PENDING was attempted.
    assert_eq!(verify(&requests[0])["status"], "PENDING");
    let mut ok_per_event: HashMap<String, usize> = HashMap::new();
    for req in &requests {
        let body = verify(req);
        assert_eq!(body["refundReference"], r.as_str());
        assert_eq!(body["amount"], "25.17");
        assert_eq!(header(req, "webhook-id"), body["eventId"].as_str().unwrap());
        *ok_per_event.entry(header(req, "webhook-id")).or_default() += 1;
    }
    assert_eq!(ok_per_event.len(), 2, "two events");
    // Every HTTP call is in the attempts log; exactly one success per event.
    let deliveries = app.deliveries(&r).await;
    let mut attempts = 0;
    for d in &deliveries {
        let rows = refund_worker::store::merchant_webhooks::attempts(&app.pool, d.event_id)
            .await
            .unwrap();
        assert_eq!(
            rows.iter().filter(|a| a.status_code == Some(200)).count(),
            1,
            "{rows:?}"
        );
        assert!(rows.iter().all(|a| a.latency_ms >= 0));
        attempts += rows.len();
    }
    assert_eq!(attempts, requests.len());
    assert_eq!(attempts, 4, "two 503s, then one success per event");
    app.cleanup().await;
}

#[tokio::test]
async fn gone_stops_retrying() {
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&merchant)
        .await;
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("gone");
    let mut cmd = va_command(&r, "1.00");
    cmd["callbackUrl"] = json!(merchant.uri());
    app.publish(&cmd).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    app.eventually("deliveries failed", || async {
        let d = app.deliveries(&r).await;
        d.len() == 2 && d.iter().all(|d| d.state == "failed")
    })
    .await;
    for d in app.deliveries(&r).await {
        assert_eq!(d.attempts, 1, "410 is not retried");
        assert_eq!(d.last_status_code, Some(410));
    }
    assert_eq!(merchant.received_requests().await.unwrap().len(), 2);
    app.cleanup().await;
}

#[tokio::test]
async fn internal_callback_addresses_are_refused_without_a_connection() {
    // No allow list here: the production default.
    let mut app = TestApp::spawn_with(Options {
        env: vec![("WEBHOOK_ALLOW_NETWORKS", String::new())],
        ..Options::default()
    })
    .await;
    app.start_worker();
    let cases = [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.7/hook", "private"),
    ];
    for (i, (url, kind)) in cases.iter().enumerate() {
        let r = reference(&format!("ssrf{i}"));
        let mut cmd = va_command(&r, "1.00");
        cmd["callbackUrl"] = json!(url);
        app.publish(&cmd).await;
        app.eventually("delivery refused", || async {
            app.deliveries(&r)
                .await
                .first()
                .is_some_and(|d| d.state == "failed")
        })
        .await;
        let d = &app.deliveries(&r).await[0];
        let error = d.last_error.clone().unwrap_or_default();
        assert!(
            error.contains(kind) && error.contains("refused"),
            "{url}: {error}"
        );
        assert_eq!(d.last_status_code, None, "no HTTP exchange happened");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn failed_deliveries_are_resent_by_id_and_by_window_idempotently() {
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&merchant)
        .await;
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let admin = app.admin().await;
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    let r = reference("resend");
    let mut cmd = va_command(&r, "1.00");
    cmd["callbackUrl"] = json!(merchant.uri());
    app.publish(&cmd).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    app.eventually("both failed", || async {
        let d = app.deliveries(&r).await;
        d.len() == 2 && d.iter().all(|d| d.state == "failed")
    })
    .await;

    // The merchant fixed their endpoint.
    merchant.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&merchant)
        .await;
    const RESEND: &str = "/v1/webhooks/resend";
    let resend = |body: Value| {
        let admin = &admin;
        async move { admin.post_json(RESEND, &body).await }
    };

    let first = app.deliveries(&r).await[0].event_id;
    let answer: Value = resend(json!({"eventIds": [first]})).await;
    assert_eq!(answer["queued"], 1);
    // Asking again while it is queued or already delivered queues nothing.
    let again: Value = resend(json!({"eventIds": [first]})).await;
    assert_eq!(again["queued"], 0);

    let dry: Value = resend(json!({"since": started, "dryRun": true})).await;
    assert_eq!(dry["wouldQueue"], 1, "{dry}");
    let window: Value = resend(json!({"since": started, "until": chrono::Utc::now()})).await;
    assert_eq!(window["queued"], 1, "{window}");
    app.eventually("both delivered", || async {
        app.deliveries(&r)
            .await
            .iter()
            .all(|d| d.state == "delivered")
    })
    .await;
    let after: Value = resend(json!({"since": started})).await;
    assert_eq!(after["queued"], 0);
    assert_eq!(
        merchant.received_requests().await.unwrap().len(),
        2,
        "each event delivered once after the fix"
    );

    let bad = admin.post(RESEND, &json!({})).await;
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("eventIds or since"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_callback_host_that_does_not_resolve_or_a_closed_port_is_said_as_such() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cases = [
        (
            "http://no-such-host.invalid/hook".to_string(),
            "no-such-host.invalid does not resolve (DNS)",
        ),
        (
            format!("http://127.0.0.1:{closed}/hook"),
            "Connection refused",
        ),
    ];
    for (i, (url, expected)) in cases.iter().enumerate() {
        let r = reference(&format!("dns{i}"));
        let mut cmd = va_command(&r, "1.00");
        cmd["callbackUrl"] = json!(url);
        app.publish(&cmd).await;
        app.eventually("an attempt recorded", || async {
            app.deliveries(&r)
                .await
                .first()
                .is_some_and(|d| d.attempts > 0)
        })
        .await;
        let d = &app.deliveries(&r).await[0];
        let error = d.last_error.clone().unwrap_or_default();
        assert!(error.contains(expected), "{url}: {error}");
        assert!(!error.ends_with("client error (Connect)"), "{url}: {error}");
    }
    app.cleanup().await;
}
