//! Intake: turns command messages into stored refunds, then acknowledges them.
//!
//! Messages are acknowledged only after the database transaction committed (or after a
//! confirmed dead-letter publish), so a crash at any point redelivers them, and the
//! `refundReference` primary key makes a redelivery a no-op.
//!
//! Under load, the commands that are waiting when a batch starts (up to `INTAKE_BATCH`) are
//! stored in one transaction ([`store_batch`]): the per-transaction cost (begin, commit, the
//! WAL flush, round trips) is shared, while each command is judged as if it had come alone.
//! A lone command is a batch of one, so nothing waits to fill a batch.
//!
//! The transaction is this module's: the store reads (the payments' locks, the stored
//! references), [`crate::domain::intake::judge`] decides, and the store writes what it
//! decided (the refunds, their fan-out), all inside it.

use super::consumer::{self, ConsumeError, Handler, Message, Queue, Verdict, Workers};
use super::Context;
use crate::domain::fanout::StatusChange;
use crate::domain::intake::judge;
use crate::domain::{command, CommandError, RefundCommand};
use crate::store::refunds::{self, Preclaim};
use crate::store::{self, ClaimedRefund, EventSink, Intake, IntakeItem, RefundRow, StoreError};
use lapin::message::Delivery;
use lapin::Connection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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

/// A message read and validated, ready to store.
enum Prepared {
    /// Unusable: no reference to store it under, or not JSON at all.
    DeadLetter(String),
    /// Has a reference but fails validation: stored as `REFUND_FAIL`/`INVALID_COMMAND`.
    Invalid {
        reference: String,
        raw: Value,
        hash: String,
        message: String,
    },
    /// A valid command.
    Valid {
        cmd: Box<RefundCommand>,
        raw: Value,
        hash: String,
        configured: bool,
    },
}

/// Reads and validates one message body (no I/O).
fn prepare(ctx: &Context, body: &[u8]) -> Prepared {
    if body.len() > MAX_COMMAND_BYTES {
        return Prepared::DeadLetter(format!(
            "message is {} bytes, at most {MAX_COMMAND_BYTES} are accepted",
            body.len()
        ));
    }
    let raw: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Prepared::DeadLetter(CommandError::NotJson(format!("{e}")).to_string()),
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
    match RefundCommand::validate(raw.clone(), &duplicates) {
        Ok(cmd) => Prepared::Valid {
            configured: ctx.providers.get(cmd.provider).is_some(),
            cmd: Box::new(cmd),
            raw,
            hash,
        },
        Err(e @ (CommandError::NotJson(_) | CommandError::NoReference(_))) => {
            Prepared::DeadLetter(e.to_string())
        }
        Err(e @ CommandError::Invalid { .. }) => Prepared::Invalid {
            reference: command::reference_of(&raw).unwrap_or_default(),
            message: e.message(),
            raw,
            hash,
        },
    }
}

/// Stores prepared messages: the valid commands in one transaction, the rare invalid ones
/// on their own. Answers in `prepared` order. Errors are infrastructure errors (database
/// down); the caller keeps the messages and tries again.
async fn store(ctx: &Context, prepared: &[Prepared]) -> Result<Vec<IntakeOutcome>, StoreError> {
    let items: Vec<IntakeItem<'_>> = prepared
        .iter()
        .filter_map(|p| match p {
            Prepared::Valid {
                cmd,
                raw,
                hash,
                configured,
            } => Some(IntakeItem {
                cmd,
                raw,
                command_hash: hash,
                provider_configured: *configured,
                fallback: crate::domain::Fallback {
                    provider_checks: cmd.provider.checks_refundable_first(),
                    required: ctx.config.require_payment_amount,
                },
            }),
            _ => None,
        })
        .collect();
    let mut stored = match items.as_slice() {
        [] => Vec::new(),
        [_] => vec![store_items(ctx, &items).await.and_then(one)],
        _ => match store_items(ctx, &items).await {
            Ok(all) => all.into_iter().map(Ok).collect(),
            // Data the database refuses in one command must not hold back the others:
            // store them one at a time, so only that one is dead-lettered.
            Err(e) if !e.is_retryable() => {
                let mut each = Vec::with_capacity(items.len());
                for item in &items {
                    each.push(
                        store_items(ctx, std::slice::from_ref(item))
                            .await
                            .and_then(one),
                    );
                }
                each
            }
            Err(e) => return Err(e),
        },
    }
    .into_iter();
    let mut outcomes = Vec::with_capacity(prepared.len());
    for p in prepared {
        let (result, raw) = match p {
            Prepared::DeadLetter(reason) => {
                outcomes.push(IntakeOutcome::DeadLetter(reason.clone()));
                continue;
            }
            Prepared::Invalid {
                reference,
                raw,
                hash,
                message,
            } => (
                store_invalid(&ctx.pool, reference, raw, hash, message, &ctx.sink).await,
                raw,
            ),
            Prepared::Valid { raw, .. } => {
                let result = stored.next().ok_or_else(|| {
                    StoreError::Corrupt("intake answered too few commands".into())
                })?;
                (result, raw)
            }
        };
        outcomes.push(match result {
            Ok(Intake::Created(event)) => IntakeOutcome::Stored(Box::new(event)),
            Ok(Intake::Duplicate) => IntakeOutcome::Duplicate,
            Ok(Intake::Conflict { existing_status }) => IntakeOutcome::DeadLetter(format!(
                "refundReference {} already exists with a different command (status {existing_status}); \
                 a refundReference identifies exactly one refund, use a new one",
                command::reference_of(raw).unwrap_or_default()
            )),
            // Data the database refuses (e.g. `\u0000` inside JSON text) will never be stored:
            // dead-letter it with the reason rather than redelivering it forever.
            Err(e) if !e.is_retryable() => {
                IntakeOutcome::DeadLetter(format!("the database refused this command: {e}"))
            }
            Err(e) => return Err(e),
        });
    }
    let stored: Vec<&crate::domain::RefundEvent> = outcomes
        .iter()
        .filter_map(|o| match o {
            IntakeOutcome::Stored(e) => Some(e.as_ref()),
            _ => None,
        })
        .collect();
    if !stored.is_empty() {
        ctx.event_committed();
    }
    Ok(outcomes)
}

/// Stores valid commands in one transaction, claiming as many of the new refunds as the
/// dispatcher has free slots and handing those straight to it.
async fn store_items(ctx: &Context, items: &[IntakeItem<'_>]) -> Result<Vec<Intake>, StoreError> {
    let slots = ctx
        .handoff
        .reserve(items.iter().filter(|i| i.provider_configured).count());
    let lease = ctx.config.claim_lease;
    // Counted from before the claim, so never later than the database's lease.
    let lease_ends = std::time::Instant::now() + lease;
    let preclaim = store::Preclaim {
        limit: slots.len(),
        lease,
    };
    let (answers, claimed) = store_batch(&ctx.pool, items, &ctx.sink, preclaim).await?;
    let created = answers
        .iter()
        .filter(|a| matches!(a, Intake::Created(e) if !e.status.is_final()))
        .count();
    if created > claimed.len() {
        // Some new refunds were not handed over (no free slot): the dispatcher claims them.
        ctx.dispatch_wakeup.notify_one();
    }
    ctx.handoff.hand(claimed, lease_ends, slots);
    Ok(answers)
}

/// How often a batch is judged again after a concurrent writer inserted one of its
/// references, before giving up for now (the caller retries later).
const INTAKE_ROUNDS: usize = 5;

/// Stores validated commands, in one transaction: each becomes a new `PENDING` refund, or
/// a `REFUND_FAIL` when the over-refund guard or configuration refuses it, or is recognised
/// as a repeat. Idempotent per `refundReference`; the answers are in `items` order. Up to
/// `preclaim.limit` of the new `PENDING` refunds are claimed for this worker's dispatcher
/// in the same transaction, and returned.
///
/// The guard locks the batch's payment rows (in key order, so concurrent batches cannot
/// deadlock), then judges the commands one after the other against committed refunds and
/// the batch's own earlier ones. One transaction and about six statements serve the whole
/// batch, instead of a transaction of eight per command.
pub async fn store_batch(
    pool: &PgPool,
    items: &[IntakeItem<'_>],
    sink: &EventSink,
    preclaim: Preclaim,
) -> Result<(Vec<Intake>, Vec<ClaimedRefund>), StoreError> {
    // The first round assumes every reference is new and skips reading the stored ones: a
    // batch of new commands (nearly all of them) saves a round trip. A reference already
    // stored makes its insert come back short, exactly as one inserted concurrently does,
    // and the rounds after it read them.
    for round in 0..=INTAKE_ROUNDS {
        let mut tx = pool.begin().await?;
        match store_round(&mut tx, items, sink, preclaim, round > 0).await? {
            Some(done) => {
                tx.commit().await?;
                return Ok(done);
            }
            // The payments' learned amounts and locks go with it: the next round
            // judges from scratch.
            None => tx.rollback().await?,
        }
    }
    Err(StoreError::Contended(
        "refund references of this batch kept being inserted by concurrent writers".into(),
    ))
}

/// One judging of a batch in `tx`. `None` when a reference judged new turned out to be
/// stored (before, or concurrently): the caller rolls back and judges the batch again.
/// `read_stored` reads the batch's stored references first, to judge them as repeats or
/// conflicts.
async fn store_round(
    tx: &mut PgConnection,
    items: &[IntakeItem<'_>],
    sink: &EventSink,
    preclaim: Preclaim,
    read_stored: bool,
) -> Result<Option<(Vec<Intake>, Vec<ClaimedRefund>)>, StoreError> {
    let mut payments = refunds::lock_payments(tx, items).await?;
    let stored = match read_stored {
        true => refunds::stored(tx, items).await?,
        false => HashMap::new(),
    };
    let judged = judge(items, &stored, &mut payments, preclaim.limit)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    refunds::save_learned_amounts(tx, &payments).await?;
    let mut answers = judged.answers;
    if judged.fresh.is_empty() {
        return Ok(Some((answers.into_iter().flatten().collect(), Vec::new())));
    }
    let token = Uuid::new_v4();
    let rows = refunds::insert_new(tx, items, &judged.fresh, preclaim.lease, token).await?;
    if rows.len() != judged.fresh.len() {
        return Ok(None);
    }
    let mut created: HashMap<String, RefundRow> = rows
        .into_iter()
        .map(|r| (r.refund_reference.clone(), r))
        .collect();
    let mut events = Vec::with_capacity(judged.fresh.len());
    let mut claimed = Vec::new();
    for new in &judged.fresh {
        let item = &items[new.at];
        let row = created.remove(&item.cmd.refund_reference).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "refund {} not returned by its insert",
                item.cmd.refund_reference
            ))
        })?;
        events.push((new.at, new.event(item.cmd, row.created_at)));
        if new.claim {
            claimed.push(ClaimedRefund {
                row,
                phase_before: crate::domain::Phase::NotSubmitted,
                command: item.raw.clone(),
                token,
            });
        }
    }
    let changes: Vec<StatusChange<'_>> = events
        .iter()
        .map(|(_, event)| StatusChange {
            from: None,
            event,
            cause: "command received",
            detail: None,
        })
        .collect();
    refunds::record_transitions(tx, &changes, sink).await?;
    for (at, event) in events {
        answers[at] = Some(Intake::Created(event));
    }
    Ok(Some((answers.into_iter().flatten().collect(), claimed)))
}

/// Stores a command that failed validation (as a refused refund), in a transaction of its
/// own.
async fn store_invalid(
    pool: &PgPool,
    reference: &str,
    raw: &Value,
    hash: &str,
    message: &str,
    sink: &EventSink,
) -> Result<Intake, StoreError> {
    let mut tx = pool.begin().await?;
    let intake = refunds::intake_invalid(&mut tx, reference, raw, hash, message, sink).await?;
    tx.commit().await?;
    Ok(intake)
}

/// The one answer of a batch of one.
fn one(mut answers: Vec<Intake>) -> Result<Intake, StoreError> {
    answers
        .pop()
        .ok_or_else(|| StoreError::Corrupt("intake answered nothing".into()))
}

/// Processes one message body: validates and stores it. Errors are infrastructure errors
/// (database down); the caller keeps the message and tries again.
pub async fn handle(ctx: &Context, body: &[u8]) -> Result<IntakeOutcome, StoreError> {
    store(ctx, &[prepare(ctx, body)])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("intake answered nothing".into()))
}

/// Consumes `refund.commands` and `refund.commands.backlog` until shutdown or until the
/// connection fails ([`super::consumer`]).
///
/// The two queues are consumed side by side, each with its own prefetch window and
/// workers, so a command that arrives while a backlog drains is stored within a batch's
/// time instead of after the backlog (the broker moves a command that waited longer than
/// [`crate::broker::topology::COMMAND_FRESH_FOR`] to the backlog). Messages are stored in
/// batches of whatever is waiting (up to `INTAKE_BATCH`); enough batches run at once to
/// keep each prefetch window busy. Returns `Ok` on shutdown (in-flight messages finished and
/// acknowledged) and `Err` when the broker connection failed (the caller reconnects).
pub async fn consume(
    ctx: &Context,
    connection: &Connection,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let batch = ctx.config.intake_batch.max(1);
    let workers = Workers::Pool {
        workers: usize::from(ctx.config.prefetch).div_ceil(batch).max(1),
        batch,
    };
    let queue = |name, tag| Queue {
        name,
        tag,
        dead_letters: &ctx.topology.commands_dlq,
        what: "intake batch",
        storing: "intake",
        workers,
        sweep_every: None,
    };
    let fresh = queue(&ctx.topology.commands_queue, "refund-worker");
    let backlog = queue(&ctx.topology.commands_backlog, "refund-worker-backlog");
    let in_flight = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let handler = |slot| Commands {
        ctx: ctx.clone(),
        slot,
        in_flight: in_flight.clone(),
    };
    tokio::try_join!(
        consumer::consume(ctx, connection, fresh, handler(0), shutdown),
        consumer::consume(ctx, connection, backlog, handler(1), shutdown),
    )
    .map(|_| ())
}

/// Intake as the consumer's handler: a batch of command messages stored in one go. One per
/// consumed queue; `in_flight` holds each one's count at its `slot`, so the gauge is their
/// sum.
struct Commands {
    ctx: Context,
    slot: usize,
    in_flight: Arc<[AtomicUsize; 2]>,
}

impl Handler for Commands {
    /// Nothing is read on receipt: a batch's messages are read and validated by its worker.
    type Received = ();

    fn receive(&self, _delivery: &Delivery) {}

    async fn store(&self, batch: &[Message<()>]) -> Result<Vec<Verdict>, StoreError> {
        let ctx = &self.ctx;
        let prepared: Vec<Prepared> = batch
            .iter()
            .map(|m| prepare(ctx, &m.delivery.data))
            .collect();
        let outcomes = store(ctx, &prepared).await?;
        Ok(outcomes.into_iter().map(verdict).collect())
    }

    fn in_flight(&self, n: usize) {
        self.in_flight[self.slot].store(n, Ordering::Relaxed);
        let all = self
            .in_flight
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        crate::metrics::commands_in_flight(all);
    }
}

/// Counts and logs one stored (or refused) command, and says how to settle it.
fn verdict(outcome: IntakeOutcome) -> Verdict {
    crate::metrics::command(match &outcome {
        IntakeOutcome::Stored(e) => {
            crate::metrics::refund_event(e);
            "stored"
        }
        IntakeOutcome::Duplicate => "duplicate",
        IntakeOutcome::DeadLetter(_) => "dead_letter",
    });
    match outcome {
        IntakeOutcome::Stored(event) => {
            tracing::info!(
                refund_reference = %event.refund_reference, status = %event.status,
                failure_code = event.failure_reason.as_ref().map(|f| f.code.as_str()), "command stored");
            Verdict::Ack
        }
        IntakeOutcome::Duplicate => {
            tracing::info!("duplicate command acknowledged");
            Verdict::Ack
        }
        IntakeOutcome::DeadLetter(reason) => {
            tracing::warn!(%reason, "command dead-lettered");
            Verdict::DeadLetter(reason)
        }
    }
}
