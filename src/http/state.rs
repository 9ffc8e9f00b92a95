//! What the handlers share.

use crate::broker::Topology;
use crate::config::Config;
use crate::pipeline::worker::Status;
use sqlx::PgPool;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Database.
    pub pool: PgPool,
    /// Worker status (readiness).
    pub status: Arc<Status>,
    /// Settings (admin token, broker URL for DLQ operations).
    pub config: Arc<Config>,
    /// Queue names.
    pub topology: Topology,
    /// Provider adapters (the webhook ingress verifies signatures with them).
    pub providers: crate::providers::Providers,
    /// The worker's context: operator actions (recheck) run the pipeline's own steps.
    pub context: crate::pipeline::Context,
}

impl AppState {
    /// The state for a worker's context (the usual way: one context wires everything).
    pub fn new(context: crate::pipeline::Context, status: Arc<Status>) -> Self {
        Self {
            pool: context.pool.clone(),
            status,
            config: context.config.clone(),
            topology: context.topology.clone(),
            providers: context.providers.clone(),
            context,
        }
    }
}
