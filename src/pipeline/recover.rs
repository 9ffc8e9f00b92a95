//! Recovery after an outage: every refund still pending from a time window is asked about
//! now, and the providers that document a way to re-send their webhooks are asked to.
//!
//! While our ingress (or the whole worker) was down, provider webhooks were refused or lost
//! and polls did not run. Polling would catch up on its own schedule; recovery does it at
//! once, for a window an operator names:
//!
//! 1. each `PENDING` refund created in the window (of one provider, if given) goes through
//!    [`review::recheck`]: claimed, the dispatcher's own step run on it (a status lookup, or a
//!    submit when the provider certainly does not have it yet), the answer recorded as any
//!    step's, the action kept in its history. At most [`CONCURRENCY`] at once, so the
//!    providers are not flooded. A refund a dispatcher holds that instant is counted `busy`
//!    (the dispatcher is already asking), not an error;
//! 2. every configured provider is asked to re-send its webhooks for the window through
//!    [`Provider::resend_webhooks`](crate::providers::Provider::resend_webhooks) (BPN's
//!    "resend fail webhook", VA Services' "Send Notification" per payment; the others document
//!    nothing of the kind). The re-sent webhooks go through the ingress and the inbox, which
//!    deduplicates them, so asking twice changes nothing.
//!
//! A dry run lists the refunds it would check and the requests it would make, and changes
//! nothing. Running recovery again is safe: a recheck of a final refund is refused (counted
//! as already final) and re-sent webhooks are deduplicated.

use super::review::{self, RecheckError};
use super::Context;
use crate::domain::ProviderName;
use crate::providers::resend::{ResendWindow, WebhookResend};
use crate::store::{recovery, StoreError};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Refunds rechecked at once.
pub const CONCURRENCY: usize = 8;
/// The reason recorded in each rechecked refund's history.
pub const RECHECK_REASON: &str = "recovery after an outage";
/// Most error messages kept in a summary (the counts are always complete).
const MAX_ERRORS_KEPT: usize = 50;

/// The refunds recovery looks at.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RecoveryWindow)]
pub struct Window {
    /// Created at or after.
    pub since: DateTime<Utc>,
    /// Created before.
    pub until: DateTime<Utc>,
    /// Only this provider's.
    #[schema(schema_with = crate::schema::api::provider_or_null)]
    pub provider: Option<ProviderName>,
}

impl Window {
    /// A window from operator input: `since` and `until` as RFC 3339 or a plain date
    /// (`YYYY-MM-DD`, UTC; a plain `until` date includes that whole day); `until` defaults to
    /// `now`. Refuses an empty window and an unknown provider.
    pub fn parse(
        since: &str,
        until: Option<&str>,
        provider: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Self, String> {
        let since = parse_time(since, false).map_err(|e| format!("since: {e}"))?;
        let until = match until {
            Some(u) => parse_time(u, true).map_err(|e| format!("until: {e}"))?,
            None => now,
        };
        if until <= since {
            return Err(format!(
                "the window is empty: until ({}) is not after since ({})",
                until.to_rfc3339(),
                since.to_rfc3339()
            ));
        }
        let provider = match provider.map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(ProviderName::parse(p).ok_or_else(|| {
                format!("provider `{p}` is not one of va_services, bpn, binance_pay, bvnk")
            })?),
        };
        Ok(Self {
            since,
            until,
            provider,
        })
    }
}

/// RFC 3339 (`2026-12-07T10:00:00Z`) or a plain date (`2026-12-07`, midnight UTC; with
/// `end_of_day`, the next midnight, so the day is included).
pub fn parse_time(text: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!(
            "`{text}` is neither an RFC 3339 time (2026-12-07T10:00:00Z) nor a date (2026-12-07)"
        )
    })?;
    let date = if end_of_day {
        date.succ_opt()
            .ok_or_else(|| format!("`{text}` is the last date there is"))?
    } else {
        date
    };
    Ok(date.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// Live counters, read by a progress bar or the admin API while recovery runs.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    checked: AtomicU64,
    changed: AtomicU64,
    still_pending: AtomicU64,
    busy: AtomicU64,
    already_final: AtomicU64,
    errors: AtomicU64,
    error_messages: Mutex<Vec<String>>,
}

/// A recovery's counters at one moment (a snapshot of `Progress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RecoveryCounts)]
pub struct Counts {
    /// Pending refunds in the window.
    pub total: u64,
    /// Asked about so far (every outcome below counts here).
    pub checked: u64,
    /// Final after the recheck.
    pub changed: u64,
    /// Still pending after the recheck (the provider has no final answer yet), busy included.
    pub still_pending: u64,
    /// Held by a dispatcher that instant (it is asking the provider itself).
    pub busy: u64,
    /// Made final by something else (a webhook, the dispatcher) between listing and asking.
    pub already_final: u64,
    /// The database failed, or the refund vanished.
    pub errors: u64,
}

impl Progress {
    /// The counters now.
    pub fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            total: get(&self.total),
            checked: get(&self.checked),
            changed: get(&self.changed),
            still_pending: get(&self.still_pending),
            busy: get(&self.busy),
            already_final: get(&self.already_final),
            errors: get(&self.errors),
        }
    }

    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut kept) = self.error_messages.lock() {
            if kept.len() < MAX_ERRORS_KEPT {
                kept.push(message);
            }
        }
    }

    fn error_messages(&self) -> Vec<String> {
        self.error_messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// One refund a dry run would check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RecoveryCandidate)]
pub struct Candidate {
    /// Our reference.
    pub refund_reference: String,
    /// Its provider.
    pub provider: Option<String>,
    /// Its payment.
    pub transaction_reference: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// What one provider was asked to re-send.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResend {
    /// The provider.
    #[schema(schema_with = crate::schema::api::provider)]
    pub provider: ProviderName,
    /// What it offers and what was asked.
    pub resend: WebhookResend,
}

impl ProviderResend {
    /// Requests made (or planned, on a dry run).
    pub fn requests(&self) -> usize {
        match &self.resend {
            WebhookResend::Requests { requests } => requests.len(),
            _ => 0,
        }
    }
}

/// What a recovery did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RecoverySummary)]
pub struct Summary {
    /// The window.
    pub window: Window,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The counts.
    pub counts: Counts,
    /// The refunds a dry run would check (empty otherwise).
    pub would_check: Vec<Candidate>,
    /// Per configured provider, the webhook re-send requests.
    pub webhook_resends: Vec<ProviderResend>,
    /// Webhook re-send requests made (or planned).
    pub webhook_requests: usize,
    /// The first error messages.
    pub error_messages: Vec<String>,
}

/// Runs a recovery over `window`, updating `progress` as it goes.
pub async fn run(
    ctx: &Context,
    window: &Window,
    dry_run: bool,
    progress: &Progress,
) -> Result<Summary, StoreError> {
    let provider = window.provider.map(ProviderName::as_str);
    let pending =
        recovery::refunds_in_window(&ctx.pool, window.since, window.until, provider, true).await?;
    progress
        .total
        .store(pending.len() as u64, Ordering::Relaxed);
    let mut would_check = Vec::new();
    if dry_run {
        would_check = pending
            .iter()
            .map(|r| Candidate {
                refund_reference: r.refund_reference.clone(),
                provider: r.provider.clone(),
                transaction_reference: r.transaction_reference.clone(),
                created_at: r.created_at,
            })
            .collect();
    } else {
        // A refund of a provider not configured here is not rechecked: the dispatcher's step
        // would fail it as never sent, which recovery must not decide for a refund the
        // provider may have. It is counted as an error for the operator to look at.
        let configured = |r: &&recovery::WindowRefund| {
            r.provider
                .as_deref()
                .and_then(ProviderName::parse)
                .is_some_and(|p| ctx.providers.get(p).is_some())
        };
        for r in pending.iter().filter(|r| !configured(r)) {
            progress.error(format!(
                "{}: provider {} is not configured here; not rechecked",
                r.refund_reference,
                r.provider.as_deref().unwrap_or("-")
            ));
            progress.checked.fetch_add(1, Ordering::Relaxed);
        }
        futures::stream::iter(pending.iter().filter(configured))
            .for_each_concurrent(CONCURRENCY, |r| {
                check_one(ctx, &r.refund_reference, progress)
            })
            .await;
        if progress.counts().changed > 0 {
            ctx.event_committed();
        }
    }

    // Every refund of the window (final ones too) names the payments whose notifications
    // may have been missed.
    let all =
        recovery::refunds_in_window(&ctx.pool, window.since, window.until, provider, false).await?;
    let mut webhook_resends = Vec::new();
    for name in ProviderName::ALL {
        if window.provider.is_some_and(|p| p != name) {
            continue;
        }
        let Some(adapter) = ctx.providers.get(name) else {
            continue;
        };
        let mut transaction_references: Vec<String> = all
            .iter()
            .filter(|r| r.provider.as_deref() == Some(name.as_str()))
            .filter_map(|r| r.transaction_reference.clone())
            .collect();
        transaction_references.sort();
        transaction_references.dedup();
        let resend_window = ResendWindow {
            since: window.since,
            until: window.until,
            transaction_references,
        };
        let resend = adapter.resend_webhooks(&resend_window, dry_run).await;
        webhook_resends.push(ProviderResend {
            provider: name,
            resend,
        });
    }
    let webhook_requests = webhook_resends.iter().map(ProviderResend::requests).sum();
    Ok(Summary {
        window: window.clone(),
        dry_run,
        counts: progress.counts(),
        would_check,
        webhook_resends,
        webhook_requests,
        error_messages: progress.error_messages(),
    })
}

/// Rechecks one refund and counts what came of it.
async fn check_one(ctx: &Context, reference: &str, progress: &Progress) {
    let result = review::recheck(ctx, reference, Some(RECHECK_REASON)).await;
    match result {
        Ok(view) if view.refund.status == "PENDING" => {
            progress.still_pending.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            progress.changed.fetch_add(1, Ordering::Relaxed);
        }
        Err(RecheckError::Busy(_)) => {
            progress.busy.fetch_add(1, Ordering::Relaxed);
            progress.still_pending.fetch_add(1, Ordering::Relaxed);
        }
        Err(RecheckError::Final { .. }) => {
            progress.already_final.fetch_add(1, Ordering::Relaxed);
        }
        Err(e @ (RecheckError::NotFound(_) | RecheckError::Store(_))) => {
            tracing::warn!(refund_reference = %reference, error = %e, "recovery: recheck failed");
            progress.error(format!("{reference}: {e}"));
        }
    }
    progress.checked.fetch_add(1, Ordering::Relaxed);
}

/// A recovery started through the admin API, run in the background of this worker process.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: uuid::Uuid,
    /// Its window.
    pub window: Window,
    /// Dry run.
    pub dry_run: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Live counters.
    pub progress: Progress,
    /// The end: the summary, or why it stopped.
    pub result: Mutex<Option<Result<Summary, String>>>,
}

/// Jobs are kept in memory, in the worker process that runs them: a recovery is an operator's
/// one-off action whose every step is recorded where it matters (each recheck in the refund's
/// history, each re-sent webhook in the inbox), and running it again is safe. A restart loses
/// only the report, not work; a table would add a migration for no durability that matters.
/// With several replicas, ask for a job on the pod that started it (its id is unknown
/// elsewhere: 404). At most [`MAX_JOBS`] are kept, the oldest finished ones dropped first.
pub const MAX_JOBS: usize = 100;

static JOBS: Mutex<Vec<std::sync::Arc<Job>>> = Mutex::new(Vec::new());

/// Starts a recovery in the background; returns the job at once.
pub fn spawn(ctx: Context, window: Window, dry_run: bool) -> std::sync::Arc<Job> {
    let job = std::sync::Arc::new(Job {
        id: uuid::Uuid::new_v4(),
        window,
        dry_run,
        started_at: Utc::now(),
        progress: Progress::default(),
        result: Mutex::new(None),
    });
    if let Ok(mut jobs) = JOBS.lock() {
        if jobs.len() >= MAX_JOBS {
            let finished = jobs
                .iter()
                .position(|j| j.result.lock().map(|r| r.is_some()).unwrap_or(true));
            jobs.remove(finished.unwrap_or(0));
        }
        jobs.push(job.clone());
    }
    let running = job.clone();
    tokio::spawn(async move {
        let outcome = run(&ctx, &running.window, running.dry_run, &running.progress)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, job = %running.id, "recovery stopped");
                format!("recovery stopped: {e}")
            });
        if let Ok(mut result) = running.result.lock() {
            *result = Some(outcome);
        }
    });
    job
}

/// A job of this process, by id.
pub fn job(id: uuid::Uuid) -> Option<std::sync::Arc<Job>> {
    JOBS.lock()
        .ok()
        .and_then(|jobs| jobs.iter().find(|j| j.id == id).cloned())
}

/// A recovery job as the admin API shows it (`POST /v1/recover`, `GET /v1/recover/{id}`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RecoveryJob)]
pub struct JobView {
    /// Its id.
    pub id: uuid::Uuid,
    /// `running`, `done` or `failed`.
    #[schema(schema_with = crate::schema::api::job_status)]
    pub status: &'static str,
    /// Its window.
    pub window: Window,
    /// Dry run: list what would be checked and asked; change nothing.
    pub dry_run: bool,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The counters so far.
    pub progress: Counts,
    /// Once done: the counts, what a dry run would check, the webhook re-sends per
    /// provider, the first error messages.
    pub summary: Option<Summary>,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
}

impl Job {
    /// The job as the admin API shows it.
    pub fn view(&self) -> JobView {
        let result = self.result.lock().ok().and_then(|r| r.clone());
        let (status, summary, error) = match result {
            None => ("running", None, None),
            Some(Ok(summary)) => ("done", Some(summary), None),
            Some(Err(e)) => ("failed", None, Some(e)),
        };
        JobView {
            id: self.id,
            status,
            window: self.window.clone(),
            dry_run: self.dry_run,
            started_at: self.started_at,
            progress: self.progress.counts(),
            summary,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_plain_dates() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            parse_time("2026-12-07T10:00:00+01:00", false).unwrap(),
            at("2026-12-07T09:00:00Z")
        );
        assert_eq!(
            parse_time("2026-12-07", false).unwrap(),
            at("2026-12-07T00:00:00Z")
        );
        // A plain `until` date includes the whole day.
        assert_eq!(
            parse_time("2026-12-07", true).unwrap(),
            at("2026-12-08T00:00:00Z")
        );
        assert!(parse_time("yesterday", false).is_err());
        assert!(parse_time("2026-13-01", false).is_err());
    }

    #[test]
    fn windows_are_checked() {
        let now = parse_time("2026-12-07T12:00:00Z", false).unwrap();
        let w = Window::parse("2026-12-07", None, Some("bpn"), now).unwrap();
        assert_eq!((w.until, w.provider), (now, Some(ProviderName::Bpn)));
        let day = Window::parse("2026-12-06", Some("2026-12-06"), None, now).unwrap();
        assert_eq!(day.until - day.since, chrono::TimeDelta::days(1));
        assert!(Window::parse("2026-12-08", None, None, now)
            .unwrap_err()
            .contains("empty"));
        assert!(Window::parse("2026-12-01", None, Some("paypal"), now)
            .unwrap_err()
            .contains("paypal"));
    }
}
