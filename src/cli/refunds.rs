//! `refund-worker refunds ...`: a refund's state, attempts and history; the review queue and
//! an operator's recheck and resolution of refunds no machine can settle.

use crate::config::Config;
use crate::http::validation;
use crate::store;
use clap::builder::PossibleValuesParser;
use std::process::ExitCode;

/// A time for people and scripts alike: RFC 3339, UTC, milliseconds.
fn utc(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Subcommands of `refunds`.
#[derive(Debug, clap::Subcommand)]
pub(super) enum RefundsCommand {
    /// Show one refund: status, phase, attempts, history and provider calls.
    Show {
        /// The refundReference.
        refund_reference: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List refunds, newest first, as `GET /v1/refunds` does (same filters, same paging).
    List {
        /// Only this status.
        #[arg(long, value_parser = PossibleValuesParser::new(validation::status_names()))]
        status: Option<String>,
        /// Only this provider.
        #[arg(long, value_parser = PossibleValuesParser::new(validation::provider_names()))]
        provider: Option<String>,
        /// Only refunds accepted at or after this time: RFC 3339 (2026-03-01T12:00:00Z) or a
        /// date (2026-03-01, midnight UTC).
        #[arg(long, value_parser = super::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// ... and before this time (RFC 3339 or a date, as --since).
        #[arg(long, value_parser = super::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Only refunds in review (`true`) or not in review (`false`).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        review: Option<bool>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=crate::http::REFUNDS_MAX_LIMIT))]
        limit: i64,
        /// Only refunds whose refundReference starts with this.
        #[arg(long)]
        reference_prefix: Option<String>,
        /// Continue after this cursor (printed under a page that has more).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON (`items`, `nextCursor`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the refunds flagged for operator review, longest waiting first.
    Review {
        /// At most this many (1-500).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=500))]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask the provider about a refund now (its status; or its submit, if the provider
    /// certainly does not have it yet) and apply the answer as the dispatcher would.
    Recheck {
        /// The refundReference.
        refund_reference: String,
        /// Why, for the refund's history.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Settle a refund in review by hand: publishes its final event with
    /// `resolution: {"by": "operator", "reason": ...}`. Never moves a final refund.
    Resolve {
        /// The refundReference.
        refund_reference: String,
        /// It was refunded (confirmed with the provider).
        #[arg(long, conflicts_with = "failed", required_unless_present = "failed")]
        completed: bool,
        /// It will not be refunded (failure code RESOLVED_BY_OPERATOR).
        #[arg(long)]
        failed: bool,
        /// Why (required; kept in the history and the event).
        #[arg(long)]
        reason: String,
        /// The provider's id for the refund, if you know it.
        #[arg(long)]
        provider_reference: Option<String>,
    },
    /// Deprecated: use `refund-worker reconcile --provider va_services`, which compares VA's
    /// list with ours. Still lists the refunds VA Services holds (`GET /va/refunds`).
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
pub(super) async fn run(command: RefundsCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    if let RefundsCommand::AtProvider { size, max_pages } = command {
        eprintln!("`refunds at-provider` is deprecated and will be removed: `refund-worker reconcile --provider va_services` compares VA's list with our refunds");
        return at_provider(&config, size, max_pages).await;
    }
    let pool = super::exit::database(&config, 2).await?;
    match command {
        RefundsCommand::AtProvider { .. } => Ok(ExitCode::SUCCESS),
        RefundsCommand::List {
            status,
            provider,
            since,
            until,
            review,
            limit,
            reference_prefix,
            cursor,
            json,
        } => {
            let filter = store::refunds::ListFilter {
                status,
                provider,
                since,
                until,
                review,
                reference_prefix,
                limit: Some(limit),
                cursor,
            };
            let page = match store::refunds::list(&pool, &filter).await {
                Ok(page) => page,
                Err(store::StoreError::Invalid(m)) => {
                    eprintln!("error: --cursor: {m}");
                    return Ok(super::exit::usage());
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(ExitCode::SUCCESS);
            }
            print!("{}", render_list(&page));
            if let Some(cursor) = &page.next_cursor {
                eprintln!("(more refunds than the {limit} shown; next page: --cursor {cursor})");
            }
            Ok(ExitCode::SUCCESS)
        }
        RefundsCommand::Review { limit, json } => {
            let rows = store::review::in_review(&pool, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<32} {:<12} {:<12} {:>14} {:<24} {:>9}  reason",
                "refundReference",
                "provider",
                "status",
                "amount",
                "in review since (UTC)",
                "waiting"
            );
            let now = chrono::Utc::now();
            for r in &rows {
                let since = r.review_since.unwrap_or(now);
                println!(
                    "{:<32} {:<12} {:<12} {:>14} {:<24} {:>9}  {}",
                    r.refund_reference,
                    r.provider.as_deref().unwrap_or("-"),
                    r.status,
                    format!(
                        "{} {}",
                        r.amount.map(|a| a.to_string()).unwrap_or_default(),
                        r.currency.as_deref().unwrap_or("")
                    ),
                    since.format("%Y-%m-%d %H:%M:%S"),
                    waited(now - since),
                    r.review_reason.as_deref().unwrap_or("")
                );
            }
            if rows.len() as i64 == limit {
                eprintln!("(showing the first {limit}; raise --limit for more)");
            }
            Ok(ExitCode::SUCCESS)
        }
        RefundsCommand::Recheck {
            refund_reference,
            reason,
            json,
        } => {
            use crate::pipeline::review::{recheck, RecheckError};
            let providers = crate::providers::Providers::from_config(&config)?;
            let ctx = crate::pipeline::Context::new(pool.clone(), config, providers);
            match recheck(&ctx, &refund_reference, reason.as_deref()).await {
                Ok(view) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&view)?);
                    } else {
                        print!("{}", render(&view));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ RecheckError::NotFound(_)) => {
                    eprintln!("{e}");
                    Ok(super::exit::not_found())
                }
                Err(e @ (RecheckError::Final { .. } | RecheckError::Busy(_))) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
                Err(RecheckError::Store(e)) => Err(e.into()),
            }
        }
        RefundsCommand::Resolve {
            refund_reference,
            completed,
            failed: _,
            reason,
            provider_reference,
        } => {
            use crate::domain::review::{ResolveRefused, ResolveRequest};
            use crate::domain::RefundStatus;
            use crate::pipeline::review::resolve;
            use crate::store::review::{ResolveError, Resolved};
            let request = ResolveRequest {
                status: if completed {
                    RefundStatus::Completed
                } else {
                    RefundStatus::RefundFail
                },
                reason,
                provider_reference,
            };
            let topology = crate::broker::Topology::with_prefix(&config.amqp_name_prefix);
            let sink = store::EventSink {
                exchange: topology.exchange.clone(),
                webhook_default_url: config.webhooks.default_url.clone(),
            };
            match resolve(&pool, &refund_reference, &request, &sink).await {
                Ok(Resolved::Finished(event)) => {
                    println!(
                        "{refund_reference} resolved {} (event {}); the worker publishes it",
                        event.status, event.event_id
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Ok(Resolved::Acknowledged) => {
                    println!("{refund_reference}: review acknowledged, status unchanged");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ ResolveError::NotFound(_)) => {
                    eprintln!("{e}");
                    Ok(super::exit::not_found())
                }
                Err(ResolveError::Refused(ResolveRefused::Invalid(m))) => {
                    eprintln!("--reason: {m}");
                    Ok(ExitCode::from(2))
                }
                Err(ResolveError::Refused(r)) => {
                    eprintln!("{refund_reference}: {r}");
                    Ok(ExitCode::FAILURE)
                }
                Err(ResolveError::Store(e)) => Err(e.into()),
            }
        }
        RefundsCommand::Show {
            refund_reference,
            json,
        } => {
            let Some(view) = store::refunds::show(&pool, &refund_reference).await? else {
                eprintln!("no refund with refundReference `{refund_reference}`");
                return Ok(super::exit::not_found());
            };
            // As `GET /v1/refunds/{ref}` answers, plus where its webhooks go.
            let deliveries = store::merchant_webhooks::for_refund(&pool, &refund_reference).await?;
            let callback_url =
                store::merchant_webhooks::callback_url(&pool, &refund_reference).await?;
            if json {
                let mut body = serde_json::to_value(&view)?;
                body["callbackUrl"] = serde_json::json!(callback_url);
                body["defaultWebhookUrl"] = serde_json::json!(config.webhooks.default_url);
                body["deliveries"] = serde_json::to_value(&deliveries)?;
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", render(&view));
                print!(
                    "{}",
                    render_deliveries(
                        callback_url.as_deref(),
                        config.webhooks.default_url.as_deref(),
                        &deliveries
                    )
                );
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

/// `3d 4h`, `12m` for how long a refund has waited.
fn waited(d: chrono::Duration) -> String {
    let m = d.num_minutes().max(0);
    match m {
        m if m >= 1440 => format!("{}d {}h", m / 1440, (m % 1440) / 60),
        m if m >= 60 => format!("{}h {}m", m / 60, m % 60),
        m => format!("{m}m"),
    }
}

/// Renders a refund for people.
pub(super) fn render(view: &store::RefundView) -> String {
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
    if let (Some(reason), Some(since)) = (&r.review_reason, r.review_since) {
        let _ = writeln!(
            out,
            "IN REVIEW    since {}: {reason}",
            since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
    }
    let _ = writeln!(
        out,
        "guard        {}",
        r.guard_source.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "attempts     {} submits, {} polls, {} consecutive failures",
        r.attempts, r.polls, r.failures
    );
    let _ = writeln!(
        out,
        "accepted     {}  updated {}  final {}",
        utc(r.created_at),
        utc(r.updated_at),
        r.finished_at.map(utc).unwrap_or_else(|| "-".into())
    );
    if let Some(next) = r.next_attempt_at {
        let _ = writeln!(out, "next look    {}", utc(next));
    }
    let _ = writeln!(out, "history (UTC)");
    for t in &view.transitions {
        let _ = writeln!(
            out,
            "  {}  {} -> {}  ({}){}  event {}",
            utc(t.occurred_at),
            t.from_status.as_deref().unwrap_or("-"),
            t.to_status,
            t.cause,
            t.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            t.event_id
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(out, "provider calls (UTC)");
    for a in &view.attempts {
        let _ = writeln!(
            out,
            "  {}  {:6} {:10} {:>5} ms  {}",
            utc(a.started_at),
            a.call,
            a.outcome,
            a.latency_ms,
            a.detail.as_deref().unwrap_or("")
        );
    }
    out
}

/// Merchant webhooks of one refund: where they go and each delivery's state.
fn render_deliveries(
    callback_url: Option<&str>,
    default_url: Option<&str>,
    deliveries: &[store::merchant_webhooks::DeliveryRow],
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let target = match (callback_url, default_url) {
        (Some(url), _) => url.to_string(),
        (None, Some(url)) => format!("{url} (WEBHOOK_DEFAULT_URL)"),
        (None, None) => "- (no callbackUrl, no WEBHOOK_DEFAULT_URL)".into(),
    };
    let _ = writeln!(out, "callback     {target}");
    let _ = writeln!(out, "merchant webhooks (UTC)");
    if deliveries.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for d in deliveries {
        let when = match (&d.delivered_at, &d.next_attempt_at) {
            (Some(t), _) => format!("delivered {}", utc(*t)),
            (None, Some(t)) if d.state == "queued" => format!("next {}", utc(*t)),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  event {}  {:<11} {:<9} {} attempt(s){}{}{}",
            d.event_id,
            d.event_status,
            d.state,
            d.attempts,
            d.last_status_code
                .map(|c| format!(", last HTTP {c}"))
                .unwrap_or_default(),
            d.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default(),
            if when.is_empty() {
                String::new()
            } else {
                format!(", {when}")
            }
        );
    }
    out
}

/// `refunds list` as a table: a header row, full UTC timestamps.
fn render_list(page: &store::refunds::RefundPage) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:<12} {:<12} {:>18} {:<25} {:<25} {:<6} FAILURE",
        "REFUND REFERENCE",
        "PROVIDER",
        "STATUS",
        "AMOUNT",
        "ACCEPTED (UTC)",
        "FINAL (UTC)",
        "REVIEW"
    );
    for r in &page.items {
        let _ = writeln!(
            out,
            "{:<36} {:<12} {:<12} {:>18} {:<25} {:<25} {:<6} {}",
            r.refund_reference,
            r.provider.as_deref().unwrap_or("-"),
            r.status,
            format!(
                "{} {}",
                r.amount
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.currency.as_deref().unwrap_or("")
            ),
            utc(r.created_at),
            r.finished_at.map(utc).unwrap_or_else(|| "-".into()),
            if r.review_since.is_some() {
                "yes"
            } else {
                "no"
            },
            r.failure_code.as_deref().unwrap_or("")
        );
    }
    out
}
