//! The fan-out of a status change: what one change writes besides the refund row.
//!
//! Every status change writes, in the transaction that makes it, a history row, an outbox
//! event (published later by the relay) and, when the refund has a `callbackUrl` or a
//! default endpoint is configured, a merchant webhook delivery carrying the same event. A
//! review flag writes the first two only (merchants get webhooks for status changes, and a
//! flag changes no status). [`fanout`] is the pure half: it turns the changes into the rows
//! to write, as the columns of one set-based statement, in order (the outbox ids follow
//! it, and the relay publishes in id order). The store writes them (`record_transitions`),
//! looking each refund's `callbackUrl` up in the same statement.

use super::{RefundEvent, RefundStatus};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One status change to record: its history row, outbox event and merchant webhook.
#[derive(Debug, Clone, Copy)]
pub struct StatusChange<'a> {
    /// Status before (none for a refund's first event).
    pub from: Option<RefundStatus>,
    /// The event published for it.
    pub event: &'a RefundEvent,
    /// What caused it, for the history.
    pub cause: &'a str,
    /// The history's detail, when not the failure message (an operator's reason).
    pub detail: Option<&'a str>,
}

/// What a batch of status changes writes: one entry per change in every column, in the
/// changes' order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Fanout<'a> {
    /// The refund of each change.
    pub refund_reference: Vec<&'a str>,
    /// The history's previous status (none for a refund's first event).
    pub from_status: Vec<Option<&'static str>>,
    /// The history's (and the merchant webhook's) new status.
    pub to_status: Vec<&'static str>,
    /// The history's cause.
    pub cause: Vec<&'a str>,
    /// The history's detail: the given one, else the failure message.
    pub detail: Vec<Option<&'a str>>,
    /// The event's id (history, outbox and webhook rows share it).
    pub event_id: Vec<Uuid>,
    /// When the change happened (the history's time).
    pub occurred_at: Vec<DateTime<Utc>>,
    /// The outbox row's routing key.
    pub routing_key: Vec<&'static str>,
    /// The event as published and as the merchant webhook's body.
    pub payload: Vec<serde_json::Value>,
    /// The merchant webhook's provider.
    pub provider: Vec<Option<&'a str>>,
}

/// The rows `changes` write, in order. Fails only if an event does not serialize.
pub(crate) fn fanout<'a>(changes: &[StatusChange<'a>]) -> Result<Fanout<'a>, serde_json::Error> {
    let mut out = Fanout::default();
    for c in changes {
        let e = c.event;
        out.refund_reference.push(e.refund_reference.as_str());
        out.from_status.push(c.from.map(RefundStatus::as_str));
        out.to_status.push(e.status.as_str());
        out.cause.push(c.cause);
        out.detail.push(
            c.detail
                .or(e.failure_reason.as_ref().map(|r| r.message.as_str())),
        );
        out.event_id.push(e.event_id);
        out.occurred_at.push(e.occurred_at);
        out.routing_key.push(e.routing_key());
        out.payload.push(serde_json::to_value(e)?);
        out.provider.push(e.provider.as_deref());
    }
    Ok(out)
}

/// The history and outbox rows of review flags: each flagged refund's status unchanged
/// (`from` = `to`), the flag's reason as the detail, the `review_required` event.
pub(crate) fn review_flags<'a>(
    events: &'a [RefundEvent],
    cause: &'a str,
) -> Result<Fanout<'a>, serde_json::Error> {
    let changes: Vec<StatusChange<'a>> = events
        .iter()
        .map(|event| StatusChange {
            from: Some(event.status),
            event,
            cause,
            detail: event.review.as_ref().map(|r| r.reason.as_str()),
        })
        .collect();
    fanout(&changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{FailureCode, FailureReason, Review};

    fn event(reference: &str, status: RefundStatus) -> RefundEvent {
        RefundEvent {
            event_id: Uuid::new_v4(),
            refund_reference: reference.into(),
            provider: Some("bvnk".into()),
            transaction_reference: Some("T-1".into()),
            provider_reference: None,
            amount: Some("10.00".into()),
            currency: Some("EUR".into()),
            status,
            failure_reason: None,
            attempts: 1,
            occurred_at: DateTime::UNIX_EPOCH,
            review: None,
            resolution: None,
        }
    }

    #[test]
    fn every_change_fans_out_in_order_with_its_event() {
        let created = event("R-1", RefundStatus::Pending);
        let mut failed = event("R-2", RefundStatus::RefundFail);
        failed.failure_reason = Some(FailureReason::new(FailureCode::ProviderRejected, "no"));
        let changes = [
            StatusChange {
                from: None,
                event: &created,
                cause: "command received",
                detail: None,
            },
            StatusChange {
                from: Some(RefundStatus::Pending),
                event: &failed,
                cause: "provider outcome",
                detail: None,
            },
        ];
        let rows = fanout(&changes).unwrap();
        assert_eq!(rows.event_id.len(), 2);
        assert_eq!(rows.refund_reference, ["R-1", "R-2"]);
        assert_eq!(rows.from_status, [None, Some("PENDING")]);
        assert_eq!(rows.to_status, ["PENDING", "REFUND_FAIL"]);
        assert_eq!(rows.event_id, [created.event_id, failed.event_id]);
        assert_eq!(
            rows.routing_key,
            ["refund.status.pending", "refund.status.refund_fail"]
        );
        // The failure message is the history's detail unless a detail is given.
        assert_eq!(rows.detail, [None, Some("no")]);
        assert_eq!(rows.provider, [Some("bvnk"), Some("bvnk")]);
        assert_eq!(rows.payload[1], serde_json::to_value(&failed).unwrap());
    }

    #[test]
    fn a_given_detail_wins_over_the_failure_message() {
        let mut failed = event("R-3", RefundStatus::RefundFail);
        failed.failure_reason = Some(FailureReason::new(FailureCode::ProviderRejected, "no"));
        let change = StatusChange {
            from: Some(RefundStatus::Pending),
            event: &failed,
            cause: "resolved by operator",
            detail: Some("checked with the bank"),
        };
        assert_eq!(
            fanout(&[change]).unwrap().detail,
            [Some("checked with the bank")]
        );
        assert!(fanout(&[]).unwrap().event_id.is_empty());
    }

    #[test]
    fn a_review_flag_keeps_the_status_and_says_why() {
        let mut flagged = event("R-4", RefundStatus::Pending);
        flagged.review = Some(Review {
            reason: "open for 2h".into(),
            since: DateTime::UNIX_EPOCH,
        });
        let events = [flagged];
        let rows = review_flags(&events, "flagged for review").unwrap();
        assert_eq!(rows.from_status, [Some("PENDING")]);
        assert_eq!(rows.to_status, ["PENDING"]);
        assert_eq!(rows.detail, [Some("open for 2h")]);
        assert_eq!(rows.routing_key, ["refund.status.review_required"]);
        assert_eq!(rows.cause, ["flagged for review"]);
    }
}
