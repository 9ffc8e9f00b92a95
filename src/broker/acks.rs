//! Acknowledging consumed messages a run at a time.
//!
//! The consumers settle deliveries out of order (intake batches run side by side, a dead
//! letter waits for its confirm), while one `basic.ack` with `multiple` acknowledges every
//! outstanding delivery up to its tag on the channel. [`AckWindow`] keeps the channel's
//! deliveries in tag order and sends that one ack when a run of settled deliveries at the
//! front of the window closes, instead of one ack per message. On a quorum queue every
//! ack is a Raft command the queue's members write to their log, so under load this turns
//! a batch's acks into one command (BENCHMARKS.md).
//!
//! What it must never do is acknowledge a message whose refund is not committed yet: a
//! delivery still being worked on stays at the front, and no ack passes it. An ack names
//! the highest delivery that is itself to be acknowledged, never one that was nacked, so
//! the broker always knows the tag. Acks leave in the order they were decided, so a lower
//! multiple ack never follows a higher one (the broker would close the channel for an
//! unknown tag).

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Acker, ChannelState, ErrorKind};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The deliveries of one consuming channel, from receipt until acknowledged.
#[derive(Default)]
pub struct AckWindow {
    window: Mutex<Window<Acker>>,
    /// Held from deciding an ack until it is sent, so acks leave in decision order.
    sending: tokio::sync::Mutex<()>,
}

impl AckWindow {
    /// A window for a new channel.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a delivery as it arrives. Every delivery of the channel must be
    /// registered, in the order the consumer yields them, before it can be settled; this
    /// never waits, so it is safe inside `now_or_never`.
    pub fn received(&self, delivery: &Delivery) {
        self.lock().receive(delivery.delivery_tag);
    }

    /// Settles a delivery: `ack` when it is to be acknowledged (its outcome is committed,
    /// or its dead letter confirmed), or not when the caller already nacked it. Sends one
    /// multiple ack if this closes a run at the front of the window.
    pub async fn settle(&self, delivery: &Delivery, ack: bool) -> Result<(), lapin::Error> {
        let _sending = self.sending.lock().await;
        let acker = ack.then(|| delivery.acker.clone());
        let to_send = self.lock().settle(delivery.delivery_tag, acker);
        match to_send {
            Some(acker) => sent(acker.ack(BasicAckOptions { multiple: true }).await?),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window<Acker>> {
        // A panic while holding this lock leaves plain data behind, never a half-made ack.
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An ack or nack's answer as an error when it was not sent. lapin answers `Ok(false)`
/// when the delivery's channel closed or failed first (or its acker was used), where lapin 2
/// answered an error: callers that count on it having left (the ack window, a replay
/// removing a dead letter) must not take that for success.
pub(crate) fn sent(sent: bool) -> Result<(), lapin::Error> {
    if sent {
        Ok(())
    } else {
        Err(ErrorKind::InvalidChannelState(
            ChannelState::Closed,
            "not sent: the delivery's channel closed or failed",
        )
        .into())
    }
}

/// A delivery's place in the window.
#[derive(Debug)]
enum Slot<A> {
    /// Being worked on.
    Open,
    /// Settled; acknowledged with this acker (or by a later one with `multiple`).
    Ack(A),
    /// Settled by a nack or reject the caller sent.
    Nacked,
}

/// The bookkeeping, apart from the channel (`A` is the acker; tests use a tag).
#[derive(Debug)]
struct Window<A> {
    slots: BTreeMap<u64, Slot<A>>,
}

impl<A> Default for Window<A> {
    fn default() -> Self {
        Self {
            slots: BTreeMap::new(),
        }
    }
}

impl<A> Window<A> {
    fn receive(&mut self, tag: u64) {
        self.slots.insert(tag, Slot::Open);
    }

    /// Marks `tag` settled and returns the acker to send with `multiple`, if a run closed
    /// at the front: the highest one to acknowledge in that run.
    fn settle(&mut self, tag: u64, ack: Option<A>) -> Option<A> {
        match self.slots.get_mut(&tag) {
            Some(slot @ Slot::Open) => {
                *slot = match ack {
                    Some(a) => Slot::Ack(a),
                    None => Slot::Nacked,
                }
            }
            // Settled twice, or never registered: nothing of ours to acknowledge. (An
            // ack for it could name a tag a multiple ack already covered.)
            _ => return None,
        }
        let mut highest = None;
        while let Some(entry) = self.slots.first_entry() {
            if matches!(entry.get(), Slot::Open) {
                break;
            }
            if let Slot::Ack(a) = entry.remove() {
                highest = Some(a);
            }
        }
        highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>) -> Window<u64> {
        let mut w = Window::default();
        tags.for_each(|t| w.receive(t));
        w
    }

    fn ack(w: &mut Window<u64>, tag: u64) -> Option<u64> {
        w.settle(tag, Some(tag))
    }

    #[test]
    fn in_order_settles_ack_each_run_with_its_last_tag() {
        let mut w = window(1..=3);
        assert_eq!(ack(&mut w, 1), Some(1));
        assert_eq!(ack(&mut w, 2), Some(2));
        assert_eq!(ack(&mut w, 3), Some(3));
        assert!(w.slots.is_empty());
    }

    #[test]
    fn nothing_passes_a_delivery_still_open() {
        let mut w = window(1..=5);
        // A later batch finishes first: nothing may be acknowledged past tag 1.
        for t in 2..=5 {
            assert_eq!(ack(&mut w, t), None);
        }
        // The earlier batch commits: one ack covers the five.
        assert_eq!(ack(&mut w, 1), Some(5));
        assert!(w.slots.is_empty());
    }

    #[test]
    fn an_ack_never_names_a_nacked_tag() {
        let mut w = window(1..=4);
        assert_eq!(ack(&mut w, 2), None);
        assert_eq!(w.settle(4, None), None);
        assert_eq!(w.settle(3, None), None);
        // Tags 3 and 4 were nacked: the run 1..=4 closes with an ack naming 2.
        assert_eq!(ack(&mut w, 1), Some(2));
        assert!(w.slots.is_empty());
        // A run of nacks alone sends nothing.
        let mut w = window(5..=6);
        assert_eq!(w.settle(5, None), None);
        assert_eq!(w.settle(6, None), None);
    }

    #[test]
    fn settling_twice_or_an_unknown_tag_acknowledges_nothing() {
        let mut w = window(1..=2);
        assert_eq!(ack(&mut w, 9), None);
        assert_eq!(ack(&mut w, 2), None);
        assert_eq!(ack(&mut w, 2), None);
        assert_eq!(ack(&mut w, 1), Some(2));
        assert_eq!(ack(&mut w, 1), None);
    }

    #[test]
    fn deliveries_received_later_wait_behind_the_front() {
        let mut w = window(1..=2);
        assert_eq!(ack(&mut w, 2), None);
        w.receive(3);
        assert_eq!(ack(&mut w, 1), Some(2));
        assert_eq!(w.slots.len(), 1);
        assert_eq!(ack(&mut w, 3), Some(3));
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever order deliveries are settled in: an ack is sent only for a closed run,
        /// each ack names a higher tag than the one before, every acknowledged tag is
        /// covered exactly when all tags up to it are settled, and at the end nothing is
        /// left.
        #[test]
        fn any_settle_order_acknowledges_exactly_the_settled_prefix(
            order in proptest::strategy::Just((1u64..=40).collect::<Vec<_>>()).prop_shuffle(),
            nacked in proptest::collection::hash_set(1u64..=40, 0..10),
        ) {
            let mut w = window(1..=40);
            let mut settled = std::collections::BTreeSet::new();
            let mut acked_upto = 0;
            for tag in order {
                let answer = if nacked.contains(&tag) { w.settle(tag, None) } else { ack(&mut w, tag) };
                settled.insert(tag);
                let prefix = (1..=40).take_while(|t| settled.contains(t)).last().unwrap_or(0);
                if let Some(upto) = answer {
                    prop_assert!(upto > acked_upto);
                    prop_assert!(upto <= prefix);
                    prop_assert!(!nacked.contains(&upto));
                    acked_upto = upto;
                }
                // Every tag to acknowledge in the settled prefix is covered by now.
                let last_to_ack = (1..=prefix).rev().find(|t| !nacked.contains(t)).unwrap_or(0);
                prop_assert_eq!(acked_upto, last_to_ack);
            }
            prop_assert!(w.slots.is_empty());
        }
    }
}
