//! Retention: removes operational rows once they have served their purpose, a small batch
//! per statement so no statement holds many locks or runs long.
//!
//! Refunds and their transition history are kept for ever (they are the books). What goes,
//! after its retention (`RETENTION`, per table `RETENTION_*`):
//! - published outbox rows (the broker confirmed them; an unpublished row is never removed);
//! - settled provider webhooks (`APPLIED`, `UNCHANGED`, `IGNORED`): the inbox deduplicates
//!   redeliveries, and a provider re-sending one older than the retention is harmless (the
//!   state machine answers unchanged, stale or contradiction; the pay-ins ledger only moves
//!   forward). Parked, unmatched and contradicting ones stay for an operator;
//! - merchant webhook delivery attempts (the delivery row itself stays, so a resend works);
//! - provider call records of refunds that are final (a pending refund keeps all of its).
//!
//! Every statement finds its rows by age through a BRIN index (a few pages for any table
//! size, nothing added to an insert) and deletes them by `ctid`. While only a small share of a
//! table is past its retention (a sweep that keeps up), the planner keeps to the index; when
//! most of it is, a sequential scan with the batch's LIMIT finds a batch in the first pages,
//! and the planner may rightly take it.
//!
//! Each batch takes its rows with `FOR UPDATE SKIP LOCKED`, so workers sweeping at the same
//! time take different rows instead of waiting for each other.

use super::StoreError;
use crate::config::Retention;
use sqlx::PgPool;
use std::time::Duration;

/// Rows removed, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Published outbox rows.
    pub outbox: u64,
    /// Settled provider webhooks.
    pub inbox: u64,
    /// Merchant delivery attempts.
    pub webhook_attempts: u64,
    /// Provider calls of final refunds.
    pub provider_attempts: u64,
}

impl Removed {
    /// Rows removed in all.
    pub fn total(&self) -> u64 {
        self.outbox + self.inbox + self.webhook_attempts + self.provider_attempts
    }

    fn add(&mut self, other: Removed) {
        self.outbox += other.outbox;
        self.inbox += other.inbox;
        self.webhook_attempts += other.webhook_attempts;
        self.provider_attempts += other.provider_attempts;
    }
}

/// Published outbox rows older than the retention, found by age through the BRIN index on
/// `created_at` (a row is published after it is created, so `created_at` older than the
/// retention is implied, and is what the index can answer); taken by `ctid`, as the inbox's.
/// Walking the primary key in order instead reads every young row to find none, and on a
/// big table the planner rightly turns that into a sequential scan.
const OUTBOX: &str = "DELETE FROM outbox WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM outbox
     WHERE created_at < now() - make_interval(secs => $1)
         AND published_at < now() - make_interval(secs => $1)
     LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Settled provider webhooks, found by age through the BRIN index on `received_at`.
const INBOX: &str = "DELETE FROM provider_webhook_inbox WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM provider_webhook_inbox
     WHERE received_at < now() - make_interval(secs => $1)
         AND state IN ('APPLIED', 'UNCHANGED', 'IGNORED')
     LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Merchant delivery attempts, found by age through the BRIN index on `attempted_at`.
const WEBHOOK_ATTEMPTS: &str = "DELETE FROM webhook_attempts WHERE ctid = ANY(ARRAY(
     SELECT ctid FROM webhook_attempts
     WHERE attempted_at < now() - make_interval(secs => $1)
     LIMIT $2 FOR UPDATE SKIP LOCKED))";

/// Provider calls of final refunds, found by age through the BRIN index on `started_at`
/// (each one's refund through its primary key).
const PROVIDER_ATTEMPTS: &str = "DELETE FROM provider_attempts WHERE ctid = ANY(ARRAY(
     SELECT a.ctid FROM provider_attempts a
     JOIN refunds r ON r.refund_reference = a.refund_reference
     WHERE a.started_at < now() - make_interval(secs => $1) AND r.status <> 'PENDING'
     LIMIT $2 FOR UPDATE OF a SKIP LOCKED))";

/// One batch of at most `batch` rows per table.
pub async fn sweep_batch(
    pool: &PgPool,
    retention: &Retention,
    batch: i64,
) -> Result<Removed, StoreError> {
    let run = |sql: &'static str, keep: Duration| async move {
        Ok::<u64, StoreError>(
            sqlx::query(sql)
                .bind(keep.as_secs_f64())
                .bind(batch)
                .execute(pool)
                .await?
                .rows_affected(),
        )
    };
    Ok(Removed {
        outbox: run(OUTBOX, retention.outbox).await?,
        inbox: run(INBOX, retention.inbox).await?,
        webhook_attempts: run(WEBHOOK_ATTEMPTS, retention.webhook_attempts).await?,
        provider_attempts: run(PROVIDER_ATTEMPTS, retention.provider_attempts).await?,
    })
}

/// Batches until nothing older than the retention is left (or `max_batches` ran), pausing
/// `pause` between batches so the sweep never competes with the pipeline for long.
pub async fn sweep(
    pool: &PgPool,
    retention: &Retention,
    batch: i64,
    max_batches: usize,
    pause: Duration,
) -> Result<Removed, StoreError> {
    let mut removed = Removed::default();
    for n in 0..max_batches {
        let one = sweep_batch(pool, retention, batch).await?;
        removed.add(one);
        let full = [
            one.outbox,
            one.inbox,
            one.webhook_attempts,
            one.provider_attempts,
        ]
        .iter()
        .any(|&k| k >= u64::try_from(batch).unwrap_or(u64::MAX));
        if !full {
            break;
        }
        if n + 1 < max_batches {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(removed)
}

/// The statements, for the plan test.
pub const STATEMENTS: [&str; 4] = [OUTBOX, INBOX, WEBHOOK_ATTEMPTS, PROVIDER_ATTEMPTS];
