//! JSON Schemas of the wire contract (the command and the event), generated from the Rust
//! types. The checked-in copies under `schemas/` are kept identical by a test; regenerate
//! them with `UPDATE_SCHEMAS=1 cargo test --lib schema`.
//!
//! [`api`] holds the schemas of the admin API's enum-like text fields, which the OpenAPI
//! document (`http::openapi`) takes from the view types' derives.

use crate::domain::{RefundCommand, RefundEvent};

/// Schema of a refund command.
pub fn command() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RefundCommand)).unwrap_or_default()
}

/// Schema of a status event.
pub fn event() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RefundEvent)).unwrap_or_default()
}

/// The admin API's enum-like text fields (stored as text, so their Rust type is `String`),
/// for `#[schema(schema_with = ...)]` on the view types: each lists its values from the same
/// place the server takes them (a domain type, or the table's CHECK constraint).
pub mod api {
    use crate::domain::review::GuardSource;
    use crate::domain::{Phase, ProviderName, RefundStatus};
    use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
    use utoipa::openapi::{Ref, RefOr, Schema};

    /// The name of the event's schema among the document's components.
    pub const EVENT_SCHEMA: &str = "RefundEvent";

    fn one_of<'a>(values: impl IntoIterator<Item = &'a str>) -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(values))
    }

    /// The same values, or null.
    fn one_of_or_null<'a>(values: impl IntoIterator<Item = &'a str>) -> Object {
        let values: Vec<Option<&str>> = values.into_iter().map(Some).chain([None]).collect();
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::String,
                Type::Null,
            ]))
            .enum_values(Some(values))
            .build()
    }

    const STATUSES: [RefundStatus; 3] = [
        RefundStatus::Pending,
        RefundStatus::Completed,
        RefundStatus::RefundFail,
    ];

    /// `PENDING`, `COMPLETED`, `REFUND_FAIL`.
    pub fn refund_status() -> Object {
        one_of(STATUSES.map(RefundStatus::as_str)).build()
    }

    /// A final status an operator may resolve to: `COMPLETED`, `REFUND_FAIL`.
    pub fn final_status() -> Object {
        one_of(
            STATUSES
                .into_iter()
                .filter(|s| s.is_final())
                .map(RefundStatus::as_str),
        )
        .build()
    }

    /// A provider's wire name (`va_services`, `bpn`, `binance_pay`, `bvnk`).
    pub fn provider() -> Object {
        one_of(ProviderName::ALL.map(ProviderName::as_str)).build()
    }

    /// A provider's wire name, or null.
    pub fn provider_or_null() -> Object {
        one_of_or_null(ProviderName::ALL.map(ProviderName::as_str))
    }

    /// What is known of the provider's side: `NOT_SUBMITTED`, `SUBMITTING`, `ACCEPTED`, `FINAL`.
    pub fn phase() -> Object {
        one_of(
            [
                Phase::NotSubmitted,
                Phase::Submitting,
                Phase::Accepted,
                Phase::Final,
            ]
            .map(Phase::as_str),
        )
        .build()
    }

    /// What the over-refund guard judged a refund against, or null (refunds stored before it
    /// was recorded, and invalid commands).
    pub fn guard_source_or_null() -> Object {
        let mut schema = one_of_or_null(
            [
                GuardSource::Command,
                GuardSource::Ledger,
                GuardSource::Provider,
                GuardSource::None,
            ]
            .map(GuardSource::as_str),
        );
        schema.description = Some(
            "what the over-refund guard judged the refund against (null for refunds stored \
             before it was recorded, and invalid commands)"
                .into(),
        );
        schema
    }

    /// A provider call: `submit` or `status` (`provider_attempts.call`).
    pub fn attempt_call() -> Object {
        one_of(["submit", "status"]).build()
    }

    /// A merchant webhook delivery's state: `queued`, `delivered`, `failed`
    /// (`webhook_deliveries.state`).
    pub fn delivery_state() -> Object {
        one_of(["queued", "delivered", "failed"]).build()
    }

    /// The provider webhook states an operator lists: `PARKED`, `UNMATCHED`, `CONTRADICTION`.
    pub fn inbox_state() -> Object {
        one_of(["PARKED", "UNMATCHED", "CONTRADICTION"]).build()
    }

    /// The same states as asked for in `GET /v1/provider-webhooks?state=` (any case).
    pub fn operator_state() -> Object {
        one_of(["parked", "unmatched", "contradiction"]).build()
    }

    /// A recovery job's state: `running`, `done`, `failed`.
    pub fn job_status() -> Object {
        one_of(["running", "done", "failed"]).build()
    }

    /// An operator's reason for a resolution: not blank, at most
    /// [`crate::domain::review::MAX_REASON_CHARS`] characters.
    pub fn resolve_reason() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(crate::domain::review::MAX_REASON_CHARS))
            .description(Some(
                "kept in the refund's history and the event's resolution",
            ))
            .build()
    }

    /// A list's `limit`: 1 to `max`, `default` when absent.
    pub fn limit(max: i64, default: i64) -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(1))
            .maximum(Some(max))
            .default(Some(default.into()))
            .build()
    }

    /// The status event, as published: a reference to [`super::event`]'s schema, which
    /// `http::openapi` adds to the document's components.
    pub fn refund_event() -> RefOr<Schema> {
        RefOr::Ref(Ref::from_schema_name(EVENT_SCHEMA))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn check(file: &str, generated: serde_json::Value) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(file);
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        if std::env::var("UPDATE_SCHEMAS").is_ok() {
            std::fs::write(&path, &text).unwrap();
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            stored == text,
            "schemas/{file} is out of date with the Rust types; run UPDATE_SCHEMAS=1 cargo test --lib schema"
        );
    }

    #[test]
    fn checked_in_schemas_match_the_types() {
        check("refund-command.schema.json", command());
        check("refund-event.schema.json", event());
    }

    #[test]
    fn the_examples_are_valid_messages() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples");
        let cmd = std::fs::read(dir.join("command.json")).unwrap();
        let parsed = RefundCommand::parse(&cmd).expect("example command validates");
        assert_eq!(parsed.amount.to_string(), "25.17");
        for name in [
            "event-pending.json",
            "event-completed.json",
            "event-refund-fail.json",
            "event-review-required.json",
            "event-resolved-by-operator.json",
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let e: RefundEvent =
                serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(e.refund_reference, parsed.refund_reference, "{name}");
            // Read back exactly as written: no field is lost or renamed.
            let again = serde_json::to_value(&e).unwrap();
            let original: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(again, original, "{name}");
        }
        // The schema names every field of the example command.
        let schema = command();
        let example: serde_json::Value = serde_json::from_slice(&cmd).unwrap();
        for key in example.as_object().unwrap().keys() {
            assert!(
                schema["properties"][key].is_object(),
                "{key} missing from the command schema"
            );
        }
        for key in [
            "refundReference",
            "provider",
            "transactionReference",
            "amount",
            "currency",
            "reason",
        ] {
            assert!(
                schema["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k == key),
                "{key} not required"
            );
        }
    }
}
