//! Read-only queries of recovery and reconciliation: the refunds of a time window.

use super::StoreError;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

/// Most refunds one recovery or reconciliation looks at (a window that large is better
/// split; the caller says so).
pub(crate) const WINDOW_LIMIT: i64 = 100_000;

/// One refund of a window.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct WindowRefund {
    /// Our reference.
    pub refund_reference: String,
    /// Provider wire name.
    pub provider: Option<String>,
    /// The payment.
    pub transaction_reference: Option<String>,
    /// Exact amount.
    pub amount: Option<Decimal>,
    /// PENDING, COMPLETED, REFUND_FAIL.
    pub status: String,
    /// The provider's id, once known.
    pub provider_reference: Option<String>,
    /// When the command was accepted.
    pub created_at: DateTime<Utc>,
    /// The command as received.
    pub command: Value,
}

/// Refunds created in `[since, until)` (of `provider` when given), oldest first; `pending_only`
/// keeps the ones not final. `INVALID_COMMAND` refunds never reached a provider and are left
/// out.
pub(crate) async fn refunds_in_window(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    provider: Option<&str>,
    pending_only: bool,
) -> Result<Vec<WindowRefund>, StoreError> {
    let rows = sqlx::query_as::<_, WindowRefund>(
        "SELECT refund_reference, provider, transaction_reference, amount, status,
                provider_reference, created_at, command
         FROM refunds
         WHERE created_at >= $1 AND created_at < $2
           AND ($3::text IS NULL OR provider = $3)
           AND (NOT $4 OR status = 'PENDING')
           AND failure_code IS DISTINCT FROM 'INVALID_COMMAND'
         ORDER BY created_at, refund_reference
         LIMIT $5",
    )
    .bind(since)
    .bind(until)
    .bind(provider)
    .bind(pending_only)
    .bind(WINDOW_LIMIT)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The refunds of `provider` whose references are in `references` (the ones a provider's
/// own list names), whenever they were created.
pub(crate) async fn refunds_by_reference(
    pool: &PgPool,
    provider: &str,
    references: &[String],
) -> Result<Vec<WindowRefund>, StoreError> {
    let rows = sqlx::query_as::<_, WindowRefund>(
        "SELECT refund_reference, provider, transaction_reference, amount, status,
                provider_reference, created_at, command
         FROM refunds
         WHERE provider = $1 AND refund_reference = ANY($2)",
    )
    .bind(provider)
    .bind(references)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
