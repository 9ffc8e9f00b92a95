//! Delivery of merchant webhooks: claim due deliveries, POST the signed event, record the
//! attempt, schedule the next one. Written as a step function (`Deliverer::step`) with a
//! thin loop around it, like the other pipeline loops.

use super::schedule::Schedule;
use super::signing::SigningKey;
use super::ssrf::{GuardedResolver, NetworkPolicy, PolicyRefusal};
use crate::config::WebhookSettings;
use crate::store::merchant_webhooks::{self, AttemptResult, ClaimedDelivery, Next};
use crate::store::StoreError;
use chrono::Utc;
use futures::StreamExt;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use sqlx::PgPool;
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Bytes of a merchant's response kept in the attempt log.
pub(crate) const EXCERPT_BYTES: usize = 512;

/// What one delivery step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeliveryOutcome {
    /// Deliveries were attempted.
    Attempted(usize),
    /// Nothing was due.
    Idle,
}

/// The HTTP client of merchant deliveries: every address it connects to passes `policy`.
///
/// Proxies from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) are not used:
/// through a proxy the resolver would check only the proxy's address, and the proxy would
/// then reach whatever the merchant's URL names, internal hosts included. Redirects are not
/// followed (a redirect could lead to an internal address; merchants must give the final
/// URL).
pub fn client(
    settings: &WebhookSettings,
    policy: Arc<NetworkPolicy>,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(policy)))
        .user_agent(concat!(
            "refund-worker-webhooks/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
}

/// Sends webhooks.
pub(crate) struct Deliverer {
    pool: PgPool,
    client: reqwest::Client,
    key: SigningKey,
    schedule: Schedule,
    policy: Arc<NetworkPolicy>,
    concurrency: usize,
    lease: Duration,
}

impl Deliverer {
    /// A deliverer, or `None` when no signing secret is configured (deliveries then stay
    /// queued until one is: nothing is sent unsigned, nothing is dropped).
    pub(crate) fn new(pool: PgPool, settings: &WebhookSettings, lease: Duration) -> Option<Self> {
        let key = settings.signing_key.clone()?;
        let policy = Arc::new(settings.network_policy.clone());
        let client = match client(settings, policy.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %describe(&e), "the merchant webhook client cannot be built");
                return None;
            }
        };
        Some(Self {
            pool,
            client,
            key,
            schedule: settings.schedule.clone(),
            policy,
            concurrency: settings.concurrency,
            lease,
        })
    }

    /// Claims due deliveries and attempts each once.
    pub(crate) async fn step(&self) -> Result<DeliveryOutcome, StoreError> {
        let claimed =
            merchant_webhooks::claim_due(&self.pool, self.concurrency as i64 * 2, self.lease)
                .await?;
        if claimed.is_empty() {
            return Ok(DeliveryOutcome::Idle);
        }
        let n = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(self.concurrency, |d| async move {
                let result = self.attempt(&d).await;
                crate::metrics::webhook_attempt(
                    match result.next {
                        Next::Delivered => "delivered",
                        Next::Retry(_) => "retry",
                        Next::Fail => "failed",
                    },
                    result.latency,
                );
                tracing::info!(
                    event_id = %d.event_id,
                    status = result.status_code.map(u64::from),
                    next = match result.next {
                        Next::Delivered => "delivered",
                        Next::Retry(_) => "retry",
                        Next::Fail => "failed",
                    },
                    retry_in_ms = match result.next {
                        Next::Retry(d) => Some(d.as_millis() as u64),
                        _ => None,
                    },
                    error = result.error.as_deref().unwrap_or(""),
                    "webhook attempt"
                );
                if let Err(e) = record_attempt(&self.pool, &d, &result).await {
                    // The lease expires and the delivery is attempted again: at least once.
                    tracing::warn!(event_id = %d.event_id, error = %e, "recording a webhook attempt failed");
                }
            })
            .await;
        Ok(DeliveryOutcome::Attempted(n))
    }

    /// Runs [`Deliverer::step`] until shutdown.
    pub(crate) async fn run(&self, wakeup: &Notify, idle: Duration, shutdown: &CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(DeliveryOutcome::Attempted(_)) => failures = 0,
                Ok(DeliveryOutcome::Idle) => crate::pipeline::idle(wakeup, idle, shutdown).await,
                Err(e) => {
                    failures += 1;
                    let delay = Duration::from_millis(200 * u64::from(failures.min(25)));
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "webhook delivery step failed");
                    tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => {} }
                }
            }
        }
    }

    /// One HTTP attempt, classified.
    async fn attempt(&self, d: &ClaimedDelivery) -> AttemptResult {
        let attempted_at = Utc::now();
        let start = Instant::now();
        let made = usize::try_from(d.round_attempts).unwrap_or(0) + 1;
        let retry_or_fail = |retry_after: Option<Duration>| match self.schedule.next_delay(made) {
            Some(delay) => Next::Retry(delay.max(retry_after.unwrap_or_default())),
            None => Next::Fail,
        };
        let fail_now = |error: String| AttemptResult {
            attempted_at,
            status_code: None,
            latency: start.elapsed(),
            response_excerpt: None,
            error: Some(error),
            next: Next::Fail,
        };

        let url = match reqwest::Url::parse(&d.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => return fail_now(format!("callback URL `{}` is not an http(s) URL", d.url)),
        };
        // Literal IPs never reach the resolver, so they are checked here.
        if let Some(ip) = literal_ip(&url) {
            if let Err(why) = self.policy.check(ip) {
                return fail_now(why);
            }
        }
        let body = match serde_json::to_vec(&d.payload) {
            Ok(b) => b,
            Err(e) => return fail_now(format!("event does not serialize: {e}")),
        };
        let id = d.event_id.to_string();
        let ts = attempted_at.timestamp();
        let signature = self.key.sign(&id, ts, &body);
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body);
        match request.send().await {
            Err(e) => {
                let refused = std::iter::successors(e.source(), |s| (*s).source())
                    .find_map(|s| s.downcast_ref::<PolicyRefusal>())
                    .map(|r| r.0.clone());
                match refused {
                    Some(why) => fail_now(why),
                    None => AttemptResult {
                        attempted_at,
                        status_code: None,
                        latency: start.elapsed(),
                        response_excerpt: None,
                        error: Some(describe(&e)),
                        next: retry_or_fail(None),
                    },
                }
            }
            Ok(mut response) => {
                let status = response.status();
                // Clamped (crate::retry::MAX_RETRY_AFTER): a merchant's huge value must not
                // park the delivery for ever or overflow its stored next attempt.
                let retry_after = crate::retry::retry_after_header(response.headers());
                let mut excerpt = Vec::new();
                while excerpt.len() < EXCERPT_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => excerpt.extend_from_slice(
                            &chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())],
                        ),
                        _ => break,
                    }
                }
                let next = if status.is_success() {
                    Next::Delivered
                } else if status == reqwest::StatusCode::GONE {
                    // The merchant says the endpoint is gone for good: stop retrying.
                    Next::Fail
                } else {
                    retry_or_fail(retry_after)
                };
                AttemptResult {
                    attempted_at,
                    status_code: Some(status.as_u16()),
                    latency: start.elapsed(),
                    response_excerpt: Some(String::from_utf8_lossy(&excerpt).into_owned()),
                    error: (!status.is_success()).then(|| format!("HTTP {status}")),
                    next,
                }
            }
        }
    }
}

fn literal_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(_) => None,
    }
}

/// A transport error without the URL (which may carry a merchant's token in its query).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let causes = || std::iter::successors(e.source(), |s| (*s).source());
    // A name that does not resolve is said as such, not as "client error (Connect)".
    if let Some(dns) = causes().find_map(|s| s.downcast_ref::<super::ssrf::DnsFailure>()) {
        return format!("{kind}: {dns}");
    }
    // Every cause once: hyper's "client error (Connect)" says nothing by itself; the
    // cause under it does ("tcp connect error: Connection refused").
    let mut out = kind.to_string();
    for cause in causes() {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Records an attempt ([`merchant_webhooks::record_attempt`]) in a transaction of its own; `false`
/// when the claim was lost (nothing written).
async fn record_attempt(
    pool: &PgPool,
    d: &ClaimedDelivery,
    r: &AttemptResult,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let recorded = merchant_webhooks::record_attempt(&mut tx, d, r).await?;
    tx.commit().await?;
    Ok(recorded)
}
