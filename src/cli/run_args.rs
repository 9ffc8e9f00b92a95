//! `run`'s flags: every setting the worker reads from the environment is also a flag
//! (`DATABASE_URL` is `--database-url`), with the environment variable as its fallback, so
//! `refund-worker run --help` lists them all with their defaults.
//!
//! The flags are built from one table ([`settings`]) rather than a struct of 100 fields;
//! the test `every_setting_config_reads_is_a_flag` asks [`Config::from_lookup`] which
//! variables it reads, so a new setting without a flag fails the build's tests.
//!
//! [`Config::from_lookup`]: crate::config::Config::from_lookup

use crate::domain::ProviderName;
use clap::{Arg, ArgMatches, Command};
use std::collections::BTreeMap;

/// Settings of the whole worker: variable, default (as people read it), meaning.
const GLOBAL: &[(&str, &str, &str)] = &[
    ("DATABASE_URL", crate::config::DEFAULT_DATABASE_URL, "PostgreSQL (postgres:// or postgresql://); the database is created if missing"),
    ("DATABASE_MAX_CONNECTIONS", "10", "pool size per worker"),
    ("AMQP_URL", crate::config::DEFAULT_AMQP_URL, "RabbitMQ (amqp:// or amqps://)"),
    ("AMQP_NAME_PREFIX", "(empty)", "prefix for every exchange and queue name"),
    ("HTTP_ADDR", "127.0.0.1:8080", "host:port of /healthz, /readyz, /metrics, the webhook ingress and the admin API (a host name is resolved at start)"),
    ("PREFETCH", "64", "unacked commands in flight per worker"),
    ("INTAKE_BATCH", "32", "most commands stored in one intake transaction"),
    ("WEBHOOK_LANES", "1", "ordered lanes applying provider webhooks side by side"),
    ("DISPATCH_BATCH", "32", "most due refunds claimed at once"),
    ("DISPATCH_CONCURRENCY", "32", "provider calls in flight per worker, at least (the limit adapts to providers' latency)"),
    ("DISPATCH_CONCURRENCY_MAX", "512", "the most provider calls in flight the adaptive limit may reach"),
    ("CLAIM_LEASE_SECS", "60", "how long a claimed refund is reserved"),
    ("RETRY_INITIAL_MS", "1000", "first retry's backoff ceiling"),
    ("RETRY_MAX_MS", "300000", "backoff cap"),
    ("MAX_SUBMIT_ATTEMPTS", "8", "submits before a never-accepted refund fails RETRIES_EXHAUSTED"),
    ("POLL_INITIAL_MS", "2000", "first status poll of an accepted refund"),
    ("POLL_MAX_MS", "60000", "status poll cap"),
    ("IDLE_POLL_MS", "250", "how often idle loops look for work"),
    ("SHUTDOWN_GRACE_SECS", "25", "drain time on SIGTERM"),
    ("WEBHOOK_INGRESS_MAX_BYTES", "262144", "largest provider webhook body"),
    ("WEBHOOK_INGRESS_RATE_PER_SEC", "200", "provider webhooks per second per source address"),
    ("WEBHOOK_INGRESS_BURST", "400", "burst above that rate"),
    ("WEBHOOK_INGRESS_TIMEOUT_MS", "15000", "whole-request limit of one provider webhook"),
    ("HTTP_HEADER_TIMEOUT_MS", "10000", "time a client has to send a request's headers"),
    ("HTTP_MAX_CONNECTIONS", "1024", "most connections served at once"),
    ("PARKED_RETRY_MS", "1000", "how often webhooks for an unknown refund are tried again"),
    ("PARKED_MAX_AGE_SECS", "86400", "when a parked webhook is given up (UNMATCHED)"),
    ("WEBHOOK_SIGNING_SECRET", "unset", "whsec_<base64> secret of merchant webhooks; without it deliveries stay queued (prefer the variable: a flag shows in ps)"),
    ("WEBHOOK_DEFAULT_URL", "unset", "merchant endpoint for refunds without a callbackUrl"),
    ("WEBHOOK_RETRY_SCHEDULE", crate::merchant_webhooks::schedule::DEFAULT, "delays before each merchant webhook attempt"),
    ("WEBHOOK_TIMEOUT_MS", "10000", "one merchant webhook attempt"),
    ("WEBHOOK_ALLOW_NETWORKS", "(none)", "internal networks callbacks may reach, comma-separated CIDRs"),
    ("WEBHOOK_CONCURRENCY", "16", "merchant deliveries in flight per worker"),
    ("ADMIN_TOKEN", "unset", "bearer token of the admin API (16+ characters); unset disables it (prefer the variable: a flag shows in ps)"),
    ("REVIEW_AFTER", "24h", "a refund without a final answer this long is flagged for review"),
    ("REVIEW_POLL", "15m", "a refund in review is asked about at least this often"),
    ("REQUIRE_PAYMENT_AMOUNT", "false", "true: refuse refunds nothing guards against over-refunding"),
    ("RETENTION", "30d", "how long operational rows are kept"),
    ("RETENTION_OUTBOX", "RETENTION", "published outbox events"),
    ("RETENTION_INBOX", "RETENTION", "settled provider webhooks"),
    ("RETENTION_WEBHOOK_ATTEMPTS", "RETENTION", "merchant delivery attempts"),
    ("RETENTION_PROVIDER_ATTEMPTS", "RETENTION", "provider calls of final refunds"),
    ("RETENTION_INTERVAL", "10m", "how often the retention sweep runs"),
    ("LOG_FORMAT", "pretty", "json for JSON logs (RUST_LOG filters)"),
];

/// Settings of each provider, `PROVIDER_<NAME>_` + suffix.
const PER_PROVIDER: &[(&str, &str, &str)] = &[
    (
        "BASE_URL",
        "unset",
        "enables the provider: its API base URL",
    ),
    (
        "API_KEY",
        "unset",
        "API key, required with the URL (prefer the variable: a flag shows in ps)",
    ),
    (
        "API_SECRET",
        "unset",
        "request signing secret (prefer the variable)",
    ),
    (
        "WEBHOOK_SECRET",
        "unset",
        "webhook verification secret; Binance Pay: its PEM public key (prefer the variable)",
    ),
    ("TIMEOUT_MS", "10000", "whole-call timeout"),
    ("CONNECT_TIMEOUT_MS", "3000", "connect timeout"),
    (
        "TIMEZONE",
        "Africa/Lagos",
        "zone of the provider's zone-less timestamps",
    ),
    (
        "WEBHOOK_SIGNATURE_HEADER",
        "per provider",
        "header of the webhook signature",
    ),
    (
        "WEBHOOK_TOLERANCE_SECS",
        "300",
        "how far a signed webhook timestamp may be from our clock",
    ),
    (
        "ORDER_DETAIL_PATH",
        "see README",
        "BPN: order detail lookup path",
    ),
    (
        "ORDER_LIST_PATH",
        "see README",
        "BPN: order list lookup path",
    ),
    (
        "STATUS_PATH",
        "see README",
        "refund status path (VA Services, BVNK)",
    ),
    (
        "DETAILS_PATH",
        "see README",
        "VA Services: Refund Details path (off disables it)",
    ),
    ("REFUND_PATH", "see README", "BVNK: refund call path"),
    (
        "REFUND_AMOUNT_FIELD",
        "amount",
        "BPN: the refund body's amount field (its docs leave it open)",
    ),
    (
        "REFUND_TRANSACTION_FIELD",
        "transactionReference",
        "BPN: the refund body's pay-in reference field",
    ),
    (
        "RESEND_WEBHOOK_PATH",
        "see README",
        "BPN: the \"resend fail webhook\" path (off disables it)",
    ),
    (
        "RESEND_WEBHOOK_BODY",
        "see README",
        "BPN: the \"resend fail webhook\" body template",
    ),
    (
        "SEND_NOTIFICATION_PATH",
        "see README",
        "VA Services: the \"Send Notification\" path (off disables it)",
    ),
    (
        "SEND_NOTIFICATION_BODY",
        "see README",
        "VA Services: the \"Send Notification\" body template",
    ),
];

/// One setting: its environment variable, default and meaning.
#[derive(Debug, Clone)]
pub(crate) struct Setting {
    /// The environment variable (also the flag's id).
    pub name: String,
    /// The default as people read it.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
}

/// Every setting the worker reads, providers' included.
pub(crate) fn settings() -> Vec<Setting> {
    let mut out: Vec<Setting> = GLOBAL
        .iter()
        .map(|(name, default, help)| Setting {
            name: (*name).to_string(),
            default,
            help,
        })
        .collect();
    for provider in ProviderName::ALL {
        let prefix = format!("PROVIDER_{}", provider.as_str().to_ascii_uppercase());
        out.extend(PER_PROVIDER.iter().map(|(suffix, default, help)| Setting {
            name: format!("{prefix}_{suffix}"),
            default,
            help,
        }));
    }
    out
}

/// `run`'s flags, by environment variable name (values from a flag, else the variable).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunArgs {
    values: BTreeMap<String, String>,
}

impl RunArgs {
    /// The value of setting `name`: its flag, else its environment variable (clap's `env`),
    /// else the environment for a variable without a flag; empty counts as unset.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.values
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|v| !v.is_empty())
    }
}

/// A `&'static str` for clap (built once per process).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut values = BTreeMap::new();
        for s in settings() {
            if let Ok(Some(v)) = matches.try_get_one::<String>(&s.name) {
                values.insert(s.name, v.clone());
            }
        }
        Ok(Self { values })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for RunArgs {
    fn augment_args(command: Command) -> Command {
        command.args(settings().into_iter().map(|s| {
            let flag = s.name.to_ascii_lowercase().replace('_', "-");
            Arg::new(leak(s.name.clone()))
                .long(leak(flag))
                .env(leak(s.name))
                // Values of the environment (secrets, URLs with passwords) never in --help.
                .hide_env_values(true)
                .value_name("VALUE")
                .help(leak(format!("{} [default: {}]", s.help, s.default)))
        }))
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_config_reads_is_a_flag() {
        let known: std::collections::BTreeSet<String> =
            settings().into_iter().map(|s| s.name).collect();
        let asked = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let _ = crate::config::Config::from_lookup(|k| {
            asked.lock().unwrap().insert(k.to_string());
            // Every provider configured, so their settings are read too.
            if k.ends_with("_BASE_URL") {
                Some("http://127.0.0.1:1".into())
            } else if k.ends_with("_API_KEY") {
                Some("k".into())
            } else {
                None
            }
        });
        let asked = asked.into_inner().unwrap();
        let missing: Vec<&String> = asked.iter().filter(|k| !known.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "settings without a `run` flag: {missing:?}"
        );
        assert!(asked.len() > 40, "{asked:?}");
    }
}
