//! Strict input for the admin API: request bodies and query strings with an unknown field
//! are refused (400) instead of being ignored.
//!
//! An ignored field is dangerous for operator actions: `{"all": true, "dry_run": true}` (snake
//! case instead of `dryRun`) used to replay dead letters for real. [`StrictJson`] and
//! [`StrictQuery`] are drop-in replacements for axum's `Json` and `Query` that check every
//! key against the fields of the target type first and name the closest known one:
//!
//! ```text
//! 400 {"error": {"code": "unknown_field", "message": "unknown field `dry_run`; did you mean `dryRun`?"}}
//! ```
//!
//! The known fields come from the type's own `Deserialize` impl ([`fields_of`]), so a field
//! added to a body is known without a second list to keep in step. The type must be a plain
//! struct: `#[serde(flatten)]` hides its fields from serde (and is why the bodies used to
//! accept anything), so a flattened type would refuse every field (add it to the test
//! `the_strict_bodies_and_queries_expose_their_fields` in `http/admin.rs`).
//!
//! A route without parameters takes `_: StrictQuery<NoQuery>`, so `POST ...?dryRun=true`
//! is refused too rather than run for real.
//!
//! [`one_of`] checks enum-like values (`status`, `provider`) the same way, naming the valid
//! values.

use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Json, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::{self, DeserializeOwned, Visitor};
use serde_json::Value;

/// A JSON request body whose keys must all be fields of `T` (400 `unknown_field` otherwise);
/// malformed JSON, a wrong content type or an over-large body keep their usual answers.
#[derive(Debug)]
pub(crate) struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<Value>::from_request(request, state)
            .await
            .map_err(ApiError::from_json_rejection)?;
        match &value {
            Value::Object(map) => check_keys(map.keys().map(String::as_str), fields_of::<T>())?,
            _ => return Err(bad_request("the body must be a JSON object")),
        }
        // Through axum's own path-tracking deserializer (not `from_value`), so a wrong type
        // names its field: "position: invalid type: string \"1\", expected usize".
        let bytes = serde_json::to_vec(&value).map_err(ApiError::internal)?;
        Json::<T>::from_bytes(&bytes)
            .map(|Json(t)| StrictJson(t))
            .map_err(|e| {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                bad_request(format!("invalid body: {detail}"))
            })
    }
}

/// No parameters: for a route that takes none, so `?dryRun=true` on a POST is refused rather
/// than ignored (the action would run for real).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct NoQuery {}

/// A query string whose parameters must all be fields of `T` (400 `unknown_field` otherwise).
#[derive(Debug)]
pub(crate) struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let keys: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, _)| k.into_owned())
            .collect();
        check_keys(keys.iter().map(String::as_str), fields_of::<T>())?;
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(t)| StrictQuery(t))
            .map_err(|e| {
                let text = e.body_text();
                let detail = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text);
                bad_request(format!("invalid query string: {detail}"))
            })
    }
}

/// Refuses the first of `keys` that is not in `known`, naming the closest known field.
pub(crate) fn check_keys<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    known: &[&str],
) -> Result<(), ApiError> {
    for key in keys {
        if known.contains(&key) {
            continue;
        }
        let message = match closest(key, known) {
            Some(near) => format!("unknown field `{key}`; did you mean `{near}`?"),
            None if known.is_empty() => {
                format!("unknown field `{key}`; this takes no parameters")
            }
            None => format!(
                "unknown field `{key}`; known fields: {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_field",
            message,
        ));
    }
    Ok(())
}

/// Parses an enum-like value (`status`, `provider`), or answers 400 naming the field and
/// every valid value (and the closest one, for a near miss such as `completed`).
pub(crate) fn one_of<T>(
    field: &str,
    value: &str,
    valid: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T, ApiError> {
    parse(value).ok_or_else(|| {
        let hint = closest(value, valid)
            .map(|near| format!("; did you mean `{near}`?"))
            .unwrap_or_default();
        bad_request(format!(
            "`{field}` must be one of {}, not `{value}`{hint}",
            valid.join(", ")
        ))
    })
}

/// The statuses a filter may name, in their wire form.
pub(crate) fn status_names() -> Vec<&'static str> {
    use crate::domain::RefundStatus;
    [
        RefundStatus::Pending,
        RefundStatus::Completed,
        RefundStatus::RefundFail,
    ]
    .map(RefundStatus::as_str)
    .to_vec()
}

/// The providers a filter may name, in their wire form.
pub(crate) fn provider_names() -> Vec<&'static str> {
    crate::domain::ProviderName::ALL
        .map(crate::domain::ProviderName::as_str)
        .to_vec()
}

/// Checks an optional `status` filter (`PENDING`, `COMPLETED`, `REFUND_FAIL`).
pub(crate) fn check_status(value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(v) => one_of(
            "status",
            v,
            &status_names(),
            crate::domain::RefundStatus::parse,
        )
        .map(drop),
        None => Ok(()),
    }
}

/// Checks an optional `provider` filter (`va_services`, `bpn`, `binance_pay`, `bvnk`).
pub(crate) fn check_provider(value: Option<&str>) -> Result<(), ApiError> {
    match value {
        Some(v) => one_of(
            "provider",
            v,
            &provider_names(),
            crate::domain::ProviderName::parse,
        )
        .map(drop),
        None => Ok(()),
    }
}

/// Checks `limit` is within `1..=max` (the range the OpenAPI document gives).
pub(crate) fn limit_in_range(limit: Option<i64>, max: i64) -> Result<(), ApiError> {
    match limit {
        Some(n) if !(1..=max).contains(&n) => Err(bad_request(format!(
            "`limit` must be between 1 and {max}, not {n}"
        ))),
        _ => Ok(()),
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The known name closest to `given`: the same up to case, `_` and `-` (`dry_run` for
/// `dryRun`), or within a small edit distance (a third of its length, at least 2, and less
/// than the whole of it). `None` when nothing is near enough to be a plausible typo.
pub(crate) fn closest<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let g = norm(given);
    let allowed = (g.len() / 3).max(2);
    known
        .iter()
        .map(|k| (levenshtein(&g, &norm(k)), *k))
        .filter(|(d, _)| *d <= allowed && *d < g.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance (insertions, deletions, substitutions), two rows of the usual table.
fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut row = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            row[j + 1] = substitute.min(prev[j + 1] + 1).min(row[j] + 1);
        }
        std::mem::swap(&mut prev, &mut row);
    }
    prev[b.len()]
}

/// The field names (as they appear in JSON, after `rename_all`) of the struct `T`, read from
/// its `Deserialize` impl: serde hands them to `deserialize_struct`, which this deserializer
/// records before giving up. Empty for anything that is not a plain struct.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut fields));
    fields
}

struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only the field names were wanted"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        message_id: Option<String>,
        dry_run: bool,
    }

    #[test]
    fn the_fields_come_from_the_type() {
        assert_eq!(fields_of::<Body>(), ["messageId", "dryRun"]);
        assert!(fields_of::<Value>().is_empty());
    }

    #[test]
    fn a_near_miss_names_the_closest_field() {
        let known = ["eventIds", "since", "until", "provider", "status", "dryRun"];
        assert_eq!(closest("dry_run", &known), Some("dryRun"));
        assert_eq!(closest("event_ids", &known), Some("eventIds"));
        assert_eq!(closest("sinec", &known), Some("since"));
        assert_eq!(closest("statsu", &known), Some("status"));
        assert_eq!(closest("completely_else", &known), None);
        assert_eq!(closest("x", &known), None);
        let error = check_keys(["since", "dry_run"], &known).unwrap_err();
        assert_eq!(
            error.message(),
            "unknown field `dry_run`; did you mean `dryRun`?"
        );
        let error = check_keys(["nonsense"], &["all"]).unwrap_err();
        assert_eq!(
            error.message(),
            "unknown field `nonsense`; known fields: `all`"
        );
        assert!(check_keys(["since", "dryRun"], &known).is_ok());
    }

    #[test]
    fn an_enum_value_outside_the_set_names_the_valid_ones() {
        let valid = ["PENDING", "COMPLETED", "REFUND_FAIL"];
        let parse = |s: &str| valid.contains(&s).then_some(());
        assert!(one_of("status", "COMPLETED", &valid, parse).is_ok());
        let error = one_of("status", "done", &valid, parse).unwrap_err();
        assert_eq!(
            error.message(),
            "`status` must be one of PENDING, COMPLETED, REFUND_FAIL, not `done`"
        );
        let error = one_of("status", "completed", &valid, parse).unwrap_err();
        assert!(error.message().ends_with("did you mean `COMPLETED`?"));
    }

    #[test]
    fn limits_outside_the_documented_range_are_refused() {
        assert!(limit_in_range(None, 500).is_ok());
        assert!(limit_in_range(Some(1), 500).is_ok());
        assert!(limit_in_range(Some(500), 500).is_ok());
        for bad in [0, -1, 501] {
            assert!(limit_in_range(Some(bad), 500).is_err(), "{bad}");
        }
    }
}
