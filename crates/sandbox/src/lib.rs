//! Local simulator of the refund providers' HTTP APIs (the "sandbox").
//!
//! It owns an in-memory picture of everything a provider saw: payments, refunds, the raw
//! request that created each refund, and counters per kind of call. Tests and the demo point
//! refund-worker at it instead of the real provider, so they can check the property that
//! matters most for a refund service, "the provider saw refund X exactly once", and drive
//! the failure modes that make that hard: errors before acceptance, timeouts *after*
//! acceptance, business rejections and replays.
//!
//! Layout: this file holds what every provider shares (config, the one state mutex, latency,
//! the `/sandbox/*` admin API, serving) and the [`Simulator`] trait each provider implements.
//! The shared core: `gate.rs`, the fault gate every provider call goes through (auth,
//! counting, injected errors, declines, hangs); `book.rs`, the refund book each provider
//! keeps (payments, refundable amounts, idempotent refund records, forced outcomes, which
//! refunds owe a notification); `notify.rs`, the one notify loop; `payins.rs`, the payments
//! and their pay-in notifications; `docs.rs`, signing and limits as the providers' docs give
//! them. Each provider lives in a sibling file (`va_services.rs`, `bpn.rs`, `binance_pay.rs`,
//! `bvnk.rs`) that owns its sub-state in `State`, its routes, its validation, its answers and
//! its notifications' wording.
//!
//! Admin API (JSON, camelCase, never subject to faults or latency): `GET /sandbox/health`,
//! `GET /sandbox/ledger` ([`Ledger`]), `POST /sandbox/faults` ([`Faults`], answers the pending
//! faults), `POST /sandbox/payments` ([`Payment`]) and, for each provider,
//! `POST /sandbox/{provider}/refunds/{key}/outcome` ([`ForcedOutcome`]; `provider` is
//! `va_services`, `bpn`, `binance_pay` or `bvnk`, `key` as [`Sandbox::set_outcome`] takes it).
//! BVNK adds its settings and approval routes (`bvnk.rs`).
//!
//! Concurrency: one `std::sync::Mutex` guards all state. Handlers decide everything under the
//! lock in one synchronous step, release it, and only then sleep (latency, hangs), so the
//! lock is never held across an `.await` and replays racing each other see one consistent
//! order.

// Defined before the provider modules, which use it (macros are scoped by text order).
/// The [`Simulator`] items every simulator writes the same way: its refunds' `Detail`, and
/// its book in the field `book`.
macro_rules! book_field {
    ($detail:ty) => {
        type Detail = $detail;

        fn book(&self) -> &Book<$detail> {
            &self.book
        }

        fn book_mut(&mut self) -> &mut Book<$detail> {
            &mut self.book
        }
    };
}

mod binance_pay;
mod book;
mod bpn;
mod bvnk;
mod docs;
mod gate;
mod notify;
mod payins;
mod va_services;

pub use gate::Faults;
pub use notify::WebhookCounters;

use book::{Book, Refund, Stage};
use gate::{roll, CallKind, Counters, Reply};
use notify::Notice;

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Notify;

/// How the simulated providers behave. Every knob has a harmless default, so
/// `SandboxConfig::default()` is a well-behaved provider.
#[derive(Clone)]
pub struct SandboxConfig {
    /// Bearer token the VA API expects (`Authorization: Bearer <key>`).
    pub va_api_key: String,
    /// BPN `API-KEY` header value.
    pub bpn_api_key: String,
    /// BPN secret for `API-SIGNATURE` (HMAC-SHA256).
    pub bpn_api_secret: String,
    /// Binance Pay `BinancePay-Certificate-SN` (the API key).
    pub binance_api_key: String,
    /// Binance Pay secret for `BinancePay-Signature` (HMAC-SHA512).
    pub binance_api_secret: String,
    /// BVNK Hawk id.
    pub bvnk_hawk_id: String,
    /// BVNK Hawk key (HMAC-SHA256).
    pub bvnk_hawk_key: String,
    /// Secret the sandbox signs its HMAC webhooks with (VA Services, BPN, BVNK).
    pub webhook_secret: String,
    /// Base URL of refund-worker's HTTP server; when set, the providers send their
    /// notifications to `{webhook_url}/webhooks/{provider}`.
    pub webhook_url: Option<String>,
    /// Whether the providers also send their pay-in (payment status) notifications, not
    /// only refund ones (with `webhook_url`). The bench turns them off: its figures measure
    /// refunds, comparable across sessions.
    pub payin_notifications: bool,
    /// Share (0..1) of notifications sent twice.
    pub webhook_duplicate_rate: f64,
    /// Share (0..1) of notifications first sent with a corrupted signature.
    pub webhook_bad_signature_rate: f64,
    /// Share (0..1) of notifications held back so later ones overtake them.
    pub webhook_reorder_rate: f64,
    /// Added to every provider API response (never to `/sandbox/*`): the median when
    /// `latency_p99` is set, else every response's.
    pub latency: Duration,
    /// With `latency` as the median: a log-normal spread whose 99th percentile is this
    /// (real providers' tails), e.g. p50 300 ms / p99 2 s.
    pub latency_p99: Option<Duration>,
    /// Share (0..1) of provider API calls answered with HTTP 500 at random, before any work.
    pub error_rate: f64,
    /// Share (0..1) of accepted initiate calls that are recorded but then hang for `hang`:
    /// the "unknown outcome" a worker must resolve by querying before resubmitting.
    pub timeout_rate: f64,
    /// How long a "timeout after accept" hangs before answering.
    pub hang: Duration,
    /// A refund reads COMPLETED (or its forced outcome) once this long after creation.
    pub completion_delay: Duration,
    /// Balance of a payment the sandbox has not been told about, so tests need no setup.
    pub default_payment_amount: Decimal,
    /// Zone of VA Services' zone-less dates (their docs leave it open).
    pub zone: chrono_tz::Tz,
    /// Serve only what the providers' docs define: no endpoint whose path is our guess
    /// for an extra (VA Services' "Refund Details", BPN's order detail and order list, the
    /// re-send calls). Adapters must still finish every refund, falling back to the
    /// documented endpoints and notifications.
    pub strict: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            va_api_key: "sandbox-va-key".to_owned(),
            bpn_api_key: "sandbox-bpn-key".to_owned(),
            bpn_api_secret: "sandbox-bpn-secret".to_owned(),
            binance_api_key: "sandbox-binance-key".to_owned(),
            binance_api_secret: "sandbox-binance-secret".to_owned(),
            bvnk_hawk_id: "sandbox-bvnk-id".to_owned(),
            bvnk_hawk_key: "sandbox-bvnk-key".to_owned(),
            webhook_secret: "sandbox-webhook-secret".to_owned(),
            webhook_url: None,
            payin_notifications: true,
            webhook_duplicate_rate: 0.0,
            webhook_bad_signature_rate: 0.0,
            webhook_reorder_rate: 0.0,
            latency: Duration::ZERO,
            latency_p99: None,
            error_rate: 0.0,
            timeout_rate: 0.0,
            hang: Duration::from_secs(30),
            completion_delay: Duration::from_millis(200),
            default_payment_amount: Decimal::from(1_000_000),
            zone: chrono_tz::Africa::Lagos,
            strict: false,
        }
    }
}

// Written by hand so the keys never reach a log through `{:?}`.
impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("va_api_key", &"<redacted>")
            .field("bpn_api_key", &"<redacted>")
            .field("bpn_api_secret", &"<redacted>")
            .field("binance_api_key", &"<redacted>")
            .field("binance_api_secret", &"<redacted>")
            .field("bvnk_hawk_id", &"<redacted>")
            .field("bvnk_hawk_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("payin_notifications", &self.payin_notifications)
            .field("webhook_duplicate_rate", &self.webhook_duplicate_rate)
            .field(
                "webhook_bad_signature_rate",
                &self.webhook_bad_signature_rate,
            )
            .field("webhook_reorder_rate", &self.webhook_reorder_rate)
            .field("latency", &self.latency)
            .field("latency_p99", &self.latency_p99)
            .field("error_rate", &self.error_rate)
            .field("timeout_rate", &self.timeout_rate)
            .field("hang", &self.hang)
            .field("completion_delay", &self.completion_delay)
            .field("default_payment_amount", &self.default_payment_amount)
            .field("zone", &self.zone)
            .field("strict", &self.strict)
            .finish()
    }
}

/// One response's latency: `p50` as is, or drawn from the log-normal distribution with
/// median `p50` and 99th percentile `p99` (capped at ten times `p99`).
pub fn sample_latency(p50: Duration, p99: Option<Duration>) -> Duration {
    let Some(p99) = p99.filter(|p99| *p99 > p50 && !p50.is_zero()) else {
        return p50;
    };
    // Box-Muller: a standard normal draw from two uniform ones.
    let (u1, u2): (f64, f64) = (rand::random::<f64>().max(f64::MIN_POSITIVE), rand::random());
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    // The 99th percentile of a standard normal is 2.3263.
    let sigma = (p99.as_secs_f64() / p50.as_secs_f64()).ln() / 2.3263;
    let secs = p50.as_secs_f64() * (sigma * z).exp();
    Duration::from_secs_f64(secs.min(p99.as_secs_f64() * 10.0))
}

/// TEST-ONLY RSA key the simulated Binance Pay signs its webhooks with (never a real key).
pub(crate) const BINANCE_WEBHOOK_TEST_PRIVATE_KEY: &str =
    include_str!("../../../fixtures/binance_pay/webhook-test-private-key.pem");
/// Its public half, which refund-worker is configured with to verify them.
pub const BINANCE_WEBHOOK_TEST_PUBLIC_KEY: &str =
    include_str!("../../../fixtures/binance_pay/webhook-test-public-key.pem");

/// Which simulated provider a payment or refund belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// VA Services (Transaction Point), served under `/va/...`.
    VaServices,
    /// BPN (Better Payment Network), served under `/v1/virtual-account/...`.
    Bpn,
    /// Binance Pay, served under `/binancepay/openapi/...`.
    BinancePay,
    /// BVNK, served under `/payment/v1/...`.
    Bvnk,
}

impl Provider {
    const ALL: [Provider; 4] = [
        Provider::VaServices,
        Provider::Bpn,
        Provider::BinancePay,
        Provider::Bvnk,
    ];

    /// The provider's name in paths: `/webhooks/{it}` and `/sandbox/{it}/...`.
    fn segment(self) -> &'static str {
        match self {
            Provider::VaServices => "va_services",
            Provider::Bpn => "bpn",
            Provider::BinancePay => "binance_pay",
            Provider::Bvnk => "bvnk",
        }
    }

    /// What the provider's outcome route calls the key it was given.
    fn outcome_key_field(self) -> &'static str {
        match self {
            Provider::VaServices | Provider::Bvnk => "refundReference",
            Provider::Bpn => "orderId",
            Provider::BinancePay => "refundRequestId",
        }
    }
}

impl SandboxConfig {
    /// The `PROVIDER_*` settings that point refund-worker at a sandbox serving on `addr`
    /// with this configuration's credentials, for every provider.
    pub fn provider_env(&self, addr: SocketAddr) -> Vec<(String, String)> {
        let base = format!("http://{addr}");
        let mut env = Vec::new();
        for (prefix, key, secret) in [
            ("VA_SERVICES", &self.va_api_key, None),
            ("BPN", &self.bpn_api_key, Some(&self.bpn_api_secret)),
            (
                "BINANCE_PAY",
                &self.binance_api_key,
                Some(&self.binance_api_secret),
            ),
            ("BVNK", &self.bvnk_hawk_id, Some(&self.bvnk_hawk_key)),
        ] {
            env.push((format!("PROVIDER_{prefix}_BASE_URL"), base.clone()));
            env.push((format!("PROVIDER_{prefix}_API_KEY"), key.clone()));
            if let Some(secret) = secret {
                env.push((format!("PROVIDER_{prefix}_API_SECRET"), secret.clone()));
            }
            // Binance Pay verifies with an RSA public key; the others share an HMAC secret.
            let webhook_secret = if prefix == "BINANCE_PAY" {
                BINANCE_WEBHOOK_TEST_PUBLIC_KEY.to_owned()
            } else {
                self.webhook_secret.clone()
            };
            env.push((format!("PROVIDER_{prefix}_WEBHOOK_SECRET"), webhook_secret));
        }
        env
    }
}

/// A payment the provider knows, i.e. the upper bound for its refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Payment {
    /// Provider holding the payment.
    pub provider: Provider,
    /// The provider's reference of the original transaction.
    pub transaction_reference: String,
    /// Paid amount; accepted as a JSON number or string, written back as a string.
    #[serde(deserialize_with = "decimal_from_json")]
    pub amount: Decimal,
    /// ISO currency code; informational only (VA Services does not echo it).
    #[serde(default = "default_currency")]
    pub currency: String,
}

fn default_currency() -> String {
    "NGN".to_owned()
}

/// Final status a test wants a refund to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    /// The refund completes (the default when nothing is forced).
    Completed,
    /// The refund fails at the bank; its amount stops counting against the payment.
    Failed,
}

/// Forces how a refund ends. It takes effect when `completion_delay` has passed (the refund
/// reads PENDING until then) and may be set before the refund exists, so a test can arrange
/// the failure of a refund the worker has not submitted yet. Set after the delay, it
/// rewrites the status at once (COMPLETED can turn FAILED), which a real provider would not
/// do; it is allowed so a late reversal can be simulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForcedOutcome {
    /// The status the refund ends with.
    pub status: OutcomeStatus,
}

/// One refund as the provider recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRefund {
    /// Provider that recorded the refund.
    pub provider: Provider,
    /// Our idempotency key, as sent.
    pub refund_reference: String,
    /// The refunded payment, as sent.
    pub transaction_reference: String,
    /// The amount exactly as its text arrived (`25.17` stays "25.17").
    pub refund_amount: String,
    /// The raw body of the initiate call that created the refund, byte for byte.
    pub request_body: String,
    /// Status a status query would answer now, e.g. "PENDING".
    pub status: String,
    /// Initiate calls that named this refund, the creating one and replays included.
    pub submit_count: u32,
    /// Replays whose transaction reference or amount differed from the accepted call: a
    /// worker bug a real provider might reject, counted so tests can catch it.
    pub mismatched_replays: u32,
    /// Outcome forced by a test, if any.
    pub forced_outcome: Option<OutcomeStatus>,
    /// When the provider accepted the refund.
    pub created_at: DateTime<Utc>,
    /// When the refund completed; `None` while pending and for failed refunds.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Snapshot of everything the providers saw, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Recorded refunds in creation order.
    pub refunds: Vec<LedgerRefund>,
    /// Known payments (told or seen first in a refund).
    pub payments: Vec<Payment>,
    /// Authenticated initiate calls, whatever their answer.
    pub submit_calls: u64,
    /// Authenticated refund status queries.
    pub status_calls: u64,
    /// Authenticated refund list queries.
    pub list_calls: u64,
    /// Authenticated refund details queries (by transaction).
    pub details_calls: u64,
    /// Authenticated webhook re-send requests (BPN's "resend fail webhook", VA's "Send
    /// Notification"; not served with `--strict`: their paths are our guesses).
    #[serde(default)]
    pub resend_calls: u64,
    /// Calls refused for a missing or wrong credential (counted nowhere else).
    pub rejected_auth: u64,
    /// Calls answered with an injected HTTP error (`failNext` or `error_rate`).
    pub injected_failures: u64,
    /// Initiate calls declined by `rejectNext`.
    pub injected_rejects: u64,
    /// Accepted initiate calls that were made to hang.
    pub injected_timeouts: u64,
    /// Deterministic faults not consumed yet.
    pub pending_faults: Faults,
    /// Notifications sent to refund-worker.
    pub webhooks: WebhookCounters,
}

impl Ledger {
    /// The refund with this reference, if the provider recorded it.
    pub fn refund(&self, refund_reference: &str) -> Option<&LedgerRefund> {
        self.refunds
            .iter()
            .find(|r| r.refund_reference == refund_reference)
    }
}

/// The simulator: cheap to clone, all clones share one state.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    config: SandboxConfig,
    state: Mutex<State>,
    /// Woken when a server spawned by [`Sandbox::spawn`] shuts down, so hanging handlers
    /// answer at once instead of holding the graceful drain for `hang`.
    shutdown: Notify,
}

/// Everything behind the mutex: shared counters and faults, plus one sub-state per provider.
#[derive(Default)]
struct State {
    counters: Counters,
    faults: Faults,
    webhooks: WebhookCounters,
    va: va_services::VaState,
    bpn: bpn::BpnState,
    binance: binance_pay::BinanceState,
    bvnk: bvnk::BvnkState,
}

/// What the shared core needs of a simulated provider beside the fault gate: its book, and
/// how it words its notifications (each from its own docs).
trait Simulator {
    type Detail;

    fn book(&self) -> &Book<Self::Detail>;

    fn book_mut(&mut self) -> &mut Book<Self::Detail>;

    /// The book's key for a key a test forces an outcome with.
    fn outcome_key(&self, key: &str) -> String {
        key.to_owned()
    }

    /// Its pay-in notification for a payment that became known.
    fn payin_notice(
        &self,
        config: &SandboxConfig,
        payment: &Payment,
        at: DateTime<Utc>,
    ) -> Option<Notice>;

    /// Its notification of a refund's new stage, if it sends one.
    fn refund_notice(
        &self,
        _config: &SandboxConfig,
        _refund: &Refund<Self::Detail>,
        _stage: Stage,
        _now: tokio::time::Instant,
    ) -> Option<Notice> {
        None
    }
}

/// A simulator as the sandbox reaches it by provider name.
trait Simulated {
    fn add_payment(&mut self, payment: Payment);
    /// Forces an outcome; the key as the provider knows it, and whether a refund has it.
    fn set_outcome(&mut self, key: &str, status: OutcomeStatus) -> (String, bool);
    fn ledger(&self, config: &SandboxConfig) -> (Vec<LedgerRefund>, Vec<Payment>);
    /// Queues no pay-in notification from now on.
    fn mute(&mut self);
    /// The pay-in and refund notifications due now, each handed out once.
    fn notices(
        &mut self,
        config: &SandboxConfig,
        now: tokio::time::Instant,
    ) -> (Vec<Notice>, Vec<Notice>);
}

impl<S: Simulator> Simulated for S {
    fn add_payment(&mut self, payment: Payment) {
        self.book_mut().payments.insert(payment);
    }

    fn set_outcome(&mut self, key: &str, status: OutcomeStatus) -> (String, bool) {
        let key = self.outcome_key(key);
        let known = self.book_mut().set_outcome(&key, status);
        (key, known)
    }

    fn ledger(&self, config: &SandboxConfig) -> (Vec<LedgerRefund>, Vec<Payment>) {
        self.book().ledger(config)
    }

    fn mute(&mut self) {
        self.book_mut().payments.mute();
    }

    fn notices(
        &mut self,
        config: &SandboxConfig,
        now: tokio::time::Instant,
    ) -> (Vec<Notice>, Vec<Notice>) {
        let at = Utc::now();
        let payins = self.book_mut().payments.take_due();
        let payins = payins
            .iter()
            .filter_map(|p| self.payin_notice(config, p, at))
            .collect();
        let due = self.book_mut().take_due(config, now);
        let refunds = due
            .into_iter()
            .filter_map(|(index, stage)| {
                let refund = self.book().at(index)?;
                self.refund_notice(config, refund, stage, now)
            })
            .collect();
        (payins, refunds)
    }
}

impl State {
    /// The provider's simulator.
    fn simulator(&mut self, provider: Provider) -> &mut dyn Simulated {
        match provider {
            Provider::VaServices => &mut self.va,
            Provider::Bpn => &mut self.bpn,
            Provider::BinancePay => &mut self.binance,
            Provider::Bvnk => &mut self.bvnk,
        }
    }
}

impl Sandbox {
    /// A sandbox with empty state.
    pub fn new(config: SandboxConfig) -> Self {
        let mut state = State::default();
        if config.webhook_url.is_none() || !config.payin_notifications {
            // No notify loop will run, or pay-ins are off: they are not even queued.
            for provider in Provider::ALL {
                state.simulator(provider).mute();
            }
        }
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                shutdown: Notify::new(),
            }),
        }
    }

    /// Provider APIs (`/va/...`) and the admin API (`/sandbox/...`) in one router.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sandbox/health", get(health))
            .route("/sandbox/ledger", get(ledger_route))
            .route("/sandbox/faults", post(faults_route))
            .route("/sandbox/payments", post(payments_route))
            .merge(outcome_routes())
            .merge(va_services::routes(self.config().strict))
            .merge(bpn::routes(self.config().strict))
            .merge(binance_pay::routes())
            .merge(bvnk::routes())
            .with_state(self.clone())
    }

    /// Binds 127.0.0.1:port (0 = any), serves until `shutdown` resolves; returns the bound
    /// address immediately. Binding before returning means a test can call the address at
    /// once, with no race against the server starting.
    pub async fn spawn(
        &self,
        port: u16,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        self.spawn_on(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), shutdown)
            .await
    }

    /// Like [`Sandbox::spawn`], on any address (containers bind `0.0.0.0`).
    pub async fn spawn_on(
        &self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = self.router();
        let inner = Arc::clone(&self.inner);
        let (stop_notify, stopped) = tokio::sync::watch::channel(false);
        if let Some(base) = self.config().webhook_url.clone() {
            tokio::spawn(self.clone().notify_loop(base, stopped));
        }
        let handle = tokio::spawn(async move {
            let signal = async move {
                shutdown.await;
                let _ = stop_notify.send(true);
                // Hanging handlers would otherwise hold the graceful drain for `hang`.
                inner.shutdown.notify_waiters();
            };
            if let Err(err) = axum::serve(listener, router)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(error = %err, "sandbox server stopped with an error");
            }
        });
        tracing::info!(%addr, "sandbox listening");
        Ok((addr, handle))
    }

    /// Snapshot of what the providers saw, for in-process tests.
    pub fn ledger(&self) -> Ledger {
        let config = &self.inner.config;
        let mut state = self.lock();
        let c = state.counters;
        let mut refunds = Vec::new();
        let mut payments = Vec::new();
        for provider in Provider::ALL {
            let (r, p) = state.simulator(provider).ledger(config);
            refunds.extend(r);
            payments.extend(p);
        }
        refunds.sort_by_key(|r| r.created_at);
        Ledger {
            refunds,
            payments,
            submit_calls: c.submit_calls,
            status_calls: c.status_calls,
            list_calls: c.list_calls,
            details_calls: c.details_calls,
            resend_calls: c.resend_calls,
            rejected_auth: c.rejected_auth,
            injected_failures: c.injected_failures,
            injected_rejects: c.injected_rejects,
            injected_timeouts: c.injected_timeouts,
            pending_faults: state.faults.clone(),
            webhooks: state.webhooks,
        }
    }

    /// Adds to the pending deterministic faults.
    pub fn inject(&self, faults: Faults) {
        self.lock().faults.add(faults);
    }

    /// Tells the provider about a payment (replacing an earlier one with the same reference).
    /// A new or changed payment queues the provider's pay-in notification (see `payins.rs`),
    /// sent when `webhook_url` is set.
    pub fn add_payment(&self, p: Payment) {
        self.lock().simulator(p.provider).add_payment(p);
    }

    /// Makes a refund end COMPLETED or FAILED (see [`ForcedOutcome`]). `key` is what the
    /// provider knows the refund by: our `refundReference` (VA Services, Binance Pay, BVNK)
    /// or the order id (BPN, whose refund call carries no reference of ours).
    /// Binance Pay takes our `refundReference` too (a long one is keyed by its derived id).
    pub fn set_outcome(&self, provider: Provider, key: &str, outcome: ForcedOutcome) {
        self.lock()
            .simulator(provider)
            .set_outcome(key, outcome.status);
    }

    fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// Notifications the providers want to send now, each handed out once: the pay-in
    /// notifications of payments that became known (see `payins.rs`), then refund ones.
    fn due_webhooks(&self) -> Vec<notify::Outbound> {
        let now = tokio::time::Instant::now();
        let config = &self.inner.config;
        let mut due = Vec::new();
        {
            let mut state = self.lock();
            let mut refunds = Vec::new();
            for provider in Provider::ALL {
                let (payins, more) = state.simulator(provider).notices(config, now);
                // Pay-ins first: a payment is told before any refund of it.
                due.extend(payins);
                refunds.extend(more);
            }
            due.extend(refunds);
        }
        // Signed with the lock released (Binance Pay's RSA signatures are costly).
        due.into_iter()
            .filter_map(|notice| notice.sign(config))
            .collect()
    }

    // A panic while holding the lock cannot leave the state half-written in a way that
    // matters to a simulator, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps, cut short when a spawned server shuts down.
    async fn pause(&self, duration: Duration) {
        let woken = self.inner.shutdown.notified();
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = woken => {}
        }
    }
}

/// Parses an amount's text exactly: plain decimals keep their scale ("25.170" stays
/// 25.170); exponent forms ("1e3") are accepted too since JSON allows them.
fn parse_decimal_text(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .ok()
}

/// A JSON number or string as an exact decimal, and the text it came from.
fn decimal_and_text(value: &serde_json::Value) -> Option<(Decimal, String)> {
    let text = match value {
        // With `arbitrary_precision` a number's Display is its original text, not an f64.
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => return None,
    };
    parse_decimal_text(&text).map(|d| (d, text))
}

/// Writes a decimal as a JSON number with exactly its digits (never through `f64`).
fn decimal_to_json(d: Decimal) -> serde_json::Value {
    let text = d.to_string();
    match text.parse::<serde_json::Number>() {
        Ok(n) => serde_json::Value::Number(n),
        Err(_) => serde_json::Value::String(text),
    }
}

fn decimal_from_json<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    decimal_and_text(&value)
        .map(|(d, _)| d)
        .ok_or_else(|| serde::de::Error::custom("amount must be a decimal number or string"))
}

/// Admin API errors are plain `{"error": "..."}`; they are ours, not a provider's.
fn admin_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

/// Parses an admin body ourselves so every mistake is a 400 with a JSON reason, whatever the
/// content type (curl users forget it).
fn parse_admin<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid body: {e}"))
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn ledger_route(AxumState(sandbox): AxumState<Sandbox>) -> Json<Ledger> {
    Json(sandbox.ledger())
}

async fn faults_route(AxumState(sandbox): AxumState<Sandbox>, body: Bytes) -> Response {
    let faults: Faults = match parse_admin(&body) {
        Ok(f) => f,
        Err(message) => return admin_error(StatusCode::BAD_REQUEST, message),
    };
    if let Some(status) = faults.fail_status {
        if StatusCode::from_u16(status).is_err() {
            return admin_error(StatusCode::BAD_REQUEST, "failStatus is not an HTTP status");
        }
    }
    sandbox.inject(faults);
    Json(sandbox.ledger().pending_faults).into_response()
}

async fn payments_route(AxumState(sandbox): AxumState<Sandbox>, body: Bytes) -> Response {
    let payment: Payment = match parse_admin(&body) {
        Ok(p) => p,
        Err(message) => return admin_error(StatusCode::BAD_REQUEST, message),
    };
    if payment.transaction_reference.trim().is_empty() {
        return admin_error(StatusCode::BAD_REQUEST, "transactionReference is required");
    }
    if payment.amount <= Decimal::ZERO {
        return admin_error(StatusCode::BAD_REQUEST, "amount must be greater than zero");
    }
    sandbox.add_payment(payment.clone());
    Json(payment).into_response()
}

/// `POST /sandbox/{provider}/refunds/{key}/outcome` with `{"status": ...}` for each provider
/// ([`Sandbox::set_outcome`]); the refund need not exist yet.
fn outcome_routes() -> Router<Sandbox> {
    Provider::ALL
        .into_iter()
        .fold(Router::new(), |router, provider| {
            let path = format!("/sandbox/{}/refunds/{{key}}/outcome", provider.segment());
            let handler = move |AxumState(sandbox): AxumState<Sandbox>,
                                Path(key): Path<String>,
                                body: Bytes| async move {
                outcome_route(&sandbox, provider, &key, &body)
            };
            router.route(&path, post(handler))
        })
}

fn outcome_route(sandbox: &Sandbox, provider: Provider, key: &str, body: &Bytes) -> Response {
    let outcome: ForcedOutcome = match parse_admin(body) {
        Ok(outcome) => outcome,
        Err(message) => return admin_error(StatusCode::BAD_REQUEST, message),
    };
    let (key, known) = sandbox
        .lock()
        .simulator(provider)
        .set_outcome(key, outcome.status);
    let mut answer = serde_json::Map::new();
    answer.insert(provider.outcome_key_field().to_owned(), key.into());
    answer.insert("status".to_owned(), serde_json::json!(outcome.status));
    answer.insert("refundKnown".to_owned(), known.into());
    Json(answer).into_response()
}

/// Shared by the tests of this module and of each provider file.
#[cfg(test)]
mod test_support {
    use super::notify::Outbound;
    use super::{Sandbox, SandboxConfig, Simulated};

    /// The simulator's refund notifications due at `now`, signed.
    pub(super) fn refund_notices(
        simulator: &mut impl Simulated,
        config: &SandboxConfig,
        now: tokio::time::Instant,
    ) -> Vec<Outbound> {
        let (_, refunds) = simulator.notices(config, now);
        refunds
            .into_iter()
            .filter_map(|notice| notice.sign(config))
            .collect()
    }
    use serde_json::Value;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    pub(super) struct TestServer {
        pub base: String,
        pub sandbox: Sandbox,
        pub client: reqwest::Client,
        pub key: String,
        stop: oneshot::Sender<()>,
        handle: JoinHandle<()>,
    }

    pub(super) async fn start(config: SandboxConfig) -> TestServer {
        let key = config.va_api_key.clone();
        let sandbox = Sandbox::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, handle) = sandbox
            .spawn(0, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        TestServer {
            base: format!("http://{addr}"),
            sandbox,
            client: reqwest::Client::new(),
            key,
            stop,
            handle,
        }
    }

    impl TestServer {
        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// Authenticated initiate call: status, raw body text, parsed body.
        pub async fn initiate(&self, body: &str) -> (u16, String, Value) {
            let response = self
                .client
                .post(self.url("/va/refunds/initiate-refund"))
                .bearer_auth(&self.key)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let json = serde_json::from_str(&text).unwrap();
            (status, text, json)
        }

        /// Authenticated VA GET.
        pub async fn get(&self, path: &str) -> (u16, Value) {
            let response = self
                .client
                .get(self.url(path))
                .bearer_auth(&self.key)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        }

        pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
            let response = self
                .client
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        }

        /// Stops the server and waits for it, failing if the drain takes longer than `within`.
        pub async fn stop(self, within: std::time::Duration) {
            let _ = self.stop.send(());
            tokio::time::timeout(within, self.handle)
                .await
                .expect("server did not stop in time")
                .unwrap();
        }
    }

    /// An initiate body in the documented shape.
    pub(super) fn refund_body(transaction: &str, reference: &str, amount: &str) -> String {
        format!(
            r#"{{"transactionReference":"{transaction}","refundReference":"{reference}","refundAmount":{amount},"refundReason":"Order cancelled!","destinationAccountNumber":"0040088210","destinationAccountBankCode":"000012"}}"#
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sampled_latency_has_the_asked_median_and_tail() {
        let (p50, p99) = (Duration::from_millis(300), Duration::from_secs(2));
        let mut draws: Vec<Duration> = (0..20_000)
            .map(|_| sample_latency(p50, Some(p99)))
            .collect();
        draws.sort();
        let at = |q: f64| draws[((draws.len() as f64) * q) as usize];
        let (m, t) = (at(0.5).as_secs_f64(), at(0.99).as_secs_f64());
        assert!((0.27..0.33).contains(&m), "median {m}");
        assert!((1.6..2.5).contains(&t), "p99 {t}");
        assert!(draws.iter().all(|d| *d <= p99 * 10));
        assert_eq!(sample_latency(p50, None), p50);
    }
    use super::test_support::{refund_body, start};
    use super::*;
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn decimals_round_trip_exactly() {
        let value: serde_json::Value = serde_json::from_str(r#"{"a": 25.170}"#).unwrap();
        let (d, text) = decimal_and_text(&value["a"]).unwrap();
        assert_eq!(text, "25.170");
        assert_eq!(decimal_to_json(d).to_string(), "25.170");
        assert_eq!(parse_decimal_text("1e3"), Some(Decimal::from(1000)));
        assert_eq!(parse_decimal_text("abc"), None);
    }

    #[test]
    fn config_debug_hides_the_key() {
        let text = format!("{:?}", SandboxConfig::default());
        assert!(!text.contains("sandbox-va-key"));
    }

    #[tokio::test]
    async fn admin_routes_drive_the_provider() {
        let server = start(SandboxConfig::default()).await;
        let (status, body) = server
            .admin_post(
                "/sandbox/faults",
                json!({ "failNext": 1, "failStatus": 503 }),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(body["failNext"], json!(1));
        let (_, body) = server
            .admin_post("/sandbox/faults", json!({ "failNext": 1, "rejectNext": 1 }))
            .await;
        assert_eq!(body["failNext"], json!(2));
        assert_eq!(body["failStatus"], json!(503));

        // Parsed from text: `json!` would turn 250.50 into an f64 and drop the zero.
        let payment = serde_json::from_str(
            r#"{"provider": "va_services", "transactionReference": "tx-1", "amount": 250.50, "currency": "NGN"}"#,
        )
        .unwrap();
        let (status, _) = server.admin_post("/sandbox/payments", payment).await;
        assert_eq!(status, 200);

        for _ in 0..2 {
            let (status, _, body) = server.initiate(&refund_body("tx-1", "r-1", "300")).await;
            assert_eq!(status, 503);
            assert_eq!(body["responseCode"], "503");
        }
        let (_, _, body) = server.initiate(&refund_body("tx-1", "r-1", "300")).await;
        assert_eq!(
            body["responseCode"], "99",
            "rejectNext comes after the failures"
        );
        let (_, _, body) = server.initiate(&refund_body("tx-1", "r-1", "300")).await;
        assert_eq!(
            body["responseMessage"],
            "Refund amount exceeds refundable amount. Refundable amount: 250.50"
        );

        let ledger: Ledger = server
            .client
            .get(server.url("/sandbox/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ledger.payments[0].amount.to_string(), "250.50");
        assert!(ledger.refunds.is_empty());
        assert_eq!(
            (
                ledger.submit_calls,
                ledger.injected_failures,
                ledger.injected_rejects
            ),
            (4, 2, 1)
        );
        assert_eq!(ledger.pending_faults.fail_next, 0);

        let (status, body) = server
            .admin_post("/sandbox/faults", json!({ "failnext": 1 }))
            .await;
        assert_eq!(status, 400, "typos are refused, not ignored");
        assert!(body["error"].as_str().unwrap().contains("failnext"));
        let (status, _) = server
            .admin_post(
                "/sandbox/payments",
                json!({ "provider": "nope", "transactionReference": "t", "amount": 1 }),
            )
            .await;
        assert_eq!(status, 400);

        let health: serde_json::Value = server
            .client
            .get(server.url("/sandbox/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health, json!({ "status": "ok" }));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn random_errors_and_latency_spare_the_admin_api() {
        let server = start(SandboxConfig {
            error_rate: 1.0,
            latency: Duration::from_millis(300),
            ..SandboxConfig::default()
        })
        .await;
        let started = Instant::now();
        let (status, _, body) = server.initiate(&refund_body("tx", "r", "1")).await;
        assert_eq!(status, 500);
        assert_eq!(body["requestSuccessful"], json!(false));
        assert!(started.elapsed() >= Duration::from_millis(300));

        let started = Instant::now();
        let response = server
            .client
            .get(server.url("/sandbox/ledger"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert!(started.elapsed() < Duration::from_millis(300));
        assert!(server.sandbox.ledger().refunds.is_empty());
        server.stop(Duration::from_secs(2)).await;
    }
}

/// Pay-in notifications: what is queued when a payment becomes known, read back with the
/// adapters' own parsers (test code only) and signatures checked independently.
#[cfg(test)]
mod payin_tests {
    use super::notify::Outbound;
    use super::*;
    use hmac::{Hmac, Mac};
    use refund_worker::providers::{self, ProviderWebhook, WebhookKind};
    use serde_json::Value;

    fn notifying() -> SandboxConfig {
        SandboxConfig {
            // Never served: the notify loop runs only in `spawn`; this test drains the queue.
            webhook_url: Some("http://127.0.0.1:9".into()),
            ..SandboxConfig::default()
        }
    }

    fn payment(provider: Provider, reference: &str, amount: &str, currency: &str) -> Payment {
        Payment {
            provider,
            transaction_reference: reference.into(),
            amount: Decimal::from_str_exact(amount).unwrap(),
            currency: currency.into(),
        }
    }

    fn header<'a>(out: &'a Outbound, name: &str) -> &'a str {
        out.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// Hex HMAC-SHA256 of the body, computed here rather than with `docs::webhook_signature`.
    fn hmac_hex(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The one payment the adapter reads from a notification.
    fn read(parsed: Vec<ProviderWebhook>) -> (String, Option<Decimal>, Option<String>, bool) {
        assert_eq!(parsed.len(), 1);
        match parsed.into_iter().next().map(|w| w.kind) {
            Some(WebhookKind::Payment {
                transaction_reference,
                amount,
                currency,
                succeeded,
                ..
            }) => (transaction_reference, amount, currency, succeeded),
            other => panic!("not a payment: {other:?}"),
        }
    }

    fn dec(text: &str) -> Option<Decimal> {
        Decimal::from_str_exact(text).ok()
    }

    #[test]
    fn each_provider_sends_its_documented_payin_notification_once_per_payment() {
        let config = notifying();
        let secret = config.webhook_secret.clone();
        let sandbox = Sandbox::new(config);
        sandbox.add_payment(payment(Provider::VaServices, "va-1", "250.50", "NGN"));
        sandbox.add_payment(payment(Provider::Bpn, "VA-ORDER-1", "25.17", "USD"));
        sandbox.add_payment(payment(
            Provider::BinancePay,
            "29383937493038367292",
            "0.88000000",
            "USDT",
        ));
        sandbox.add_payment(payment(Provider::Bvnk, "bvnk-1", "150.10", "EUR"));
        let due = sandbox.due_webhooks();
        assert_eq!(due.len(), 4, "one notification per payment");
        assert!(sandbox.due_webhooks().is_empty(), "each handed out once");

        let by = |p: Provider| due.iter().find(|o| o.provider == p).unwrap();

        // VA Services: the documented fields, amount an exact number, VA's date format.
        let va = by(Provider::VaServices);
        let text = std::str::from_utf8(&va.body).unwrap();
        assert!(text.contains(r#""amount":250.50"#), "{text}");
        assert_eq!(header(va, "X-VA-Signature"), hmac_hex(&secret, &va.body));
        assert_eq!(va.signature_header, "X-VA-Signature");
        let body: Value = serde_json::from_slice(&va.body).unwrap();
        let mut fields: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "accountID",
                "amount",
                "classificationCode",
                "narration",
                "success",
                "traceID",
                "transactionReference",
                "transactionTime",
                "transactionType"
            ]
        );
        assert_eq!(body["success"], Value::Bool(true));
        let time = body["transactionTime"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(time, "%d/%m/%Y %I:%M:%S %p").is_ok(),
            "{time}"
        );
        assert_eq!(
            read(providers::va_services::parse_notification(&va.body).unwrap()),
            ("va-1".into(), dec("250.50"), None, true)
        );

        // BPN: virtual-account payment status, HMAC in its header.
        let bpn = by(Provider::Bpn);
        assert!(std::str::from_utf8(&bpn.body)
            .unwrap()
            .contains(r#""amount":25.17"#));
        assert_eq!(header(bpn, "X-BPN-Signature"), hmac_hex(&secret, &bpn.body));
        let body: Value = serde_json::from_slice(&bpn.body).unwrap();
        assert_eq!(body["notifyType"], "VA_PAYMENT_STATUS");
        assert_eq!(body["data"]["status"], "SUCCESS");
        assert_eq!(
            read(providers::bpn::parse_notification(&bpn.body).unwrap()),
            ("VA-ORDER-1".into(), dec("25.17"), Some("USD".into()), true)
        );

        // Binance Pay: PAY with `data` a JSON string, RSA-signed like PAY_REFUND.
        let binance = by(Provider::BinancePay);
        let public =
            providers::binance_pay::parse_public_key(BINANCE_WEBHOOK_TEST_PUBLIC_KEY).unwrap();
        assert!(providers::binance_pay::verify_webhook_signature(
            &public,
            header(binance, "BinancePay-Timestamp"),
            header(binance, "BinancePay-Nonce"),
            &binance.body,
            header(binance, "BinancePay-Signature"),
        ));
        assert!(binance.resign_with.is_some(), "a duplicate is signed anew");
        let body: Value = serde_json::from_slice(&binance.body).unwrap();
        assert_eq!(body["bizType"], "PAY");
        assert_eq!(body["bizStatus"], "PAY_SUCCESS");
        let data = body["data"].as_str().expect("data is a JSON string");
        assert!(data.contains(r#""totalFee":0.88000000"#), "{data}");
        assert_eq!(
            read(providers::binance_pay::parse_notification(&binance.body).unwrap()),
            (
                "29383937493038367292".into(),
                dec("0.88000000"),
                Some("USDT".into()),
                true
            )
        );

        // BVNK: pay-in status change, `x-signature`.
        let bvnk = by(Provider::Bvnk);
        assert_eq!(header(bvnk, "x-signature"), hmac_hex(&secret, &bvnk.body));
        let body: Value = serde_json::from_slice(&bvnk.body).unwrap();
        assert_eq!(body["event"], "bvnk:payment:payin:status-change");
        assert!(body["eventId"].as_str().is_some_and(|id| !id.is_empty()));
        assert_eq!(body["data"]["status"], "COMPLETED");
        assert!(std::str::from_utf8(&bvnk.body)
            .unwrap()
            .contains(r#""value":150.10"#));
        assert_eq!(
            read(providers::bvnk::parse_notification(&bvnk.body).unwrap()),
            ("bvnk-1".into(), dec("150.10"), Some("EUR".into()), true)
        );
    }

    #[test]
    fn a_payment_told_again_is_notified_only_when_it_changed() {
        let sandbox = Sandbox::new(notifying());
        let p = payment(Provider::Bvnk, "bvnk-2", "10.00", "EUR");
        sandbox.add_payment(p.clone());
        sandbox.add_payment(p.clone());
        assert_eq!(sandbox.due_webhooks().len(), 1);
        sandbox.add_payment(p.clone());
        assert!(sandbox.due_webhooks().is_empty(), "the same payment again");
        sandbox.add_payment(payment(Provider::Bvnk, "bvnk-2", "12.00", "EUR"));
        let due = sandbox.due_webhooks();
        assert_eq!(due.len(), 1, "a changed amount is told");
        assert!(std::str::from_utf8(&due[0].body)
            .unwrap()
            .contains(r#""value":12.00"#));
    }

    #[test]
    fn without_a_webhook_url_nothing_is_queued() {
        let sandbox = Sandbox::new(SandboxConfig::default());
        sandbox.add_payment(payment(Provider::VaServices, "va-9", "1.00", "NGN"));
        assert!(sandbox.due_webhooks().is_empty());
        // Pay-ins off (the bench): a webhook URL alone queues none either.
        let off = Sandbox::new(SandboxConfig {
            webhook_url: Some("http://127.0.0.1:9".into()),
            payin_notifications: false,
            ..SandboxConfig::default()
        });
        off.add_payment(payment(Provider::VaServices, "va-9", "1.00", "NGN"));
        assert!(off.due_webhooks().is_empty());
        let on = Sandbox::new(SandboxConfig {
            webhook_url: Some("http://127.0.0.1:9".into()),
            ..SandboxConfig::default()
        });
        on.add_payment(payment(Provider::VaServices, "va-9", "1.00", "NGN"));
        assert_eq!(on.due_webhooks().len(), 1);
    }

    /// An initiate call through the router in-process: no server, so no notify loop drains
    /// the queue before the test looks at it.
    async fn initiate(sandbox: &Sandbox, body: &str) -> u16 {
        va_post(sandbox, "/va/refunds/initiate-refund", body).await
    }

    async fn va_post(sandbox: &Sandbox, path: &str, body: &str) -> u16 {
        use tower::ServiceExt;
        let request = axum::http::Request::post(path)
            .header(
                "authorization",
                format!("Bearer {}", sandbox.config().va_api_key),
            )
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let response = sandbox.router().oneshot(request).await.unwrap();
        response.status().as_u16()
    }

    #[tokio::test]
    async fn a_payment_first_seen_in_a_refund_call_is_notified_with_the_default_amount() {
        let sandbox = Sandbox::new(notifying());
        let body = test_support::refund_body("va-new", "r-new", "1.00");
        assert_eq!(initiate(&sandbox, &body).await, 200);
        let due = sandbox.due_webhooks();
        assert_eq!(due.len(), 1);
        let (reference, amount, _, succeeded) =
            read(providers::va_services::parse_notification(&due[0].body).unwrap());
        assert_eq!(reference, "va-new");
        assert_eq!(amount, Some(sandbox.config().default_payment_amount));
        assert!(succeeded);
        // The replay of that refund, and a second refund, know the payment already.
        assert_eq!(initiate(&sandbox, &body).await, 200);
        let second = test_support::refund_body("va-new", "r-new-2", "1.00");
        assert_eq!(initiate(&sandbox, &second).await, 200);
        assert!(sandbox.due_webhooks().is_empty());
        assert_eq!(sandbox.ledger().refunds.len(), 2);

        // VA's "Send Notification" sends a known payment's notification again.
        let send = |tx: &str| format!(r#"{{"transactionReference":"{tx}"}}"#);
        assert_eq!(
            va_post(&sandbox, "/va/notifications/send", &send("va-new")).await,
            200
        );
        let again = sandbox.due_webhooks();
        assert_eq!(again.len(), 1);
        assert_eq!(
            read(providers::va_services::parse_notification(&again[0].body).unwrap()).0,
            "va-new"
        );
        assert_eq!(
            va_post(&sandbox, "/va/notifications/send", &send("nope")).await,
            200
        );
        assert!(
            sandbox.due_webhooks().is_empty(),
            "an unknown payment: nothing to send"
        );
    }
}
