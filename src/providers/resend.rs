//! Asking a provider to send its webhooks again, after our ingress missed some (an outage).
//!
//! Two providers document such a call without its path or body: BPN's "resend fail
//! webhook" and VA Services' "Send Notification" (a POST with a `transactionReference`).
//! Each adapter keeps its guess of path and body in one place, configurable
//! (`PROVIDER_<NAME>_RESEND_WEBHOOK_*` / `_SEND_NOTIFICATION_*`); the body is a JSON
//! template whose placeholder strings are replaced here by typed values (never spliced as
//! text, so a reference cannot change the JSON). The others document nothing of the kind
//! ([`WebhookResend::NotDocumented`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// What to ask the provider to send again.
#[derive(Debug, Clone)]
pub struct ResendWindow {
    /// Start of the window (inclusive).
    pub since: DateTime<Utc>,
    /// End of the window (exclusive).
    pub until: DateTime<Utc>,
    /// The payments of our refunds in the window (for providers that resend per payment).
    pub transaction_references: Vec<String>,
}

/// One resend request: what was (or, on a dry run, would be) sent and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProviderResendRequest)]
pub struct ResendRequest {
    /// `POST /path` and the body.
    pub request: String,
    /// Whether the provider accepted it (null on a dry run).
    pub ok: Option<bool>,
    /// The provider's answer, or why it failed (never a secret).
    pub detail: String,
}

/// What a provider offers for re-sending webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum WebhookResend {
    /// The provider's docs describe no way to re-send its webhooks.
    NotDocumented,
    /// The operator turned the call off (its path set to `off`).
    Disabled,
    /// The requests made (or planned, on a dry run).
    Requests {
        /// One per call.
        requests: Vec<ResendRequest>,
    },
}

/// A re-send call's configured path and body template (each a setting, else the
/// adapter's default); `None` when the path is turned off (`off`/`none`).
pub fn configured<'a>(
    path: Option<&'a str>,
    default_path: &'a str,
    body: Option<&'a str>,
    default_body: &'a str,
) -> Option<(&'a str, &'a str)> {
    let path = path.unwrap_or(default_path);
    (!super::is_disabled(path)).then(|| (path, body.unwrap_or(default_body)))
}

/// Fills a JSON body template: every string that is exactly `{name}` becomes `vars[name]`
/// (a typed JSON value); anything else stays as written. `Err` when the template is not JSON.
pub fn fill_template(template: &str, vars: &[(&str, Value)]) -> Result<Value, String> {
    let value: Value = serde_json::from_str(template)
        .map_err(|e| format!("the body template is not JSON: {e}"))?;
    Ok(fill(value, vars))
}

fn fill(value: Value, vars: &[(&str, Value)]) -> Value {
    match value {
        Value::String(s) => {
            let name = s.strip_prefix('{').and_then(|n| n.strip_suffix('}'));
            match name.and_then(|n| vars.iter().find(|(k, _)| *k == n)) {
                Some((_, v)) => v.clone(),
                None => Value::String(s),
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| fill(v, vars)).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, fill(v, vars))).collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_become_typed_values_and_cannot_inject_json() {
        let vars = [
            ("sinceMs", json!(1_700_000_000_000_i64)),
            ("transactionReference", json!("a\",\"x\":\"y")),
        ];
        let body = fill_template(
            r#"{"startTime":"{sinceMs}","ref":"{transactionReference}","nested":["{sinceMs}"],"keep":"{other}","n":1}"#,
            &vars,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({
                "startTime": 1_700_000_000_000_i64,
                "ref": "a\",\"x\":\"y",
                "nested": [1_700_000_000_000_i64],
                "keep": "{other}",
                "n": 1
            })
        );
        assert!(fill_template("{not json", &vars).is_err());
    }
}
