//! Crashes, restarts and shutdown: nothing lost, nothing applied twice.

use crate::helpers::*;
use refund_sandbox::Faults;
use refund_worker::domain::RefundStatus;
use refund_worker::pipeline::intake::{self, IntakeOutcome};

#[tokio::test]
async fn an_event_committed_before_a_crash_is_published_after_restart() {
    let mut app = TestApp::spawn().await;
    // Intake commits the refund and its PENDING event; the process "dies" before the relay
    // runs (no worker is running at all).
    let r = reference("outbox");
    let stored = intake::handle(&app.ctx, va_command(&r, "10.00").to_string().as_bytes())
        .await
        .unwrap();
    let IntakeOutcome::Stored(committed) = stored else {
        panic!("stored")
    };
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 1);

    app.start_worker();
    let pending = app.wait_for(&r, RefundStatus::Pending).await;
    assert_eq!(
        pending.event_id, committed.event_id,
        "the same event, same eventId"
    );
    app.wait_for(&r, RefundStatus::Completed).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_retry_schedule_survives_a_restart() {
    let mut app = TestApp::spawn().await;
    app.faults(Faults {
        fail_next: 8,
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("restart");
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    app.eventually("a failed attempt recorded", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_attempts WHERE refund_reference = $1",
        )
        .bind(&r)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n >= 2
    })
    .await;
    app.kill_worker();
    // The schedule is in the database, not in the dead process.
    let next: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT next_attempt_at FROM refunds WHERE refund_reference = $1")
            .bind(&r)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(next.is_some());
    // Provider healthy again; a new worker process picks the retry up. The killed worker
    // may have held a claim: expire it, as the lease would.
    sqlx::query("UPDATE refunds SET next_attempt_at = now() WHERE refund_reference = $1")
        .bind(&r)
        .execute(&app.pool)
        .await
        .unwrap();
    drain_faults(&app).await;
    app.start_worker();
    app.wait_for(&r, RefundStatus::Completed).await;
    assert_eq!(app.sandbox.ledger().refund(&r).unwrap().submit_count, 1);
    app.cleanup().await;
}

/// Uses up pending `failNext` faults by calling the sandbox directly.
async fn drain_faults(app: &TestApp) {
    let client = reqwest::Client::new();
    let base = app
        .ctx
        .config
        .providers
        .values()
        .next()
        .unwrap()
        .base_url
        .clone();
    while app.sandbox.ledger().pending_faults.fail_next > 0 {
        let _ = client
            .get(base.join("va/refunds/none").unwrap())
            .bearer_auth("sandbox-va-key")
            .send()
            .await;
    }
}

#[tokio::test]
async fn a_worker_killed_during_the_provider_call_never_causes_a_second_refund() {
    let mut app = TestApp::spawn().await;
    // Slow provider: the kill lands while the submit is in flight.
    app.faults(Faults {
        latency_ms: Some(700),
        ..Faults::default()
    });
    app.start_worker();
    let r = reference("killed");
    app.publish(&va_command(&r, "10.00")).await;
    app.eventually("the refund claimed for submission", || async {
        let phase: Option<String> =
            sqlx::query_scalar("SELECT phase FROM refunds WHERE refund_reference = $1")
                .bind(&r)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        phase.as_deref() == Some("SUBMITTING")
    })
    .await;
    app.kill_worker();
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    app.faults(Faults {
        latency_ms: Some(0),
        ..Faults::default()
    });
    // Lease expiry, then a new worker: it must ask for the status before any resubmit.
    sqlx::query("UPDATE refunds SET next_attempt_at = now() WHERE refund_reference = $1")
        .bind(&r)
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_worker();
    app.wait_for(&r, RefundStatus::Completed).await;
    let ledger = app.sandbox.ledger();
    assert_eq!(ledger.refund(&r).unwrap().submit_count, 1);
    assert!(ledger.status_calls >= 1);
    app.cleanup().await;
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing() {
    let mut app = TestApp::spawn().await;
    let refs: Vec<String> = (0..30).map(|i| reference(&format!("drain{i}"))).collect();
    for r in &refs {
        app.publish(&va_command(r, "1.00")).await;
    }
    app.start_worker();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    app.stop_worker().await;
    // Whatever was in flight was committed and acked, or is still in the queue.
    app.start_worker();
    for r in &refs {
        app.wait_for(r, RefundStatus::Completed).await;
    }
    let ledger = app.sandbox.ledger();
    for r in &refs {
        assert_eq!(ledger.refund(r).map(|x| x.submit_count), Some(1), "{r}");
    }
    app.eventually("every event published and marked", || async {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        unpublished == 0
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_database_refuses_to_move_a_final_refund() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("forward");
    app.publish(&va_command(&r, "10.00")).await;
    app.wait_for(&r, RefundStatus::Completed).await;
    let err = sqlx::query("UPDATE refunds SET status = 'PENDING', phase = 'ACCEPTED', next_attempt_at = now() WHERE refund_reference = $1")
        .bind(&r)
        .execute(&app.pool)
        .await
        .expect_err("backward transition refused");
    assert!(err.to_string().contains("cannot become PENDING"), "{err}");
    let err = sqlx::query("UPDATE refunds SET status = 'REFUND_FAIL', phase = 'FINAL', failure_code = 'PROVIDER_REJECTED' WHERE refund_reference = $1")
        .bind(&r)
        .execute(&app.pool)
        .await
        .expect_err("contradicting final status refused");
    assert!(
        err.to_string().contains("cannot become REFUND_FAIL"),
        "{err}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn readiness_follows_the_broker_connection() {
    // The app's own HTTP server and worker, sharing its readiness as `run` wires them.
    let mut app = TestApp::spawn().await;
    let client = reqwest::Client::new();
    let base = app.http_base.clone();
    let get = |path: &'static str| client.get(format!("{base}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    app.start_worker();
    app.eventually("ready", || async {
        get("/readyz").await.unwrap().status() == 200
    })
    .await;
    app.stop_worker().await;
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    app.cleanup().await;
}
