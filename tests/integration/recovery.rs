//! Recovery after an outage (`refund-worker recover`, `POST /v1/recover`): pending refunds of
//! a window rechecked at once, and the providers that document a webhook re-send asked to
//! re-send, against providers built from their docs (wiremock) and against the sandbox.

use crate::helpers::*;
use chrono::{DateTime, TimeDelta, Utc};
use refund_worker::domain::ProviderName;
use refund_worker::pipeline::recover::{self, Progress, Window};
use refund_worker::providers::resend::WebhookResend;
use serde_json::{json, Value};
use std::time::Duration;
use wiremock::matchers::{body_json, header_exists, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Stores an accepted `PENDING` refund created at `created_at`, not due for an hour (so only
/// a recheck asks about it).
async fn accepted_refund(app: &TestApp, command: &Value, created_at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, provider_reference, next_attempt_at, command, command_hash, created_at)
         VALUES ($1, $2, $3, $4::numeric, $5, 'PENDING', 'ACCEPTED', $3,
             now() + interval '1 hour', $6, 'h', $7)",
    )
    .bind(command["refundReference"].as_str())
    .bind(command["provider"].as_str())
    .bind(command["transactionReference"].as_str())
    .bind(command["amount"].as_str())
    .bind(command["currency"].as_str())
    .bind(command)
    .bind(created_at)
    .execute(&app.pool)
    .await
    .expect("insert refund");
}

fn va_command(reference: &str, transaction: &str) -> Value {
    json!({
        "refundReference": reference, "provider": "va_services",
        "transactionReference": transaction, "amount": "10.00", "currency": "NGN",
        "reason": "Order cancelled!",
        "destination": {"accountNumber": "0040088210", "bankCode": "000012"}
    })
}

fn bpn_command(reference: &str, order: &str) -> Value {
    json!({
        "refundReference": reference, "provider": "bpn", "transactionReference": order,
        "amount": "25.17", "currency": "USD", "reason": "Order cancelled!"
    })
}

/// VA's documented envelope around a refund in `status`.
fn va_status(command: &Value, status: &str) -> Value {
    json!({
        "requestSuccessful": true, "responseMessage": "success", "responseCode": "0",
        "responseBody": {
            "transactionReference": command["transactionReference"],
            "refundReference": command["refundReference"],
            "refundAmount": 10, "refundReason": "Order cancelled!",
            "refundType": "PARTIAL_REFUND", "refundStatus": status,
            "refundStrategy": "MERCHANT_WALLET", "comment": "",
            "completedOn": null, "createdOn": "25/01/2024 01:35:27 AM"
        }
    })
}

/// BPN's envelope around an order.
fn bpn_order(order: &str, refund_status: &str) -> Value {
    json!({
        "status": 0, "message": "success", "traceId": "t-1",
        "data": {"orderId": order, "amount": 25.17, "currency": "USD", "status": "SUCCESS",
                 "refundStatus": refund_status}
    })
}

async fn status_of(app: &TestApp, reference: &str) -> String {
    app.db_status(reference).await.unwrap_or_default()
}

async fn calls(app: &TestApp, reference: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM provider_attempts WHERE refund_reference = $1")
        .bind(reference)
        .fetch_one(&app.pool)
        .await
        .expect("attempts")
}

struct Setup {
    app: TestApp,
    mock: MockServer,
    va_done: String,
    va_open: String,
    bpn_done: String,
    va_old: String,
    busy: String,
    window: Window,
}

/// VA Services and BPN on one wiremock server (their paths do not overlap), four refunds in
/// the window (VA completed at VA, VA still pending, BPN refunded, one a dispatcher holds) and
/// one before it.
async fn setup() -> Setup {
    let mock = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_VA_SERVICES_BASE_URL", mock.uri()),
            ("PROVIDER_VA_SERVICES_DETAILS_PATH", "off".into()),
            ("PROVIDER_BPN_BASE_URL", mock.uri()),
            ("PROVIDER_BINANCE_PAY_BASE_URL", String::new()),
            ("PROVIDER_BVNK_BASE_URL", String::new()),
        ],
        ..Options::default()
    })
    .await;
    let now = Utc::now();
    let (va_done, va_open, bpn_done, va_old, busy) = (
        reference("rec-va-done"),
        reference("rec-va-open"),
        reference("rec-bpn-done"),
        reference("rec-va-old"),
        reference("rec-busy"),
    );
    let in_window = now - TimeDelta::minutes(30);
    let done_cmd = va_command(&va_done, "TX-1");
    let open_cmd = va_command(&va_open, "TX-2");
    let busy_cmd = va_command(&busy, "TX-2");
    let bpn_cmd = bpn_command(&bpn_done, "ORDER-1");
    accepted_refund(&app, &done_cmd, in_window).await;
    accepted_refund(&app, &open_cmd, in_window).await;
    accepted_refund(&app, &busy_cmd, in_window).await;
    accepted_refund(&app, &bpn_cmd, in_window).await;
    accepted_refund(
        &app,
        &va_command(&va_old, "TX-OLD"),
        now - TimeDelta::hours(3),
    )
    .await;
    // A dispatcher holds this one (claimed, lease running).
    sqlx::query("UPDATE refunds SET claim_token = gen_random_uuid() WHERE refund_reference = $1")
        .bind(&busy)
        .execute(&app.pool)
        .await
        .expect("claim");

    for (cmd, status) in [(&done_cmd, "COMPLETED"), (&open_cmd, "PENDING")] {
        let r = cmd["refundReference"].as_str().unwrap_or_default();
        Mock::given(method("GET"))
            .and(path(format!("/va/refunds/{r}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(va_status(cmd, status)))
            .mount(&mock)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v1/virtual-account/order/detail"))
        .and(query_param("orderId", "ORDER-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(bpn_order("ORDER-1", "REFUNDED")))
        .mount(&mock)
        .await;
    let window = Window::parse(
        &(now - TimeDelta::hours(1)).to_rfc3339(),
        None,
        None,
        now + TimeDelta::seconds(1),
    )
    .expect("window");
    Setup {
        app,
        mock,
        va_done,
        va_open,
        bpn_done,
        va_old,
        busy,
        window,
    }
}

fn requests(summary: &recover::Summary, provider: ProviderName) -> Vec<(String, Option<bool>)> {
    let p = summary
        .webhook_resends
        .iter()
        .find(|p| p.provider == provider)
        .expect("provider in the summary");
    match &p.resend {
        WebhookResend::Requests { requests } => {
            requests.iter().map(|r| (r.request.clone(), r.ok)).collect()
        }
        other => panic!("{provider}: {other:?}"),
    }
}

#[tokio::test]
async fn recovery_settles_the_windows_pending_refunds_and_asks_bpn_and_va_to_resend() {
    let s = setup().await;
    // "Send Notification": a POST with a transactionReference, once per payment of the window
    // and recovery (the test recovers twice; the inbox deduplicates what is sent again).
    for tx in ["TX-1", "TX-2"] {
        Mock::given(method("POST"))
            .and(path("/va/notifications/send"))
            .and(body_json(json!({"transactionReference": tx})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "requestSuccessful": true, "responseMessage": "success", "responseCode": "0",
                "responseBody": null
            })))
            .expect(2)
            .mount(&s.mock)
            .await;
    }
    // "resend fail webhook", signed like every BPN call.
    Mock::given(method("POST"))
        .and(path("/v1/webhook/resend"))
        .and(header_exists("API-SIGNATURE"))
        .and(header_exists("API-TIMESTAMP"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"status": 0, "message": "success", "traceId": "t-9"})),
        )
        .expect(2)
        .mount(&s.mock)
        .await;

    let progress = Progress::default();
    let summary = recover::run(&s.app.ctx, &s.window, false, &progress)
        .await
        .expect("recovery");
    let c = summary.counts;
    assert_eq!(
        (
            c.total,
            c.checked,
            c.changed,
            c.still_pending,
            c.busy,
            c.errors
        ),
        (4, 4, 2, 2, 1, 0),
        "{summary:?}"
    );
    assert_eq!(status_of(&s.app, &s.va_done).await, "COMPLETED");
    assert_eq!(status_of(&s.app, &s.bpn_done).await, "COMPLETED");
    assert_eq!(status_of(&s.app, &s.va_open).await, "PENDING");
    // Outside the window, and held by a dispatcher: not asked.
    assert_eq!(status_of(&s.app, &s.va_old).await, "PENDING");
    assert_eq!(calls(&s.app, &s.va_old).await, 0);
    assert_eq!(calls(&s.app, &s.busy).await, 0);
    // The recheck is in the refund's history, with recovery's reason.
    let view = refund_worker::store::refunds::show(&s.app.pool, &s.va_done)
        .await
        .expect("show")
        .expect("refund");
    assert!(
        serde_json::to_string(&view.transitions)
            .unwrap_or_default()
            .contains(recover::RECHECK_REASON),
        "{:?}",
        view.transitions
    );

    let bpn = requests(&summary, ProviderName::Bpn);
    assert_eq!(bpn.len(), 1);
    assert_eq!(bpn[0].1, Some(true));
    let va = requests(&summary, ProviderName::VaServices);
    assert_eq!(va.len(), 2, "one per payment: {va:?}");
    assert!(va.iter().all(|(_, ok)| *ok == Some(true)));
    assert_eq!(summary.webhook_requests, 3);
    // BPN's resend body is the window in ms, and its signature is over exactly those bytes.
    let received = s.mock.received_requests().await.unwrap_or_default();
    let resend = received
        .iter()
        .find(|r| r.url.path() == "/v1/webhook/resend")
        .expect("resend request");
    let body: Value = serde_json::from_slice(&resend.body).expect("json body");
    assert_eq!(
        body,
        json!({"startTime": s.window.since.timestamp_millis(), "endTime": s.window.until.timestamp_millis()})
    );
    let header = |name: &str| {
        resend
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let expected = refund_worker::providers::bpn::signature(
        b"sandbox-bpn-secret",
        refund_worker::providers::bpn::SignedContent::Body(&resend.body),
        &header("API-TIMESTAMP"),
    );
    assert_eq!(header("API-SIGNATURE"), expected);
    assert_eq!(header("API-KEY"), "sandbox-bpn-key");

    // Again: the final ones are not asked again, nothing breaks.
    let again = recover::run(&s.app.ctx, &s.window, false, &Progress::default())
        .await
        .expect("second recovery");
    assert_eq!((again.counts.total, again.counts.changed), (2, 0));
    s.app.cleanup().await;
}

#[tokio::test]
async fn a_dry_run_lists_what_it_would_do_and_calls_no_provider() {
    let s = setup().await;
    let summary = recover::run(&s.app.ctx, &s.window, true, &Progress::default())
        .await
        .expect("dry run");
    let mut listed: Vec<&str> = summary
        .would_check
        .iter()
        .map(|c| c.refund_reference.as_str())
        .collect();
    listed.sort();
    let mut expected = vec![
        s.va_done.as_str(),
        s.va_open.as_str(),
        s.bpn_done.as_str(),
        s.busy.as_str(),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(summary.counts.checked, 0);
    assert_eq!(summary.webhook_requests, 3);
    assert!(requests(&summary, ProviderName::Bpn)
        .iter()
        .all(|(_, ok)| ok.is_none()));
    assert_eq!(
        s.mock.received_requests().await.unwrap_or_default().len(),
        0,
        "a dry run calls no provider"
    );
    for r in [&s.va_done, &s.bpn_done] {
        assert_eq!(status_of(&s.app, r).await, "PENDING");
        assert_eq!(calls(&s.app, r).await, 0);
    }
    s.app.cleanup().await;
}

#[tokio::test]
async fn a_refused_resend_is_reported_and_other_providers_say_not_documented() {
    let mock = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_BPN_BASE_URL", mock.uri()),
            (
                "PROVIDER_BPN_RESEND_WEBHOOK_PATH",
                "/v2/notify/retry".into(),
            ),
            (
                "PROVIDER_BPN_RESEND_WEBHOOK_BODY",
                r#"{"from":"{since}","to":"{until}","type":"REFUND"}"#.into(),
            ),
            ("PROVIDER_VA_SERVICES_SEND_NOTIFICATION_PATH", "off".into()),
        ],
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/v2/notify/retry"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"status": 10002, "message": "invalid signature", "traceId": "t-2"}),
        ))
        .expect(1)
        .mount(&mock)
        .await;
    let now = Utc::now();
    let window = Window::parse("2026-01-01", None, None, now).expect("window");
    let summary = recover::run(&app.ctx, &window, false, &Progress::default())
        .await
        .expect("recovery");
    let bpn = requests(&summary, ProviderName::Bpn);
    assert_eq!(bpn.len(), 1);
    assert_eq!(bpn[0].1, Some(false));
    assert!(bpn[0].0.contains(r#""type":"REFUND""#), "{bpn:?}");
    let received = mock.received_requests().await.unwrap_or_default();
    let body: Value = serde_json::from_slice(&received[0].body).expect("json");
    assert_eq!(body["from"], json!(window.since.to_rfc3339()));
    let kind = |p: ProviderName| {
        summary
            .webhook_resends
            .iter()
            .find(|r| r.provider == p)
            .map(|r| r.resend.clone())
    };
    assert_eq!(
        kind(ProviderName::VaServices),
        Some(WebhookResend::Disabled)
    );
    assert_eq!(
        kind(ProviderName::BinancePay),
        Some(WebhookResend::NotDocumented)
    );
    assert_eq!(kind(ProviderName::Bvnk), Some(WebhookResend::NotDocumented));
    app.cleanup().await;
}

/// Against the sandbox: refunds accepted while no poll ran (no worker) are final after one
/// recovery, without the dispatcher's schedule.
#[tokio::test]
async fn recovery_brings_refunds_accepted_during_an_outage_to_final() {
    let app = TestApp::spawn().await;
    let refs: Vec<String> = (0..3).map(|i| reference(&format!("rec-sb-{i}"))).collect();
    for (i, r) in refs.iter().enumerate() {
        let cmd = json!({
            "refundReference": r, "provider": "binance_pay",
            "transactionReference": format!("{}", 383_729_303_729_303_u64 + i as u64),
            "amount": "1.00", "currency": "USDT", "reason": "Order cancelled!"
        });
        refund_worker::pipeline::intake::handle(&app.ctx, cmd.to_string().as_bytes())
            .await
            .expect("intake");
    }
    // Submitted once (accepted), then nothing polls: the worker is "down".
    refund_worker::pipeline::dispatch::step(&app.ctx)
        .await
        .expect("step");
    sqlx::query("UPDATE refunds SET next_attempt_at = now() + interval '1 hour'")
        .execute(&app.pool)
        .await
        .expect("push polls out");
    tokio::time::sleep(Duration::from_millis(300)).await; // the sandbox completes them
    for r in &refs {
        assert_eq!(status_of(&app, r).await, "PENDING");
    }
    let window = Window::parse(
        &(Utc::now() - TimeDelta::minutes(5)).to_rfc3339(),
        None,
        Some("binance_pay"),
        Utc::now(),
    )
    .expect("window");
    let summary = recover::run(&app.ctx, &window, false, &Progress::default())
        .await
        .expect("recovery");
    assert_eq!(
        (summary.counts.checked, summary.counts.changed),
        (3, 3),
        "{summary:?}"
    );
    for r in &refs {
        assert_eq!(status_of(&app, r).await, "COMPLETED");
    }
    assert_eq!(
        summary.webhook_resends.len(),
        1,
        "only the provider asked for"
    );
    app.cleanup().await;
}

/// A pending refund of a provider not configured in this process is reported, never failed
/// (the dispatcher's step would fail it as never sent, though the provider may have it).
#[tokio::test]
async fn a_refund_of_a_provider_not_configured_here_is_an_error_not_a_failure() {
    let mock = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![
            ("PROVIDER_VA_SERVICES_BASE_URL", mock.uri()),
            ("PROVIDER_BPN_BASE_URL", String::new()),
        ],
        ..Options::default()
    })
    .await;
    let r = reference("rec-unconfigured");
    accepted_refund(&app, &bpn_command(&r, "ORDER-9"), Utc::now()).await;
    let window = Window::parse(
        &(Utc::now() - TimeDelta::minutes(5)).to_rfc3339(),
        None,
        None,
        Utc::now() + TimeDelta::seconds(1),
    )
    .expect("window");
    let summary = recover::run(&app.ctx, &window, false, &Progress::default())
        .await
        .expect("recovery");
    assert_eq!((summary.counts.errors, summary.counts.changed), (1, 0));
    assert!(summary.error_messages[0].contains("not configured"));
    assert_eq!(status_of(&app, &r).await, "PENDING");
    app.cleanup().await;
}

#[tokio::test]
async fn the_admin_api_runs_a_recovery_in_the_background_and_reports_it() {
    let s = setup().await;
    let admin = s.app.admin().await;
    // Unknown fields, bad times and unknown providers are refused.
    for bad in [
        json!({"since": "2026-01-01", "dryrun": true}),
        json!({"since": "yesterday"}),
        json!({"since": "2026-01-01", "provider": "paypal"}),
    ] {
        let response = admin.post("/v1/recover", &bad).await;
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }
    let response = admin
        .post(
            "/v1/recover",
            &json!({"since": s.window.since.to_rfc3339(), "until": s.window.until.to_rfc3339(), "dryRun": true}),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let job: Value = response.json().await.expect("json");
    assert_eq!(
        location,
        format!("/v1/recover/{}", job["id"].as_str().unwrap_or(""))
    );
    let mut done = Value::Null;
    for _ in 0..100 {
        let view: Value = admin.get(&location).await.json().await.expect("json");
        if view["status"] != "running" {
            done = view;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["dryRun"], true);
    assert_eq!(done["progress"]["total"], 4);
    assert_eq!(
        done["summary"]["wouldCheck"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(done["summary"]["webhookRequests"], 3);
    let missing = admin
        .get(&format!("/v1/recover/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(
        admin.get("/v1/recover/not-a-uuid").await.status().as_u16(),
        404
    );
    s.app.cleanup().await;
}

#[tokio::test]
async fn the_recover_command_prints_json_and_exits_2_on_a_bad_window() {
    let s = setup().await;
    let run = |args: Vec<String>| {
        let mock = s.mock.uri();
        let db = s.app.ctx.config.database_url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
                .arg("recover")
                .args(args)
                .env("DATABASE_URL", db)
                .env("PROVIDER_VA_SERVICES_BASE_URL", &mock)
                .env("PROVIDER_VA_SERVICES_API_KEY", "k")
                .env("PROVIDER_BPN_BASE_URL", &mock)
                .env("PROVIDER_BPN_API_KEY", "sandbox-bpn-key")
                .env("PROVIDER_BPN_API_SECRET", "sandbox-bpn-secret")
                .output()
                .await
                .expect("refund-worker runs")
        }
    };
    let out = run(vec![
        "--since".into(),
        s.window.since.to_rfc3339(),
        "--dry-run".into(),
        "--json".into(),
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON summary");
    assert_eq!(summary["dryRun"], true);
    assert_eq!(summary["wouldCheck"].as_array().map(Vec::len), Some(4));
    assert_eq!(summary["webhookRequests"], 3);
    assert_eq!(
        s.mock.received_requests().await.unwrap_or_default().len(),
        0
    );

    let out = run(vec!["--since".into(), "last tuesday".into()]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("since"));
    s.app.cleanup().await;
}

/// Against the sandbox (the demo's and `docker compose`'s provider): BPN's "resend fail
/// webhook" makes it notify the window's refunds again (applied as repeats: nothing changes),
/// VA's "Send Notification" is acknowledged, and recovery exits clean.
#[tokio::test]
async fn against_the_sandbox_bpn_notifies_again_and_va_acknowledges() {
    let mut app = TestApp::spawn_with(Options {
        ingress: true,
        ..Options::default()
    })
    .await;
    app.start_worker();
    let since = Utc::now() - TimeDelta::seconds(5);
    let (bpn, va) = (reference("rec-sb-bpn"), reference("rec-sb-va"));
    let order = format!("VA-{bpn}");
    app.sandbox.add_payment(refund_sandbox::Payment {
        provider: refund_sandbox::Provider::Bpn,
        transaction_reference: order.clone(),
        amount: "25.17".parse().expect("amount"),
        currency: "USD".into(),
    });
    app.publish(&bpn_command(&bpn, &order)).await;
    app.publish(&va_command(&va, "TX-SB-1")).await;
    app.wait_for(&bpn, refund_worker::domain::RefundStatus::Completed)
        .await;
    app.wait_for(&va, refund_worker::domain::RefundStatus::Completed)
        .await;
    // BPN's refund notification, after the two pay-in ones (BPN's order, told above, and
    // VA's payment, first seen in its refund call).
    app.eventually("BPN's notification delivered", || async {
        app.sandbox.ledger().webhooks.delivered >= 3
    })
    .await;
    let delivered = app.sandbox.ledger().webhooks.delivered;
    let window = Window::parse(&since.to_rfc3339(), None, None, Utc::now()).expect("window");
    let summary = recover::run(&app.ctx, &window, false, &Progress::default())
        .await
        .expect("recovery");
    assert_eq!(requests(&summary, ProviderName::Bpn).len(), 1);
    assert_eq!(requests(&summary, ProviderName::Bpn)[0].1, Some(true));
    assert_eq!(
        requests(&summary, ProviderName::VaServices),
        [(
            r#"POST /va/notifications/send {"transactionReference":"TX-SB-1"}"#.to_owned(),
            Some(true)
        )]
    );
    assert_eq!(app.sandbox.ledger().resend_calls, 2);
    app.eventually("BPN notified the refund again", || async {
        // BPN's refund again, and VA's pay-in (its "Send Notification").
        app.sandbox.ledger().webhooks.delivered >= delivered + 2
    })
    .await;
    // A repeat of the final status changes nothing: still one final event.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.db_status(&bpn).await.as_deref(), Some("COMPLETED"));
    let finals = app
        .events_for(&bpn)
        .iter()
        .filter(|e| e.status.is_final())
        .count();
    assert_eq!(finals, 1);
    app.cleanup().await;
}
