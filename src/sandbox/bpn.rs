//! Simulated Bpn API (to be filled in by the provider work).

use std::collections::HashMap;

use axum::Router;

use super::{LedgerRefund, OutcomeStatus, Payment, Sandbox, SandboxConfig};

/// Bpn routes.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
}

/// What Bpn knows.
#[derive(Default)]
pub(super) struct BpnState {
    payments: HashMap<String, Payment>,
    outcomes: HashMap<String, OutcomeStatus>,
}

impl BpnState {
    pub(super) fn add_payment(&mut self, payment: Payment) {
        self.payments
            .insert(payment.transaction_reference.clone(), payment);
    }

    pub(super) fn set_outcome(&mut self, key: &str, status: OutcomeStatus) {
        self.outcomes.insert(key.to_owned(), status);
    }

    pub(super) fn due_webhooks(
        &mut self,
        _config: &SandboxConfig,
        _now: tokio::time::Instant,
    ) -> Vec<super::notify::Outbound> {
        Vec::new()
    }

    pub(super) fn ledger(&self, _config: &SandboxConfig) -> (Vec<LedgerRefund>, Vec<Payment>) {
        (Vec::new(), self.payments.values().cloned().collect())
    }
}
