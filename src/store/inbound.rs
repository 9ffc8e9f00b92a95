//! Inbound provider webhooks: the inbox that deduplicates them, applying refund status
//! changes through the one transition function, the pay-ins ledger, and parked webhooks.
//!
//! Everything a webhook changes commits in one transaction with its inbox row (and, for a
//! status change, the history row and the outbox event), so a redelivered or replayed
//! webhook finds its inbox row and changes nothing.

use super::refunds::{
    event_for, finish_many, lock_in_order, record_transitions, FinishArrays, TransitionWrite,
};
use super::{EventSink, StoreError};
use crate::domain::{
    transition, FailureReason, Fee, ProviderName, ProviderOutcome, RefundEvent, RefundStatus,
    Transition,
};
use crate::providers::{ProviderWebhook, WebhookKind};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashMap;

/// What applying one provider webhook did.
// The event is the answer's whole point and is moved once; boxing it would cost an
// allocation per refund on the hot path to save stack space nobody runs short of.
#[allow(clippy::large_enum_variant)]
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
    let incoming = Incoming {
        provider,
        body,
        part,
        webhook,
    };
    receive_batch(pool, &[incoming], sink)
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("webhook batch answered nothing".into()))
}

/// Records parsed webhooks in the inbox and applies them, all in one transaction, as if
/// they had come one at a time in `items` order. Answers in `items` order.
///
/// About eight set-based statements per batch however many webhooks it holds: the inbox
/// insert (which finds the duplicates), one look-up of the refunds they name, one lock of
/// those refunds in key order, one update for in-progress statuses, one for final ones,
/// one [`record_transitions`](super::refunds) and the inbox's final states. A payment
/// status is one ledger upsert each.
pub async fn receive_batch(
    pool: &PgPool,
    items: &[Incoming<'_>],
    sink: &EventSink,
) -> Result<Vec<Applied>, StoreError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = items.iter().map(Incoming::key).collect();
    let mut tx = pool.begin().await?;
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
        tx.rollback().await?;
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
    let results = apply_all(&mut tx, &todo, sink).await?;
    write_inbox(&mut tx, &todo, &results, false).await?;
    tx.commit().await?;
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

/// What applying a webhook did, and what its inbox row says about it.
#[derive(Debug, Clone)]
struct Decided {
    applied: Applied,
    refund_reference: Option<String>,
    detail: Option<String>,
}

/// Writes each webhook's final inbox state (and, for a parked retry, counts the try).
async fn write_inbox(
    tx: &mut Transaction<'_, Postgres>,
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
    .execute(&mut **tx)
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

/// A refund that one of a webhook's keys names, as [`apply_all`] looks them up.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Candidate {
    /// Which webhook (its index among the batch's refund webhooks).
    n: i64,
    /// 1: by our reference, 2: by the provider's, 3: by the payment.
    via: i32,
    refund_reference: String,
    status: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// The refund a webhook names, from its candidates: by our reference, then the provider's
/// (the one still pending should it name several, as BPN's order id names every partial
/// refund of the order; else the oldest), then the payment (only when exactly one refund of
/// that payment is pending, or exactly one exists). `Err` says why it is ambiguous.
fn pick(mut candidates: Vec<&Candidate>, payment: Option<&str>) -> Result<Option<String>, String> {
    candidates.sort_by_key(|c| (c.via, c.created_at));
    match candidates.first() {
        None => return Ok(None),
        Some(c) if c.via < 3 => {
            let same: Vec<&&Candidate> = candidates.iter().filter(|x| x.via == c.via).collect();
            let pending: Vec<&&&Candidate> =
                same.iter().filter(|x| x.status == "PENDING").collect();
            return match (same.len(), pending.as_slice()) {
                (2.., [only]) => Ok(Some(only.refund_reference.clone())),
                _ => Ok(Some(c.refund_reference.clone())),
            };
        }
        Some(_) => {}
    }
    let pending: Vec<&Candidate> = candidates
        .iter()
        .copied()
        .filter(|c| c.status == "PENDING")
        .collect();
    match (candidates.as_slice(), pending.as_slice()) {
        ([only], _) | (_, [only]) => Ok(Some(only.refund_reference.clone())),
        (all, _) => Err(format!(
            "{} refunds of payment {} could match; the webhook names no refund",
            all.len(),
            payment.unwrap_or_default()
        )),
    }
}

/// What a batch's refund webhooks do to the refunds, decided under their locks.
#[derive(Default)]
struct Changes<'a> {
    /// In-progress statuses, one per refund (later ones merged into earlier ones).
    progress: Vec<Progress<'a>>,
    /// Final statuses, at most one per refund (the state machine sees to it).
    finishes: Vec<FinishPlan<'a>>,
}

/// What the provider says of a refund still in progress at its end.
#[derive(Debug, Clone, PartialEq)]
struct Progress<'a> {
    reference: String,
    provider_reference: Option<&'a str>,
    provider_status: &'a str,
    fee: Option<&'a Fee>,
}

/// One refund a webhook makes final.
struct FinishPlan<'a> {
    at: usize,
    from: RefundStatus,
    reference: String,
    status: RefundStatus,
    failure: Option<&'a FailureReason>,
    provider_reference: Option<&'a str>,
    provider_status: Option<&'a str>,
    fee: Option<&'a Fee>,
}

/// Applies webhooks that hold their inbox rows, in order, in `tx`: refunds are found in one
/// statement and locked in key order (so two batches sharing refunds cannot deadlock), the
/// state machine decides each webhook against the status its predecessors left, and the
/// changes are written in a few set-based statements.
async fn apply_all(
    tx: &mut Transaction<'_, Postgres>,
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
        let candidates: Vec<Candidate> = sqlx::query_as(
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
        .fetch_all(&mut **tx)
        .await?;
        for (n, (i, keys)) in refund_keys.iter().enumerate() {
            let mine: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| usize::try_from(c.n - 1).ok() == Some(n))
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
                .execute(&mut **tx)
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
        .execute(&mut **tx)
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
        let writes: Vec<TransitionWrite<'_>> = events
            .iter()
            .map(|(f, event)| TransitionWrite {
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

/// Decides one refund webhook against the refund's status as the batch has left it, and
/// notes the change to make in `changes`. `None` when it makes the refund final (its event
/// exists only once the update returned the row).
fn decide<'a>(
    found: Result<Option<String>, String>,
    outcome: &'a ProviderOutcome,
    current: &mut HashMap<String, RefundStatus>,
    at: usize,
    changes: &mut Changes<'a>,
) -> Option<Applied> {
    let reference = match found {
        Ok(Some(reference)) => reference,
        Ok(None) => return Some(Applied::Parked),
        Err(reason) => return Some(Applied::Unmatched { reason }),
    };
    // Named but not locked: it matched by a key that changed before the lock; try later.
    let Some(&from) = current.get(&reference) else {
        return Some(Applied::Parked);
    };
    let unchanged = || Applied::Unchanged {
        refund_reference: reference.clone(),
    };
    let (target, failure, provider_reference, provider_status, fee) = match outcome {
        ProviderOutcome::Succeeded {
            provider_reference,
            provider_status,
            fee,
        } => (
            RefundStatus::Completed,
            None,
            provider_reference.as_deref(),
            Some(provider_status.as_str()).filter(|s| !s.is_empty()),
            fee.as_ref(),
        ),
        ProviderOutcome::Failed(reason) => {
            (RefundStatus::RefundFail, Some(reason), None, None, None)
        }
        ProviderOutcome::Accepted {
            provider_reference,
            provider_status,
            fee,
        } => {
            if from == RefundStatus::Pending {
                let now = Progress {
                    reference: reference.clone(),
                    provider_reference: provider_reference.as_deref(),
                    provider_status,
                    fee: fee.as_ref(),
                };
                // One row per refund in the update: a later status merges into an earlier one
                // as the second of two single updates would have.
                match changes
                    .progress
                    .iter_mut()
                    .find(|p| p.reference == reference)
                {
                    Some(earlier) => {
                        *earlier = Progress {
                            provider_reference: now
                                .provider_reference
                                .or(earlier.provider_reference),
                            fee: now.fee.or(earlier.fee),
                            ..now
                        }
                    }
                    None => changes.progress.push(now),
                }
            }
            return Some(unchanged());
        }
        // Parsers classify webhooks as final or in progress; anything else says nothing.
        ProviderOutcome::Retryable { .. }
        | ProviderOutcome::Unknown { .. }
        | ProviderOutcome::NotFound => return Some(unchanged()),
    };
    match transition(from, target) {
        Transition::Apply => {
            current.insert(reference.clone(), target);
            changes.finishes.push(FinishPlan {
                at,
                from,
                reference,
                status: target,
                failure,
                provider_reference,
                provider_status,
                fee,
            });
            None
        }
        Transition::Unchanged | Transition::Stale => Some(unchanged()),
        Transition::Contradiction => Some(Applied::Contradiction {
            refund_reference: reference,
            ours: from,
            theirs: target,
        }),
    }
}

/// The inbox's view of a refund webhook's result: the refund it concerns and a detail.
fn refund_result(applied: Applied, outcome: &ProviderOutcome) -> Decided {
    let refund_reference = match &applied {
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
    Decided {
        applied,
        refund_reference,
        detail,
    }
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
    let still_parked: Option<String> = sqlx::query_scalar(
        "SELECT ctid::text FROM provider_webhook_inbox
         WHERE provider = $1 AND event_key = $2 AND state = 'PARKED' FOR UPDATE SKIP LOCKED",
    )
    .bind(provider.as_str())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = still_parked else {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    };
    let todo = [Pending {
        provider,
        key,
        row,
        webhook,
    }];
    let mut results = apply_all(&mut tx, &todo, sink).await?;
    if give_up {
        for r in results.iter_mut().filter(|r| r.applied == Applied::Parked) {
            let reason = "no refund appeared for this webhook".to_owned();
            r.detail = Some(reason.clone());
            r.applied = Applied::Unmatched { reason };
        }
    }
    write_inbox(&mut tx, &todo, &results, true).await?;
    tx.commit().await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureCode;

    fn candidate(n: i64, via: i32, reference: &str, status: &str, age_secs: i64) -> Candidate {
        Candidate {
            n,
            via,
            refund_reference: reference.into(),
            status: status.into(),
            created_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(1000 - age_secs),
        }
    }

    #[test]
    fn pick_prefers_our_reference_then_the_providers_then_the_payment() {
        let ours = candidate(1, 1, "R-ours", "COMPLETED", 0);
        let theirs = candidate(1, 2, "R-theirs", "PENDING", 5);
        let payment = candidate(1, 3, "R-payment", "PENDING", 9);
        assert_eq!(
            pick(vec![&payment, &theirs, &ours], Some("P")),
            Ok(Some("R-ours".into()))
        );
        assert_eq!(
            pick(vec![&payment, &theirs], Some("P")),
            Ok(Some("R-theirs".into()))
        );
        assert_eq!(
            pick(vec![&payment], Some("P")),
            Ok(Some("R-payment".into()))
        );
        assert_eq!(pick(vec![], Some("P")), Ok(None));
    }

    #[test]
    fn pick_takes_the_oldest_of_several_provider_matches() {
        let young = candidate(1, 2, "R-young", "PENDING", 1);
        let old = candidate(1, 2, "R-old", "PENDING", 50);
        assert_eq!(pick(vec![&young, &old], None), Ok(Some("R-old".into())));
    }

    #[test]
    fn of_several_provider_matches_the_one_pending_is_taken() {
        // BPN: every refund of an order has the order id as the provider's reference.
        let done = candidate(1, 2, "R-first", "COMPLETED", 50);
        let open = candidate(1, 2, "R-second", "PENDING", 1);
        assert_eq!(pick(vec![&done, &open], None), Ok(Some("R-second".into())));
        let also_done = candidate(1, 2, "R-second", "COMPLETED", 1);
        assert_eq!(
            pick(vec![&also_done, &done], None),
            Ok(Some("R-first".into()))
        );
    }

    #[test]
    fn pick_by_payment_needs_one_refund_or_one_pending() {
        let done = candidate(1, 3, "R-done", "COMPLETED", 9);
        let pending = candidate(1, 3, "R-pending", "PENDING", 5);
        let other = candidate(1, 3, "R-other", "PENDING", 1);
        assert_eq!(
            pick(vec![&done, &pending], Some("P-1")),
            Ok(Some("R-pending".into()))
        );
        let ambiguous = pick(vec![&done, &pending, &other], Some("P-1"));
        assert_eq!(
            ambiguous,
            Err("3 refunds of payment P-1 could match; the webhook names no refund".into())
        );
        let both_final = candidate(1, 3, "R-failed", "REFUND_FAIL", 2);
        assert!(pick(vec![&done, &both_final], Some("P-1")).is_err());
    }

    fn succeeded() -> ProviderOutcome {
        ProviderOutcome::Succeeded {
            provider_reference: Some("PR-1".into()),
            provider_status: "SUCCESS".into(),
            fee: None,
        }
    }

    fn accepted(reference: Option<&str>, status: &str) -> ProviderOutcome {
        ProviderOutcome::Accepted {
            provider_reference: reference.map(Into::into),
            provider_status: status.into(),
            fee: None,
        }
    }

    #[test]
    fn decide_sees_what_earlier_webhooks_of_the_batch_did() {
        let mut current = HashMap::from([("R-1".to_owned(), RefundStatus::Pending)]);
        let mut changes = Changes::default();
        let (done, failed) = (
            succeeded(),
            ProviderOutcome::Failed(FailureReason::new(FailureCode::ProviderRejected, "no")),
        );
        let found = || Ok(Some("R-1".to_owned()));
        // The first final status is applied (its event comes from the update) ...
        assert_eq!(decide(found(), &done, &mut current, 0, &mut changes), None);
        assert_eq!(current["R-1"], RefundStatus::Completed);
        // ... a repeat of it changes nothing, a contradicting one is raised, not applied.
        assert_eq!(
            decide(found(), &done, &mut current, 1, &mut changes),
            Some(Applied::Unchanged {
                refund_reference: "R-1".into()
            })
        );
        assert_eq!(
            decide(found(), &failed, &mut current, 2, &mut changes),
            Some(Applied::Contradiction {
                refund_reference: "R-1".into(),
                ours: RefundStatus::Completed,
                theirs: RefundStatus::RefundFail,
            })
        );
        // A late in-progress status after the final one writes nothing.
        let late = accepted(None, "PROCESSING");
        decide(found(), &late, &mut current, 3, &mut changes);
        assert!(changes.progress.is_empty());
        assert_eq!(changes.finishes.len(), 1);
        assert_eq!(changes.finishes[0].from, RefundStatus::Pending);
        assert_eq!(changes.finishes[0].provider_status, Some("SUCCESS"));
    }

    #[test]
    fn decide_merges_in_progress_statuses_of_one_refund() {
        let mut current = HashMap::from([("R-1".to_owned(), RefundStatus::Pending)]);
        let mut changes = Changes::default();
        let (first, second) = (
            accepted(Some("PR-9"), "RECEIVED"),
            accepted(None, "PROCESSING"),
        );
        for (at, outcome) in [&first, &second].into_iter().enumerate() {
            let applied = decide(
                Ok(Some("R-1".into())),
                outcome,
                &mut current,
                at,
                &mut changes,
            );
            assert_eq!(
                applied,
                Some(Applied::Unchanged {
                    refund_reference: "R-1".into()
                })
            );
        }
        assert_eq!(changes.progress.len(), 1);
        let merged = &changes.progress[0];
        assert_eq!(
            (
                merged.reference.as_str(),
                merged.provider_reference,
                merged.provider_status
            ),
            ("R-1", Some("PR-9"), "PROCESSING")
        );
    }

    #[test]
    fn decide_parks_what_it_cannot_find_and_keeps_ambiguity_for_an_operator() {
        let mut current = HashMap::new();
        let mut changes = Changes::default();
        let done = succeeded();
        assert_eq!(
            decide(Ok(None), &done, &mut current, 0, &mut changes),
            Some(Applied::Parked)
        );
        // Named, but not among the locked rows.
        assert_eq!(
            decide(
                Ok(Some("R-gone".into())),
                &done,
                &mut current,
                0,
                &mut changes
            ),
            Some(Applied::Parked)
        );
        assert_eq!(
            decide(
                Err("two match".into()),
                &done,
                &mut current,
                0,
                &mut changes
            ),
            Some(Applied::Unmatched {
                reason: "two match".into()
            })
        );
        assert!(changes.finishes.is_empty() && changes.progress.is_empty());
    }
}
