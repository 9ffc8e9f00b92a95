//! Inbound provider webhooks: consumes `provider.webhooks`, parses each message with its
//! provider's adapter, and applies it through the inbox (deduplicated, one transaction with
//! its outbox event). Webhooks that arrive before their refund is known are parked, and
//! this loop tries them again every `PARKED_RETRY_MS`.
//!
//! Messages are spread over ordered lanes (`WEBHOOK_LANES`) by the refund or payment they
//! are about; a lane applies whatever is waiting in it (up to `LANE_BATCH` messages) in one
//! transaction ([`receive_batch`]), judged as if they had come one at a time. A message the
//! database refuses is retried alone, so only it is dead-lettered. The transactions are
//! this module's; the store reads and writes inside them, and what a webhook does is
//! [`crate::domain::webhook`]'s decision.
//!
//! The ingress verified the signature before publishing; the queue is inside our trust
//! boundary, so the consumer only parses. A message that cannot be parsed, names an unknown
//! provider or one that is not configured is dead-lettered with the reason.

use super::{ConsumeError, Context};
use crate::broker::publisher::Publisher;
use crate::broker::topology::header_str;
use crate::broker::topology::PROVIDER_HEADER;
use crate::broker::AckWindow;
use crate::domain::ProviderName;
use crate::providers::{ProviderWebhook, WebhookKind};
use crate::store::provider_webhooks::{self as inbox, Applied};
use crate::store::{EventSink, StoreError};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::Connection;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// What one consumer step decided for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundOutcome {
    /// Parsed and applied; one entry per notification in the body.
    Applied(Vec<Applied>),
    /// Must go to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// A message's notifications as its provider's adapter parsed them, or why it must be
/// dead-lettered.
type Parsed = Result<(ProviderName, Vec<ProviderWebhook>), String>;

/// Parses one message body with its provider's adapter (no I/O).
fn parse(ctx: &Context, provider: &str, body: &[u8]) -> Parsed {
    let Some(name) = ProviderName::parse(provider) else {
        return Err(format!(
            "unknown provider `{}`",
            provider.chars().take(64).collect::<String>()
        ));
    };
    let Some(adapter) = ctx.providers.get(name) else {
        return Err(format!("provider {name} is not configured"));
    };
    adapter
        .parse_webhook(body)
        .map(|webhooks| (name, webhooks))
        .map_err(|e| e.to_string())
}

/// Records parsed webhooks in the inbox and applies them ([`inbox::receive_batch`]), in
/// one transaction. Answers in `items` order.
pub async fn receive_batch(
    pool: &PgPool,
    items: &[inbox::Incoming<'_>],
    sink: &EventSink,
) -> Result<Vec<Applied>, StoreError> {
    let mut tx = pool.begin().await?;
    let applied = inbox::receive_batch(&mut tx, items, sink).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Processes one webhook message. Errors are infrastructure errors (database down); the
/// caller keeps the message and tries again.
pub async fn handle(
    ctx: &Context,
    provider: &str,
    body: &[u8],
) -> Result<InboundOutcome, StoreError> {
    let parsed = parse(ctx, provider, body);
    store(ctx, &[(body, &parsed)])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("webhook batch answered nothing".into()))
}

/// Applies the notifications of parsed messages in one transaction, as if the messages had
/// come one at a time; answers in `messages` order. Errors are infrastructure errors
/// (database down); the caller keeps the messages and tries again.
async fn store(
    ctx: &Context,
    messages: &[(&[u8], &Parsed)],
) -> Result<Vec<InboundOutcome>, StoreError> {
    let per_message: Vec<Vec<inbox::Incoming<'_>>> = messages
        .iter()
        .map(|(body, parsed)| match parsed {
            Ok((provider, webhooks)) => webhooks
                .iter()
                .enumerate()
                .map(|(part, webhook)| inbox::Incoming {
                    provider: *provider,
                    body,
                    part,
                    webhook,
                })
                .collect(),
            Err(_) => Vec::new(),
        })
        .collect();
    let all: Vec<inbox::Incoming<'_>> = per_message.iter().flatten().copied().collect();
    let mut applied: Vec<Result<Vec<Applied>, String>> = Vec::with_capacity(messages.len());
    match receive_batch(&ctx.pool, &all, &ctx.sink).await {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for items in &per_message {
                applied.push(Ok(answers.by_ref().take(items.len()).collect()));
            }
        }
        Err(e) if e.is_retryable() => return Err(e),
        // Data the database refuses in one message (say, a NUL inside a status word) must
        // not hold back the others: apply them one message at a time, so only that one is
        // dead-lettered.
        Err(e) if per_message.iter().filter(|m| !m.is_empty()).count() <= 1 => {
            for items in &per_message {
                applied.push(match items.is_empty() {
                    true => Ok(Vec::new()),
                    false => Err(format!("the database refused this webhook: {e}")),
                });
            }
        }
        Err(_) => {
            for items in &per_message {
                applied.push(match receive_batch(&ctx.pool, items, &ctx.sink).await {
                    Ok(answers) => Ok(answers),
                    Err(e) if e.is_retryable() => return Err(e),
                    Err(e) => Err(format!("the database refused this webhook: {e}")),
                });
            }
        }
    }
    let mut outcomes = Vec::with_capacity(messages.len());
    for ((_, parsed), applied) in messages.iter().zip(applied) {
        outcomes.push(match (parsed, applied) {
            (Err(reason), _) => InboundOutcome::DeadLetter(reason.clone()),
            (_, Err(reason)) => InboundOutcome::DeadLetter(reason),
            (Ok((provider, _)), Ok(applied)) => {
                for a in &applied {
                    report(ctx, *provider, a);
                }
                InboundOutcome::Applied(applied)
            }
        });
    }
    Ok(outcomes)
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
    for parked in inbox::parked(&ctx.pool, 100).await? {
        let adapter = ProviderName::parse(&parked.provider).and_then(|p| ctx.providers.get(p));
        let Some(adapter) = adapter else {
            inbox::abandon_parked(
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
            inbox::abandon_parked(
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
        let mut tx = ctx.pool.begin().await?;
        let applied = inbox::retry_parked(
            &mut tx,
            adapter.name(),
            &parked.event_key,
            &webhook,
            give_up,
            &ctx.sink,
        )
        .await?;
        tx.commit().await?;
        if applied != Applied::Parked && applied != Applied::Duplicate {
            report(ctx, adapter.name(), &applied);
            resolved += 1;
        }
    }
    Ok(resolved)
}

/// Most messages a lane applies in one transaction: those waiting in it when it starts one
/// (a lone webhook is a batch of one, so nothing waits to fill a batch).
const LANE_BATCH: usize = 32;

/// A delivery with its provider and what it parsed to.
struct Received {
    delivery: Delivery,
    provider: String,
    parsed: Parsed,
}

/// Consumes `provider.webhooks` until shutdown or until the connection fails, and sweeps
/// parked webhooks meanwhile.
///
/// Messages go to `WEBHOOK_LANES` ordered lanes by what they are about. Notifications about
/// one refund or payment always take the same lane, so they are applied in their queue
/// order (the pay-ins ledger keeps the last status it was given); different ones are applied
/// side by side. Fewer lanes make bigger batches and cost less CPU per webhook: on 2 CPUs
/// one lane (the default) beat 4 in every paired run, 4 and 2 beat 8 (BENCHMARKS.md). More
/// lanes overlap more round trips, which pays when the database is remote.
pub async fn consume(
    ctx: &Context,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let queue = super::QueueConsumer::open(
        ctx,
        connection,
        &ctx.topology.webhooks_queue,
        "refund-worker-webhooks",
    )
    .await?;
    let (publisher, mut consumer) = (queue.publisher.clone(), queue.consumer.clone());
    let acks = queue.acks.clone();
    let lane_count = ctx.config.webhook_lanes.max(1);
    let mut lanes = Vec::with_capacity(lane_count);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..lane_count {
        // The prefetch bounds what is in flight; a lane's queue never holds more.
        let (send, mut receive) = tokio::sync::mpsc::unbounded_channel::<Received>();
        lanes.push(send);
        let (ctx, publisher, shutdown) = (ctx.clone(), publisher.clone(), shutdown.clone());
        let acks = acks.clone();
        workers.spawn(async move {
            while let Some(first) = receive.recv().await {
                let mut batch = vec![first];
                while batch.len() < LANE_BATCH {
                    match receive.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                process_batch(&ctx, &publisher, &acks, batch, &shutdown).await;
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
            // A lane ends only when its sender is dropped after this loop: here it panicked,
            // holding deliveries no ack may pass.
            done = workers.join_next(), if !workers.is_empty() => {
                let cause = done.and_then(Result::err);
                break Err(super::task_failed(cause, "provider webhook lane"));
            }
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e.into()),
            None => break Err(queue.ended().into()),
        };
        acks.received(&delivery);
        let provider = header_str(delivery.properties.headers(), PROVIDER_HEADER)
            .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
        let parsed = parse(ctx, &provider, &delivery.data);
        let lane = lane_of(&provider, &parsed) % lane_count;
        let received = Received {
            delivery,
            provider,
            parsed,
        };
        if lanes[lane].send(received).is_err() {
            // Only if the lane's task ended (it panicked): what it held can never be
            // settled, so give up the channel; closing it redelivers the messages.
            break Err(super::task_failed(None, "provider webhook lane"));
        }
    };
    // Drain: let the lanes finish and acknowledge what they hold before the channel closes.
    drop(lanes);
    while workers.join_next().await.is_some() {}
    queue.close().await;
    result
}

/// The lane a message belongs to: a hash of its provider and what its first notification
/// is about (our reference, else the provider's, else the payment). Messages that did not
/// parse all go to lane 0, where they are dead-lettered.
fn lane_of(provider: &str, parsed: &Parsed) -> usize {
    use std::hash::{Hash, Hasher};
    let Some(first) = parsed.as_ref().ok().and_then(|(_, w)| w.first()) else {
        return 0;
    };
    let about = match &first.kind {
        WebhookKind::Refund {
            refund_reference,
            provider_reference,
            transaction_reference,
            ..
        } => refund_reference
            .as_ref()
            .or(provider_reference.as_ref())
            .or(transaction_reference.as_ref()),
        WebhookKind::Payment {
            transaction_reference,
            ..
        } => Some(transaction_reference),
        WebhookKind::Ignored { .. } => None,
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (provider, about).hash(&mut hasher);
    // Truncation is fine: only the remainder modulo the lane count matters.
    hasher.finish() as usize
}

/// Handles a lane's batch end to end: apply all in one transaction, then ack each (or
/// dead-letter, then ack).
async fn process_batch(
    ctx: &Context,
    publisher: &Publisher,
    acks: &AckWindow,
    batch: Vec<Received>,
    shutdown: &CancellationToken,
) {
    let (mut deliveries, mut described) = (Vec::with_capacity(batch.len()), Vec::new());
    for r in batch {
        deliveries.push(r.delivery);
        described.push((r.provider, r.parsed));
    }
    let messages: Vec<(&[u8], &Parsed)> = deliveries
        .iter()
        .zip(&described)
        .map(|(d, (_, parsed))| (d.data.as_slice(), parsed))
        .collect();
    let Some(outcomes) = super::until_stored(
        ctx,
        acks,
        &deliveries,
        shutdown,
        "provider webhooks",
        || store(ctx, &messages),
    )
    .await
    else {
        return;
    };
    drop(messages);
    for ((delivery, (provider, _)), outcome) in deliveries.into_iter().zip(described).zip(outcomes)
    {
        let dead_letter = match &outcome {
            InboundOutcome::DeadLetter(reason) => {
                crate::metrics::provider_webhook_applied(&provider, "dead_letter");
                tracing::warn!(%provider, %reason, "provider webhook dead-lettered");
                Some((ctx.topology.webhooks_dlq.as_str(), reason.as_str()))
            }
            InboundOutcome::Applied(_) => None,
        };
        super::settle(ctx, publisher, acks, delivery, dead_letter).await;
    }
}
