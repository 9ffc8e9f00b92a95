//! `refund-worker reconcile`: a provider's view of our refunds against our database (see
//! [`crate::pipeline::reconcile`]).
//!
//! Exit codes: 0 everything matches, 3 mismatches found (whatever else happened), 1 errors
//! (the provider's list could not be read, or some refunds could not be looked up: the
//! comparison is incomplete), 2 a usage error (a bad time or provider, one not configured).

use crate::config::Config;
use crate::domain::ProviderName;
use crate::pipeline::reconcile::{self, ReconcileError, Report};
use crate::providers::Providers;
use crate::store;
use anyhow::Context as _;
use std::process::ExitCode;

/// Exit code when mismatches were found.
pub(crate) const EXIT_MISMATCHES: u8 = 3;

/// `reconcile` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ReconcileArgs {
    /// The provider (va_services, bpn, binance_pay, bvnk).
    #[arg(long)]
    provider: String,
    /// Only refunds created at or after this time: RFC 3339 or a date (midnight UTC).
    #[arg(long)]
    since: Option<String>,
    /// Print the report as JSON (the only thing on stdout).
    #[arg(long)]
    json: bool,
}

/// Runs `reconcile`.
pub(crate) async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let Some(provider) = ProviderName::parse(args.provider.trim()) else {
        eprintln!(
            "provider `{}` is not one of va_services, bpn, binance_pay, bvnk",
            args.provider
        );
        return Ok(ExitCode::from(2));
    };
    let since = match args.since.as_deref() {
        None => None,
        Some(s) => match crate::pipeline::recover::parse_time(s, false) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("since: {e}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    let config = Config::from_env()?;
    let pool = store::connect(&config.database_url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    let providers = Providers::from_config(&config)?;
    let ctx = crate::pipeline::Context::new(pool, config, providers);
    let report = match reconcile::run(&ctx, provider, since).await {
        Ok(r) => r,
        Err(e @ ReconcileError::NotConfigured(_)) => {
            eprintln!("{e} (PROVIDER_<NAME>_BASE_URL, _API_KEY)");
            return Ok(ExitCode::from(2));
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(exit_code(&report))
}

/// 3 with mismatches, else 1 with errors, else 0.
pub(crate) fn exit_code(report: &Report) -> ExitCode {
    if !report.mismatches.is_empty() {
        ExitCode::from(EXIT_MISMATCHES)
    } else if !report.errors.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The human-readable report.
pub(crate) fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} of our refunds compared{}{}{} (by {})",
        r.provider,
        r.compared,
        if r.not_compared > 0 {
            format!(" ({} BPN never accepted, not compared)", r.not_compared)
        } else {
            String::new()
        },
        r.listed
            .map(|n| format!(", {n} listed by the provider"))
            .unwrap_or_default(),
        r.since
            .map(|s| format!(", created since {}", s.to_rfc3339()))
            .unwrap_or_default(),
        r.method
    );
    for m in &r.mismatches {
        let side = |s: &reconcile::Side| {
            format!(
                "{} {}{}",
                s.status,
                s.amount.as_deref().unwrap_or("-"),
                s.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )
        };
        let _ = writeln!(
            out,
            "MISMATCH {:<18} {:<36} ours: {:<28} theirs: {}",
            serde_json::to_value(m.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            m.refund_reference,
            m.ours.as_ref().map(side).unwrap_or_else(|| "none".into()),
            side(&m.theirs)
        );
    }
    for e in &r.errors {
        let _ = writeln!(out, "error: {e}");
    }
    let _ = writeln!(
        out,
        "{} mismatch(es), {} error(s)",
        r.mismatches.len(),
        r.errors.len()
    );
    out
}
