//! The `refund-worker` command line: one binary for every role.

mod dlq;
pub mod exit;
mod inbox;
pub(crate) mod reconcile;
pub(crate) mod recover;
mod refunds;
pub(crate) mod run_args;
mod submit;
#[cfg(feature = "tools")]
mod tools;
mod webhooks;

use crate::app::App;
use crate::config::Config;
use crate::telemetry::LogTo;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
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
    /// The tools (cargo feature `tools`, on by default; the production image is built
    /// without it): the provider sandbox, the demo and the bench.
    #[cfg(feature = "tools")]
    #[command(flatten)]
    Tool(tools::Tool),
}

/// Parses the command line and runs the chosen command.
pub async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The demo prints its own narrative; worker logs would drown it (RUST_LOG=info shows them).
    let (default_filter, log_to) = match &cli.command {
        Command::Run(_) => (crate::telemetry::SERVICE_FILTER, LogTo::Stdout),
        #[cfg(feature = "tools")]
        Command::Tool(tool) => tool.logging(),
        _ => (crate::telemetry::SERVICE_FILTER, LogTo::Stderr),
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
        Command::Submit(args) => submit::run(args).await,
        Command::Refunds { command } => refunds::run(command).await,
        Command::Webhooks { command } => webhooks::run(command).await,
        Command::Dlq { command } => dlq::run(command).await,
        Command::Inbox { command } => inbox::run(command).await,
        Command::Recover(args) => recover::run(args).await,
        Command::Reconcile(args) => reconcile::run(args).await,
        #[cfg(feature = "tools")]
        Command::Tool(tool) => tool.run().await,
    }
}

pub use crate::app::migrate;

/// `run`: the worker and its HTTP endpoints until SIGTERM or ctrl-c.
async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = App::build(config).await?.start(shutdown.clone());
    wait_for_signal().await;
    shutdown.cancel();
    app.stopped().await;
    Ok(())
}

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
