//! Inbound provider webhooks: the inbox that deduplicates them, applying refund status
//! changes through the one transition function, the pay-ins ledger, and parked webhooks.
//!
//! Everything a webhook changes commits in one transaction with its inbox row (and, for a
//! status change, the history row and the outbox event), so a redelivered or replayed
//! webhook finds its inbox row and changes nothing.

use super::refunds::{event_for, finish_pending, record_transition, FinishCounts};
use super::{EventSink, StoreError};
use crate::domain::{
    transition, ProviderName, ProviderOutcome, RefundEvent, RefundStatus, Transition,
};
use crate::providers::{ProviderWebhook, WebhookKind};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};

/// What applying one provider webhook did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Seen before (same provider and event key): nothing changed.
    Duplicate,
    /// The refund became final; its event is in the outbox.
    Transitioned(RefundEvent),
    /// Known, and nothing to change: a repeat of the final status, a late non-final status
    /// after a final one, or a still-pending status (provider status word updated).
    Unchanged {
        /// The refund.
        refund_reference: String,
    },
    /// A final status contradicting the refund's final status: recorded, raised, not applied.
    Contradiction {
        /// The refund.
        refund_reference: String,
        /// Our status.
        ours: RefundStatus,
        /// What the provider now says.
        theirs: RefundStatus,
    },
    /// No refund matches yet (the webhook raced the provider's HTTP answer): kept, and
    /// applied when the refund appears.
    Parked,
    /// Several refunds could match (only the payment was named): kept for an operator.
    Unmatched {
        /// Why.
        reason: String,
    },
    /// A payment status, kept in the pay-ins ledger.
    PayIn,
    /// A notification refund-worker has no use for.
    Ignored,
}

impl Applied {
    /// Inbox state and metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Transitioned(_) => "applied",
            Self::Unchanged { .. } => "unchanged",
            Self::Contradiction { .. } => "contradiction",
            Self::Parked => "parked",
            Self::Unmatched { .. } => "unmatched",
            Self::PayIn => "pay_in",
            Self::Ignored => "ignored",
        }
    }

    fn inbox_state(&self) -> &'static str {
        match self {
            Self::Duplicate | Self::Unchanged { .. } => "UNCHANGED",
            Self::Transitioned(_) | Self::PayIn => "APPLIED",
            Self::Contradiction { .. } => "CONTRADICTION",
            Self::Parked => "PARKED",
            Self::Unmatched { .. } => "UNMATCHED",
            Self::Ignored => "IGNORED",
        }
    }
}

/// The inbox key of a webhook: the provider's event id, else a hash of the raw body.
pub fn event_key(webhook: &ProviderWebhook, body: &[u8]) -> String {
    match webhook
        .event_id
        .as_deref()
        .filter(|id| !id.trim().is_empty())
    {
        Some(id) => format!("id:{id}"),
        None => format!("sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// Records one parsed webhook in the inbox and applies it, in one transaction.
/// `part` is its index among the notifications parsed from `body`.
pub async fn receive(
    pool: &PgPool,
    provider: ProviderName,
    body: &[u8],
    part: usize,
    webhook: &ProviderWebhook,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let mut key = event_key(webhook, body);
    if part > 0 {
        key = format!("{key}#{part}");
    }
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO provider_webhook_inbox (provider, event_key, part, body, state)
         VALUES ($1, $2, $3, $4, 'PARKED')
         ON CONFLICT (provider, event_key) DO NOTHING",
    )
    .bind(provider.as_str())
    .bind(&key)
    .bind(i32::try_from(part).unwrap_or(i32::MAX))
    .bind(body)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let applied = apply(&mut tx, provider, &key, webhook, sink).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies `webhook` and records the result on its inbox row (`provider`, `key`).
async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    provider: ProviderName,
    key: &str,
    webhook: &ProviderWebhook,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let (applied, refund_reference, detail) = match &webhook.kind {
        WebhookKind::Refund {
            refund_reference,
            provider_reference,
            transaction_reference,
            outcome,
        } => {
            let keys = RefundKeys {
                refund_reference: refund_reference.as_deref(),
                provider_reference: provider_reference.as_deref(),
                transaction_reference: transaction_reference.as_deref(),
            };
            let applied = apply_refund(tx, provider, keys, outcome, sink).await?;
            let reference = match &applied {
                Applied::Transitioned(e) => Some(e.refund_reference.clone()),
                Applied::Unchanged { refund_reference }
                | Applied::Contradiction {
                    refund_reference, ..
                } => Some(refund_reference.clone()),
                _ => None,
            };
            let detail = match &applied {
                Applied::Contradiction { ours, theirs, .. } => {
                    Some(format!("provider says {theirs}, refund is {ours}"))
                }
                Applied::Unmatched { reason } => Some(reason.clone()),
                _ => {
                    let (label, detail) = outcome.describe();
                    Some(match detail {
                        Some(d) => format!("{label}: {d}"),
                        None => label.to_owned(),
                    })
                }
            };
            (applied, reference, detail)
        }
        WebhookKind::Payment {
            transaction_reference,
            amount,
            currency,
            status,
            succeeded,
        } => {
            sqlx::query(
                "INSERT INTO pay_ins (provider, transaction_reference, amount, currency, status,
                     succeeded, event_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (provider, transaction_reference) DO UPDATE SET
                     amount = COALESCE(EXCLUDED.amount, pay_ins.amount),
                     currency = COALESCE(EXCLUDED.currency, pay_ins.currency),
                     status = EXCLUDED.status, succeeded = EXCLUDED.succeeded,
                     event_key = EXCLUDED.event_key,
                     notifications = pay_ins.notifications + 1, updated_at = now()",
            )
            .bind(provider.as_str())
            .bind(transaction_reference)
            .bind(amount)
            .bind(currency)
            .bind(status)
            .bind(succeeded)
            .bind(key)
            .execute(&mut **tx)
            .await?;
            (
                Applied::PayIn,
                None,
                Some(format!("payment {transaction_reference} {status}")),
            )
        }
        WebhookKind::Ignored { kind } => (Applied::Ignored, None, Some(kind.clone())),
    };
    sqlx::query(
        "UPDATE provider_webhook_inbox SET state = $3, refund_reference = $4, detail = $5,
             updated_at = now()
         WHERE provider = $1 AND event_key = $2",
    )
    .bind(provider.as_str())
    .bind(key)
    .bind(applied.inbox_state())
    .bind(refund_reference)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(applied)
}

/// The ways a refund webhook can name its refund.
#[derive(Debug, Clone, Copy)]
struct RefundKeys<'a> {
    refund_reference: Option<&'a str>,
    provider_reference: Option<&'a str>,
    transaction_reference: Option<&'a str>,
}

/// Finds and locks the refund a webhook names: by our reference, then the provider's, then
/// the payment (only when exactly one refund of that payment is pending, or exactly one
/// exists).
async fn find_refund(
    tx: &mut Transaction<'_, Postgres>,
    provider: ProviderName,
    keys: RefundKeys<'_>,
) -> Result<Result<Option<(String, String)>, String>, StoreError> {
    let by = |column: &str| {
        format!(
            "SELECT refund_reference, status FROM refunds
             WHERE provider = $1 AND {column} = $2 ORDER BY created_at FOR UPDATE"
        )
    };
    for (column, value) in [
        ("refund_reference", keys.refund_reference),
        ("provider_reference", keys.provider_reference),
    ] {
        if let Some(value) = value {
            let rows: Vec<(String, String)> = sqlx::query_as(&by(column))
                .bind(provider.as_str())
                .bind(value)
                .fetch_all(&mut **tx)
                .await?;
            if let Some(row) = rows.into_iter().next() {
                return Ok(Ok(Some(row)));
            }
        }
    }
    let Some(payment) = keys.transaction_reference else {
        return Ok(Ok(None));
    };
    let rows: Vec<(String, String)> = sqlx::query_as(&by("transaction_reference"))
        .bind(provider.as_str())
        .bind(payment)
        .fetch_all(&mut **tx)
        .await?;
    let pending: Vec<&(String, String)> = rows.iter().filter(|r| r.1 == "PENDING").collect();
    Ok(match (rows.len(), pending.len()) {
        (0, _) => Ok(None),
        (1, _) => Ok(rows.into_iter().next()),
        (_, 1) => Ok(pending.first().map(|r| (*r).clone())),
        (n, _) => Err(format!(
            "{n} refunds of payment {payment} could match; the webhook names no refund"
        )),
    })
}

async fn apply_refund(
    tx: &mut Transaction<'_, Postgres>,
    provider: ProviderName,
    keys: RefundKeys<'_>,
    outcome: &ProviderOutcome,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let (reference, current) = match find_refund(tx, provider, keys).await? {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(Applied::Parked),
        Err(reason) => return Ok(Applied::Unmatched { reason }),
    };
    let current = RefundStatus::parse(&current)
        .ok_or_else(|| StoreError::Corrupt(format!("refund {reference} has status {current}")))?;
    let (target, failure, provider_reference, provider_status, fee) = match outcome {
        ProviderOutcome::Succeeded {
            provider_reference,
            provider_status,
            fee,
        } => (
            RefundStatus::Completed,
            None,
            provider_reference,
            provider_status,
            fee,
        ),
        ProviderOutcome::Failed(reason) => (
            RefundStatus::RefundFail,
            Some(reason.clone()),
            &None,
            &String::new(),
            &None,
        ),
        ProviderOutcome::Accepted {
            provider_reference,
            provider_status,
            fee,
        } => {
            // Still in progress at the provider: keep what it says, change nothing else.
            sqlx::query(
                "UPDATE refunds SET provider_reference = COALESCE($2, provider_reference),
                     provider_status = $3,
                     provider_fee = COALESCE($4, provider_fee),
                     provider_fee_currency = COALESCE($5, provider_fee_currency),
                     updated_at = now()
                 WHERE refund_reference = $1 AND status = 'PENDING'",
            )
            .bind(&reference)
            .bind(provider_reference)
            .bind(provider_status)
            .bind(fee.as_ref().map(|f| f.amount))
            .bind(fee.as_ref().map(|f| f.currency.as_str()))
            .execute(&mut **tx)
            .await?;
            return Ok(Applied::Unchanged {
                refund_reference: reference,
            });
        }
        // Parsers classify webhooks as final or in progress; anything else says nothing.
        ProviderOutcome::Retryable { .. }
        | ProviderOutcome::Unknown { .. }
        | ProviderOutcome::NotFound => {
            return Ok(Applied::Unchanged {
                refund_reference: reference,
            })
        }
    };
    match transition(current, target) {
        Transition::Apply => {}
        Transition::Unchanged | Transition::Stale => {
            return Ok(Applied::Unchanged {
                refund_reference: reference,
            })
        }
        Transition::Contradiction => {
            return Ok(Applied::Contradiction {
                refund_reference: reference,
                ours: current,
                theirs: target,
            })
        }
    }
    let status_word = (!provider_status.is_empty()).then(|| provider_status.clone());
    let Some(row) = finish_pending(
        tx,
        &reference,
        None,
        target,
        failure.as_ref(),
        FinishCounts::default(),
        provider_reference.clone(),
        status_word,
        fee.as_ref(),
    )
    .await?
    else {
        // Locked as PENDING above, so this cannot happen; say so rather than guess.
        return Err(StoreError::Corrupt(format!(
            "refund {reference} stopped being pending under its lock"
        )));
    };
    let event = event_for(&row, target, failure)?;
    record_transition(tx, Some(current), &event, "provider webhook", sink).await?;
    Ok(Applied::Transitioned(event))
}

/// A parked webhook waiting for its refund.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ParkedWebhook {
    /// Provider wire name.
    pub provider: String,
    /// Inbox key.
    pub event_key: String,
    /// Index among the notifications of `body`.
    pub part: i32,
    /// Raw body, as received.
    pub body: Vec<u8>,
    /// Tries so far.
    pub park_attempts: i32,
    /// When it arrived.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// Parked webhooks, oldest first.
pub async fn parked(pool: &PgPool, limit: i64) -> Result<Vec<ParkedWebhook>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT provider, event_key, part, body, park_attempts, received_at
         FROM provider_webhook_inbox WHERE state = 'PARKED' ORDER BY received_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Tries a parked webhook again (re-parsed by the caller). `give_up` turns a still
/// unmatched one into `UNMATCHED`, for an operator.
pub async fn retry_parked(
    pool: &PgPool,
    provider: ProviderName,
    key: &str,
    webhook: &ProviderWebhook,
    give_up: bool,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let mut tx = pool.begin().await?;
    let still_parked: Option<i32> = sqlx::query_scalar(
        "SELECT park_attempts FROM provider_webhook_inbox
         WHERE provider = $1 AND event_key = $2 AND state = 'PARKED' FOR UPDATE SKIP LOCKED",
    )
    .bind(provider.as_str())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    if still_parked.is_none() {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let mut applied = apply(&mut tx, provider, key, webhook, sink).await?;
    if applied == Applied::Parked && give_up {
        applied = Applied::Unmatched {
            reason: "no refund appeared for this webhook".into(),
        };
    }
    sqlx::query(
        "UPDATE provider_webhook_inbox SET state = $3, park_attempts = park_attempts + 1
         WHERE provider = $1 AND event_key = $2",
    )
    .bind(provider.as_str())
    .bind(key)
    .bind(applied.inbox_state())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(applied)
}

/// Marks a parked webhook that can no longer be parsed as unmatched, with the reason.
pub async fn abandon_parked(
    pool: &PgPool,
    provider: &str,
    key: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE provider_webhook_inbox SET state = 'UNMATCHED', detail = $3, updated_at = now()
         WHERE provider = $1 AND event_key = $2 AND state = 'PARKED'",
    )
    .bind(provider)
    .bind(key)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}
