//! The loops that move refunds along. Each is a *step function* returning an outcome (so
//! tests drive one step at a time) wrapped in a thin loop that sleeps when idle, wakes
//! early when another part has work for it, and stops when shutdown is requested.
//!
//! The transactions are begun and committed here: the store reads and writes inside them
//! (`&mut PgConnection`) and the decisions are [`crate::domain`]'s, so whether a batch
//! commits, rolls back or is judged again is visible where the work is driven.
//!
//! - [`consumer`]: the one queue consumer (manual acks after commit, the ack window,
//!   batches, dead letters with their reason, drain on shutdown, panics); intake and
//!   provider webhooks are its handlers.
//! - [`intake`]: one command message -> a refund row (or a dead letter).
//! - [`provider_webhooks`]: provider webhook messages -> applied through the inbox (or parked, or
//!   dead-lettered).
//! - [`dispatch`]: due refunds -> provider calls -> recorded outcomes, as many calls in
//!   flight as [`limit`] allows (it follows the providers' latency).
//! - [`relay`]: outbox rows -> published events (with confirms).
//! - [`merchant_webhooks`]: due merchant webhook deliveries -> signed POSTs -> recorded
//!   attempts (the step is [`crate::merchant_webhooks::delivery`]'s).
//! - [`retention`]: removes operational rows past `RETENTION` (refunds and history stay).
//! - [`review`]: refunds still open after `REVIEW_AFTER` -> flagged for an operator; an
//!   operator's recheck, through the dispatcher's own step; an operator's resolution.
//! - [`recover`]: after an outage, every pending refund of a window asked about at once, and
//!   the providers' webhooks re-sent where they document a way.
//! - [`reconcile`]: a provider's view of our refunds against our database (operators).
//! - [`worker`]: runs them all, reconnects after broker or database outages, drains on
//!   shutdown.

pub mod consumer;
pub mod dispatch;
pub mod intake;
pub mod limit;
pub mod merchant_webhooks;
pub mod provider_webhooks;
pub mod reconcile;
pub mod recover;
pub mod relay;
pub mod retention;
pub mod review;
pub mod worker;

pub use consumer::ConsumeError;

use crate::broker::Topology;
use crate::config::Config;
use crate::providers::Providers;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;

/// What every loop shares.
#[derive(Clone)]
pub struct Context {
    /// Database pool.
    pub pool: PgPool,
    /// Settings.
    pub config: Arc<Config>,
    /// Provider adapters.
    pub providers: Providers,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Where status changes' events and webhooks go.
    pub sink: crate::store::EventSink,
    /// Wakes the relay when an event was committed.
    pub relay_wakeup: Arc<Notify>,
    /// Wakes the dispatcher when a refund became due.
    pub dispatch_wakeup: Arc<Notify>,
    /// Wakes the webhook deliverer when a delivery was queued.
    pub delivery_wakeup: Arc<Notify>,
    /// New refunds claimed by intake for the dispatcher, and the dispatcher's slots.
    pub handoff: Arc<dispatch::Handoff>,
}

impl Context {
    /// Builds the shared context.
    pub fn new(pool: PgPool, config: Config, providers: Providers) -> Self {
        let topology = Topology::with_prefix(&config.amqp_name_prefix);
        let sink = crate::store::EventSink {
            exchange: topology.exchange.clone(),
            webhook_default_url: config.webhooks.default_url.clone(),
        };
        let (floor, ceiling) = (config.dispatch_concurrency, config.dispatch_concurrency_max);
        Self {
            sink,
            pool,
            config: Arc::new(config),
            providers,
            topology,
            relay_wakeup: Arc::new(Notify::new()),
            dispatch_wakeup: Arc::new(Notify::new()),
            delivery_wakeup: Arc::new(Notify::new()),
            handoff: Arc::new(dispatch::Handoff::new(floor, ceiling)),
        }
    }
}

impl Context {
    /// Wakes the loops that act on a newly committed event (relay and webhook delivery).
    pub fn event_committed(&self) {
        self.relay_wakeup.notify_one();
        self.delivery_wakeup.notify_one();
    }
}

/// Sleeps for `idle` unless `wakeup` fires or shutdown is requested first.
pub async fn idle(
    wakeup: &Notify,
    idle: std::time::Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        _ = wakeup.notified() => {}
        _ = tokio::time::sleep(idle) => {}
        _ = shutdown.cancelled() => {}
    }
}
