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
    // Not found is its own exit code (4), apart from usage errors (2).
    let out = run_cli(&["dlq", "show", picked], &env).await;
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // The one-shot commands close their broker connection: no lapin I/O loop outliving the
    // runtime ("A Tokio 1.x context was found, but it is being shutdown").
    assert!(
        !String::from_utf8_lossy(&listed.stderr).contains("Tokio"),
        "{listed:?}"
    );
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
    // A plain date gets past parsing (to the database, which is not there: exit 5, not 2).
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
    assert_eq!(out.status.code(), Some(5), "{out:?}");
}

/// Asserts exit code `code` and a standard error containing every one of `needles`.
fn assert_exit(out: &std::process::Output, code: i32, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in:\n{stderr}");
    }
    stderr
}

#[tokio::test]
async fn an_unreachable_database_or_broker_is_exit_5_naming_the_setting_target_and_cause() {
    // A closed port: the cause, once, not sqlx's "pool timed out".
    let env = [(
        "DATABASE_URL",
        "postgres://worker:pg-pw-1@127.0.0.1:1/refunds_db",
    )];
    let out = run_cli(&["refunds", "show", "R1"], &env).await;
    let stderr = assert_exit(
        &out,
        5,
        &[
            "DATABASE_URL",
            "127.0.0.1:1/refunds_db",
            "connection refused",
        ],
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    assert!(!stderr.contains("pg-pw-1"), "{stderr}");
    // A database that does not exist: the server's own words.
    let database = format!(
        "{}/rw_cli_missing_{}",
        pg_server(),
        uuid::Uuid::new_v4().simple()
    );
    let out = run_cli(&["refunds", "list"], &[("DATABASE_URL", database.as_str())]).await;
    assert_exit(&out, 5, &["DATABASE_URL", "does not exist"]);
    // A vhost that does not exist: an error naming it, at once, once, with no lapin noise.
    let url = amqp_url_with_vhost("no-such-vhost");
    let out = run_cli(&["dlq", "list"], &[("AMQP_URL", url.as_str())]).await;
    let stderr = assert_exit(&out, 5, &["AMQP_URL", "vhost no-such-vhost not found"]);
    assert_eq!(stderr.matches("not found").count(), 1, "{stderr}");
    assert!(!stderr.contains("Tokio"), "{stderr}");
    // A dead-letter queue no worker declared (another prefix): not found, with a hint.
    let prefix = format!("never{}.", uuid::Uuid::new_v4().simple());
    let out = run_cli(&["dlq", "list"], &[("AMQP_NAME_PREFIX", prefix.as_str())]).await;
    assert_exit(&out, 4, &["does not exist", "AMQP_NAME_PREFIX"]);
    // A non-PostgreSQL URL is refused as configuration, before any connection.
    let out = run_cli(
        &["refunds", "list"],
        &[("DATABASE_URL", "mysql://root:pw@127.0.0.1/x")],
    )
    .await;
    let stderr = assert_exit(&out, 1, &["DATABASE_URL must start with postgres://"]);
    assert!(!stderr.contains(":pw@"), "{stderr}");
}

/// The test broker's URL with another vhost.
fn amqp_url_with_vhost(vhost: &str) -> String {
    let mut url = url::Url::parse(&crate::helpers::amqp_url()).unwrap();
    url.set_path(&format!("/{vhost}"));
    url.to_string()
}

#[tokio::test]
async fn run_refuses_a_missing_vhost_an_unusable_secret_and_a_busy_port_naming_them() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database_url = format!("{}/rw_cli_{id}", pg_server());
    let vhost = amqp_url_with_vhost("no-such-vhost");
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("AMQP_URL", vhost.as_str()),
        ("HTTP_ADDR", "127.0.0.1:0"),
    ];
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run_cli(&["run"], &env))
        .await
        .expect("run stops at once instead of retrying for ever");
    assert_exit(&out, 5, &["AMQP_URL", "vhost no-such-vhost not found"]);

    // A Binance Pay webhook key that is not a PEM key: named, never printed.
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("PROVIDER_BINANCE_PAY_BASE_URL", "http://127.0.0.1:1"),
        ("PROVIDER_BINANCE_PAY_API_KEY", "k"),
        ("PROVIDER_BINANCE_PAY_WEBHOOK_SECRET", "secret-not-a-key-42"),
    ];
    let out = run_cli(&["run"], &env).await;
    let stderr = assert_exit(&out, 1, &["PROVIDER_BINANCE_PAY_WEBHOOK_SECRET", "PEM"]);
    assert!(!stderr.contains("secret-not-a-key-42"), "{stderr}");
    let out = run_cli(&["run"], &[("WEBHOOK_SIGNING_SECRET", "plain-secret-43")]).await;
    let stderr = assert_exit(&out, 1, &["WEBHOOK_SIGNING_SECRET", "whsec_"]);
    assert!(!stderr.contains("plain-secret-43"), "{stderr}");

    // A busy port: named.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let env = [
        ("DATABASE_URL", database_url.as_str()),
        ("HTTP_ADDR", addr.as_str()),
    ];
    let out = run_cli(&["run"], &env).await;
    let port = addr.rsplit(':').next().unwrap();
    assert_exit(
        &out,
        1,
        &["HTTP_ADDR", &format!("port {port} is already in use")],
    );
    drop_database(&id).await;
}

async fn drop_database(id: &str) {
    let admin = store::connect(&format!("{}/postgres", pg_server()), 1)
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS rw_cli_{id} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn run_logs_its_start_in_json_values_and_takes_a_host_name_in_http_addr() {
    use tokio::io::AsyncBufReadExt;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let database_url = format!("{}/rw_cli_{id}", pg_server());
    let amqp = crate::helpers::amqp_url();
    let prefix = format!("cli{id}.");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let http_addr = format!("localhost:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_refund-worker"))
        .arg("run")
        .env("DATABASE_URL", &database_url)
        .env("AMQP_URL", &amqp)
        .env("AMQP_NAME_PREFIX", &prefix)
        .env("HTTP_ADDR", &http_addr)
        .env("LOG_FORMAT", "json")
        .env("PROVIDER_BPN_BASE_URL", "http://127.0.0.1:1")
        .env("PROVIDER_BPN_API_KEY", "k")
        .env("SHUTDOWN_GRACE_SECS", "2")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let started = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let done = value["message"] == "connected to the broker, consuming";
            seen.push(value);
            if done {
                return;
            }
        }
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status();
    // The shutdown's lines too, and no lapin I/O error at exit.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await
    {
        seen.push(serde_json::from_str(&line).unwrap_or(serde_json::json!({"raw": line})));
    }
    let status = child.wait().await.unwrap();
    assert!(started.is_ok(), "{seen:#?}");
    assert!(status.success(), "{status:?} {seen:#?}");
    let find = |message: &str| {
        seen.iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
            })
            .unwrap_or_else(|| panic!("no `{message}` line in {seen:#?}"))
            .clone()
    };
    assert_eq!(find("HTTP listening")["addr"], format!("127.0.0.1:{port}"));
    find("admin API off");
    find("migrations applied");
    assert_eq!(find("providers configured")["providers"], "bpn");
    let warn = find("no webhook secret");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["variable"], "PROVIDER_BPN_WEBHOOK_SECRET");
    assert_eq!(find("shutting down")["grace_secs"], 2);
    let text = format!("{seen:?}");
    assert!(!text.contains("Tokio"), "{seen:#?}");
    assert!(
        !text.contains("Some("),
        "Rust Debug text in a JSON log: {seen:#?}"
    );
    drop_database(&id).await;
}

#[tokio::test]
async fn refunds_list_and_show_have_utc_times_event_ids_callback_and_deliveries() {
    use crate::helpers::*;
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let mut app = TestApp::spawn().await;
    let database = app.ctx.config.database_url.clone();
    let env = [("DATABASE_URL", database.as_str())];
    let merchant = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&merchant)
        .await;
    app.start_worker();
    let first = reference("cli-a");
    let second = reference("cli-b");
    let mut cmd = va_command(&first, "1.00");
    cmd["callbackUrl"] = serde_json::json!(merchant.uri());
    app.publish(&cmd).await;
    app.publish(&va_command(&second, "2.00")).await;
    app.wait_final(&first).await;
    app.wait_final(&second).await;
    app.eventually("deliveries given up", || async {
        let d = app.deliveries(&first).await;
        !d.is_empty() && d.iter().all(|d| d.state == "failed")
    })
    .await;

    let text = stdout(&run_cli(&["refunds", "list"], &env).await);
    let mut rows = text.lines();
    assert!(
        rows.next().unwrap().starts_with("REFUND REFERENCE"),
        "{text}"
    );
    assert!(text.contains(&first) && text.contains(&second), "{text}");
    assert!(text.contains("Z "), "full UTC timestamps: {text}");
    let page: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&["refunds", "list", "--limit", "1", "--json"], &env).await,
    ))
    .unwrap();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let next: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&["refunds", "list", "--json", "--cursor", &cursor], &env).await,
    ))
    .unwrap();
    assert_eq!(next["items"].as_array().map(Vec::len), Some(1), "{next}");
    assert_ne!(
        page["items"][0]["refundReference"],
        next["items"][0]["refundReference"]
    );
    let none: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(
            &[
                "refunds",
                "list",
                "--json",
                "--status",
                "REFUND_FAIL",
                "--since",
                "2020-01-01",
            ],
            &env,
        )
        .await,
    ))
    .unwrap();
    assert_eq!(none["items"], serde_json::json!([]), "{none}");
    let reviewed = stdout(&run_cli(&["refunds", "list", "--review", "--json"], &env).await);
    assert!(reviewed.contains("\"items\": []"), "{reviewed}");
    let out = run_cli(&["refunds", "list", "--status", "DONE"], &env).await;
    assert_usage_error(&out, &["DONE", "PENDING, COMPLETED, REFUND_FAIL"]);
    let out = run_cli(&["refunds", "list", "--cursor", "nope"], &env).await;
    assert_usage_error(&out, &["--cursor"]);

    let text = stdout(&run_cli(&["refunds", "show", &first], &env).await);
    let view: serde_json::Value = serde_json::from_str(&stdout(
        &run_cli(&["refunds", "show", &first, "--json"], &env).await,
    ))
    .unwrap();
    assert_eq!(view["callbackUrl"], merchant.uri(), "{view}");
    let event_id = view["transitions"][0]["eventId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains(&format!("event {event_id}")), "{text}");
    assert!(
        text.contains(&format!("callback     {}", merchant.uri())),
        "{text}"
    );
    let accepted = view["refund"]["createdAt"].as_str().unwrap();
    assert!(accepted.ends_with('Z') && accepted.contains('T'), "{view}");
    let delivery = &view["deliveries"][0];
    assert_eq!(delivery["state"], "failed", "{view}");
    let delivered_event = delivery["eventId"].as_str().unwrap();
    assert!(
        text.contains(&format!("event {delivered_event}")) && text.contains("failed"),
        "{text}"
    );
    assert!(text.contains("last HTTP 410"), "{text}");
    let out = run_cli(&["refunds", "show", "no-such-refund"], &env).await;
    assert_exit(
        &out,
        4,
        &["no refund with refundReference `no-such-refund`"],
    );
    app.cleanup().await;
}

#[tokio::test]
async fn submit_refuses_flags_it_would_ignore_and_a_currency_it_would_guess() {
    let out = run_cli(&["submit", "--file", "cmd.json", "--amount", "3"], &[]).await;
    assert_usage_error(&out, &["--file", "cannot be used with", "--amount"]);
    let out = run_cli(&["submit", "--file", "-", "--provider", "bvnk"], &[]).await;
    assert_usage_error(&out, &["--provider"]);
    let out = run_cli(
        &[
            "submit",
            "--provider",
            "bvnk",
            "--transaction",
            "T",
            "--amount",
            "3",
        ],
        &[],
    )
    .await;
    assert_usage_error(&out, &["--currency is required with --provider bvnk"]);
    let out = run_cli(&["submit", "--provider", "paypal"], &[]).await;
    assert_usage_error(&out, &["paypal", "va_services"]);
}

#[tokio::test]
async fn every_setting_is_a_flag_of_run_listed_with_its_default() {
    let help = run_cli(
        &["run", "--help"],
        &[("ADMIN_TOKEN", "a-secret-admin-token-1")],
    )
    .await;
    let text = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(help.status.success(), "{help:?}");
    for needle in [
        "--database-url",
        "[env: DATABASE_URL]",
        "--http-addr",
        "[default: 127.0.0.1:8080]",
        "--provider-binance-pay-webhook-secret",
        "--admin-token",
        "--log-format",
    ] {
        assert!(text.contains(needle), "`{needle}` not in:\n{text}");
    }
    assert!(!text.contains("a-secret-admin-token-1"), "{text}");
    // A flag is used (and wins over the environment).
    let out = run_cli(
        &["run", "--database-url", "mysql://root@127.0.0.1/x"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")],
    )
    .await;
    assert_exit(&out, 1, &["DATABASE_URL must start with postgres://"]);
    let out = run_cli(&["run", "--prefetch", "lots"], &[]).await;
    assert_exit(&out, 1, &["PREFETCH must be a whole number"]);
}
