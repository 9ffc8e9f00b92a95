//! Reconciliation (`refund-worker reconcile`): VA Services' documented refund list (wiremock,
//! Spring-style pages as in the docs) and the other providers' status lookups (the sandbox)
//! against our database; every mismatch reported, exit 3 when there is one.

use crate::helpers::*;
use chrono::{DateTime, TimeDelta, Utc};
use refund_sandbox::{ForcedOutcome, OutcomeStatus, Provider};
use refund_worker::domain::ProviderName;
use refund_worker::pipeline::reconcile::{self, MismatchKind};
use serde_json::{json, Value};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Stores a refund of ours with `status` (final ones as the pipeline leaves them).
async fn stored(app: &TestApp, command: &Value, status: &str, created_at: DateTime<Utc>) {
    let (phase, next, failure) = match status {
        "PENDING" => ("ACCEPTED", Some(Utc::now() + TimeDelta::hours(1)), None),
        "COMPLETED" => ("FINAL", None, None),
        _ => ("FINAL", None, Some("PROVIDER_REJECTED")),
    };
    sqlx::query(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, next_attempt_at, failure_code, failure_message, command, command_hash,
             created_at)
         VALUES ($1, $2, $3, $4::numeric, $5, $6, $7, $8, $9, $9, $10, 'h', $11)",
    )
    .bind(command["refundReference"].as_str())
    .bind(command["provider"].as_str())
    .bind(command["transactionReference"].as_str())
    .bind(command["amount"].as_str())
    .bind(command["currency"].as_str())
    .bind(status)
    .bind(phase)
    .bind(next)
    .bind(failure)
    .bind(command)
    .bind(created_at)
    .execute(&app.pool)
    .await
    .expect("insert refund");
}

fn va_cmd(reference: &str, amount: &str) -> Value {
    json!({
        "refundReference": reference, "provider": "va_services",
        "transactionReference": format!("tx-{reference}"), "amount": amount, "currency": "NGN",
        "reason": "Order cancelled!",
        "destination": {"accountNumber": "0040088210", "bankCode": "000012"}
    })
}

/// One entry of VA's list, as the docs show it.
fn listed(reference: &str, amount: &str, status: &str) -> Value {
    json!({
        "transactionReference": format!("tx-{reference}"),
        "refundReference": reference,
        "refundAmount": serde_json::from_str::<Value>(amount).unwrap_or(Value::Null),
        "refundReason": "Order cancelled!",
        "customerNote": "An optional note",
        "refundType": "PARTIAL_REFUND",
        "refundStatus": status,
        "refundStrategy": "MERCHANT_WALLET",
        "comment": "Transaction refund is in progress.",
        "completedOn": "25/01/2024 01:39:13 AM",
        "createdOn": "25/01/2024 01:35:27 AM"
    })
}

/// A page of `GET /va/refunds` shaped like the docs' example (its `totalPages: 0`, too).
fn page(contents: Vec<Value>, number: u32, last: bool) -> Value {
    json!({
        "requestSuccessful": true, "responseMessage": "success", "responseCode": "0",
        "responseBody": {
            "contents": contents,
            "pageable": {"sort": {"sorted": false, "unsorted": false, "empty": false},
                         "pageSize": 0, "pageNumber": 0, "offset": 0, "paged": false, "unpaged": false},
            "sort": {"sorted": false, "unsorted": false, "empty": false},
            "last": last, "first": number == 0, "empty": false,
            "totalElements": 1, "totalPages": 0, "noOfElements": 100, "size": 1000,
            "number": number
        }
    })
}

struct Va {
    app: TestApp,
    mock: MockServer,
    refs: std::collections::HashMap<&'static str, String>,
}

async fn va_setup() -> Va {
    let mock = MockServer::start().await;
    let app = TestApp::spawn_with(Options {
        env: vec![("PROVIDER_VA_SERVICES_BASE_URL", mock.uri())],
        ..Options::default()
    })
    .await;
    let refs: std::collections::HashMap<&'static str, String> = [
        "same",
        "failed",
        "succeeded",
        "amount",
        "theirs",
        "absent",
        "pending",
        "ourfail",
    ]
    .into_iter()
    .map(|k| (k, reference(&format!("rc-{k}"))))
    .collect();
    let t = Utc::now() - TimeDelta::minutes(10);
    for (key, status, amount) in [
        ("same", "COMPLETED", "10.00"),
        ("failed", "COMPLETED", "10.00"),
        ("succeeded", "REFUND_FAIL", "10.00"),
        ("amount", "COMPLETED", "10.00"),
        ("absent", "COMPLETED", "7.00"),
        ("pending", "PENDING", "10.00"),
        ("ourfail", "REFUND_FAIL", "10.00"),
    ] {
        stored(&app, &va_cmd(&refs[key], amount), status, t).await;
    }
    // Two pages; the first says `totalPages: 0` as the docs' example does, so only `last`
    // ends the reading.
    let first = vec![
        listed(&refs["same"], "10", "COMPLETED"),
        listed(&refs["failed"], "10.00", "FAILED"),
        listed(&refs["succeeded"], "10.00", "completed"),
    ];
    let second = vec![
        listed(&refs["amount"], "12.50", "COMPLETED"),
        listed(&refs["theirs"], "3.00", "COMPLETED"),
        listed(&refs["pending"], "10.00", "PENDING"),
    ];
    for (n, contents, last) in [(0, first, false), (1, second, true)] {
        Mock::given(method("GET"))
            .and(path("/va/refunds"))
            .and(query_param("page", n.to_string()))
            .respond_with(ResponseTemplate::new(200).set_body_json(page(contents, n, last)))
            .mount(&mock)
            .await;
    }
    Va { app, mock, refs }
}

#[tokio::test]
async fn va_services_list_against_ours_reports_every_kind_of_mismatch() {
    let va = va_setup().await;
    let report = reconcile::run(&va.app.ctx, ProviderName::VaServices, None)
        .await
        .expect("reconcile");
    assert_eq!((report.method, report.listed), ("list", Some(6)));
    let mut found: Vec<(MismatchKind, String)> = report
        .mismatches
        .iter()
        .map(|m| (m.kind, m.refund_reference.clone()))
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected = vec![
        (MismatchKind::StatusDiffers, va.refs["failed"].clone()),
        (MismatchKind::StatusDiffers, va.refs["succeeded"].clone()),
        (MismatchKind::AmountDiffers, va.refs["amount"].clone()),
        (MismatchKind::MissingHere, va.refs["theirs"].clone()),
        (MismatchKind::MissingAtProvider, va.refs["absent"].clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(found, expected, "{:#?}", report.mismatches);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let amount = report
        .mismatches
        .iter()
        .find(|m| m.kind == MismatchKind::AmountDiffers)
        .expect("amount mismatch");
    assert_eq!(
        amount.ours.as_ref().and_then(|s| s.amount.as_deref()),
        Some("10.00")
    );
    assert_eq!(amount.theirs.amount.as_deref(), Some("12.50"));

    // A window after VA's refunds were created (and after ours): nothing to compare.
    let later = reconcile::run(
        &va.app.ctx,
        ProviderName::VaServices,
        Some(Utc::now() + TimeDelta::minutes(1)),
    )
    .await
    .expect("reconcile");
    assert!(later.mismatches.is_empty(), "{:?}", later.mismatches);
    va.app.cleanup().await;
}

#[tokio::test]
async fn the_reconcile_command_exits_3_on_mismatches_0_when_clean_and_2_on_bad_input() {
    let va = va_setup().await;
    let run = |args: Vec<&'static str>| {
        let db = va.app.ctx.config.database_url.clone();
        let mock = va.mock.uri();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
                .arg("reconcile")
                .args(args)
                .env("DATABASE_URL", db)
                .env("PROVIDER_VA_SERVICES_BASE_URL", mock)
                .env("PROVIDER_VA_SERVICES_API_KEY", "k")
                .output()
                .await
                .expect("refund-worker runs")
        }
    };
    let out = run(vec!["--provider", "va_services", "--json"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report");
    assert_eq!(report["mismatches"].as_array().map(Vec::len), Some(5));
    let out = run(vec!["--provider", "va_services"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISMATCH amountDiffers"));
    let out = run(vec!["--provider", "va_services", "--since", "2999-01-01"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = run(vec!["--provider", "paypal"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = run(vec!["--provider", "bvnk"]).await;
    assert_eq!(out.status.code(), Some(2), "not configured: {out:?}");
    va.app.cleanup().await;
}

/// Binance Pay documents no list: each refund is looked up by status, against the sandbox.
#[tokio::test]
async fn other_providers_are_reconciled_by_status_lookups() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let (good, forced, never) = (
        reference("rc-bp-good"),
        reference("rc-bp-forced"),
        reference("rc-bp-never"),
    );
    for (i, r) in [&good, &forced].into_iter().enumerate() {
        app.publish(&json!({
            "refundReference": r, "provider": "binance_pay",
            "transactionReference": format!("{}", 483_729_303_729_303_u64 + i as u64),
            "amount": "1.00", "currency": "USDT", "reason": "Order cancelled!"
        }))
        .await;
        app.wait_for(r, refund_worker::domain::RefundStatus::Completed)
            .await;
    }
    // After ours is final, the provider changes its mind about one.
    app.sandbox.set_outcome(
        Provider::BinancePay,
        &forced,
        ForcedOutcome {
            status: OutcomeStatus::Failed,
        },
    );
    // One we say completed that the provider never saw.
    stored(
        &app,
        &json!({
            "refundReference": never, "provider": "binance_pay",
            "transactionReference": "583729303729303", "amount": "2.00", "currency": "USDT",
            "reason": "Order cancelled!"
        }),
        "COMPLETED",
        Utc::now(),
    )
    .await;
    let report = reconcile::run(&app.ctx, ProviderName::BinancePay, None)
        .await
        .expect("reconcile");
    assert_eq!((report.method, report.compared), ("status", 3));
    let mut found: Vec<(MismatchKind, String)> = report
        .mismatches
        .iter()
        .map(|m| (m.kind, m.refund_reference.clone()))
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected = vec![
        (MismatchKind::StatusDiffers, forced.clone()),
        (MismatchKind::MissingAtProvider, never.clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(found, expected, "{:#?}", report.mismatches);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    app.cleanup().await;
}

/// BPN answers per order: a second command for an order, refused before any refund call, is
/// not compared with the order's state (which is the first refund's), so no false mismatch.
#[tokio::test]
async fn bpn_refunds_it_never_accepted_are_not_compared_with_the_orders_state() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let (first, second) = (reference("rc-bpn-1"), reference("rc-bpn-2"));
    let order = format!("VA-{first}");
    app.sandbox.add_payment(refund_sandbox::Payment {
        provider: Provider::Bpn,
        transaction_reference: order.clone(),
        amount: "25.17".parse().expect("amount"),
        currency: "USD".into(),
    });
    for r in [&first, &second] {
        app.publish(&json!({
            "refundReference": r, "provider": "bpn", "transactionReference": order,
            "amount": "25.17", "currency": "USD", "reason": "Order cancelled!"
        }))
        .await;
        app.wait_final(r).await;
    }
    assert_eq!(app.db_status(&second).await.as_deref(), Some("REFUND_FAIL"));
    let report = reconcile::run(&app.ctx, ProviderName::Bpn, None)
        .await
        .expect("reconcile");
    assert_eq!((report.compared, report.not_compared), (1, 1));
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    // The one compared is checked for real: BPN now says its refund failed.
    app.sandbox.set_outcome(
        Provider::Bpn,
        &order,
        ForcedOutcome {
            status: OutcomeStatus::Failed,
        },
    );
    let report = reconcile::run(&app.ctx, ProviderName::Bpn, None)
        .await
        .expect("reconcile");
    let found: Vec<_> = report
        .mismatches
        .iter()
        .map(|m| (m.kind, m.refund_reference.clone()))
        .collect();
    assert_eq!(found, [(MismatchKind::StatusDiffers, first.clone())]);
    app.cleanup().await;
}
