//! The admin API (`/v1/...`): refunds, merchant webhook deliveries, provider webhooks an
//! operator must look at, dead letters and recovery; behind the bearer token
//! (`ADMIN_TOKEN`), with strict bodies and queries ([`super::validation`]).

use super::error::{rate_limited, ApiError, ErrorBody};
use super::limits::{self, AuthFailures};
use super::state::AppState;
use super::validation::{self, NoQuery, StrictJson, StrictQuery};
use crate::broker::{self, dlq};
use crate::pipeline::recover;
use crate::store::{self, merchant_webhooks::ResendFilter};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest `limit` of `GET /v1/refunds` (as docs/openapi.json says).
pub(crate) const REFUNDS_MAX_LIMIT: i64 = store::refunds::MAX_PAGE;
/// Largest `limit` of the other admin lists (failed webhooks, dead letters).
const LIST_MAX_LIMIT: i64 = 1000;
/// Their `limit` when none is given.
const LIST_DEFAULT_LIMIT: i64 = 100;
/// Largest `limit` of `GET /v1/provider-webhooks`.
const INBOX_MAX_LIMIT: i64 = 500;

/// Largest admin request body.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;
/// Whole-request limit of the admin API.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The admin routes, behind the token gate; merged by [`super::router`] only when
/// `ADMIN_TOKEN` is set.
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    Router::new()
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
        .layer(middleware::from_fn(super::error::json_errors))
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
        return rate_limited(
            "too many failed authentications from this address; retry later",
            wait,
        );
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

/// One refund with its history, provider calls and merchant webhook deliveries (the answer of
/// `GET /v1/refunds/{refundReference}`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RefundDetail {
    /// The refund.
    pub refund: store::refunds::RefundRow,
    /// Its status history.
    pub transitions: Vec<store::refunds::TransitionRow>,
    /// Its provider calls.
    pub attempts: Vec<store::refunds::AttemptRow>,
    /// Its merchant webhook deliveries, oldest first.
    pub deliveries: Vec<store::merchant_webhooks::DeliveryRow>,
    /// The command's callbackUrl, where its merchant webhooks go.
    pub callback_url: Option<String>,
    /// WEBHOOK_DEFAULT_URL, used when the command has no callbackUrl.
    pub default_webhook_url: Option<String>,
}

/// One refund: state, history, provider calls, webhook deliveries.
#[utoipa::path(get, path = "/v1/refunds/{refundReference}", tag = "refunds",
    params(("refundReference" = String, Path, description = "the refund's reference")),
    responses(
        (status = 200, description = "the refund", body = RefundDetail),
        (status = 404, description = "no refund with this refundReference", body = ErrorBody),
    ))]
async fn get_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
) -> Result<Json<RefundDetail>, ApiError> {
    let view = store::refunds::show(&state.pool, &reference)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no refund with refundReference `{reference}`"),
            )
        })?;
    let deliveries = store::merchant_webhooks::for_refund(&state.pool, &reference).await?;
    // Where its merchant webhooks go: the command's callbackUrl, else WEBHOOK_DEFAULT_URL
    // (as `refunds show --json` says it).
    let callback_url = store::merchant_webhooks::callback_url(&state.pool, &reference).await?;
    Ok(Json(RefundDetail {
        refund: view.refund,
        transitions: view.transitions,
        attempts: view.attempts,
        deliveries,
        callback_url,
        default_webhook_url: state.config.webhooks.default_url.clone(),
    }))
}

/// List refunds, newest first (keyset pagination).
#[utoipa::path(get, path = "/v1/refunds", tag = "refunds",
    params(store::refunds::ListFilter),
    responses((status = 200, description = "a page", body = store::refunds::RefundPage)))]
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

/// The optional body of `POST /v1/refunds/{refundReference}/recheck`.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = RecheckRequest)]
struct RecheckBody {
    /// Kept in the refund's history.
    #[serde(default)]
    reason: Option<String>,
}

/// Ask the provider about a refund now and apply the answer as the dispatcher would (a status
/// lookup; a submit if the provider certainly does not have it yet).
#[utoipa::path(post, path = "/v1/refunds/{refundReference}/recheck", tag = "refunds",
    params(("refundReference" = String, Path, description = "the refund's reference")),
    request_body = Option<RecheckBody>,
    responses(
        (status = 200, description = "the refund after the recheck (as GET /v1/refunds/{refundReference}, without deliveries)",
            body = store::refunds::RefundView),
        (status = 404, description = "no refund with this refundReference", body = ErrorBody),
        (status = 409, description = "the refund is final, or a dispatcher is working on it right now", body = ErrorBody),
    ))]
async fn recheck_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
    // Optional, so a bare POST works; unknown fields are refused by serde, naming `reason`.
    body: Option<Json<RecheckBody>>,
) -> Result<Json<store::refunds::RefundView>, ApiError> {
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
    Ok(Json(view))
}

/// The body of `POST /v1/refunds/{refundReference}/resolve`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ResolveRequest)]
struct ResolveBody {
    /// The final status the operator settles it at.
    #[schema(schema_with = crate::schema::api::final_status)]
    status: String,
    /// Why (kept in the refund's history and the event's resolution).
    #[schema(schema_with = crate::schema::api::resolve_reason)]
    reason: String,
    /// The provider's id for the refund, if the operator knows it.
    #[serde(default)]
    provider_reference: Option<String>,
}

/// The answer of `POST /v1/refunds/{refundReference}/resolve`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ResolveAnswer {
    /// Always true.
    pub resolved: bool,
    /// True when the refund was already final and flagged: the flag was cleared, no event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<bool>,
    /// The final event published, with `resolution: {by: operator, reason}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::api::refund_event)]
    pub event: Option<crate::domain::RefundEvent>,
}

/// Settle a refund in review by hand: publishes its final event with resolution {by:
/// operator, reason}. A final refund is never moved; a pending refund not in review is
/// refused (the worker may still finish it).
#[utoipa::path(post, path = "/v1/refunds/{refundReference}/resolve", tag = "refunds",
    params(("refundReference" = String, Path, description = "the refund's reference")),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "resolved (`event`), or a flagged final status acknowledged (`acknowledged: true`)",
            body = ResolveAnswer),
        (status = 404, description = "no refund with this refundReference", body = ErrorBody),
        (status = 409, description = "already final, or not in review", body = ErrorBody),
    ))]
async fn resolve_refund(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<ResolveBody>,
) -> Result<Json<ResolveAnswer>, ApiError> {
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
    let sink = &state.context.sink;
    let resolved = crate::pipeline::review::resolve(&state.pool, &reference, &request, sink)
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
            ResolveAnswer {
                resolved: true,
                acknowledged: None,
                event: Some(event),
            }
        }
        Resolved::Acknowledged => ResolveAnswer {
            resolved: true,
            acknowledged: Some(true),
            event: None,
        },
    };
    Ok(Json(answer))
}

/// The query of `GET /v1/provider-webhooks`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct InboxQuery {
    state: String,
    limit: Option<i64>,
}

// Written out rather than derived: utoipa's derive leaves a parameter optional when its
// schema comes from a function, and `state` is required. A test checks the names against
// the fields.
impl utoipa::IntoParams for InboxQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::Required;
        let query = |name: &str, required, description: &str, schema: utoipa::openapi::Object| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Query)
                .required(required)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        vec![
            query(
                "state",
                Required::True,
                "which webhooks (any case)",
                crate::schema::api::operator_state(),
            ),
            query(
                "limit",
                Required::False,
                "how many at most",
                crate::schema::api::limit(INBOX_MAX_LIMIT, LIST_DEFAULT_LIMIT),
            ),
        ]
    }
}

/// The answer of `GET /v1/provider-webhooks`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ProviderWebhookList {
    /// The state asked for, in lower case.
    pub state: String,
    /// The webhooks, oldest first.
    pub items: Vec<store::provider_webhooks::InboxRow>,
}

/// Provider webhooks an operator must look at: parked, unmatched or contradicting, oldest
/// first.
#[utoipa::path(get, path = "/v1/provider-webhooks", tag = "webhooks",
    params(InboxQuery),
    responses((status = 200, description = "the webhooks", body = ProviderWebhookList)))]
async fn list_provider_webhooks(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<InboxQuery>,
) -> Result<Json<ProviderWebhookList>, ApiError> {
    let wanted = q.state.to_ascii_lowercase();
    if !store::provider_webhooks::OPERATOR_STATES.contains(&wanted.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "state `{}` is not one of {}",
                q.state,
                store::provider_webhooks::OPERATOR_STATES.join(", ")
            ),
        ));
    }
    validation::limit_in_range(q.limit, INBOX_MAX_LIMIT)?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    let items = store::provider_webhooks::list_for_operators(&state.pool, &wanted, limit).await?;
    Ok(Json(ProviderWebhookList {
        state: wanted,
        items,
    }))
}

// The fields are inline (not a flattened [`ResendFilter`]) so [`StrictJson`] knows them all
// and refuses a misspelt `dry_run` instead of resending.
/// The body of `POST /v1/webhooks/resend`: either eventIds, or a window (since, optional
/// until) with optional provider and status filters.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ResendRequest)]
struct ResendBody {
    /// Exactly these events.
    event_ids: Option<Vec<uuid::Uuid>>,
    /// Events queued at or after this time.
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Events queued before this time.
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this provider's.
    #[schema(schema_with = crate::schema::api::provider)]
    provider: Option<String>,
    /// Only events with this status.
    #[schema(schema_with = crate::schema::api::refund_status)]
    status: Option<String>,
    /// Count what would be queued; queue nothing.
    #[serde(default)]
    dry_run: bool,
}

/// The answer of `POST /v1/webhooks/resend`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum ResendAnswer {
    /// What a dry run would queue.
    DryRun(ResendDryRun),
    /// What was queued.
    Queued(ResendQueued),
}

/// A dry run of `POST /v1/webhooks/resend`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResendDryRun {
    /// Always true.
    pub dry_run: bool,
    /// Failed deliveries that would be queued.
    pub would_queue: i64,
}

/// Deliveries queued again by `POST /v1/webhooks/resend`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResendQueued {
    /// How many.
    pub queued: usize,
    /// Their events.
    pub event_ids: Vec<uuid::Uuid>,
}

/// Re-queue failed webhook deliveries (idempotent: only failed ones are queued).
#[utoipa::path(post, path = "/v1/webhooks/resend", tag = "webhooks",
    request_body = ResendBody,
    responses((status = 200, description = "how many were queued (or would be, with dryRun)", body = ResendAnswer)))]
async fn resend_webhooks(
    State(state): State<AppState>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<ResendBody>,
) -> Result<Json<ResendAnswer>, ApiError> {
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
        let n = store::merchant_webhooks::count_resendable(&state.pool, &filter).await?;
        return Ok(Json(ResendAnswer::DryRun(ResendDryRun {
            dry_run: true,
            would_queue: n,
        })));
    }
    let mut queued = Vec::new();
    loop {
        let batch = store::merchant_webhooks::resend(&state.pool, &filter, 500).await?;
        let done = batch.len() < 500;
        queued.extend(batch);
        if done {
            break;
        }
    }
    Ok(Json(ResendAnswer::Queued(ResendQueued {
        queued: queued.len(),
        event_ids: queued,
    })))
}

/// The query of the lists of failed webhooks and dead letters.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LimitQuery {
    /// How many at most.
    #[param(schema_with = list_limit)]
    limit: Option<i64>,
}

fn list_limit() -> utoipa::openapi::Object {
    crate::schema::api::limit(LIST_MAX_LIMIT, LIST_DEFAULT_LIMIT)
}

/// The answer of `GET /v1/webhooks/failed`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FailedWebhooks {
    /// The failed deliveries, newest first.
    pub items: Vec<store::merchant_webhooks::DeliveryRow>,
    /// There are more than `limit` (raise limit, up to 1000).
    pub truncated: bool,
}

/// Failed webhook deliveries, newest first.
#[utoipa::path(get, path = "/v1/webhooks/failed", tag = "webhooks",
    params(LimitQuery),
    responses((status = 200, description = "failed deliveries", body = FailedWebhooks)))]
async fn failed_webhooks(
    State(state): State<AppState>,
    StrictQuery(q): StrictQuery<LimitQuery>,
) -> Result<Json<FailedWebhooks>, ApiError> {
    validation::limit_in_range(q.limit, LIST_MAX_LIMIT)?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    // One more than asked, to say whether there are more than shown.
    let mut rows = store::merchant_webhooks::list_failed(&state.pool, limit + 1).await?;
    let truncated = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(Json(FailedWebhooks {
        items: rows,
        truncated,
    }))
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

/// The answer of `GET /v1/dlq/{queue}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct DeadLetterList {
    /// The queue.
    pub queue: String,
    /// Messages in it.
    pub depth: u32,
    /// The first `limit` of them, without removing them.
    pub items: Vec<dlq::DeadLetter>,
    /// There are more than `limit` (raise limit, up to 1000).
    pub truncated: bool,
}

/// List dead letters (without removing them).
#[utoipa::path(get, path = "/v1/dlq/{queue}", tag = "dead letters",
    params(("queue" = String, Path, description = DLQ_PARAM, example = "refund.commands.dlq"), LimitQuery),
    responses(
        (status = 200, description = "dead letters", body = DeadLetterList),
        (status = 404, description = "not a dead-letter queue of this worker, or it does not exist", body = ErrorBody),
        (status = 503, description = "the broker is not reachable (`broker_unavailable`)", body = ErrorBody),
    ))]
async fn list_dlq(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    StrictQuery(q): StrictQuery<LimitQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    dlq_target(&state, &queue)?;
    validation::limit_in_range(q.limit, LIST_MAX_LIMIT)?;
    let connection = broker_connection(&state).await?;
    let depth = dlq::depth(&connection, &queue).await.map_err(dlq_error)?;
    let items = dlq::list(
        &connection,
        &queue,
        q.limit
            .unwrap_or(LIST_DEFAULT_LIMIT)
            .clamp(1, LIST_MAX_LIMIT) as usize,
    )
    .await
    .map_err(dlq_error)?;
    let _ = connection.close(200, "done".into()).await;
    let truncated = items.len() < depth as usize;
    Ok(Json(DeadLetterList {
        queue,
        depth,
        items,
        truncated,
    }))
}

/// The `queue` of the dead-letter routes.
const DLQ_PARAM: &str = "a dead-letter queue of this worker: refund.commands.dlq or \
    provider.webhooks.dlq (with AMQP_NAME_PREFIX); any other queue is 404";

// Inline fields, for the same reason as [`ResendBody`].
/// The body of `POST /v1/dlq/{queue}/replay`: exactly one selector, messageId, position (from
/// 1), reasonContains, or all: true (400 for none or several). Unknown fields are refused
/// (400), so a misspelt dryRun never replays for real.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = ReplayRequest)]
struct ReplayBody {
    /// A dead letter's `id` as listed (the AMQP message id, or the derived `sha256:...` one).
    message_id: Option<String>,
    /// The message at this place now; the answer's `messages` says which one it was (its
    /// `id`). Prefer messageId: positions shift.
    #[schema(minimum = 1)]
    position: Option<usize>,
    /// Messages whose reason contains this text.
    reason_contains: Option<String>,
    /// Every message in the queue.
    #[serde(default)]
    all: bool,
    /// Say what would be replayed; republish and remove nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Republish dead letters to where they came from; each is removed only after the broker
/// confirmed the copy.
#[utoipa::path(post, path = "/v1/dlq/{queue}/replay", tag = "dead letters",
    params(("queue" = String, Path, description = DLQ_PARAM, example = "refund.commands.dlq")),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "what was replayed", body = dlq::ReplayReport),
        (status = 404, description = "not a dead-letter queue of this worker, or it does not exist", body = ErrorBody),
        (status = 503, description = "the broker is not reachable (`broker_unavailable`)", body = ErrorBody),
    ))]
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

/// The body of `POST /v1/recover`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = RecoverRequest)]
struct RecoverBody {
    /// RFC 3339 time or a date YYYY-MM-DD (midnight UTC).
    since: String,
    /// RFC 3339 time or a date (that whole day included); default now.
    #[serde(default)]
    until: Option<String>,
    /// Only this provider's refunds.
    #[serde(default)]
    #[schema(schema_with = crate::schema::api::provider)]
    provider: Option<String>,
    /// List what would be checked and asked; change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Start a recovery after an outage, in the background of this worker process: every PENDING
/// refund created in the window is rechecked (at most 8 at once) and providers that document
/// a webhook re-send (BPN, VA Services) are asked to re-send.
///
/// 202 with the job, to be followed at `GET /v1/recover/{id}`.
#[utoipa::path(post, path = "/v1/recover", tag = "recovery",
    request_body = RecoverBody,
    responses(
        (status = 202, description = "started; follow it at the Location header (GET /v1/recover/{id}) on the same pod",
            body = recover::JobView, headers(("Location" = String, description = "/v1/recover/{id}"))),
    ))]
async fn start_recovery(
    State(state): State<AppState>,
    _: StrictQuery<NoQuery>,
    StrictJson(body): StrictJson<RecoverBody>,
) -> Result<Response, ApiError> {
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

/// A recovery's progress, and its summary once done (jobs are kept in memory by the process
/// that started them: 404 elsewhere or after a restart).
#[utoipa::path(get, path = "/v1/recover/{id}", tag = "recovery",
    params(("id" = uuid::Uuid, Path, description = "the job's id")),
    responses(
        (status = 200, description = "the job", body = recover::JobView),
        (status = 404, description = "no such job in this process", body = ErrorBody),
    ))]
async fn get_recovery(
    Path(id): Path<String>,
    _: StrictQuery<NoQuery>,
) -> Result<Json<recover::JobView>, ApiError> {
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
        use super::super::validation::fields_of;
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
}
