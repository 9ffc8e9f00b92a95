//! The route of provider webhooks, `POST /webhooks/{provider}`: public (no admin token:
//! providers call it, and the signature is the authentication), limited per source address,
//! its body read raw and size-limited; then [`crate::provider_webhooks::ingress`] verifies and
//! queues it, and this turns its answer into HTTP: 2xx only after the broker confirmed, 503
//! when the broker cannot take it, so the provider retries.

use super::error::{rate_limited, ApiError, ErrorBody};
use super::limits::{self, IngressLimit};
use super::state::AppState;
use crate::provider_webhooks::ingress::{Ingress, Refusal};
use crate::providers::WebhookError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

/// The route with its limits, on its own state (the ingress), so it exists whether or not
/// the admin API does.
pub(super) fn routes(state: &AppState) -> Router {
    let limit = IngressLimit::new(
        state.config.ingress_rate_per_sec,
        state.config.ingress_burst,
    );
    Router::new()
        .route("/webhooks/{provider}", post(receive))
        .layer(DefaultBodyLimit::max(state.config.ingress_max_bytes))
        .layer(middleware::from_fn_with_state(limit, limit_ingress))
        // A provider that cannot send its body within this (WEBHOOK_INGRESS_TIMEOUT_MS,
        // default 15 s) gets 408; the broker's own confirm wait (5 s) fits well inside.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.ingress_timeout,
        ))
        .with_state(Ingress::new(
            state.providers.clone(),
            state.config.amqp_url.clone(),
            state.topology.clone(),
        ))
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
            rate_limited("too many webhooks from this address; retry later", wait)
        }
    }
}

/// The path of `POST /webhooks/{provider}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IngressPath {
    /// The provider sending the webhook.
    #[param(schema_with = crate::schema::api::provider)]
    provider: String,
}

/// Provider webhook ingress: verify the signature over the raw body, queue it to
/// `provider.webhooks` with a publisher confirm, then answer.
///
/// Public (no admin token): providers call it. The body is read raw (limit
/// WEBHOOK_INGRESS_MAX_BYTES, default 256 KiB) and checked with the provider's scheme before
/// anything else. 2xx only after the broker confirmed; 503 when the broker cannot take it, so
/// the provider retries.
#[utoipa::path(post, path = "/webhooks/{provider}", tag = "ingress", operation_id = "receive_provider_webhook",
    params(IngressPath),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "The provider's own webhook body, unchanged."),
    responses(
        (status = 200, description = "queued; the body is what the provider expects (e.g. Binance Pay `{\"returnCode\":\"SUCCESS\",\"returnMessage\":null}`)",
            body = serde_json::Value),
        (status = 400, description = "the body could not be read (`unreadable_body`)", body = ErrorBody),
        (status = 401, description = "bad or missing signature, a timestamp outside the tolerance, or a Binance Pay nonce already taken within it (`bad_signature`, `stale_timestamp`, `replayed`); nothing queued",
            body = ErrorBody),
        (status = 404, description = "unknown provider, or provider not configured (`unknown_provider`, `not_configured`)", body = ErrorBody),
        (status = 408, description = "the body did not arrive within WEBHOOK_INGRESS_TIMEOUT_MS (`timeout`)", body = ErrorBody),
        (status = 413, description = "body larger than WEBHOOK_INGRESS_MAX_BYTES, with or without a Content-Length (`payload_too_large`); nothing queued",
            body = ErrorBody),
        (status = 415, description = "a declared content-type that is not JSON (`unsupported_media_type`); no content-type is accepted; nothing queued",
            body = ErrorBody),
        (status = 429, description = "more than WEBHOOK_INGRESS_RATE_PER_SEC (burst WEBHOOK_INGRESS_BURST) from this source address (`rate_limited`); `Retry-After` says when to retry",
            body = ErrorBody),
        (status = 503, description = "broker unavailable (`unavailable`), or no webhook secret configured for the provider (`verification_not_configured`); the provider should retry",
            body = ErrorBody),
    ))]
async fn receive(
    State(ingress): State<Ingress>,
    Path(IngressPath { provider }): Path<IngressPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (name, adapter) = match ingress.adapter(&provider) {
        Ok(found) => found,
        Err(refusal @ Refusal::NotConfigured(name)) => return refused(name.as_str(), refusal),
        Err(refusal) => return refused("unknown", refusal),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            crate::metrics::provider_webhook_received(name.as_str(), "too_large");
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than WEBHOOK_INGRESS_MAX_BYTES allows",
            )
            .into_response();
        }
        Err(rejection) => {
            crate::metrics::provider_webhook_received(name.as_str(), "unreadable");
            tracing::warn!(provider = %name, error = %rejection, "provider webhook body unreadable");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the request body could not be read",
            )
            .into_response();
        }
    };
    match ingress.take(name, adapter.as_ref(), &headers, &body).await {
        Ok(ack) => {
            crate::metrics::provider_webhook_received(name.as_str(), "accepted");
            (StatusCode::OK, Json(ack)).into_response()
        }
        Err(refusal) => refused(name.as_str(), refusal),
    }
}

/// The answer to a webhook the ingress refused (counted under `provider`), in the API's
/// error shape.
fn refused(provider: &str, refusal: Refusal) -> Response {
    crate::metrics::provider_webhook_received(provider, refusal.result());
    let (status, code, message) = match refusal {
        Refusal::UnknownProvider => (
            StatusCode::NOT_FOUND,
            "unknown_provider",
            "no such provider; expected one of va_services, bpn, binance_pay, bvnk".to_owned(),
        ),
        Refusal::NotConfigured(name) => (
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("provider {name} is not configured"),
        ),
        Refusal::UnsupportedMediaType(problem) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            problem,
        ),
        Refusal::Unverified(e) => {
            tracing::warn!(provider = %provider, reason = %e, "provider webhook refused");
            let (status, code) = match &e {
                WebhookError::NotConfigured(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "verification_not_configured",
                ),
                WebhookError::StaleTimestamp(_) => (StatusCode::UNAUTHORIZED, "stale_timestamp"),
                WebhookError::Replayed(_) => (StatusCode::UNAUTHORIZED, "replayed"),
                WebhookError::BadSignature(_) | WebhookError::Malformed(_) => {
                    (StatusCode::UNAUTHORIZED, "bad_signature")
                }
            };
            (status, code, e.to_string())
        }
        Refusal::Unavailable(e) => {
            tracing::warn!(provider = %provider, error = %e, "provider webhook not queued; answering 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook could not be queued; retry later".to_owned(),
            )
        }
        Refusal::Unconfirmed => {
            tracing::warn!(provider = %provider, "broker did not confirm in time; answering 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook could not be queued in time; retry later".to_owned(),
            )
        }
    };
    ApiError::new(status, code, message).into_response()
}
