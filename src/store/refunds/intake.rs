//! Storing new refunds: the payments' lock and state the over-refund guard judges against,
//! the batch's stored references, the insert of the judged refunds (claiming some for the
//! dispatcher in the same statement), and a command that failed validation.
//!
//! The judging between these reads and writes is [`crate::domain::intake::judge`]'s, and
//! the transaction, with its retry when a concurrent writer inserted one of the batch's
//! references, is the caller's ([`crate::pipeline::intake::store_batch`]).

use super::{record_transition, RefundRow, ROW_COLUMNS};
use crate::domain::intake::{repeat, Intake, IntakeItem, Invalid, NewRefund, PaymentKey, Stored};
use crate::domain::{AmountSource, PaymentState, RefundCommand};
use crate::store::{EventSink, StoreError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgConnection;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// New refunds to claim for this worker's dispatcher in the intake transaction itself.
#[derive(Debug, Clone, Copy)]
pub struct Preclaim {
    /// Most refunds to claim (the dispatcher's free slots).
    pub limit: usize,
    /// The claims' lease, as in [`claim_due`](super::claim_due).
    pub lease: Duration,
}

impl Preclaim {
    /// Claim nothing: every new refund waits for the dispatcher's next claim.
    pub const NONE: Self = Self {
        limit: 0,
        lease: Duration::ZERO,
    };
}

/// The batch's references that are stored already, with their command's hash and status.
/// Read after the payments are locked ([`lock_payments`]), so a refund committed by a batch
/// this one waited for is seen.
pub async fn stored(
    tx: &mut PgConnection,
    items: &[IntakeItem<'_>],
) -> Result<HashMap<String, Stored>, StoreError> {
    let references: Vec<&str> = items
        .iter()
        .map(|i| i.cmd.refund_reference.as_str())
        .collect();
    Ok(sqlx::query_as::<_, (String, String, String)>(
        "SELECT refund_reference, command_hash, status FROM refunds
         WHERE refund_reference = ANY($1)",
    )
    .bind(&references)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(r, command_hash, status)| {
        (
            r,
            Stored {
                command_hash,
                status,
            },
        )
    })
    .collect())
}

/// Inserts the refunds judged new (`fresh`, whose `at` index `items`), the accepted ones
/// `PENDING` and the refused ones `REFUND_FAIL`, in one statement. Those marked `claim` are
/// claimed under `token` for `lease`, exactly as [`claim_due`](super::claim_due) would
/// leave them (phase `SUBMITTING`, one attempt counted), so they can go straight to the
/// dispatcher: a new refund is due now, and claiming it in the statement that inserts it
/// saves a claim's update and the wait for the next claim.
///
/// Returns the rows inserted. Fewer than `fresh` when one of the references is stored
/// (before the batch, or by a concurrent writer that committed while we waited on its
/// row): the caller rolls back and judges the batch again, seeing it.
pub async fn insert_new(
    tx: &mut PgConnection,
    items: &[IntakeItem<'_>],
    fresh: &[NewRefund],
    lease: Duration,
    token: Uuid,
) -> Result<Vec<RefundRow>, StoreError> {
    let (mut statuses, mut phases, mut codes, mut messages) = (vec![], vec![], vec![], vec![]);
    for f in fresh {
        statuses.push(f.status().as_str());
        phases.push(f.phase().as_str());
        codes.push(f.refusal.as_ref().map(|r| r.code.as_str()));
        messages.push(f.refusal.as_ref().map(|r| r.message.as_str()));
    }
    let claims: Vec<bool> = fresh.iter().map(|f| f.claim).collect();
    let sources: Vec<Option<&str>> = fresh.iter().map(|f| f.guard.map(|g| g.as_str())).collect();
    let cmds: Vec<&IntakeItem<'_>> = fresh.iter().map(|f| &items[f.at]).collect();
    // A pre-claimed row is written as `claim_due` would leave it.
    Ok(sqlx::query_as(&format!(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, failure_code, failure_message, next_attempt_at, command, command_hash,
             finished_at, claim_token, attempts, guard_source)
         SELECT r, p, t, a, c, s, CASE WHEN cl THEN 'SUBMITTING' ELSE ph END, fc, fm,
             CASE WHEN s <> 'PENDING' THEN NULL
                  WHEN cl THEN now() + make_interval(secs => $13)
                  ELSE now() END,
             cmd, h, CASE WHEN s = 'PENDING' THEN NULL ELSE now() END,
             CASE WHEN cl THEN $14::uuid END, CASE WHEN cl THEN 1 ELSE 0 END, gs
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::text[],
             $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::text[], $12::bool[],
             $15::text[])
             AS n(r, p, t, a, c, s, ph, fc, fm, cmd, h, cl, gs)
         ORDER BY r
         ON CONFLICT (refund_reference) DO NOTHING
         RETURNING {ROW_COLUMNS}"
    ))
    .bind(
        cmds.iter()
            .map(|i| i.cmd.refund_reference.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        cmds.iter()
            .map(|i| i.cmd.provider.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        cmds.iter()
            .map(|i| i.cmd.transaction_reference.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(cmds.iter().map(|i| i.cmd.amount).collect::<Vec<_>>())
    .bind(
        cmds.iter()
            .map(|i| i.cmd.currency.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(statuses)
    .bind(phases)
    .bind(codes)
    .bind(messages)
    .bind(cmds.iter().map(|i| i.raw).collect::<Vec<_>>())
    .bind(cmds.iter().map(|i| i.command_hash).collect::<Vec<_>>())
    .bind(&claims)
    .bind(lease.as_secs_f64())
    .bind(token)
    .bind(&sources)
    .fetch_all(&mut *tx)
    .await?)
}

/// Creates the batch's missing payment rows (with the first command's amount and currency,
/// as if it had arrived alone) and locks them all in key order, in one statement, then
/// reads what the guard needs: amount, currency, refunded so far and the pay-ins ledger's
/// word. Only configured providers' payments are locked (the others' commands are refused
/// without a look).
pub async fn lock_payments(
    tx: &mut PgConnection,
    items: &[IntakeItem<'_>],
) -> Result<HashMap<PaymentKey, PaymentState>, StoreError> {
    let mut first: Vec<&RefundCommand> = Vec::new();
    let mut keys: std::collections::HashSet<(&str, &str)> = Default::default();
    for item in items.iter().filter(|i| i.provider_configured) {
        if keys.insert((item.cmd.provider.as_str(), &item.cmd.transaction_reference)) {
            first.push(item.cmd);
        }
    }
    if first.is_empty() {
        return Ok(HashMap::new());
    }
    let providers: Vec<&str> = first.iter().map(|c| c.provider.as_str()).collect();
    let transactions: Vec<&str> = first
        .iter()
        .map(|c| c.transaction_reference.as_str())
        .collect();
    // One statement creates the missing rows and locks the existing ones, in key order (so
    // concurrent batches cannot deadlock): `DO UPDATE ... WHERE false` updates nothing but
    // still locks each conflicting row (FOR NO KEY UPDATE, which serialises intake batches
    // of one payment: only they lock payments), including a row another batch inserted and
    // committed while we waited for it, which a `SELECT ... FOR UPDATE` in the same
    // statement would not see. Rows inserted here are ours until the commit anyway.
    sqlx::query(
        "INSERT INTO payments (provider, transaction_reference, payment_amount, currency, amount_source)
         SELECT p, t, a, c, CASE WHEN a IS NULL THEN NULL ELSE 'command' END
         FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::text[]) AS k(p, t, a, c)
         ORDER BY p, t
         ON CONFLICT (provider, transaction_reference) DO UPDATE SET updated_at = payments.updated_at
             WHERE false",
    )
    .bind(&providers)
    .bind(&transactions)
    .bind(first.iter().map(|c| c.payment_amount).collect::<Vec<_>>())
    .bind(first.iter().map(|c| c.currency.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // A second statement, so its snapshot includes what committed while we waited for
    // the locks (a subquery in the locking statement would not see it).
    type StateRow = (
        String,
        String,
        Option<Decimal>,
        Option<String>,
        Decimal,
        Option<Decimal>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<StateRow> = sqlx::query_as(
        "SELECT p.provider, p.transaction_reference, p.payment_amount, p.currency,
             (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r
              WHERE r.provider = p.provider AND r.transaction_reference = p.transaction_reference
                AND r.status <> 'REFUND_FAIL'),
             i.amount, i.currency, p.amount_source
         FROM payments p
         LEFT JOIN pay_ins i ON i.provider = p.provider
             AND i.transaction_reference = p.transaction_reference AND i.succeeded
         JOIN UNNEST($1::text[], $2::text[]) AS k(pr, tr)
             ON p.provider = k.pr AND p.transaction_reference = k.tr
         WHERE p.provider = ANY($1) AND p.transaction_reference = ANY($2)",
    )
    .persistent(false) // planned per execution: see the store module's "Plans"
    .bind(&providers)
    .bind(&transactions)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                provider,
                transaction,
                amount,
                currency,
                refunded,
                ledger_amount,
                ledger_currency,
                amount_source,
            )| {
                let state = PaymentState {
                    amount,
                    currency,
                    refunded,
                    ledger: ledger_amount.map(|a| (a, ledger_currency)),
                    learned: None,
                    source: amount_source.as_deref().and_then(AmountSource::parse),
                };
                ((provider, transaction), state)
            },
        )
        .collect())
}

/// Saves the amounts the guard learned during a batch (from a command or the ledger).
pub async fn save_learned_amounts(
    tx: &mut PgConnection,
    payments: &HashMap<PaymentKey, PaymentState>,
) -> Result<(), StoreError> {
    let learned: Vec<(&PaymentKey, &PaymentState, AmountSource)> = payments
        .iter()
        .filter_map(|(k, p)| p.learned.map(|source| (k, p, source)))
        .collect();
    if learned.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE payments SET payment_amount = u.a, currency = u.c, amount_source = u.s,
             updated_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::numeric[], $4::text[], $5::text[]) AS u(p, t, a, c, s)
         WHERE payments.provider = u.p AND payments.transaction_reference = u.t
             AND payments.provider = ANY($1) AND payments.transaction_reference = ANY($2)",
    )
    .bind(learned.iter().map(|l| l.0 .0.as_str()).collect::<Vec<_>>())
    .bind(learned.iter().map(|l| l.0 .1.as_str()).collect::<Vec<_>>())
    .bind(learned.iter().map(|l| l.1.amount).collect::<Vec<_>>())
    .bind(learned.iter().map(|l| l.1.currency.as_deref()).collect::<Vec<_>>())
    .bind(learned.iter().map(|l| l.2.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Stores a command that failed validation as a `REFUND_FAIL`/`INVALID_COMMAND` refund, so
/// a redelivery is recognised as a duplicate and the failure is visible in `refunds show`.
/// In the caller's transaction; a repeat writes nothing.
pub async fn intake_invalid(
    tx: &mut PgConnection,
    refund_reference: &str,
    raw: &Value,
    command_hash: &str,
    message: &str,
    sink: &EventSink,
) -> Result<Intake, StoreError> {
    if let Some(existing) = existing(tx, refund_reference, command_hash).await? {
        return Ok(existing);
    }
    let invalid = Invalid::new(raw, message);
    let inserted = sqlx::query_scalar::<_, DateTime<Utc>>(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, failure_code, failure_message, next_attempt_at, command, command_hash,
             finished_at)
         VALUES ($1, $2, $3, $4, $5, 'REFUND_FAIL', 'FINAL', 'INVALID_COMMAND', $6, NULL, $7, $8, now())
         ON CONFLICT (refund_reference) DO NOTHING
         RETURNING created_at",
    )
    .bind(refund_reference)
    .bind(&invalid.provider)
    .bind(&invalid.transaction_reference)
    .bind(invalid.amount)
    .bind(&invalid.currency)
    .bind(message)
    .bind(raw)
    .bind(command_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created_at) = inserted else {
        // Inserted concurrently: this statement's snapshot sees it now (read committed).
        return existing(tx, refund_reference, command_hash)
            .await?
            .ok_or_else(|| StoreError::Corrupt("refund vanished after a conflict".into()));
    };
    let event = invalid.event(refund_reference, created_at);
    record_transition(tx, None, &event, "invalid command", sink).await?;
    Ok(Intake::Created(event))
}

/// Duplicate detection: same reference and same canonical body is a duplicate.
async fn existing(
    tx: &mut PgConnection,
    refund_reference: &str,
    command_hash: &str,
) -> Result<Option<Intake>, StoreError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT command_hash, status FROM refunds WHERE refund_reference = $1")
            .bind(refund_reference)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(row.map(|(hash, status)| repeat(&hash, &status, command_hash)))
}
