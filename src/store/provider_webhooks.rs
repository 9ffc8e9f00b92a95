//! Inbound provider webhooks: the inbox that deduplicates them, applying refund status
//! changes through the one transition function, the pay-ins ledger, and parked webhooks.
//!
//! Everything a webhook changes commits in one transaction with its inbox row (and, for a
//! status change, the history row and the outbox event), so a redelivered or replayed
//! webhook finds its inbox row and changes nothing. The transaction is the caller's
//! ([`crate::pipeline::provider_webhooks`]); the decisions (which refund a webhook names, what it
//! does to it) are [`crate::domain::webhook`]'s, and these functions read and write around
//! them.

use super::refunds::{event_for, finish_many, lock_in_order, record_transitions, FinishArrays};
use super::{EventSink, StoreError};
use crate::domain::fanout::StatusChange;
use crate::domain::webhook::{decide, pick, refund_result, Candidate, Changes, Decided};
use crate::domain::{ProviderName, RefundStatus};
use crate::providers::{ProviderWebhook, WebhookKind};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;

pub use crate::domain::webhook::Applied;

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

/// One parsed notification to receive: the `part`-th of those parsed from `body`.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The provider that sent it.
    pub provider: ProviderName,
    /// The raw body, as received (kept in the inbox).
    pub body: &'a [u8],
    /// Its index among the notifications of `body`.
    pub part: usize,
    /// The notification.
    pub webhook: &'a ProviderWebhook,
}

impl Incoming<'_> {
    /// Its inbox key: the event key, suffixed with the part for all but the first.
    fn key(&self) -> String {
        let key = event_key(self.webhook, self.body);
        if self.part > 0 {
            format!("{key}#{}", self.part)
        } else {
            key
        }
    }
}

/// Records one parsed webhook in the inbox and applies it, in the caller's transaction.
/// `part` is its index among the notifications parsed from `body`.
pub async fn receive(
    tx: &mut PgConnection,
    provider: ProviderName,
    body: &[u8],
    part: usize,
    webhook: &ProviderWebhook,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let incoming = Incoming {
        provider,
        body,
        part,
        webhook,
    };
    receive_batch(tx, &[incoming], sink)
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("webhook batch answered nothing".into()))
}

/// Records parsed webhooks in the inbox and applies them, all in the caller's transaction,
/// as if they had come one at a time in `items` order. Answers in `items` order. When all
/// are duplicates nothing is written (the inbox insert found every key).
///
/// About eight set-based statements per batch however many webhooks it holds: the inbox
/// insert (which finds the duplicates), one look-up of the refunds they name, one lock of
/// those refunds in key order, one update for in-progress statuses, one for final ones,
/// one [`record_transitions`](super::refunds) and the inbox's final states. A payment
/// status is one ledger upsert each.
pub async fn receive_batch(
    tx: &mut PgConnection,
    items: &[Incoming<'_>],
    sink: &EventSink,
) -> Result<Vec<Applied>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = items.iter().map(Incoming::key).collect();
    let inserted: Vec<(String, String, String)> = sqlx::query_as(
        "INSERT INTO provider_webhook_inbox (provider, event_key, part, body, state)
         SELECT provider, event_key, part, body, 'PARKED'
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::bytea[])
             WITH ORDINALITY AS i(provider, event_key, part, body, n)
         ORDER BY n
         ON CONFLICT (provider, event_key) DO NOTHING
         RETURNING provider, event_key, ctid::text",
    )
    .bind(
        items
            .iter()
            .map(|i| i.provider.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(&keys)
    .bind(
        items
            .iter()
            .map(|i| i32::try_from(i.part).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|i| i.body).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    // Fresh: inserted now, and the first of its key in this batch (a repeat within the
    // batch is a duplicate, as it would have been one message later).
    let mut inserted: HashMap<(String, String), String> = inserted
        .into_iter()
        .map(|(provider, key, row)| ((provider, key), row))
        .collect();
    let fresh: Vec<(usize, String)> = (0..items.len())
        .filter_map(|i| {
            let row = inserted.remove(&(items[i].provider.as_str().to_owned(), keys[i].clone()));
            row.map(|row| (i, row))
        })
        .collect();
    if fresh.is_empty() {
        return Ok(vec![Applied::Duplicate; items.len()]);
    }
    let todo: Vec<Pending<'_>> = fresh
        .iter()
        .map(|(i, row)| Pending {
            provider: items[*i].provider,
            key: &keys[*i],
            row: row.clone(),
            webhook: items[*i].webhook,
        })
        .collect();
    let results = apply_all(tx, &todo, sink).await?;
    write_inbox(tx, &todo, &results, false).await?;
    let mut applied = vec![Applied::Duplicate; items.len()];
    for ((i, _), result) in fresh.into_iter().zip(results) {
        applied[i] = result.applied;
    }
    Ok(applied)
}

/// A webhook that holds its inbox row in the current transaction, to apply.
#[derive(Debug, Clone)]
struct Pending<'a> {
    provider: ProviderName,
    key: &'a str,
    /// Its inbox row's `ctid`, as text: the row is ours (inserted or locked) until the
    /// transaction ends, so its physical address is stable and the final update reaches
    /// it with a TID scan, whatever the planner thinks of the table's size.
    row: String,
    webhook: &'a ProviderWebhook,
}

/// Writes each webhook's final inbox state (and, for a parked retry, counts the try).
async fn write_inbox(
    tx: &mut PgConnection,
    todo: &[Pending<'_>],
    results: &[Decided],
    count_try: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE provider_webhook_inbox i SET state = u.new_state,
             refund_reference = u.new_refund_reference, detail = u.new_detail,
             park_attempts = i.park_attempts + $5, updated_at = now()
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
             AS u(row_id, new_state, new_refund_reference, new_detail)
         -- By the rows' addresses: a TID scan. Looked up by key, a plan made on a young
         -- table's statistics scanned the whole inbox for every batch.
         WHERE i.ctid = u.row_id::tid AND i.ctid = ANY($1::text[]::tid[])",
    )
    .bind(todo.iter().map(|p| p.row.as_str()).collect::<Vec<_>>())
    .bind(
        results
            .iter()
            .map(|r| r.applied.inbox_state())
            .collect::<Vec<_>>(),
    )
    .bind(
        results
            .iter()
            .map(|r| r.refund_reference.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        results
            .iter()
            .map(|r| r.detail.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(i32::from(count_try))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The ways a refund webhook can name its refund.
#[derive(Debug, Clone, Copy)]
struct RefundKeys<'a> {
    refund_reference: Option<&'a str>,
    provider_reference: Option<&'a str>,
    transaction_reference: Option<&'a str>,
}

/// Applies webhooks that hold their inbox rows, in order, in `tx`: refunds are found in one
/// statement ([`pick`] chooses among the candidates) and locked in key order (so two
/// batches sharing refunds cannot deadlock), [`decide`] judges each webhook against the
/// status its predecessors left, and the plan it makes is written in a few set-based
/// statements. The decisions sit between this function's reads and writes, which is why it
/// asks them here rather than leaving its caller to: the batch's statements stay as few.
async fn apply_all(
    tx: &mut PgConnection,
    todo: &[Pending<'_>],
    sink: &EventSink,
) -> Result<Vec<Decided>, StoreError> {
    // Refund webhooks: which refunds they name.
    let refund_keys: Vec<(usize, RefundKeys<'_>)> = todo
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match &p.webhook.kind {
            WebhookKind::Refund {
                refund_reference,
                provider_reference,
                transaction_reference,
                ..
            } => Some((
                i,
                RefundKeys {
                    refund_reference: refund_reference.as_deref(),
                    provider_reference: provider_reference.as_deref(),
                    transaction_reference: transaction_reference.as_deref(),
                },
            )),
            _ => None,
        })
        .collect();
    let mut found: Vec<Option<Result<Option<String>, String>>> = vec![None; todo.len()];
    let mut current: HashMap<String, RefundStatus> = HashMap::new();
    if !refund_keys.is_empty() {
        // One array per column, in `refund_keys` order.
        let n = refund_keys.len();
        let (mut providers, mut ours, mut theirs, mut payments) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (i, keys) in &refund_keys {
            providers.push(todo[*i].provider.as_str());
            ours.push(keys.refund_reference);
            theirs.push(keys.provider_reference);
            payments.push(keys.transaction_reference);
        }
        // Which webhook (its 1-based index among the batch's refund webhooks), and the
        // candidate's via, reference, status and age.
        type CandidateRow = (i64, i32, String, String, chrono::DateTime<chrono::Utc>);
        let candidates: Vec<CandidateRow> = sqlx::query_as(
            "SELECT u.n, m.via, m.refund_reference, m.status, m.created_at
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[])
                 WITH ORDINALITY AS u(prov, rr, pr, tr, n)
             CROSS JOIN LATERAL (
                 SELECT 1 AS via, refund_reference, status, created_at FROM refunds
                 WHERE provider = u.prov AND refund_reference = u.rr
                 UNION ALL
                 SELECT 2, refund_reference, status, created_at FROM refunds
                 WHERE provider = u.prov AND provider_reference = u.pr
                 UNION ALL
                 SELECT 3, refund_reference, status, created_at FROM refunds
                 WHERE provider = u.prov AND transaction_reference = u.tr
             ) m",
        )
        .persistent(false) // planned per execution: see the store module's "Plans"
        .bind(&providers)
        .bind(&ours)
        .bind(&theirs)
        .bind(&payments)
        .fetch_all(&mut *tx)
        .await?;
        let candidates: Vec<(i64, Candidate)> = candidates
            .into_iter()
            .map(|(n, via, refund_reference, status, created_at)| {
                let candidate = Candidate {
                    via,
                    refund_reference,
                    status,
                    created_at,
                };
                (n, candidate)
            })
            .collect();
        for (n, (i, keys)) in refund_keys.iter().enumerate() {
            let mine: Vec<&Candidate> = candidates
                .iter()
                .filter(|(k, _)| usize::try_from(k - 1).ok() == Some(n))
                .map(|(_, c)| c)
                .collect();
            found[*i] = Some(pick(mine, keys.transaction_reference));
        }
        let references = found.iter().filter_map(|f| match f {
            Some(Ok(Some(r))) => Some(r.as_str()),
            _ => None,
        });
        // Locked in key order (as the dispatcher's recorder locks them); the status read
        // here is the one decided on.
        for (reference, status) in lock_in_order(tx, references).await? {
            let status = RefundStatus::parse(&status).ok_or_else(|| {
                StoreError::Corrupt(format!("refund {reference} has status {status}"))
            })?;
            current.insert(reference, status);
        }
    }

    let mut results: Vec<Option<Decided>> = vec![None; todo.len()];
    let mut changes = Changes::default();
    for (i, p) in todo.iter().enumerate() {
        let result = match &p.webhook.kind {
            WebhookKind::Refund { outcome, .. } => {
                let found = found[i].take().unwrap_or(Ok(None));
                // `None`: made final below, once the finishing update returns its row.
                decide(found, outcome, &mut current, i, &mut changes)
                    .map(|applied| refund_result(applied, outcome))
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
                     -- The ledger only moves forward: a late or reordered notification
                     -- that is not a success never hides a succeeded pay-in from the
                     -- over-refund guard, and a succeeded pay-in's amount never shrinks.
                     ON CONFLICT (provider, transaction_reference) DO UPDATE SET
                         amount = CASE
                             WHEN pay_ins.succeeded AND NOT EXCLUDED.succeeded THEN pay_ins.amount
                             WHEN pay_ins.succeeded THEN GREATEST(pay_ins.amount, EXCLUDED.amount)
                             ELSE COALESCE(EXCLUDED.amount, pay_ins.amount) END,
                         currency = CASE
                             WHEN pay_ins.succeeded AND NOT EXCLUDED.succeeded THEN pay_ins.currency
                             ELSE COALESCE(EXCLUDED.currency, pay_ins.currency) END,
                         status = CASE
                             WHEN pay_ins.succeeded AND NOT EXCLUDED.succeeded THEN pay_ins.status
                             ELSE EXCLUDED.status END,
                         succeeded = pay_ins.succeeded OR EXCLUDED.succeeded,
                         event_key = EXCLUDED.event_key,
                         notifications = pay_ins.notifications + 1, updated_at = now()",
                )
                .bind(p.provider.as_str())
                .bind(transaction_reference)
                .bind(amount)
                .bind(currency)
                .bind(status)
                .bind(succeeded)
                .bind(p.key)
                .execute(&mut *tx)
                .await?;
                Some(Decided {
                    applied: Applied::PayIn,
                    refund_reference: None,
                    detail: Some(format!("payment {transaction_reference} {status}")),
                })
            }
            WebhookKind::Ignored { kind } => Some(Decided {
                applied: Applied::Ignored,
                refund_reference: None,
                detail: Some(kind.clone()),
            }),
        };
        results[i] = result;
    }

    if !changes.progress.is_empty() {
        // Still in progress at the provider: keep what it says, change nothing else.
        let progress = &changes.progress;
        sqlx::query(
            "UPDATE refunds r SET provider_reference = COALESCE(u.new_provider_reference, r.provider_reference),
                 provider_status = u.new_provider_status,
                 provider_fee = COALESCE(u.new_fee, r.provider_fee),
                 provider_fee_currency = COALESCE(u.new_fee_currency, r.provider_fee_currency),
                 updated_at = now()
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[],
                     $6::text[])
                 AS u(ref, new_provider_reference, new_provider_status, new_fee, new_fee_currency,
                     from_status)
             -- The status a join column, as in `finish_many` (a constant lets the planner
             -- read every pending refund through `refunds_due`).
             WHERE r.refund_reference = u.ref AND r.refund_reference = ANY($1)
                 AND r.status = u.from_status",
        )
        .persistent(false) // planned per execution: see the store module's "Plans"
        .bind(progress.iter().map(|p| p.reference.as_str()).collect::<Vec<_>>())
        .bind(progress.iter().map(|p| p.provider_reference).collect::<Vec<_>>())
        .bind(progress.iter().map(|p| p.provider_status).collect::<Vec<_>>())
        .bind(progress.iter().map(|p| p.fee.map(|f| f.amount)).collect::<Vec<_>>())
        .bind(
            progress
                .iter()
                .map(|p| p.fee.map(|f| f.currency.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(vec![RefundStatus::Pending.as_str(); progress.len()])
        .execute(&mut *tx)
        .await?;
    }

    if !changes.finishes.is_empty() {
        let mut rows = FinishArrays::default();
        for f in &changes.finishes {
            rows.push_webhook(
                &f.reference,
                f.status,
                f.failure,
                f.provider_reference,
                f.provider_status,
                f.fee,
            );
        }
        let done = finish_many(tx, &rows).await?;
        let mut events = Vec::with_capacity(changes.finishes.len());
        for f in &changes.finishes {
            let Some(row) = done.iter().find(|d| d.row.refund_reference == f.reference) else {
                // Locked as PENDING above, so this cannot happen; say so rather than guess.
                return Err(StoreError::Corrupt(format!(
                    "refund {} stopped being pending under its lock",
                    f.reference
                )));
            };
            events.push((f, event_for(&row.row, f.status, f.failure.cloned())?));
        }
        let writes: Vec<StatusChange<'_>> = events
            .iter()
            .map(|(f, event)| StatusChange {
                from: Some(f.from),
                event,
                cause: "provider webhook",
                detail: None,
            })
            .collect();
        record_transitions(tx, &writes, sink).await?;
        for (f, event) in events {
            let WebhookKind::Refund { outcome, .. } = &todo[f.at].webhook.kind else {
                continue;
            };
            results[f.at] = Some(refund_result(Applied::Transitioned(event), outcome));
        }
    }
    // A provider contradicting a final status is for an operator: flag the refund for
    // review (once) in the same transaction.
    let contradictions: Vec<(String, String)> = results
        .iter()
        .flatten()
        .filter_map(|d| match &d.applied {
            Applied::Contradiction {
                refund_reference,
                ours,
                theirs,
            } => Some((
                refund_reference.clone(),
                crate::domain::review::contradiction_reason(*ours, *theirs),
            )),
            _ => None,
        })
        .collect();
    super::review::flag(tx, &contradictions, sink).await?;
    results
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Corrupt("a webhook was left undecided".into())))
        .collect()
}

/// The inbox states an operator lists (`GET /v1/provider-webhooks?state=`).
pub const OPERATOR_STATES: [&str; 3] = ["parked", "unmatched", "contradiction"];

/// A provider webhook as an operator sees it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProviderWebhook)]
pub struct InboxRow {
    /// Provider wire name.
    pub provider: String,
    /// Inbox key: the provider's event id, or `sha256:` of the body.
    pub event_key: String,
    /// Which notification of the body.
    pub part: i32,
    /// PARKED, UNMATCHED or CONTRADICTION (the states an operator lists).
    #[schema(schema_with = crate::schema::api::inbox_state)]
    pub state: String,
    /// The refund it concerns, when known.
    pub refund_reference: Option<String>,
    /// What happened (the contradiction, why it is unmatched).
    pub detail: Option<String>,
    /// Tries while parked.
    pub park_attempts: i32,
    /// When it arrived.
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The body as received (text; bytes that are not UTF-8 are replaced).
    pub body: String,
}

/// Provider webhooks in `state` (one of [`OPERATOR_STATES`], any case), oldest first.
pub async fn list_for_operators(
    pool: &PgPool,
    state: &str,
    limit: i64,
) -> Result<Vec<InboxRow>, StoreError> {
    let state = state.to_ascii_uppercase();
    Ok(sqlx::query_as(
        "SELECT provider, event_key, part, state, refund_reference, detail, park_attempts,
             received_at, updated_at, convert_from(body, 'UTF8') AS body
         FROM provider_webhook_inbox
         WHERE state = $1 AND state IN ('PARKED', 'UNMATCHED', 'CONTRADICTION')
         ORDER BY received_at LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One provider webhook by provider and inbox key.
pub async fn show_for_operators(
    pool: &PgPool,
    provider: &str,
    event_key: &str,
) -> Result<Vec<InboxRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT provider, event_key, part, state, refund_reference, detail, park_attempts,
             received_at, updated_at, convert_from(body, 'UTF8') AS body
         FROM provider_webhook_inbox WHERE provider = $1 AND event_key = $2 ORDER BY part",
    )
    .bind(provider)
    .bind(event_key)
    .fetch_all(pool)
    .await?)
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

/// Tries a parked webhook again (re-parsed by the caller), in the caller's transaction.
/// `give_up` turns a still unmatched one into `UNMATCHED`, for an operator. A webhook no
/// longer parked (or held by another sweep) answers `Duplicate` and writes nothing.
pub async fn retry_parked(
    tx: &mut PgConnection,
    provider: ProviderName,
    key: &str,
    webhook: &ProviderWebhook,
    give_up: bool,
    sink: &EventSink,
) -> Result<Applied, StoreError> {
    let still_parked: Option<String> = sqlx::query_scalar(
        "SELECT ctid::text FROM provider_webhook_inbox
         WHERE provider = $1 AND event_key = $2 AND state = 'PARKED' FOR UPDATE SKIP LOCKED",
    )
    .bind(provider.as_str())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = still_parked else {
        return Ok(Applied::Duplicate);
    };
    let todo = [Pending {
        provider,
        key,
        row,
        webhook,
    }];
    let mut results = apply_all(tx, &todo, sink).await?;
    if give_up {
        results.iter_mut().for_each(Decided::give_up);
    }
    write_inbox(tx, &todo, &results, true).await?;
    results
        .pop()
        .map(|r| r.applied)
        .ok_or_else(|| StoreError::Corrupt("parked webhook answered nothing".into()))
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
