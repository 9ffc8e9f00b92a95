//! Inbound provider webhooks: consumes `provider.webhooks`, parses each message with its
//! provider's adapter, and applies it through the inbox (deduplicated, one transaction with
//! its outbox event). Webhooks that arrive before their refund is known are parked, and
//! this loop tries them again every `PARKED_RETRY_MS`.
//!
//! The ingress verified the signature before publishing; the queue is inside our trust
//! boundary, so the consumer only parses. A message that cannot be parsed, names an unknown
//! provider or one that is not configured is dead-lettered with the reason.

use super::Context;
use crate::broker::publisher::Publisher;
use crate::broker::topology::header_str;
use crate::domain::ProviderName;
use crate::store::inbound::{self, Applied};
use crate::store::StoreError;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::Connection;
use tokio_util::sync::CancellationToken;

/// AMQP header naming the provider (set by the ingress; survives dead-lettering and replay,
/// which may lose the routing key).
pub const PROVIDER_HEADER: &str = "x-provider";

/// What one consumer step decided for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    /// Parsed and applied; one entry per notification in the body.
    Applied(Vec<Applied>),
    /// Must go to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// Processes one webhook message. Errors are infrastructure errors (database down); the
/// caller keeps the message and tries again.
pub async fn handle(
    ctx: &Context,
    provider: &str,
    body: &[u8],
) -> Result<InboundOutcome, StoreError> {
    let Some(name) = ProviderName::parse(provider) else {
        return Ok(InboundOutcome::DeadLetter(format!(
            "unknown provider `{}`",
            provider.chars().take(64).collect::<String>()
        )));
    };
    let Some(adapter) = ctx.providers.get(name) else {
        return Ok(InboundOutcome::DeadLetter(format!(
            "provider {name} is not configured"
        )));
    };
    let webhooks = match adapter.parse_webhook(body) {
        Ok(w) => w,
        Err(e) => return Ok(InboundOutcome::DeadLetter(e.to_string())),
    };
    let mut results = Vec::with_capacity(webhooks.len());
    for (part, webhook) in webhooks.iter().enumerate() {
        let applied = inbound::receive(&ctx.pool, name, body, part, webhook, &ctx.sink).await?;
        report(ctx, name, &applied);
        results.push(applied);
    }
    Ok(InboundOutcome::Applied(results))
}

/// Logs and counts what applying one webhook did.
fn report(ctx: &Context, provider: ProviderName, applied: &Applied) {
    crate::metrics::provider_webhook_applied(provider.as_str(), applied.label());
    match applied {
        Applied::Transitioned(event) => {
            crate::metrics::refund_event(event);
            tracing::info!(%provider, refund_reference = %event.refund_reference,
                status = %event.status, "provider webhook applied");
            ctx.event_committed();
        }
        Applied::Contradiction {
            refund_reference,
            ours,
            theirs,
        } => {
            crate::metrics::provider_webhook_contradiction(provider.as_str());
            tracing::error!(%provider, %refund_reference, %ours, %theirs,
                "ALERT: provider webhook contradicts the refund's final status; not applied");
        }
        Applied::Parked => {
            tracing::info!(%provider, "provider webhook for a refund not known yet; parked")
        }
        Applied::Unmatched { reason } => {
            tracing::warn!(%provider, %reason, "provider webhook matches no single refund")
        }
        other => tracing::debug!(%provider, result = other.label(), "provider webhook"),
    }
}

/// Tries parked webhooks again; returns how many were resolved (applied or given up).
pub async fn sweep_parked(ctx: &Context) -> Result<usize, StoreError> {
    let mut resolved = 0;
    for parked in inbound::parked(&ctx.pool, 100).await? {
        let adapter = ProviderName::parse(&parked.provider).and_then(|p| ctx.providers.get(p));
        let Some(adapter) = adapter else {
            inbound::abandon_parked(
                &ctx.pool,
                &parked.provider,
                &parked.event_key,
                "provider no longer configured",
            )
            .await?;
            resolved += 1;
            continue;
        };
        let webhook = adapter.parse_webhook(&parked.body).ok().and_then(|w| {
            usize::try_from(parked.part)
                .ok()
                .and_then(|i| w.into_iter().nth(i))
        });
        let Some(webhook) = webhook else {
            inbound::abandon_parked(
                &ctx.pool,
                &parked.provider,
                &parked.event_key,
                "no longer parses",
            )
            .await?;
            resolved += 1;
            continue;
        };
        let age = chrono::Utc::now() - parked.received_at;
        let give_up = age.to_std().unwrap_or_default() > ctx.config.parked_max_age;
        let applied = inbound::retry_parked(
            &ctx.pool,
            adapter.name(),
            &parked.event_key,
            &webhook,
            give_up,
            &ctx.sink,
        )
        .await?;
        if applied != Applied::Parked && applied != Applied::Duplicate {
            report(ctx, adapter.name(), &applied);
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// Ordered lanes the consumer spreads webhooks over. Notifications about one refund or
/// payment always take the same lane, so they are applied in their queue order (the pay-ins
/// ledger keeps the last status it was given); different ones are applied side by side, so
/// a burst of webhooks does not queue behind one transaction at a time.
const LANES: usize = 8;

/// Consumes `provider.webhooks` until shutdown or until the connection fails, and sweeps
/// parked webhooks meanwhile. Messages go to [`LANES`] ordered lanes by what they are about.
pub async fn consume(
    ctx: &Context,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(), lapin::Error> {
    let queue = super::QueueConsumer::open(
        ctx,
        connection,
        &ctx.topology.webhooks_queue,
        "refund-worker-webhooks",
    )
    .await?;
    let (publisher, mut consumer) = (queue.publisher.clone(), queue.consumer.clone());
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LANES {
        // The prefetch bounds what is in flight; a lane's queue never holds more.
        let (send, mut receive) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
        lanes.push(send);
        let (ctx, publisher, shutdown) = (ctx.clone(), publisher.clone(), shutdown.clone());
        workers.spawn(async move {
            while let Some(delivery) = receive.recv().await {
                process_delivery(&ctx, &publisher, delivery, &shutdown).await;
            }
        });
    }
    let mut sweep = tokio::time::interval(ctx.config.parked_retry);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = sweep.tick() => {
                if let Err(e) = sweep_parked(ctx).await {
                    tracing::warn!(error = %e, "parked webhook sweep failed");
                }
                continue;
            }
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e),
            None => break Err(queue.ended()),
        };
        let lane = lane_of(ctx, &delivery) % LANES;
        if let Err(e) = lanes[lane].send(delivery) {
            // Only if the lane's task ended (it panicked): leave the message unacked; it
            // comes back when the channel closes.
            tracing::error!(lane, "webhook lane stopped; message left for redelivery");
            drop(e);
        }
    };
    // Drain: let the lanes finish and acknowledge what they hold before the channel closes.
    drop(lanes);
    while workers.join_next().await.is_some() {}
    queue.close().await;
    result
}

/// The lane a message belongs to: a hash of its provider and what its first notification
/// is about (our reference, else the provider's, else the payment). Unparseable messages
/// all go to lane 0, where they are dead-lettered.
fn lane_of(ctx: &Context, delivery: &Delivery) -> usize {
    use std::hash::{Hash, Hasher};
    let provider = header_str(delivery.properties.headers(), PROVIDER_HEADER)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let adapter = ProviderName::parse(&provider).and_then(|p| ctx.providers.get(p));
    let Some(first) = adapter
        .and_then(|a| a.parse_webhook(&delivery.data).ok())
        .and_then(|w| w.into_iter().next())
    else {
        return 0;
    };
    let about = match first.kind {
        crate::providers::WebhookKind::Refund {
            refund_reference,
            provider_reference,
            transaction_reference,
            ..
        } => refund_reference
            .or(provider_reference)
            .or(transaction_reference),
        crate::providers::WebhookKind::Payment {
            transaction_reference,
            ..
        } => Some(transaction_reference),
        _ => None,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (provider, about).hash(&mut hasher);
    // Truncation is fine: only the remainder modulo LANES matters.
    hasher.finish() as usize
}

/// Handles one delivery: apply, then ack (or dead-letter, then ack).
async fn process_delivery(
    ctx: &Context,
    publisher: &Publisher,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let provider = header_str(delivery.properties.headers(), PROVIDER_HEADER)
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    let Some(outcome) = super::until_stored(
        ctx,
        std::slice::from_ref(&delivery),
        shutdown,
        "provider webhook",
        || handle(ctx, &provider, &delivery.data),
    )
    .await
    else {
        return;
    };
    let dead_letter = match &outcome {
        InboundOutcome::DeadLetter(reason) => {
            crate::metrics::provider_webhook_applied(&provider, "dead_letter");
            tracing::warn!(%provider, %reason, "provider webhook dead-lettered");
            Some((ctx.topology.webhooks_dlq.as_str(), reason.as_str()))
        }
        InboundOutcome::Applied(_) => None,
    };
    super::settle(ctx, publisher, delivery, dead_letter).await;
}
