//! The dispatcher: batched recording of step outcomes, one step at a time, and continuous
//! dispatch of many refunds.

use crate::helpers::*;
use chrono::Utc;
use refund_worker::domain::{FailureCode, FailureReason, Fee, Phase, RefundStatus};
use refund_worker::pipeline::dispatch::{self, DispatchOutcome};
use refund_worker::store::{self, CallRecord, ClaimedRefund, StepRecord, StoreUpdate};
use std::collections::HashMap;
use std::time::Duration;

/// Stores a due `PENDING` refund directly (no intake, no events), as intake leaves it.
async fn due_refund(app: &TestApp, reference: &str) {
    sqlx::query(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, next_attempt_at, command, command_hash)
         VALUES ($1, 'va_services', $2, 10.00, 'NGN', 'PENDING', 'NOT_SUBMITTED', now(), $3, 'h')",
    )
    .bind(reference)
    .bind(format!("txn-{reference}"))
    .bind(va_command(reference, "10.00"))
    .execute(&app.pool)
    .await
    .expect("insert refund");
}

fn call(call: &'static str, outcome: &str) -> CallRecord {
    CallRecord {
        call,
        outcome: outcome.into(),
        detail: Some(format!("{call} said {outcome}")),
        started_at: Utc::now(),
        latency: Duration::from_millis(12),
    }
}

/// (status, phase, attempts, failures, polls, provider_reference, has a claim token)
type RowState = (String, String, i32, i32, i32, Option<String>, bool);

async fn row_state(app: &TestApp, reference: &str) -> RowState {
    sqlx::query_as(
        "SELECT status, phase, attempts, failures, polls, provider_reference,
             claim_token IS NOT NULL
         FROM refunds WHERE refund_reference = $1",
    )
    .bind(reference)
    .fetch_one(&app.pool)
    .await
    .expect("refund row")
}

async fn count(app: &TestApp, table: &str, reference: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE refund_reference = $1"
    ))
    .bind(reference)
    .fetch_one(&app.pool)
    .await
    .expect("count")
}

#[tokio::test]
async fn record_steps_records_a_batch_in_one_go_and_ignores_a_lost_claim() {
    let app = TestApp::spawn().await;
    // Input order differs from reference order (the order rows are locked in): the events
    // must still come out in input order.
    let done = reference("zz-done");
    let failed = reference("aa-failed");
    let later = reference("mm-later");
    let lost = reference("bb-lost");
    for r in [&done, &failed, &later, &lost] {
        due_refund(&app, r).await;
    }
    let claimed = store::refunds::claim_due(&app.pool, 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    let by_ref: HashMap<&str, &ClaimedRefund> = claimed
        .iter()
        .map(|c| (c.row.refund_reference.as_str(), c))
        .collect();
    // Another worker took this one over after our lease: we hold a stale token.
    let mut stale = by_ref[lost.as_str()].clone();
    stale.token = uuid::Uuid::new_v4();
    let lost_before = row_state(&app, &lost).await;

    let completed = StoreUpdate::Finish {
        status: RefundStatus::Completed,
        failure: None,
        provider_reference: Some("prov-1".into()),
        provider_status: Some("SUCCESS".into()),
        fee: Some(Fee {
            amount: "0.25".parse().unwrap(),
            currency: "NGN".into(),
        }),
    };
    let refund_fail = StoreUpdate::Finish {
        status: RefundStatus::RefundFail,
        failure: Some(FailureReason::new(
            FailureCode::ProviderRejected,
            "responseCode 99",
        )),
        provider_reference: None,
        provider_status: None,
        fee: None,
    };
    let reschedule = StoreUpdate::Reschedule {
        phase: Phase::Accepted,
        delay: Duration::from_secs(600),
        failed: false,
        provider_reference: Some("prov-3".into()),
        provider_status: Some("PENDING".into()),
        fee: None,
    };
    let done_calls = [call("status", "not_found"), call("submit", "succeeded")];
    let failed_calls = [call("submit", "rejected")];
    let later_calls = [call("submit", "accepted"), call("status", "pending")];
    let lost_calls = [call("status", "succeeded")];
    let steps = [
        StepRecord {
            claimed: by_ref[done.as_str()],
            extra_submits: 1,
            calls: &done_calls,
            update: &completed,
        },
        StepRecord {
            claimed: by_ref[failed.as_str()],
            extra_submits: 0,
            calls: &failed_calls,
            update: &refund_fail,
        },
        StepRecord {
            claimed: by_ref[later.as_str()],
            extra_submits: 0,
            calls: &later_calls,
            update: &reschedule,
        },
        StepRecord {
            claimed: &stale,
            extra_submits: 0,
            calls: &lost_calls,
            update: &completed,
        },
    ];
    let events = dispatch::record_steps(&app.pool, &steps, &app.ctx.sink)
        .await
        .expect("record_steps");

    assert_eq!(events.len(), 4);
    let done_event = events[0].as_ref().expect("COMPLETED event");
    assert_eq!(done_event.refund_reference, done);
    assert_eq!(done_event.status, RefundStatus::Completed);
    assert_eq!(done_event.provider_reference.as_deref(), Some("prov-1"));
    assert_eq!(done_event.attempts, 2, "claimed submit + the extra one");
    let failed_event = events[1].as_ref().expect("REFUND_FAIL event");
    assert_eq!(failed_event.refund_reference, failed);
    assert_eq!(failed_event.status, RefundStatus::RefundFail);
    assert_eq!(
        failed_event.failure_reason.as_ref().map(|f| f.code),
        Some(FailureCode::ProviderRejected)
    );
    assert!(events[2].is_none(), "a reschedule has no event");
    assert!(events[3].is_none(), "a lost claim has no event");

    // The rows.
    assert_eq!(
        row_state(&app, &done).await,
        (
            "COMPLETED".into(),
            "FINAL".into(),
            2,
            0,
            1,
            Some("prov-1".into()),
            false
        )
    );
    let fee: (
        Option<rust_decimal::Decimal>,
        Option<String>,
        Option<String>,
    ) = sqlx::query_as(
        "SELECT provider_fee, provider_fee_currency, provider_status FROM refunds
         WHERE refund_reference = $1",
    )
    .bind(&done)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        fee,
        (
            Some("0.25".parse().unwrap()),
            Some("NGN".into()),
            Some("SUCCESS".into())
        )
    );
    assert_eq!(
        row_state(&app, &failed).await,
        ("REFUND_FAIL".into(), "FINAL".into(), 1, 0, 0, None, false)
    );
    let failure: (Option<String>, Option<String>, bool) = sqlx::query_as(
        "SELECT failure_code, failure_message, finished_at IS NOT NULL FROM refunds
         WHERE refund_reference = $1",
    )
    .bind(&failed)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        failure,
        (
            Some("PROVIDER_REJECTED".into()),
            Some("responseCode 99".into()),
            true
        )
    );
    assert_eq!(
        row_state(&app, &later).await,
        (
            "PENDING".into(),
            "ACCEPTED".into(),
            1,
            0,
            1,
            Some("prov-3".into()),
            false
        )
    );
    let wait: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM refunds
         WHERE refund_reference = $1",
    )
    .bind(&later)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        (590.0..=600.0).contains(&wait),
        "rescheduled {wait} s ahead"
    );
    assert_eq!(
        row_state(&app, &lost).await,
        lost_before,
        "a lost claim changes nothing"
    );

    // History: one transition per finish, none for the others.
    let history: Vec<(String, Option<String>, String, Option<uuid::Uuid>)> = sqlx::query_as(
        "SELECT refund_reference, from_status, to_status, event_id FROM refund_transitions
         ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![
            (
                done.clone(),
                Some("PENDING".into()),
                "COMPLETED".into(),
                Some(done_event.event_id)
            ),
            (
                failed.clone(),
                Some("PENDING".into()),
                "REFUND_FAIL".into(),
                Some(failed_event.event_id)
            ),
        ]
    );
    // Outbox: the events, in input order.
    let outbox: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT event_id, routing_key, payload->>'refundReference' FROM outbox ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        outbox,
        vec![
            (
                done_event.event_id,
                done_event.routing_key().into(),
                done.clone()
            ),
            (
                failed_event.event_id,
                failed_event.routing_key().into(),
                failed.clone()
            ),
        ]
    );
    // Attempts: every step's calls in call order; the lost claim's too (the provider was
    // called), though its refund did not change.
    let attempts: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT refund_reference, call, outcome, latency_ms FROM provider_attempts ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let of = |r: &str| {
        attempts
            .iter()
            .filter(|a| a.0 == r)
            .map(|a| (a.1.as_str(), a.2.as_str()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of(&done),
        vec![("status", "not_found"), ("submit", "succeeded")]
    );
    assert_eq!(of(&failed), vec![("submit", "rejected")]);
    assert_eq!(
        of(&later),
        vec![("submit", "accepted"), ("status", "pending")]
    );
    assert_eq!(of(&lost), vec![("status", "succeeded")]);
    assert_eq!(attempts.len(), 6);
    assert!(attempts.iter().all(|a| a.3 == 12));

    // Recording the same claims again finds them all lost: nothing changes.
    let again = dispatch::record_steps(&app.pool, &steps, &app.ctx.sink)
        .await
        .expect("record_steps again");
    assert_eq!(again, vec![None, None, None, None]);
    // ... and no call is logged twice.
    assert_eq!(count(&app, "provider_attempts", &done).await, 2);
    assert_eq!(count(&app, "provider_attempts", &lost).await, 1);
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(outbox_rows, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn record_steps_with_nothing_to_record_is_a_no_op() {
    let app = TestApp::spawn().await;
    let events = dispatch::record_steps(&app.pool, &[], &app.ctx.sink)
        .await
        .expect("empty batch");
    assert!(events.is_empty());
    app.cleanup().await;
}

#[tokio::test]
async fn dispatch_step_claims_processes_and_records_a_batch() {
    let app = TestApp::spawn().await;
    let refs: Vec<String> = (0..5).map(|i| reference(&format!("step{i}"))).collect();
    for r in &refs {
        due_refund(&app, r).await;
    }
    assert_eq!(
        dispatch::step(&app.ctx).await.expect("step"),
        DispatchOutcome::Worked(5)
    );
    // Every refund was submitted once, and its outcome recorded before `step` returned.
    for r in &refs {
        assert_eq!(count(&app, "provider_attempts", r).await, 1, "{r}");
        let (_, phase, attempts, ..) = row_state(&app, r).await;
        assert_ne!(phase, "SUBMITTING", "{r}: outcome recorded");
        assert_eq!(attempts, 1);
    }
    // Poll them to completion one step at a time.
    app.eventually("all completed", || async {
        let _ = dispatch::step(&app.ctx).await.expect("step");
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'COMPLETED'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        completed == 5
    })
    .await;
    assert_eq!(
        dispatch::step(&app.ctx).await.expect("step"),
        DispatchOutcome::Idle
    );
    let ledger = app.sandbox.ledger();
    for r in &refs {
        assert_eq!(ledger.refund(r).expect("at the provider").submit_count, 1);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn the_continuous_dispatcher_completes_many_refunds_each_submitted_once() {
    // Fewer slots than refunds and small claims, so slots are refilled many times.
    let mut app = TestApp::spawn_with(Options {
        env: vec![
            ("DISPATCH_CONCURRENCY", "16".into()),
            ("DISPATCH_BATCH", "8".into()),
        ],
        ..Options::default()
    })
    .await;
    app.start_worker();
    let refs: Vec<String> = (0..200).map(|i| reference(&format!("many{i}"))).collect();
    for r in &refs {
        app.publish(&va_command(r, "10.00")).await;
    }
    app.eventually("all 200 completed", || async {
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM refunds WHERE status = 'COMPLETED'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        completed == 200
    })
    .await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.submit_calls, 200, "no refund submitted twice");
    for r in &refs {
        let at_provider = ledger.refund(r).expect("at the provider");
        assert_eq!(at_provider.submit_count, 1, "{r}");
    }
    // Exactly one finish each: two transitions and two events per refund.
    let per_refund: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM refund_transitions t WHERE t.refund_reference = r.refund_reference),
                (SELECT count(*) FROM outbox o WHERE o.payload->>'refundReference' = r.refund_reference)
         FROM refunds r",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(per_refund.len(), 200);
    assert!(per_refund.iter().all(|&c| c == (2, 2)), "{per_refund:?}");
    let submits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM provider_attempts WHERE call = 'submit'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(submits, 200);
    app.cleanup().await;
}

#[tokio::test]
async fn a_refund_the_provider_may_have_is_never_failed_when_its_provider_is_unconfigured() {
    // VA Services is not configured in this worker (removed since the refunds were taken).
    let app = TestApp::spawn_with(Options {
        env: vec![("PROVIDER_VA_SERVICES_BASE_URL", String::new())],
        ..Options::default()
    })
    .await;
    due_refund(&app, "unconf-never-sent").await;
    due_refund(&app, "unconf-accepted").await;
    sqlx::query("UPDATE refunds SET phase = 'ACCEPTED', attempts = 1 WHERE refund_reference = 'unconf-accepted'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        dispatch::step(&app.ctx).await.unwrap(),
        DispatchOutcome::Worked(2)
    );
    let (status, phase, ..) = row_state(&app, "unconf-never-sent").await;
    assert_eq!(
        (status.as_str(), phase.as_str()),
        ("REFUND_FAIL", "FINAL"),
        "never sent: it can fail"
    );
    let (status, phase, _, failures, ..) = row_state(&app, "unconf-accepted").await;
    assert_eq!(
        (status.as_str(), phase.as_str(), failures),
        ("PENDING", "ACCEPTED", 1),
        "the provider has it: it waits, never a false REFUND_FAIL"
    );
    app.cleanup().await;
}
