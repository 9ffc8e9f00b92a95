//! `refund-worker inbox`: the provider webhooks an operator must look at: parked (their
//! refund is not known yet), unmatched (given up, or ambiguous) and contradicting ones.

use crate::config::Config;
use crate::store;
use std::process::ExitCode;

/// The states `inbox list` shows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum InboxState {
    /// Waiting for a refund we do not know yet.
    Parked,
    /// Given up or ambiguous: an operator must match it.
    Unmatched,
    /// Contradicts a refund's final status: never applied.
    Contradiction,
}

impl InboxState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::Unmatched => "unmatched",
            Self::Contradiction => "contradiction",
        }
    }
}

/// Subcommands of `inbox`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum InboxCommand {
    /// List provider webhooks in one state, oldest first.
    List {
        /// Which ones.
        #[arg(long, value_enum)]
        state: InboxState,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=500))]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one provider webhook in full, body included.
    Show {
        /// Provider wire name (va_services, bpn, binance_pay, bvnk).
        provider: String,
        /// Its inbox key (from `inbox list`).
        event_key: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `inbox ...`.
pub(super) async fn run(command: InboxCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let pool = super::exit::database(&config, 2).await?;
    match command {
        InboxCommand::List { state, limit, json } => {
            let rows =
                store::provider_webhooks::list_for_operators(&pool, state.as_str(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<12} {:<44} {:<14} {:<24} {:<28} detail",
                "provider", "eventKey", "state", "received (UTC)", "refundReference"
            );
            for r in &rows {
                println!(
                    "{:<12} {:<44} {:<14} {:<24} {:<28} {}",
                    r.provider,
                    r.event_key,
                    r.state,
                    r.received_at.format("%Y-%m-%d %H:%M:%S"),
                    r.refund_reference.as_deref().unwrap_or("-"),
                    r.detail.as_deref().unwrap_or("")
                );
            }
            if rows.len() as i64 == limit {
                eprintln!("(showing the first {limit}; raise --limit for more)");
            }
            Ok(ExitCode::SUCCESS)
        }
        InboxCommand::Show {
            provider,
            event_key,
            json,
        } => {
            let rows =
                store::provider_webhooks::show_for_operators(&pool, &provider, &event_key).await?;
            if rows.is_empty() {
                eprintln!("no provider webhook {provider}/{event_key} in the inbox");
                return Ok(super::exit::not_found());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            for r in &rows {
                println!("provider     {}", r.provider);
                println!("eventKey     {} (part {})", r.event_key, r.part);
                println!("state        {}", r.state);
                println!(
                    "refund       {}",
                    r.refund_reference.as_deref().unwrap_or("-")
                );
                println!("detail       {}", r.detail.as_deref().unwrap_or("-"));
                println!(
                    "received     {}  updated {}  tries {}",
                    r.received_at.to_rfc3339(),
                    r.updated_at.to_rfc3339(),
                    r.park_attempts
                );
                println!("body         {}", r.body);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
