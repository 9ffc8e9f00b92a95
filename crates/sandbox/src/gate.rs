//! The fault gate: one way for every simulated provider to take a call through the injected
//! faults, so a fault means the same thing whichever provider it hits.
//!
//! A provider call ([`Sandbox::call`]) is, under the one lock and in this order:
//! authenticated (a refusal is counted only in `rejectedAuth` and consumes no fault),
//! counted by kind, given an injected HTTP error if one is due (`failNext` with its
//! `failStatus`, 500 by default, e.g. 503 or 429; then `error_rate`) before any work, and
//! only then decided by the provider. An initiate call's decision goes through
//! [`State::submit`]: `rejectNext` declines it (the provider's business refusal) without
//! recording anything; otherwise the provider records it, and then it may hang
//! (`timeoutAfterAcceptNext`, then `timeout_rate`): the "timeout after accept" a worker must
//! resolve by asking. Forced outcomes are the book's ([`super::book`]). The hang and the
//! latency are slept after the lock is released ([`Sandbox::deliver`]).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{sample_latency, Sandbox, SandboxConfig, State};

/// Deterministic faults, consumed one per matching provider call. They are added to what is
/// already pending, so two tests' worth of faults queue up instead of overwriting each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// The next N provider calls (any endpoint) answer HTTP `failStatus` with the provider's
    /// error envelope, before any work: nothing is recorded.
    pub fail_next: u32,
    /// Status for `failNext` answers; 500 when unset (or not an HTTP status). Replaces the
    /// pending value when given.
    pub fail_status: Option<u16>,
    /// The next N successful initiate calls record the refund, then hang for `hang`.
    pub timeout_after_accept_next: u32,
    /// The next N valid initiate calls are declined (HTTP 200, `requestSuccessful: false`,
    /// code "99") without recording anything.
    pub reject_next: u32,
    /// Overrides the configured latency (ms) from now on; replaces the pending value.
    pub latency_ms: Option<u64>,
}

impl Faults {
    pub(super) fn add(&mut self, more: Faults) {
        self.fail_next = self.fail_next.saturating_add(more.fail_next);
        self.timeout_after_accept_next = self
            .timeout_after_accept_next
            .saturating_add(more.timeout_after_accept_next);
        self.reject_next = self.reject_next.saturating_add(more.reject_next);
        if more.fail_status.is_some() {
            self.fail_status = more.fail_status;
        }
        if more.latency_ms.is_some() {
            self.latency_ms = more.latency_ms;
        }
    }
}

/// Kinds of provider calls, for the counters.
#[derive(Debug, Clone, Copy)]
pub(super) enum CallKind {
    Submit,
    Status,
    List,
    Details,
    /// A webhook re-send request (BPN's "resend fail webhook", VA's "Send Notification").
    Resend,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub submit_calls: u64,
    pub status_calls: u64,
    pub list_calls: u64,
    pub details_calls: u64,
    pub resend_calls: u64,
    pub rejected_auth: u64,
    pub injected_failures: u64,
    pub injected_rejects: u64,
    pub injected_timeouts: u64,
}

/// A provider's error answers, as far as the gate needs them: how the provider answers an
/// injected HTTP error (its own envelope, the status given).
pub(super) trait ProviderError: IntoResponse {
    fn injected(status: StatusCode) -> Self;
}

/// A provider's answer, decided under the lock, plus how long to hang before sending it.
pub(super) struct Reply {
    pub response: Response,
    pub hang: Option<Duration>,
}

impl Reply {
    pub(super) fn now(response: Response) -> Self {
        Self {
            response,
            hang: None,
        }
    }
}

/// True with probability `p`. Written without `gen_bool`, which panics outside 0..=1 (and on
/// NaN); a misconfigured rate here just means "never" or "always".
pub(super) fn roll(p: f64) -> bool {
    p > 0.0 && rand::thread_rng().gen::<f64>() < p
}

impl State {
    fn count(&mut self, kind: CallKind) {
        let c = &mut self.counters;
        match kind {
            CallKind::Submit => c.submit_calls += 1,
            CallKind::Status => c.status_calls += 1,
            CallKind::List => c.list_calls += 1,
            CallKind::Details => c.details_calls += 1,
            CallKind::Resend => c.resend_calls += 1,
        }
    }

    /// An injected HTTP error for this call, if one is due: deterministic first, then random.
    fn take_failure(&mut self, config: &SandboxConfig) -> Option<StatusCode> {
        let status = if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            self.faults
                .fail_status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        } else if roll(config.error_rate) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            return None;
        };
        self.counters.injected_failures += 1;
        Some(status)
    }

    /// Whether this valid initiate call is to be declined.
    fn take_reject(&mut self) -> bool {
        if self.faults.reject_next == 0 {
            return false;
        }
        self.faults.reject_next -= 1;
        self.counters.injected_rejects += 1;
        true
    }

    /// How long this accepted initiate call hangs before answering, if it does.
    fn take_timeout(&mut self, config: &SandboxConfig) -> Option<Duration> {
        if self.faults.timeout_after_accept_next > 0 {
            self.faults.timeout_after_accept_next -= 1;
        } else if !roll(config.timeout_rate) {
            return None;
        }
        self.counters.injected_timeouts += 1;
        Some(config.hang)
    }

    /// Auth, counting and an injected HTTP error, common to every provider call.
    fn gate<E: ProviderError>(
        &mut self,
        config: &SandboxConfig,
        kind: CallKind,
        authenticate: impl FnOnce(&mut State, &SandboxConfig) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Err(e) = authenticate(self, config) {
            self.counters.rejected_auth += 1;
            return Err(e);
        }
        self.count(kind);
        match self.take_failure(config) {
            Some(status) => Err(E::injected(status)),
            None => Ok(()),
        }
    }

    /// A validated initiate call: declined by `rejectNext` (`declined`, nothing recorded),
    /// else `accept`ed (recorded, or refused by the provider's own rules), then perhaps made
    /// to hang. Recorded first, hang after: the "timeout after accept" a worker must resolve.
    pub(super) fn submit<E>(
        &mut self,
        config: &SandboxConfig,
        declined: impl FnOnce() -> E,
        accept: impl FnOnce(&mut State) -> Result<Response, E>,
    ) -> Result<Reply, E> {
        if self.take_reject() {
            return Err(declined());
        }
        let response = accept(self)?;
        let hang = self.take_timeout(config);
        Ok(Reply { response, hang })
    }
}

impl Sandbox {
    /// Runs one provider call: the gate (`authenticate`, count, injected error) and `decide`
    /// under the lock, then the hang and the latency with the lock released.
    pub(super) async fn call<E: ProviderError>(
        &self,
        kind: CallKind,
        authenticate: impl FnOnce(&mut State, &SandboxConfig) -> Result<(), E>,
        decide: impl FnOnce(&mut State, &SandboxConfig) -> Result<Reply, E>,
    ) -> Response {
        let reply = {
            let mut state = self.lock();
            let config = self.config();
            state
                .gate(config, kind, authenticate)
                .and_then(|()| decide(&mut state, config))
                .unwrap_or_else(|err| Reply::now(err.into_response()))
        };
        self.deliver(reply).await
    }

    /// Sends a decided reply after its hang and the latency, with the lock released.
    async fn deliver(&self, reply: Reply) -> Response {
        if let Some(hang) = reply.hang {
            self.pause(hang).await;
        }
        let latency = match self.lock().faults.latency_ms {
            Some(ms) => Duration::from_millis(ms),
            None => sample_latency(self.config().latency, self.config().latency_p99),
        };
        if !latency.is_zero() {
            self.pause(latency).await;
        }
        reply.response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_add_up_and_overrides_replace() {
        let mut pending = Faults {
            fail_next: 1,
            fail_status: Some(503),
            ..Faults::default()
        };
        pending.add(Faults {
            fail_next: 2,
            reject_next: 1,
            latency_ms: Some(5),
            ..Faults::default()
        });
        assert_eq!(pending.fail_next, 3);
        assert_eq!(pending.fail_status, Some(503));
        assert_eq!(pending.reject_next, 1);
        assert_eq!(pending.latency_ms, Some(5));
    }

    #[test]
    fn rolls_never_panic() {
        assert!(!roll(f64::NAN) && !roll(-1.0) && roll(2.0));
    }
}
