//! The operator's reads: one refund with its history and provider calls, and pages of
//! refunds (keyset pagination, newest first).

use super::{RefundRow, RefundView, ROW_COLUMNS};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The operator's view of one refund: row, history, provider calls.
pub async fn show(pool: &PgPool, refund_reference: &str) -> Result<Option<RefundView>, StoreError> {
    let refund: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM refunds WHERE refund_reference = $1"
    ))
    .bind(refund_reference)
    .fetch_optional(pool)
    .await?;
    let Some(refund) = refund else {
        return Ok(None);
    };
    let transitions = sqlx::query_as(
        "SELECT from_status, to_status, cause, detail, event_id, occurred_at
         FROM refund_transitions WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(refund_reference)
    .fetch_all(pool)
    .await?;
    let attempts = sqlx::query_as(
        "SELECT call, outcome, detail, started_at, latency_ms
         FROM provider_attempts WHERE refund_reference = $1 ORDER BY id",
    )
    .bind(refund_reference)
    .fetch_all(pool)
    .await?;
    Ok(Some(RefundView {
        refund,
        transitions,
        attempts,
    }))
}

/// Largest page of [`list`] (a larger `limit` is refused by the admin API).
pub const MAX_PAGE: i64 = 500;
/// The page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 50;

/// Which refunds to list (the query of `GET /v1/refunds`).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListFilter {
    /// Only this status.
    #[param(schema_with = crate::schema::api::refund_status)]
    pub status: Option<String>,
    /// Only this provider.
    #[param(schema_with = crate::schema::api::provider)]
    pub provider: Option<String>,
    /// Only refunds created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only refunds created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only refunds in review (`true`) or not in review (`false`).
    pub review: Option<bool>,
    /// Only refunds whose reference starts with this text (literally: `%` and `_` are not
    /// wildcards).
    pub reference_prefix: Option<String>,
    /// Page size (1 to 500, default 50).
    #[param(schema_with = page_size)]
    pub limit: Option<i64>,
    /// Continue after this cursor (from the previous page's `nextCursor`).
    pub cursor: Option<String>,
}

fn page_size() -> utoipa::openapi::Object {
    crate::schema::api::limit(MAX_PAGE, DEFAULT_PAGE)
}

/// A page of refunds, newest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefundPage {
    /// The refunds.
    pub items: Vec<RefundRow>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `text` for a LIKE pattern, its wildcards (`%`, `_`) and the escape character (`\`) taken
/// literally.
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Lists refunds with keyset pagination on (created_at, refund_reference), so pages stay
/// stable while new refunds arrive.
pub async fn list(pool: &PgPool, f: &ListFilter) -> Result<RefundPage, StoreError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let after: Option<(DateTime<Utc>, String)> = match &f.cursor {
        None => None,
        Some(c) => {
            let bad = || StoreError::Invalid(format!("cursor `{c}` is not one this API issued"));
            let text = b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(bad)?;
            let (micros, reference) = text.split_once('|').ok_or_else(bad)?;
            let micros: i64 = micros.parse().map_err(|_| bad())?;
            Some((
                DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
                reference.to_owned(),
            ))
        }
    };
    let mut items: Vec<RefundRow> = sqlx::query_as(&format!(
        "SELECT {ROW_COLUMNS} FROM refunds
         WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR provider = $2)
           AND ($3::timestamptz IS NULL OR created_at >= $3)
           AND ($4::timestamptz IS NULL OR (created_at, refund_reference) < ($4, $5))
           AND ($7::timestamptz IS NULL OR created_at < $7)
           AND ($8::bool IS NULL OR (review_since IS NOT NULL) = $8)
           AND ($9::text IS NULL OR refund_reference LIKE $9 || '%' ESCAPE '\\')
         ORDER BY created_at DESC, refund_reference DESC LIMIT $6"
    ))
    .bind(&f.status)
    .bind(&f.provider)
    .bind(f.since)
    .bind(after.as_ref().map(|a| a.0))
    .bind(after.as_ref().map(|a| a.1.as_str()))
    .bind(limit + 1)
    .bind(f.until)
    .bind(f.review)
    .bind(f.reference_prefix.as_deref().map(like_literal))
    .fetch_all(pool)
    .await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|r| {
            b64.encode(format!(
                "{}|{}",
                r.created_at.timestamp_micros(),
                r.refund_reference
            ))
        })
    } else {
        None
    };
    Ok(RefundPage { items, next_cursor })
}
