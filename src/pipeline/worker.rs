//! The worker: runs intake, provider webhooks, dispatch and relay together, reconnects to RabbitMQ after it
//! restarts, and drains in order on shutdown.
//!
//! Shutdown order matters for "nothing lost": stop taking commands and finish the ones in
//! flight (they are acked after their commit), let the dispatcher finish and record its
//! steps in flight, then let the relay publish everything committed meanwhile, then close
//! the connection.

use super::{
    dispatch, intake, merchant_webhooks, provider_webhooks, relay, retention, review, Context,
};
use crate::broker::{self, Publisher};
use crate::retry::Backoff;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Live status, for readiness checks.
#[derive(Debug, Default)]
pub struct Status {
    /// Connected to the broker with the topology declared.
    pub broker_ready: AtomicBool,
}

/// Runs the worker until `shutdown` is cancelled and everything has drained.
pub async fn run(ctx: Context, status: Arc<Status>, shutdown: CancellationToken) {
    let dispatch_done = CancellationToken::new();
    let dispatcher = {
        let (ctx, shutdown, done) = (ctx.clone(), shutdown.clone(), dispatch_done.clone());
        tokio::spawn(async move {
            let _done = done.drop_guard();
            dispatch::run(&ctx, &shutdown).await;
        })
    };

    // The review sweep needs only the database too.
    let reviewer = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move { review::run(&ctx, &shutdown).await })
    };
    let sweeper = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tokio::spawn(async move { retention::run(&ctx, &shutdown).await })
    };

    // Webhook delivery needs only the database, like the dispatcher.
    let deliverer = match crate::merchant_webhooks::delivery::Deliverer::new(
        ctx.pool.clone(),
        &ctx.config.webhooks,
        ctx.config.claim_lease,
    ) {
        Some(d) => {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                merchant_webhooks::run(&ctx, &d, &shutdown).await;
            }))
        }
        None => {
            tracing::warn!(
                "WEBHOOK_SIGNING_SECRET is not set: merchant webhooks are queued but not sent"
            );
            None
        }
    };

    let mut backoff = Backoff::new(ctx.config.retry)
        .capped_at(5)
        .at_least(Duration::from_millis(200));
    loop {
        match session(&ctx, &status, &shutdown, &dispatch_done).await {
            Ok(()) => break,
            Err(e) => {
                status.broker_ready.store(false, Ordering::SeqCst);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "broker session ended; reconnecting");
                if !Backoff::sleep(delay, &shutdown).await {
                    // No broker to drain into: the outbox keeps the events for next time.
                    break;
                }
            }
        }
    }
    status.broker_ready.store(false, Ordering::SeqCst);
    let _ = dispatcher.await;
    let _ = reviewer.await;
    let _ = sweeper.await;
    if let Some(d) = deliverer {
        let _ = d.await;
    }
}

/// One broker connection's life: declare, consume and relay until shutdown or failure.
async fn session(
    ctx: &Context,
    status: &Status,
    shutdown: &CancellationToken,
    dispatch_done: &CancellationToken,
) -> Result<(), anyhow::Error> {
    let connection = tokio::select! {
        c = broker::connect(&ctx.config.amqp_url, "refund-worker") => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    {
        let channel = connection.create_channel().await?;
        ctx.topology.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
    }
    let publisher = Publisher::open(&connection).await?;
    status.broker_ready.store(true, Ordering::SeqCst);
    tracing::info!(queue = %ctx.topology.commands_queue, "connected to the broker, consuming");

    // Queue depths for /metrics, sampled on this connection while it lives.
    let depth_stop = CancellationToken::new();
    {
        let channel = connection.create_channel().await?;
        let (topology, stop) = (ctx.topology.clone(), depth_stop.clone());
        tokio::spawn(async move {
            loop {
                // Every queue the worker declares, `refunds.unrouted` included: events no
                // subscriber was bound for are kept there, so they can grow unseen.
                for q in topology.queues() {
                    if let Ok(d) = crate::broker::dlq::depth_on(&channel, q).await {
                        crate::metrics::queue_depth(q, d);
                    }
                }
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(15)) => {}, _ = stop.cancelled() => return }
            }
        });
    }
    let _depth_guard = depth_stop.drop_guard();
    let relay_stop = CancellationToken::new();
    let relay_run = relay::run(ctx, &publisher, &relay_stop);
    tokio::pin!(relay_run);
    // Commands and provider webhooks on the same connection; either failing ends the
    // session (the caller reconnects) and their unacked messages are redelivered.
    let consume = async {
        tokio::try_join!(
            intake::consume(ctx, &connection, shutdown),
            provider_webhooks::consume(ctx, &connection, shutdown)
        )
        .map(|_| ())
    };
    tokio::pin!(consume);
    let result = tokio::select! {
        r = &mut consume => match r {
            Ok(()) => {
                // Commands drained; wait for the dispatcher's last steps, then flush events.
                dispatch_done.cancelled().await;
                relay_stop.cancel();
                relay_run.await.map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        },
        r = &mut relay_run => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        },
    };
    let _ = connection.close(200, "bye".into()).await;
    result
}
