//! The loops that move refunds along. Each is a *step function* returning an outcome (so
//! tests drive one step at a time) wrapped in a thin loop that sleeps when idle, wakes
//! early when another part has work for it, and stops when shutdown is requested.
//!
//! - [`intake`]: one command message -> a refund row (or a dead letter).
//! - [`dispatch`]: due refunds -> provider calls -> recorded outcomes.
//! - [`relay`]: outbox rows -> published events (with confirms).
//! - [`worker`]: runs them all, reconnects after broker or database outages, drains on
//!   shutdown.

pub mod dispatch;
pub mod inbound;
pub mod intake;
pub mod relay;
pub mod worker;

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
}

impl Context {
    /// Builds the shared context.
    pub fn new(pool: PgPool, config: Config, providers: Providers) -> Self {
        let topology = Topology::with_prefix(&config.amqp_name_prefix);
        let sink = crate::store::EventSink {
            exchange: topology.exchange.clone(),
            webhook_default_url: config.webhooks.default_url.clone(),
        };
        Self {
            sink,
            pool,
            config: Arc::new(config),
            providers,
            topology,
            relay_wakeup: Arc::new(Notify::new()),
            dispatch_wakeup: Arc::new(Notify::new()),
            delivery_wakeup: Arc::new(Notify::new()),
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
