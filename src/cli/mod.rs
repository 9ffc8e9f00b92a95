//! The `refund-worker` command line: one binary for every role.

mod demo;
mod dlq;
pub mod exit;
mod inbox;
mod reconcile;
mod recover;
mod refunds;
pub mod run_args;
mod sandbox;
mod submit;
mod webhooks;

use crate::config::Config;
use crate::pipeline::{worker, Context};
use crate::providers::Providers;
use crate::telemetry::LogTo;
use crate::{http, store};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Moves refunds through payment providers: RabbitMQ commands in, provider calls out,
/// PostgreSQL as the source of truth. Configuration comes from environment variables
/// (see README.md); every one has a local default.
#[derive(Debug, Parser)]
#[command(name = "refund-worker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: command consumer, dispatcher, outbox relay and /healthz /readyz.
    /// Every setting is a flag here, or its environment variable (flags win).
    Run(run_args::RunArgs),
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Run the provider sandbox (a local simulator of the providers' APIs).
    Sandbox(sandbox::SandboxArgs),
    /// Publish a refund command (from a JSON file or flags) with publisher confirms.
    Submit(submit::SubmitArgs),
    /// Inspect refunds; the review queue; recheck and resolve refunds in review.
    Refunds {
        #[command(subcommand)]
        command: refunds::RefundsCommand,
    },
    /// After an outage: ask the providers about every pending refund of a window now, and
    /// have them re-send their webhooks where they document a way.
    Recover(recover::RecoverArgs),
    /// Compare a provider's view of our refunds with our database; exit 3 on mismatches.
    Reconcile(reconcile::ReconcileArgs),
    /// Measure throughput and latency: the raw broker/database bound and the worker end to end.
    Bench(crate::bench::BenchArgs),
    /// Merchant webhooks: list failed deliveries, resend them.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
    /// Provider webhooks an operator must look at: parked, unmatched, contradicting.
    Inbox {
        #[command(subcommand)]
        command: inbox::InboxCommand,
    },
    /// Dead letters: list, show, replay.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Start the sandbox and a worker in-process, push refunds through them, print their
    /// journeys and a summary, and exit (non-zero if any refund ended unexpectedly).
    Demo(demo::DemoArgs),
}

/// Parses the command line and runs the chosen command.
pub async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The demo prints its own narrative; worker logs would drown it (RUST_LOG=info shows them).
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn,lapin=off",
        _ => crate::telemetry::SERVICE_FILTER,
    };
    let log_to = match cli.command {
        Command::Run(_) | Command::Sandbox(_) => LogTo::Stdout,
        _ => LogTo::Stderr,
    };
    let log_json = match &cli.command {
        Command::Run(args) => args
            .get("LOG_FORMAT")
            .map(|f| f.eq_ignore_ascii_case("json")),
        _ => None,
    };
    crate::telemetry::init_as(default_filter, log_to, log_json);
    match cli.command {
        Command::Run(args) => run(Config::from_lookup(|k| args.get(k))?)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Migrate => {
            let config = Config::from_env()?;
            migrate(&config).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sandbox(args) => sandbox::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Submit(args) => submit::run(args).await,
        Command::Refunds { command } => refunds::run(command).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Webhooks { command } => webhooks::run(command).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::Inbox { command } => inbox::run(command).await,
        Command::Recover(args) => recover::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

/// Creates the database if it is missing, connects, and migrates.
pub async fn migrate(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    store::ensure_database(&config.database_url)
        .await
        .map_err(|e| {
            exit::Unreachable(format!(
                "creating the database if missing, at DATABASE_URL {}: {}",
                crate::config::redact_url(&config.database_url),
                store::describe_connect_error(&e)
            ))
        })?;
    let pool = exit::database(config, config.database_max_connections).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// `run`: the worker and its HTTP endpoints until SIGTERM or ctrl-c.
async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "refund-worker starting"
    );
    let pool = migrate(&config).await?;
    tracing::info!(
        database = %crate::config::redact_url(&config.database_url),
        "migrations applied"
    );
    let shutdown = CancellationToken::new();
    // The HTTP endpoints stop after the drain, not with it (see below).
    let http_stop = CancellationToken::new();
    let grace = config.shutdown_grace;
    let listener = bind_http(config.http_addr).await?;
    let providers = Providers::from_config(&config)?;
    broker_preflight(&config).await?;
    log_start(&config);
    let ctx = Context::new(pool.clone(), config, providers);
    let status = Arc::new(worker::Status::default());

    let server = {
        let app = http::router(http::AppState {
            pool,
            status: status.clone(),
            config: ctx.config.clone(),
            topology: ctx.topology.clone(),
            providers: ctx.providers.clone(),
            context: ctx.clone(),
        });
        // Header-read timeout and connection cap (HTTP_HEADER_TIMEOUT_MS,
        // HTTP_MAX_CONNECTIONS); requests carry the peer address for the rate limits.
        let limits = http::ServeLimits::from_config(&ctx.config);
        tokio::spawn(http::serve(listener, app, limits, http_stop.clone()))
    };
    crate::metrics::handle();
    tokio::spawn(crate::metrics::sample(
        ctx.pool.clone(),
        std::time::Duration::from_secs(15),
        shutdown.clone(),
    ));
    let work = tokio::spawn(worker::run(ctx, status, shutdown.clone()));

    wait_for_signal().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: draining in-flight work"
    );
    shutdown.cancel();
    match tokio::time::timeout(grace, work).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!(
            "drain took longer than SHUTDOWN_GRACE_SECS; unacked commands will be redelivered"
        ),
    }
    // The HTTP endpoints served through the drain: a provider webhook routed here while the
    // pod's removal from the Service propagates is still taken (it only goes to the queue,
    // where the other pods apply it). Requests still running get HTTP_DRAIN, not the admin
    // API's own timeout, so the process ends within SHUTDOWN_GRACE_SECS + HTTP_DRAIN.
    http_stop.cancel();
    if tokio::time::timeout(HTTP_DRAIN, server).await.is_err() {
        tracing::warn!(
            drain_secs = HTTP_DRAIN.as_secs(),
            "HTTP requests still running at exit were cut off"
        );
    }
    Ok(())
}

/// Binds `HTTP_ADDR`; a port in use or a forbidden one is named as such.
async fn bind_http(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "port {} is already in use (another refund-worker, or another program, listens \
                 there; pick another port in HTTP_ADDR)",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "not allowed to listen on port {} (ports below 1024 need privileges)",
                addr.port()
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                format!("{} is not an address of this machine", addr.ip())
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("listening on HTTP_ADDR {addr}: {why}")
    })
}

/// Connects to RabbitMQ once before starting: a broker that refuses us for good (a vhost
/// that does not exist, refused credentials) stops the start with the reason, instead of
/// an endless reconnect loop. A broker that is merely down is waited for, as before.
async fn broker_preflight(config: &Config) -> anyhow::Result<()> {
    match crate::broker::connect(&config.amqp_url, "refund-worker-preflight").await {
        Ok(connection) => {
            let _ = connection.close(200, "preflight".into()).await;
            Ok(())
        }
        Err(e) if e.is_amqp_error() => Err(exit::Unreachable(format!(
            "connecting to RabbitMQ at AMQP_URL {}: {}",
            crate::config::redact_url(&config.amqp_url),
            crate::broker::describe_connect_error(&e)
        ))
        .into()),
        Err(e) => {
            tracing::warn!(
                amqp = %crate::config::redact_url(&config.amqp_url),
                error = %crate::broker::describe_connect_error(&e),
                "RabbitMQ is not reachable yet; the worker keeps trying"
            );
            Ok(())
        }
    }
}

/// One line each: where HTTP listens, the admin API, the providers, and a warning for each
/// provider whose webhooks cannot be verified.
fn log_start(config: &Config) {
    tracing::info!(addr = %config.http_addr, "HTTP listening (health, metrics, provider webhooks)");
    if config.admin_token.is_some() {
        tracing::info!(addr = %config.http_addr, "admin API on (/v1, bearer ADMIN_TOKEN)");
    } else {
        tracing::info!("admin API off (set ADMIN_TOKEN to enable /v1)");
    }
    let names: Vec<&str> = config.providers.keys().map(|p| p.as_str()).collect();
    if names.is_empty() {
        tracing::warn!(
            "no provider configured (PROVIDER_<NAME>_BASE_URL): every refund fails INVALID_COMMAND"
        );
    } else {
        tracing::info!(providers = %names.join(","), "providers configured");
    }
    for (name, settings) in &config.providers {
        if settings.webhook_secret.is_none() {
            let variable = format!(
                "PROVIDER_{}_WEBHOOK_SECRET",
                name.as_str().to_ascii_uppercase()
            );
            tracing::warn!(
                provider = name.as_str(),
                variable = %variable,
                "no webhook secret: this provider's webhooks are refused (set {variable})"
            );
        }
    }
}

/// How long `run` lets HTTP requests in flight finish after the drain. With the default
/// SHUTDOWN_GRACE_SECS (25) it keeps the whole shutdown inside Kubernetes' 30 s.
const HTTP_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Resolves on ctrl-c or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Parses a time option (`--since`, `--until`): RFC 3339, or a plain date meaning midnight
/// UTC (operators think in days; `2026-03-01` used to be refused with a bare parse error).
pub(crate) fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!(
                "`{text}` is not a time: expected RFC 3339 (2026-03-01T12:00:00Z) or a date \
                 (2026-03-01, midnight UTC)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_option_takes_rfc3339_or_a_plain_date() {
        let midnight = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .map(|t| t.with_timezone(&chrono::Utc));
        assert_eq!(parse_time("2026-03-01").ok(), midnight.ok());
        let noon = parse_time("2026-03-01T13:00:00+01:00").map(|t| t.to_rfc3339());
        assert_eq!(noon.as_deref(), Ok("2026-03-01T12:00:00+00:00"));
        for bad in ["yesterday", "2026-13-01", "2026-03-01 12:00", ""] {
            let error = parse_time(bad).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
