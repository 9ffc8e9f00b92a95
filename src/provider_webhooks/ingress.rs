//! The ingress of provider webhooks: a webhook's declared content type is checked, then its
//! signature with the provider's adapter over exactly the bytes received; it is published to
//! `provider.webhooks` (routing key = provider) with a publisher confirm, and only then
//! acknowledged with the body the provider expects. If the broker cannot take it the webhook
//! is refused as unavailable, so the provider retries later: a webhook is never acknowledged
//! before it is safely queued. A refused webhook publishes nothing.
//!
//! No HTTP here: the route `POST /webhooks/{provider}` (`http::ingress`) limits and reads the
//! request, hands the body to [`Ingress::take`] and turns a [`Refusal`] into its answer.

use crate::broker::publisher::{Outgoing, Publisher};
use crate::broker::topology::PROVIDER_HEADER;
use crate::broker::{self, PublishError, Topology};
use crate::domain::ProviderName;
use crate::providers::{Provider, Providers, WebhookError};
use axum::http::HeaderMap;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long the ingress waits for the broker's confirm before refusing the webhook.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest AMQP header name (an AMQP short string).
const MAX_HEADER_NAME_BYTES: usize = 255;
/// Most header bytes (names, values and the table's own 6 bytes a field) kept with a queued
/// webhook: half of the ingress connection's frame, which must hold all of a message's
/// properties ([`broker::PUBLISHING_FRAME_MAX`]). Real providers send well under 1 KiB of
/// signature, timestamp and agent headers.
const MAX_KEPT_HEADER_BYTES: usize = broker::PUBLISHING_FRAME_MAX as usize / 2;

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
pub(crate) struct Ingress {
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
    pub(crate) fn new(providers: Providers, amqp_url: String, topology: Topology) -> Self {
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
        let connection =
            broker::connect_publishing(&self.amqp_url, "refund-worker-ingress").await?;
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

/// The AMQP headers a queued webhook carries: the request headers worth keeping (see
/// [`keep_header`]) as `http-<name>`, bounded in name length and total size, plus the
/// provider. Header names and values are not signed, so anyone replaying a signed body can
/// add any: AMQP field names are short strings (at most 255 bytes; lapin would silently
/// write a wrong length and corrupt the frame), and the whole table must fit well inside
/// one frame, so what does not fit is dropped.
pub(crate) fn kept_headers(provider: ProviderName, headers: &HeaderMap) -> FieldTable {
    let mut table = FieldTable::default();
    let mut kept_bytes = 0usize;
    for (name, value) in headers {
        if let (true, Ok(v)) = (keep_header(name.as_str()), value.to_str()) {
            let key = format!("http-{}", name.as_str());
            let v: String = v.chars().take(2000).collect();
            if key.len() > MAX_HEADER_NAME_BYTES
                || kept_bytes + FIELD_OVERHEAD + key.len() + v.len() > MAX_KEPT_HEADER_BYTES
            {
                continue;
            }
            kept_bytes += FIELD_OVERHEAD + key.len() + v.len();
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

/// What a field table spends on one long-string field besides its name and value: the
/// name's length byte, the type byte and the value's 4-byte length.
const FIELD_OVERHEAD: usize = 6;

/// Most header bytes [`kept_headers`] keeps (names, values and each field's overhead), for
/// the fuzz harness.
pub(crate) const KEPT_HEADER_BYTES: usize = MAX_KEPT_HEADER_BYTES;

/// Whether the declared content type is JSON (`application/json`, `application/*+json`,
/// `text/json`, any parameters). A missing content type is accepted: the signature is the
/// authentication and the body is parsed as JSON anyway; a declared non-JSON type (a form,
/// multipart, plain text) is not what any provider sends, so it is refused before any work.
pub(crate) fn content_type_problem(headers: &HeaderMap) -> Option<String> {
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

/// Why a webhook was not queued; the route answers each with its own status and code.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not one of the providers this worker knows.
    UnknownProvider,
    /// A known provider this worker has no adapter configured for.
    NotConfigured(ProviderName),
    /// A declared content type that is not JSON (the message says which).
    UnsupportedMediaType(String),
    /// The adapter refused the signature, the timestamp or the nonce.
    Unverified(WebhookError),
    /// The broker did not take it (not reachable, or it refused).
    Unavailable(PublishError),
    /// The broker did not confirm within [`BROKER_TIMEOUT`].
    Unconfirmed,
}

impl Refusal {
    /// Its `result` label of `refund_worker_provider_webhooks_received_total`.
    pub(crate) fn result(&self) -> &'static str {
        match self {
            Refusal::UnknownProvider => "unknown_provider",
            Refusal::NotConfigured(_) => "not_configured",
            Refusal::UnsupportedMediaType(_) => "unsupported_media_type",
            Refusal::Unverified(WebhookError::NotConfigured(_)) => "not_configured",
            Refusal::Unverified(WebhookError::StaleTimestamp(_)) => "stale",
            Refusal::Unverified(WebhookError::Replayed(_)) => "replayed",
            Refusal::Unverified(WebhookError::BadSignature(_) | WebhookError::Malformed(_)) => {
                "bad_signature"
            }
            Refusal::Unavailable(_) | Refusal::Unconfirmed => "unavailable",
        }
    }
}

impl Ingress {
    /// The provider named `provider` (as in the path) and its configured adapter.
    pub(crate) fn adapter(
        &self,
        provider: &str,
    ) -> Result<(ProviderName, Arc<dyn Provider>), Refusal> {
        let name = ProviderName::parse(provider).ok_or(Refusal::UnknownProvider)?;
        let adapter = self
            .providers
            .get(name)
            .ok_or(Refusal::NotConfigured(name))?;
        Ok((name, adapter))
    }

    /// Takes one webhook of `name` whose body was read whole: checks the declared content
    /// type, verifies the signature with `adapter` over exactly `body`, queues it and waits
    /// for the broker's confirm (at most [`BROKER_TIMEOUT`]). `Ok` holds the body the
    /// provider expects in its 2xx answer; nothing is queued on a refusal before the publish.
    pub(crate) async fn take(
        &self,
        name: ProviderName,
        adapter: &dyn Provider,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, Refusal> {
        if let Some(problem) = content_type_problem(headers) {
            return Err(Refusal::UnsupportedMediaType(problem));
        }
        let now = chrono::Utc::now();
        adapter
            .verify_webhook(headers, body, now)
            .map_err(Refusal::Unverified)?;
        match tokio::time::timeout(BROKER_TIMEOUT, self.publish(name, headers, body)).await {
            Ok(Ok(())) => {
                adapter.webhook_queued(headers, now);
                Ok(adapter.webhook_ack())
            }
            Ok(Err(e)) => Err(Refusal::Unavailable(e)),
            Err(_) => Err(Refusal::Unconfirmed),
        }
    }
}
