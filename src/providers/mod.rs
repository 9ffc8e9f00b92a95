//! Payment provider adapters behind one [`Provider`] trait.
//!
//! Each adapter turns a refund into the provider's request (with its signing scheme) and
//! maps every response onto the same [`ProviderOutcome`] classification: accepted,
//! succeeded, failed-final with a failure code, retryable, unknown, or not found. The
//! pipeline never looks at provider-specific responses; it only sees outcomes.

mod http;
pub mod va_services;

use crate::config::{Config, ProviderSettings};
use crate::domain::{Destination, ProviderName, ProviderOutcome};
use async_trait::async_trait;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::Arc;

pub use http::{classify_send_error, classify_status};

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

/// One payment provider's refund API.
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
}

/// Builds the HTTP client every adapter uses, with the provider's timeouts.
pub fn http_client(settings: &ProviderSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .user_agent(concat!("refund-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building only fails when the TLS backend cannot initialise; fall back to the
        // default client rather than refusing to start (timeouts are still per request).
        .unwrap_or_default()
}

/// The configured providers.
#[derive(Clone, Default)]
pub struct Providers {
    map: HashMap<ProviderName, Arc<dyn Provider>>,
}

impl Providers {
    /// Builds an adapter for every provider with settings in `config`.
    pub fn from_config(config: &Config) -> Self {
        let mut providers = Self::default();
        for (name, settings) in &config.providers {
            match name {
                ProviderName::VaServices => {
                    providers.insert(Arc::new(va_services::VaServices::new(settings.clone())))
                }
                // Adapters for these land with the "all four providers" work; until then a
                // command for them fails clearly as "not configured".
                ProviderName::Bpn | ProviderName::BinancePay | ProviderName::Bvnk => {
                    tracing::warn!(provider = %name, "settings given but no adapter is built in yet; ignored");
                }
            }
        }
        providers
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
