//! The transactional outbox: events written with the state change they describe, published
//! later by the relay with publisher confirms.

use super::StoreError;
use sqlx::{PgPool, Postgres, Transaction};

/// An event waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    /// Sequence number (publication order).
    pub id: i64,
    /// The event's id, also the AMQP `message_id`.
    pub event_id: uuid::Uuid,
    /// Target exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The event JSON.
    pub payload: serde_json::Value,
}

/// Locks up to `limit` unpublished events, oldest first, skipping rows another relay holds.
pub async fn lock_batch(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(sqlx::query_as::<_, OutboxRow>(
        "SELECT id, event_id, exchange, routing_key, payload FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Marks events as published (after the broker confirmed them).
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Number of events not yet published (outbox lag).
pub async fn pending_count(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}
