//! HTTP ingress of provider webhooks: `POST /webhooks/{provider}`.
//!
//! Reads the raw body (size-limited), checks its signature with the provider's adapter over
//! exactly those bytes, publishes it to `provider.webhooks` (routing key = provider) with a
//! publisher confirm, and only then answers 2xx with the body the provider expects. If the
//! broker cannot take it the answer is 503, so the provider retries later: a webhook is
//! never acknowledged before it is safely queued. Bad signatures get 401 and a counter, and
//! nothing is published.

use crate::broker::publisher::{Outgoing, Publisher};
use crate::broker::{self, PublishError, Topology};
use crate::domain::ProviderName;
use crate::pipeline::inbound::PROVIDER_HEADER;
use crate::providers::{Providers, WebhookError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long the ingress waits for the broker before answering 503.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest AMQP header name (an AMQP short string).
const MAX_HEADER_NAME_BYTES: usize = 255;
/// Most header bytes (names and values) kept with a queued webhook, far below a frame.
const MAX_KEPT_HEADER_BYTES: usize = 32 * 1024;

/// Request headers worth keeping with the queued body (signatures and timestamps, for audit
/// and re-verification); everything else (cookies, authorization) stays behind.
fn keep_header(name: &str) -> bool {
    name == "content-type"
        || name == "user-agent"
        || name.starts_with("x-")
        || name.starts_with("binancepay-")
        || name.starts_with("api-")
}

/// What the ingress needs: the adapters (to verify) and a lazily (re)connected publisher.
#[derive(Clone)]
pub struct Ingress {
    providers: Providers,
    amqp_url: String,
    topology: Topology,
    link: Arc<Mutex<Option<Link>>>,
}

struct Link {
    connection: Connection,
    publisher: Publisher,
}

impl Ingress {
    /// An ingress publishing to `topology` on the broker at `amqp_url`.
    pub fn new(providers: Providers, amqp_url: String, topology: Topology) -> Self {
        Self {
            providers,
            amqp_url,
            topology,
            link: Arc::new(Mutex::new(None)),
        }
    }

    /// A confirm-mode publisher, connecting (and declaring the topology) when there is no
    /// live connection. The lock is held only to get or make the link, not to publish.
    async fn publisher(&self) -> Result<Publisher, PublishError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref() {
            if l.connection.status().connected() {
                return Ok(l.publisher.clone());
            }
        }
        let connection = broker::connect(&self.amqp_url, "refund-worker-ingress").await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        let _ = channel.close(200, "declared".into()).await;
        let publisher = Publisher::open(&connection).await?;
        *link = Some(Link {
            connection,
            publisher: publisher.clone(),
        });
        Ok(publisher)
    }

    /// Publishes one verified webhook and waits for the broker's confirm.
    async fn publish(
        &self,
        provider: ProviderName,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let publisher = self.publisher().await?;
        let table = kept_headers(provider, headers);
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(uuid::Uuid::new_v4().to_string()))
            .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0))
            .with_headers(table);
        let result = publisher
            .publish(Outgoing {
                exchange: &self.topology.webhooks_exchange,
                routing_key: provider.as_str(),
                payload: body,
                properties,
            })
            .await;
        if result.is_err() {
            // Drop the link so the next webhook reconnects rather than reuse a dead channel.
            *self.link.lock().await = None;
        }
        result
    }
}

/// The API's error body (`{"error": {"code", "message"}}`), as every route answers.
fn refusal(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    crate::http::ApiError::new(status, code, message).into_response()
}

/// The AMQP headers a queued webhook carries: the request headers worth keeping (see
/// [`keep_header`]) as `http-<name>`, bounded in name length and total size, plus the
/// provider. Header names and values are not signed, so anyone replaying a signed body can
/// add any: AMQP field names are short strings (at most 255 bytes; lapin would silently
/// write a wrong length and corrupt the frame), and the whole table must fit well inside
/// one frame, so what does not fit is dropped.
pub fn kept_headers(provider: ProviderName, headers: &HeaderMap) -> FieldTable {
    let mut table = FieldTable::default();
    let mut kept_bytes = 0usize;
    for (name, value) in headers {
        if let (true, Ok(v)) = (keep_header(name.as_str()), value.to_str()) {
            let key = format!("http-{}", name.as_str());
            let v: String = v.chars().take(2000).collect();
            if key.len() > MAX_HEADER_NAME_BYTES
                || kept_bytes + key.len() + v.len() > MAX_KEPT_HEADER_BYTES
            {
                continue;
            }
            kept_bytes += key.len() + v.len();
            table.insert(
                ShortString::from(key),
                AMQPValue::LongString(LongString::from(v.into_bytes())),
            );
        }
    }
    table.insert(
        PROVIDER_HEADER.into(),
        AMQPValue::LongString(LongString::from(provider.as_str().as_bytes().to_vec())),
    );
    table
}

/// Most header bytes [`kept_headers`] keeps (names and values), for the fuzz harness.
pub const KEPT_HEADER_BYTES: usize = MAX_KEPT_HEADER_BYTES;

/// Whether the declared content type is JSON (`application/json`, `application/*+json`,
/// `text/json`, any parameters). A missing content type is accepted: the signature is the
/// authentication and the body is parsed as JSON anyway; a declared non-JSON type (a form,
/// multipart, plain text) is not what any provider sends, so it is refused before any work.
pub fn content_type_problem(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::CONTENT_TYPE)?;
    let Ok(text) = value.to_str() else {
        return Some("the content-type header is not readable text".into());
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence == "text/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    (!json).then(|| {
        format!(
            "content-type `{}` is not JSON; send application/json",
            text.chars().take(100).collect::<String>()
        )
    })
}

/// The path of `POST /webhooks/{provider}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IngressPath {
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
        (status = 400, description = "the body could not be read (`unreadable_body`)", body = crate::http::ErrorBody),
        (status = 401, description = "bad or missing signature, a timestamp outside the tolerance, or a Binance Pay nonce already taken within it (`bad_signature`, `stale_timestamp`, `replayed`); nothing queued",
            body = crate::http::ErrorBody),
        (status = 404, description = "unknown provider, or provider not configured (`unknown_provider`, `not_configured`)", body = crate::http::ErrorBody),
        (status = 408, description = "the body did not arrive within WEBHOOK_INGRESS_TIMEOUT_MS (`timeout`)", body = crate::http::ErrorBody),
        (status = 413, description = "body larger than WEBHOOK_INGRESS_MAX_BYTES, with or without a Content-Length (`payload_too_large`); nothing queued",
            body = crate::http::ErrorBody),
        (status = 415, description = "a declared content-type that is not JSON (`unsupported_media_type`); no content-type is accepted; nothing queued",
            body = crate::http::ErrorBody),
        (status = 429, description = "more than WEBHOOK_INGRESS_RATE_PER_SEC (burst WEBHOOK_INGRESS_BURST) from this source address (`rate_limited`); `Retry-After` says when to retry",
            body = crate::http::ErrorBody),
        (status = 503, description = "broker unavailable (`unavailable`), or no webhook secret configured for the provider (`verification_not_configured`); the provider should retry",
            body = crate::http::ErrorBody),
    ))]
pub async fn receive(
    State(ingress): State<Ingress>,
    Path(IngressPath { provider }): Path<IngressPath>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(name) = ProviderName::parse(&provider) else {
        crate::metrics::provider_webhook_received("unknown", "unknown_provider");
        return refusal(
            StatusCode::NOT_FOUND,
            "unknown_provider",
            "no such provider; expected one of va_services, bpn, binance_pay, bvnk",
        );
    };
    let Some(adapter) = ingress.providers.get(name) else {
        crate::metrics::provider_webhook_received(name.as_str(), "not_configured");
        return refusal(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("provider {name} is not configured"),
        );
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            crate::metrics::provider_webhook_received(name.as_str(), "too_large");
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than WEBHOOK_INGRESS_MAX_BYTES allows",
            );
        }
        Err(rejection) => {
            crate::metrics::provider_webhook_received(name.as_str(), "unreadable");
            tracing::warn!(provider = %name, error = %rejection, "provider webhook body unreadable");
            return refusal(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the request body could not be read",
            );
        }
    };
    if let Some(problem) = content_type_problem(&headers) {
        crate::metrics::provider_webhook_received(name.as_str(), "unsupported_media_type");
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            problem,
        );
    }
    let now = chrono::Utc::now();
    if let Err(e) = adapter.verify_webhook(&headers, &body, now) {
        let (status, code, label) = match &e {
            WebhookError::NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "verification_not_configured",
                "not_configured",
            ),
            WebhookError::StaleTimestamp(_) => {
                (StatusCode::UNAUTHORIZED, "stale_timestamp", "stale")
            }
            WebhookError::Replayed(_) => (StatusCode::UNAUTHORIZED, "replayed", "replayed"),
            WebhookError::BadSignature(_) | WebhookError::Malformed(_) => {
                (StatusCode::UNAUTHORIZED, "bad_signature", "bad_signature")
            }
        };
        crate::metrics::provider_webhook_received(name.as_str(), label);
        tracing::warn!(provider = %name, reason = %e, "provider webhook refused");
        return refusal(status, code, e.to_string());
    }
    match tokio::time::timeout(BROKER_TIMEOUT, ingress.publish(name, &headers, &body)).await {
        Ok(Ok(())) => {
            adapter.webhook_queued(&headers, now);
            crate::metrics::provider_webhook_received(name.as_str(), "accepted");
            (StatusCode::OK, Json(adapter.webhook_ack())).into_response()
        }
        Ok(Err(e)) => {
            crate::metrics::provider_webhook_received(name.as_str(), "unavailable");
            tracing::warn!(provider = %name, error = %e, "provider webhook not queued; answering 503");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook could not be queued; retry later",
            )
        }
        Err(_) => {
            crate::metrics::provider_webhook_received(name.as_str(), "unavailable");
            tracing::warn!(provider = %name, "broker did not confirm in time; answering 503");
            refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the webhook could not be queued in time; retry later",
            )
        }
    }
}
