//! Bpn refund adapter (to be filled in by the provider work).

use super::{Provider, ProviderWebhook, RefundRequest, WebhookError};
use crate::config::ProviderSettings;
use crate::domain::{FailureCode, FailureReason, ProviderName, ProviderOutcome};
use async_trait::async_trait;

/// The Bpn adapter.
pub struct Bpn {
    #[allow(dead_code)]
    settings: ProviderSettings,
}

impl Bpn {
    /// Creates the adapter.
    pub fn new(settings: ProviderSettings) -> Self {
        Self { settings }
    }

    fn not_built() -> ProviderOutcome {
        ProviderOutcome::Failed(FailureReason::new(
            FailureCode::InvalidCommand,
            "provider bpn has no adapter in this build",
        ))
    }
}

#[async_trait]
impl Provider for Bpn {
    fn name(&self) -> ProviderName {
        ProviderName::Bpn
    }

    async fn submit(&self, _refund: &RefundRequest) -> ProviderOutcome {
        Self::not_built()
    }

    async fn status(&self, _refund: &RefundRequest) -> ProviderOutcome {
        Self::not_built()
    }

    fn verify_webhook(
        &self,
        _headers: &reqwest::header::HeaderMap,
        _body: &[u8],
        _now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), WebhookError> {
        Err(WebhookError::NotConfigured(ProviderName::Bpn))
    }

    fn parse_webhook(&self, _body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError> {
        Err(WebhookError::NotConfigured(ProviderName::Bpn))
    }
}
