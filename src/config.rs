//! Configuration from environment variables, validated once at start.
//!
//! Every setting has a default that works on a local machine with PostgreSQL and RabbitMQ
//! on their standard ports, so `refund-worker run` needs no setup. Provider secrets are
//! wrapped in [`secrecy::SecretString`]: `Debug` prints `[REDACTED]`, and the only way to
//! the value is an explicit `expose_secret()` at the point of signing.

use crate::domain::ProviderName;
use crate::retry::RetryPolicy;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Default PostgreSQL URL: the local server, database `refund_worker` (created by `migrate`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/refund_worker";
/// Default RabbitMQ URL: the local broker, default vhost.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Connection settings for one provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// API base URL, e.g. `https://api.provider.example` or the sandbox's address.
    pub base_url: url::Url,
    /// API key (VA Services: the bearer token).
    pub api_key: SecretString,
    /// API secret used for request signing, where the provider signs requests.
    pub api_secret: Option<SecretString>,
    /// Secret (or public key) for verifying the provider's webhooks.
    pub webhook_secret: Option<SecretString>,
    /// Whole-request timeout for one provider call.
    pub timeout: Duration,
    /// Connect timeout (a connect failure is certain not to have reached the provider).
    pub connect_timeout: Duration,
    /// Zone of the provider's zone-less timestamps (VA Services).
    pub timezone: chrono_tz::Tz,
    /// Header carrying the webhook signature, where the provider's docs leave it open
    /// (BPN, VA Services); `None` means the adapter's documented default.
    pub webhook_signature_header: Option<String>,
    /// How far a signed webhook timestamp may be from our clock, where the scheme has one.
    pub webhook_tolerance: Duration,
    /// BPN: path of "Get Virtual Account Order Detail" (left open by their docs).
    pub order_detail_path: Option<String>,
    /// BPN: path of "List Virtual Account Orders" (left open by their docs).
    pub order_list_path: Option<String>,
    /// `PROVIDER_<NAME>_STATUS_PATH`: path template of the refund status lookup, where the
    /// docs leave it open (VA Services, BVNK); `None` means the adapter's default.
    pub status_path: Option<String>,
    /// `PROVIDER_<NAME>_DETAILS_PATH`: VA Services' "Refund Details" path template (`off`
    /// disables that extra check); `None` means the adapter's default.
    pub details_path: Option<String>,
    /// `PROVIDER_<NAME>_REFUND_PATH`: path template of the refund call, where the docs show
    /// more than one (BVNK); `None` means the adapter's default.
    pub refund_path: Option<String>,
    /// `PROVIDER_<NAME>_REFUND_AMOUNT_FIELD`: the refund body's amount field where the docs
    /// do not name it (BPN's "refund by amount"); `None` means the adapter's default.
    pub refund_amount_field: Option<String>,
    /// `PROVIDER_<NAME>_REFUND_TRANSACTION_FIELD`: the refund body's pay-in reference field
    /// (BPN's "refund by transaction reference"); `None` means the adapter's default.
    pub refund_transaction_field: Option<String>,
    /// `PROVIDER_<NAME>_RESEND_WEBHOOK_PATH` / `_RESEND_WEBHOOK_BODY`: BPN's "resend fail
    /// webhook" call (path and JSON body template left open by their docs; `off` disables).
    pub resend_webhook_path: Option<String>,
    /// See `resend_webhook_path`.
    pub resend_webhook_body: Option<String>,
    /// `PROVIDER_<NAME>_SEND_NOTIFICATION_PATH` / `_SEND_NOTIFICATION_BODY`: VA Services'
    /// "Send Notification" call (path and body template left open; `off` disables).
    pub send_notification_path: Option<String>,
    /// See `send_notification_path`.
    pub send_notification_body: Option<String>,
}

/// Outbound merchant webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_DEFAULT_URL`: endpoint for refunds whose command has no `callbackUrl`.
    pub default_url: Option<String>,
    /// `WEBHOOK_SIGNING_SECRET` (`whsec_...`). Without it deliveries stay queued, unsent.
    pub signing_key: Option<crate::merchant_webhooks::signing::SigningKey>,
    /// `WEBHOOK_RETRY_SCHEDULE`, e.g. `0s,5s,5m,30m,2h,5h,10h,10h`.
    pub schedule: crate::merchant_webhooks::schedule::Schedule,
    /// `WEBHOOK_TIMEOUT_MS`: one delivery attempt.
    pub timeout: Duration,
    /// `WEBHOOK_ALLOW_NETWORKS`: internal networks callbacks may reach (default none).
    pub network_policy: crate::merchant_webhooks::ssrf::NetworkPolicy,
    /// `WEBHOOK_CONCURRENCY`: deliveries in flight per worker.
    pub concurrency: usize,
}

/// Everything the worker needs to run.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `AMQP_NAME_PREFIX`: prefixed to every exchange and queue name (empty in production;
    /// tests use it to isolate themselves on a shared broker).
    pub amqp_name_prefix: String,
    /// `HTTP_ADDR`: health endpoints.
    pub http_addr: SocketAddr,
    /// `PREFETCH`: unacknowledged commands in flight per worker and command queue
    /// (`refund.commands` and `refund.commands.backlog` each).
    pub prefetch: u16,
    /// `INTAKE_BATCH`: most commands stored in one intake transaction.
    pub intake_batch: usize,
    /// `WEBHOOK_LANES`: ordered lanes applying provider webhooks side by side.
    pub webhook_lanes: usize,
    /// `DISPATCH_BATCH`: due refunds claimed per scheduler step.
    pub dispatch_batch: i64,
    /// `DISPATCH_CONCURRENCY`: provider calls in flight per worker.
    pub dispatch_concurrency: usize,
    /// `DISPATCH_CONCURRENCY_MAX`: the most provider calls in flight the adaptive limit may
    /// grow to when providers are slow (at least `dispatch_concurrency`).
    pub dispatch_concurrency_max: usize,
    /// `IDLE_POLL_MS`: how often idle loops look for work they were not woken for.
    pub idle_poll: Duration,
    /// `CLAIM_LEASE_SECS`: how long a claimed refund is reserved for one worker.
    pub claim_lease: Duration,
    /// `PARKED_RETRY_MS`: how often webhooks parked for an unknown refund are tried again.
    pub parked_retry: Duration,
    /// `PARKED_MAX_AGE_SECS`: after this long a parked webhook is marked unmatched.
    pub parked_max_age: Duration,
    /// `WEBHOOK_INGRESS_MAX_BYTES`: largest provider webhook body the ingress accepts.
    pub ingress_max_bytes: usize,
    /// `WEBHOOK_INGRESS_RATE_PER_SEC`: sustained provider webhooks per second per source
    /// address; more get 429 with `Retry-After`.
    pub ingress_rate_per_sec: u32,
    /// `WEBHOOK_INGRESS_BURST`: how many a source may send at once above the rate.
    pub ingress_burst: u32,
    /// `WEBHOOK_INGRESS_TIMEOUT_MS`: whole-request limit of one provider webhook (reading
    /// the body included); slower requests get 408.
    pub ingress_timeout: Duration,
    /// `HTTP_HEADER_TIMEOUT_MS`: how long a client may take to send a request's headers
    /// (and how long an idle keep-alive connection stays open) before it is closed.
    pub http_header_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`: most connections served at once; more wait to be accepted.
    pub http_max_connections: usize,
    /// Retry schedule for failed provider calls (`RETRY_*`, `MAX_SUBMIT_ATTEMPTS`).
    pub retry: RetryPolicy,
    /// Status polling schedule for accepted refunds (`POLL_*`).
    pub poll: RetryPolicy,
    /// `SHUTDOWN_GRACE_SECS`: how long in-flight work may take to drain on SIGTERM.
    pub shutdown_grace: Duration,
    /// Configured providers; a command for any other provider fails `INVALID_COMMAND`.
    pub providers: BTreeMap<ProviderName, ProviderSettings>,
    /// Outbound merchant webhooks.
    pub webhooks: WebhookSettings,
    /// `ADMIN_TOKEN`: bearer token of the admin API; the admin routes are off without it.
    pub admin_token: Option<SecretString>,
    /// `REVIEW_AFTER`: a refund still without a final answer this long after it was
    /// accepted is flagged for operator review.
    pub review_after: Duration,
    /// `REVIEW_POLL`: how often a refund in review is still asked about (at least).
    pub review_poll: Duration,
    /// `REQUIRE_PAYMENT_AMOUNT`: refuse (`INVALID_COMMAND`) a refund that nothing can guard
    /// against over-refunding (no paymentAmount, no pay-in in the ledger, and a provider
    /// that does not report the refundable amount before the refund call).
    pub require_payment_amount: bool,
    /// How long operational rows are kept (`RETENTION`, per-table `RETENTION_*`).
    pub retention: Retention,
}

/// How long operational rows are kept before the retention sweep removes them. Refunds and
/// their transition history are kept for ever; these are the rows that only serve
/// operations for a while: published outbox events, settled provider webhooks, merchant
/// delivery attempts and provider call records of final refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Published outbox rows (`RETENTION_OUTBOX`).
    pub outbox: Duration,
    /// Applied, unchanged and ignored provider webhooks (`RETENTION_INBOX`); parked,
    /// unmatched and contradicting ones are kept for an operator.
    pub inbox: Duration,
    /// Merchant webhook delivery attempts (`RETENTION_WEBHOOK_ATTEMPTS`).
    pub webhook_attempts: Duration,
    /// Provider calls of final refunds (`RETENTION_PROVIDER_ATTEMPTS`).
    pub provider_attempts: Duration,
    /// How often the sweep runs (`RETENTION_INTERVAL`).
    pub interval: Duration,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// Reads settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let num = |key: &str, default: u64| -> Result<u64, ConfigError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| ConfigError(format!("{key} must be a whole number, got `{v}`"))),
            }
        };
        let ms = |key: &str, default: u64| num(key, default).map(Duration::from_millis);
        let duration = |key: &str, default: &str| -> Result<Duration, ConfigError> {
            let text = get(key).unwrap_or_else(|| default.into());
            crate::merchant_webhooks::schedule::parse_duration(text.trim())
                .map_err(|e| ConfigError(format!("{key}: {e}")))
        };
        let flag = |key: &str| -> Result<bool, ConfigError> {
            match get(key).map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(false),
                Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
                Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
                Some(v) => Err(ConfigError(format!(
                    "{key} must be true or false, got `{v}`"
                ))),
            }
        };

        let mut providers = BTreeMap::new();
        for name in ProviderName::ALL {
            let prefix = format!("PROVIDER_{}", name.as_str().to_ascii_uppercase());
            let Some(base) = get(&format!("{prefix}_BASE_URL")) else {
                continue;
            };
            let base_url = url::Url::parse(&base)
                .map_err(|e| ConfigError(format!("{prefix}_BASE_URL is not a URL: {e}")))?;
            let api_key = get(&format!("{prefix}_API_KEY")).ok_or_else(|| {
                ConfigError(format!(
                    "{prefix}_API_KEY is required with {prefix}_BASE_URL"
                ))
            })?;
            let tz_name =
                get(&format!("{prefix}_TIMEZONE")).unwrap_or_else(|| "Africa/Lagos".into());
            let timezone = tz_name.parse().map_err(|_| {
                ConfigError(format!("{prefix}_TIMEZONE `{tz_name}` is not an IANA zone"))
            })?;
            // Binance Pay's webhook key is a PEM public key: the adapter parses it when the
            // providers are built at start (`BinancePay::new`), so an unusable one stops the
            // start there, naming the variable (never the value).
            let webhook_secret = get(&format!("{prefix}_WEBHOOK_SECRET"));
            if let Some(header) = get(&format!("{prefix}_WEBHOOK_SIGNATURE_HEADER")) {
                reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                    ConfigError(format!(
                        "{prefix}_WEBHOOK_SIGNATURE_HEADER `{header}` is not an HTTP header name"
                    ))
                })?;
            }
            providers.insert(
                name,
                ProviderSettings {
                    base_url,
                    api_key: api_key.into(),
                    api_secret: get(&format!("{prefix}_API_SECRET")).map(Into::into),
                    webhook_secret: webhook_secret.map(Into::into),
                    timeout: ms(&format!("{prefix}_TIMEOUT_MS"), 10_000)?,
                    connect_timeout: ms(&format!("{prefix}_CONNECT_TIMEOUT_MS"), 3_000)?,
                    timezone,
                    webhook_signature_header: get(&format!("{prefix}_WEBHOOK_SIGNATURE_HEADER")),
                    webhook_tolerance: Duration::from_secs(num(
                        &format!("{prefix}_WEBHOOK_TOLERANCE_SECS"),
                        300,
                    )?),
                    order_detail_path: get(&format!("{prefix}_ORDER_DETAIL_PATH")),
                    order_list_path: get(&format!("{prefix}_ORDER_LIST_PATH")),
                    status_path: get(&format!("{prefix}_STATUS_PATH")),
                    details_path: get(&format!("{prefix}_DETAILS_PATH")),
                    refund_path: get(&format!("{prefix}_REFUND_PATH")),
                    refund_amount_field: get(&format!("{prefix}_REFUND_AMOUNT_FIELD")),
                    refund_transaction_field: get(&format!("{prefix}_REFUND_TRANSACTION_FIELD")),
                    resend_webhook_path: get(&format!("{prefix}_RESEND_WEBHOOK_PATH")),
                    resend_webhook_body: get(&format!("{prefix}_RESEND_WEBHOOK_BODY")),
                    send_notification_path: get(&format!("{prefix}_SEND_NOTIFICATION_PATH")),
                    send_notification_body: get(&format!("{prefix}_SEND_NOTIFICATION_BODY")),
                },
            );
        }

        let webhooks = WebhookSettings {
            default_url: get("WEBHOOK_DEFAULT_URL"),
            signing_key: get("WEBHOOK_SIGNING_SECRET")
                .map(|s| {
                    crate::merchant_webhooks::signing::SigningKey::from_secret(&s)
                        .map_err(|e| ConfigError(format!("WEBHOOK_SIGNING_SECRET: {e}")))
                })
                .transpose()?,
            schedule: crate::merchant_webhooks::schedule::Schedule::parse(
                &get("WEBHOOK_RETRY_SCHEDULE")
                    .unwrap_or_else(|| crate::merchant_webhooks::schedule::DEFAULT.into()),
            )
            .map_err(|e| ConfigError(format!("WEBHOOK_RETRY_SCHEDULE: {e}")))?,
            timeout: ms("WEBHOOK_TIMEOUT_MS", 10_000)?,
            network_policy: crate::merchant_webhooks::ssrf::NetworkPolicy::parse(
                &get("WEBHOOK_ALLOW_NETWORKS").unwrap_or_default(),
            )
            .map_err(|e| ConfigError(format!("WEBHOOK_ALLOW_NETWORKS: {e}")))?,
            concurrency: num("WEBHOOK_CONCURRENCY", 16)? as usize,
        };
        if let Some(url) = &webhooks.default_url {
            url::Url::parse(url)
                .map_err(|e| ConfigError(format!("WEBHOOK_DEFAULT_URL is not a URL: {e}")))?;
        }
        let http_addr = get("HTTP_ADDR").unwrap_or_else(|| "127.0.0.1:8080".into());
        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        check_url_scheme("DATABASE_URL", &database_url, &["postgres", "postgresql"])?;
        let amqp_url = get("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into());
        check_url_scheme("AMQP_URL", &amqp_url, &["amqp", "amqps"])?;
        let config = Config {
            database_url,
            database_max_connections: num("DATABASE_MAX_CONNECTIONS", 10)? as u32,
            amqp_url,
            amqp_name_prefix: get("AMQP_NAME_PREFIX").unwrap_or_default(),
            http_addr: resolve_http_addr(&http_addr)?,
            prefetch: u16::try_from(num("PREFETCH", 64)?)
                .map_err(|_| ConfigError("PREFETCH must be at most 65535".into()))?,
            intake_batch: num("INTAKE_BATCH", 32)? as usize,
            webhook_lanes: num("WEBHOOK_LANES", 1)? as usize,
            dispatch_batch: num("DISPATCH_BATCH", 32)? as i64,
            dispatch_concurrency: num("DISPATCH_CONCURRENCY", 32)? as usize,
            dispatch_concurrency_max: num("DISPATCH_CONCURRENCY_MAX", 512)? as usize,
            idle_poll: ms("IDLE_POLL_MS", 250)?,
            parked_retry: ms("PARKED_RETRY_MS", 1_000)?,
            parked_max_age: Duration::from_secs(num("PARKED_MAX_AGE_SECS", 86_400)?),
            ingress_max_bytes: num("WEBHOOK_INGRESS_MAX_BYTES", 256 * 1024)? as usize,
            ingress_rate_per_sec: u32::try_from(num("WEBHOOK_INGRESS_RATE_PER_SEC", 200)?)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ConfigError("WEBHOOK_INGRESS_RATE_PER_SEC must be between 1 and 4294967295".into())
                })?,
            ingress_burst: u32::try_from(num("WEBHOOK_INGRESS_BURST", 400)?)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ConfigError("WEBHOOK_INGRESS_BURST must be between 1 and 4294967295".into())
                })?,
            ingress_timeout: ms("WEBHOOK_INGRESS_TIMEOUT_MS", 15_000)?,
            http_header_timeout: ms("HTTP_HEADER_TIMEOUT_MS", 10_000)?,
            http_max_connections: num("HTTP_MAX_CONNECTIONS", 1024)? as usize,
            claim_lease: Duration::from_secs(num("CLAIM_LEASE_SECS", 60)?),
            retry: RetryPolicy {
                initial: ms("RETRY_INITIAL_MS", 1_000)?,
                max: ms("RETRY_MAX_MS", 300_000)?,
                multiplier: 2.0,
                max_attempts: num("MAX_SUBMIT_ATTEMPTS", 8)? as u32,
            },
            poll: RetryPolicy {
                initial: ms("POLL_INITIAL_MS", 2_000)?,
                max: ms("POLL_MAX_MS", 60_000)?,
                multiplier: 1.5,
                max_attempts: u32::MAX,
            },
            shutdown_grace: Duration::from_secs(num("SHUTDOWN_GRACE_SECS", 25)?),
            providers,
            webhooks,
            admin_token: match get("ADMIN_TOKEN").filter(|t| !t.is_empty()) {
                Some(t) if t.chars().count() < 16 => {
                    return Err(ConfigError("ADMIN_TOKEN must be at least 16 characters (or unset to disable the admin API)".into()))
                }
                t => t.map(Into::into),
            },
            review_after: duration("REVIEW_AFTER", "24h")?,
            review_poll: duration("REVIEW_POLL", "15m")?,
            require_payment_amount: flag("REQUIRE_PAYMENT_AMOUNT")?,
            retention: {
                let all = get("RETENTION").unwrap_or_else(|| "30d".into());
                let table = |key: &str| duration(key, &all);
                Retention {
                    outbox: table("RETENTION_OUTBOX")?,
                    inbox: table("RETENTION_INBOX")?,
                    webhook_attempts: table("RETENTION_WEBHOOK_ATTEMPTS")?,
                    provider_attempts: table("RETENTION_PROVIDER_ATTEMPTS")?,
                    interval: duration("RETENTION_INTERVAL", "10m")?,
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks: settings that are fine alone but wrong together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.prefetch == 0
            || self.intake_batch == 0
            || self.webhook_lanes == 0
            || self.dispatch_batch <= 0
            || self.dispatch_concurrency == 0
        {
            return Err(ConfigError(
                "PREFETCH, INTAKE_BATCH, WEBHOOK_LANES, DISPATCH_BATCH and DISPATCH_CONCURRENCY \
                 must be at least 1"
                    .into(),
            ));
        }
        if self.http_max_connections == 0
            || self.http_header_timeout.is_zero()
            || self.ingress_timeout.is_zero()
        {
            return Err(ConfigError(
                "HTTP_MAX_CONNECTIONS, HTTP_HEADER_TIMEOUT_MS and WEBHOOK_INGRESS_TIMEOUT_MS \
                 must be at least 1"
                    .into(),
            ));
        }
        if self.webhooks.concurrency == 0 {
            return Err(ConfigError("WEBHOOK_CONCURRENCY must be at least 1".into()));
        }
        if self.webhooks.timeout + Duration::from_secs(5) > self.claim_lease {
            return Err(ConfigError(format!(
                "CLAIM_LEASE_SECS ({}s) must exceed WEBHOOK_TIMEOUT_MS by at least 5s",
                self.claim_lease.as_secs()
            )));
        }
        // PostgreSQL's interval arithmetic and our clock both handle ten years.
        let ten_years = Duration::from_secs(3650 * 86_400);
        for (key, d) in [
            ("REVIEW_AFTER", self.review_after),
            ("REVIEW_POLL", self.review_poll),
            ("RETENTION_OUTBOX", self.retention.outbox),
            ("RETENTION_INBOX", self.retention.inbox),
            (
                "RETENTION_WEBHOOK_ATTEMPTS",
                self.retention.webhook_attempts,
            ),
            (
                "RETENTION_PROVIDER_ATTEMPTS",
                self.retention.provider_attempts,
            ),
            ("RETENTION_INTERVAL", self.retention.interval),
        ] {
            if d < Duration::from_secs(1) || d > ten_years {
                return Err(ConfigError(format!(
                    "{key} must be between 1s and 3650d, got {}s",
                    d.as_secs_f64()
                )));
            }
        }
        if self.retry.max_attempts == 0 {
            return Err(ConfigError("MAX_SUBMIT_ATTEMPTS must be at least 1".into()));
        }
        // AMQP names are at most 255 bytes, and lapin panics on a longer one; the longest
        // name the prefix goes in front of is `provider.webhooks.dlq`.
        let max_prefix = 255 - "provider.webhooks.dlq".len();
        if self.amqp_name_prefix.len() > max_prefix {
            return Err(ConfigError(format!(
                "AMQP_NAME_PREFIX must be at most {max_prefix} bytes, got {}",
                self.amqp_name_prefix.len()
            )));
        }
        for (name, p) in &self.providers {
            // A lease shorter than a call would let a second worker claim the refund
            // while the first is still waiting for the provider.
            if p.timeout + Duration::from_secs(5) > self.claim_lease {
                return Err(ConfigError(format!(
                    "CLAIM_LEASE_SECS ({}s) must exceed the {name} timeout ({:?}) by at least 5s",
                    self.claim_lease.as_secs(),
                    p.timeout
                )));
            }
        }
        Ok(())
    }

    /// Settings for a provider, if configured.
    pub fn provider(&self, name: ProviderName) -> Option<&ProviderSettings> {
        self.providers.get(&name)
    }
}

/// Refuses a URL of another scheme (a `mysql://` DATABASE_URL used to get as far as a
/// connection attempt and a confusing driver error), naming the variable, never the URL
/// (it may hold a password).
fn check_url_scheme(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let parsed =
        url::Url::parse(url).map_err(|e| ConfigError(format!("{key} is not a URL ({e})")))?;
    if schemes.contains(&parsed.scheme()) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key} must start with {}, not `{}:`",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or "),
            parsed.scheme()
        )))
    }
}

/// `HTTP_ADDR`: an IP address and port (`0.0.0.0:8080`, `[::1]:8080`), or a host name and
/// port (`localhost:8080`), resolved once here, at start; the first address is used.
fn resolve_http_addr(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(ConfigError(format!(
            "HTTP_ADDR `{text}` is not host:port (e.g. 127.0.0.1:8080 or localhost:8080)"
        )));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ConfigError(format!(
            "HTTP_ADDR `{text}` is not host:port (e.g. 127.0.0.1:8080 or localhost:8080)"
        )));
    }
    // Resolution at start, once: the listener binds one address.
    use std::net::ToSocketAddrs;
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        ConfigError(format!(
            "HTTP_ADDR `{text}`: `{host}` does not resolve: {e}"
        ))
    })?;
    addrs
        .next()
        .ok_or_else(|| ConfigError(format!("HTTP_ADDR `{text}`: `{host}` has no address")))
}

/// `url` with its password replaced by `***`, for logs and `Debug`. A URL that does not
/// parse is not shown at all: it may still hold a password.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() && u.set_password(Some("***")).is_err() {
                return "<URL with a password, not shown>".into();
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL, not shown>".into(),
    }
}

/// Written out (not derived) so the database and broker URLs show without their passwords.
/// The destructuring is exhaustive on purpose: a new field does not compile until it is
/// decided here whether it may be printed.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Config {
            database_url,
            database_max_connections,
            amqp_url,
            amqp_name_prefix,
            http_addr,
            prefetch,
            intake_batch,
            webhook_lanes,
            dispatch_batch,
            dispatch_concurrency,
            dispatch_concurrency_max,
            idle_poll,
            claim_lease,
            parked_retry,
            parked_max_age,
            ingress_max_bytes,
            ingress_rate_per_sec,
            ingress_burst,
            ingress_timeout,
            http_header_timeout,
            http_max_connections,
            retry,
            poll,
            shutdown_grace,
            providers,
            webhooks,
            admin_token,
            review_after,
            review_poll,
            require_payment_amount,
            retention,
        } = self;
        f.debug_struct("Config")
            .field("database_url", &redact_url(database_url))
            .field("database_max_connections", database_max_connections)
            .field("amqp_url", &redact_url(amqp_url))
            .field("amqp_name_prefix", amqp_name_prefix)
            .field("http_addr", http_addr)
            .field("prefetch", prefetch)
            .field("intake_batch", intake_batch)
            .field("webhook_lanes", webhook_lanes)
            .field("dispatch_batch", dispatch_batch)
            .field("dispatch_concurrency", dispatch_concurrency)
            .field("dispatch_concurrency_max", dispatch_concurrency_max)
            .field("idle_poll", idle_poll)
            .field("claim_lease", claim_lease)
            .field("parked_retry", parked_retry)
            .field("parked_max_age", parked_max_age)
            .field("ingress_max_bytes", ingress_max_bytes)
            .field("ingress_rate_per_sec", ingress_rate_per_sec)
            .field("ingress_burst", ingress_burst)
            .field("ingress_timeout", ingress_timeout)
            .field("http_header_timeout", http_header_timeout)
            .field("http_max_connections", http_max_connections)
            .field("retry", retry)
            .field("poll", poll)
            .field("shutdown_grace", shutdown_grace)
            .field("providers", providers)
            .field("webhooks", webhooks)
            .field("admin_token", admin_token)
            .field("review_after", review_after)
            .field("review_poll", review_poll)
            .field("require_payment_amount", require_payment_amount)
            .field("retention", retention)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_locally() {
        let c = from(&[]).unwrap();
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert!(c.providers.is_empty());
        assert_eq!(c.http_addr.port(), 8080);
    }

    #[test]
    fn provider_secrets_never_show_in_debug() {
        let c = from(&[
            ("PROVIDER_VA_SERVICES_BASE_URL", "http://127.0.0.1:1"),
            ("PROVIDER_VA_SERVICES_API_KEY", "super-secret-key-123"),
            ("PROVIDER_VA_SERVICES_API_SECRET", "another-secret-456"),
            ("ADMIN_TOKEN", "admin-token-789-long-enough"),
            (
                "WEBHOOK_SIGNING_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("super-secret-key-123"));
        assert!(!dbg.contains("another-secret-456"));
        assert!(!dbg.contains("admin-token-789"));
        assert!(!dbg.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(c.provider(ProviderName::VaServices).is_some());
    }

    #[test]
    fn connection_url_passwords_never_show_in_debug() {
        let c = from(&[
            (
                "DATABASE_URL",
                "postgres://worker:pg-pass-0f3a9@db.internal:5432/refund_worker",
            ),
            (
                "AMQP_URL",
                "amqps://worker:mq-pass-77d1@mq.internal:5671/%2f",
            ),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pg-pass-0f3a9"), "{dbg}");
        assert!(!dbg.contains("mq-pass-77d1"), "{dbg}");
        assert!(dbg.contains("postgres://worker:***@db.internal:5432/refund_worker"));
        assert!(dbg.contains("amqps://worker:***@mq.internal:5671/%2f"));
        assert_eq!(redact_url("not a url pass"), "<unparseable URL, not shown>");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db"
        );
    }

    #[test]
    fn unusable_secrets_stop_the_start_naming_the_variable_not_the_value() {
        // Binance Pay's webhook key: crate::providers::binance_pay's tests.
        let e = from(&[("WEBHOOK_SIGNING_SECRET", "hunter2-secret")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEBHOOK_SIGNING_SECRET"), "{e}");
        assert!(e.contains("whsec_"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_name_prefix_leaves_every_amqp_name_within_255_bytes() {
        let longest = "p".repeat(234);
        let c = from(&[("AMQP_NAME_PREFIX", longest.as_str())]).unwrap();
        let t = crate::broker::Topology::with_prefix(&c.amqp_name_prefix);
        assert_eq!(t.webhooks_dlq.len(), 255);
        let e = from(&[("AMQP_NAME_PREFIX", &format!("{longest}p"))]).unwrap_err();
        assert!(e.to_string().contains("AMQP_NAME_PREFIX"), "{e}");
    }

    #[test]
    fn http_addr_takes_a_host_name() {
        let c = from(&[("HTTP_ADDR", "localhost:8089")]).unwrap();
        assert_eq!(c.http_addr.port(), 8089);
        assert!(c.http_addr.ip().is_loopback());
        for bad in [
            "localhost",
            "localhost:http",
            ":8080",
            "no-such-host.invalid:8080",
        ] {
            let e = from(&[("HTTP_ADDR", bad)]).unwrap_err().to_string();
            assert!(e.contains("HTTP_ADDR"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_database_url_of_another_scheme_is_refused() {
        let e = from(&[("DATABASE_URL", "mysql://root:pw-77@127.0.0.1/x")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("DATABASE_URL must start with postgres://"),
            "{e}"
        );
        assert!(!e.contains("pw-77"), "{e}");
        assert!(from(&[("DATABASE_URL", "postgresql://u@h/db")]).is_ok());
        let e = from(&[("AMQP_URL", "http://127.0.0.1:5672")]).unwrap_err();
        assert!(
            e.to_string().contains("AMQP_URL must start with amqp://"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = from(&[("PREFETCH", "lots")]).unwrap_err();
        assert!(e.to_string().contains("PREFETCH must be a whole number"));
        let e = from(&[("ADMIN_TOKEN", "short")]).unwrap_err();
        assert!(e
            .to_string()
            .contains("ADMIN_TOKEN must be at least 16 characters"));
        assert!(from(&[("ADMIN_TOKEN", "")]).unwrap().admin_token.is_none());
        let e = from(&[("PROVIDER_BVNK_BASE_URL", "http://x")]).unwrap_err();
        assert!(e.to_string().contains("PROVIDER_BVNK_API_KEY is required"));
        let e = from(&[
            ("PROVIDER_BPN_BASE_URL", "http://x"),
            ("PROVIDER_BPN_API_KEY", "k"),
            ("PROVIDER_BPN_TIMEOUT_MS", "90000"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("CLAIM_LEASE_SECS"));
    }
}
