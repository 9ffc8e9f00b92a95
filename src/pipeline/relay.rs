//! Relay: publishes committed outbox events with publisher confirms.
//!
//! A batch is taken and stamped published in one statement (`FOR UPDATE SKIP LOCKED`, so
//! several workers share the outbox), published in a pipeline, and committed only after
//! every confirm arrived. If the process dies in between, the transaction never commits,
//! the rows stay unpublished and are sent again with the same `eventId` (at-least-once;
//! consumers dedupe on `eventId`).

use super::Context;
use crate::broker::publisher::{json_properties, Outgoing, PublishError, Publisher};
use crate::retry::Backoff;
use crate::store::{outbox, StoreError};
use tokio_util::sync::CancellationToken;

/// Events per relay step.
pub const BATCH: i64 = 200;

/// Relay errors.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Broker.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<sqlx::Error> for RelayError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What one relay step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Events were published.
    Published(usize),
    /// The outbox was empty.
    Idle,
}

/// Publishes one batch of outbox events.
pub async fn step(ctx: &Context, publisher: &Publisher) -> Result<RelayOutcome, RelayError> {
    let mut tx = ctx.pool.begin().await?;
    let rows = outbox::take_batch(&mut tx, &ctx.sink.exchange, BATCH).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(RelayOutcome::Idle);
    }
    let mut confirms = Vec::with_capacity(rows.len());
    let mut bodies = Vec::with_capacity(rows.len());
    for row in &rows {
        bodies.push(
            serde_json::to_vec(&row.payload)
                .map_err(|e| StoreError::Corrupt(format!("outbox {} payload: {e}", row.id)))?,
        );
    }
    for (row, body) in rows.iter().zip(&bodies) {
        confirms.push(
            publisher
                .send(Outgoing {
                    exchange: &row.exchange,
                    routing_key: &row.routing_key,
                    payload: body,
                    properties: json_properties(&row.event_id.to_string()),
                })
                .await?,
        );
    }
    for confirm in confirms {
        Publisher::confirmed(confirm).await?;
    }
    tx.commit().await?;
    crate::metrics::events_published(rows.len());
    Ok(RelayOutcome::Published(rows.len()))
}

/// Runs [`step`] until shutdown (then flushes what is left once) or a broker error.
pub async fn run(
    ctx: &Context,
    publisher: &Publisher,
    shutdown: &CancellationToken,
) -> Result<(), PublishError> {
    let mut backoff = Backoff::new(ctx.config.retry);
    loop {
        if shutdown.is_cancelled() {
            // Flush: publish what the other loops committed while draining.
            while let Ok(RelayOutcome::Published(_)) = step(ctx, publisher).await {}
            return Ok(());
        }
        match step(ctx, publisher).await {
            Ok(RelayOutcome::Published(_)) => backoff.reset(),
            Ok(RelayOutcome::Idle) => {
                backoff.reset();
                super::idle(&ctx.relay_wakeup, ctx.config.idle_poll, shutdown).await;
            }
            Err(RelayError::Publish(e)) => return Err(e),
            Err(RelayError::Store(e)) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "relay step failed");
                Backoff::sleep(delay, shutdown).await;
            }
        }
    }
}
