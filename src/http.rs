//! HTTP endpoints served by `run`: liveness and readiness for orchestrators.

use crate::pipeline::worker::Status;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    status: Arc<Status>,
}

/// The router: `GET /healthz` (the process is alive) and `GET /readyz` (database reachable
/// and broker connected, so it can take work).
pub fn router(pool: PgPool, status: Arc<Status>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(AppState { pool, status })
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let database = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let broker = state.status.broker_ready.load(Ordering::SeqCst);
    let code = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"database": database, "broker": broker})))
}
