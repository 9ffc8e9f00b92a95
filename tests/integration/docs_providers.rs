//! Providers built only from their docs (wiremock), not from our sandbox: the sandbox shares
//! our assumptions (paths the docs leave open, a "Refund Details" endpoint), so it cannot
//! show what happens when an assumption is wrong. Each test points one or more providers'
//! base URLs at a wiremock server answering what the docs define (and nothing else), and
//! drives the dispatcher one `dispatch::step` at a time against real PostgreSQL.

use crate::helpers::*;
use refund_worker::pipeline::dispatch;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Stores a due `PENDING` refund directly (no intake, no events) in `phase`.
async fn due_refund(app: &TestApp, command: &Value, phase: &str) {
    sqlx::query(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, next_attempt_at, command, command_hash)
         VALUES ($1, $2, $3, $4::numeric, $5, 'PENDING', $6, now(), $7, 'h')",
    )
    .bind(command["refundReference"].as_str())
    .bind(command["provider"].as_str())
    .bind(command["transactionReference"].as_str())
    .bind(command["amount"].as_str())
    .bind(command["currency"].as_str())
    .bind(phase)
    .bind(command)
    .execute(&app.pool)
    .await
    .expect("insert refund");
}

/// Runs dispatcher steps until `done` holds (or the wait runs out).
async fn step_until<F, Fut>(app: &TestApp, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        dispatch::step(&app.ctx).await.expect("step");
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn attempts(app: &TestApp, reference: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT call, outcome FROM provider_attempts WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(reference)
    .fetch_all(&app.pool)
    .await
    .expect("attempts")
}

/// VA's envelope, as every VA answer in the docs is shaped.
fn va_envelope(success: bool, message: &str, code: &str, body: Value) -> Value {
    json!({"requestSuccessful": success, "responseMessage": message, "responseCode": code, "responseBody": body})
}

/// The "Initiate Refund" documented answer, for our refund, with `status`.
fn va_refund(command: &Value, status: &str) -> Value {
    va_envelope(
        true,
        "success",
        "0",
        json!({
            "transactionReference": command["transactionReference"],
            "refundReference": command["refundReference"],
            "refundAmount": 10,
            "refundReason": "Order cancelled!",
            "customerNote": "An optional note",
            "refundType": "PARTIAL_REFUND",
            "refundStatus": status,
            "refundStrategy": "MERCHANT_WALLET",
            "comment": "Transaction refund is in progress.",
            "completedOn": if status == "COMPLETED" { json!("25/01/2024 01:39:13 AM") } else { Value::Null },
            "createdOn": "25/01/2024 01:35:27 AM"
        }),
    )
}

/// VA Services as the docs define it, after a bad start: "Initiate Refund" answers 503
/// `fail_first` times, then the documented success (PENDING); "Get Refund Status" says
/// "not found" until a refund was accepted, then COMPLETED. No "Refund Details" path.
struct VaFromDocs {
    command: Value,
    fail_first: usize,
    initiates: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Respond for VaFromDocs {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.method.as_str() == "POST" {
            let n = self.initiates.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                return ResponseTemplate::new(503).set_body_string("Service Unavailable");
            }
            self.accepted.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(200).set_body_json(va_refund(&self.command, "PENDING"));
        }
        if self.accepted.load(Ordering::SeqCst) == 0 {
            ResponseTemplate::new(404).set_body_json(va_envelope(
                false,
                "Refund not found",
                "404",
                Value::Null,
            ))
        } else {
            ResponseTemplate::new(200).set_body_json(va_refund(&self.command, "COMPLETED"))
        }
    }
}

#[tokio::test]
async fn va_refund_after_5xx_and_a_documented_not_found_is_resubmitted_and_completes() {
    let server = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![("PROVIDER_VA_SERVICES_BASE_URL", server.uri())],
        ..Options::default()
    })
    .await;
    let r = reference("docs-va");
    let command = va_command(&r, "10.00");
    let initiates = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    // One provider behind both routes: they share its counters.
    let va = || VaFromDocs {
        command: command.clone(),
        fail_first: 2,
        initiates: initiates.clone(),
        accepted: accepted.clone(),
    };
    Mock::given(method("POST"))
        .and(path("/va/refunds/initiate-refund"))
        .respond_with(va())
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/va/refunds/{r}")))
        .respond_with(va())
        .mount(&server)
        .await;
    // Anything else (the assumed "Refund Details" path included): wiremock's bare 404.
    due_refund(&app, &command, "NOT_SUBMITTED").await;

    step_until(&app, "the refund completes", || async {
        app.db_status(&r).await.as_deref() == Some("COMPLETED")
    })
    .await;

    let requests = server.received_requests().await.expect("recording");
    let initiated: Vec<Value> = requests
        .iter()
        .filter(|q| q.method.as_str() == "POST")
        .map(|q| serde_json::from_slice(&q.body).expect("JSON body"))
        .collect();
    assert_eq!(initiated.len(), 3, "two 503s, then the accepted resubmit");
    for body in &initiated {
        assert_eq!(
            body["refundReference"],
            json!(r),
            "the same idempotency key"
        );
        assert_eq!(
            body["refundAmount"].to_string(),
            "10",
            "the exact amount, as a number"
        );
    }
    let details = requests
        .iter()
        .filter(|q| q.url.path().starts_with("/va/refunds/details/"))
        .count();
    assert!(
        details >= 1,
        "the extra check was tried, found absent, and not load-bearing"
    );
    let calls = attempts(&app, &r).await;
    assert!(
        calls.contains(&("status".into(), "not_found".into())),
        "{calls:?}"
    );
    assert!(calls.iter().all(|(_, o)| o != "unknown"), "{calls:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn va_status_and_details_paths_are_configurable() {
    let server = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_VA_SERVICES_BASE_URL", server.uri()),
            (
                "PROVIDER_VA_SERVICES_STATUS_PATH",
                "/api/v2/refund-status/{refundReference}".into(),
            ),
            ("PROVIDER_VA_SERVICES_DETAILS_PATH", "off".into()),
        ],
        ..Options::default()
    })
    .await;
    let r = reference("docs-va-paths");
    let command = va_command(&r, "10.00");
    Mock::given(method("GET"))
        .and(path(format!("/api/v2/refund-status/{r}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(va_refund(&command, "COMPLETED")))
        .mount(&server)
        .await;
    due_refund(&app, &command, "SUBMITTING").await;
    step_until(&app, "the refund completes", || async {
        app.db_status(&r).await.as_deref() == Some("COMPLETED")
    })
    .await;
    let requests = server.received_requests().await.expect("recording");
    assert!(requests.iter().all(|q| !q.url.path().contains("/details/")));
    app.cleanup().await;
}

/// The five ambiguous answers to a status lookup.
const AMBIGUOUS: [&str; 5] = ["401", "403", "500", "garbage", "unknown-word"];

fn answer(kind: &str, unknown_word: Value) -> ResponseTemplate {
    match kind {
        "401" => ResponseTemplate::new(401).set_body_string("Unauthorized"),
        "403" => ResponseTemplate::new(403).set_body_json(json!({"message": "Forbidden"})),
        "500" => ResponseTemplate::new(500).set_body_string("Internal Server Error"),
        "garbage" => ResponseTemplate::new(200).set_body_string("<html>oops</html>"),
        _ => ResponseTemplate::new(200).set_body_json(unknown_word),
    }
}

#[tokio::test]
async fn no_ambiguous_status_answer_fails_a_refund_at_any_provider() {
    let server = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_VA_SERVICES_BASE_URL", server.uri()),
            ("PROVIDER_BPN_BASE_URL", server.uri()),
            ("PROVIDER_BINANCE_PAY_BASE_URL", server.uri()),
            ("PROVIDER_BVNK_BASE_URL", server.uri()),
            // One try would do to fail a refund; a few are plenty to see it does not.
            ("MAX_SUBMIT_ATTEMPTS", "1".into()),
        ],
        ..Options::default()
    })
    .await;
    let mut refs = Vec::new();
    for (i, kind) in AMBIGUOUS.iter().enumerate() {
        // VA Services: Get Refund Status at the default path.
        let r = reference(&format!("amb-va-{kind}"));
        let command = va_command(&r, "10.00");
        Mock::given(method("GET"))
            .and(path(format!("/va/refunds/{r}")))
            .respond_with(answer(kind, va_refund(&command, "UNDER_REVIEW")))
            .mount(&server)
            .await;
        refs.push((r, command));

        // BPN: the order detail is the status.
        let r = reference(&format!("amb-bpn-{kind}"));
        let order = format!("order-{r}");
        let command = json!({"refundReference": r, "provider": "bpn", "transactionReference": order,
            "amount": "10.00", "currency": "USD", "reason": "Order cancelled!"});
        Mock::given(method("GET"))
            .and(path("/v1/virtual-account/order/detail"))
            .and(query_param("orderId", order.as_str()))
            .respond_with(answer(
                kind,
                json!({"status": 0, "message": "success", "traceId": "t",
                       "data": {"orderId": order, "amount": "10.00", "currency": "USD",
                                "status": "SUCCESS", "refundStatus": "UNDER_REVIEW"}}),
            ))
            .mount(&server)
            .await;
        refs.push((r, command));

        // Binance Pay: the refund query.
        let r = reference(&format!("amb-bnb-{kind}"));
        let command = json!({"refundReference": r, "provider": "binance_pay",
            "transactionReference": format!("38372930372930{i}"), "amount": "10.00",
            "currency": "USDT", "reason": "Customer returned the goods"});
        Mock::given(method("POST"))
            .and(path("/binancepay/openapi/order/refund/query"))
            .and(body_partial_json(json!({"refundRequestId": r})))
            .respond_with(answer(
                kind,
                json!({"status": "SUCCESS", "code": "000000", "errorMessage": "",
                       "data": {"refundRequestId": r, "refundStatus": "REFUND_UNDER_REVIEW"}}),
            ))
            .mount(&server)
            .await;
        refs.push((r, command));

        // BVNK: the pay-in's refunds.
        let r = reference(&format!("amb-bvnk-{kind}"));
        let payin = format!("payin-{r}");
        let command = json!({"refundReference": r, "provider": "bvnk", "transactionReference": payin,
            "amount": "10.00", "currency": "EUR", "reason": "Order cancelled!"});
        Mock::given(method("GET"))
            .and(path(format!("/payment/v1/payins/{payin}/refund")))
            .respond_with(answer(
                kind,
                json!([{"customerReference": r, "status": "UNDER_COMPLIANCE_REVIEW"}]),
            ))
            .mount(&server)
            .await;
        refs.push((r, command));
    }
    for (_, command) in &refs {
        // Both phases that look the refund up: after an unknown submit, and once accepted.
        due_refund(&app, command, "SUBMITTING").await;
    }
    // Until every refund still pending was looked up at least three times (a refund that
    // ended is reported below, with its calls).
    step_until(&app, "three lookups of every pending refund", || async {
        let short: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refunds r WHERE r.status = 'PENDING'
                 AND (SELECT count(*) FROM provider_attempts a
                      WHERE a.refund_reference = r.refund_reference) < 3",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count");
        short == 0
    })
    .await;
    let mut wrong = Vec::new();
    for (r, command) in &refs {
        let calls = attempts(&app, r).await;
        let status = app.db_status(r).await;
        let bad_call = calls
            .iter()
            .any(|(call, o)| call != "status" || o == "failed" || o == "not_found");
        if status.as_deref() != Some("PENDING") || bad_call {
            wrong.push(format!("{} {r}: {status:?} {calls:?}", command["provider"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .expect("outbox");
    assert_eq!(events, 0, "no REFUND_FAIL (nor any other final event)");
    app.cleanup().await;
}

#[tokio::test]
async fn a_huge_retry_after_on_a_submit_is_clamped_to_the_ceiling() {
    let server = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![("PROVIDER_VA_SERVICES_BASE_URL", server.uri())],
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/va/refunds/initiate-refund"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("Retry-After", "1000000000000")
                .set_body_string("Service Unavailable"),
        )
        .mount(&server)
        .await;
    let r = reference("docs-retry-after");
    due_refund(&app, &va_command(&r, "10.00"), "NOT_SUBMITTED").await;
    dispatch::step(&app.ctx).await.expect("step");

    let (status, phase, wait_secs): (String, String, f64) = sqlx::query_as(
        "SELECT status, phase, EXTRACT(EPOCH FROM (next_attempt_at - now()))::float8
         FROM refunds WHERE refund_reference = $1",
    )
    .bind(&r)
    .fetch_one(&app.pool)
    .await
    .expect("refund");
    assert_eq!((status.as_str(), phase.as_str()), ("PENDING", "SUBMITTING"));
    let ceiling = refund_worker::retry::MAX_RETRY_AFTER.as_secs_f64();
    assert!(
        wait_secs <= ceiling && wait_secs > ceiling - 60.0,
        "scheduled {wait_secs} s ahead; the ceiling is {ceiling} s"
    );
    let calls = attempts(&app, &r).await;
    assert_eq!(calls, vec![("submit".to_string(), "retryable".to_string())]);
    app.cleanup().await;
}

#[tokio::test]
async fn bvnk_estimate_carries_its_own_key_and_the_refund_path_is_configurable() {
    use refund_worker::providers::bvnk::{estimate_idempotency_key, idempotency_key};
    let server = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_BVNK_BASE_URL", server.uri()),
            // The docs' curl example form, chosen by configuration.
            (
                "PROVIDER_BVNK_REFUND_PATH",
                "/payment/v1/payouts/{transactionReference}/refund".into(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let r = reference("docs-bvnk");
    let payin = format!("payin-{r}");
    let command = json!({"refundReference": r, "provider": "bvnk", "transactionReference": payin,
        "amount": "150", "currency": "EUR", "reason": "Order cancelled!"});
    // The documented answers, verbatim.
    Mock::given(method("GET"))
        .and(path(format!("/payment/v1/payins/{payin}/estimate")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(include_str!("../../fixtures/bvnk/estimate-response.json")),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/payment/v1/payouts/{payin}/refund")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(include_str!("../../fixtures/bvnk/refund-response.json")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/payment/v1/payins/{payin}/refund")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"customerReference": r, "status": "COMPLETED"}])),
        )
        .mount(&server)
        .await;
    due_refund(&app, &command, "NOT_SUBMITTED").await;
    step_until(&app, "the refund completes", || async {
        app.db_status(&r).await.as_deref() == Some("COMPLETED")
    })
    .await;

    let requests = server.received_requests().await.expect("recording");
    let key_of = |suffix: &str| -> Vec<String> {
        requests
            .iter()
            .filter(|q| q.url.path().ends_with(suffix))
            .map(|q| {
                q.headers
                    .get("x-idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(
        key_of("/estimate"),
        vec![estimate_idempotency_key(&r).to_string()],
        "the docs mark X-Idempotency-Key required on the estimate"
    );
    let refund_posts: Vec<_> = requests
        .iter()
        .filter(|q| q.method.as_str() == "POST")
        .collect();
    assert_eq!(refund_posts.len(), 1);
    assert_eq!(
        refund_posts[0].url.path(),
        format!("/payment/v1/payouts/{payin}/refund")
    );
    assert_eq!(
        refund_posts[0]
            .headers
            .get("x-idempotency-key")
            .and_then(|v| v.to_str().ok()),
        Some(idempotency_key(&r).to_string().as_str())
    );
    assert_ne!(estimate_idempotency_key(&r), idempotency_key(&r));
    app.cleanup().await;
}

/// BPN as its page defines it: the refund endpoint, and nothing else (no order detail, no
/// order list; wiremock's bare 404 for both). The lookups are assumptions, so their absence
/// must not stop a refund: it goes by amount, BPN's documented answer accepts it, status
/// lookups are unknown (never "not found", so no second refund), and BPN's refund
/// notification settles it.
#[tokio::test]
async fn bpn_without_order_lookups_refunds_by_amount_once_and_its_notification_settles_it() {
    use refund_worker::domain::RefundStatus;
    use refund_worker::providers::signing::hmac_sha256_hex;
    const BPN_SECRET: &str = "bpn-docs-webhook-secret";
    let server = MockServer::start().await;
    let mut app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_BPN_BASE_URL", server.uri()),
            ("PROVIDER_BPN_WEBHOOK_SECRET", BPN_SECRET.into()),
        ],
        ..Options::default()
    })
    .await;
    app.start_worker();
    let base = app.serve_http().await;
    let r = reference("docs-bpn-blind");
    let order = format!("VA-{r}");
    Mock::given(method("POST"))
        .and(path("/v1/virtual-account/order/refund"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": 0, "message": "success",
            "data": {"orderId": order, "status": "PROCESSING"},
            "traceId": "8f1c0a"
        })))
        .mount(&server)
        .await;
    app.publish(
        &json!({"refundReference": r, "provider": "bpn", "transactionReference": order,
        "amount": "25.17", "currency": "USD", "reason": "Order cancelled!"}),
    )
    .await;
    app.wait_for(&r, RefundStatus::Pending).await;
    app.eventually("the refund was sent and its status asked twice", || async {
        let requests = server.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter(|q| q.url.path().ends_with("/order/list"))
            .count()
            >= 2
    })
    .await;
    let requests = server.received_requests().await.expect("recording");
    let refunds: Vec<Value> = requests
        .iter()
        .filter(|q| q.url.path() == "/v1/virtual-account/order/refund")
        .map(|q| serde_json::from_slice(&q.body).expect("JSON body"))
        .collect();
    assert_eq!(refunds.len(), 1, "sent once, never resubmitted blind");
    assert_eq!(refunds[0]["orderId"], json!(order));
    assert_eq!(
        refunds[0]["amount"].to_string(),
        "25.17",
        "by amount, exact, never the bare orderId that could refund the whole order"
    );
    assert_eq!(app.db_status(&r).await.as_deref(), Some("PENDING"));

    // BPN's refund notification (signed HMAC-SHA256 of the raw body, our assumed header).
    let body = json!({"notifyType": "REFUND", "notifyId": format!("n-{r}"),
        "data": {"orderId": order, "refundStatus": "REFUNDED", "amount": 25.17, "currency": "USD"}})
    .to_string();
    let answer = reqwest::Client::new()
        .post(format!("{base}/webhooks/bpn"))
        .header("content-type", "application/json")
        .header(
            "X-BPN-Signature",
            hmac_sha256_hex(BPN_SECRET.as_bytes(), &[body.as_bytes()]),
        )
        .body(body)
        .send()
        .await
        .expect("ingress");
    assert_eq!(answer.status(), 200);
    let done = app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(done.amount.as_deref(), Some("25.17"));
    let posts = server
        .received_requests()
        .await
        .expect("recording")
        .iter()
        .filter(|q| q.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 1);
    app.cleanup().await;
}
