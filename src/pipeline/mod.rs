//! The loops that move refunds along. Each is a *step function* returning an outcome (so
//! tests drive one step at a time) wrapped in a thin loop that sleeps when idle, wakes
//! early when another part has work for it, and stops when shutdown is requested.
//!
//! The transactions are begun and committed here: the store reads and writes inside them
//! (`&mut PgConnection`) and the decisions are [`crate::domain`]'s, so whether a batch
//! commits, rolls back or is judged again is visible where the work is driven.
//!
//! - [`intake`]: one command message -> a refund row (or a dead letter).
//! - [`provider_webhooks`]: provider webhook messages -> applied through the inbox (or parked, or
//!   dead-lettered).
//! - [`dispatch`]: due refunds -> provider calls -> recorded outcomes, as many calls in
//!   flight as [`limit`] allows (it follows the providers' latency).
//! - [`relay`]: outbox rows -> published events (with confirms).
//! - [`retention`]: removes operational rows past `RETENTION` (refunds and history stay).
//! - [`review`]: refunds still open after `REVIEW_AFTER` -> flagged for an operator; an
//!   operator's recheck, through the dispatcher's own step; an operator's resolution.
//! - [`recover`]: after an outage, every pending refund of a window asked about at once, and
//!   the providers' webhooks re-sent where they document a way.
//! - [`reconcile`]: a provider's view of our refunds against our database (operators).
//! - [`worker`]: runs them all, reconnects after broker or database outages, drains on
//!   shutdown.

pub mod dispatch;
pub mod intake;
pub mod limit;
pub mod provider_webhooks;
pub mod reconcile;
pub mod recover;
pub mod relay;
pub mod retention;
pub mod review;
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

/// Why a consumer loop ended; the worker reconnects after either.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker connection or channel failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// A task holding deliveries panicked. Its deliveries can never be settled, and no
    /// acknowledgement may pass them, so the channel is given up: closing it redelivers
    /// them (a stored one comes back as a duplicate).
    #[error("a {0} task panicked; its messages are redelivered on a new channel")]
    TaskPanicked(&'static str),
}

/// The error that ends a consumer loop when one of its tasks stopped (it panicked): logs
/// the cause, if known.
pub(crate) fn task_failed(
    cause: Option<tokio::task::JoinError>,
    what: &'static str,
) -> ConsumeError {
    match cause {
        Some(e) => tracing::error!(error = %e, "{what} task failed"),
        None => tracing::error!("{what} task stopped"),
    }
    ConsumeError::TaskPanicked(what)
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

/// Runs `attempt` until it succeeds, backing off while the database is unavailable: the
/// messages stay unacked meanwhile (not requeued, so their delivery limit is not burnt).
/// Returns `None` on shutdown, after nacking the deliveries so they are redelivered.
pub(crate) async fn until_stored<T, F, Fut>(
    ctx: &Context,
    acks: &crate::broker::AckWindow,
    deliveries: &[lapin::message::Delivery],
    shutdown: &tokio_util::sync::CancellationToken,
    what: &'static str,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::store::StoreError>>,
{
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(outcome) => return Some(outcome),
            Err(e) => {
                failures += 1;
                let delay = ctx
                    .config
                    .retry
                    .delay(failures.min(6), None)
                    .max(std::time::Duration::from_millis(100));
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => {
                        for delivery in deliveries {
                            requeue(acks, delivery).await;
                        }
                        return None;
                    }
                }
            }
        }
    }
}

/// Nacks a delivery for redelivery and settles it in the ack window.
async fn requeue(acks: &crate::broker::AckWindow, delivery: &lapin::message::Delivery) {
    let _ = delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
    settled(acks, delivery, false).await;
}

/// Settles a delivery in the ack window (`ack`: to acknowledge, or already nacked). If the
/// ack the window sends fails, the channel died after the commit: the broker redelivers,
/// and the redeliveries are recognised as duplicates.
async fn settled(acks: &crate::broker::AckWindow, delivery: &lapin::message::Delivery, ack: bool) {
    if let Err(e) = acks.settle(delivery, ack).await {
        tracing::warn!(error = %e, "ack failed; the messages will be redelivered and deduplicated");
    }
}

/// Settles a processed delivery: with a `dead_letter` (queue, reason) it is first copied
/// to that dead-letter queue with its reason (and nacked for redelivery if the broker did
/// not confirm the copy); then it is acknowledged, with the run it closes (`AckWindow`).
pub(crate) async fn settle(
    ctx: &Context,
    publisher: &crate::broker::Publisher,
    acks: &crate::broker::AckWindow,
    delivery: lapin::message::Delivery,
    dead_letter: Option<(&str, &str)>,
) {
    if let Some((dlq, reason)) = dead_letter {
        let source = (delivery.exchange.as_str(), delivery.routing_key.as_str());
        if let Err(e) = publisher
            .dead_letter(
                &ctx.topology.dlx,
                dlq,
                &delivery.data,
                &delivery.properties,
                source,
                reason,
            )
            .await
        {
            // Not confirmed: leave it for redelivery; it comes back after reconnecting.
            tracing::error!(error = %e, "dead-letter publish failed; message kept");
            requeue(acks, &delivery).await;
            return;
        }
    }
    settled(acks, &delivery, true).await;
}

/// One queue's consumer as both consumer loops open it: its own channel with the `PREFETCH`
/// window and manual acks, and a publisher (with confirms) for dead letters.
pub(crate) struct QueueConsumer {
    /// The consuming channel.
    pub channel: lapin::Channel,
    /// Publishes dead letters, on its own channel.
    pub publisher: crate::broker::Publisher,
    /// The deliveries.
    pub consumer: lapin::Consumer,
    /// Acknowledges the deliveries a run at a time; every delivery is registered on receipt.
    pub acks: std::sync::Arc<crate::broker::AckWindow>,
}

impl QueueConsumer {
    /// Starts consuming `queue` under a consumer tag beginning with `tag`.
    pub(crate) async fn open(
        ctx: &Context,
        connection: &lapin::Connection,
        queue: &str,
        tag: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(
                ctx.config.prefetch,
                lapin::options::BasicQosOptions::default(),
            )
            .await?;
        let publisher = crate::broker::Publisher::open(connection).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("{tag}-{}", uuid::Uuid::new_v4()).into(),
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            publisher,
            consumer,
            acks: Default::default(),
        })
    }

    /// The error for a delivery stream that ended: its channel is no longer open (lapin 4
    /// does not say in which state it left).
    pub(crate) fn ended(&self) -> lapin::Error {
        let state = lapin::ChannelState::Closed;
        lapin::ErrorKind::InvalidChannelState(state, "the delivery stream ended").into()
    }

    /// Closes both channels (after the loop drained its work).
    pub(crate) async fn close(&self) {
        let _ = self.channel.close(200, "shutting down".into()).await;
        let _ = self
            .publisher
            .channel()
            .close(200, "shutting down".into())
            .await;
    }
}
