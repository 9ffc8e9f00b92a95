//! Commands in: validation, dead letters, duplicates, the over-refund guard.

use crate::helpers::*;
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::pipeline::intake::{self, IntakeOutcome};
use rust_decimal::Decimal;
use serde_json::json;
use std::str::FromStr;
use std::time::Duration;

#[tokio::test]
async fn malformed_messages_go_to_the_dlq_with_a_reason() {
    let mut app = TestApp::spawn().await;
    app.start_worker();

    app.publish_raw(b"{not json").await;
    let (body, reason) = app.dlq_get().await.expect("dead letter");
    assert_eq!(body, b"{not json");
    assert!(
        reason.starts_with("message is not a JSON object"),
        "{reason}"
    );

    app.publish(&json!({"amount": "10.00", "provider": "va_services"}))
        .await;
    let (_, reason) = app.dlq_get().await.expect("dead letter");
    assert_eq!(
        reason,
        "message has no usable refundReference: refundReference is missing"
    );

    app.publish(&json!({"refundReference": "x".repeat(10_000)}))
        .await;
    let (_, reason) = app.dlq_get().await.expect("dead letter");
    assert!(
        reason.contains("10000 characters long, at most 128"),
        "{reason}"
    );

    app.publish_raw(&vec![b' '; intake::MAX_COMMAND_BYTES + 1])
        .await;
    let (_, reason) = app.dlq_get().await.expect("dead letter");
    assert!(reason.contains("at most 262144 are accepted"), "{reason}");
    app.cleanup().await;
}

#[tokio::test]
async fn invalid_commands_become_refund_fail_invalid_command() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let cases = [
        (
            "amount",
            json!("-5"),
            "amount must be greater than zero, got -5",
        ),
        (
            "amount",
            json!(0),
            "amount must be greater than zero, got 0",
        ),
        (
            "amount",
            json!("10.001"),
            "amount 10.001 has more than the 2 decimal places NGN allows",
        ),
        (
            "amount",
            serde_json::from_str("1e5").unwrap(),
            "is not a plain decimal number",
        ),
        ("provider", json!("paypal"), "provider `paypal` is unknown"),
        ("currency", json!(null), "currency is missing"),
    ];
    for (i, (field, value, expected)) in cases.iter().enumerate() {
        let r = reference(&format!("invalid{i}"));
        let mut cmd = va_command(&r, "10.00");
        cmd[*field] = value.clone();
        app.publish(&cmd).await;
        let e = app.wait_for(&r, RefundStatus::RefundFail).await;
        let failure = e.failure_reason.expect("failure reason");
        assert_eq!(failure.code, FailureCode::InvalidCommand);
        assert!(
            failure.message.contains(expected),
            "{field}: {} does not contain {expected}",
            failure.message
        );
        assert_eq!(e.attempts, 0);
    }
    // Nothing reached the provider.
    assert_eq!(app.sandbox.ledger().submit_calls, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_provider_that_is_not_configured_fails_clearly() {
    let mut app = TestApp::spawn_with(Options {
        env: vec![("PROVIDER_BVNK_BASE_URL", String::new())],
        ..Options::default()
    })
    .await;
    app.start_worker();
    let r = reference("bvnk");
    let mut cmd = va_command(&r, "10.00");
    cmd["provider"] = json!("bvnk");
    cmd["currency"] = json!("EUR");
    app.publish(&cmd).await;
    let e = app.wait_for(&r, RefundStatus::RefundFail).await;
    let f = e.failure_reason.expect("reason");
    assert_eq!(f.code, FailureCode::InvalidCommand);
    assert_eq!(f.message, "provider bvnk is not configured");
    app.cleanup().await;
}

#[tokio::test]
async fn duplicates_are_acknowledged_once_and_conflicts_are_dead_lettered() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("dup");
    let cmd = va_command(&r, "10.00");
    // The same command three times, once with its keys in another order.
    app.publish(&cmd).await;
    app.publish(&cmd).await;
    let reordered: serde_json::Map<String, serde_json::Value> =
        cmd.as_object().unwrap().clone().into_iter().rev().collect();
    app.publish(&serde_json::Value::Object(reordered)).await;
    app.wait_for(&r, RefundStatus::Completed).await;

    // Same reference, different body: refused, the original refund untouched.
    app.publish(&va_command(&r, "11.00")).await;
    let (_, reason) = app.dlq_get().await.expect("dead letter");
    assert!(
        reason.contains("already exists with a different command (status COMPLETED)"),
        "{reason}"
    );

    let ledger = app.sandbox.ledger();
    assert_eq!(
        ledger.refund(&r).expect("refund at provider").submit_count,
        1
    );
    assert_eq!(ledger.submit_calls, 1);
    let statuses: Vec<_> = app.events_for(&r).iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![RefundStatus::Pending, RefundStatus::Completed]
    );
    app.cleanup().await;
}

#[tokio::test]
async fn redelivered_commands_do_not_create_a_second_refund() {
    // A redelivery reaches intake again after the first delivery was stored (the ack was
    // lost): intake must see it as a duplicate.
    let app = TestApp::spawn().await;
    let r = reference("redeliver");
    let body = va_command(&r, "5.00").to_string();
    let first = intake::handle(&app.ctx, body.as_bytes())
        .await
        .expect("intake");
    assert!(matches!(first, IntakeOutcome::Stored(e) if e.status == RefundStatus::Pending));
    let again = intake::handle(&app.ctx, body.as_bytes())
        .await
        .expect("intake");
    assert_eq!(again, IntakeOutcome::Duplicate);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "one event only");
    app.cleanup().await;
}

#[tokio::test]
async fn racing_workers_never_refund_more_than_the_payment() {
    let mut app = TestApp::spawn().await;
    // Two workers on the same queue and database, each with a prefetch of 16.
    app.start_worker();
    let (stop2, worker2) = app.spawn_extra_worker();
    let payment = "txn-shared-payment";
    let mut refs = Vec::new();
    for i in 0..24 {
        let r = reference(&format!("race{i}"));
        let mut cmd = va_command(&r, "10.00");
        cmd["transactionReference"] = json!(payment);
        cmd["paymentAmount"] = json!("100.00");
        refs.push(r);
        app.publish(&cmd).await;
    }
    let mut completed = 0;
    let mut refused = 0;
    for r in &refs {
        // Each refund ends COMPLETED or REFUND_FAIL/AMOUNT_EXCEEDS_REFUNDABLE.
        let e = app.wait_final(r).await;
        match e.status {
            RefundStatus::Completed => completed += 1,
            _ => {
                assert_eq!(
                    e.failure_reason.as_ref().unwrap().code,
                    FailureCode::AmountExceedsRefundable
                );
                refused += 1;
            }
        }
    }
    assert_eq!((completed, refused), (10, 14));
    let at_provider: Decimal = app
        .sandbox
        .ledger()
        .refunds
        .iter()
        .filter(|r| r.transaction_reference == payment)
        .map(|r| Decimal::from_str(&r.refund_amount).unwrap())
        .sum();
    assert_eq!(at_provider, Decimal::from(100));
    stop2.cancel();
    worker2.await.unwrap();
    app.cleanup().await;
}

#[tokio::test]
async fn the_guard_holds_under_direct_concurrency() {
    // 40 intakes at once on one payment of 100.00, amounts 7.50: at most 13 fit.
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let ctx = app.ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut cmd = va_command(&format!("direct-{i}"), "7.50");
            cmd["transactionReference"] = json!("txn-direct");
            cmd["paymentAmount"] = json!(100);
            intake::handle(&ctx, cmd.to_string().as_bytes())
                .await
                .expect("intake")
        }));
    }
    let mut pending = 0;
    for t in tasks {
        if let IntakeOutcome::Stored(e) = t.await.unwrap() {
            if e.status == RefundStatus::Pending {
                pending += 1;
            }
        }
    }
    assert_eq!(pending, 13);
    let sum: Decimal =
        sqlx::query_scalar("SELECT SUM(amount) FROM refunds WHERE status <> 'REFUND_FAIL'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(sum, Decimal::from_str("97.50").unwrap());
    app.cleanup().await;
}

#[tokio::test]
async fn a_different_payment_amount_for_a_known_payment_is_refused() {
    let app = TestApp::spawn().await;
    let mut a = va_command("pa-1", "10.00");
    a["transactionReference"] = json!("txn-pa");
    a["paymentAmount"] = json!("100.00");
    intake::handle(&app.ctx, a.to_string().as_bytes())
        .await
        .unwrap();
    let mut b = va_command("pa-2", "10.00");
    b["transactionReference"] = json!("txn-pa");
    b["paymentAmount"] = json!("500.00");
    match intake::handle(&app.ctx, b.to_string().as_bytes())
        .await
        .unwrap()
    {
        IntakeOutcome::Stored(e) => {
            let f = e.failure_reason.expect("refused");
            assert_eq!(f.code, FailureCode::InvalidCommand);
            assert_eq!(
                f.message,
                "paymentAmount 500.00 differs from the known amount 100.00 of payment txn-pa"
            );
        }
        other => panic!("{other:?}"),
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_batch_is_judged_as_if_its_commands_came_one_at_a_time() {
    use refund_worker::domain::RefundCommand;
    use refund_worker::store::{Intake, IntakeItem};
    let app = TestApp::spawn().await;
    let on_payment = |reference: &str, amount: &str, payment: &str| {
        let mut c = va_command(reference, amount);
        c["transactionReference"] = json!(payment);
        c["paymentAmount"] = json!("100.00");
        c
    };
    // Stored before the batch: one repeated in it (same hash), one conflicting.
    let old = on_payment("b-old", "10.00", "txn-b");
    let old_cmd = RefundCommand::from_value(old.clone()).unwrap();
    let item = |cmd, raw, hash, configured| IntakeItem {
        cmd,
        raw,
        command_hash: hash,
        provider_configured: configured,
        fallback: Default::default(),
    };
    let first = intake_batch(
        &app.pool,
        &[item(&old_cmd, &old, "h-old", true)],
        &app.ctx.sink,
    )
    .await
    .unwrap();
    assert!(matches!(first.as_slice(), [Intake::Created(_)]));

    let raws = [
        on_payment("b-1", "50.00", "txn-b"),    // 10 + 50 fits
        on_payment("b-2", "45.00", "txn-b"),    // 60 + 45 > 100: refused
        on_payment("b-3", "40.00", "txn-b"),    // 60 + 40 fits exactly
        on_payment("b-1", "50.00", "txn-b"),    // repeat of b-1 within the batch
        on_payment("b-3", "1.00", "txn-b"),     // b-3 again with another body: conflict
        old.clone(),                            // repeat of the stored one
        on_payment("b-old", "2.00", "txn-b"),   // conflict with the stored one
        on_payment("b-4", "5.00", "txn-other"), // another payment, unaffected
        on_payment("b-5", "5.00", "txn-b"),     // provider not configured
    ];
    let hashes = ["h1", "h2", "h3", "h1", "h3x", "h-old", "h-oldx", "h4", "h5"];
    let cmds: Vec<RefundCommand> = raws
        .iter()
        .map(|r| RefundCommand::from_value(r.clone()).unwrap())
        .collect();
    let items: Vec<IntakeItem<'_>> = (0..raws.len())
        .map(|n| item(&cmds[n], &raws[n], hashes[n], n != 8))
        .collect();
    let answers = intake_batch(&app.pool, &items, &app.ctx.sink)
        .await
        .unwrap();
    let created = |n: usize| match &answers[n] {
        Intake::Created(e) => e.clone(),
        other => panic!("answer {n}: {other:?}"),
    };
    assert_eq!(answers.len(), raws.len());
    assert_eq!(created(0).status, RefundStatus::Pending);
    let refused = created(1).failure_reason.expect("b-2 refused");
    assert_eq!(refused.code, FailureCode::AmountExceedsRefundable);
    assert!(
        refused.message.contains("40.00 of 100.00 (60.00 already"),
        "{}",
        refused.message
    );
    assert_eq!(created(2).status, RefundStatus::Pending);
    assert_eq!(answers[3], Intake::Duplicate);
    assert_eq!(
        answers[4],
        Intake::Conflict {
            existing_status: "PENDING".into()
        }
    );
    assert_eq!(answers[5], Intake::Duplicate);
    assert_eq!(
        answers[6],
        Intake::Conflict {
            existing_status: "PENDING".into()
        }
    );
    assert_eq!(created(7).status, RefundStatus::Pending);
    let unconfigured = created(8).failure_reason.expect("b-5 refused");
    assert_eq!(unconfigured.code, FailureCode::InvalidCommand);

    // Rows and their first events: one per new refund, in the batch's order.
    let refunded: Decimal = sqlx::query_scalar(
        "SELECT SUM(amount) FROM refunds WHERE transaction_reference = 'txn-b' AND status = 'PENDING'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(refunded, Decimal::from(100));
    let outbox: Vec<String> =
        sqlx::query_scalar("SELECT payload->>'refundReference' FROM outbox ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outbox, ["b-old", "b-1", "b-2", "b-3", "b-4", "b-5"]);
    let created_at: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT created_at) FROM refunds WHERE refund_reference LIKE 'b-_'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(created_at, 1, "one transaction for the whole batch");

    // The same batch again changes nothing: every command is now a repeat or a conflict.
    let again = intake_batch(&app.pool, &items, &app.ctx.sink)
        .await
        .unwrap();
    assert!(
        again.iter().all(|a| !matches!(a, Intake::Created(_))),
        "{again:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 6);
    app.cleanup().await;
}

#[tokio::test]
async fn a_burst_is_stored_in_batches_and_the_guard_still_holds() {
    // 60 commands of 7.50 on one payment of 100.00 (13 fit), plus 10 repeats, all waiting
    // in the queue before the worker starts, so the consumer takes them in batches.
    let mut app = TestApp::spawn_with(Options {
        env: vec![("INTAKE_BATCH", "8".into())],
        ..Options::default()
    })
    .await;
    let command = |i: usize| {
        let mut cmd = va_command(&format!("burst-{i}"), "7.50");
        cmd["transactionReference"] = json!("txn-burst");
        cmd["paymentAmount"] = json!("100.00");
        cmd
    };
    for i in 0..60 {
        app.publish(&command(i)).await;
        if i % 6 == 0 {
            app.publish(&command(i)).await;
        }
    }
    app.start_worker();
    app.eventually("all 60 stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        n == 60
    })
    .await;
    let (pending, refused, transactions): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status <> 'REFUND_FAIL'),
             count(*) FILTER (WHERE failure_code = 'AMOUNT_EXCEEDS_REFUNDABLE'),
             count(DISTINCT created_at)
         FROM refunds",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((pending, refused), (13, 47));
    assert!(
        transactions < 60,
        "{transactions} intake transactions for 60 commands: not batched"
    );
    // Every message was settled: nothing left in the queue or the DLQ.
    assert!(app.dlq_get().await.is_none());
    for i in 0..60 {
        app.wait_final(&format!("burst-{i}")).await;
    }
    app.cleanup().await;
}

#[tokio::test]
async fn every_message_is_acknowledged_once_whichever_batch_settles_first() {
    // Small batches, several at once: batches finish out of order, dead letters wait for
    // their confirm, and the acks go out a run at a time (`broker::acks`). A multiple ack
    // sent too early would lose messages; one left out would leave them unacked (back in
    // the queue when the worker stops); one naming a tag the broker no longer holds would
    // close the channel and redeliver, and the dead letters would be copied twice.
    let mut app = TestApp::spawn_with(Options {
        env: vec![("INTAKE_BATCH", "3".into()), ("PREFETCH", "24".into())],
        ..Options::default()
    })
    .await;
    let (mut dead, mut stored) = (0, 0);
    for i in 0..90 {
        match i % 5 {
            0 => {
                app.publish_raw(format!("not json {i}").as_bytes()).await;
                dead += 1;
            }
            1 => {
                let mut invalid = va_command(&format!("acks-{i}"), "1.00");
                invalid["amount"] = json!("-1");
                app.publish(&invalid).await;
                stored += 1;
            }
            _ => {
                app.publish(&va_command(&format!("acks-{i}"), "1.00")).await;
                stored += 1;
                if i % 7 == 0 {
                    app.publish(&va_command(&format!("acks-{i}"), "1.00")).await;
                }
            }
        }
    }
    app.start_worker();
    app.eventually("every command stored", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        n == stored
    })
    .await;
    app.eventually("every dead letter copied", || async {
        app.queue_depth(&app.topology.commands_dlq).await >= dead
    })
    .await;
    app.stop_worker().await;
    assert_eq!(app.queue_depth(&app.topology.commands_queue).await, 0);
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, dead);
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refunds WHERE failure_code = 'INVALID_COMMAND'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(refused, 18);
    app.cleanup().await;
}

#[tokio::test]
async fn intake_claims_new_refunds_for_the_dispatcher_as_a_claim_would() {
    use refund_worker::domain::{Phase, RefundCommand};
    use refund_worker::store::{refunds, Intake, IntakeItem, Preclaim, StepRecord, StoreUpdate};
    let app = TestApp::spawn().await;
    let raws = [
        va_command("pc-1", "10.00"),
        va_command("pc-2", "10.00"),
        va_command("pc-3", "10.00"),
    ];
    let cmds: Vec<RefundCommand> = raws
        .iter()
        .map(|r| RefundCommand::from_value(r.clone()).unwrap())
        .collect();
    let items: Vec<IntakeItem<'_>> = (0..3)
        .map(|n| IntakeItem {
            cmd: &cmds[n],
            raw: &raws[n],
            command_hash: ["h1", "h2", "h3"][n],
            // The first one's provider is "not configured": refused, never claimed.
            provider_configured: n != 0,
            fallback: Default::default(),
        })
        .collect();
    let preclaim = Preclaim {
        limit: 1,
        lease: Duration::from_secs(30),
    };
    let (answers, claimed) = intake::store_batch(&app.pool, &items, &app.ctx.sink, preclaim)
        .await
        .unwrap();
    assert!(answers.iter().all(|a| matches!(a, Intake::Created(_))));
    // Only one slot: pc-2 is claimed, pc-3 waits for the dispatcher's own claim.
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.row.refund_reference, "pc-2");
    assert_eq!(c.phase_before, Phase::NotSubmitted);
    assert_eq!((c.row.phase.as_str(), c.row.attempts), ("SUBMITTING", 1));
    let (token, leased): (Option<uuid::Uuid>, bool) = sqlx::query_as(
        "SELECT claim_token, next_attempt_at > now() + interval '20 seconds'
         FROM refunds WHERE refund_reference = 'pc-2'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((token, leased), (Some(c.token), true));
    let (phase, token): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT phase, claim_token FROM refunds WHERE refund_reference = 'pc-3'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((phase.as_str(), token), ("NOT_SUBMITTED", None));
    // The dispatcher's claim does not take the pre-claimed one again.
    let due = refunds::claim_due(&app.pool, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let due: Vec<&str> = due
        .iter()
        .map(|c| c.row.refund_reference.as_str())
        .collect();
    assert_eq!(due, ["pc-3"]);
    // Its outcome is recorded under the intake's claim like any other.
    let update = StoreUpdate::Finish {
        status: RefundStatus::Completed,
        failure: None,
        provider_reference: Some("P-1".into()),
        provider_status: Some("SUCCESS".into()),
        fee: None,
    };
    let step = StepRecord {
        claimed: c,
        extra_submits: 0,
        calls: &[],
        update: &update,
    };
    let events = refund_worker::pipeline::dispatch::record_steps(&app.pool, &[step], &app.ctx.sink)
        .await
        .unwrap();
    assert_eq!(
        events[0].as_ref().map(|e| e.status),
        Some(RefundStatus::Completed)
    );
    app.cleanup().await;
}

/// Stores a batch without claiming any of it (as for a dispatcher with no free slot).
async fn intake_batch(
    pool: &sqlx::PgPool,
    items: &[refund_worker::store::IntakeItem<'_>],
    sink: &refund_worker::store::EventSink,
) -> Result<Vec<refund_worker::store::Intake>, refund_worker::store::StoreError> {
    let none = refund_worker::store::Preclaim::NONE;
    Ok(intake::store_batch(pool, items, sink, none).await?.0)
}

#[tokio::test]
async fn commands_that_wait_move_to_the_backlog_and_are_still_processed() {
    // The worker is down: the broker moves every command older than COMMAND_FRESH_FOR from
    // refund.commands to refund.commands.backlog (at least once); a worker that starts then
    // consumes the backlog and every command ends as it would have.
    let mut app = TestApp::spawn().await;
    let refs: Vec<String> = (0..3).map(|_| reference("aged")).collect();
    for r in &refs {
        app.publish(&va_command(r, "3.00")).await;
    }
    let (fresh, backlog) = (
        app.topology.commands_queue.clone(),
        app.topology.commands_backlog.clone(),
    );
    app.eventually("the commands move to the backlog", || async {
        app.queue_depth(&fresh).await == 0 && app.queue_depth(&backlog).await == 3
    })
    .await;
    app.start_worker();
    for r in &refs {
        assert_eq!(app.wait_final(r).await.status, RefundStatus::Completed);
        assert_eq!(app.events_for(r)[0].status, RefundStatus::Pending);
    }
    assert_eq!(app.queue_depth(&backlog).await, 0);
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_new_command_is_not_queued_behind_a_backlog() {
    // 1,500 commands wait in the backlog when the worker starts; a command published just
    // after is consumed from the fresh queue beside the drain, so it is stored before the
    // backlog is (one queue, first in first out, would store it last).
    const BACKLOG: usize = 1_500;
    let mut app = TestApp::spawn().await;
    let backlog_refs: Vec<String> = (0..BACKLOG).map(|_| reference("drain")).collect();
    for r in &backlog_refs {
        app.publish(&va_command(r, "1.00")).await;
    }
    let backlog = app.topology.commands_backlog.clone();
    app.eventually("the backlog forms", || async {
        app.queue_depth(&backlog).await as usize == BACKLOG
    })
    .await;
    app.start_worker();
    let probe = reference("probe");
    app.publish(&va_command(&probe, "1.00")).await;
    app.wait_for(&probe, RefundStatus::Pending).await;
    let stored_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM refunds WHERE refund_reference LIKE 'drain-%' \
         AND created_at < (SELECT created_at FROM refunds WHERE refund_reference = $1)",
    )
    .bind(&probe)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // One queue would store it last (all 1,500 before it); measured here: none before it.
    assert!(
        (stored_before as usize) < BACKLOG / 2,
        "the probe was stored after {stored_before} of the {BACKLOG} backlog commands"
    );
    // The backlog still drains completely, once each.
    let pool = app.pool.clone();
    app.eventually("the backlog drains", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM refunds WHERE refund_reference LIKE 'drain-%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n as usize == BACKLOG
    })
    .await;
    assert_eq!(app.queue_depth(&backlog).await, 0);
    app.cleanup().await;
}
