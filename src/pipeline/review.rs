//! Review: flags the refunds no machine can settle for an operator, runs an operator's
//! recheck through the dispatcher's own step, and applies an operator's resolution; each in
//! a transaction of its own (the store reads and writes inside it, the rules are
//! [`crate::domain::review`]'s).
//!
//! [`sweep`] is a step function (tests drive it); [`run`] loops it until shutdown. The
//! flag changes no status and stops nothing: the dispatcher keeps asking the provider (on
//! the `REVIEW_POLL` schedule) and a final answer still finishes the refund.

use super::{dispatch, Context};
use crate::domain::review::ResolveRequest;
use crate::store::refunds::{claim_one, ClaimOne};
use crate::store::review::{ResolveError, Resolved};
use crate::store::{self, RefundView, StoreError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most refunds flagged in one transaction.
const SWEEP_BATCH: i64 = 100;

/// Flags every refund overdue for review, a batch at a time. Returns how many were flagged.
pub async fn sweep(ctx: &Context) -> Result<usize, StoreError> {
    let mut flagged = 0;
    loop {
        let mut tx = ctx.pool.begin().await?;
        let review_after = ctx.config.review_after;
        let events =
            store::review::flag_overdue(&mut tx, review_after, SWEEP_BATCH, &ctx.sink).await?;
        tx.commit().await?;
        for e in &events {
            tracing::warn!(refund_reference = %e.refund_reference,
                reason = e.review.as_ref().map(|r| r.reason.as_str()).unwrap_or(""),
                "refund flagged for operator review");
        }
        flagged += events.len();
        if !events.is_empty() {
            ctx.event_committed();
        }
        if (events.len() as i64) < SWEEP_BATCH {
            return Ok(flagged);
        }
    }
}

/// How often [`run`] sweeps: often enough that a refund is flagged within a small part of
/// `REVIEW_AFTER` past its due time, never more than once a second nor less than a minute.
fn interval(review_after: Duration) -> Duration {
    (review_after / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Sweeps until shutdown.
pub async fn run(ctx: &Context, shutdown: &CancellationToken) {
    let every = interval(ctx.config.review_after);
    while !shutdown.is_cancelled() {
        if let Err(e) = sweep(ctx).await {
            tracing::warn!(error = %e, "review sweep failed; trying again later");
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => {} }
    }
}

/// Why a recheck did not run.
#[derive(Debug, thiserror::Error)]
pub enum RecheckError {
    /// No such refund.
    #[error("refund {0} not found")]
    NotFound(String),
    /// Already final.
    #[error("refund {reference} is already {status}: there is nothing to ask the provider")]
    Final {
        /// The refund.
        reference: String,
        /// Its final status.
        status: String,
    },
    /// A dispatcher is working on it right now.
    #[error("refund {0} is being processed right now; its answer is being recorded, look again in a moment")]
    Busy(String),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An operator's recheck: claims the refund now (due or not) and runs the dispatcher's own
/// step on it, which asks the provider for its status (or, for a refund the provider
/// certainly does not have yet, submits it), and records the answer as any step does.
/// Returns the refund as it is afterwards.
pub async fn recheck(
    ctx: &Context,
    reference: &str,
    reason: Option<&str>,
) -> Result<RefundView, RecheckError> {
    let claimed = match claim_one(&ctx.pool, reference, ctx.config.claim_lease).await? {
        Ok(c) => c,
        Err(ClaimOne::NotFound) => return Err(RecheckError::NotFound(reference.to_owned())),
        Err(ClaimOne::Final(status)) => {
            return Err(RecheckError::Final {
                reference: reference.to_owned(),
                status,
            })
        }
        Err(ClaimOne::Busy) => return Err(RecheckError::Busy(reference.to_owned())),
    };
    let mut tx = ctx.pool.begin().await.map_err(StoreError::from)?;
    store::review::note_action(&mut tx, reference, store::review::CAUSE_RECHECK, reason).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let lease_ends = Instant::now() + ctx.config.claim_lease;
    let outcome = dispatch::process_in_span(ctx, claimed, lease_ends).await;
    dispatch::record(ctx, std::slice::from_ref(&outcome)).await?;
    store::refunds::show(&ctx.pool, reference)
        .await?
        .ok_or_else(|| RecheckError::NotFound(reference.to_owned()))
}

/// Applies an operator's resolution of `reference` ([`store::review::resolve`]) in a
/// transaction of its own, committed only when it was applied (the admin API and the
/// command line).
pub async fn resolve(
    pool: &sqlx::PgPool,
    reference: &str,
    request: &ResolveRequest,
    sink: &store::EventSink,
) -> Result<Resolved, ResolveError> {
    let mut tx = pool.begin().await?;
    let resolved = store::review::resolve(&mut tx, reference, request, sink).await?;
    tx.commit().await?;
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_interval_follows_review_after_within_bounds() {
        assert_eq!(interval(Duration::from_secs(90)), Duration::from_secs(9));
        assert_eq!(interval(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(
            interval(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }
}
