//! The transactional outbox: events written with the state change they describe, published
//! later by the relay with publisher confirms.

use super::StoreError;
use sqlx::PgConnection;

/// An event waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OutboxRow {
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

/// The relay's statement ([`take_batch`]): `$1` the batch, `$2` the exchange.
pub const TAKE_BATCH: &str = "UPDATE outbox SET published_at = now()
     WHERE id IN (SELECT id FROM outbox WHERE published_at IS NULL AND exchange = $2
                  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
     RETURNING id, event_id, exchange, routing_key, payload";

/// Takes up to `limit` unpublished events, oldest first, skipping rows another relay
/// holds, and stamps them published in the same statement. The stamp counts only if the
/// transaction commits, which the relay does after the broker confirmed every event; if it
/// rolls back (or the process dies first), the rows are unpublished again and are sent
/// again with the same `event_id`. One statement rather than `SELECT ... FOR UPDATE` and
/// then `UPDATE`: each row is written once (the update is its lock) and the relay makes
/// one round trip fewer per batch.
///
/// Only events for `exchange` (this worker's): a database shared by workers with other name
/// prefixes (demos, tests) may hold events for an exchange this broker does not have, and
/// publishing one of them would fail the whole batch again and again.
pub(crate) async fn take_batch(
    tx: &mut PgConnection,
    exchange: &str,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut rows = sqlx::query_as::<_, OutboxRow>(TAKE_BATCH)
        .bind(limit)
        .bind(exchange)
        .fetch_all(&mut *tx)
        .await?;
    // RETURNING follows the join's order, not the subquery's: publish in id order.
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}
