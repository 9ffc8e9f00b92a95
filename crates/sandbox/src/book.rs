//! The refund book every simulated provider keeps: its payments, its refunds (found by key,
//! by payment and by the key tests force outcomes with), what is still refundable, replays,
//! forced outcomes, and which refunds owe a notification.
//!
//! A refund's stage is computed on read, so no background task moves refunds along: one
//! waiting for approval (BVNK's 4-eyes) waits, a rejected one is cancelled; otherwise it is
//! pending for `completion_delay` from its start (acceptance, or the approval), then failed
//! if a test forced that, else completed. Each provider names the stages its own way
//! ([`Book::new`]'s `words`). Failed and cancelled refunds no longer count against their
//! payment. A forced outcome may precede its refund, and set after the delay it rewrites the
//! stage at once (a late reversal).
//!
//! Notifications: a refund is watched ("unsettled") from when it is recorded, approved or
//! rejected, or its outcome is forced, until a stage other than pending is handed out for
//! it; only a watched refund is looked at, so the notify loop does not walk every refund
//! ever made. A stage already notified for the refund's key is not notified again.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use tokio::time::Instant;

use super::payins::Payments;
use super::{LedgerRefund, OutcomeStatus, Payment, Provider, SandboxConfig};

/// Where a refund is, in the providers' common terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for an approval decision (BVNK's 4-eyes).
    AwaitingApproval,
    /// Accepted, not final yet.
    Pending,
    Completed,
    Failed,
    /// Its approval was rejected.
    Cancelled,
}

impl Stage {
    /// Whether the refund's amount no longer counts against its payment.
    pub(super) fn releases_balance(self) -> bool {
        matches!(self, Self::Failed | Self::Cancelled)
    }
}

/// A refund's approval (BVNK's 4-eyes; the others never ask for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Approval {
    NotRequired,
    Pending,
    Approved { at: Instant, wall: DateTime<Utc> },
    Rejected,
}

/// One refund as a provider recorded it: what every provider keeps, plus its own `detail`.
pub(super) struct Refund<R> {
    /// What finds the refund on a replay: the idempotency key (BPN: the ledger key).
    pub key: String,
    /// The refunded payment's reference.
    pub payment: String,
    /// What the ledger and the admin routes call the refund (BVNK: `customerReference`).
    pub reference: String,
    /// What was refunded.
    pub amount: Decimal,
    /// The amount's text as the ledger shows it (as received, where the provider keeps it).
    pub amount_text: String,
    /// The raw body of the call that created the refund.
    pub request_body: String,
    pub submit_count: u32,
    pub mismatched_replays: u32,
    pub created_at: DateTime<Utc>,
    /// Monotonic twin of `created_at` for the completion delay (follows paused tokio time).
    pub accepted: Instant,
    pub approval: Approval,
    pub detail: R,
}

impl<R> Refund<R> {
    /// A refund accepted now, by its first call; the ledger calls it by `key`.
    pub(super) fn new(
        key: String,
        payment: String,
        (amount, amount_text): (Decimal, String),
        request_body: String,
        accepted: Instant,
        detail: R,
    ) -> Self {
        Self {
            reference: key.clone(),
            key,
            payment,
            amount,
            amount_text,
            request_body,
            submit_count: 1,
            mismatched_replays: 0,
            created_at: Utc::now(),
            accepted,
            approval: Approval::NotRequired,
            detail,
        }
    }

    /// When processing started (acceptance, or the approval); none while it cannot start.
    fn started(&self) -> Option<(Instant, DateTime<Utc>)> {
        match self.approval {
            Approval::NotRequired => Some((self.accepted, self.created_at)),
            Approval::Approved { at, wall } => Some((at, wall)),
            Approval::Pending | Approval::Rejected => None,
        }
    }
}

/// What a forced outcome is keyed by.
#[derive(Debug, Clone, Copy)]
pub(super) enum OutcomeKey {
    /// The refund's reference: one refund (or the refunds sharing a `customerReference`).
    Reference,
    /// The payment: every refund of it (BPN, whose refund call carries no reference of ours).
    Payment,
}

/// A provider's payments and refunds.
pub(super) struct Book<R> {
    provider: Provider,
    words: fn(Stage) -> &'static str,
    outcome_key: OutcomeKey,
    /// Whether the provider sends refund notifications (VA Services does not).
    notifies: bool,
    pub(super) payments: Payments,
    refunds: Indexed<Refund<R>>,
    outcomes: HashMap<String, OutcomeStatus>,
    /// Positions of the refunds per outcome key, ascending.
    by_outcome: HashMap<String, Vec<usize>>,
    /// Last stage each refund (by key) was notified with.
    notified: HashMap<String, Stage>,
    /// Positions of the refunds whose stage may still change into one not notified yet.
    unsettled: BTreeSet<usize>,
}

impl<R> Book<R> {
    /// An empty book of `provider`, which names stages with `words` and keys forced
    /// outcomes by `outcome_key`.
    pub(super) fn new(
        provider: Provider,
        words: fn(Stage) -> &'static str,
        outcome_key: OutcomeKey,
    ) -> Self {
        Self {
            provider,
            words,
            outcome_key,
            notifies: true,
            payments: Payments::default(),
            refunds: Indexed::default(),
            outcomes: HashMap::new(),
            by_outcome: HashMap::new(),
            notified: HashMap::new(),
            unsettled: BTreeSet::new(),
        }
    }

    /// The same book for a provider that sends no refund notifications.
    pub(super) fn without_refund_notifications(mut self) -> Self {
        self.notifies = false;
        self
    }

    /// The provider's word for a stage.
    pub(super) fn word(&self, stage: Stage) -> &'static str {
        (self.words)(stage)
    }

    fn outcome_key_of<'a>(&self, refund: &'a Refund<R>) -> &'a str {
        match self.outcome_key {
            OutcomeKey::Reference => &refund.reference,
            OutcomeKey::Payment => &refund.payment,
        }
    }

    /// The refund's stage now (see the module comment).
    pub(super) fn stage(&self, refund: &Refund<R>, config: &SandboxConfig, now: Instant) -> Stage {
        match refund.approval {
            Approval::Pending => return Stage::AwaitingApproval,
            Approval::Rejected => return Stage::Cancelled,
            Approval::NotRequired | Approval::Approved { .. } => {}
        }
        let Some((started, _)) = refund.started() else {
            return Stage::Pending;
        };
        if now.saturating_duration_since(started) < config.completion_delay {
            Stage::Pending
        } else if self.outcomes.get(self.outcome_key_of(refund)) == Some(&OutcomeStatus::Failed) {
            Stage::Failed
        } else {
            Stage::Completed
        }
    }

    /// Completion is dated start + delay, so repeated reads agree on the date.
    pub(super) fn completed_at(
        refund: &Refund<R>,
        stage: Stage,
        config: &SandboxConfig,
    ) -> Option<DateTime<Utc>> {
        if stage != Stage::Completed {
            return None;
        }
        let (_, wall) = refund.started()?;
        TimeDelta::from_std(config.completion_delay)
            .ok()
            .and_then(|delay| wall.checked_add_signed(delay))
    }

    /// The payment's amount; one never told about has the configured default.
    pub(super) fn payment_amount(&self, payment: &str, config: &SandboxConfig) -> Decimal {
        self.payments
            .get(payment)
            .map_or(config.default_payment_amount, |p| p.amount)
    }

    /// The payment with this reference, first recorded (and notified) as paid with the
    /// configured default amount in `currency` when never seen.
    pub(super) fn payment_or_default(
        &mut self,
        payment: &str,
        config: &SandboxConfig,
        currency: impl FnOnce() -> String,
    ) -> &mut Payment {
        let provider = self.provider;
        self.payments.get_or_insert_with(payment, || Payment {
            provider,
            transaction_reference: payment.to_owned(),
            amount: config.default_payment_amount,
            currency: currency(),
        })
    }

    /// What the payment's refunds that still count add up to (in progress included).
    pub(super) fn committed(&self, payment: &str, config: &SandboxConfig, now: Instant) -> Decimal {
        self.refunds
            .in_group(payment)
            .filter(|r| !self.stage(r, config, now).releases_balance())
            .map(|r| r.amount)
            .sum()
    }

    /// What is still refundable: the payment less its refunds that still count.
    pub(super) fn refundable(
        &self,
        payment: &str,
        config: &SandboxConfig,
        now: Instant,
    ) -> Decimal {
        (self.payment_amount(payment, config) - self.committed(payment, config, now))
            .max(Decimal::ZERO)
    }

    /// A call naming a known `key` is a replay: counted on that refund (and as a mismatch
    /// when `differs` from it says so); its position. `None`: a new refund.
    pub(super) fn replay(
        &mut self,
        key: &str,
        differs: impl FnOnce(&Refund<R>) -> bool,
    ) -> Option<usize> {
        let index = self.refunds.position(key)?;
        let provider = self.provider;
        if let Some(refund) = self.refunds.at_mut(index) {
            refund.submit_count += 1;
            if differs(refund) {
                refund.mismatched_replays += 1;
                tracing::warn!(
                    ?provider,
                    reference = %refund.reference,
                    "sandbox: replay differs from the accepted refund; answering the original"
                );
            }
        }
        Some(index)
    }

    /// Records a new refund (its key not known yet); its position.
    pub(super) fn record(&mut self, refund: Refund<R>) -> usize {
        let outcome_key = self.outcome_key_of(&refund).to_owned();
        let (key, group) = (refund.key.clone(), refund.payment.clone());
        let index = self.refunds.push(key, group, refund);
        self.by_outcome.entry(outcome_key).or_default().push(index);
        self.watch(index);
        index
    }

    /// Takes the payment's released (failed or cancelled) refunds off the book: BPN shows
    /// what stands, and a new refund of the order takes their place.
    pub(super) fn drop_released(&mut self, payment: &str, config: &SandboxConfig, now: Instant) {
        let released: Vec<usize> = self
            .refunds
            .positions_in_group(payment)
            .filter(|&i| {
                self.refunds
                    .at(i)
                    .is_some_and(|r| self.stage(r, config, now).releases_balance())
            })
            .collect();
        for index in released {
            let Some(refund) = self.refunds.at(index) else {
                continue;
            };
            let (key, payment) = (refund.key.clone(), refund.payment.clone());
            let outcome_key = self.outcome_key_of(refund).to_owned();
            self.refunds.remove(index, &key, &payment);
            if let Some(positions) = self.by_outcome.get_mut(&outcome_key) {
                positions.retain(|&p| p != index);
            }
        }
    }

    /// Forces how the refunds with this outcome key end (they may not exist yet); whether
    /// any does.
    pub(super) fn set_outcome(&mut self, key: &str, status: OutcomeStatus) -> bool {
        let positions = self.by_outcome.get(key).cloned().unwrap_or_default();
        // A forced outcome can rewrite a stage already notified: watch them again.
        for &index in &positions {
            self.watch(index);
        }
        self.outcomes.insert(key.to_owned(), status);
        !positions.is_empty()
    }

    /// The outcome forced for this key, if any.
    pub(super) fn outcome(&self, key: &str) -> Option<OutcomeStatus> {
        self.outcomes.get(key).copied()
    }

    /// Position of the first refund with this outcome key.
    pub(super) fn first_with_outcome_key(&self, key: &str) -> Option<usize> {
        self.by_outcome.get(key).and_then(|p| p.first().copied())
    }

    /// Looks at the refund again for notifications (its stage may change).
    pub(super) fn watch(&mut self, index: usize) {
        if self.notifies {
            self.unsettled.insert(index);
        }
    }

    /// The refunds owing a notification now, each with the stage to tell, handed out once.
    pub(super) fn take_due(&mut self, config: &SandboxConfig, now: Instant) -> Vec<(usize, Stage)> {
        let mut due = Vec::new();
        let mut settled = Vec::new();
        for &index in &self.unsettled {
            let Some(refund) = self.refunds.at(index) else {
                settled.push(index);
                continue;
            };
            let stage = self.stage(refund, config, now);
            // Pending turns into another stage with time alone: keep watching it. Any other
            // changes only by an approval decision or a forced outcome, which watch it again.
            if stage == Stage::Pending {
                continue;
            }
            settled.push(index);
            if self.notified.get(&refund.key) != Some(&stage) {
                due.push((index, stage));
            }
        }
        for &(index, stage) in &due {
            if let Some(refund) = self.refunds.at(index) {
                self.notified.insert(refund.key.clone(), stage);
            }
        }
        for index in settled {
            self.unsettled.remove(&index);
        }
        due
    }

    /// Makes every refund matching `which` that was notified be notified again; how many.
    pub(super) fn renotify(&mut self, which: impl Fn(&Refund<R>) -> bool) -> usize {
        let mut again = Vec::new();
        for (index, refund) in self.refunds.iter_positions() {
            if which(refund) && self.notified.remove(&refund.key).is_some() {
                again.push(index);
            }
        }
        for &index in &again {
            self.watch(index);
        }
        again.len()
    }

    /// The refunds and payments as the ledger shows them.
    pub(super) fn ledger(&self, config: &SandboxConfig) -> (Vec<LedgerRefund>, Vec<Payment>) {
        let now = Instant::now();
        let refunds = self
            .refunds
            .iter()
            .map(|r| {
                let stage = self.stage(r, config, now);
                LedgerRefund {
                    provider: self.provider,
                    refund_reference: r.reference.clone(),
                    transaction_reference: r.payment.clone(),
                    refund_amount: r.amount_text.clone(),
                    request_body: r.request_body.clone(),
                    status: self.word(stage).to_owned(),
                    submit_count: r.submit_count,
                    mismatched_replays: r.mismatched_replays,
                    forced_outcome: self.outcome(self.outcome_key_of(r)),
                    created_at: r.created_at,
                    completed_at: Self::completed_at(r, stage, config),
                }
            })
            .collect();
        (refunds, self.payments.values().cloned().collect())
    }

    /// The stage last notified for the refund with this key.
    #[cfg(test)]
    pub(super) fn notified(&self, key: &str) -> Option<Stage> {
        self.notified.get(key).copied()
    }

    /// How many refunds are watched for notifications.
    #[cfg(test)]
    pub(super) fn unsettled_len(&self) -> usize {
        self.unsettled.len()
    }

    /// The refund with this key.
    pub(super) fn get(&self, key: &str) -> Option<&Refund<R>> {
        self.refunds.get(key)
    }

    /// The refund at a position `record` or `replay` gave.
    pub(super) fn at(&self, index: usize) -> Option<&Refund<R>> {
        self.refunds.at(index)
    }

    pub(super) fn at_mut(&mut self, index: usize) -> Option<&mut Refund<R>> {
        self.refunds.at_mut(index)
    }

    /// The payment's refunds in arrival order.
    pub(super) fn in_group<'a>(
        &'a self,
        payment: &str,
    ) -> impl Iterator<Item = &'a Refund<R>> + 'a {
        self.refunds.in_group(payment)
    }

    /// How many refunds the payment has on the book.
    pub(super) fn group_len(&self, payment: &str) -> usize {
        self.refunds.group_len(payment)
    }

    /// The payment's latest refund, mutably.
    pub(super) fn latest_mut(&mut self, payment: &str) -> Option<&mut Refund<R>> {
        let index = self.refunds.positions_in_group(payment).last()?;
        self.refunds.at_mut(index)
    }

    /// Every refund in arrival order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Refund<R>> {
        self.refunds.iter()
    }

    /// How many refunds there are.
    pub(super) fn len(&self) -> usize {
        self.refunds.len()
    }
}

/// Records kept in arrival order, each also found in O(1) by its unique key (our reference
/// or idempotency key) and by the group it belongs to (its payment).
///
/// The simulators keep every refund ever made and look one up on nearly every API call; a
/// linear scan of a `Vec` made each call cost more the longer a run went on. Iteration
/// (ledgers, lists, pages) stays in arrival order, exactly as the `Vec` alone gave it. A
/// removed record leaves its position empty, so positions handed out stay valid.
pub(super) struct Indexed<T> {
    items: Vec<Option<T>>,
    live: usize,
    by_key: HashMap<String, usize>,
    /// Positions per group, ascending (arrival order).
    by_group: HashMap<String, Vec<usize>>,
}

impl<T> Default for Indexed<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            live: 0,
            by_key: HashMap::new(),
            by_group: HashMap::new(),
        }
    }
}

impl<T> Indexed<T> {
    /// Appends `item` under `key` and `group`; returns its position. Callers check for the
    /// key first (a replay); should one repeat anyway, the key keeps finding the earlier
    /// record, as the first-match scan this replaces did.
    pub(super) fn push(&mut self, key: String, group: String, item: T) -> usize {
        let index = self.items.len();
        self.items.push(Some(item));
        self.live += 1;
        self.by_key.entry(key).or_insert(index);
        self.by_group.entry(group).or_default().push(index);
        index
    }

    /// Removes the record at `index`, pushed under `key` and `group`, from every index; the
    /// position stays empty.
    pub(super) fn remove(&mut self, index: usize, key: &str, group: &str) -> Option<T> {
        let item = self.items.get_mut(index)?.take()?;
        self.live -= 1;
        if self.by_key.get(key) == Some(&index) {
            self.by_key.remove(key);
        }
        if let Some(positions) = self.by_group.get_mut(group) {
            positions.retain(|&i| i != index);
        }
        Some(item)
    }

    /// Position of the record with this key.
    pub(super) fn position(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The record with this key.
    pub(super) fn get(&self, key: &str) -> Option<&T> {
        self.position(key).and_then(|i| self.at(i))
    }

    /// The record at a position `push` or `position` gave.
    pub(super) fn at(&self, index: usize) -> Option<&T> {
        self.items.get(index).and_then(Option::as_ref)
    }

    /// The record at a position `push` or `position` gave, mutably.
    pub(super) fn at_mut(&mut self, index: usize) -> Option<&mut T> {
        self.items.get_mut(index).and_then(Option::as_mut)
    }

    /// Positions of the group's records in arrival order.
    pub(super) fn positions_in_group(&self, group: &str) -> impl Iterator<Item = usize> + '_ {
        self.by_group
            .get(group)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
    }

    /// The group's records in arrival order.
    pub(super) fn in_group<'a>(&'a self, group: &str) -> impl Iterator<Item = &'a T> + 'a {
        self.positions_in_group(group).filter_map(|i| self.at(i))
    }

    /// How many records the group has.
    pub(super) fn group_len(&self, group: &str) -> usize {
        self.by_group.get(group).map_or(0, Vec::len)
    }

    /// Every record in arrival order, with its position.
    pub(super) fn iter_positions(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| item.as_ref().map(|t| (i, t)))
    }

    /// Every record in arrival order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().filter_map(Option::as_ref)
    }

    /// How many records there are.
    pub(super) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_finds_by_key_and_group_in_arrival_order() {
        let mut refunds = Indexed::default();
        assert_eq!(refunds.push("r-1".into(), "tx-a".into(), 1), 0);
        assert_eq!(refunds.push("r-2".into(), "tx-b".into(), 2), 1);
        assert_eq!(refunds.push("r-3".into(), "tx-a".into(), 3), 2);
        // A repeated key keeps finding the first record, as a first-match scan did.
        assert_eq!(refunds.push("r-1".into(), "tx-a".into(), 4), 3);
        assert_eq!(refunds.get("r-1"), Some(&1));
        assert_eq!(refunds.position("r-3"), Some(2));
        assert_eq!(refunds.get("nope"), None);
        if let Some(r) = refunds.at_mut(1) {
            *r = 20;
        }
        if let Some(r) = refunds.at_mut(2) {
            *r = 30;
        }
        assert_eq!(refunds.at(1), Some(&20));
        assert_eq!(refunds.at(9), None);
        let group: Vec<_> = refunds.in_group("tx-a").copied().collect();
        assert_eq!(group, [1, 30, 4]);
        assert_eq!(refunds.group_len("tx-a"), 3);
        assert_eq!(refunds.in_group("tx-z").count(), 0);
        assert_eq!(refunds.group_len("tx-z"), 0);
        let all: Vec<_> = refunds.iter().copied().collect();
        assert_eq!(all, [1, 20, 30, 4]);
        assert_eq!(refunds.len(), 4);
    }

    #[test]
    fn a_removed_record_leaves_every_index_and_its_key_can_be_used_again() {
        let mut refunds = Indexed::default();
        refunds.push("o-1".into(), "o".into(), 1);
        refunds.push("o-2".into(), "o".into(), 2);
        assert_eq!(refunds.remove(0, "o-1", "o"), Some(1));
        assert_eq!(refunds.remove(0, "o-1", "o"), None);
        assert_eq!((refunds.len(), refunds.group_len("o")), (1, 1));
        assert_eq!(refunds.get("o-1"), None);
        assert_eq!(refunds.push("o-1".into(), "o".into(), 3), 2);
        assert_eq!(refunds.get("o-1"), Some(&3));
        assert_eq!(refunds.in_group("o").copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(
            refunds.iter_positions().collect::<Vec<_>>(),
            [(1, &2), (2, &3)]
        );
    }
}
