//! Every refund ends final or in operator review: the review flag after `REVIEW_AFTER`, an
//! operator's recheck and resolution, contradicting webhooks, the pay-ins ledger moving
//! only forward, and the over-refund guard's recorded source.
//!
//! The provider here is a wiremock VA Services built from its docs (the envelope and
//! fields of "Initiate Refund" and "Get Refund Status"), not the sandbox.

use crate::helpers::*;
use refund_worker::domain::{
    FailureCode, FailureReason, ProviderName, ProviderOutcome, RefundStatus,
};
use refund_worker::pipeline::intake::{self, IntakeOutcome};
use refund_worker::providers::{ProviderWebhook, WebhookKind};
use refund_worker::store::provider_webhooks::Applied;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// VA Services' documented answer (envelope and refund fields) with `status`.
fn va_answer(reference: &str, status: &str) -> Value {
    json!({
        "requestSuccessful": true,
        "responseMessage": "success",
        "responseCode": "0",
        "responseBody": {
            "transactionReference": format!("txn-{reference}"),
            "refundReference": reference,
            "refundAmount": 10,
            "refundReason": "Order cancelled!",
            "customerNote": "An optional note",
            "refundType": "PARTIAL_REFUND",
            "refundStatus": status,
            "refundStrategy": "MERCHANT_WALLET",
            "comment": "Transaction refund is in progress.",
            "completedOn": null,
            "createdOn": "25/01/2024 01:35:27 AM"
        }
    })
}

/// A VA Services that accepts every refund and reports `status` for every lookup.
async fn va_server(reference: &str, status: &str) -> MockServer {
    let server = MockServer::start().await;
    mount_va(&server, reference, status).await;
    server
}

async fn mount_va(server: &MockServer, reference: &str, status: &str) {
    Mock::given(method("POST"))
        .and(path("/va/refunds/initiate-refund"))
        .respond_with(ResponseTemplate::new(200).set_body_json(va_answer(reference, "PENDING")))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/va/refunds/[^/]+$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(va_answer(reference, status)))
        .mount(server)
        .await;
}

async fn spawn_against(server: &MockServer, extra: Vec<(&'static str, String)>) -> TestApp {
    let mut env = vec![
        ("PROVIDER_VA_SERVICES_BASE_URL", server.uri()),
        ("PROVIDER_VA_SERVICES_API_KEY", "va-key".to_owned()),
    ];
    env.extend(extra);
    TestApp::spawn_with(Options {
        env,
        ..Options::default()
    })
    .await
}

/// Waits for the review event of `reference`.
async fn wait_review(app: &mut TestApp, reference: &str) -> refund_worker::domain::RefundEvent {
    if let Some(e) = app
        .seen
        .iter()
        .find(|e| e.refund_reference == reference && e.review.is_some())
    {
        return e.clone();
    }
    loop {
        let e = app.next_event().await;
        if e.refund_reference == reference && e.review.is_some() {
            return e;
        }
    }
}

async fn review_columns(app: &TestApp, reference: &str) -> (Option<String>, bool, String) {
    sqlx::query_as(
        "SELECT review_reason, review_since IS NOT NULL, status FROM refunds
         WHERE refund_reference = $1",
    )
    .bind(reference)
    .fetch_one(&app.pool)
    .await
    .expect("refund row")
}

#[tokio::test]
async fn a_refund_still_pending_after_review_after_is_flagged_and_an_operator_resolves_it() {
    let r = reference("review");
    let server = va_server(&r, "PENDING").await;
    let mut app = spawn_against(
        &server,
        vec![("REVIEW_AFTER", "2s".into()), ("REVIEW_POLL", "1s".into())],
    )
    .await;
    app.start_worker();
    let admin = app.admin().await;
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;

    // Still PENDING at the provider after REVIEW_AFTER: flagged, with its own event.
    let flagged = wait_review(&mut app, &r).await;
    assert_eq!(flagged.status, RefundStatus::Pending);
    let review = flagged.review.clone().expect("review object");
    assert!(
        review.reason.contains("no final answer after 2s"),
        "{review:?}"
    );
    assert!(review.reason.contains("PENDING"), "{review:?}");
    let (reason, in_review, status) = review_columns(&app, &r).await;
    assert!(in_review && reason.is_some());
    assert_eq!(status, "PENDING");
    // The review queue shows it; the flag never stops the polling.
    let listed = admin.get_json("/v1/refunds?review=true").await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["refundReference"] == r.as_str()),
        "{listed}"
    );
    let not_in_review = admin.get_json("/v1/refunds?review=false").await;
    assert!(
        !not_in_review["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["refundReference"] == r.as_str()),
        "{not_in_review}"
    );
    let polls_then: i32 =
        sqlx::query_scalar("SELECT polls FROM refunds WHERE refund_reference = $1")
            .bind(&r)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    app.eventually("the provider is still asked while in review", || async {
        let polls: i32 =
            sqlx::query_scalar("SELECT polls FROM refunds WHERE refund_reference = $1")
                .bind(&r)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        polls > polls_then
    })
    .await;

    // An operator resolves it; the answer is the normal final event with `resolution`.
    let answer = admin
        .post(
            &format!("/v1/refunds/{r}/resolve"),
            &json!({"status": "COMPLETED", "reason": "confirmed with VA support", "providerReference": "VA-77"}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let done = app.wait_final(&r).await;
    assert_eq!(done.status, RefundStatus::Completed);
    let resolution = done.resolution.clone().expect("resolution object");
    assert_eq!(resolution.by, "operator");
    assert_eq!(resolution.reason, "confirmed with VA support");
    assert_eq!(done.provider_reference.as_deref(), Some("VA-77"));
    let (_, in_review, status) = review_columns(&app, &r).await;
    assert!(!in_review, "resolving clears the flag");
    assert_eq!(status, "COMPLETED");

    // Never twice, never backwards: 409 with a clear message.
    let again = admin
        .post(
            &format!("/v1/refunds/{r}/resolve"),
            &json!({"status": "REFUND_FAIL", "reason": "changed my mind"}),
        )
        .await;
    assert_eq!(again.status(), 409);
    let body: Value = again.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already COMPLETED"),
        "{body}"
    );
    // The history names the operator's reason.
    let view = admin.get_json(&format!("/v1/refunds/{r}")).await;
    let history = view["transitions"].as_array().unwrap();
    assert!(
        history
            .iter()
            .any(|t| t["cause"] == "resolved by operator"
                && t["detail"] == "confirmed with VA support"),
        "{view}"
    );
    assert!(history.iter().any(|t| t["cause"] == "flagged for review"));

    // The provider now contradicts the operator's COMPLETED: never applied, flagged again,
    // listed for operators, and confirming the status clears the flag.
    let contra = ProviderWebhook {
        event_id: Some("evt-contra".into()),
        kind: WebhookKind::Refund {
            refund_reference: Some(r.clone()),
            provider_reference: None,
            transaction_reference: None,
            outcome: ProviderOutcome::Failed(FailureReason::new(
                FailureCode::ProviderRejected,
                "reversed",
            )),
        },
    };
    let applied = receive_webhook(
        &app.pool,
        ProviderName::VaServices,
        b"{\"contra\":1}",
        0,
        &contra,
        &app.ctx.sink,
    )
    .await
    .unwrap();
    assert!(
        matches!(applied, Applied::Contradiction { .. }),
        "{applied:?}"
    );
    let (reason, in_review, status) = review_columns(&app, &r).await;
    assert!(in_review, "a contradiction flags the refund");
    assert!(reason.unwrap().contains("contradict"));
    assert_eq!(status, "COMPLETED");
    let inbox = admin
        .get_json("/v1/provider-webhooks?state=contradiction")
        .await;
    assert_eq!(inbox["items"][0]["refundReference"], r.as_str(), "{inbox}");
    assert_eq!(inbox["items"][0]["body"], "{\"contra\":1}");
    let bad_state = admin.get("/v1/provider-webhooks?state=lost").await;
    assert_eq!(bad_state.status(), 400);
    let ack = admin
        .post_json(
            &format!("/v1/refunds/{r}/resolve"),
            &json!({"status": "COMPLETED", "reason": "VA confirmed the refund stands"}),
        )
        .await;
    assert_eq!(ack["acknowledged"], true, "{ack}");
    assert!(!review_columns(&app, &r).await.1);
    app.cleanup().await;
}

#[tokio::test]
async fn resolve_refuses_a_pending_refund_not_in_review_and_bad_requests() {
    let r = reference("not-review");
    let server = va_server(&r, "PENDING").await;
    let mut app = spawn_against(&server, vec![]).await;
    app.start_worker();
    let admin = app.admin().await;
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    let early = admin
        .post(
            &format!("/v1/refunds/{r}/resolve"),
            &json!({"status": "REFUND_FAIL", "reason": "impatient"}),
        )
        .await;
    assert_eq!(early.status(), 409, "the worker may still finish it");
    for (body, needle) in [
        (
            json!({"status": "PENDING", "reason": "x"}),
            "COMPLETED or REFUND_FAIL",
        ),
        (json!({"status": "COMPLETED", "reason": "  "}), "reason"),
        (
            json!({"status": "COMPLETED", "reason": "x", "dryRun": true}),
            "dryRun",
        ),
    ] {
        let answer = admin.post(&format!("/v1/refunds/{r}/resolve"), &body).await;
        assert_eq!(answer.status(), 400, "{body}");
        let text = answer.text().await.unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    let missing = admin
        .post(
            "/v1/refunds/no-such-refund/resolve",
            &json!({"status": "COMPLETED", "reason": "x"}),
        )
        .await;
    assert_eq!(missing.status(), 404);
    assert_eq!(app.db_status(&r).await.as_deref(), Some("PENDING"));
    app.cleanup().await;
}

#[tokio::test]
async fn recheck_asks_the_provider_now_and_applies_its_answer() {
    let r = reference("recheck");
    let server = va_server(&r, "PENDING").await;
    // Polls far apart: only the recheck can ask again within the test.
    let mut app = spawn_against(
        &server,
        vec![
            ("POLL_INITIAL_MS", "600000".into()),
            ("POLL_MAX_MS", "600000".into()),
        ],
    )
    .await;
    app.start_worker();
    let admin = app.admin().await;
    app.publish(&va_command(&r, "10.00")).await;
    app.eventually("the provider accepted it", || async {
        sqlx::query_scalar::<_, String>("SELECT phase FROM refunds WHERE refund_reference = $1")
            .bind(&r)
            .fetch_optional(&app.pool)
            .await
            .unwrap()
            .as_deref()
            == Some("ACCEPTED")
    })
    .await;
    // The provider finishes it; nobody would ask for ten minutes.
    server.reset().await;
    mount_va(&server, &r, "COMPLETED").await;
    let answer = admin
        .post(
            &format!("/v1/refunds/{r}/recheck"),
            &json!({"reason": "customer says the money arrived"}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let view: Value = answer.json().await.unwrap();
    assert_eq!(view["refund"]["status"], "COMPLETED", "{view}");
    let causes: Vec<&str> = view["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["cause"].as_str())
        .collect();
    assert!(
        causes.contains(&"recheck requested by operator"),
        "{causes:?}"
    );
    let done = app.wait_final(&r).await;
    assert_eq!(done.status, RefundStatus::Completed);
    assert!(
        done.resolution.is_none(),
        "the provider decided, not an operator"
    );
    // Nothing left to ask.
    let again = admin
        .post(&format!("/v1/refunds/{r}/recheck"), &json!({}))
        .await;
    assert_eq!(again.status(), 409);
    let missing = admin
        .post("/v1/refunds/no-such-refund/recheck", &json!({}))
        .await;
    assert_eq!(missing.status(), 404);
    app.cleanup().await;
}

fn va_payment(txn: &str, amount: &str, succeeded: bool, id: &str) -> ProviderWebhook {
    ProviderWebhook {
        event_id: Some(id.into()),
        kind: WebhookKind::Payment {
            transaction_reference: txn.into(),
            amount: Some(amount.parse().unwrap()),
            currency: Some("NGN".into()),
            status: if succeeded { "SUCCESS" } else { "FAILED" }.into(),
            succeeded,
        },
    }
}

async fn store_command(app: &TestApp, command: &Value) {
    let bytes = serde_json::to_vec(command).unwrap();
    let outcome = intake::handle(&app.ctx, &bytes).await.unwrap();
    assert!(matches!(outcome, IntakeOutcome::Stored(_)), "{outcome:?}");
}

async fn guard_and_status(
    app: &TestApp,
    reference: &str,
) -> (Option<String>, String, Option<String>) {
    sqlx::query_as(
        "SELECT guard_source, status, failure_code FROM refunds WHERE refund_reference = $1",
    )
    .bind(reference)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn reordered_pay_in_notifications_never_hide_a_succeeded_pay_in() {
    let app = TestApp::spawn().await;
    let sink = app.ctx.sink.clone();
    let va = ProviderName::VaServices;
    let r = reference("ledger");
    let txn = format!("txn-{r}");
    // Success (100), then a late failure of a smaller amount, then a success of less:
    // the ledger keeps the succeeded 100.
    for (body, webhook) in [
        (&b"ok"[..], va_payment(&txn, "100.00", true, "pay-1")),
        (&b"late"[..], va_payment(&txn, "5.00", false, "pay-2")),
        (&b"less"[..], va_payment(&txn, "60.00", true, "pay-3")),
    ] {
        let applied = receive_webhook(&app.pool, va, body, 0, &webhook, &sink)
            .await
            .unwrap();
        assert_eq!(applied, Applied::PayIn);
    }
    let ledger: (String, bool) = sqlx::query_as(
        "SELECT amount::text, succeeded FROM pay_ins WHERE transaction_reference = $1",
    )
    .bind(&txn)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(ledger, ("100.00".into(), true));
    // The guard uses it: 80 fits (source "ledger"), 30 more does not.
    store_command(&app, &va_command(&r, "80.00")).await;
    assert_eq!(
        guard_and_status(&app, &r).await,
        (Some("ledger".into()), "PENDING".into(), None)
    );
    let mut second = va_command(&reference("ledger-2"), "30.00");
    second["transactionReference"] = json!(txn);
    let second_ref = second["refundReference"].as_str().unwrap().to_owned();
    store_command(&app, &second).await;
    let (_, status, code) = guard_and_status(&app, &second_ref).await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("REFUND_FAIL", Some("AMOUNT_EXCEEDS_REFUNDABLE"))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn the_guard_records_its_source_and_require_payment_amount_refuses_unguarded_refunds() {
    let app = TestApp::spawn().await;
    let with_amount = reference("g-command");
    let mut cmd = va_command(&with_amount, "10.00");
    cmd["paymentAmount"] = json!("50.00");
    store_command(&app, &cmd).await;
    let unguarded = reference("g-none");
    store_command(&app, &va_command(&unguarded, "10.00")).await;
    let bvnk = reference("g-provider");
    store_command(&app, &crate::provider_bvnk::bvnk_command(&bvnk, "10.00")).await;
    assert_eq!(
        guard_and_status(&app, &with_amount).await.0.as_deref(),
        Some("command")
    );
    assert_eq!(
        guard_and_status(&app, &unguarded).await.0.as_deref(),
        Some("none")
    );
    assert_eq!(
        guard_and_status(&app, &bvnk).await.0.as_deref(),
        Some("provider")
    );
    // `refunds show` says it.
    let view = refund_worker::store::refunds::show(&app.pool, &unguarded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.refund.guard_source.as_deref(), Some("none"));
    app.cleanup().await;

    let strict = TestApp::spawn_with(Options {
        env: vec![("REQUIRE_PAYMENT_AMOUNT", "true".into())],
        ..Options::default()
    })
    .await;
    let refused = reference("g-required");
    store_command(&strict, &va_command(&refused, "10.00")).await;
    let (source, status, code) = guard_and_status(&strict, &refused).await;
    assert_eq!(
        (source, status.as_str(), code.as_deref()),
        (None, "REFUND_FAIL", Some("INVALID_COMMAND"))
    );
    let message: String =
        sqlx::query_scalar("SELECT failure_message FROM refunds WHERE refund_reference = $1")
            .bind(&refused)
            .fetch_one(&strict.pool)
            .await
            .unwrap();
    assert!(message.contains("REQUIRE_PAYMENT_AMOUNT"), "{message}");
    // A provider that checks the refundable amount itself still guards it.
    let bvnk = reference("g-required-bvnk");
    store_command(&strict, &crate::provider_bvnk::bvnk_command(&bvnk, "10.00")).await;
    assert_eq!(
        guard_and_status(&strict, &bvnk).await,
        (Some("provider".into()), "PENDING".into(), None)
    );
    strict.cleanup().await;
}
