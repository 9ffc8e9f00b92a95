//! HTTP served by `run`: health for orchestrators, the provider webhook ingress
//! (`POST /webhooks/{provider}`, see [`crate::webhooks::ingress`]), and the admin API for
//! operators.
//!
//! The admin routes (`/v1/...`) exist only when `ADMIN_TOKEN` is set, and answer 401
//! without `Authorization: Bearer <ADMIN_TOKEN>` (compared in constant time). Errors are
//! JSON `{"error": {"code", "message"}}`; internal causes are logged, never returned.

use crate::broker::{self, dlq, Topology};
use crate::config::Config;
use crate::http_validation::{self as validation, NoQuery, StrictJson, StrictQuery};
use crate::pipeline::worker::Status;
use crate::store::{self, webhooks::ResendFilter, StoreError};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use subtle::ConstantTimeEq;

mod limits;
mod serve;

use limits::{AuthFailures, IngressLimit};
pub use serve::{serve, ServeLimits};

/// The OpenAPI document of these routes (kept in the repository at `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

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

/// Largest `limit` of `GET /v1/refunds` (as docs/openapi.json says).
pub const REFUNDS_MAX_LIMIT: i64 = 500;
/// Largest `limit` of the other admin lists (failed webhooks, dead letters).
pub const LIST_MAX_LIMIT: i64 = 1000;

/// Largest admin request body.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;
/// Whole-request limit of the admin API.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let public = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::metrics::render(),
                )
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        );
    let admin = Router::new()
        .route("/v1/refunds", get(list_refunds))
        .route("/v1/refunds/{refundReference}", get(get_refund))
        .route(
            "/v1/refunds/{refundReference}/recheck",
            post(recheck_refund),
        )
        .route(
            "/v1/refunds/{refundReference}/resolve",
            post(resolve_refund),
        )
        .route("/v1/provider-webhooks", get(list_provider_webhooks))
        .route("/v1/webhooks/resend", post(resend_webhooks))
        .route("/v1/webhooks/failed", get(failed_webhooks))
        .route("/v1/dlq/{queue}", get(list_dlq))
        .route("/v1/dlq/{queue}/replay", post(replay_dlq))
        .route("/v1/recover", post(start_recovery))
        .route("/v1/recover/{id}", get(get_recovery))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT))
        // Dead-letter replays of large queues take the longest; nothing should take longer.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            ADMIN_TIMEOUT,
        ))
        .layer(middleware::from_fn_with_state(
            TokenGate {
                state: state.clone(),
                failures: AuthFailures::new(),
            },
            require_token,
        ))
        .layer(middleware::from_fn(json_errors));
    let limit = IngressLimit::new(
        state.config.ingress_rate_per_sec,
        state.config.ingress_burst,
    );
    let ingress = Router::new()
        .route(
            "/webhooks/{provider}",
            post(crate::webhooks::ingress::receive),
        )
        .layer(DefaultBodyLimit::max(state.config.ingress_max_bytes))
        .layer(middleware::from_fn_with_state(limit, limit_ingress))
        // A provider that cannot send its body within this (WEBHOOK_INGRESS_TIMEOUT_MS,
        // default 15 s) gets 408; the broker's own confirm wait (5 s) fits well inside.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.ingress_timeout,
        ))
        .with_state(crate::webhooks::ingress::Ingress::new(
            state.providers.clone(),
            state.config.amqp_url.clone(),
            state.topology.clone(),
        ));
    let router = if state.config.admin_token.is_some() {
        public.merge(admin).merge(crate::console::routes())
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
        .layer(middleware::from_fn(json_errors))
}

/// Refuses a source over its rate with 429 and `Retry-After`, before reading the body.
async fn limit_ingress(
    State(limit): State<IngressLimit>,
    request: Request,
    next: Next,
) -> Response {
    use governor::clock::Clock;
    // The TCP peer (IPv6 by its /64); the table is pruned in the background.
    let source = limits::peer_key(&request);
    match limit.0.check_key(&source) {
        Ok(()) => next.run(request).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            crate::metrics::provider_webhook_received("any", "rate_limited");
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many webhooks from this address; retry later",
            )
            .into_response();
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            response
        }
    }
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The message (tests and logs).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A body the JSON extractor refused: too large (413), not JSON (415), or malformed (400).
    pub(crate) fn from_json_rejection(e: axum::extract::rejection::JsonRejection) -> Self {
        let (status, code) = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        Self::new(status, code, e.body_text())
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "admin API internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the worker's logs",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(m) => Self::new(StatusCode::BAD_REQUEST, "bad_request", m),
            other => Self::internal(other),
        }
    }
}

/// Keeps the error contract (`{"error": {"code", "message"}}`) for the rejections axum's
/// extractors answer in plain text (a body over the limit, malformed JSON, a wrong content
/// type): the status stays, the text (which names the problem, never internals) becomes the
/// message.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        _ => "client_error",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("client error")
            .to_owned()
    } else {
        text
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    // Keep what else was said (`Allow` on a 405, `Retry-After`), not the old body's framing.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// What the admin token check needs: the settings, and the failed attempts per source.
#[derive(Clone)]
struct TokenGate {
    state: AppState,
    failures: AuthFailures,
}

/// Checks the bearer token. A source that failed too often recently gets 429 with
/// `Retry-After` before its token is even compared, so guessing is slow and a guess that
/// happens to be right during the lockout is not confirmed.
async fn require_token(
    State(gate): State<TokenGate>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let state = &gate.state;
    let Some(expected) = &state.config.admin_token else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "admin API disabled")
            .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let source = limits::peer_key(&request);
    if let Some(wait) = gate.failures.blocked(source) {
        tracing::warn!(source = %source, "admin API: too many failed authentications");
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentications from this address; retry later",
        )
        .into_response();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = header::HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    // Hash both sides so the comparison is constant-time whatever their lengths.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose_secret().as_bytes());
    if bool::from(a.ct_eq(&b)) {
        next.run(request).await
    } else {
        gate.failures.failed(source);
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let broker = state.status.broker_ready.load(Ordering::SeqCst);
    let code = if database && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"database": database, "broker": broker})))
}

async fn get_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
) -> Result<Json<Value>, ApiError> {
    let view = store::refunds::show(&state.pool, &reference)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no refund with refundReference `{reference}`"),
            )
        })?;
    let deliveries = store::webhooks::for_refund(&state.pool, &reference).await?;
    let callback_url = store::webhooks::callback_url(&state.pool, &reference).await?;
    let mut body = serde_json::to_value(&view).map_err(ApiError::internal)?;
    body["deliveries"] = serde_json::to_value(deliveries).map_err(ApiError::internal)?;
    // Where its merchant webhooks go: the command's callbackUrl, else WEBHOOK_DEFAULT_URL
    // (as `refunds show --json` says it).
    body["callbackUrl"] = json!(callback_url);
    body["defaultWebhookUrl"] = json!(state.config.webhooks.default_url);
    Ok(Json(body))
}

async fn list_refunds(
    State(state): State<AppState>,
    StrictQuery(filter): StrictQuery<store::refunds::ListFilter>,
) -> Result<Json<store::refunds::RefundPage>, ApiError> {
    // A provider or status outside the set would match nothing: say so instead of an empty page.
    validation::check_status(filter.status.as_deref())?;
    validation::check_provider(filter.provider.as_deref())?;
    // Out of range used to be clamped silently (limit=0 gave one row, limit=-5 one row too).
    validation::limit_in_range(filter.limit, REFUNDS_MAX_LIMIT)?;
    Ok(Json(store::refunds::list(&state.pool, &filter).await?))
}

/// `POST /v1/refunds/{ref}/recheck`: optional body `{"reason": "..."}`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecheckBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn recheck_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
    // Optional, so a bare POST works; unknown fields are refused by serde, naming `reason`.
    body: Option<Json<RecheckBody>>,
) -> Result<Json<Value>, ApiError> {
    use crate::pipeline::review::RecheckError;
    let reason = body.and_then(|Json(b)| b.reason);
    let view = crate::pipeline::review::recheck(&state.context, &reference, reason.as_deref())
        .await
        .map_err(|e| match e {
            RecheckError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            RecheckError::Final { .. } | RecheckError::Busy(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RecheckError::Store(e) => e.into(),
        })?;
    Ok(Json(
        serde_json::to_value(&view).map_err(ApiError::internal)?,
    ))
}

/// `POST /v1/refunds/{ref}/resolve`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResolveBody {
    status: String,
    reason: String,
    #[serde(default)]
    provider_reference: Option<String>,
}

async fn resolve_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<ResolveBody>,
) -> Result<Json<Value>, ApiError> {
    use crate::domain::review::{ResolveRefused, ResolveRequest};
    use crate::store::review::{ResolveError, Resolved};
    let status = crate::domain::RefundStatus::parse(&body.status)
        .filter(|s| s.is_final())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("status `{}` is not COMPLETED or REFUND_FAIL", body.status),
            )
        })?;
    let request = ResolveRequest {
        status,
        reason: body.reason,
        provider_reference: body.provider_reference.filter(|r| !r.trim().is_empty()),
    };
    let resolved = store::review::resolve(&state.pool, &reference, &request, &state.context.sink)
        .await
        .map_err(|e| match e {
            ResolveError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ResolveError::Refused(ResolveRefused::Invalid(m)) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            ResolveError::Refused(r) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", r.to_string())
            }
            ResolveError::Store(e) => e.into(),
        })?;
    let answer = match resolved {
        Resolved::Finished(event) => {
            state.context.event_committed();
            crate::metrics::refund_event(&event);
            tracing::warn!(refund_reference = %reference, status = %event.status,
                "refund resolved by an operator");
            json!({"resolved": true, "event": event})
        }
        Resolved::Acknowledged => json!({"resolved": true, "acknowledged": true}),
    };
    Ok(Json(answer))
}

#[derive(Debug, serde::Deserialize)]
struct InboxQuery {
    state: String,
    limit: Option<i64>,
}

async fn list_provider_webhooks(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<InboxQuery>,
) -> Result<Json<Value>, ApiError> {
    let wanted = q.state.to_ascii_lowercase();
    if !store::inbound::OPERATOR_STATES.contains(&wanted.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "state `{}` is not one of {}",
                q.state,
                store::inbound::OPERATOR_STATES.join(", ")
            ),
        ));
    }
    validation::limit_in_range(q.limit, 500)?;
    let limit = q.limit.unwrap_or(100);
    let items = store::inbound::list_for_operators(&state.pool, &wanted, limit).await?;
    Ok(Json(json!({"state": wanted, "items": items})))
}

/// `POST /v1/webhooks/resend`. The fields are inline (not a flattened [`ResendFilter`]) so
/// [`StrictJson`] knows them all and refuses a misspelt `dry_run` instead of resending.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResendBody {
    event_ids: Option<Vec<uuid::Uuid>>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    provider: Option<String>,
    status: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

async fn resend_webhooks(
    State(state): State<AppState>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<ResendBody>,
) -> Result<Json<Value>, ApiError> {
    // `"provider": "paypal"` used to answer "0 would be queued"; it is a mistake, not a filter.
    validation::check_status(body.status.as_deref())?;
    validation::check_provider(body.provider.as_deref())?;
    let filter = ResendFilter {
        event_ids: body.event_ids,
        since: body.since,
        until: body.until,
        provider: body.provider,
        status: body.status,
    };
    filter
        .validate()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    if body.dry_run {
        let n = store::webhooks::count_resendable(&state.pool, &filter).await?;
        return Ok(Json(json!({"dryRun": true, "wouldQueue": n})));
    }
    let mut queued = Vec::new();
    loop {
        let batch = store::webhooks::resend(&state.pool, &filter, 500).await?;
        let done = batch.len() < 500;
        queued.extend(batch);
        if done {
            break;
        }
    }
    Ok(Json(json!({"queued": queued.len(), "eventIds": queued})))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn failed_webhooks(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    validation::limit_in_range(q.limit, LIST_MAX_LIMIT)?;
    let limit = q.limit.unwrap_or(100);
    // One more than asked, to say whether there are more than shown.
    let mut rows = store::webhooks::list_failed(&state.pool, limit + 1).await?;
    let truncated = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(json!({"items": rows, "truncated": truncated})))
}

/// The dead-letter queues operators may touch, with where their messages go back to.
fn dlq_target(state: &AppState, queue: &str) -> Result<(String, String), ApiError> {
    state.topology.replay_target(queue).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "`{queue}` is not a dead-letter queue of this worker (known: {}, {})",
                state.topology.commands_dlq, state.topology.webhooks_dlq
            ),
        )
    })
}

async fn broker_connection(state: &AppState) -> Result<lapin::Connection, ApiError> {
    broker::connect(&state.config.amqp_url, "refund-worker-admin")
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "admin API could not reach the broker");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the broker is not reachable; try again",
            )
        })
}

async fn list_dlq(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    StrictQuery(q): StrictQuery<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    dlq_target(&state, &queue)?;
    validation::limit_in_range(q.limit, LIST_MAX_LIMIT)?;
    let connection = broker_connection(&state).await?;
    let depth = dlq::depth(&connection, &queue).await.map_err(dlq_error)?;
    let items = dlq::list(
        &connection,
        &queue,
        q.limit.unwrap_or(100).clamp(1, 1000) as usize,
    )
    .await
    .map_err(dlq_error)?;
    let _ = connection.close(200, "done".into()).await;
    let truncated = items.len() < depth as usize;
    Ok(Json(
        json!({"queue": queue, "depth": depth, "items": items, "truncated": truncated}),
    ))
}

/// `POST /v1/dlq/{queue}/replay`. Inline fields, for the same reason as [`ResendBody`].
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReplayBody {
    message_id: Option<String>,
    position: Option<usize>,
    reason_contains: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    dry_run: bool,
}

async fn replay_dlq(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<ReplayBody>,
) -> Result<Json<dlq::ReplayReport>, ApiError> {
    let filter = dlq::ReplayFilter::exactly_one(
        body.message_id,
        body.position,
        body.reason_contains,
        body.all,
        ["messageId", "position", "reasonContains", "all"],
    )
    .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    let (exchange, routing_key) = dlq_target(&state, &queue)?;
    let connection = broker_connection(&state).await?;
    let report = dlq::replay(
        &connection,
        &queue,
        &filter,
        (&exchange, &routing_key),
        body.dry_run,
        |_, _| {},
    )
    .await
    .map_err(dlq_error)?;
    let _ = connection.close(200, "done".into()).await;
    Ok(Json(report))
}

fn dlq_error(e: dlq::DlqError) -> ApiError {
    match e {
        dlq::DlqError::NoQueue(q) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("queue `{q}` does not exist"),
        ),
        dlq::DlqError::Amqp(e) => {
            tracing::warn!(error = %e, "dead-letter operation failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                "the broker operation failed; try again",
            )
        }
    }
}

/// `POST /v1/recover`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecoverBody {
    since: String,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Starts a recovery in the background of this worker process (see
/// [`crate::pipeline::recover`]); 202 with the job, to be followed at `GET /v1/recover/{id}`.
async fn start_recovery(
    State(state): State<AppState>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<RecoverBody>,
) -> Result<Response, ApiError> {
    use crate::pipeline::recover;
    validation::check_provider(body.provider.as_deref())?;
    let window = recover::Window::parse(
        &body.since,
        body.until.as_deref(),
        body.provider.as_deref(),
        chrono::Utc::now(),
    )
    .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m))?;
    let job = recover::spawn(state.context.clone(), window, body.dry_run);
    tracing::warn!(job = %job.id, dry_run = body.dry_run, "recovery started through the admin API");
    let location = format!("/v1/recover/{}", job.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(job.view()),
    )
        .into_response())
}

/// `GET /v1/recover/{id}`: a recovery's progress, and its summary once done.
async fn get_recovery(
    Path(id): Path<String>,
    _: StrictQuery<NoQuery>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recovery {id} in this worker process (jobs live in the process that started them)"),
        )
    };
    let id = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let job = crate::pipeline::recover::job(id).ok_or_else(not_found)?;
    Ok(Json(job.view()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_bodies_and_queries_expose_their_fields() {
        use crate::http_validation::fields_of;
        // A `#[serde(flatten)]` would hide them: StrictJson would refuse every field.
        assert_eq!(
            fields_of::<ResendBody>(),
            ["eventIds", "since", "until", "provider", "status", "dryRun"]
        );
        assert_eq!(
            fields_of::<ReplayBody>(),
            ["messageId", "position", "reasonContains", "all", "dryRun"]
        );
        assert_eq!(fields_of::<LimitQuery>(), ["limit"]);
        assert!(fields_of::<store::refunds::ListFilter>().contains(&"status"));
        assert!(fields_of::<NoQuery>().is_empty());
        assert_eq!(
            fields_of::<ResolveBody>(),
            ["status", "reason", "providerReference"]
        );
        assert_eq!(fields_of::<InboxQuery>(), ["state", "limit"]);
    }

    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3."));
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from docs/openapi.json"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .map(|m| m.as_object().map_or(0, |o| o.len()))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(
            documented,
            ROUTES.len(),
            "docs/openapi.json documents routes the server does not have"
        );
        // Admin bodies refuse unknown fields (http_validation::StrictJson); the document
        // says so, and documents the 400 that says which field.
        for (method, path) in ROUTES.iter().filter(|(_, p)| p.starts_with("/v1/")) {
            let op = &doc["paths"][path][method];
            if let Some(schema) = op["requestBody"]["content"]["application/json"]["schema"]
                .get("$ref")
                .and_then(Value::as_str)
            {
                let name = schema.trim_start_matches("#/components/schemas/");
                assert_eq!(
                    doc["components"]["schemas"][name]["additionalProperties"], false,
                    "{name} (body of {method} {path}) must set additionalProperties: false"
                );
                assert!(
                    op["responses"]["400"].is_object(),
                    "{method} {path}: no 400"
                );
            }
        }
    }
}
