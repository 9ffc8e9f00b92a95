//! `refund-worker refunds show`: a refund's state, attempts and history.

use crate::config::Config;
use crate::store;
use anyhow::Context as _;
use std::process::ExitCode;

/// Subcommands of `refunds`.
#[derive(Debug, clap::Subcommand)]
pub enum RefundsCommand {
    /// Show one refund: status, phase, attempts, history and provider calls.
    Show {
        /// The refundReference.
        refund_reference: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `refunds ...`.
pub async fn run(command: RefundsCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let pool = store::connect(&config.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    match command {
        RefundsCommand::Show {
            refund_reference,
            json,
        } => {
            let Some(view) = store::refunds::show(&pool, &refund_reference).await? else {
                eprintln!("no refund with refundReference `{refund_reference}`");
                return Ok(ExitCode::from(2));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print!("{}", render(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Renders a refund for people.
pub fn render(view: &store::RefundView) -> String {
    use std::fmt::Write;
    let r = &view.refund;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "refund       {}", r.refund_reference);
    let _ = writeln!(out, "status       {} (phase {})", r.status, r.phase);
    let _ = writeln!(
        out,
        "provider     {}  transaction {}",
        opt(&r.provider),
        opt(&r.transaction_reference)
    );
    let _ = writeln!(
        out,
        "amount       {} {}",
        r.amount
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        opt(&r.currency)
    );
    let _ = writeln!(
        out,
        "provider ref {}  provider status {}",
        opt(&r.provider_reference),
        opt(&r.provider_status)
    );
    if let (Some(fee), Some(currency)) = (r.provider_fee, &r.provider_fee_currency) {
        let _ = writeln!(out, "provider fee {fee} {currency}");
    }
    if let Some(code) = &r.failure_code {
        let _ = writeln!(out, "failure      {code}: {}", opt(&r.failure_message));
    }
    let _ = writeln!(
        out,
        "attempts     {} submits, {} polls, {} consecutive failures",
        r.attempts, r.polls, r.failures
    );
    if let Some(next) = r.next_attempt_at {
        let _ = writeln!(out, "next look    {next}");
    }
    let _ = writeln!(out, "history");
    for t in &view.transitions {
        let _ = writeln!(
            out,
            "  {}  {} -> {}  ({}){}",
            t.occurred_at.format("%H:%M:%S%.3f"),
            t.from_status.as_deref().unwrap_or("-"),
            t.to_status,
            t.cause,
            t.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "provider calls");
    for a in &view.attempts {
        let _ = writeln!(
            out,
            "  {}  {:6} {:10} {:>5} ms  {}",
            a.started_at.format("%H:%M:%S%.3f"),
            a.call,
            a.outcome,
            a.latency_ms,
            a.detail.as_deref().unwrap_or("")
        );
    }
    out
}
