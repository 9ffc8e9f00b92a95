//! JSON Schemas of the wire contract (the command and the event), generated from the Rust
//! types. The checked-in copies under `schemas/` are kept identical by a test; regenerate
//! them with `UPDATE_SCHEMAS=1 cargo test --lib schema`.

use crate::domain::{RefundCommand, RefundEvent};

/// Schema of a refund command.
pub fn command() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RefundCommand)).unwrap_or_default()
}

/// Schema of a status event.
pub fn event() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RefundEvent)).unwrap_or_default()
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
