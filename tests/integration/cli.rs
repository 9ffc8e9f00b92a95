//! The command line: a command's standard output is its result, never a log line.

use crate::helpers::pg_server;
use refund_worker::store;

#[tokio::test]
async fn a_one_shot_command_logs_to_stderr_and_keeps_stdout_for_its_result() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database_url = format!("{}/rw_cli_{id}", pg_server());
    store::ensure_database(&database_url).await.unwrap();
    // Debug logs for sqlx: every migration statement is logged, so there is plenty to stray.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
        .arg("migrate")
        .env("DATABASE_URL", &database_url)
        .env("RUST_LOG", "debug")
        .output()
        .await
        .expect("refund-worker runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "migrations applied\n");
    assert!(
        !out.stderr.is_empty(),
        "the debug logs went somewhere: standard error"
    );
    let admin = store::connect(&format!("{}/postgres", pg_server()), 1)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS rw_cli_{id} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

/// Runs the binary with `args` (and no database or broker behind it: usage errors come first).
async fn run_cli(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().await.expect("refund-worker runs")
}

/// Asserts a usage error (exit 2) whose standard error contains every one of `needles`.
fn assert_usage_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in:\n{stderr}");
    }
}

#[tokio::test]
async fn an_unknown_provider_or_status_is_a_usage_error_listing_the_valid_values() {
    let since = ["webhooks", "resend", "--since", "2026-01-01T00:00:00Z"];
    let out = run_cli(&[&since[..], &["--provider", "paypal"]].concat(), &[]).await;
    assert_usage_error(&out, &["paypal", "va_services, bpn, binance_pay, bvnk"]);
    let out = run_cli(&[&since[..], &["--status", "done"]].concat(), &[]).await;
    assert_usage_error(&out, &["done", "PENDING, COMPLETED, REFUND_FAIL"]);
}

#[tokio::test]
async fn dlq_replay_takes_exactly_one_selector() {
    let out = run_cli(&["dlq", "replay", "--id", "x", "--position", "1"], &[]).await;
    assert_usage_error(&out, &["--id <ID>", "cannot be used with", "--position"]);
    let out = run_cli(&["dlq", "replay", "--all", "--reason-contains", "db"], &[]).await;
    assert_usage_error(&out, &["cannot be used with"]);
    let out = run_cli(&["dlq", "replay", "--dry-run"], &[]).await;
    assert_usage_error(&out, &["required", "--id", "--position", "--all"]);
    let out = run_cli(&["dlq", "replay", "--position", "0"], &[]).await;
    assert_usage_error(&out, &["--position"]);
}

#[tokio::test]
async fn dlq_commands_refuse_queues_that_are_not_dead_letter_queues() {
    for args in [
        &["dlq", "list", "--queue", "refunds.unrouted"][..],
        &["dlq", "show", "1", "--queue", "refund.commands"],
        &[
            "dlq",
            "replay",
            "--all",
            "--dry-run",
            "--queue",
            "refunds.unrouted",
        ],
    ] {
        // The prefix is the configured one; the broker is never reached.
        let env = [
            ("AMQP_NAME_PREFIX", "staging."),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ];
        let out = run_cli(args, &env).await;
        assert_usage_error(
            &out,
            &[
                "is not a dead-letter queue",
                "staging.refund.commands.dlq",
                "staging.provider.webhooks.dlq",
            ],
        );
    }
}

#[tokio::test]
async fn dlq_replay_by_position_shows_its_pick_and_needs_yes() {
    let app = crate::helpers::TestApp::spawn().await;
    for body in [&b"first"[..], b"second"] {
        dead_letter(&app, body).await;
    }
    let prefix = app.ctx.config.amqp_name_prefix.clone();
    let amqp = crate::helpers::amqp_url();
    let env = [
        ("AMQP_NAME_PREFIX", prefix.as_str()),
        ("AMQP_URL", amqp.as_str()),
    ];
    let listed = run_cli(&["dlq", "list"], &env).await;
    assert!(listed.status.success(), "{listed:?}");
    let listing = String::from_utf8_lossy(&listed.stdout).to_string();
    let ids: Vec<&str> = listing
        .split_whitespace()
        .filter(|w| w.starts_with("sha256:"))
        .collect();
    assert_eq!(ids.len(), 2, "{listing}");

    // Without --yes: the pick is shown, nothing replayed, exit 2.
    let out = run_cli(&["dlq", "replay", "--position", "1"], &env).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("position 1 is {}: bad input", ids[0])),
        "{out:?}"
    );
    assert_usage_error(&out, &["add --yes", ids[0]]);
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 2);

    // With --yes: the pick is shown and replayed by its id. Which message position 1 is now
    // is the broker's business (a quorum queue puts what a partial listing returned at the
    // back), which is why positions are only for looking.
    let out = run_cli(&["dlq", "replay", "--position", "1", "--yes"], &env).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("replayed 1, failed 0"), "{stdout}");
    let picked = stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .map(|w| w.trim_end_matches(':'))
        .unwrap_or_default();
    assert!(ids.contains(&picked), "{stdout}");
    assert_eq!(app.queue_depth(&app.topology.commands_dlq).await, 1);
    // The other one, by its id, which did not change when its position did.
    let other = ids.iter().find(|id| **id != picked).unwrap();
    let out = run_cli(&["dlq", "show", other, "--json"], &env).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"position\": 1"),
        "{out:?}"
    );
    let out = run_cli(&["dlq", "show", picked], &env).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_limit_out_of_range_is_a_usage_error() {
    for args in [
        &["dlq", "list", "--limit", "0"][..],
        &["dlq", "list", "--limit", "1001"],
        &["webhooks", "list", "--failed", "--limit", "0"],
        &["webhooks", "list", "--failed", "--limit=-3"],
        &["webhooks", "list", "--failed", "--limit", "1001"],
    ] {
        let out = run_cli(args, &[]).await;
        assert_usage_error(&out, &["--limit"]);
    }
}

/// Publishes `body` into the commands' dead-letter queue with the reason "bad input".
async fn dead_letter(app: &crate::helpers::TestApp, body: &[u8]) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use refund_worker::broker::publisher::Outgoing;
    let mut headers = FieldTable::default();
    headers.insert(
        refund_worker::broker::ERROR_HEADER.into(),
        AMQPValue::LongString(LongString::from("bad input")),
    );
    app.publisher
        .publish(Outgoing {
            exchange: &app.topology.dlx,
            routing_key: &app.topology.commands_dlq,
            payload: body,
            properties: lapin::BasicProperties::default().with_headers(headers),
        })
        .await
        .unwrap();
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn read_commands_have_json_a_header_row_and_say_when_truncated() {
    use crate::helpers::*;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mut app = TestApp::spawn().await;
    dead_letter(&app, b"first").await;
    dead_letter(&app, b"second").await;
    let prefix = app.ctx.config.amqp_name_prefix.clone();
    let amqp = amqp_url();
    let database = app.ctx.config.database_url.clone();
    let env = [
        ("AMQP_NAME_PREFIX", prefix.as_str()),
        ("AMQP_URL", amqp.as_str()),
        ("DATABASE_URL", database.as_str()),
    ];

    let text = stdout(&run_cli(&["dlq", "list", "--limit", "1"], &env).await);
    assert!(text.contains("POS  ID"), "{text}");
    assert!(text.contains("(showing 1 of 2;"), "{text}");
    let listing: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&["dlq", "list", "--limit", "1", "--json"], &env).await,
    ))
    .unwrap();
    assert_eq!(listing["truncated"], true, "{listing}");
    assert_eq!(listing["depth"], 2);
    let id = listing["items"][0]["id"].as_str().unwrap().to_string();
    let text = stdout(&run_cli(&["dlq", "show", &id], &env).await);
    assert!(text.contains(&format!("id:          {id}")), "{text}");
    assert!(text.contains("reason:      bad input"), "{text}");
    let shown: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&["dlq", "show", &id, "--json"], &env).await,
    ))
    .unwrap();
    assert_eq!(shown["id"], id.as_str());

    // Two failed merchant webhooks (the merchant answers 410 Gone).
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&merchant)
        .await;
    app.start_worker();
    let r = reference("cli-list");
    let mut cmd = va_command(&r, "1.00");
    cmd["callbackUrl"] = serde_json::json!(merchant.uri());
    app.publish(&cmd).await;
    app.eventually("both failed", || async {
        let d = app.deliveries(&r).await;
        d.len() == 2 && d.iter().all(|d| d.state == "failed")
    })
    .await;
    let args = ["webhooks", "list", "--failed", "--limit", "1"];
    let text = stdout(&run_cli(&args, &env).await);
    assert!(text.starts_with("EVENT ID"), "{text}");
    assert!(
        text.contains("(more failed deliveries than the 1 shown;"),
        "{text}"
    );
    let listing: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&[&args[..], &["--json"]].concat(), &env).await,
    ))
    .unwrap();
    assert_eq!(listing["truncated"], true, "{listing}");
    assert_eq!(listing["items"].as_array().map(Vec::len), Some(1));
    let all = stdout(&run_cli(&["webhooks", "list", "--failed", "--json"], &env).await);
    assert!(all.contains("\"truncated\": false"), "{all}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_time_option_says_what_it_expects_and_takes_a_plain_date() {
    let out = run_cli(
        &["webhooks", "resend", "--since", "yesterday", "--dry-run"],
        &[],
    )
    .await;
    assert_usage_error(&out, &["--since", "RFC 3339", "2026-03-01, midnight UTC"]);
    let help = run_cli(&["webhooks", "resend", "--help"], &[]).await;
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("RFC 3339"),
        "{help:?}"
    );
    // A plain date gets past parsing (to the database, which is not there: exit 1, not 2).
    let env = [("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")];
    let args = [
        "webhooks",
        "resend",
        "--since",
        "2026-03-01",
        "--until",
        "2026-03-02",
    ];
    let out = run_cli(&[&args[..], &["--dry-run"]].concat(), &env).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
