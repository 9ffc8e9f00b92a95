//! `refund-worker recover`: after an outage, ask the providers about every pending refund of
//! a window and have them re-send their webhooks (see [`crate::pipeline::recover`]).
//!
//! Exit codes: 0 done (refunds may still be pending: the providers have no final answer yet),
//! 1 a recheck failed or a provider refused a webhook re-send request, 2 a usage error (a bad
//! time or provider).

use crate::config::Config;
use crate::pipeline::recover::{self, Progress, Summary, Window};
use crate::providers::resend::WebhookResend;
use crate::providers::Providers;
use crate::store;
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::sync::Arc;

/// `recover` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct RecoverArgs {
    /// Refunds created at or after this time: RFC 3339 (2026-12-07T10:00:00Z) or a date
    /// (2026-12-07, midnight UTC).
    #[arg(long)]
    since: String,
    /// ... and before this time (a date includes that whole day); default now.
    #[arg(long)]
    until: Option<String>,
    /// Only this provider's refunds and webhooks (va_services, bpn, binance_pay, bvnk).
    #[arg(long)]
    provider: Option<String>,
    /// List what would be checked and asked; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON (the only thing on stdout).
    #[arg(long)]
    json: bool,
}

/// Runs `recover`.
pub(crate) async fn run(args: RecoverArgs) -> anyhow::Result<ExitCode> {
    let window = match Window::parse(
        &args.since,
        args.until.as_deref(),
        args.provider.as_deref(),
        chrono::Utc::now(),
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = Config::from_env()?;
    let pool = store::connect(&config.database_url, (recover::CONCURRENCY as u32) + 2)
        .await
        .context("connecting to PostgreSQL")?;
    let providers = Providers::from_config(&config)?;
    let ctx = crate::pipeline::Context::new(pool, config, providers);

    let progress = Arc::new(Progress::default());
    let bar = if args.json || args.dry_run {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} refunds asked  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let ticker = {
        let (bar, progress) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                let c = progress.counts();
                bar.set_length(c.total);
                bar.set_position(c.checked);
                bar.set_message(format!(
                    "{} final, {} still pending, {} errors",
                    c.changed, c.still_pending, c.errors
                ));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    };
    let result = recover::run(&ctx, &window, args.dry_run, &progress).await;
    ticker.abort();
    bar.finish_and_clear();
    let summary = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(exit_code(&summary))
}

/// 1 when a recheck failed or a provider refused a re-send request, else 0.
pub(crate) fn exit_code(summary: &Summary) -> ExitCode {
    let refused = summary.webhook_resends.iter().any(|p| match &p.resend {
        WebhookResend::Requests { requests } => requests.iter().any(|r| r.ok == Some(false)),
        _ => false,
    });
    if summary.counts.errors > 0 || refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The human-readable summary.
pub(crate) fn render(s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let w = &s.window;
    let _ = writeln!(
        out,
        "{}window {} .. {}{}",
        if s.dry_run { "dry run: " } else { "" },
        w.since.to_rfc3339(),
        w.until.to_rfc3339(),
        w.provider
            .map(|p| format!(", provider {p}"))
            .unwrap_or_default()
    );
    if s.dry_run {
        let _ = writeln!(
            out,
            "would check {} pending refund(s):",
            s.would_check.len()
        );
        for c in &s.would_check {
            let _ = writeln!(
                out,
                "  {:<32} {:<12} {:<32} created {}",
                c.refund_reference,
                c.provider.as_deref().unwrap_or("-"),
                c.transaction_reference.as_deref().unwrap_or("-"),
                c.created_at.format("%Y-%m-%d %H:%M:%S")
            );
        }
    } else {
        let c = &s.counts;
        let _ = writeln!(
            out,
            "checked {}  changed {}  still pending {}  errors {}  (busy {}, already final {})",
            c.checked, c.changed, c.still_pending, c.errors, c.busy, c.already_final
        );
        for e in &s.error_messages {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    let _ = writeln!(
        out,
        "webhook re-send requests {}: {}",
        if s.dry_run { "planned" } else { "made" },
        s.webhook_requests
    );
    for p in &s.webhook_resends {
        match &p.resend {
            WebhookResend::NotDocumented => {
                let _ = writeln!(out, "  {}: not documented for this provider", p.provider);
            }
            WebhookResend::Disabled => {
                let _ = writeln!(out, "  {}: turned off (its path is `off`)", p.provider);
            }
            WebhookResend::Requests { requests } if requests.is_empty() => {
                let _ = writeln!(out, "  {}: nothing to ask for", p.provider);
            }
            WebhookResend::Requests { requests } => {
                for r in requests {
                    let mark = match r.ok {
                        None => "planned",
                        Some(true) => "ok",
                        Some(false) => "FAILED",
                    };
                    let _ = writeln!(
                        out,
                        "  {}: {mark} {}  ({})",
                        p.provider, r.request, r.detail
                    );
                }
            }
        }
    }
    out
}
