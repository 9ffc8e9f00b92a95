//! Webhook deliveries: queued in the transaction that produced the event (by
//! `refunds::record_transitions`), claimed with
//! `FOR UPDATE SKIP LOCKED`, one attempt row per HTTP call, re-queued by operators.

use super::StoreError;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use uuid::Uuid;

/// A delivery claimed for one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ClaimedDelivery {
    /// Row id.
    pub id: i64,
    /// The event's id (`webhook-id`).
    pub event_id: Uuid,
    /// Target URL.
    pub url: String,
    /// The event JSON.
    pub payload: serde_json::Value,
    /// Attempts made in this round.
    pub round_attempts: i32,
    /// The claim's token.
    pub claim_token: Uuid,
}

/// Claims due deliveries. A delivery waits while an earlier delivery of the same refund has
/// not been attempted yet, so a merchant never gets COMPLETED before PENDING was tried.
pub(crate) async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, StoreError> {
    Ok(sqlx::query_as(
        "WITH due AS (
             SELECT d.id FROM webhook_deliveries d
             WHERE d.state = 'queued' AND d.next_attempt_at <= now()
               AND NOT EXISTS (
                   SELECT 1 FROM webhook_deliveries e
                   WHERE e.refund_reference = d.refund_reference AND e.id < d.id
                     AND e.state = 'queued' AND e.attempts = 0)
             ORDER BY d.next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE webhook_deliveries w
         SET next_attempt_at = now() + make_interval(secs => $2), claim_token = $3, updated_at = now()
         FROM due WHERE w.id = due.id
         RETURNING w.id, w.event_id, w.url, w.payload, w.round_attempts, w.claim_token",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(Uuid::new_v4())
    .fetch_all(pool)
    .await?)
}

/// The result of one delivery attempt.
#[derive(Debug, Clone)]
pub(crate) struct AttemptResult {
    /// When it started.
    pub attempted_at: DateTime<Utc>,
    /// HTTP status, if a response came.
    pub status_code: Option<u16>,
    /// How long it took.
    pub latency: Duration,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
    /// Transport or policy error.
    pub error: Option<String>,
    /// What happens next.
    pub next: Next,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Delivered (2xx).
    Delivered,
    /// Try again after this delay.
    Retry(Duration),
    /// Give up: `failed` (schedule exhausted, 410 Gone, or refused by policy).
    Fail,
}

/// Records an attempt and the delivery's new state, under the claim's token, in the
/// caller's transaction. `false` (and nothing written) when the claim was lost.
pub(crate) async fn record_attempt(
    tx: &mut PgConnection,
    d: &ClaimedDelivery,
    r: &AttemptResult,
) -> Result<bool, StoreError> {
    let (state, delay) = match r.next {
        Next::Delivered => ("delivered", None),
        Next::Retry(delay) => ("queued", Some(delay.as_secs_f64())),
        Next::Fail => ("failed", None),
    };
    let updated = sqlx::query(
        "UPDATE webhook_deliveries SET state = $3, attempts = attempts + 1, round_attempts = round_attempts + 1,
             next_attempt_at = CASE WHEN $3 = 'queued' THEN now() + make_interval(secs => $4) END,
             claim_token = NULL, last_status_code = $5, last_error = $6, updated_at = now(),
             delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
         WHERE id = $1 AND claim_token = $2",
    )
    .bind(d.id)
    .bind(d.claim_token)
    .bind(state)
    .bind(delay.unwrap_or(0.0))
    .bind(r.status_code.map(i32::from))
    .bind(&r.error)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms, response_excerpt, error)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(d.id)
    .bind(r.attempted_at)
    .bind(r.status_code.map(i32::from))
    .bind(i32::try_from(r.latency.as_millis()).unwrap_or(i32::MAX))
    .bind(&r.response_excerpt)
    .bind(&r.error)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// A delivery as operators see it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Delivery)]
pub struct DeliveryRow {
    /// The event's id.
    pub event_id: Uuid,
    /// The refund.
    pub refund_reference: String,
    /// Provider.
    pub provider: Option<String>,
    /// The event's status.
    pub event_status: String,
    /// Target URL.
    pub url: String,
    /// queued, delivered or failed.
    #[schema(schema_with = crate::schema::api::delivery_state)]
    pub state: String,
    /// Attempts in all.
    pub attempts: i32,
    /// Next attempt (queued only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Last HTTP status.
    pub last_status_code: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// When the event was queued.
    pub created_at: DateTime<Utc>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

const DELIVERY_COLUMNS: &str =
    "event_id, refund_reference, provider, event_status, url, state, attempts,
    next_attempt_at, last_status_code, last_error, created_at, delivered_at";

/// Deliveries of one refund, oldest first.
pub async fn for_refund(
    pool: &PgPool,
    refund_reference: &str,
) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE refund_reference = $1 ORDER BY id"
    ))
    .bind(refund_reference)
    .fetch_all(pool)
    .await?)
}

/// The `callbackUrl` of a refund's command (none when it had none, or the refund is unknown).
pub(crate) async fn callback_url(
    pool: &PgPool,
    refund_reference: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar::<_, Option<String>>(
        "SELECT command->>'callbackUrl' FROM refunds WHERE refund_reference = $1",
    )
    .bind(refund_reference)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// Failed deliveries, newest first.
pub(crate) async fn list_failed(pool: &PgPool, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE state = 'failed' ORDER BY created_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Which failed deliveries to resend.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ResendFilter {
    /// Exactly these events.
    pub event_ids: Option<Vec<Uuid>>,
    /// Events queued at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Events queued before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only events with this status (`PENDING`, `COMPLETED`, `REFUND_FAIL`).
    pub status: Option<String>,
}

impl ResendFilter {
    /// A filter must name events or a window; "resend everything" is not a default.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match (&self.event_ids, &self.since) {
            (Some(ids), _) if ids.is_empty() => Err("eventIds is empty".into()),
            (Some(_), Some(_)) => {
                Err("give either eventIds or a window (since/until), not both".into())
            }
            (None, None) => {
                Err("give eventIds or since (with optional until, provider, status)".into())
            }
            _ => Ok(()),
        }
    }
}

const RESEND_WHERE: &str = "state = 'failed'
    AND ($1::uuid[] IS NULL OR event_id = ANY($1))
    AND ($2::timestamptz IS NULL OR created_at >= $2)
    AND ($3::timestamptz IS NULL OR created_at < $3)
    AND ($4::text IS NULL OR provider = $4)
    AND ($5::text IS NULL OR event_status = $5)";

/// Number of failed deliveries the filter matches.
pub(crate) async fn count_resendable(pool: &PgPool, f: &ResendFilter) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT count(*) FROM webhook_deliveries WHERE {RESEND_WHERE}"
    ))
    .bind(&f.event_ids)
    .bind(f.since)
    .bind(f.until)
    .bind(&f.provider)
    .bind(&f.status)
    .fetch_one(pool)
    .await?)
}

/// Re-queues up to `limit` failed deliveries matching the filter (a new round of the retry
/// schedule). Only `failed` ones are touched, so resending is idempotent: a delivery that
/// is already queued is not queued twice. Returns the event ids re-queued.
pub(crate) async fn resend(
    pool: &PgPool,
    f: &ResendFilter,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "UPDATE webhook_deliveries SET state = 'queued', round_attempts = 0, next_attempt_at = now(), updated_at = now()
         WHERE id IN (SELECT id FROM webhook_deliveries WHERE {RESEND_WHERE} ORDER BY id LIMIT $6 FOR UPDATE SKIP LOCKED)
         RETURNING event_id"
    ))
    .bind(&f.event_ids)
    .bind(f.since)
    .bind(f.until)
    .bind(&f.provider)
    .bind(&f.status)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Attempts of one delivery, oldest first.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRow {
    /// When.
    pub attempted_at: DateTime<Utc>,
    /// HTTP status.
    pub status_code: Option<i32>,
    /// Duration.
    pub latency_ms: i32,
    /// Start of the response body.
    pub response_excerpt: Option<String>,
    /// Error.
    pub error: Option<String>,
}

/// Attempts of the delivery of `event_id`.
pub async fn attempts(pool: &PgPool, event_id: Uuid) -> Result<Vec<AttemptRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.attempted_at, a.status_code, a.latency_ms, a.response_excerpt, a.error
         FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
         WHERE d.event_id = $1 ORDER BY a.id",
    )
    .bind(event_id)
    .fetch_all(pool)
    .await?)
}
