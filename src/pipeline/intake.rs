//! Intake: turns one command message into a stored refund, then acknowledges it.
//!
//! The message is acknowledged only after the database transaction committed (or after a
//! confirmed dead-letter publish), so a crash at any point redelivers it, and the
//! `refundReference` primary key makes the redelivery a no-op.

use super::Context;
use crate::broker::publisher::Publisher;
use crate::domain::{command, CommandError, RefundCommand};
use crate::store::{self, Intake, StoreError};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest command body accepted; larger ones are dead-lettered unread.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// What one intake step decided for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum IntakeOutcome {
    /// A refund was stored (PENDING, or REFUND_FAIL with its reason).
    Stored(Box<crate::domain::RefundEvent>),
    /// A repeat of a command already stored: acknowledged, nothing changed.
    Duplicate,
    /// Must go to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// Processes one message body. Errors are infrastructure errors (database down); the
/// caller keeps the message and tries again.
pub async fn handle(ctx: &Context, body: &[u8]) -> Result<IntakeOutcome, StoreError> {
    if body.len() > MAX_COMMAND_BYTES {
        return Ok(IntakeOutcome::DeadLetter(format!(
            "message is {} bytes, at most {MAX_COMMAND_BYTES} are accepted",
            body.len()
        )));
    }
    let raw: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(IntakeOutcome::DeadLetter(
                CommandError::NotJson(format!("{e}")).to_string(),
            ))
        }
    };
    let duplicates = command::duplicate_keys(body);
    // The parsed value keeps only the last of duplicate keys, so a command with duplicates
    // is identified by its exact bytes: a different body under its reference is a conflict.
    let hash = if duplicates.is_empty() {
        hex::encode(Sha256::digest(
            RefundCommand::canonical_json(&raw).as_bytes(),
        ))
    } else {
        hex::encode(Sha256::digest(body))
    };
    let sink = &ctx.sink;
    let result = match RefundCommand::validate(raw.clone(), &duplicates) {
        Ok(cmd) => {
            let configured = ctx.providers.get(cmd.provider).is_some();
            store::refunds::intake(&ctx.pool, &cmd, &raw, &hash, sink, configured).await
        }
        Err(e @ (CommandError::NotJson(_) | CommandError::NoReference(_))) => {
            return Ok(IntakeOutcome::DeadLetter(e.to_string()))
        }
        Err(e @ CommandError::Invalid { .. }) => {
            let reference = command::reference_of(&raw).unwrap_or_default();
            store::refunds::intake_invalid(&ctx.pool, &reference, &raw, &hash, &e.message(), sink)
                .await
        }
    };
    match result {
        Ok(Intake::Created(event)) => {
            ctx.event_committed();
            if !event.status.is_final() {
                ctx.dispatch_wakeup.notify_one();
            }
            Ok(IntakeOutcome::Stored(Box::new(event)))
        }
        Ok(Intake::Duplicate) => Ok(IntakeOutcome::Duplicate),
        Ok(Intake::Conflict { existing_status }) => Ok(IntakeOutcome::DeadLetter(format!(
            "refundReference {} already exists with a different command (status {existing_status}); \
             a refundReference identifies exactly one refund, use a new one",
            command::reference_of(&raw).unwrap_or_default()
        ))),
        // Data the database refuses (e.g. `\u0000` inside JSON text) will never be stored:
        // dead-letter it with the reason rather than redelivering it forever.
        Err(e) if !e.is_retryable() => Ok(IntakeOutcome::DeadLetter(format!(
            "the database refused this command: {e}"
        ))),
        Err(e) => Err(e),
    }
}

/// Consumes `refund.commands` until shutdown or until the connection fails.
///
/// Messages are processed concurrently up to the prefetch; a semaphore of the same size
/// bounds the work in flight. Returns `Ok` on shutdown (in-flight messages finished and
/// acknowledged) and `Err` when the broker connection failed (the caller reconnects).
pub async fn consume(
    ctx: &Context,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(ctx.config.prefetch, BasicQosOptions::default())
        .await?;
    let publisher = Publisher::open(connection).await?;
    let mut consumer = channel
        .basic_consume(
            &ctx.topology.commands_queue,
            &format!("refund-worker-{}", uuid::Uuid::new_v4()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let permits = Arc::new(Semaphore::new(ctx.config.prefetch.into()));
    let mut tasks = tokio::task::JoinSet::new();
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e),
            None => break Err(lapin::Error::InvalidChannelState(channel.status().state())),
        };
        // Move the permit into the task: it returns to the semaphore when the task ends.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break Ok(());
        };
        let (ctx, publisher, shutdown) = (ctx.clone(), publisher.clone(), shutdown.clone());
        let in_flight = permits.clone();
        let prefetch = usize::from(ctx.config.prefetch);
        crate::metrics::commands_in_flight(prefetch - in_flight.available_permits());
        tasks.spawn(async move {
            process_delivery(&ctx, &publisher, delivery, &shutdown).await;
            drop(permit);
            crate::metrics::commands_in_flight(prefetch - in_flight.available_permits());
        });
        while tasks.try_join_next().is_some() {}
    };
    // Drain: let in-flight messages finish and be acknowledged before the channel closes.
    while tasks.join_next().await.is_some() {}
    let _ = channel.close(200, "shutting down").await;
    let _ = publisher.channel().close(200, "shutting down").await;
    result
}

/// Handles one delivery end to end: store, then ack (or dead-letter, then ack).
async fn process_delivery(
    ctx: &Context,
    publisher: &Publisher,
    delivery: Delivery,
    shutdown: &CancellationToken,
) {
    let Some(outcome) = super::until_stored(ctx, &delivery, shutdown, "intake", || {
        handle(ctx, &delivery.data)
    })
    .await
    else {
        return;
    };
    crate::metrics::command(match &outcome {
        IntakeOutcome::Stored(e) => {
            crate::metrics::refund_event(e);
            "stored"
        }
        IntakeOutcome::Duplicate => "duplicate",
        IntakeOutcome::DeadLetter(_) => "dead_letter",
    });
    match &outcome {
        IntakeOutcome::Stored(event) => tracing::info!(
            refund_reference = %event.refund_reference, status = %event.status,
            failure = ?event.failure_reason.as_ref().map(|f| f.code), "command stored"),
        IntakeOutcome::Duplicate => tracing::info!("duplicate command acknowledged"),
        IntakeOutcome::DeadLetter(reason) => tracing::warn!(%reason, "command dead-lettered"),
    }
    let dead_letter = match &outcome {
        IntakeOutcome::DeadLetter(reason) => {
            Some((ctx.topology.commands_dlq.as_str(), reason.as_str()))
        }
        _ => None,
    };
    super::settle(ctx, publisher, delivery, dead_letter).await;
}
