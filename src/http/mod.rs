//! HTTP served by `run`: health for orchestrators, the route of provider webhooks
//! (`POST /webhooks/{provider}`, handed to [`crate::provider_webhooks`]), and the admin API
//! for operators.
//!
//! The admin routes (`/v1/...`) exist only when `ADMIN_TOKEN` is set, and answer 401
//! without `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time). Errors are
//! JSON `{"error": {"code", "message"}}`; internal causes are logged, never returned.
//!
//! The files, each importing only those below it (this one wires them into [`router`]):
//!
//! ```text
//!  mod ─ the router: every route and the layers around them
//!   │
//!  openapi ─ the document, from the handlers' own annotations
//!   │
//!  health ─ /healthz, /readyz, /metrics     admin ─ /v1/... and the token gate
//!  ingress ─ /webhooks/{provider}: rate, body, then crate::provider_webhooks
//!   │
//!  validation ─ strict bodies and queries of the admin API
//!   │
//!  error, state, limits, serve ─ the error shape, what handlers share, per-source limits,
//!                                the connection-level server
//! ```

mod admin;
mod error;
mod health;
mod ingress;
mod limits;
pub mod openapi;
mod serve;
mod state;
pub(crate) mod validation;

use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::Router;

pub(crate) use admin::REFUNDS_MAX_LIMIT;
pub(crate) use error::ApiError;
pub use serve::{serve, ServeLimits};
pub use state::AppState;

/// Every route, as (method, path) in OpenAPI notation; a test checks the document covers them.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("post", "/webhooks/{provider}"),
    ("get", "/v1/refunds"),
    ("get", "/v1/refunds/{refundReference}"),
    ("post", "/v1/refunds/{refundReference}/recheck"),
    ("post", "/v1/refunds/{refundReference}/resolve"),
    ("get", "/v1/provider-webhooks"),
    ("post", "/v1/webhooks/resend"),
    ("get", "/v1/webhooks/failed"),
    ("get", "/v1/dlq/{queue}"),
    ("post", "/v1/dlq/{queue}/replay"),
    ("post", "/v1/recover"),
    ("get", "/v1/recover/{id}"),
    // The operations console (crate::console), with the admin API only.
    ("get", "/console"),
    ("get", "/console/console.js"),
    ("get", "/console/console.css"),
];

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let public = health::routes().route("/openapi.json", get(openapi::serve));
    let ingress = ingress::routes(&state);
    let router = if state.config.admin_token.is_some() {
        public
            .merge(admin::routes(&state))
            .merge(crate::console::routes())
    } else {
        public
    };
    router
        .with_state(state)
        .merge(ingress)
        // Unknown routes (and `/v1/...` while the admin API is off) answer in the error
        // shape too.
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // Outermost, so what axum and tower-http answer in plain text or with an empty body
        // (405, the ingress's 408, extractor rejections) keeps the error shape as well.
        .layer(middleware::from_fn(error::json_errors))
}
