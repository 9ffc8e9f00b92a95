//! The work in flight, for the sampled `/metrics` gauges.
//!
//! Every query here reads only rows that are still moving (PENDING refunds, unpublished
//! events, queued or failed merchant webhooks) through the partial index that already
//! exists for that state, so its cost follows the backlog, not the table. Counting final
//! refunds or delivered webhooks would scan tables that only grow (seconds per sample, on
//! every pod, at production sizes); their rates come from the counters recorded where the
//! transitions happen (`refund_worker_refund_events_total`, `refund_worker_webhook_attempts_total`).

use sqlx::PgPool;

/// A snapshot of the work in flight.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InFlight {
    /// PENDING refunds by provider (a refund stored without a provider counts under "").
    pub pending_by_provider: Vec<(String, i64)>,
    /// Age in seconds of the oldest PENDING refund (0 when there is none).
    pub oldest_pending_secs: f64,
    /// Events committed but not yet confirmed by the broker.
    pub outbox_pending: i64,
    /// Age in seconds of the oldest unpublished event (0 when there is none).
    pub outbox_lag_secs: f64,
    /// Merchant webhook deliveries waiting for an attempt.
    pub deliveries_queued: i64,
    /// Merchant webhook deliveries that gave up (candidates for the resend endpoint).
    pub deliveries_failed: i64,
    /// Refunds flagged for operator review.
    pub refunds_in_review: i64,
}

/// PENDING refunds by provider.
const PENDING_BY_PROVIDER: &str =
    "SELECT provider, count(*) FROM refunds WHERE status = 'PENDING' GROUP BY provider ORDER BY provider";

/// The other figures, in one round trip.
const AGES_AND_BACKLOGS: &str = "SELECT
     (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM refunds WHERE status = 'PENDING'),
     (SELECT count(*) FROM outbox WHERE published_at IS NULL),
     (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox WHERE published_at IS NULL),
     (SELECT count(*) FROM webhook_deliveries WHERE state = 'queued'),
     (SELECT count(*) FROM webhook_deliveries WHERE state = 'failed'),
     (SELECT count(*) FROM refunds WHERE review_since IS NOT NULL)";

/// The statements [`in_flight`] runs, so that a test can check their plans.
pub const STATEMENTS: [&str; 2] = [PENDING_BY_PROVIDER, AGES_AND_BACKLOGS];

/// Reads the snapshot. The `WHERE` clauses repeat the partial indexes' predicates
/// (`refunds_due`, `outbox_unpublished`, `webhook_deliveries_due`, `webhook_deliveries_failed`,
/// `refunds_in_review`)
/// word for word, which is what lets the planner use them.
pub async fn in_flight(pool: &PgPool) -> Result<InFlight, sqlx::Error> {
    let pending_by_provider: Vec<(Option<String>, i64)> =
        sqlx::query_as(PENDING_BY_PROVIDER).fetch_all(pool).await?;
    let (
        oldest_pending_secs,
        outbox_pending,
        outbox_lag_secs,
        deliveries_queued,
        deliveries_failed,
        refunds_in_review,
    ): (Option<f64>, i64, Option<f64>, i64, i64, i64) =
        sqlx::query_as(AGES_AND_BACKLOGS).fetch_one(pool).await?;
    Ok(InFlight {
        pending_by_provider: pending_by_provider
            .into_iter()
            .map(|(p, n)| (p.unwrap_or_default(), n))
            .collect(),
        oldest_pending_secs: oldest_pending_secs.unwrap_or(0.0).max(0.0),
        outbox_pending,
        outbox_lag_secs: outbox_lag_secs.unwrap_or(0.0).max(0.0),
        deliveries_queued,
        deliveries_failed,
        refunds_in_review,
    })
}
