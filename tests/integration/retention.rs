//! Retention: operational rows older than their retention go, in batches; recent ones,
//! refunds, their history, unpublished events and webhooks an operator needs stay.

use crate::helpers::*;
use refund_worker::store::retention::{self, Removed, STATEMENTS};

async fn exec(app: &TestApp, sql: &str) {
    sqlx::query(sql).execute(&app.pool).await.expect(sql);
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect(sql)
}

#[tokio::test]
async fn old_operational_rows_go_and_recent_ones_stay() {
    let app = TestApp::spawn().await;
    // Two refunds: one final, one still pending, both created long ago.
    for (r, status, phase, next, fin, code) in [
        (
            "ret-final",
            "COMPLETED",
            "FINAL",
            "NULL",
            "now() - interval '40 days'",
            "NULL",
        ),
        (
            "ret-pending",
            "PENDING",
            "ACCEPTED",
            "now()",
            "NULL",
            "NULL",
        ),
    ] {
        exec(
            &app,
            &format!(
                "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount,
                     currency, status, phase, next_attempt_at, finished_at, failure_code,
                     command, command_hash, created_at)
                 VALUES ('{r}', 'va_services', 't-{r}', 10, 'NGN', '{status}', '{phase}', {next},
                     {fin}, {code}, '{{}}', 'h', now() - interval '41 days')"
            ),
        )
        .await;
    }
    exec(
        &app,
        "INSERT INTO refund_transitions (refund_reference, from_status, to_status, cause, occurred_at)
         VALUES ('ret-final', NULL, 'PENDING', 'command received', now() - interval '41 days'),
                ('ret-final', 'PENDING', 'COMPLETED', 'provider confirmed', now() - interval '40 days')",
    )
    .await;
    // Outbox: old published (goes), old unpublished (stays), recent published (stays).
    exec(
        &app,
        "INSERT INTO outbox (event_id, exchange, routing_key, payload, created_at, published_at) VALUES
           (gen_random_uuid(), 'x', 'k', '{}', now() - interval '40 days', now() - interval '40 days'),
           (gen_random_uuid(), 'x', 'k', '{}', now() - interval '40 days', NULL),
           (gen_random_uuid(), 'x', 'k', '{}', now() - interval '1 day', now() - interval '1 day')",
    )
    .await;
    // Inbox: old applied (goes), old parked and contradiction (stay), recent applied (stays).
    exec(
        &app,
        "INSERT INTO provider_webhook_inbox (provider, event_key, body, state, received_at) VALUES
           ('va_services', 'id:old-applied', 'x', 'APPLIED', now() - interval '40 days'),
           ('va_services', 'id:old-unchanged', 'x', 'UNCHANGED', now() - interval '40 days'),
           ('va_services', 'id:old-parked', 'x', 'PARKED', now() - interval '40 days'),
           ('va_services', 'id:old-contra', 'x', 'CONTRADICTION', now() - interval '40 days'),
           ('va_services', 'id:new-applied', 'x', 'APPLIED', now() - interval '1 day')",
    )
    .await;
    // Merchant delivery attempts: old (goes), recent (stays); the delivery row stays.
    exec(
        &app,
        "INSERT INTO webhook_deliveries (event_id, refund_reference, event_status, url, payload, state)
         VALUES (gen_random_uuid(), 'ret-final', 'COMPLETED', 'https://m.example/', '{}', 'delivered')",
    )
    .await;
    exec(
        &app,
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms)
         SELECT id, now() - interval '40 days', 200, 5 FROM webhook_deliveries
         UNION ALL SELECT id, now() - interval '1 hour', 200, 5 FROM webhook_deliveries",
    )
    .await;
    // Provider calls: old of the final refund (go), old of the pending one (stay), recent.
    exec(
        &app,
        "INSERT INTO provider_attempts (refund_reference, call, outcome, started_at, latency_ms) VALUES
           ('ret-final', 'submit', 'accepted', now() - interval '40 days', 5),
           ('ret-final', 'status', 'succeeded', now() - interval '39 days', 5),
           ('ret-pending', 'submit', 'accepted', now() - interval '40 days', 5),
           ('ret-final', 'status', 'succeeded', now() - interval '1 day', 5)",
    )
    .await;

    // Batches of one: the sweep goes on until nothing old is left.
    let removed = retention::sweep(
        &app.pool,
        &app.ctx.config.retention,
        1,
        100,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(
        removed,
        Removed {
            outbox: 1,
            inbox: 2,
            webhook_attempts: 1,
            provider_attempts: 2,
        }
    );
    assert_eq!(count(&app, "SELECT count(*) FROM outbox").await, 2);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        1,
        "an unpublished event is never removed"
    );
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT event_key FROM provider_webhook_inbox ORDER BY event_key")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(kept, ["id:new-applied", "id:old-contra", "id:old-parked"]);
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        1
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM provider_attempts WHERE refund_reference = 'ret-pending'"
        )
        .await,
        1,
        "a pending refund keeps its provider calls"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM provider_attempts").await,
        2
    );
    // The books stay.
    assert_eq!(count(&app, "SELECT count(*) FROM refunds").await, 2);
    assert_eq!(
        count(&app, "SELECT count(*) FROM refund_transitions").await,
        2
    );
    // Nothing left to do: a second sweep removes nothing.
    let again = retention::sweep(
        &app.pool,
        &app.ctx.config.retention,
        1000,
        10,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(again.total(), 0);
    app.cleanup().await;
}

#[tokio::test]
async fn retention_statements_never_scan_a_whole_table() {
    // Each sweep statement reaches its rows through an index, whatever the table's size.
    let app = TestApp::spawn().await;
    let statements = STATEMENTS.map(|s| s.replace("$1", "2592000").replace("$2", "1000"));
    for (statement, plan) in plans_without_seq_scans(&app, statements).await {
        assert_every_scan_uses_an_index(&statement, &plan);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn retention_statements_stay_on_their_indexes_at_size() {
    // With enough rows that a whole-table statement plans a sequential scan, and sequential
    // scans allowed, every sweep statement still reaches its rows through an index: 30 days
    // of retention over ten days of rows (a sweep that keeps up), as in production.
    const ROWS: i64 = 200_000;
    let app = TestApp::spawn().await;
    let age = |n: &str| format!("now() - interval '10 days' * ({n}::float8 / {ROWS})");
    for sql in [
        format!(
            "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount,
                 currency, status, phase, finished_at, command, command_hash, created_at)
             SELECT 'size-' || g, 'va_services', 't-' || g, 10, 'NGN', 'COMPLETED', 'FINAL',
                 {t}, '{{}}', 'h', {t}
             FROM generate_series({ROWS}, 1, -1) g",
            t = age("g")
        ),
        format!(
            "INSERT INTO provider_attempts (refund_reference, call, outcome, started_at, latency_ms)
             SELECT 'size-' || g, c, 'ok', {t}, 5
             FROM generate_series({ROWS}, 1, -1) g, (VALUES ('submit'), ('status')) v(c)",
            t = age("g")
        ),
        format!(
            "INSERT INTO outbox (event_id, exchange, routing_key, payload, created_at, published_at)
             SELECT gen_random_uuid(), 'x', 'k', '{{}}', {t}, {t}
             FROM generate_series({ROWS}, 1, -1) g, (VALUES (1), (2)) v(c)",
            t = age("g")
        ),
        format!(
            "INSERT INTO provider_webhook_inbox (provider, event_key, body, state, received_at)
             SELECT 'va_services', 'id:' || g, 'x', 'APPLIED', {t}
             FROM generate_series({ROWS}, 1, -1) g",
            t = age("g")
        ),
        "INSERT INTO webhook_deliveries (event_id, refund_reference, event_status, url, payload, state)
         VALUES (gen_random_uuid(), 'size-1', 'COMPLETED', 'https://m.example/', '{}', 'delivered')"
            .to_owned(),
        format!(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms)
             SELECT d.id, {t}, 200, 5 FROM webhook_deliveries d, generate_series({ROWS}, 1, -1) g",
            t = age("g")
        ),
        "ANALYZE".to_owned(),
    ] {
        exec(&app, &sql).await;
    }
    let mut conn = app.pool.acquire().await.expect("connection");
    let seqscan: String = sqlx::query_scalar("SHOW enable_seqscan")
        .fetch_one(&mut *conn)
        .await
        .expect("show");
    assert_eq!(seqscan, "on");
    // The tables are big enough for the planner to prefer a sequential scan where it has
    // no index to use.
    let whole = explain(
        &mut conn,
        "SELECT id FROM outbox WHERE published_at IS NOT NULL",
    )
    .await;
    assert!(
        collect_scans(&whole)
            .iter()
            .any(|(node, _)| node == "Seq Scan"),
        "{whole}"
    );
    for statement in STATEMENTS.map(|s| s.replace("$1", "2592000").replace("$2", "1000")) {
        let plan = explain(&mut conn, &statement).await;
        assert_every_scan_uses_an_index(&statement, &plan);
    }
    drop(conn);
    app.cleanup().await;
}

async fn explain(conn: &mut sqlx::PgConnection, sql: &str) -> serde_json::Value {
    sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {sql}"))
        .fetch_one(conn)
        .await
        .expect("explain")
}

fn assert_every_scan_uses_an_index(statement: &str, plan: &serde_json::Value) {
    let scans = collect_scans(plan);
    assert!(!scans.is_empty(), "{plan}");
    for (node, index) in scans {
        assert!(
            index.is_some(),
            "{node} without an index in {statement}: {plan}"
        );
    }
}
