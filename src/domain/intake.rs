//! Intake judging: whether a command is a new refund, a repeat, or a conflict, and whether
//! a new one is accepted or refused (configuration, the over-refund guard).
//!
//! Pure: the store locks the batch's payments and reads its stored references, then
//! [`judge`] decides every command of the batch in arrival order, each as if it had come
//! alone (a command counts against its payment for the next one, and a reference seen
//! earlier in the batch makes a later one a repeat), and the store inserts what it says.
//! A command that failed validation is stored as a refused refund too ([`Invalid`]), so a
//! redelivery is recognised as a repeat.

use super::{
    FailureCode, FailureReason, Fallback, GuardSource, PaymentState, Phase, RefundCommand,
    RefundEvent, RefundStatus,
};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::HashMap;
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

/// One validated command to judge and store.
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

/// A payment's key: provider and transaction reference.
pub(crate) type PaymentKey = (String, String);

/// A reference already stored: its command's hash and its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The stored command's hash.
    pub command_hash: String,
    /// The refund's status.
    pub status: String,
}

/// A command whose reference is taken: the same command again is a duplicate, another one
/// a conflict (a reference identifies exactly one refund).
pub(crate) fn repeat(stored_hash: &str, stored_status: &str, command_hash: &str) -> Intake {
    if stored_hash == command_hash {
        Intake::Duplicate
    } else {
        Intake::Conflict {
            existing_status: stored_status.to_owned(),
        }
    }
}

/// A command judged new: stored as a refund, pending or refused.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRefund {
    /// Its index in the batch.
    pub at: usize,
    /// Why it is refused (stored as `REFUND_FAIL`), or none (stored as `PENDING`).
    pub refusal: Option<FailureReason>,
    /// What the guard judged it against (none for a refusal).
    pub guard: Option<GuardSource>,
    /// Whether to claim it for this worker's dispatcher as it is inserted.
    pub claim: bool,
}

impl NewRefund {
    /// The status it is stored with.
    pub fn status(&self) -> RefundStatus {
        match self.refusal {
            None => RefundStatus::Pending,
            Some(_) => RefundStatus::RefundFail,
        }
    }

    /// The phase it is stored with (before any claim).
    pub fn phase(&self) -> Phase {
        match self.refusal {
            None => Phase::NotSubmitted,
            Some(_) => Phase::Final,
        }
    }

    /// Its first event, for `cmd` stored at `occurred_at`.
    pub fn event(&self, cmd: &RefundCommand, occurred_at: DateTime<Utc>) -> RefundEvent {
        RefundEvent {
            event_id: Uuid::new_v4(),
            refund_reference: cmd.refund_reference.clone(),
            provider: Some(cmd.provider.as_str().into()),
            transaction_reference: Some(cmd.transaction_reference.clone()),
            provider_reference: None,
            amount: Some(cmd.amount.to_string()),
            currency: Some(cmd.currency.clone()),
            status: self.status(),
            failure_reason: self.refusal.clone(),
            attempts: 0,
            occurred_at,
            review: None,
            resolution: None,
        }
    }
}

/// A batch judged: an answer for each repeat, and the new refunds to store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Judged {
    /// In batch order: the answer of a repeat, `None` for a new refund (answered
    /// `Created` once it is stored).
    pub answers: Vec<Option<Intake>>,
    /// The new refunds, in batch order.
    pub fresh: Vec<NewRefund>,
}

/// A configured command's payment was not among those locked: the caller's bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payment {0:?} was not locked")]
pub(crate) struct Unlocked(pub PaymentKey);

/// Judges a batch in arrival order against the stored references (`stored`, by
/// reference; empty when the caller assumes all are new) and the locked payments, which
/// learn amounts and count accepted refunds as it goes. Up to `claim_limit` of the
/// accepted refunds are marked to be claimed.
pub(crate) fn judge(
    items: &[IntakeItem<'_>],
    stored: &HashMap<String, Stored>,
    payments: &mut HashMap<PaymentKey, PaymentState>,
    claim_limit: usize,
) -> Result<Judged, Unlocked> {
    let mut answers: Vec<Option<Intake>> = Vec::with_capacity(items.len());
    let mut fresh: Vec<NewRefund> = Vec::new();
    let mut claimed = 0;
    // The batch's own new references: hash and status.
    let mut in_batch: HashMap<&str, (&str, RefundStatus)> = HashMap::new();
    for (at, item) in items.iter().enumerate() {
        let reference = item.cmd.refund_reference.as_str();
        if let Some(s) = stored.get(reference) {
            answers.push(Some(repeat(&s.command_hash, &s.status, item.command_hash)));
            continue;
        }
        if let Some((hash, status)) = in_batch.get(reference) {
            answers.push(Some(repeat(hash, status.as_str(), item.command_hash)));
            continue;
        }
        let judged: Result<GuardSource, FailureReason> = if item.provider_configured {
            let key = (
                item.cmd.provider.as_str().to_owned(),
                item.cmd.transaction_reference.clone(),
            );
            match payments.get_mut(&key) {
                Some(payment) => payment.check(item.cmd, item.fallback),
                None => return Err(Unlocked(key)),
            }
        } else {
            Err(FailureReason::new(
                FailureCode::InvalidCommand,
                format!("provider {} is not configured", item.cmd.provider),
            ))
        };
        let (guard, refusal) = match judged {
            Ok(guard) => (Some(guard), None),
            Err(refusal) => (None, Some(refusal)),
        };
        let claim = refusal.is_none() && claimed < claim_limit;
        claimed += usize::from(claim);
        let new = NewRefund {
            at,
            refusal,
            guard,
            claim,
        };
        in_batch.insert(reference, (item.command_hash, new.status()));
        answers.push(None);
        fresh.push(new);
    }
    Ok(Judged { answers, fresh })
}

/// A command that failed validation, stored as a refused refund with whatever it said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    /// Its `provider`, as given.
    pub provider: Option<String>,
    /// Its `transactionReference`, as given.
    pub transaction_reference: Option<String>,
    /// Its amount, if usable (so the event says what was asked).
    pub amount: Option<Decimal>,
    /// Its `currency`, as given.
    pub currency: Option<String>,
    /// `INVALID_COMMAND` with the validation's message.
    pub failure: FailureReason,
}

impl Invalid {
    /// What is kept of the invalid command `raw`, refused with `message`.
    pub(crate) fn new(raw: &Value, message: &str) -> Self {
        let text = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            provider: text("provider"),
            transaction_reference: text("transactionReference"),
            amount: raw
                .get("amount")
                .and_then(|a| super::parse_amount(a).ok())
                .filter(|a| *a > Decimal::ZERO),
            currency: text("currency"),
            failure: FailureReason::new(FailureCode::InvalidCommand, message),
        }
    }

    /// Its one event: `REFUND_FAIL` at `occurred_at`.
    pub(crate) fn event(&self, refund_reference: &str, occurred_at: DateTime<Utc>) -> RefundEvent {
        RefundEvent {
            event_id: Uuid::new_v4(),
            refund_reference: refund_reference.to_owned(),
            provider: self.provider.clone(),
            transaction_reference: self.transaction_reference.clone(),
            provider_reference: None,
            amount: self.amount.map(|a| a.to_string()),
            currency: self.currency.clone(),
            status: RefundStatus::RefundFail,
            failure_reason: Some(self.failure.clone()),
            attempts: 0,
            occurred_at,
            review: None,
            resolution: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AmountSource;
    use serde_json::json;

    fn command(reference: &str, transaction: &str, amount: &str) -> (RefundCommand, Value) {
        let raw = json!({
            "refundReference": reference,
            "provider": "bvnk",
            "transactionReference": transaction,
            "amount": amount,
            "currency": "EUR",
            "reason": "test",
        });
        (RefundCommand::from_value(raw.clone()).unwrap(), raw)
    }

    fn item<'a>(cmd: &'a RefundCommand, raw: &'a Value, hash: &'a str) -> IntakeItem<'a> {
        IntakeItem {
            cmd,
            raw,
            command_hash: hash,
            provider_configured: true,
            fallback: Fallback::default(),
        }
    }

    fn payment(amount: Option<&str>) -> PaymentState {
        PaymentState {
            amount: amount.map(|a| a.parse().unwrap()),
            currency: Some("EUR".into()),
            refunded: Decimal::ZERO,
            ledger: None,
            learned: None,
            source: amount.map(|_| AmountSource::Command),
        }
    }

    fn key(transaction: &str) -> PaymentKey {
        ("bvnk".into(), transaction.into())
    }

    #[test]
    fn a_stored_reference_is_a_duplicate_or_a_conflict() {
        let (cmd, raw) = command("R-1", "T-1", "10.00");
        let stored = HashMap::from([(
            "R-1".to_owned(),
            Stored {
                command_hash: "h1".into(),
                status: "COMPLETED".into(),
            },
        )]);
        let mut payments = HashMap::from([(key("T-1"), payment(None))]);
        let items = [item(&cmd, &raw, "h1"), item(&cmd, &raw, "h2")];
        let judged = judge(&items, &stored, &mut payments, 10).unwrap();
        assert!(judged.fresh.is_empty());
        assert_eq!(
            judged.answers,
            [
                Some(Intake::Duplicate),
                Some(Intake::Conflict {
                    existing_status: "COMPLETED".into()
                })
            ]
        );
    }

    #[test]
    fn a_reference_repeated_in_the_batch_is_judged_as_if_it_came_later() {
        let (cmd, raw) = command("R-1", "T-1", "10.00");
        let mut payments = HashMap::from([(key("T-1"), payment(Some("100")))]);
        let items = [
            item(&cmd, &raw, "h1"),
            item(&cmd, &raw, "h1"),
            item(&cmd, &raw, "h2"),
        ];
        let judged = judge(&items, &HashMap::new(), &mut payments, 10).unwrap();
        assert_eq!(judged.fresh.len(), 1);
        assert_eq!(judged.fresh[0].at, 0);
        assert_eq!(judged.fresh[0].guard, Some(GuardSource::Command));
        assert_eq!(
            judged.answers,
            [
                None,
                Some(Intake::Duplicate),
                Some(Intake::Conflict {
                    existing_status: "PENDING".into()
                })
            ]
        );
        // Counted once against the payment.
        assert_eq!(payments[&key("T-1")].refunded, "10.00".parse().unwrap());
    }

    #[test]
    fn the_guard_refuses_what_exceeds_the_payment_counting_earlier_commands() {
        let (first, raw1) = command("R-1", "T-1", "60.00");
        let (second, raw2) = command("R-2", "T-1", "50.00");
        let (third, raw3) = command("R-3", "T-1", "40.00");
        let mut payments = HashMap::from([(key("T-1"), payment(Some("100")))]);
        let items = [
            item(&first, &raw1, "a"),
            item(&second, &raw2, "b"),
            item(&third, &raw3, "c"),
        ];
        let judged = judge(&items, &HashMap::new(), &mut payments, 10).unwrap();
        let statuses: Vec<RefundStatus> = judged.fresh.iter().map(NewRefund::status).collect();
        assert_eq!(
            statuses,
            [
                RefundStatus::Pending,
                RefundStatus::RefundFail,
                RefundStatus::Pending
            ]
        );
        let refused = &judged.fresh[1];
        assert_eq!(
            refused.refusal.as_ref().map(|r| r.code),
            Some(FailureCode::AmountExceedsRefundable)
        );
        assert_eq!((refused.guard, refused.claim), (None, false));
        assert_eq!(refused.phase(), Phase::Final);
        let event = refused.event(&second, DateTime::UNIX_EPOCH);
        assert_eq!(event.status, RefundStatus::RefundFail);
        assert_eq!(event.failure_reason, refused.refusal);
        assert_eq!(event.amount.as_deref(), Some("50.00"));
    }

    #[test]
    fn an_unconfigured_provider_is_refused_and_claims_stop_at_the_limit() {
        let (a, raw_a) = command("R-1", "T-1", "1.00");
        let (b, raw_b) = command("R-2", "T-1", "1.00");
        let (c, raw_c) = command("R-3", "T-1", "1.00");
        let mut payments = HashMap::from([(key("T-1"), payment(None))]);
        let mut unconfigured = item(&b, &raw_b, "b");
        unconfigured.provider_configured = false;
        let items = [item(&a, &raw_a, "a"), unconfigured, item(&c, &raw_c, "c")];
        let judged = judge(&items, &HashMap::new(), &mut payments, 1).unwrap();
        let claims: Vec<bool> = judged.fresh.iter().map(|f| f.claim).collect();
        assert_eq!(claims, [true, false, false]);
        assert_eq!(
            judged.fresh[1].refusal.as_ref().map(|r| r.message.as_str()),
            Some("provider bvnk is not configured")
        );
        assert_eq!(judged.fresh[0].guard, Some(GuardSource::None));
    }

    #[test]
    fn a_configured_command_needs_its_payment_locked() {
        let (cmd, raw) = command("R-1", "T-9", "1.00");
        let items = [item(&cmd, &raw, "a")];
        assert_eq!(
            judge(&items, &HashMap::new(), &mut HashMap::new(), 0),
            Err(Unlocked(key("T-9")))
        );
    }

    #[test]
    fn an_invalid_command_keeps_what_it_said() {
        let raw = json!({"provider": "nope", "amount": "-3", "currency": "EUR"});
        let invalid = Invalid::new(&raw, "provider is unknown");
        assert_eq!(invalid.provider.as_deref(), Some("nope"));
        assert_eq!(invalid.amount, None, "a negative amount is not kept");
        assert_eq!(invalid.failure.code, FailureCode::InvalidCommand);
        let event = invalid.event("R-x", DateTime::UNIX_EPOCH);
        assert_eq!(event.status, RefundStatus::RefundFail);
        assert_eq!(event.currency.as_deref(), Some("EUR"));
        assert_eq!(event.transaction_reference, None);
    }
}
