//! `refund-worker webhooks`: failed merchant webhooks, and resending them.

use crate::config::Config;
use crate::http::validation;
use crate::store::{self, merchant_webhooks::ResendFilter};
use chrono::{DateTime, Utc};
use clap::builder::PossibleValuesParser;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;

/// Subcommands of `webhooks`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum WebhooksCommand {
    /// List webhook deliveries that failed (retry schedule exhausted, 410 Gone, or refused).
    List {
        /// Only failed deliveries (the only listing for now; kept for clarity in scripts).
        #[arg(long)]
        failed: bool,
        /// At most this many, newest first (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        /// Print JSON (`items`, `truncated`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue failed deliveries for a new round of attempts (idempotent).
    Resend {
        /// Resend the delivery of this event (repeatable).
        #[arg(long = "event", conflicts_with_all = ["since", "until"])]
        events: Vec<uuid::Uuid>,
        /// Resend failed deliveries of events queued at or after this time: RFC 3339
        /// (2026-03-01T12:00:00Z) or a date (2026-03-01, midnight UTC).
        #[arg(long, value_parser = super::parse_time)]
        since: Option<DateTime<Utc>>,
        /// ... and before this time (RFC 3339 or a date, as --since).
        #[arg(long, requires = "since", value_parser = super::parse_time)]
        until: Option<DateTime<Utc>>,
        /// Only this provider.
        #[arg(long, value_parser = PossibleValuesParser::new(validation::provider_names()))]
        provider: Option<String>,
        /// Only events with this status.
        #[arg(long, value_parser = PossibleValuesParser::new(validation::status_names()))]
        status: Option<String>,
        /// Count what would be resent; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs `webhooks ...`.
pub(super) async fn run(command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let pool = super::exit::database(&config, 2).await?;
    match command {
        WebhooksCommand::List {
            failed: _,
            limit,
            json,
        } => {
            // One more than asked, to know whether there are more than shown.
            let mut rows = store::merchant_webhooks::list_failed(&pool, limit + 1).await?;
            let truncated = rows.len() as i64 > limit;
            rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            if json {
                let listing = serde_json::json!({"items": rows, "truncated": truncated});
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(ExitCode::SUCCESS);
            }
            if rows.is_empty() {
                println!("no failed webhook deliveries");
            } else {
                println!(
                    "{:<36}  {:<19}  {:<11} {:<28} {:>8}  {:>4}  ERROR",
                    "EVENT ID", "QUEUED (UTC)", "STATUS", "REFUND", "ATTEMPTS", "LAST"
                );
            }
            for r in rows {
                println!(
                    "{:<36}  {:<19}  {:<11} {:<28} {:>8}  {:>4}  {}",
                    r.event_id.to_string(),
                    r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.event_status,
                    r.refund_reference,
                    r.attempts,
                    r.last_status_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.last_error.unwrap_or_default()
                );
            }
            if truncated {
                println!("(more failed deliveries than the {limit} shown; --limit shows more, up to 1000)");
            }
            Ok(ExitCode::SUCCESS)
        }
        WebhooksCommand::Resend {
            events,
            since,
            until,
            provider,
            status,
            dry_run,
        } => {
            let filter = ResendFilter {
                event_ids: (!events.is_empty()).then_some(events),
                since,
                until,
                provider,
                status,
            };
            filter.validate().map_err(anyhow::Error::msg)?;
            let total = store::merchant_webhooks::count_resendable(&pool, &filter).await?;
            if dry_run {
                println!("dry run: {total} failed deliveries would be queued");
                return Ok(ExitCode::SUCCESS);
            }
            let bar = ProgressBar::new(total.max(0) as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} queued {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let mut queued = 0usize;
            loop {
                let batch = store::merchant_webhooks::resend(&pool, &filter, 200).await?;
                queued += batch.len();
                bar.inc(batch.len() as u64);
                if batch.len() < 200 {
                    break;
                }
            }
            bar.finish_and_clear();
            println!("queued {queued} failed deliveries (of {total} matching); deliveries already queued were left as they are");
            Ok(ExitCode::SUCCESS)
        }
    }
}
