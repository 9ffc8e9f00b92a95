//! Retention: every `RETENTION_INTERVAL`, removes the operational rows older than their
//! retention ([`crate::store::retention`]), in small batches with pauses between them.

use super::Context;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows per table per statement.
const BATCH: i64 = 1_000;
/// Most batches per run: a backlog (the first run on an old database) is taken down over
/// several runs rather than in one long burst.
const MAX_BATCHES: usize = 200;
/// Pause between batches.
const PAUSE: Duration = Duration::from_millis(50);

/// Sweeps until shutdown.
pub async fn run(ctx: &Context, shutdown: &CancellationToken) {
    let every = ctx.config.retention.interval;
    loop {
        // First run after one interval: a starting worker has more urgent work.
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => return }
        let sweep = crate::store::retention::sweep(
            &ctx.pool,
            &ctx.config.retention,
            BATCH,
            MAX_BATCHES,
            PAUSE,
        );
        tokio::select! {
            result = sweep => match result {
                Ok(removed) if removed.total() > 0 => tracing::info!(
                    outbox = removed.outbox, inbox = removed.inbox,
                    webhook_attempts = removed.webhook_attempts,
                    provider_attempts = removed.provider_attempts,
                    "retention removed old operational rows"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention sweep failed; trying again later"),
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
