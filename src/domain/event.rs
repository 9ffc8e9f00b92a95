//! Status events published on the `refunds` exchange.

use super::command::ProviderName;
use super::refund::{FailureReason, RefundStatus};
use super::review::{Resolution, Review};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// A refund status event, exactly as published (camelCase JSON) on `refunds` with routing key
/// `refund.status.<pending|completed|refund_fail>`, and as the body of merchant webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "RefundEvent")]
pub struct RefundEvent {
    /// Unique per event; a redelivered event keeps its id, so consumers dedupe on it.
    pub event_id: Uuid,
    /// The refund's reference.
    pub refund_reference: String,
    /// The provider's wire name. A string, because an `INVALID_COMMAND` event may carry a
    /// provider name we do not know.
    pub provider: Option<String>,
    /// The original payment.
    pub transaction_reference: Option<String>,
    /// The provider's id for the refund, once known.
    pub provider_reference: Option<String>,
    /// Exact amount as a string, with the scale the command used (`50.00` stays `50.00`);
    /// null only for an invalid command without a usable amount.
    pub amount: Option<String>,
    /// Currency code.
    pub currency: Option<String>,
    /// New status.
    pub status: RefundStatus,
    /// Why it failed (`REFUND_FAIL` only).
    pub failure_reason: Option<FailureReason>,
    /// Provider submit attempts so far.
    pub attempts: i32,
    /// When the status changed, RFC 3339 UTC.
    #[serde(serialize_with = "rfc3339_utc")]
    pub occurred_at: DateTime<Utc>,
    /// Set only on `refund.status.review_required` events: why the refund needs an
    /// operator, and since when. The status is unchanged by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// Set only on a final event an operator caused (`refunds resolve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

impl RefundEvent {
    /// The routing key this event is published with: a review flag has its own
    /// (`refund.status.review_required`), every other event its status's.
    pub fn routing_key(&self) -> &'static str {
        match self.review {
            Some(_) => super::review::REVIEW_ROUTING_KEY,
            None => self.status.routing_key(),
        }
    }

    /// Whether the provider named is one we know.
    pub fn provider_name(&self) -> Option<ProviderName> {
        self.provider.as_deref().and_then(ProviderName::parse)
    }
}

fn rfc3339_utc<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureCode;

    /// A failed refund's event, as the contract's example.
    fn failed() -> RefundEvent {
        RefundEvent {
            event_id: Uuid::nil(),
            refund_reference: "rf-1".into(),
            provider: Some("va_services".into()),
            transaction_reference: Some("t1".into()),
            provider_reference: None,
            amount: Some("25.17".into()),
            currency: Some("NGN".into()),
            status: RefundStatus::RefundFail,
            failure_reason: Some(FailureReason::new(FailureCode::InvalidCommand, "bad")),
            attempts: 0,
            occurred_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            review: None,
            resolution: None,
        }
    }

    #[test]
    fn event_json_matches_the_contract() {
        let e = failed();
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], "REFUND_FAIL");
        assert_eq!(v["failureReason"]["code"], "INVALID_COMMAND");
        assert_eq!(v["occurredAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["amount"], "25.17");
        assert!(v["providerReference"].is_null());
        assert_eq!(e.routing_key(), "refund.status.refund_fail");
        assert!(v.get("review").is_none() && v.get("resolution").is_none());
        let back: RefundEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_review_event_has_its_own_routing_key_and_object() {
        let since = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let e = RefundEvent {
            status: RefundStatus::Pending,
            failure_reason: None,
            review: Some(Review {
                reason: "still unknown".into(),
                since,
            }),
            ..failed()
        };
        assert_eq!(e.routing_key(), "refund.status.review_required");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["status"], "PENDING");
        assert_eq!(v["review"]["reason"], "still unknown");
        assert_eq!(v["review"]["since"], "2023-11-14T22:13:20.000Z");
    }
}
