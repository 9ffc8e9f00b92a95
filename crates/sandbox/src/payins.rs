//! The payments each simulated provider knows, and the pay-in notifications they owe.
//!
//! A payment becomes known when a test or the admin API tells the sandbox about it
//! (`POST /sandbox/payments`, [`super::Sandbox::add_payment`]) or when a refund call names one
//! never seen (it then reads as paid with `default_payment_amount`). Either way the provider
//! queues one pay-in notification for it, status success, with its exact amount and currency;
//! the notify loop sends it with the same duplicates, reordering and forged signatures as the
//! refund notifications. Telling the sandbox the same payment again queues nothing; telling it
//! a different amount or currency queues the new one; VA Services' "Send Notification" queues
//! a known payment's again. Without `webhook_url` no notify loop runs, and nothing is queued.
//!
//! Each provider file writes its own payload and signature from its docs (`payin_outbound`
//! in `va_services.rs`, `bpn.rs`, `bvnk.rs`; `payin_body` in `binance_pay.rs`, RSA-signed
//! after the lock is released like its refund notifications). None of it comes from the
//! adapters (`refund_worker::providers`): the unit tests read the notifications back with them.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::Payment;

/// Payments by transaction reference, plus the ones whose pay-in notification is due.
#[derive(Default)]
pub(super) struct Payments {
    known: BTreeMap<String, Payment>,
    /// New or changed payments not handed to the notify loop yet, in the order they came.
    due: Vec<Payment>,
    /// Set when no notify loop will ever run (no `webhook_url`): nothing is queued, so the
    /// queue cannot grow for good.
    muted: bool,
}

impl Payments {
    /// Records `payment` (replacing one with the same reference); queues its notification
    /// unless the provider already knew it exactly so.
    pub(super) fn insert(&mut self, payment: Payment) {
        if !self.muted && self.known.get(&payment.transaction_reference) != Some(&payment) {
            self.due.push(payment.clone());
        }
        self.known
            .insert(payment.transaction_reference.clone(), payment);
    }

    /// The payment with this reference, first recorded (and notified) as `unseen()` makes it.
    pub(super) fn get_or_insert_with(
        &mut self,
        reference: &str,
        unseen: impl FnOnce() -> Payment,
    ) -> &mut Payment {
        match self.known.entry(reference.to_owned()) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let payment = unseen();
                if !self.muted {
                    self.due.push(payment.clone());
                }
                slot.insert(payment)
            }
        }
    }

    /// Queues the known payment's notification again (VA Services' "Send Notification");
    /// whether the payment is known.
    pub(super) fn notify_again(&mut self, reference: &str) -> bool {
        let Some(payment) = self.known.get(reference) else {
            return false;
        };
        if !self.muted {
            self.due.push(payment.clone());
        }
        true
    }

    /// Queues no notification from now on.
    pub(super) fn mute(&mut self) {
        self.muted = true;
        self.due.clear();
    }

    pub(super) fn get(&self, reference: &str) -> Option<&Payment> {
        self.known.get(reference)
    }

    pub(super) fn contains_key(&self, reference: &str) -> bool {
        self.known.contains_key(reference)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &String> {
        self.known.keys()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Payment> {
        self.known.values()
    }

    pub(super) fn len(&self) -> usize {
        self.known.len()
    }

    /// The payments whose pay-in notification is due, each handed out once.
    pub(super) fn take_due(&mut self) -> Vec<Payment> {
        std::mem::take(&mut self.due)
    }
}
