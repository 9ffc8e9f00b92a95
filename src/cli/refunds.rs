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
    /// List the refunds VA Services holds (its paginated `GET /va/refunds`), dates in UTC:
    /// for reconciling with ours.
    AtProvider {
        /// Page size.
        #[arg(long, default_value_t = 100)]
        size: u32,
        /// Stop after this many pages.
        #[arg(long, default_value_t = 50)]
        max_pages: u32,
    },
}

/// Runs `refunds ...`.
pub async fn run(command: RefundsCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    if let RefundsCommand::AtProvider { size, max_pages } = command {
        return at_provider(&config, size, max_pages).await;
    }
    let pool = store::connect(&config.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    match command {
        RefundsCommand::AtProvider { .. } => Ok(ExitCode::SUCCESS),
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

/// `refunds at-provider`: VA Services' own list of refunds.
async fn at_provider(config: &Config, size: u32, max_pages: u32) -> anyhow::Result<ExitCode> {
    use crate::domain::ProviderName;
    let Some(settings) = config.providers.get(&ProviderName::VaServices) else {
        eprintln!("VA Services is not configured (PROVIDER_VA_SERVICES_BASE_URL, _API_KEY)");
        return Ok(ExitCode::from(2));
    };
    let va = crate::providers::va_services::VaServices::new(settings.clone())?;
    let refunds = match va.list_all(size.clamp(1, 1000), max_pages.max(1)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let zone = va.timezone();
    println!(
        "{:<28} {:<32} {:>12} {:<14} {:<10} {:<26} completed (UTC)",
        "refundReference", "transactionReference", "amount", "type", "status", "created (UTC)"
    );
    let utc = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    for r in &refunds {
        println!(
            "{:<28} {:<32} {:>12} {:<14} {:<10} {:<26} {}",
            r.refund_reference.as_deref().unwrap_or("-"),
            r.transaction_reference.as_deref().unwrap_or("-"),
            r.refund_amount
                .as_ref()
                .map(|a| a.to_string().trim_matches('"').to_string())
                .unwrap_or_else(|| "-".into()),
            if r.is_partial() { "partial" } else { "full" },
            r.refund_status.as_deref().unwrap_or("-"),
            utc(r.created_at(zone)),
            utc(r.completed_at(zone)),
        );
    }
    println!("{} refund(s)", refunds.len());
    Ok(ExitCode::SUCCESS)
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
