//! The merchant webhook delivery loop: [`crate::merchant_webhooks::delivery::Deliverer`]'s
//! step (claim due deliveries, POST each signed event, record the attempt) inside the thin
//! loop the other pipeline loops have: idle until woken or the idle poll, back off while
//! the database is unavailable, stop on shutdown. The loop lives here, with the others,
//! so `merchant_webhooks` (signing, delivery, network policy) imports nothing above it.

use super::Context;
use crate::merchant_webhooks::delivery::{Deliverer, DeliveryOutcome};
use crate::retry::Backoff;
use tokio_util::sync::CancellationToken;

/// Runs [`Deliverer::step`] until shutdown; a step in progress finishes first.
pub(crate) async fn run(ctx: &Context, deliverer: &Deliverer, shutdown: &CancellationToken) {
    let mut backoff = Backoff::new(ctx.config.retry);
    while !shutdown.is_cancelled() {
        match deliverer.step().await {
            Ok(DeliveryOutcome::Attempted(_)) => backoff.reset(),
            Ok(DeliveryOutcome::Idle) => {
                super::idle(&ctx.delivery_wakeup, ctx.config.idle_poll, shutdown).await
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "webhook delivery step failed");
                Backoff::sleep(delay, shutdown).await;
            }
        }
    }
}
