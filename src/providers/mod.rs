//! Payment provider adapters behind one [`Provider`] trait.
//!
//! Each adapter turns a refund into the provider's request (with its signing scheme) and
//! maps every response onto the same [`ProviderOutcome`] classification: accepted,
//! succeeded, failed-final with a failure code, retryable, unknown, or not found. The
//! pipeline never looks at provider-specific responses; it only sees outcomes.
//!
//! The same trait owns the provider's inbound webhooks: [`Provider::verify_webhook`] checks
//! the signature over the raw body exactly as received, and [`Provider::parse_webhook`]
//! turns it into [`ProviderWebhook`]s in our terms, so the ingress and the consumer never
//! look at provider-specific payloads either.

pub mod binance_pay;
pub mod bpn;
pub mod bvnk;
mod http;
pub mod resend;
pub mod signing;
pub mod va_services;

use crate::config::{Config, ConfigError, ProviderSettings};
use crate::domain::{Destination, ProviderName, ProviderOutcome};
use async_trait::async_trait;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::Arc;

pub use http::{classify_send_error, classify_status, is_disabled, templated_url};

/// What an adapter needs to know about a refund.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    /// Our reference, which is the idempotency key sent to the provider.
    pub refund_reference: String,
    /// The original payment.
    pub transaction_reference: String,
    /// Exact amount.
    pub amount: Decimal,
    /// Currency code.
    pub currency: String,
    /// Reason for the refund.
    pub reason: String,
    /// Optional customer note.
    pub customer_note: Option<String>,
    /// Destination account, where the provider needs one.
    pub destination: Option<Destination>,
    /// The provider's id for the refund, once known.
    pub provider_reference: Option<String>,
    /// Opaque metadata from the command.
    pub metadata: Option<serde_json::Value>,
}

impl RefundRequest {
    /// The request for a stored refund: its command, and the provider's id once known.
    pub fn from_command(
        cmd: crate::domain::RefundCommand,
        provider_reference: Option<String>,
    ) -> Self {
        Self {
            refund_reference: cmd.refund_reference,
            transaction_reference: cmd.transaction_reference,
            amount: cmd.amount,
            currency: cmd.currency,
            reason: cmd.reason,
            customer_note: cmd.customer_note,
            destination: cmd.destination,
            provider_reference,
            metadata: cmd.metadata,
        }
    }
}

/// What one inbound provider webhook tells us, in our terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderWebhook {
    /// The provider's id for this notification, when it has one (the inbox deduplicates on
    /// it; without one the ingress falls back to a hash of the body).
    pub event_id: Option<String>,
    /// What happened.
    pub kind: WebhookKind,
}

/// The kinds of provider notifications refund-worker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookKind {
    /// A refund's status changed. At least one of the three keys is set; the consumer
    /// finds the refund by our reference first, then the provider's, then the payment.
    Refund {
        /// Our `refundReference`, when the provider echoes it.
        refund_reference: Option<String>,
        /// The provider's id for the refund.
        provider_reference: Option<String>,
        /// The refunded payment (BPN refunds are known only by their order).
        transaction_reference: Option<String>,
        /// The new status, classified like a status lookup's answer.
        outcome: ProviderOutcome,
    },
    /// A payment (pay-in, transaction) status, for the pay-ins ledger.
    Payment {
        /// The provider's reference of the payment, as refund commands name it.
        transaction_reference: String,
        /// Paid amount, exact, when given.
        amount: Option<Decimal>,
        /// Currency code, when given.
        currency: Option<String>,
        /// The provider's own status word.
        status: String,
        /// Whether the payment succeeded (only successful payments can be refunded).
        succeeded: bool,
    },
    /// A notification we have no use for (kept in the inbox, not applied).
    Ignored {
        /// The provider's name for it.
        kind: String,
    },
}

/// Why an inbound webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The signature is missing, malformed or wrong (answered 401, nothing published).
    #[error("webhook signature rejected: {0}")]
    BadSignature(String),
    /// The signed timestamp is outside the tolerance (a replay, or a skewed clock).
    #[error("webhook timestamp outside the tolerance: {0}")]
    StaleTimestamp(String),
    /// A signed notification already taken within the tolerance window (the same nonce),
    /// sent again: a replay (answered 401, nothing published).
    #[error("webhook replayed: {0}")]
    Replayed(String),
    /// No webhook secret (or public key) is configured for this provider.
    #[error("webhook verification is not configured for {0}")]
    NotConfigured(ProviderName),
    /// Verified but unreadable: the body does not have the documented shape.
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// One payment provider's refund API and webhooks.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn name(&self) -> ProviderName;
    /// Asks the provider to refund. Must be safe to repeat with the same request (the
    /// adapter sends the same idempotency key), though the pipeline only repeats it after
    /// a status lookup said the provider does not have it.
    async fn submit(&self, refund: &RefundRequest) -> ProviderOutcome;
    /// Looks the refund up; `NotFound` when the provider has no such refund.
    async fn status(&self, refund: &RefundRequest) -> ProviderOutcome;
    /// Checks an inbound webhook's signature over `body` exactly as received (constant-time
    /// comparison; the signed timestamp against `now` where the scheme has one).
    fn verify_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), WebhookError>;
    /// Called by the ingress once a verified webhook is safely queued, so the adapter can
    /// remember what must not be taken again (Binance Pay's nonce). Not in
    /// [`Provider::verify_webhook`]: a webhook that could not be queued (503) must still be
    /// accepted when the provider retries it.
    fn webhook_queued(
        &self,
        _headers: &reqwest::header::HeaderMap,
        _now: chrono::DateTime<chrono::Utc>,
    ) {
    }
    /// Parses a verified webhook body.
    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError>;
    /// The JSON body the provider expects in our 2xx answer to its webhook.
    fn webhook_ack(&self) -> serde_json::Value {
        serde_json::json!({ "status": "ok" })
    }
    /// Asks the provider to send its webhooks for `window` again (after our ingress was
    /// down), where its docs describe a way; `dry_run` only lists the requests. The default:
    /// not documented for this provider.
    async fn resend_webhooks(
        &self,
        _window: &resend::ResendWindow,
        _dry_run: bool,
    ) -> resend::WebhookResend {
        resend::WebhookResend::NotDocumented
    }
}

/// Builds the HTTP client every adapter uses, with the provider's timeouts.
///
/// Redirects are not followed: reqwest strips only `Authorization` and `Cookie` on a
/// cross-host redirect, so BPN's `API-KEY`/`API-SIGNATURE`, Binance Pay's certificate
/// serial and the like would go to whatever host a 3xx names. A 3xx is an answer like any
/// other, classified by [`classify_status`] (retryable, never success or a final failure).
/// Proxies from the environment are honoured (operators route egress through them).
///
/// An error (the TLS backend cannot initialise) stops the start: a fallback client would
/// have no timeouts.
pub fn http_client(settings: &ProviderSettings) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("refund-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            ConfigError(format!(
                "the provider HTTP client cannot be built: {}",
                http::describe(&e)
            ))
        })
}

/// The configured providers.
#[derive(Clone, Default)]
pub struct Providers {
    map: HashMap<ProviderName, Arc<dyn Provider>>,
}

impl Providers {
    /// Builds an adapter for every provider with settings in `config`; fails when one
    /// cannot be built (its HTTP client), so `run` stops at start instead of limping on.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut providers = Self::default();
        for (name, settings) in &config.providers {
            let settings = settings.clone();
            let adapter: Arc<dyn Provider> = match name {
                ProviderName::VaServices => Arc::new(va_services::VaServices::new(settings)?),
                ProviderName::Bpn => Arc::new(bpn::Bpn::new(settings)?),
                ProviderName::BinancePay => Arc::new(binance_pay::BinancePay::new(settings)?),
                ProviderName::Bvnk => Arc::new(bvnk::Bvnk::new(settings)?),
            };
            providers.insert(adapter);
        }
        Ok(providers)
    }

    /// Adds (or replaces) an adapter.
    pub fn insert(&mut self, provider: Arc<dyn Provider>) {
        self.map.insert(provider.name(), provider);
    }

    /// The adapter for `name`, if configured.
    pub fn get(&self, name: ProviderName) -> Option<Arc<dyn Provider>> {
        self.map.get(&name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::any;
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn refund() -> RefundRequest {
        RefundRequest {
            refund_reference: "redirect-1".into(),
            transaction_reference: "tx-redirect-1".into(),
            amount: Decimal::new(1017, 2),
            currency: "USDT".into(),
            reason: "Order cancelled!".into(),
            customer_note: None,
            destination: Some(Destination {
                account_number: "0040088210".into(),
                bank_code: "000012".into(),
            }),
            provider_reference: Some("prov-1".into()),
            metadata: None,
        }
    }

    /// Every adapter, pointed at a provider that answers 302 to another host: nothing
    /// reaches that host (our signed headers would go with it), the submit is retryable
    /// (not success, not a final failure) and so is the status lookup.
    #[tokio::test]
    async fn redirects_are_not_followed_and_a_3xx_is_retryable() {
        let elsewhere = MockServer::start().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
            .mount(&elsewhere)
            .await;
        let provider = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("location", format!("{}/collect", elsewhere.uri())),
            )
            .mount(&provider)
            .await;
        let base = provider.uri();
        let config = Config::from_lookup(|k| {
            let known = ["VA_SERVICES", "BPN", "BINANCE_PAY", "BVNK"]
                .iter()
                .any(|p| k.starts_with(&format!("PROVIDER_{p}_")));
            match k {
                _ if !known => None,
                k if k.ends_with("_BASE_URL") => Some(base.clone()),
                k if k.ends_with("_API_KEY") => Some("key-that-must-not-travel".into()),
                k if k.ends_with("_API_SECRET") => Some("secret-that-must-not-travel".into()),
                _ => None,
            }
        })
        .unwrap();
        let providers = Providers::from_config(&config).unwrap();
        for name in ProviderName::ALL {
            let adapter = providers.get(name).unwrap();
            let before = provider.received_requests().await.unwrap_or_default().len();
            let submitted = adapter.submit(&refund()).await;
            let status = adapter.status(&refund()).await;
            let after = provider.received_requests().await.unwrap_or_default().len();
            assert!(after > before, "{name} called the provider");
            assert!(
                matches!(submitted, ProviderOutcome::Retryable { .. }),
                "{name} submit after a 302: {submitted:?}"
            );
            assert!(
                matches!(status, ProviderOutcome::Retryable { .. }),
                "{name} status after a 302: {status:?}"
            );
        }
        assert_eq!(
            elsewhere
                .received_requests()
                .await
                .unwrap_or_default()
                .len(),
            0,
            "a redirect was followed to another host"
        );
    }
}
