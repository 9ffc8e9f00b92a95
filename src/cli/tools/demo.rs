//! `refund-worker demo`: a guided tour on the local machine.
//!
//! Starts the provider sandbox and a worker in-process (against the configured PostgreSQL
//! and RabbitMQ, under a throw-away exchange/queue prefix), pushes a scripted set of
//! refunds through every path (success, partial refunds, the over-refund guard, duplicates,
//! provider errors and timeouts, invalid input, dead letters, BPN partial refunds, an outage
//! and its recovery, a reconciliation with a planted mismatch), prints each refund's journey
//! and a summary, cleans up, and exits non-zero if any refund ended unexpectedly, so the
//! demo doubles as a smoke test.

use crate::app::{App, RunningApp};
use crate::broker::publisher::json_properties;
use crate::broker::{self, topology, Publisher, Topology, ERROR_HEADER};
use crate::config::Config;
use crate::domain::{FailureCode, RefundEvent, RefundStatus};
use crate::pipeline::Context;
use crate::providers::Providers;
use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use refund_sandbox::{
    Faults, ForcedOutcome, OutcomeStatus, Provider as SandboxProvider, Sandbox, SandboxConfig,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Flags of `demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long to wait for one refund to reach a final status, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// After the summary, keep the worker, the sandbox and the HTTP server (admin API and
    /// operations console) running until ctrl-c, to look around in the console.
    #[arg(long)]
    keep: bool,
}

/// What a scenario expects.
enum Expect {
    Final(RefundStatus, Option<FailureCode>),
    /// `REFUND_FAIL` with any of these codes: a refusal that either of two guards may make
    /// first, depending on which notification has arrived.
    FailsWithAnyOf(&'static [FailureCode]),
    Duplicate,
    DeadLetter,
}

impl Expect {
    /// Whether a final event with this status and failure code is what was expected.
    fn accepts(&self, status: RefundStatus, code: Option<FailureCode>) -> bool {
        match self {
            Expect::Final(want, want_code) => status == *want && code == *want_code,
            Expect::FailsWithAnyOf(codes) => {
                status == RefundStatus::RefundFail && code.is_some_and(|c| codes.contains(&c))
            }
            Expect::Duplicate | Expect::DeadLetter => false,
        }
    }
}

/// How an order with nothing left to refund is refused: by the over-refund guard reading the
/// pay-ins ledger, or by the BPN adapter's order lookup when the pay-in is not in it yet.
const ALREADY_REFUNDED: &[FailureCode] = &[
    FailureCode::AmountExceedsRefundable,
    FailureCode::NotRefundable,
];

/// Prepares the sandbox for a scenario (faults, forced outcomes), given the refund reference.
type Setup = Box<dyn Fn(&Sandbox, &str) + Send>;

struct Scenario {
    title: &'static str,
    command: Value,
    setup: Option<Setup>,
    expect: Expect,
}

struct Row {
    title: &'static str,
    reference: String,
    outcome: String,
    attempts: String,
    provider_submits: String,
    ok: bool,
}

/// Runs the demo.
pub(super) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    // Recovery and reconciliation look at this run's refunds only (the database is shared).
    let demo_started = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    // refund-worker's HTTP server (the provider webhook ingress), bound first so the
    // sandbox's providers know where to send their signed notifications.
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http_listener.local_addr()?;
    let sandbox_config = SandboxConfig {
        completion_delay: Duration::from_millis(400),
        hang: Duration::from_millis(2_500),
        webhook_url: Some(format!("http://{http_addr}")),
        // Providers misbehave a little: every path of the ingress is exercised.
        webhook_duplicate_rate: 0.2,
        webhook_reorder_rate: 0.2,
        webhook_bad_signature_rate: 0.1,
        // Only the endpoints the providers' docs define, as at a real provider: VA's
        // "HTTP 500 twice, then accepts" finds no Refund Details at our guessed path and
        // falls back to the documented "not found" before resubmitting.
        strict: true,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config.clone());
    let sandbox_stop = CancellationToken::new();
    let stop = sandbox_stop.clone();
    let (addr, _) = sandbox
        .spawn(0, async move { stop.cancelled().await })
        .await?;

    // A merchant endpoint on loopback that checks every webhook's signature.
    let webhook_secret = crate::merchant_webhooks::signing::SigningKey::generate_secret();
    let merchant = Merchant::start(&webhook_secret).await?;
    // The demo's own admin token (random, this run only): the admin API and the operations
    // console are served on the HTTP address.
    let admin_token = format!(
        "demo-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );

    // The environment decides where PostgreSQL and RabbitMQ are; the demo decides the rest.
    let mut overrides: HashMap<String, String> = [
        ("AMQP_NAME_PREFIX", format!("demo-{run_id}.")),
        ("RETRY_INITIAL_MS", "200".into()),
        ("RETRY_MAX_MS", "1000".into()),
        ("POLL_INITIAL_MS", "250".into()),
        ("POLL_MAX_MS", "500".into()),
        ("IDLE_POLL_MS", "100".into()),
        ("WEBHOOK_SIGNING_SECRET", webhook_secret.clone()),
        ("WEBHOOK_DEFAULT_URL", merchant.url.clone()),
        ("WEBHOOK_TIMEOUT_MS", "2000".into()),
        // The merchant endpoint is on loopback, which callbacks may not reach by default.
        ("WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8".into()),
        ("ADMIN_TOKEN", admin_token.clone()),
        // Stopping the worker (the outage, ctrl-c after --keep) waits at most this long.
        ("SHUTDOWN_GRACE_SECS", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // Every provider points at the sandbox, with the sandbox's credentials.
    overrides.extend(sandbox_config.provider_env(addr));
    // The webhook re-send calls' paths are our guesses (the docs name the endpoints, not
    // their paths), so a strict provider does not serve them: recovery here relies on the
    // documented status lookups alone.
    if sandbox_config.strict {
        for key in [
            "PROVIDER_BPN_RESEND_WEBHOOK_PATH",
            "PROVIDER_VA_SERVICES_SEND_NOTIFICATION_PATH",
        ] {
            overrides.insert(key.to_owned(), "off".to_owned());
        }
    }
    let config = Config::from_lookup(|k| {
        overrides.get(k).cloned().or_else(|| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty() && !k.starts_with("PROVIDER_"))
        })
    })?;
    println!("refund-worker demo (run {run_id})");
    println!(
        "  provider sandbox  http://{addr}  (VA Services, BPN, Binance Pay, BVNK{})",
        if sandbox_config.strict {
            "; strict: only the endpoints their docs define"
        } else {
            ""
        }
    );
    println!("  webhook ingress   http://{http_addr}/webhooks/<provider>  (the sandbox's providers call it;");
    println!("                    10% of their signatures are forged on purpose: the WARN lines are the ingress refusing them)");
    println!(
        "  merchant endpoint {}  (verifies every webhook signature)",
        merchant.url
    );
    println!("  console           http://{http_addr}/console  (token: {admin_token}; `demo --keep` keeps it up after the summary)");
    println!("  database          {}", redact_url(&config.database_url));
    println!(
        "  broker            {}  (exchanges and queues prefixed `demo-{run_id}.`)\n",
        redact_url(&config.amqp_url)
    );

    // Built as `run` builds it, on the listener the sandbox already knows; the gauges that
    // /metrics (and the console's overview) show are sampled often, the demo is short.
    let app = App::builder(config.clone())
        .listener(http_listener)
        .metrics_every(Duration::from_secs(2))
        .build()
        .await?;
    let pool = app.context().pool.clone();
    let topology = app.context().topology.clone();
    let connection = broker::connect(&config.amqp_url, "refund-worker-demo")
        .await
        .context("connecting to RabbitMQ (is it running? see README)")?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let events_queue = format!("{}events", config.amqp_name_prefix);
    topology::subscribe_status_events(&channel, &topology.exchange, &events_queue, false).await?;
    let mut events = channel
        .basic_consume(
            events_queue.as_str().into(),
            "demo".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let publisher = Publisher::open(&connection).await?;

    let worker_stop = CancellationToken::new();
    let running = app.start(worker_stop.clone());
    let mut rows = Vec::new();
    let mut seen: Vec<RefundEvent> = Vec::new();
    let wait = Duration::from_secs(args.timeout_secs);
    for (i, scenario) in scenarios(&run_id).into_iter().enumerate() {
        let reference = scenario
            .command
            .get("refundReference")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string();
        println!("{:>2}. {}", i + 1, scenario.title);
        if let Some(setup) = &scenario.setup {
            setup(&sandbox, &reference);
        }
        let body = match &scenario.command {
            Value::String(raw) => raw.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let started = Instant::now();
        publisher
            .publish(broker::publisher::Outgoing {
                exchange: &topology.exchange,
                routing_key: topology::COMMAND_ROUTING_KEY,
                payload: &body,
                properties: json_properties(&uuid::Uuid::new_v4().to_string()),
            })
            .await
            .context("publishing a command")?;
        let row = match scenario.expect {
            ref expect @ (Expect::Final(..) | Expect::FailsWithAnyOf(_)) => {
                let journey = follow(&mut events, &mut seen, &reference, started, wait).await;
                let last = journey.last();
                let ok = last.is_some_and(|e| {
                    expect.accepts(e.status, e.failure_reason.as_ref().map(|f| f.code))
                });
                // BPN knows a refund only by its order (the command's transactionReference).
                let order = scenario
                    .command
                    .get("transactionReference")
                    .and_then(Value::as_str);
                let ledger = sandbox.ledger();
                let submits = ledger
                    .refund(&reference)
                    .or_else(|| {
                        ledger.refunds.iter().find(|r| {
                            r.provider == SandboxProvider::Bpn
                                && Some(r.refund_reference.as_str()) == order
                        })
                    })
                    .map(|r| r.submit_count)
                    .unwrap_or(0);
                Row {
                    title: scenario.title,
                    reference: reference.clone(),
                    outcome: last
                        .map(outcome_text)
                        .unwrap_or_else(|| "no final event".into()),
                    attempts: last.map(|e| e.attempts.to_string()).unwrap_or_default(),
                    provider_submits: submits.to_string(),
                    ok,
                }
            }
            Expect::Duplicate => {
                // Give the worker time to (not) act on it, then check nothing happened.
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                while let Ok(Some(Ok(d))) =
                    tokio::time::timeout(Duration::from_millis(100), events.next()).await
                {
                    if let Ok(e) = serde_json::from_slice::<RefundEvent>(&d.data) {
                        seen.push(e);
                    }
                }
                let new_events = seen
                    .iter()
                    .filter(|e| {
                        e.refund_reference == reference
                            && e.occurred_at
                                > chrono::Utc::now() - chrono::Duration::milliseconds(1_600)
                    })
                    .count();
                let submits = sandbox
                    .ledger()
                    .refund(&reference)
                    .map(|r| r.submit_count)
                    .unwrap_or(0);
                println!("      acknowledged as a duplicate: no new event, the provider saw the refund {submits} time(s)");
                Row {
                    title: scenario.title,
                    reference: reference.clone(),
                    outcome: "duplicate, acknowledged".into(),
                    attempts: "-".into(),
                    provider_submits: submits.to_string(),
                    ok: new_events == 0 && submits == 1,
                }
            }
            Expect::DeadLetter => {
                let reason = dead_letter(&connection, &topology).await?;
                println!(
                    "      dead-lettered to {} with {ERROR_HEADER}: {}",
                    topology.commands_dlq,
                    reason.as_deref().unwrap_or("(none)")
                );
                Row {
                    title: scenario.title,
                    reference: "-".into(),
                    outcome: "dead letter".into(),
                    attempts: "-".into(),
                    provider_submits: "0".into(),
                    ok: reason.is_some(),
                }
            }
        };
        rows.push(row);
        println!();
    }

    // Every status event is also a signed merchant webhook.
    let events: std::collections::HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while merchant.verified_events() < events.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (verified, rejected) = (merchant.verified_events(), merchant.rejected());
    println!(
        "merchant webhooks: {verified} of {} events delivered with a valid signature, {rejected} rejected\n",
        events.len()
    );
    rows.push(Row {
        title: "every event delivered as a signed webhook",
        reference: "-".into(),
        outcome: format!("{verified}/{} verified", events.len()),
        attempts: "-".into(),
        provider_submits: "-".into(),
        ok: verified == events.len() && rejected == 0,
    });

    // The providers' own webhooks: forged copies must all have been refused.
    let w = sandbox.ledger().webhooks;
    println!(
        "provider webhooks: {} delivered to the ingress ({} sent twice on purpose, {} held back to arrive out of order), {} forged signatures sent, {} refused\n",
        w.delivered, w.duplicates, w.reordered, w.bad_signatures, w.bad_signatures_refused
    );
    rows.push(Row {
        title: "provider webhooks with forged signatures all refused",
        reference: "-".into(),
        outcome: format!("{}/{} refused", w.bad_signatures_refused, w.bad_signatures),
        attempts: "-".into(),
        provider_submits: "-".into(),
        ok: w.bad_signatures == w.bad_signatures_refused && w.abandoned == 0,
    });

    if args.keep {
        // The outage part stops the worker, which --keep is there to keep: it is left out.
        println!("(--keep: the outage, recovery and reconciliation part is left out: it stops the worker)\n");
        print_summary(&rows);
        println!("\nconsole: http://{http_addr}/console (token: {admin_token})");
        println!("the worker, the sandbox and the HTTP server keep running; ctrl-c stops them and cleans up");
        tokio::signal::ctrl_c().await?;
        println!();
        worker_stop.cancel();
        running.stopped().await;
    } else {
        // An outage (the worker and its ingress down), recovery, and a reconciliation; it
        // stops the worker.
        rows.extend(
            outage_recovery_and_reconcile(OutageDemo {
                run: &run_id,
                since: demo_started,
                sandbox: &sandbox,
                publisher: &publisher,
                topology: &topology,
                worker_stop: &worker_stop,
                running,
                pool: &pool,
                config: &config,
                wait,
            })
            .await?,
        );
    }
    merchant.stop.cancel();
    let _ = topology.delete(&channel).await;
    let _ = connection.close(200, "demo done".into()).await;
    sandbox_stop.cancel();

    if !args.keep {
        print_summary(&rows);
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    let ledger = sandbox.ledger();
    println!(
        "\nprovider ledger: {} refunds recorded, {} refund calls, {} status calls, {} injected failures",
        ledger.refunds.len(),
        ledger.submit_calls,
        ledger.status_calls,
        ledger.injected_failures + ledger.injected_rejects + ledger.injected_timeouts
    );
    println!("inspect any refund with: refund-worker refunds show <refundReference>");
    if failed == 0 {
        println!("\nall {} scenarios ended as expected", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failed} scenario(s) did not end as expected");
        Ok(ExitCode::FAILURE)
    }
}

/// Prints events of `reference` as they arrive, until a final one (or the wait ends).
async fn follow(
    events: &mut lapin::Consumer,
    seen: &mut Vec<RefundEvent>,
    reference: &str,
    started: Instant,
    wait: Duration,
) -> Vec<RefundEvent> {
    let deadline = started + wait;
    let mut journey = Vec::new();
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            println!("      (no final status within {wait:?})");
            return journey;
        };
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(left, events.next()).await else {
            continue;
        };
        let Ok(event) = serde_json::from_slice::<RefundEvent>(&delivery.data) else {
            continue;
        };
        seen.push(event.clone());
        if event.refund_reference != reference {
            continue;
        }
        println!(
            "      {:>6} ms  {}",
            started.elapsed().as_millis(),
            outcome_text(&event)
        );
        let done = event.status.is_final();
        journey.push(event);
        if done {
            return journey;
        }
    }
}

fn outcome_text(e: &RefundEvent) -> String {
    match &e.failure_reason {
        Some(f) => format!("{} {}: {}", e.status, f.code.as_str(), f.message),
        None => format!(
            "{} {} {} (attempts {})",
            e.status,
            e.amount.as_deref().unwrap_or("-"),
            e.currency.as_deref().unwrap_or(""),
            e.attempts
        ),
    }
}

async fn dead_letter(
    connection: &lapin::Connection,
    topology: &Topology,
) -> anyhow::Result<Option<String>> {
    let channel = connection.create_channel().await?;
    for _ in 0..50 {
        if let Some(msg) = channel
            .basic_get(
                topology.commands_dlq.as_str().into(),
                BasicGetOptions::default(),
            )
            .await?
        {
            msg.delivery.ack(BasicAckOptions::default()).await?;
            return Ok(topology::header_str(
                msg.delivery.properties.headers(),
                ERROR_HEADER,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// What the outage part of the demo needs.
struct OutageDemo<'a> {
    run: &'a str,
    since: chrono::DateTime<chrono::Utc>,
    sandbox: &'a Sandbox,
    publisher: &'a Publisher,
    topology: &'a Topology,
    worker_stop: &'a CancellationToken,
    running: RunningApp,
    pool: &'a sqlx::PgPool,
    config: &'a Config,
    wait: Duration,
}

/// An outage and what brings the refunds back: a BVNK refund waits for 4-eyes approval, the
/// worker (and its webhook ingress) goes down, BVNK's operator approves, BVNK's webhook finds
/// nobody listening (and no poll runs); `recover` asks BVNK and the refund completes. Then a
/// reconciliation finds one planted mismatch: Binance Pay is made to report a refund we
/// completed as failed. Stops the worker.
async fn outage_recovery_and_reconcile(d: OutageDemo<'_>) -> anyhow::Result<Vec<Row>> {
    use crate::pipeline::{reconcile, recover};
    let mut rows = Vec::new();
    let reference = format!("demo-{}-outage", d.run);
    let title = "outage: BVNK approves while the worker is down, recover finishes";
    println!("    {title}");
    d.sandbox.bvnk_four_eyes(true);
    let command = json!({
        "refundReference": reference,
        "provider": "bvnk",
        "transactionReference": format!("demo-{}-payin-outage", d.run),
        "amount": "30",
        "currency": "EUR",
        "reason": "Order cancelled!"
    });
    let started = Instant::now();
    d.publisher
        .publish(broker::publisher::Outgoing {
            exchange: &d.topology.exchange,
            routing_key: topology::COMMAND_ROUTING_KEY,
            payload: command.to_string().as_bytes(),
            properties: json_properties(&uuid::Uuid::new_v4().to_string()),
        })
        .await
        .context("publishing a command")?;
    // Until BVNK holds it, waiting for approval.
    let deadline = started + d.wait;
    while d.sandbox.ledger().refund(&reference).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.sandbox.bvnk_four_eyes(false);
    println!(
        "      {:>6} ms  BVNK holds the refund, waiting for approval",
        started.elapsed().as_millis()
    );
    d.worker_stop.cancel();
    d.running.stopped().await;
    println!(
        "      {:>6} ms  the worker and its webhook ingress are down",
        started.elapsed().as_millis()
    );
    if let Err(e) = d.sandbox.bvnk_approve(&reference) {
        println!("      (approval failed: {e})");
    }
    // BVNK completes it and tries to notify an ingress that is not there. Completed first:
    // other notifications (pay-ins) may be failing against the missing ingress already.
    let completed_at_bvnk = || {
        d.sandbox
            .ledger()
            .refund(&reference)
            .is_some_and(|r| r.status == "COMPLETED")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !completed_at_bvnk() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed_before = d.sandbox.ledger().webhooks.failed_attempts;
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.sandbox.ledger().webhooks.failed_attempts == failed_before && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = crate::store::refunds::show(d.pool, &reference)
        .await?
        .map(|v| v.refund.status)
        .unwrap_or_default();
    println!(
        "      {:>6} ms  BVNK approved and completed it; its webhook found no ingress; ours is still {before}",
        started.elapsed().as_millis()
    );
    let ctx = Context::new(
        d.pool.clone(),
        d.config.clone(),
        Providers::from_config(d.config)?,
    );
    let window = recover::Window {
        since: d.since,
        until: chrono::Utc::now() + chrono::TimeDelta::seconds(1),
        provider: None,
    };
    let progress = recover::Progress::default();
    let summary = recover::run(&ctx, &window, false, &progress).await?;
    let c = summary.counts;
    println!(
        "      refund-worker recover --since {}:",
        d.since.format("%Y-%m-%dT%H:%M:%SZ")
    );
    for line in crate::cli::recover::render(&summary).lines().skip(1) {
        println!("        {line}");
    }
    let resends_ok = crate::cli::recover::exit_code(&summary) == ExitCode::SUCCESS;
    let after = crate::store::refunds::show(d.pool, &reference).await?;
    let status = after
        .as_ref()
        .map(|v| v.refund.status.clone())
        .unwrap_or_default();
    // The relay is down with the worker: publish the outbox now (the event of the change
    // above), so no event of this run is left for a later run's relay, whose exchange this
    // run is about to delete.
    for _ in 0..50 {
        match crate::pipeline::relay::step(&ctx, d.publisher).await {
            Ok(crate::pipeline::relay::RelayOutcome::Published(_)) => continue,
            Ok(crate::pipeline::relay::RelayOutcome::Idle) => break,
            Err(e) => {
                println!("      (publishing the outbox failed: {e})");
                break;
            }
        }
    }
    println!("      after recovery: {status}, its event published");
    rows.push(Row {
        title,
        reference: reference.clone(),
        outcome: format!("{before} -> {status} (recover changed {})", c.changed),
        attempts: after
            .as_ref()
            .map(|v| v.refund.attempts.to_string())
            .unwrap_or_default(),
        provider_submits: d
            .sandbox
            .ledger()
            .refund(&reference)
            .map(|r| r.submit_count.to_string())
            .unwrap_or_default(),
        ok: before == "PENDING"
            && status == "COMPLETED"
            && c.changed >= 1
            && c.errors == 0
            && resends_ok,
    });
    println!();

    // Reconciliation with one planted mismatch: a refund we completed, reported failed.
    let planted = format!("demo-{}-20", d.run);
    let title = "reconcile: Binance Pay now reports a completed refund failed";
    println!("    {title}");
    d.sandbox.set_outcome(
        SandboxProvider::BinancePay,
        &planted,
        ForcedOutcome {
            status: OutcomeStatus::Failed,
        },
    );
    let report =
        reconcile::run(&ctx, crate::domain::ProviderName::BinancePay, Some(d.since)).await?;
    print!("{}", crate::cli::reconcile::render(&report));
    let found: Vec<(reconcile::MismatchKind, &str)> = report
        .mismatches
        .iter()
        .map(|m| (m.kind, m.refund_reference.as_str()))
        .collect();
    rows.push(Row {
        title,
        reference: planted.clone(),
        outcome: format!(
            "{} mismatch(es) of {} compared (exit code {})",
            report.mismatches.len(),
            report.compared,
            crate::cli::reconcile::EXIT_MISMATCHES
        ),
        attempts: "-".into(),
        provider_submits: "-".into(),
        ok: found == [(reconcile::MismatchKind::StatusDiffers, planted.as_str())]
            && report.errors.is_empty(),
    });
    println!();
    Ok(rows)
}

fn print_summary(rows: &[Row]) {
    println!("summary");
    println!(
        "  {:<2} {:<66} {:<24} {:>8} {:>8}  outcome",
        "", "scenario", "refundReference", "attempts", "provider"
    );
    for r in rows {
        let mut outcome = r.outcome.clone();
        if outcome.chars().count() > 60 {
            outcome = format!("{}...", outcome.chars().take(57).collect::<String>());
        }
        println!(
            "  {:<2} {:<66} {:<24} {:>8} {:>8}  {}",
            if r.ok { "ok" } else { "!!" },
            r.title,
            r.reference,
            r.attempts,
            r.provider_submits,
            outcome
        );
    }
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

fn scenarios(run: &str) -> Vec<Scenario> {
    let payment = format!("demo-{run}-payment");
    // VA Services: partial refunds of one payment, and every failure path.
    let va = |n: u32, amount: Value| {
        json!({
            "refundReference": format!("demo-{run}-{n}"),
            "provider": "va_services",
            "transactionReference": payment,
            "amount": amount,
            "currency": "NGN",
            "reason": "Order cancelled!",
            "customerNote": "An optional note",
            "destination": {"accountNumber": "0040088210", "bankCode": "000012"},
            "paymentAmount": "100.00"
        })
    };
    let other = |n: u32, amount: &str| {
        let mut c = va(n, json!(amount));
        c["transactionReference"] = json!(format!("demo-{run}-payment-{n}"));
        c.as_object_mut().map(|o| o.remove("paymentAmount"));
        c
    };
    let bpn_order = format!("DEMO-{run}-ORDER");
    let bpn = json!({
        "refundReference": format!("demo-{run}-bpn"),
        "provider": "bpn",
        "transactionReference": bpn_order,
        "amount": "25.17",
        "currency": "USD",
        "reason": "Order cancelled!"
    });
    // A second order, refunded in parts: by amount, then by pay-in reference.
    let bpn_order_2 = format!("DEMO-{run}-ORDER-2");
    let bpn_partial = {
        let order = bpn_order_2.clone();
        move |n: u32, amount: &str, pay_in: Option<&str>| {
            let mut c = json!({
                "refundReference": format!("demo-{run}-{n}"),
                "provider": "bpn",
                "transactionReference": order,
                "amount": amount,
                "currency": "USD",
                "reason": "Order cancelled!"
            });
            if let Some(p) = pay_in {
                c["metadata"] = json!({ "bpnPayInReference": p });
            }
            c
        }
    };
    // Binance Pay prepay ids are numeric, at most 19 digits.
    let prepay: u64 = u64::from_str_radix(&run[..8], 16).unwrap_or(1) % 1_000_000_000;
    let binance = |n: u32, amount: &str| {
        json!({
            "refundReference": format!("demo-{run}-{n}"),
            "provider": "binance_pay",
            "transactionReference": format!("38{prepay:09}{n:02}"),
            "amount": amount,
            "currency": "USDT",
            "reason": "Customer returned the goods"
        })
    };
    let bvnk = |n: u32, amount: &str| {
        json!({
            "refundReference": format!("demo-{run}-{n}"),
            "provider": "bvnk",
            "transactionReference": format!("demo-{run}-payin-{n}"),
            "amount": amount,
            "currency": "EUR",
            "reason": "Order cancelled!",
            "metadata": {"orderId": format!("ORD-{n}")}
        })
    };
    let exact: Value = serde_json::from_str("25.17").unwrap_or(Value::Null);
    let completed = Expect::Final(RefundStatus::Completed, None);
    let fails = |code| Expect::Final(RefundStatus::RefundFail, Some(code));
    let already_refunded = Expect::FailsWithAnyOf(ALREADY_REFUNDED);
    vec![
        Scenario {
            title: "refund of 25.17 (a JSON number) completes",
            command: va(1, exact.clone()),
            setup: None,
            expect: completed,
        },
        Scenario {
            title: "second partial refund on the same payment",
            command: va(2, json!("50.00")),
            setup: None,
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "third refund would exceed the payment",
            command: va(3, json!("30.00")),
            setup: None,
            expect: fails(FailureCode::AmountExceedsRefundable),
        },
        Scenario {
            title: "the first command again (redelivery)",
            command: va(1, exact),
            setup: None,
            expect: Expect::Duplicate,
        },
        Scenario {
            title: "provider answers HTTP 500 twice, then accepts",
            command: other(5, "10.00"),
            setup: Some(Box::new(|s, _| {
                s.inject(Faults {
                    fail_next: 2,
                    ..Faults::default()
                })
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "provider accepts, then times out",
            command: other(6, "10.00"),
            setup: Some(Box::new(|s, _| {
                s.inject(Faults {
                    timeout_after_accept_next: 1,
                    ..Faults::default()
                })
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "provider declines the refund",
            command: other(7, "10.00"),
            setup: Some(Box::new(|s, _| {
                s.inject(Faults {
                    reject_next: 1,
                    ..Faults::default()
                })
            })),
            expect: fails(FailureCode::ProviderRejected),
        },
        Scenario {
            title: "refund fails at the bank after acceptance",
            command: other(8, "10.00"),
            setup: Some(Box::new(|s, r| {
                s.set_outcome(
                    SandboxProvider::VaServices,
                    r,
                    ForcedOutcome {
                        status: OutcomeStatus::Failed,
                    },
                )
            })),
            expect: fails(FailureCode::ProviderRejected),
        },
        Scenario {
            title: "invalid command (negative amount)",
            command: other(9, "-5"),
            setup: None,
            expect: fails(FailureCode::InvalidCommand),
        },
        Scenario {
            title: "BPN: whole-order refund, HMAC-signed, completes",
            command: bpn.clone(),
            setup: Some(Box::new(move |s, _| {
                s.add_payment(refund_sandbox::Payment {
                    provider: SandboxProvider::Bpn,
                    transaction_reference: bpn_order.clone(),
                    amount: rust_decimal::Decimal::new(2517, 2),
                    currency: "USD".into(),
                })
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BPN: the same order again is refused (already refunded)",
            command: {
                let mut c = bpn;
                c["refundReference"] = json!(format!("demo-{run}-bpn-again"));
                c
            },
            setup: None,
            // The order's pay-in notification (sent by the sandbox's BPN when the order was
            // added) puts it in the pay-ins ledger, whose guard refuses before any BPN call;
            // should that notification still be on its way (held back, retried), BPN's order
            // lookup refuses it instead.
            expect: already_refunded,
        },
        Scenario {
            title: "BPN: partial refund by amount, 40.00 of a 100.00 order",
            command: bpn_partial(40, "40.00", None),
            setup: Some(Box::new(move |s, _| {
                s.add_payment(refund_sandbox::Payment {
                    provider: SandboxProvider::Bpn,
                    transaction_reference: bpn_order_2.clone(),
                    amount: rust_decimal::Decimal::new(10_000, 2),
                    currency: "USD".into(),
                })
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BPN: the other 60.00 by pay-in reference, settled by BPN's webhook",
            command: bpn_partial(41, "60.00", Some("DEMO-PAYIN-2")),
            setup: None,
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BPN: nothing left of the order, refused before any refund call",
            command: bpn_partial(42, "0.01", None),
            setup: None,
            // The pay-ins ledger's guard or BPN's order lookup, as above.
            expect: Expect::FailsWithAnyOf(ALREADY_REFUNDED),
        },
        Scenario {
            title: "Binance Pay: refund 25.17 USDT, HMAC-SHA512-signed, completes",
            command: binance(20, "25.17"),
            setup: None,
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "Binance Pay: accepted, answer lost, found by query (not resent)",
            command: binance(21, "10.00"),
            setup: Some(Box::new(|s, _| {
                s.inject(Faults {
                    timeout_after_accept_next: 1,
                    ..Faults::default()
                })
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BVNK: Hawk-signed, estimate first, fee kept, completes",
            command: bvnk(30, "150"),
            setup: None,
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BVNK: waits for 4-eyes approval, approved after 1.5 s",
            command: bvnk(31, "20"),
            setup: Some(Box::new(|s, r| {
                s.bvnk_four_eyes(true);
                let (s, r) = (s.clone(), r.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    s.bvnk_four_eyes(false);
                    if let Err(e) = s.bvnk_approve(&r) {
                        println!("      (approval failed: {e})");
                    } else {
                        println!("      operator approved the refund at BVNK");
                    }
                });
            })),
            expect: Expect::Final(RefundStatus::Completed, None),
        },
        Scenario {
            title: "BVNK: more than the pay-in allows (estimate), no refund call",
            command: bvnk(32, "2000000"),
            setup: None,
            expect: fails(FailureCode::AmountExceedsRefundable),
        },
        Scenario {
            title: "a message that is not JSON",
            command: Value::String("{\"refundReference\": oops".into()),
            setup: None,
            expect: Expect::DeadLetter,
        },
    ]
}

/// A merchant's webhook endpoint for the demo: verifies signatures, counts events.
struct Merchant {
    url: String,
    state: Arc<std::sync::Mutex<MerchantState>>,
    stop: CancellationToken,
}

#[derive(Default)]
struct MerchantState {
    verified: std::collections::HashSet<String>,
    rejected: usize,
}

impl Merchant {
    async fn start(secret: &str) -> anyhow::Result<Self> {
        use axum::http::{HeaderMap, StatusCode};
        let key = crate::merchant_webhooks::signing::SigningKey::from_secret(secret)?;
        let state = Arc::new(std::sync::Mutex::new(MerchantState::default()));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/webhooks/refunds",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (key, state) = (key.clone(), shared.clone());
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let ok = key
                        .verify(
                            &h("webhook-id"),
                            &h("webhook-timestamp"),
                            &h("webhook-signature"),
                            &body,
                            chrono::Utc::now().timestamp(),
                            300,
                        )
                        .is_ok();
                    let Ok(mut s) = state.lock() else {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    };
                    if ok {
                        s.verified.insert(h("webhook-id"));
                        StatusCode::NO_CONTENT
                    } else {
                        s.rejected += 1;
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/webhooks/refunds", listener.local_addr()?);
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Ok(Self { url, state, stop })
    }

    fn verified_events(&self) -> usize {
        self.state.lock().map(|s| s.verified.len()).unwrap_or(0)
    }

    fn rejected(&self) -> usize {
        self.state.lock().map(|s| s.rejected).unwrap_or(0)
    }
}
