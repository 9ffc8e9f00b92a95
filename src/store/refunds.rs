//! Refund rows: intake of commands (idempotent, with the over-refund guard), claiming due
//! work, recording provider outcomes, and the operator's view of one refund.

use super::{EventSink, StoreError};
use crate::domain::{
    transition, AmountSource, FailureCode, FailureReason, Fallback, Fee, GuardSource, PaymentState,
    Phase, RefundCommand, RefundEvent, RefundStatus, Transition,
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// What happened to an incoming command.
// The event is the answer's whole point and is moved once; boxing it would cost an
// allocation per refund on the hot path to save stack space nobody runs short of.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// A new refund was stored; its first event is in the outbox.
    Created(RefundEvent),
    /// The same command was seen before: nothing changed.
    Duplicate,
    /// The reference exists with a different command body: refused.
    Conflict {
        /// Status of the existing refund.
        existing_status: String,
    },
}

/// A refund row as stored.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Refund)]
pub struct RefundRow {
    /// Reference.
    pub refund_reference: String,
    /// Provider wire name.
    pub provider: Option<String>,
    /// Original payment.
    pub transaction_reference: Option<String>,
    /// Exact amount.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
    /// Currency.
    pub currency: Option<String>,
    /// PENDING, COMPLETED, REFUND_FAIL.
    #[schema(schema_with = crate::schema::api::refund_status)]
    pub status: String,
    /// What we know of the provider's side.
    #[schema(schema_with = crate::schema::api::phase)]
    pub phase: String,
    /// Provider's id.
    pub provider_reference: Option<String>,
    /// Provider's last status word.
    pub provider_status: Option<String>,
    /// The provider's fee for the refund, where it reports one (BVNK).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub provider_fee: Option<Decimal>,
    /// Currency of `providerFee`.
    pub provider_fee_currency: Option<String>,
    /// Failure code, when failed.
    pub failure_code: Option<String>,
    /// Failure message, when failed.
    pub failure_message: Option<String>,
    /// Provider submits made.
    pub attempts: i32,
    /// Consecutive failed calls.
    pub failures: i32,
    /// Status polls made.
    pub polls: i32,
    /// Next scheduled look (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the command was accepted.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it became final.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it is flagged for operator review (none when it is not).
    pub review_reason: Option<String>,
    /// Since when it is flagged for review.
    pub review_since: Option<DateTime<Utc>>,
    /// What the over-refund guard judged it against: `command`, `ledger`, `provider`,
    /// `none` (null for refunds stored before this was recorded, and invalid commands).
    #[schema(schema_with = crate::schema::api::guard_source_or_null)]
    pub guard_source: Option<String>,
}

/// One row of a refund's transition history.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Transition)]
pub struct TransitionRow {
    /// Previous status (none for the first).
    pub from_status: Option<String>,
    /// New status.
    pub to_status: String,
    /// What caused it.
    pub cause: String,
    /// Details (failure message, provider status).
    pub detail: Option<String>,
    /// The event published for it.
    pub event_id: Option<Uuid>,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// One provider call as recorded.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProviderAttempt)]
pub struct AttemptRow {
    /// `submit` or `status`.
    #[schema(schema_with = crate::schema::api::attempt_call)]
    pub call: String,
    /// Classified outcome.
    pub outcome: String,
    /// Details.
    pub detail: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub latency_ms: i32,
}

/// Everything an operator wants to see about one refund.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundView {
    /// The refund.
    pub refund: RefundRow,
    /// Its status history.
    pub transitions: Vec<TransitionRow>,
    /// Its provider calls.
    pub attempts: Vec<AttemptRow>,
}

/// A refund claimed by one dispatcher for one step.
#[derive(Debug, Clone)]
pub struct ClaimedRefund {
    /// The row after claiming.
    pub row: RefundRow,
    /// The phase before claiming (a `NotSubmitted` refund is moved to `Submitting` by the
    /// claim itself, so a crash during the call is known to be an unknown outcome).
    pub phase_before: Phase,
    /// The command as received.
    pub command: Value,
    /// The claim's token; results are recorded only under it.
    pub token: Uuid,
}

/// One provider call, for the attempts log.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// `submit` or `status`.
    pub call: &'static str,
    /// Classified outcome label.
    pub outcome: String,
    /// Details.
    pub detail: Option<String>,
    /// Start time.
    pub started_at: DateTime<Utc>,
    /// Duration.
    pub latency: Duration,
}

/// The change a dispatcher step makes to a claimed refund.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUpdate {
    /// Becomes final.
    Finish {
        /// COMPLETED or REFUND_FAIL.
        status: RefundStatus,
        /// For REFUND_FAIL.
        failure: Option<FailureReason>,
        /// Provider's id.
        provider_reference: Option<String>,
        /// Provider's status word.
        provider_status: Option<String>,
        /// Provider's fee, if reported.
        fee: Option<Fee>,
    },
    /// Stays pending.
    Reschedule {
        /// Phase to record.
        phase: Phase,
        /// Delay before the next look.
        delay: Duration,
        /// Whether this step failed (grows the backoff) or made progress (resets it).
        failed: bool,
        /// Provider's id, if learned.
        provider_reference: Option<String>,
        /// Provider's status word, if learned.
        provider_status: Option<String>,
        /// Provider's fee, if reported.
        fee: Option<Fee>,
    },
}

pub(crate) const ROW_COLUMNS: &str =
    "refund_reference, provider, transaction_reference, amount, currency, status, phase,
    provider_reference, provider_status, provider_fee, provider_fee_currency, failure_code, failure_message, attempts, failures, polls,
    next_attempt_at, created_at, updated_at, finished_at, review_reason, review_since, guard_source";

/// One validated command for [`intake_batch`].
#[derive(Debug, Clone, Copy)]
pub struct IntakeItem<'a> {
    /// The command.
    pub cmd: &'a RefundCommand,
    /// The command as received (stored with the refund).
    pub raw: &'a Value,
    /// Hash of its content: a repeat with the same hash is a duplicate, another is a conflict.
    pub command_hash: &'a str,
    /// Whether its provider is configured here; if not, the refund is refused.
    pub provider_configured: bool,
    /// What guards it when nothing we hold knows the payment's amount.
    pub fallback: Fallback,
}

/// How often a batch is judged again after a concurrent writer inserted one of its
/// references, before giving up for now (the caller retries later).
const INTAKE_ROUNDS: usize = 5;

/// Stores validated commands, in one transaction: each becomes a new `PENDING` refund, or
/// a `REFUND_FAIL` when the over-refund guard or configuration refuses it, or is recognised
/// as a repeat. Idempotent per `refundReference`; the answers are in `items` order.
///
/// The guard locks the batch's payment rows (in key order, so concurrent batches cannot
/// deadlock), then judges the commands one after the other against committed refunds and
/// the batch's own earlier ones ([`PaymentState::check`]). One transaction and about six
/// statements serve the whole batch, instead of a transaction of eight per command.
pub async fn intake_batch(
    pool: &PgPool,
    items: &[IntakeItem<'_>],
    sink: &EventSink,
) -> Result<Vec<Intake>, StoreError> {
    let none = Preclaim {
        limit: 0,
        lease: Duration::ZERO,
    };
    Ok(intake_batch_claiming(pool, items, sink, none).await?.0)
}

/// New refunds to claim for this worker's dispatcher in the intake transaction itself.
#[derive(Debug, Clone, Copy)]
pub struct Preclaim {
    /// Most refunds to claim (the dispatcher's free slots).
    pub limit: usize,
    /// The claims' lease, as in [`claim_due`].
    pub lease: Duration,
}

/// [`intake_batch`], also claiming up to `preclaim.limit` of the new `PENDING` refunds
/// exactly as [`claim_due`] would (phase `SUBMITTING`, one attempt counted, leased), so they
/// can go straight to the dispatcher: a new refund is due now, and claiming it in the same
/// statement that inserts it saves a claim's update and the wait for the next claim.
pub async fn intake_batch_claiming(
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
        let read_stored = round > 0;
        if let Some(done) = intake_round(pool, items, sink, preclaim, read_stored).await? {
            return Ok(done);
        }
    }
    Err(StoreError::Contended(
        "refund references of this batch kept being inserted by concurrent writers".into(),
    ))
}

/// A payment's key: provider and transaction reference.
type PaymentKey = (String, String);

/// One judging of a batch. `None` when a reference judged new turned out to be stored
/// (before, or concurrently): the transaction is rolled back and the batch must be judged
/// again. `read_stored` reads the batch's stored references first, to judge them as
/// repeats or conflicts.
async fn intake_round(
    pool: &PgPool,
    items: &[IntakeItem<'_>],
    sink: &EventSink,
    preclaim: Preclaim,
    read_stored: bool,
) -> Result<Option<(Vec<Intake>, Vec<ClaimedRefund>)>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut payments = lock_payments(&mut tx, items).await?;
    // Read after the payments are locked, so a refund committed by a batch we waited for
    // is seen.
    let existing: HashMap<String, (String, String)> = if read_stored {
        let references: Vec<&str> = items
            .iter()
            .map(|i| i.cmd.refund_reference.as_str())
            .collect();
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT refund_reference, command_hash, status FROM refunds
             WHERE refund_reference = ANY($1)",
        )
        .bind(&references)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(r, hash, status)| (r, (hash, status)))
        .collect()
    } else {
        HashMap::new()
    };

    // Judge in arrival order. `None` in `answers` marks a command to insert, in `fresh`.
    let mut answers: Vec<Option<Intake>> = Vec::with_capacity(items.len());
    let mut fresh: Vec<(usize, Option<FailureReason>)> = Vec::new();
    // What each of `fresh` was judged against (none for a refusal).
    let mut sources: Vec<Option<&'static str>> = Vec::new();
    let mut in_batch: HashMap<&str, (&str, RefundStatus)> = HashMap::new();
    for (n, item) in items.iter().enumerate() {
        let reference = item.cmd.refund_reference.as_str();
        let seen = existing
            .get(reference)
            .map(|(h, s)| (h.as_str(), s.clone()))
            .or_else(|| {
                in_batch
                    .get(reference)
                    .map(|(h, s)| (*h, s.as_str().to_owned()))
            });
        if let Some((hash, status)) = seen {
            answers.push(Some(if hash == item.command_hash {
                Intake::Duplicate
            } else {
                Intake::Conflict {
                    existing_status: status,
                }
            }));
            continue;
        }
        let judged: Result<GuardSource, FailureReason> = if item.provider_configured {
            let key = (
                item.cmd.provider.as_str().to_owned(),
                item.cmd.transaction_reference.clone(),
            );
            match payments.get_mut(&key) {
                Some(payment) => payment.check(item.cmd, item.fallback),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "payment {key:?} was not locked"
                    )))
                }
            }
        } else {
            Err(FailureReason::new(
                FailureCode::InvalidCommand,
                format!("provider {} is not configured", item.cmd.provider),
            ))
        };
        sources.push(judged.as_ref().ok().map(|g| g.as_str()));
        let refusal = judged.err();
        let status = if refusal.is_some() {
            RefundStatus::RefundFail
        } else {
            RefundStatus::Pending
        };
        in_batch.insert(reference, (item.command_hash, status));
        answers.push(None);
        fresh.push((n, refusal));
    }
    save_learned_amounts(&mut tx, &payments).await?;
    if fresh.is_empty() {
        tx.commit().await?;
        return Ok(Some((answers.into_iter().flatten().collect(), Vec::new())));
    }

    let status = |refusal: Option<&FailureReason>| match refusal {
        None => (RefundStatus::Pending, Phase::NotSubmitted),
        Some(_) => (RefundStatus::RefundFail, Phase::Final),
    };
    let (mut statuses, mut phases, mut codes, mut messages) = (vec![], vec![], vec![], vec![]);
    let mut claims = Vec::with_capacity(fresh.len());
    for (_, refusal) in &fresh {
        let (s, p) = status(refusal.as_ref());
        statuses.push(s.as_str());
        phases.push(p.as_str());
        codes.push(refusal.as_ref().map(|r| r.code.as_str()));
        messages.push(refusal.as_ref().map(|r| r.message.as_str()));
        let claimed = claims.iter().filter(|c| **c).count();
        claims.push(refusal.is_none() && claimed < preclaim.limit);
    }
    let token = Uuid::new_v4();
    let cmds: Vec<&IntakeItem<'_>> = fresh.iter().map(|(n, _)| &items[*n]).collect();
    // A pre-claimed row is written as `claim_due` would leave it.
    let rows: Vec<RefundRow> = sqlx::query_as(&format!(
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
    .bind(preclaim.lease.as_secs_f64())
    .bind(token)
    .bind(&sources)
    .fetch_all(&mut *tx)
    .await?;
    if rows.len() != fresh.len() {
        // One of these references is stored: before this batch (the first round does not
        // look) or by another writer after our look-up (it committed while we waited on
        // its row). Judge the batch again, seeing it.
        tx.rollback().await?;
        return Ok(None);
    }
    let mut created: HashMap<String, RefundRow> = rows
        .into_iter()
        .map(|r| (r.refund_reference.clone(), r))
        .collect();
    let mut events = Vec::with_capacity(fresh.len());
    let mut claimed = Vec::new();
    for ((n, refusal), is_claimed) in fresh.into_iter().zip(claims) {
        let cmd = items[n].cmd;
        let row = created.remove(&cmd.refund_reference).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "refund {} not returned by its insert",
                cmd.refund_reference
            ))
        })?;
        let occurred_at = row.created_at;
        if is_claimed {
            claimed.push(ClaimedRefund {
                row,
                phase_before: Phase::NotSubmitted,
                command: items[n].raw.clone(),
                token,
            });
        }
        events.push((
            n,
            RefundEvent {
                event_id: Uuid::new_v4(),
                refund_reference: cmd.refund_reference.clone(),
                provider: Some(cmd.provider.as_str().into()),
                transaction_reference: Some(cmd.transaction_reference.clone()),
                provider_reference: None,
                amount: Some(cmd.amount.to_string()),
                currency: Some(cmd.currency.clone()),
                status: status(refusal.as_ref()).0,
                failure_reason: refusal,
                attempts: 0,
                occurred_at,
                review: None,
                resolution: None,
            },
        ));
    }
    let writes: Vec<TransitionWrite<'_>> = events
        .iter()
        .map(|(_, event)| TransitionWrite {
            from: None,
            event,
            cause: "command received",
            detail: None,
        })
        .collect();
    record_transitions(&mut tx, &writes, sink).await?;
    tx.commit().await?;
    for (n, event) in events {
        answers[n] = Some(Intake::Created(event));
    }
    Ok(Some((answers.into_iter().flatten().collect(), claimed)))
}

/// Creates the batch's missing payment rows (with the first command's amount and currency,
/// as if it had arrived alone) and locks them all in key order, in one statement, then
/// reads what the guard needs: amount, currency, refunded so far and the pay-ins ledger's
/// word.
async fn lock_payments(
    tx: &mut Transaction<'_, Postgres>,
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
    .execute(&mut **tx)
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
    .fetch_all(&mut **tx)
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
async fn save_learned_amounts(
    tx: &mut Transaction<'_, Postgres>,
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a command that failed validation as a `REFUND_FAIL`/`INVALID_COMMAND` refund, so
/// a redelivery is recognised as a duplicate and the failure is visible in `refunds show`.
pub async fn intake_invalid(
    pool: &PgPool,
    refund_reference: &str,
    raw: &Value,
    command_hash: &str,
    message: &str,
    sink: &EventSink,
) -> Result<Intake, StoreError> {
    if let Some(existing) = existing(pool, refund_reference, command_hash).await? {
        return Ok(existing);
    }
    let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
    // Keep whatever usable amount the command had, so the event says what was asked.
    let amount = raw
        .get("amount")
        .and_then(|a| crate::domain::parse_amount(a).ok())
        .filter(|a| *a > Decimal::ZERO);
    let failure = FailureReason::new(FailureCode::InvalidCommand, message);
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query_scalar::<_, DateTime<Utc>>(
        "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount, currency,
             status, phase, failure_code, failure_message, next_attempt_at, command, command_hash,
             finished_at)
         VALUES ($1, $2, $3, $4, $5, 'REFUND_FAIL', 'FINAL', 'INVALID_COMMAND', $6, NULL, $7, $8, now())
         ON CONFLICT (refund_reference) DO NOTHING
         RETURNING created_at",
    )
    .bind(refund_reference)
    .bind(text("provider"))
    .bind(text("transactionReference"))
    .bind(amount)
    .bind(text("currency"))
    .bind(message)
    .bind(raw)
    .bind(command_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(created_at) = inserted else {
        tx.rollback().await?;
        return existing(pool, refund_reference, command_hash)
            .await?
            .ok_or_else(|| StoreError::Corrupt("refund vanished after a conflict".into()));
    };
    let event = RefundEvent {
        event_id: Uuid::new_v4(),
        refund_reference: refund_reference.to_owned(),
        provider: text("provider"),
        transaction_reference: text("transactionReference"),
        provider_reference: None,
        amount: amount.map(|a| a.to_string()),
        currency: text("currency"),
        status: RefundStatus::RefundFail,
        failure_reason: Some(failure),
        attempts: 0,
        occurred_at: created_at,
        review: None,
        resolution: None,
    };
    record_transition(&mut tx, None, &event, "invalid command", sink).await?;
    tx.commit().await?;
    Ok(Intake::Created(event))
}

/// Duplicate detection: same reference and same canonical body is a duplicate.
async fn existing(
    pool: &PgPool,
    refund_reference: &str,
    command_hash: &str,
) -> Result<Option<Intake>, StoreError> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT command_hash, status FROM refunds WHERE refund_reference = $1")
            .bind(refund_reference)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(hash, status)| {
        if hash == command_hash {
            Intake::Duplicate
        } else {
            Intake::Conflict {
                existing_status: status,
            }
        }
    }))
}

/// One status change to record: its history row, outbox event and merchant webhook.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransitionWrite<'a> {
    /// Status before (none for a refund's first event).
    pub from: Option<RefundStatus>,
    /// The event published for it.
    pub event: &'a RefundEvent,
    /// What caused it, for the history.
    pub cause: &'a str,
    /// The history's detail, when not the failure message (an operator's reason).
    pub detail: Option<&'a str>,
}

/// Writes the history row, the outbox event and (when the refund has a callback URL or
/// there is a default) the merchant webhook delivery of a status change.
pub(crate) async fn record_transition(
    tx: &mut Transaction<'_, Postgres>,
    from: Option<RefundStatus>,
    event: &RefundEvent,
    cause: &str,
    sink: &EventSink,
) -> Result<(), StoreError> {
    let write = TransitionWrite {
        from,
        event,
        cause,
        detail: None,
    };
    record_transitions(tx, &[write], sink).await
}

/// [`record_transition`] for many status changes at once.
///
/// One statement with data-modifying CTEs over `UNNEST`ed arrays: three inserts per change
/// for the price of one round trip per batch, which matters because every refund makes at
/// least two status changes. The outbox rows get ids in `writes` order, which is the order
/// the relay publishes them in.
pub(crate) async fn record_transitions(
    tx: &mut Transaction<'_, Postgres>,
    writes: &[TransitionWrite<'_>],
    sink: &EventSink,
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let payloads = writes
        .iter()
        .map(|w| serde_json::to_value(w.event))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("event does not serialize: {e}")))?;
    let events = || writes.iter().map(|w| w.event);
    sqlx::query(
        "WITH t AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::uuid[], $7::timestamptz[], $8::text[], $9::jsonb[], $10::text[])
                 WITH ORDINALITY AS t(refund_reference, from_status, to_status, cause, detail,
                     event_id, occurred_at, routing_key, payload, provider, n)),
         history AS (
             INSERT INTO refund_transitions
                 (refund_reference, from_status, to_status, cause, detail, event_id, occurred_at)
             SELECT refund_reference, from_status, to_status, cause, detail, event_id, occurred_at
             FROM t ORDER BY n),
         outbox AS (
             INSERT INTO outbox (event_id, exchange, routing_key, payload)
             SELECT event_id, $11, routing_key, payload FROM t ORDER BY n)
         INSERT INTO webhook_deliveries
             (event_id, refund_reference, provider, event_status, url, payload, state, next_attempt_at)
         SELECT event_id, refund_reference, provider, to_status, url, payload, 'queued', now()
         FROM (
             -- A scalar subquery, not a join: always one primary-key probe per event. As a
             -- join, a plan made while the table was small (stale statistics) scanned the
             -- whole refunds table for every status change, and grew with it.
             SELECT t.*, COALESCE(
                 (SELECT r.command->>'callbackUrl' FROM refunds r
                  WHERE r.refund_reference = t.refund_reference), $12) AS url
             FROM t) w
         WHERE url IS NOT NULL
         ORDER BY n
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(events().map(|e| e.refund_reference.as_str()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.from.map(RefundStatus::as_str)).collect::<Vec<_>>())
    .bind(events().map(|e| e.status.as_str()).collect::<Vec<_>>())
    .bind(writes.iter().map(|w| w.cause).collect::<Vec<_>>())
    .bind(
        writes
            .iter()
            .map(|w| {
                w.detail
                    .or(w.event.failure_reason.as_ref().map(|r| r.message.as_str()))
            })
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(events().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(events().map(RefundEvent::routing_key).collect::<Vec<_>>())
    .bind(payloads)
    .bind(events().map(|e| e.provider.as_deref()).collect::<Vec<_>>())
    .bind(&sink.exchange)
    .bind(sink.webhook_default_url.as_deref())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Claims up to `limit` due refunds for one dispatcher, reserving them for `lease`.
///
/// A refund that was `NOT_SUBMITTED` becomes `SUBMITTING` (and counts an attempt) in the
/// same statement, before the provider is called: if this worker dies mid-call, whoever
/// claims it next asks the provider for its status instead of sending it again.
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedRefund>, StoreError> {
    let token = Uuid::new_v4();
    let rows: Vec<ClaimRow> = sqlx::query_as(&claim_sql(
        "SELECT refund_reference AS due_reference, phase AS phase_before FROM refunds
         WHERE status = 'PENDING' AND next_attempt_at <= now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    ))
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(|r| r.claimed(token)).collect()
}

/// The claim itself, for the refunds a `due` query picks (`due_reference`, `phase_before`;
/// `$2` is the lease in seconds, `$3` the token). Claim and read in one statement:
/// RETURNING gives the rows as updated.
fn claim_sql(due: &str) -> String {
    format!(
        "WITH due AS ({due})
         UPDATE refunds r SET
             next_attempt_at = now() + make_interval(secs => $2),
             claim_token = $3,
             phase = CASE WHEN r.phase = 'NOT_SUBMITTED' THEN 'SUBMITTING' ELSE r.phase END,
             attempts = r.attempts + CASE WHEN r.phase = 'NOT_SUBMITTED' THEN 1 ELSE 0 END,
             updated_at = now()
         FROM due WHERE r.refund_reference = due.due_reference
         RETURNING {ROW_COLUMNS}, due.phase_before, r.command"
    )
}

/// Why one refund could not be claimed by [`claim_one`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOne {
    /// No refund with that reference.
    NotFound,
    /// The refund is final: nothing to ask the provider.
    Final(String),
    /// A dispatcher holds it right now (its step will record the provider's answer).
    Busy,
}

/// Claims one pending refund now, due or not, exactly as [`claim_due`] claims due ones
/// (an operator's recheck): unless a dispatcher holds a live claim on it.
pub async fn claim_one(
    pool: &PgPool,
    reference: &str,
    lease: Duration,
) -> Result<Result<ClaimedRefund, ClaimOne>, StoreError> {
    let token = Uuid::new_v4();
    let row: Option<ClaimRow> = sqlx::query_as(&claim_sql(
        "SELECT refund_reference AS due_reference, phase AS phase_before FROM refunds
         WHERE refund_reference = $1 AND status = 'PENDING'
             AND NOT (claim_token IS NOT NULL AND next_attempt_at > now())
         FOR UPDATE SKIP LOCKED",
    ))
    .bind(reference)
    .bind(lease.as_secs_f64())
    .bind(token)
    .fetch_optional(pool)
    .await?;
    if let Some(r) = row {
        return Ok(Ok(r.claimed(token)?));
    }
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM refunds WHERE refund_reference = $1")
            .bind(reference)
            .fetch_optional(pool)
            .await?;
    Ok(Err(match status {
        None => ClaimOne::NotFound,
        Some(s) if s != RefundStatus::Pending.as_str() => ClaimOne::Final(s),
        Some(_) => ClaimOne::Busy,
    }))
}

/// A claimed row as `claim_due` reads it back.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    row: RefundRow,
    phase_before: String,
    command: Value,
}

impl ClaimRow {
    fn claimed(self, token: Uuid) -> Result<ClaimedRefund, StoreError> {
        let phase_before = Phase::parse(&self.phase_before)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown phase {}", self.phase_before)))?;
        Ok(ClaimedRefund {
            row: self.row,
            phase_before,
            command: self.command,
            token,
        })
    }
}

/// One claimed refund's step outcome, for [`record_steps`].
#[derive(Debug, Clone, Copy)]
pub struct StepRecord<'a> {
    /// The refund as claimed; its outcome is recorded only under its claim token.
    pub claimed: &'a ClaimedRefund,
    /// Submits beyond the one counted at claim time.
    pub extra_submits: i32,
    /// The step's provider calls, in the order they were made.
    pub calls: &'a [CallRecord],
    /// The change to make.
    pub update: &'a StoreUpdate,
}

/// Records the result of a dispatcher step on a claimed refund, with its provider calls,
/// and (for a final status) the transition and its outbox event, in one transaction.
///
/// Returns the event when one was produced, or `None` when the claim was lost (the lease
/// expired and another worker took over) or nothing changed. [`record_steps`] with one step.
pub async fn record_step(
    pool: &PgPool,
    claimed: &ClaimedRefund,
    extra_submits: i32,
    calls: &[CallRecord],
    update: StoreUpdate,
    sink: &EventSink,
) -> Result<Option<RefundEvent>, StoreError> {
    let step = StepRecord {
        claimed,
        extra_submits,
        calls,
        update: &update,
    };
    let mut events = record_steps(pool, &[step], sink).await?;
    Ok(events.pop().flatten())
}

/// History cause of a refund [`record_steps`] finished as COMPLETED.
pub const CAUSE_PROVIDER_CONFIRMED: &str = "provider confirmed the refund";
/// History cause of a refund [`record_steps`] finished otherwise.
///
/// With [`CAUSE_PROVIDER_CONFIRMED`], what tells the dispatcher's finishes apart from a
/// provider webhook's in `refund_transitions` (the bench counts record transactions by them).
pub const CAUSE_PROVIDER_OUTCOME: &str = "provider outcome";

/// Records many dispatcher steps in one transaction: for each claimed refund still under
/// its claim, its new schedule or final status, its provider calls, and (for a final
/// status) the transition, outbox event and merchant webhook.
///
/// A handful of set-based statements per batch instead of about five round trips per
/// refund: one `UPDATE ... FROM UNNEST` for the reschedules, one for the finishes, one
/// [`record_transitions`], one `provider_attempts` insert. Returns, in `steps` order, each
/// step's event, or `None` for a reschedule or a lost claim (the lease expired and another
/// worker took over, or a provider webhook finished the refund first). A lost claim
/// changes nothing on the refund, but its calls are logged: the provider was called. A
/// call is logged once however often its step is recorded (`provider_attempts_once`).
///
/// Rows are locked in `refund_reference` order first ([`lock_in_order`]), as a webhook batch
/// locks them, so two batches sharing refunds cannot wait for each other; should a
/// deadlock happen anyway, it is a retryable error ([`crate::error::sqlx_is_retryable`])
/// and the whole batch can be tried again.
pub async fn record_steps(
    pool: &PgPool,
    steps: &[StepRecord<'_>],
    sink: &EventSink,
) -> Result<Vec<Option<RefundEvent>>, StoreError> {
    if steps.is_empty() {
        return Ok(Vec::new());
    }
    // A claimed refund is PENDING; the conditional updates below are the database's half of
    // the rule (they change nothing unless the refund is still pending and under our
    // claim), this is the state machine's half. Checked before any work is done.
    for s in steps {
        if let StoreUpdate::Finish { status, .. } = s.update {
            let current = RefundStatus::Pending;
            if transition(current, *status) != Transition::Apply {
                return Err(StoreError::Corrupt(format!(
                    "dispatcher asked for {current} -> {status}"
                )));
            }
        }
    }
    // Indices into `steps`.
    let (finishes, reschedules): (Vec<usize>, Vec<usize>) =
        (0..steps.len()).partition(|&i| matches!(steps[i].update, StoreUpdate::Finish { .. }));

    let mut applied = vec![false; steps.len()];
    let mut events: Vec<Option<RefundEvent>> = vec![None; steps.len()];
    let mut tx = pool.begin().await?;
    // Lock every step's row first, in key order: the updates below lock reschedules, then
    // finishes, each in whatever order their join runs, and a provider webhook batch locks
    // its refunds in key order; without this the two could each wait for the other.
    lock_in_order(
        &mut tx,
        steps
            .iter()
            .map(|s| s.claimed.row.refund_reference.as_str()),
    )
    .await?;

    if !reschedules.is_empty() {
        let mut rows = RescheduleArrays::default();
        for &i in &reschedules {
            let s = &steps[i];
            if let StoreUpdate::Reschedule {
                phase,
                delay,
                failed,
                provider_reference,
                provider_status,
                fee,
            } = s.update
            {
                rows.step.push(s, provider_reference, provider_status, fee);
                rows.phase.push(phase.as_str());
                rows.delay.push(delay.as_secs_f64());
                rows.failed.push(*failed);
            }
        }
        // The unnested columns are named unlike any column of `refunds`, so nothing in
        // SET or RETURNING is ambiguous.
        let done: Vec<(String, Uuid)> = sqlx::query_as(
            "UPDATE refunds r SET phase = u.new_phase,
                 next_attempt_at = now() + make_interval(secs => u.delay_secs),
                 claim_token = NULL, attempts = r.attempts + u.add_submits,
                 failures = CASE WHEN u.failed THEN r.failures + 1 ELSE 0 END,
                 polls = r.polls + u.add_polls,
                 provider_reference = COALESCE(u.new_provider_reference, r.provider_reference),
                 provider_status = COALESCE(u.new_provider_status, r.provider_status),
                 provider_fee = COALESCE(u.new_fee, r.provider_fee),
                 provider_fee_currency = COALESCE(u.new_fee_currency, r.provider_fee_currency),
                 updated_at = now()
             FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::float8[], $5::int4[],
                     $6::bool[], $7::int4[], $8::text[], $9::text[], $10::numeric[], $11::text[],
                     $12::text[])
                 AS u(ref, tok, new_phase, delay_secs, add_submits, failed, add_polls,
                     new_provider_reference, new_provider_status, new_fee, new_fee_currency,
                     from_status)
             -- `= ANY($1)` as well as the join: the refunds side is then always an index
             -- look-up of these references, never a scan, whatever the join's plan.
             WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
                 AND r.claim_token = u.tok AND r.status = u.from_status
             RETURNING r.refund_reference, u.tok",
        )
        .persistent(false) // planned per execution: see the store module's "Plans"
        .bind(&rows.step.reference)
        .bind(&rows.step.token)
        .bind(&rows.phase)
        .bind(&rows.delay)
        .bind(&rows.step.extra_submits)
        .bind(&rows.failed)
        .bind(&rows.step.polls)
        .bind(&rows.step.provider_reference)
        .bind(&rows.step.provider_status)
        .bind(&rows.step.fee)
        .bind(&rows.step.fee_currency)
        .bind(&rows.step.from_status)
        .fetch_all(&mut *tx)
        .await?;
        for i in reschedules {
            let c = steps[i].claimed;
            applied[i] = done
                .iter()
                .any(|(r, t)| *r == c.row.refund_reference && *t == c.token);
        }
    }

    let mut finished: Vec<(usize, RefundStatus)> = Vec::new();
    if !finishes.is_empty() {
        let mut rows = FinishArrays::default();
        for &i in &finishes {
            let s = &steps[i];
            if let StoreUpdate::Finish {
                status,
                failure,
                provider_reference,
                provider_status,
                fee,
            } = s.update
            {
                rows.step.push(s, provider_reference, provider_status, fee);
                rows.push_status(*status, failure.as_ref());
            }
        }
        let done = finish_many(&mut tx, &rows).await?;
        for i in finishes {
            let s = &steps[i];
            let Some(row) = done.iter().find(|d| {
                d.row.refund_reference == s.claimed.row.refund_reference
                    && d.tok == Some(s.claimed.token)
            }) else {
                continue;
            };
            let StoreUpdate::Finish {
                status, failure, ..
            } = s.update
            else {
                continue;
            };
            applied[i] = true;
            events[i] = Some(event_for(&row.row, *status, failure.clone())?);
            finished.push((i, *status));
        }
    }

    if !applied.contains(&true) && steps.iter().all(|s| s.calls.is_empty()) {
        // Every claim was lost and no call was made: nothing to write.
        tx.rollback().await?;
        return Ok(events);
    }

    // History, outbox and webhooks in `steps` order (the order the relay publishes in).
    finished.sort_by_key(|&(i, _)| i);
    let writes: Vec<TransitionWrite<'_>> = finished
        .iter()
        .filter_map(|&(i, status)| {
            events[i].as_ref().map(|event| TransitionWrite {
                from: Some(RefundStatus::Pending),
                event,
                cause: match status {
                    RefundStatus::Completed => CAUSE_PROVIDER_CONFIRMED,
                    _ => CAUSE_PROVIDER_OUTCOME,
                },
                detail: None,
            })
        })
        .collect();
    record_transitions(&mut tx, &writes, sink).await?;

    // Every step's calls in one statement, in `steps` order and call order (the attempts
    // log is read back in id order), those of lost claims included.
    let calls: Vec<(&str, &CallRecord)> = steps
        .iter()
        .flat_map(|s| {
            s.calls
                .iter()
                .map(|c| (s.claimed.row.refund_reference.as_str(), c))
        })
        .collect();
    if !calls.is_empty() {
        sqlx::query(
            "INSERT INTO provider_attempts (refund_reference, call, outcome, detail, started_at, latency_ms)
             SELECT ref, call, outcome, detail, started_at, latency_ms
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int4[])
                 WITH ORDINALITY AS a(ref, call, outcome, detail, started_at, latency_ms, n)
             ORDER BY n
             ON CONFLICT (refund_reference, started_at, call) DO NOTHING",
        )
        .bind(calls.iter().map(|(r, _)| *r).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.call).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.outcome.as_str()).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.detail.as_deref()).collect::<Vec<_>>())
        .bind(calls.iter().map(|(_, c)| c.started_at).collect::<Vec<_>>())
        .bind(
            calls
                .iter()
                .map(|(_, c)| i32::try_from(c.latency.as_millis()).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(events)
}

/// The columns `record_steps`' two updates (and a webhook batch's finishes) share, one
/// entry per refund.
#[derive(Default)]
pub(crate) struct StepArrays<'a> {
    reference: Vec<&'a str>,
    token: Vec<Option<Uuid>>,
    extra_submits: Vec<i32>,
    polls: Vec<i32>,
    provider_reference: Vec<Option<&'a str>>,
    provider_status: Vec<Option<&'a str>>,
    fee: Vec<Option<Decimal>>,
    fee_currency: Vec<Option<&'a str>>,
    /// The status the refund must still have: always PENDING. A join column rather than a
    /// constant `status = 'PENDING'`, which let the planner pick the partial index
    /// `refunds_due` and, on statistics that said few refunds were pending, read every
    /// pending refund instead of probing the primary key (seen at 41 ms per update).
    from_status: Vec<&'static str>,
}

impl<'a> StepArrays<'a> {
    /// Adds one step with what its provider told us.
    fn push(
        &mut self,
        step: &StepRecord<'a>,
        provider_reference: &'a Option<String>,
        provider_status: &'a Option<String>,
        fee: &'a Option<Fee>,
    ) {
        let polls = step.calls.iter().filter(|c| c.call == "status").count();
        self.push_row(
            &step.claimed.row.refund_reference,
            Some(step.claimed.token),
            (step.extra_submits, i32::try_from(polls).unwrap_or(i32::MAX)),
            provider_reference.as_deref(),
            provider_status.as_deref(),
            fee.as_ref(),
        );
    }

    /// Adds one refund: under `token` (the dispatcher's claim) or, without one, whoever
    /// holds it (a provider webhook); `counts` are (extra submits, status polls).
    fn push_row(
        &mut self,
        reference: &'a str,
        token: Option<Uuid>,
        counts: (i32, i32),
        provider_reference: Option<&'a str>,
        provider_status: Option<&'a str>,
        fee: Option<&'a Fee>,
    ) {
        self.reference.push(reference);
        self.from_status.push(RefundStatus::Pending.as_str());
        self.token.push(token);
        self.extra_submits.push(counts.0);
        self.polls.push(counts.1);
        self.provider_reference.push(provider_reference);
        self.provider_status.push(provider_status);
        self.fee.push(fee.map(|f| f.amount));
        self.fee_currency.push(fee.map(|f| f.currency.as_str()));
    }
}

/// `record_steps`' reschedules as the columns of its `UNNEST`.
#[derive(Default)]
struct RescheduleArrays<'a> {
    step: StepArrays<'a>,
    phase: Vec<&'static str>,
    delay: Vec<f64>,
    failed: Vec<bool>,
}

/// Refunds to make final, as the columns of [`finish_many`]'s `UNNEST`.
#[derive(Default)]
pub(crate) struct FinishArrays<'a> {
    step: StepArrays<'a>,
    status: Vec<&'static str>,
    failure_code: Vec<Option<&'static str>>,
    failure_message: Vec<Option<&'a str>>,
}

impl<'a> FinishArrays<'a> {
    /// Adds a refund finished by a provider webhook: no claim token (whoever holds a claim
    /// loses it, and its later `record_steps` finds the refund no longer pending), no calls.
    pub(crate) fn push_webhook(
        &mut self,
        reference: &'a str,
        status: RefundStatus,
        failure: Option<&'a FailureReason>,
        provider_reference: Option<&'a str>,
        provider_status: Option<&'a str>,
        fee: Option<&'a Fee>,
    ) {
        self.step.push_row(
            reference,
            None,
            (0, 0),
            provider_reference,
            provider_status,
            fee,
        );
        self.push_status(status, failure);
    }

    fn push_status(&mut self, status: RefundStatus, failure: Option<&'a FailureReason>) {
        self.status.push(status.as_str());
        self.failure_code.push(failure.map(|f| f.code.as_str()));
        self.failure_message
            .push(failure.map(|f| f.message.as_str()));
    }

    /// How many refunds are listed.
    pub(crate) fn len(&self) -> usize {
        self.status.len()
    }
}

/// A refund made final by [`finish_many`], with the claim it was finished under.
#[derive(sqlx::FromRow)]
pub(crate) struct FinishedRow {
    /// The row after the change.
    #[sqlx(flatten)]
    pub row: RefundRow,
    /// The claim token it was finished under (none for a webhook).
    pub tok: Option<Uuid>,
}

/// Makes the listed refunds final, in one statement: each only while it is still `PENDING`
/// and, where a token is given, still under that claim. Returns the rows it changed.
///
/// The rows are those the caller locked or claimed; the state machine's check
/// ([`transition`]) is the caller's, this conditional update is the database's half.
pub(crate) async fn finish_many(
    tx: &mut Transaction<'_, Postgres>,
    rows: &FinishArrays<'_>,
) -> Result<Vec<FinishedRow>, StoreError> {
    if rows.len() == 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(&format!(
        "UPDATE refunds r SET status = u.new_status, phase = 'FINAL', next_attempt_at = NULL,
             claim_token = NULL, failure_code = u.new_failure_code,
             failure_message = u.new_failure_message, attempts = r.attempts + u.add_submits,
             polls = r.polls + u.add_polls,
             provider_reference = COALESCE(u.new_provider_reference, r.provider_reference),
             provider_status = COALESCE(u.new_provider_status, r.provider_status),
             provider_fee = COALESCE(u.new_fee, r.provider_fee),
             provider_fee_currency = COALESCE(u.new_fee_currency, r.provider_fee_currency),
             -- A final answer settles what a review was waiting for.
             review_reason = NULL, review_since = NULL,
             updated_at = now(), finished_at = now()
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[],
                 $7::int4[], $8::text[], $9::text[], $10::numeric[], $11::text[], $12::text[])
             AS u(ref, tok, new_status, new_failure_code, new_failure_message, add_submits,
                 add_polls, new_provider_reference, new_provider_status, new_fee,
                 new_fee_currency, from_status)
         -- `= ANY($1)` as well as the join: the refunds side is then always an index
         -- look-up of these references, never a scan, whatever the join's plan.
         WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
             AND (u.tok IS NULL OR r.claim_token = u.tok) AND r.status = u.from_status
         RETURNING {ROW_COLUMNS}, u.tok"
    ))
    .persistent(false) // planned per execution: see the store module's "Plans"
    .bind(&rows.step.reference)
    .bind(&rows.step.token)
    .bind(&rows.status)
    .bind(&rows.failure_code)
    .bind(&rows.failure_message)
    .bind(&rows.step.extra_submits)
    .bind(&rows.step.polls)
    .bind(&rows.step.provider_reference)
    .bind(&rows.step.provider_status)
    .bind(&rows.step.fee)
    .bind(&rows.step.fee_currency)
    .bind(&rows.step.from_status)
    .fetch_all(&mut **tx)
    .await?)
}

/// Locks the refunds named (repeats allowed) in key order, and returns their statuses.
///
/// Every transaction that changes several refunds locks them through here first, so two of
/// them always take the locks in the same order and never deadlock.
pub(crate) async fn lock_in_order<'r>(
    tx: &mut Transaction<'_, Postgres>,
    references: impl IntoIterator<Item = &'r str>,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut references: Vec<&str> = references.into_iter().collect();
    references.sort_unstable();
    references.dedup();
    if references.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT refund_reference, status FROM refunds
         WHERE refund_reference = ANY($1) ORDER BY refund_reference FOR UPDATE",
    )
    .persistent(false) // planned per execution: see the store module's "Plans"
    .bind(&references)
    .fetch_all(&mut **tx)
    .await?)
}

/// Builds the status event for a refund row.
pub(crate) fn event_for(
    row: &RefundRow,
    status: RefundStatus,
    failure: Option<FailureReason>,
) -> Result<RefundEvent, StoreError> {
    Ok(RefundEvent {
        event_id: Uuid::new_v4(),
        refund_reference: row.refund_reference.clone(),
        provider: row.provider.clone(),
        transaction_reference: row.transaction_reference.clone(),
        provider_reference: row.provider_reference.clone(),
        amount: row.amount.map(|a| a.to_string()),
        currency: row.currency.clone(),
        status,
        failure_reason: failure,
        attempts: row.attempts,
        occurred_at: row.finished_at.unwrap_or(row.updated_at),
        review: None,
        resolution: None,
    })
}

/// The operator's view of one refund: row, history, provider calls.
pub async fn show(pool: &PgPool, refund_reference: &str) -> Result<Option<RefundView>, StoreError> {
    let refund: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM refunds WHERE refund_reference = $1"
    ))
    .bind(refund_reference)
    .fetch_optional(pool)
    .await?;
    let Some(refund) = refund else {
        return Ok(None);
    };
    let transitions = sqlx::query_as(
        "SELECT from_status, to_status, cause, detail, event_id, occurred_at
         FROM refund_transitions WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(refund_reference)
    .fetch_all(pool)
    .await?;
    let attempts = sqlx::query_as(
        "SELECT call, outcome, detail, started_at, latency_ms
         FROM provider_attempts WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(refund_reference)
    .fetch_all(pool)
    .await?;
    Ok(Some(RefundView {
        refund,
        transitions,
        attempts,
    }))
}

/// Largest page of [`list`] (a larger `limit` is refused by the admin API).
pub const MAX_PAGE: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

/// Which refunds to list (the query of `GET /v1/refunds`).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListFilter {
    /// Only this status.
    #[param(schema_with = crate::schema::api::refund_status)]
    pub status: Option<String>,
    /// Only this provider.
    #[param(schema_with = crate::schema::api::provider)]
    pub provider: Option<String>,
    /// Only refunds created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only refunds created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only refunds in review (`true`) or not in review (`false`).
    pub review: Option<bool>,
    /// Only refunds whose reference starts with this text (literally: `%` and `_` are not
    /// wildcards).
    pub reference_prefix: Option<String>,
    /// Page size (1 to 500, default 50).
    #[param(schema_with = page_size)]
    pub limit: Option<i64>,
    /// Continue after this cursor (from the previous page's `nextCursor`).
    pub cursor: Option<String>,
}

fn page_size() -> utoipa::openapi::Object {
    crate::schema::api::limit(MAX_PAGE, DEFAULT_PAGE)
}

/// A page of refunds, newest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundPage {
    /// The refunds.
    pub items: Vec<RefundRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `text` for a LIKE pattern, its wildcards (`%`, `_`) and the escape character (`\`) taken
/// literally.
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lists refunds with keyset pagination on (created_at, refund_reference), so pages stay
/// stable while new refunds arrive.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<RefundPage, StoreError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let after: Option<(DateTime<Utc>, String)> = match &f.cursor {
        None => None,
        Some(c) => {
            let bad = || StoreError::Invalid(format!("cursor `{c}` is not one this API issued"));
            let text = b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(bad)?;
            let (micros, reference) = text.split_once('|').ok_or_else(bad)?;
            let micros: i64 = micros.parse().map_err(|_| bad())?;
            Some((
                DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
                reference.to_owned(),
            ))
        }
    };
    let mut items: Vec<RefundRow> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM refunds
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR provider = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR (created_at, refund_reference) < ($4, $5))
           AND ($7::timestamptz IS NULL OR created_at < $7)
           AND ($8::bool IS NULL OR (review_since IS NOT NULL) = $8)
           AND ($9::text IS NULL OR refund_reference LIKE $9 || '%' ESCAPE '\\')
         ORDER BY created_at DESC, refund_reference DESC LIMIT $6"
    ))
    .bind(&f.status)
    .bind(&f.provider)
    .bind(f.since)
    .bind(after.as_ref().map(|a| a.0))
    .bind(after.as_ref().map(|a| a.1.as_str()))
    .bind(limit + 1)
    .bind(f.until)
    .bind(f.review)
    .bind(f.reference_prefix.as_deref().map(like_literal))
    .fetch_all(pool)
    .await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|r| {
            b64.encode(format!(
                "{}|{}",
                r.created_at.timestamp_micros(),
                r.refund_reference
            ))
        })
    } else {
        None
    };
    Ok(RefundPage { items, next_cursor })
}
