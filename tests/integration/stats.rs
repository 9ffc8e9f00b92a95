//! The sampled `/metrics` gauges read only the work in flight, through partial indexes.

use crate::helpers::*;
use refund_worker::store::stats::{in_flight, InFlight, STATEMENTS};

/// Inserts a refund row directly: these tests are about counting, not about intake.
async fn refund(app: &TestApp, reference: &str, provider: &str, status: &str, age_secs: i64) {
    let (phase, next, code) = match status {
        "PENDING" => ("NOT_SUBMITTED", "now()", "NULL"),
        "COMPLETED" => ("FINAL", "NULL", "NULL"),
        _ => ("FINAL", "NULL", "'PROVIDER_REJECTED'"),
    };
    sqlx::query(&format!(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
                              status, phase, failure_code, next_attempt_at, command, command_hash, created_at)
         VALUES ($1, $2, 'tx-' || $1, 1.00, 'EUR', $3, '{phase}', {code}, {next}, '{{}}', 'h',
                 now() - make_interval(secs => $4))"
    ))
    .bind(reference)
    .bind(provider)
    .bind(status)
    .bind(age_secs as f64)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn delivery(app: &TestApp, reference: &str, state: &str) {
    let next = if state == "queued" { "now()" } else { "NULL" };
    sqlx::query(&format!(
        "INSERT INTO webhook_deliveries (event_id, refund_reference, event_status, url, payload, state, next_attempt_at)
         VALUES (gen_random_uuid(), $1, 'COMPLETED', 'http://merchant.test/hook', '{{}}', $2, {next})"
    ))
    .bind(reference)
    .bind(state)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn in_flight_counts_only_what_is_still_moving() {
    let app = TestApp::spawn().await;
    assert_eq!(in_flight(&app.pool).await.unwrap(), InFlight::default());

    refund(&app, "s-bpn-1", "bpn", "PENDING", 120).await;
    refund(&app, "s-bpn-2", "bpn", "PENDING", 5).await;
    refund(&app, "s-bvnk-1", "bvnk", "PENDING", 30).await;
    refund(&app, "s-bvnk-done", "bvnk", "COMPLETED", 900).await;
    refund(&app, "s-va-fail", "va_services", "REFUND_FAIL", 900).await;
    for state in ["queued", "failed", "failed", "delivered"] {
        delivery(&app, "s-bvnk-done", state).await;
    }
    sqlx::query(
        "INSERT INTO outbox (event_id, exchange, routing_key, payload, created_at, published_at)
         VALUES (gen_random_uuid(), 'x', 'k', '{}', now() - interval '40 seconds', NULL),
                (gen_random_uuid(), 'x', 'k', '{}', now() - interval '10 minutes', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let now = in_flight(&app.pool).await.unwrap();
    assert_eq!(
        now.pending_by_provider,
        [("bpn".to_string(), 2), ("bvnk".to_string(), 1)]
    );
    // The oldest PENDING refund, not the older final ones.
    assert!((120.0..130.0).contains(&now.oldest_pending_secs), "{now:?}");
    assert_eq!(now.outbox_pending, 1);
    assert!((40.0..50.0).contains(&now.outbox_lag_secs), "{now:?}");
    assert_eq!((now.deliveries_queued, now.deliveries_failed), (1, 2));
    app.cleanup().await;
}

#[tokio::test]
async fn in_flight_never_scans_a_whole_table() {
    // Each statement reads one state through an index whose condition selects that state;
    // a statement drifting from its index would scan a table that only grows. With
    // sequential scans disabled the planner still picks one when nothing else can answer.
    let app = TestApp::spawn().await;
    let bounded = [
        "refunds_due",
        "refunds_by_status",
        "outbox_unpublished",
        "webhook_deliveries_due",
        "webhook_deliveries_failed",
        "refunds_in_review",
    ];
    for (statement, plan) in plans_without_seq_scans(&app, STATEMENTS.map(String::from)).await {
        let scans = collect_scans(&plan);
        assert!(!scans.is_empty(), "{plan}");
        for (node, index) in scans {
            assert!(
                index.as_deref().is_some_and(|i| bounded.contains(&i)),
                "{node} on {index:?} in {statement}: {plan}"
            );
        }
    }
    app.cleanup().await;
}
