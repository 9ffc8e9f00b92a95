//! VA Services (Transaction Point virtual accounts) refund adapter.
//!
//! - Initiate: `POST /va/refunds/initiate-refund`; our `refundReference` is their refund
//!   reference (VA's idempotency key), so a resubmit after a confirmed "not found" reuses it.
//! - Status: "Get Refund Status" is documented without a path; ours is
//!   `PROVIDER_VA_SERVICES_STATUS_PATH` (default [`DEFAULT_STATUS_PATH`],
//!   `/va/refunds/{refundReference}`). Its "not found" is an HTTP 404 carrying VA's envelope
//!   (`requestSuccessful: false`): only that answer makes a refund absent. A 404 without the
//!   envelope is not VA's answer (a wrong path, a proxy) and is unknown, never "absent".
//! - Refund Details (path open too): `PROVIDER_VA_SERVICES_DETAILS_PATH` (default
//!   [`DEFAULT_DETAILS_PATH`], `/va/refunds/details/{transactionReference}`; `off` disables
//!   it) is asked after a documented "not found", as an extra check in the payment's
//!   `refundsHistory`. It is never load-bearing: when it does not exist (404/405/501 without
//!   VA's envelope) the documented "not found" decides and the refund is resubmitted under
//!   the same `refundReference`. When it answers readably, that answer is used.
//! - Envelope: `{requestSuccessful, responseMessage, responseCode ("0" = success),
//!   responseBody}`. On a *submit*, an envelope with `requestSuccessful: false` or a non-"0"
//!   code is VA's explicit answer: a final `PROVIDER_REJECTED` carrying their message and
//!   code. On a *status lookup* it only says the lookup failed: retried, never a failure.
//! - HTTP 401/403 (refused before processing): retryable with
//!   `may_have_reached_provider: false` and the hint to check `PROVIDER_VA_SERVICES_API_KEY`,
//!   on a submit as on a lookup; a submit refused like that ends `RETRIES_EXHAUSTED` once
//!   the attempts run out, which is right since VA certainly does not have the refund. A
//!   submit answered by a non-2xx without VA's envelope may have gone anywhere: retried after
//!   a status lookup.
//! - Auth is not documented: we send the API key as a bearer token.
//! - Dates (`25/01/2024 01:35:27 AM`) carry no zone: read in the configured zone
//!   (default Africa/Lagos) and converted to UTC.
//! - Webhooks: only pay-in (transaction) notifications are documented, with
//!   `transactionType, amount, narration, classificationCode, success, traceID,
//!   transactionReference, accountID, transactionTime`; they feed the pay-ins ledger. No
//!   refund webhook exists: refunds are polled. The signature scheme is not documented: we
//!   verify hex HMAC-SHA256 of the raw body with `PROVIDER_VA_SERVICES_WEBHOOK_SECRET` in
//!   header `X-VA-Signature` (name configurable with `_WEBHOOK_SIGNATURE_HEADER`).
//! - "Send Notification" (used by `recover`): documented as a POST with a
//!   `transactionReference` that makes VA resend a notification, without its path. Ours is
//!   [`DEFAULT_SEND_NOTIFICATION_PATH`] (`PROVIDER_VA_SERVICES_SEND_NOTIFICATION_PATH`, `off`
//!   disables it) with body [`DEFAULT_SEND_NOTIFICATION_BODY`]
//!   (`PROVIDER_VA_SERVICES_SEND_NOTIFICATION_BODY`), once per payment of the window (at most
//!   [`MAX_SEND_NOTIFICATIONS`]); accepted when VA answers its success envelope.
//! - Status words: `COMPLETED` is success; `FAILED`-like words are final failures; anything
//!   else (`PENDING`, unknown words) is still in progress. Compared case-insensitively.

use super::{
    classify_send_error, classify_status, http_client, is_disabled, templated_url, Provider,
    ProviderWebhook, RefundRequest, WebhookError, WebhookKind,
};
use crate::config::ProviderSettings;
use crate::domain::money::json_number;
use crate::domain::{FailureCode, FailureReason, ProviderName, ProviderOutcome};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

/// Default header of the webhook signature (VA's docs leave it open).
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-VA-Signature";

/// Default "Get Refund Status" path (`PROVIDER_VA_SERVICES_STATUS_PATH`; the docs name the
/// call, not its path).
pub const DEFAULT_STATUS_PATH: &str = "/va/refunds/{refundReference}";

/// Default "Refund Details" path (`PROVIDER_VA_SERVICES_DETAILS_PATH`, `off` disables it).
pub const DEFAULT_DETAILS_PATH: &str = "/va/refunds/details/{transactionReference}";

/// Default path of "Send Notification" (VA documents the call, a POST with a
/// `transactionReference`, not its path: ours, `PROVIDER_VA_SERVICES_SEND_NOTIFICATION_PATH`,
/// `off` disables it).
pub const DEFAULT_SEND_NOTIFICATION_PATH: &str = "/va/notifications/send";
/// Default body of "Send Notification" (`PROVIDER_VA_SERVICES_SEND_NOTIFICATION_BODY`, a JSON
/// template: `"{transactionReference}"` becomes the payment's reference).
pub const DEFAULT_SEND_NOTIFICATION_BODY: &str =
    r#"{"transactionReference":"{transactionReference}"}"#;
/// Most "Send Notification" calls one recovery makes (one per payment).
pub const MAX_SEND_NOTIFICATIONS: usize = 1000;

/// What to check when VA refuses our credentials.
const CREDENTIALS_HINT: &str = "check PROVIDER_VA_SERVICES_API_KEY";

/// A pay-in (transaction) notification as the README of the provider describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaNotification {
    /// e.g. `CREDIT`.
    pub transaction_type: Option<String>,
    /// Paid amount (exact: a JSON number read as text, or a string).
    pub amount: Option<Value>,
    /// Free text.
    pub narration: Option<String>,
    /// Their classification.
    pub classification_code: Option<String>,
    /// Whether the payment succeeded.
    pub success: Option<bool>,
    /// Their trace id: the notification's id.
    #[serde(rename = "traceID")]
    pub trace_id: Option<String>,
    /// The payment's reference (what refund commands call `transactionReference`).
    pub transaction_reference: Option<String>,
    /// Virtual account id.
    #[serde(rename = "accountID")]
    pub account_id: Option<String>,
    /// When, in VA's date format.
    pub transaction_time: Option<String>,
}

/// Parses a pay-in notification into a payment update.
pub fn parse_notification(body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError> {
    let n: VaNotification = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("VA Services notification: {e}")))?;
    let transaction_reference = n
        .transaction_reference
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            WebhookError::Malformed("VA Services notification without transactionReference".into())
        })?;
    let amount = match &n.amount {
        None | Some(Value::Null) => None,
        Some(v) => Some(crate::domain::parse_amount(v).map_err(|e| {
            WebhookError::Malformed(format!("VA Services notification amount: {e}"))
        })?),
    };
    let succeeded = n.success.unwrap_or(false);
    Ok(vec![ProviderWebhook {
        event_id: n.trace_id,
        kind: WebhookKind::Payment {
            transaction_reference,
            amount,
            currency: None,
            status: if succeeded { "SUCCESS" } else { "FAILED" }.into(),
            succeeded,
        },
    }])
}

/// VA's date format: day/month/year, 12-hour clock.
pub const DATE_FORMAT: &str = "%d/%m/%Y %I:%M:%S %p";

/// The VA Services adapter.
pub struct VaServices {
    settings: ProviderSettings,
    client: reqwest::Client,
    /// "Get Refund Status" path template.
    status_path: String,
    /// "Refund Details" path template; `None` when disabled.
    details_path: Option<String>,
}

/// VA's response envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Whether the request was processed.
    pub request_successful: Option<bool>,
    /// Their message.
    pub response_message: Option<String>,
    /// "0" on success.
    pub response_code: Option<String>,
    /// The payload.
    pub response_body: Option<Value>,
}

/// A refund as VA Services describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaRefund {
    /// The original payment.
    pub transaction_reference: Option<String>,
    /// The refund's reference (ours).
    pub refund_reference: Option<String>,
    /// `PENDING`, `COMPLETED`...
    pub refund_status: Option<String>,
    /// `PARTIAL_REFUND` or a full refund.
    pub refund_type: Option<String>,
    /// Their comment on the status.
    pub comment: Option<String>,
    /// When it completed, in VA's date format.
    pub completed_on: Option<String>,
    /// When it was created, in VA's date format.
    pub created_on: Option<String>,
    /// The amount (exact: a JSON number kept as its text).
    pub refund_amount: Option<Value>,
    /// e.g. `MERCHANT_WALLET`.
    pub refund_strategy: Option<String>,
}

impl VaRefund {
    /// `createdOn` in UTC, read in the provider's zone.
    pub fn created_at(&self, zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        parse_date(self.created_on.as_deref()?, zone)
    }

    /// `completedOn` in UTC, read in the provider's zone.
    pub fn completed_at(&self, zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
        parse_date(self.completed_on.as_deref()?, zone)
    }

    /// Whether VA calls it a partial refund (`PARTIAL_REFUND`) rather than a full one.
    pub fn is_partial(&self) -> bool {
        self.refund_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("PARTIAL_REFUND"))
    }
}

/// One page of `GET /va/refunds` (Spring-style pagination).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VaPage {
    /// The refunds on this page.
    #[serde(default)]
    pub contents: Vec<VaRefund>,
    /// Whether this is the last page.
    #[serde(default)]
    pub last: bool,
    /// This page's number.
    #[serde(default)]
    pub number: u32,
    /// Pages in all, as VA counts them.
    #[serde(default)]
    pub total_pages: u32,
    /// Refunds in all.
    #[serde(default)]
    pub total_elements: u64,
}

/// Reads one page of the refund list, or says why it cannot.
pub fn interpret_page(status: reqwest::StatusCode, body: &[u8]) -> Result<VaPage, String> {
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| format!("unreadable VA Services answer (HTTP {status}): {e}"))?;
    if !status.is_success()
        || envelope.request_successful != Some(true)
        || envelope.response_code.as_deref() != Some("0")
    {
        return Err(format!(
            "VA Services refused the list: {} (responseCode {}, HTTP {})",
            envelope.response_message.unwrap_or_default(),
            envelope.response_code.unwrap_or_default(),
            status.as_u16()
        ));
    }
    let body = envelope
        .response_body
        .ok_or_else(|| "VA Services answered the list without a body".to_string())?;
    serde_json::from_value(body).map_err(|e| format!("VA Services list page: {e}"))
}

impl VaServices {
    /// Creates the adapter.
    pub fn new(settings: ProviderSettings) -> Result<Self, crate::config::ConfigError> {
        let client = http_client(&settings)?;
        let status_path = settings
            .status_path
            .clone()
            .filter(|p| !is_disabled(p))
            .unwrap_or_else(|| DEFAULT_STATUS_PATH.into());
        let details_path = match settings.details_path.as_deref() {
            None => Some(DEFAULT_DETAILS_PATH.to_owned()),
            Some(p) if is_disabled(p) => None,
            Some(p) => Some(p.to_owned()),
        };
        Ok(Self {
            settings,
            client,
            status_path,
            details_path,
        })
    }

    fn templated(&self, template: &str, refund: &RefundRequest) -> reqwest::Url {
        templated_url(
            &self.settings.base_url,
            template,
            &[
                ("refundReference", &refund.refund_reference),
                ("transactionReference", &refund.transaction_reference),
            ],
        )
    }

    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.settings.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The initiate-refund body, amount as an exact JSON number.
    pub fn initiate_body(refund: &RefundRequest) -> Value {
        let mut body = json!({
            "transactionReference": refund.transaction_reference,
            "refundReference": refund.refund_reference,
            "refundAmount": json_number(refund.amount),
            "refundReason": refund.reason,
        });
        if let Some(note) = &refund.customer_note {
            body["customerNote"] = json!(note);
        }
        if let Some(d) = &refund.destination {
            body["destinationAccountNumber"] = json!(d.account_number);
            body["destinationAccountBankCode"] = json!(d.bank_code);
        }
        body
    }

    async fn call(&self, request: reqwest::RequestBuilder, submit: bool) -> ProviderOutcome {
        match self.fetch(request).await {
            Ok((status, bytes)) => interpret(status, &bytes, submit, self.settings.timezone),
            Err(outcome) => outcome,
        }
    }

    /// Sends an authenticated request and reads the answer; transport errors, 429 and 5xx
    /// come back already classified.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, axum::body::Bytes), ProviderOutcome> {
        let (status, headers, bytes) = self.fetch_raw(request).await?;
        if let Some(outcome) = classify_status(status, &headers) {
            return Err(outcome);
        }
        Ok((status, bytes))
    }

    /// Sends an authenticated request and reads the answer, whatever its status; only
    /// transport errors come back classified.
    async fn fetch_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<
        (
            reqwest::StatusCode,
            reqwest::header::HeaderMap,
            axum::body::Bytes,
        ),
        ProviderOutcome,
    > {
        let response = request
            .bearer_auth(self.settings.api_key.expose_secret())
            .send()
            .await
            .map_err(|e| classify_send_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| classify_send_error(&e))?;
        Ok((status, headers, bytes))
    }
}

impl VaServices {
    /// One page of VA's refund list (`GET /va/refunds?page=&size=`), for operators.
    pub async fn list_page(&self, page: u32, size: u32) -> Result<VaPage, String> {
        let mut url = self.url(&["va", "refunds"]);
        url.query_pairs_mut()
            .append_pair("page", &page.to_string())
            .append_pair("size", &size.to_string());
        let response = self
            .client
            .get(url)
            .bearer_auth(self.settings.api_key.expose_secret())
            .send()
            .await
            .map_err(|e| format!("VA Services list: {}", super::http::describe(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("VA Services list: {}", super::http::describe(&e)))?;
        interpret_page(status, &body)
    }

    /// Every refund VA lists, page after page until the last (or an empty page, or
    /// `max_pages`: their example answers say `totalPages: 0`, so the count is not trusted).
    pub async fn list_all(&self, size: u32, max_pages: u32) -> Result<Vec<VaRefund>, String> {
        let mut all = Vec::new();
        for page in 0..max_pages {
            let p = self.list_page(page, size).await?;
            let done = p.last || p.contents.is_empty();
            all.extend(p.contents);
            if done {
                break;
            }
        }
        Ok(all)
    }

    /// The zone VA's dates are read in.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.settings.timezone
    }

    /// After a documented "not found", looks for our refund in the payment's refund history
    /// ("Refund Details"): see [`interpret_history`]. Without a details path, the documented
    /// "not found" stands.
    async fn confirm_absent(&self, refund: &RefundRequest) -> ProviderOutcome {
        let Some(template) = self.details_path.as_deref() else {
            return ProviderOutcome::NotFound;
        };
        let url = self.templated(template, refund);
        match self.fetch_raw(self.client.get(url)).await {
            // A 501 "Not Implemented" without VA's envelope is a missing endpoint, not a
            // transient 5xx: the documented not-found decides (see `interpret_history`).
            Ok((status, _, body)) if is_missing_endpoint(status, &body) => interpret_history(
                status,
                &body,
                &refund.refund_reference,
                self.settings.timezone,
            ),
            Ok((status, headers, body)) => match classify_status(status, &headers) {
                Some(outcome) => outcome,
                None => interpret_history(
                    status,
                    &body,
                    &refund.refund_reference,
                    self.settings.timezone,
                ),
            },
            Err(outcome) => outcome,
        }
    }
}

/// Reads VA's envelope, when the body is one: a JSON object carrying `requestSuccessful` or
/// `responseCode`. Anything else (HTML from a proxy, `{}`, a framework's error page) is not
/// VA's answer.
pub fn read_envelope(body: &[u8]) -> Option<Envelope> {
    serde_json::from_slice::<Envelope>(body)
        .ok()
        .filter(|e| e.request_successful.is_some() || e.response_code.is_some())
}

fn is_success(status: reqwest::StatusCode, envelope: &Envelope) -> bool {
    status.is_success()
        && envelope.request_successful == Some(true)
        && envelope.response_code.as_deref() == Some("0")
}

fn describe_envelope(status: reqwest::StatusCode, envelope: &Envelope) -> String {
    format!(
        "{} (responseCode {}, HTTP {})",
        envelope.response_message.as_deref().unwrap_or("no message"),
        envelope.response_code.as_deref().unwrap_or(""),
        status.as_u16()
    )
}

/// Whether an answer says the endpoint itself does not exist: 404, 405 or 501 without VA's
/// envelope (a documented "not found" carries the envelope).
pub fn is_missing_endpoint(status: reqwest::StatusCode, body: &[u8]) -> bool {
    matches!(status.as_u16(), 404 | 405 | 501) && read_envelope(body).is_none()
}

/// Reads a "Refund Details" answer, asked only after "Get Refund Status" gave its documented
/// "not found": our refund's outcome if its history lists it, `NotFound` if the history was
/// read and does not list it or VA answers its own "not found" (404 with the envelope: no
/// such payment, so no refund of it), and also `NotFound` when the endpoint does not exist (the
/// assumed extra check is missing, so the documented answer decides). Anything else (a
/// refusal, 5xx, an unreadable or incomplete answer) leaves the outcome unknown and the
/// refund is looked at again later.
pub fn interpret_history(
    status: reqwest::StatusCode,
    body: &[u8],
    refund_reference: &str,
    zone: chrono_tz::Tz,
) -> ProviderOutcome {
    let unknown = |why: String| ProviderOutcome::Unknown {
        reason: format!("VA Services refund details: {why}"),
    };
    if is_missing_endpoint(status, body) {
        tracing::debug!(%status, "VA Services refund details endpoint absent; the documented not-found decides");
        return ProviderOutcome::NotFound;
    }
    let Some(envelope) = read_envelope(body) else {
        return unknown(format!(
            "HTTP {status} without VA's envelope (set PROVIDER_VA_SERVICES_DETAILS_PATH=off if this endpoint is not available to you)"
        ));
    };
    // VA's own "not found" for the payment: it has no refunds of it either.
    if status == reqwest::StatusCode::NOT_FOUND && !is_success(status, &envelope) {
        return ProviderOutcome::NotFound;
    }
    if !is_success(status, &envelope) {
        return unknown(format!(
            "not successful: {}",
            describe_envelope(status, &envelope)
        ));
    }
    let history = envelope
        .response_body
        .as_ref()
        .and_then(|b| b.get("refundsHistory"))
        .and_then(Value::as_array);
    let Some(history) = history else {
        return unknown("no refundsHistory in the answer".into());
    };
    let ours = history
        .iter()
        .filter_map(|r| serde_json::from_value::<VaRefund>(r.clone()).ok())
        .find(|r| r.refund_reference.as_deref() == Some(refund_reference));
    match ours {
        Some(r) => outcome_of(&r, zone),
        None => ProviderOutcome::NotFound,
    }
}

/// Maps one VA response (status code and body) to an outcome; `submit` says whether it
/// answers "Initiate Refund" (else "Get Refund Status"). 429 and 5xx never get here
/// ([`classify_status`] takes them first). The classification table is in the module
/// comment and in the tests' `CLASSIFICATION`.
pub fn interpret(
    status: reqwest::StatusCode,
    body: &[u8],
    submit: bool,
    zone: chrono_tz::Tz,
) -> ProviderOutcome {
    let call = if submit { "refund" } else { "status lookup" };
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        // Refused before processing: VA certainly does not have the refund from this call.
        return ProviderOutcome::Retryable {
            reason: format!(
                "VA Services refused our credentials on the {call} (HTTP {}); {CREDENTIALS_HINT}",
                status.as_u16()
            ),
            retry_after: None,
            may_have_reached_provider: false,
        };
    }
    let Some(envelope) = read_envelope(body) else {
        return if status.is_success() {
            // A 2xx we cannot read may still mean the refund was created.
            ProviderOutcome::Unknown {
                reason: format!("unreadable VA Services {call} answer (HTTP {status})"),
            }
        } else if submit {
            // Not VA's answer (a proxy, a wrong path): it may or may not have reached VA,
            // so the pipeline asks for the status before sending it again.
            ProviderOutcome::Retryable {
                reason: format!("VA Services refund answered HTTP {status} without VA's envelope"),
                retry_after: None,
                may_have_reached_provider: true,
            }
        } else {
            ProviderOutcome::Unknown {
                reason: format!(
                    "VA Services status lookup answered HTTP {status} without VA's envelope (check PROVIDER_VA_SERVICES_STATUS_PATH)"
                ),
            }
        };
    };
    if !is_success(status, &envelope) {
        if !submit {
            // Get Refund Status's documented "not found": VA's envelope on an HTTP 404.
            if status == reqwest::StatusCode::NOT_FOUND {
                return ProviderOutcome::NotFound;
            }
            // A failed lookup says nothing about the refund, which VA may have.
            return ProviderOutcome::Retryable {
                reason: format!(
                    "VA Services refused the status lookup: {}",
                    describe_envelope(status, &envelope)
                ),
                retry_after: None,
                may_have_reached_provider: false,
            };
        }
        return ProviderOutcome::Failed(FailureReason::new(
            FailureCode::ProviderRejected,
            format!(
                "VA Services rejected the refund: {}",
                describe_envelope(status, &envelope)
            ),
        ));
    }
    let refund: VaRefund = match envelope
        .response_body
        .map(serde_json::from_value)
        .transpose()
    {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => {
            return ProviderOutcome::Unknown {
                reason: format!("VA Services answered the {call} with success but no refund body"),
            }
        }
    };
    outcome_of(&refund, zone)
}

/// Maps a VA refund's status word to an outcome.
pub fn outcome_of(refund: &VaRefund, zone: chrono_tz::Tz) -> ProviderOutcome {
    let word = refund
        .refund_status
        .clone()
        .unwrap_or_else(|| "UNKNOWN".into());
    let provider_reference = refund.refund_reference.clone();
    match word.to_ascii_uppercase().as_str() {
        "COMPLETED" | "SUCCESS" | "SUCCESSFUL" => {
            if let Some(at) = refund.completed_on.as_deref() {
                if parse_date(at, zone).is_none() {
                    tracing::warn!(
                        completed_on = at,
                        "VA Services completedOn in an unexpected format"
                    );
                }
            }
            ProviderOutcome::Succeeded {
                provider_reference,
                provider_status: word,
                fee: None,
            }
        }
        "FAILED" | "FAILURE" | "REJECTED" | "DECLINED" | "CANCELLED" | "CANCELED" | "REVERSED" => {
            ProviderOutcome::Failed(FailureReason::new(
                FailureCode::ProviderRejected,
                format!(
                    "VA Services reports the refund {word}: {}",
                    refund.comment.as_deref().unwrap_or("no comment")
                ),
            ))
        }
        _ => ProviderOutcome::Accepted {
            provider_reference,
            provider_status: word,
            fee: None,
        },
    }
}

/// Parses VA's zone-less date in `zone`, returning UTC.
pub fn parse_date(text: &str, zone: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(text.trim(), DATE_FORMAT).ok()?;
    zone.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

#[async_trait]
impl Provider for VaServices {
    fn name(&self) -> ProviderName {
        ProviderName::VaServices
    }

    async fn submit(&self, refund: &RefundRequest) -> ProviderOutcome {
        let url = self.url(&["va", "refunds", "initiate-refund"]);
        let request = self.client.post(url).json(&Self::initiate_body(refund));
        self.call(request, true).await
    }

    async fn status(&self, refund: &RefundRequest) -> ProviderOutcome {
        let url = self.templated(&self.status_path, refund);
        match self.call(self.client.get(url), false).await {
            // "No such refund" decides a resubmit, so it is checked against "Refund Details"
            // (the payment's refund history) when that endpoint exists.
            ProviderOutcome::NotFound => self.confirm_absent(refund).await,
            other => other,
        }
    }

    fn verify_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        _now: DateTime<Utc>,
    ) -> Result<(), WebhookError> {
        super::signing::verify_body_hmac_header(
            ProviderName::VaServices,
            &self.settings,
            DEFAULT_SIGNATURE_HEADER,
            headers,
            body,
        )
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError> {
        parse_notification(body)
    }

    /// "Send Notification" once per payment of the window (VA resends per transaction).
    async fn resend_webhooks(
        &self,
        window: &super::resend::ResendWindow,
        dry_run: bool,
    ) -> super::resend::WebhookResend {
        use super::resend::{configured, fill_template, ResendRequest, WebhookResend};
        let Some((path, template)) = configured(
            self.settings.send_notification_path.as_deref(),
            DEFAULT_SEND_NOTIFICATION_PATH,
            self.settings.send_notification_body.as_deref(),
            DEFAULT_SEND_NOTIFICATION_BODY,
        ) else {
            return WebhookResend::Disabled;
        };
        let mut requests = Vec::new();
        for reference in window
            .transaction_references
            .iter()
            .take(MAX_SEND_NOTIFICATIONS)
        {
            let vars = [("transactionReference", json!(reference))];
            let body = match fill_template(template, &vars) {
                Ok(b) => b,
                Err(e) => {
                    requests.push(ResendRequest {
                        request: format!("POST {path} {template}"),
                        ok: Some(false),
                        detail: format!("PROVIDER_VA_SERVICES_SEND_NOTIFICATION_BODY: {e}"),
                    });
                    break;
                }
            };
            let request = format!("POST {path} {body}");
            if dry_run {
                requests.push(ResendRequest {
                    request,
                    ok: None,
                    detail: "dry run: not sent".into(),
                });
                continue;
            }
            let url = templated_url(&self.settings.base_url, path, &[]);
            let (ok, detail) = match self.fetch_raw(self.client.post(url).json(&body)).await {
                Err(outcome) => (false, format!("{outcome:?}")),
                Ok((status, _, bytes)) => match read_envelope(&bytes) {
                    Some(e) if is_success(status, &e) => (
                        true,
                        format!("VA accepted: {}", describe_envelope(status, &e)),
                    ),
                    Some(e) => (
                        false,
                        format!("VA refused: {}", describe_envelope(status, &e)),
                    ),
                    None => (false, format!("HTTP {status} without VA's envelope")),
                },
            };
            requests.push(ResendRequest {
                request,
                ok: Some(ok),
                detail,
            });
        }
        WebhookResend::Requests { requests }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    const LAGOS: chrono_tz::Tz = chrono_tz::Africa::Lagos;

    /// The "Initiate Refund" response example, verbatim from the provider's docs.
    const DOC_INITIATE_RESPONSE: &str =
        include_str!("../../fixtures/va_services/initiate-refund-response.json");

    /// Get Refund Status's "not found": VA's envelope with `requestSuccessful: false` on an
    /// HTTP 404 (the shape the docs give every answer; the message is ours).
    const NOT_FOUND_ENVELOPE: &str = r#"{"requestSuccessful":false,"responseMessage":"Refund not found","responseCode":"404","responseBody":null}"#;

    #[test]
    fn documented_initiate_response_is_accepted() {
        let o = interpret(
            StatusCode::OK,
            DOC_INITIATE_RESPONSE.as_bytes(),
            true,
            LAGOS,
        );
        assert_eq!(
            o,
            ProviderOutcome::Accepted {
                provider_reference: Some("909090911".into()),
                provider_status: "PENDING".into(),
                fee: None,
            }
        );
    }

    #[test]
    fn completed_status_succeeds_case_insensitively() {
        let body = DOC_INITIATE_RESPONSE
            .replace("\"PENDING\"", "\"completed\"")
            .replace(
                "\"completedOn\": null",
                "\"completedOn\": \"25/01/2024 01:39:13 AM\"",
            );
        assert!(matches!(
            interpret(StatusCode::OK, body.as_bytes(), false, LAGOS),
            ProviderOutcome::Succeeded { .. }
        ));
        let failed = DOC_INITIATE_RESPONSE.replace("\"PENDING\"", "\"FAILED\"");
        assert!(matches!(
            interpret(StatusCode::OK, failed.as_bytes(), false, LAGOS),
            ProviderOutcome::Failed(r) if r.code == FailureCode::ProviderRejected
        ));
        let odd = DOC_INITIATE_RESPONSE.replace("\"PENDING\"", "\"IN_REVIEW\"");
        assert!(matches!(
            interpret(StatusCode::OK, odd.as_bytes(), false, LAGOS),
            ProviderOutcome::Accepted { .. }
        ));
    }

    #[test]
    fn rejections_keep_the_message_and_code() {
        let body = br#"{"requestSuccessful":false,"responseMessage":"Refund amount exceeds refundable amount","responseCode":"99","responseBody":null}"#;
        match interpret(StatusCode::OK, body, true, LAGOS) {
            ProviderOutcome::Failed(r) => {
                assert_eq!(r.code, FailureCode::ProviderRejected);
                assert!(r
                    .message
                    .contains("Refund amount exceeds refundable amount"));
                assert!(r.message.contains("responseCode 99"));
            }
            other => panic!("{other:?}"),
        }
        // responseCode != "0" even with requestSuccessful true is a rejection.
        let body = br#"{"requestSuccessful":true,"responseMessage":"odd","responseCode":"12","responseBody":null}"#;
        assert!(matches!(
            interpret(StatusCode::OK, body, true, LAGOS),
            ProviderOutcome::Failed(_)
        ));
    }

    #[test]
    fn not_found_and_unreadable() {
        // The documented "not found" carries VA's envelope; a bare 404 is not VA's answer.
        assert_eq!(
            interpret(
                StatusCode::NOT_FOUND,
                NOT_FOUND_ENVELOPE.as_bytes(),
                false,
                LAGOS
            ),
            ProviderOutcome::NotFound
        );
        assert!(matches!(
            interpret(StatusCode::NOT_FOUND, b"{}", false, LAGOS),
            ProviderOutcome::Unknown { .. }
        ));
        assert!(matches!(
            interpret(StatusCode::OK, b"<html>", true, LAGOS),
            ProviderOutcome::Unknown { .. }
        ));
        // Refused before processing: retried with the hint, never a final failure.
        match interpret(StatusCode::UNAUTHORIZED, b"", true, LAGOS) {
            ProviderOutcome::Retryable {
                reason,
                may_have_reached_provider: false,
                ..
            } => assert!(reason.contains("PROVIDER_VA_SERVICES_API_KEY"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// Whether the row answers a submit ("Initiate Refund") or a status lookup.
    const SUBMIT: bool = true;
    const STATUS: bool = false;

    /// The classification table: every documented answer and every assumed one, as
    /// (call, HTTP status, body, expected outcome class). 429 and 5xx are classified before
    /// `interpret` (`classify_status`, tested in `providers::http`).
    fn classification() -> Vec<(bool, u16, String, &'static str)> {
        let doc = DOC_INITIATE_RESPONSE.to_string();
        let word = |w: &str| doc.replace("\"PENDING\"", &format!("\"{w}\""));
        let rejected = r#"{"requestSuccessful":false,"responseMessage":"Refund amount exceeds refundable amount","responseCode":"99","responseBody":null}"#;
        let odd_code = r#"{"requestSuccessful":true,"responseMessage":"odd","responseCode":"12","responseBody":null}"#;
        let no_body = r#"{"requestSuccessful":true,"responseMessage":"success","responseCode":"0","responseBody":null}"#;
        let unauthorized = r#"{"requestSuccessful":false,"responseMessage":"Unauthorized","responseCode":"401","responseBody":null}"#;
        vec![
            // Documented: the Initiate Refund example (PENDING), and the same body on a lookup.
            (SUBMIT, 200, doc.clone(), "accepted"),
            (STATUS, 200, doc.clone(), "accepted"),
            // Documented status words; assumed final failures; unknown words stay pending.
            (STATUS, 200, word("COMPLETED"), "succeeded"),
            (STATUS, 200, word("completed"), "succeeded"),
            (SUBMIT, 200, word("COMPLETED"), "succeeded"),
            (STATUS, 200, word("FAILED"), "failed"),
            (STATUS, 200, word("Reversed"), "failed"),
            (STATUS, 200, word("IN_REVIEW"), "accepted"),
            (
                STATUS,
                200,
                doc.replace("\"refundStatus\": \"PENDING\",", ""),
                "accepted",
            ),
            // A documented rejection envelope is final on a submit only.
            (SUBMIT, 200, rejected.into(), "failed"),
            (SUBMIT, 400, rejected.into(), "failed"),
            (SUBMIT, 200, odd_code.into(), "failed"),
            (STATUS, 200, rejected.into(), "retryable"),
            (STATUS, 400, rejected.into(), "retryable"),
            (STATUS, 200, odd_code.into(), "retryable"),
            // Credentials refused: before processing, never final.
            (SUBMIT, 401, String::new(), "retryable"),
            (SUBMIT, 403, unauthorized.into(), "retryable"),
            (STATUS, 401, unauthorized.into(), "retryable"),
            (STATUS, 403, "<html>Forbidden</html>".into(), "retryable"),
            // Get Refund Status's "not found": 404 with VA's envelope. Without it, unknown.
            (STATUS, 404, NOT_FOUND_ENVELOPE.into(), "not_found"),
            (STATUS, 404, "{}".into(), "unknown"),
            (STATUS, 404, String::new(), "unknown"),
            (STATUS, 404, "<html>Not Found</html>".into(), "unknown"),
            (STATUS, 405, String::new(), "unknown"),
            (STATUS, 400, "<html>Bad Request</html>".into(), "unknown"),
            (SUBMIT, 404, NOT_FOUND_ENVELOPE.into(), "failed"),
            // Not VA's answer on a submit: it may have reached VA; status first.
            (SUBMIT, 404, "<html>Not Found</html>".into(), "retryable"),
            (SUBMIT, 400, String::new(), "retryable"),
            // A 2xx we cannot read, or success without a refund: unknown.
            (SUBMIT, 200, "<html>".into(), "unknown"),
            (STATUS, 200, "<html>".into(), "unknown"),
            (SUBMIT, 200, no_body.into(), "unknown"),
            (STATUS, 200, no_body.into(), "unknown"),
            (STATUS, 200, "{}".into(), "unknown"),
        ]
    }

    #[test]
    fn classification_table() {
        for (submit, status, body, expected) in classification() {
            let status = StatusCode::from_u16(status).unwrap();
            let outcome = interpret(status, body.as_bytes(), submit, LAGOS);
            assert_eq!(
                outcome.describe().0,
                expected,
                "submit={submit} HTTP {status} {body}: {outcome:?}"
            );
            if !submit {
                assert!(
                    !matches!(outcome, ProviderOutcome::Failed(_))
                        || body.contains("FAILED")
                        || body.contains("Reversed"),
                    "only a final refund status fails a lookup: {body}"
                );
            }
        }
    }

    fn settings(secret: Option<&str>) -> ProviderSettings {
        let config = crate::config::Config::from_lookup(|k| match k {
            "PROVIDER_VA_SERVICES_BASE_URL" => Some("http://127.0.0.1:1".into()),
            "PROVIDER_VA_SERVICES_API_KEY" => Some("k".into()),
            "PROVIDER_VA_SERVICES_WEBHOOK_SECRET" => secret.map(Into::into),
            _ => None,
        })
        .unwrap();
        config.providers[&ProviderName::VaServices].clone()
    }

    const NOTIFICATION: &str = r#"{"transactionType":"CREDIT","amount":1500.25,"narration":"Payment for order 42","classificationCode":"NIP","success":true,"traceID":"trace-77","transactionReference":"000012240124191535300537886000","accountID":"0040088210","transactionTime":"25/01/2024 01:35:27 AM"}"#;

    #[test]
    fn webhook_signature_is_hmac_of_the_raw_body() {
        let va = VaServices::new(settings(Some("wh-secret"))).unwrap();
        // printf '%s' "$NOTIFICATION" | openssl dgst -sha256 -hmac wh-secret
        let sig =
            crate::providers::signing::hmac_sha256_hex(b"wh-secret", &[NOTIFICATION.as_bytes()]);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(DEFAULT_SIGNATURE_HEADER, sig.parse().unwrap());
        let now = Utc::now();
        assert_eq!(
            va.verify_webhook(&headers, NOTIFICATION.as_bytes(), now),
            Ok(())
        );
        let tampered = NOTIFICATION.replace("1500.25", "9500.25");
        assert!(matches!(
            va.verify_webhook(&headers, tampered.as_bytes(), now),
            Err(WebhookError::BadSignature(_))
        ));
        assert!(matches!(
            va.verify_webhook(&Default::default(), NOTIFICATION.as_bytes(), now),
            Err(WebhookError::BadSignature(m)) if m.contains("missing")
        ));
        let unconfigured = VaServices::new(settings(None)).unwrap();
        assert_eq!(
            unconfigured.verify_webhook(&headers, NOTIFICATION.as_bytes(), now),
            Err(WebhookError::NotConfigured(ProviderName::VaServices))
        );
    }

    #[test]
    fn notification_becomes_an_exact_payment_update() {
        let parsed = parse_notification(NOTIFICATION.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            vec![ProviderWebhook {
                event_id: Some("trace-77".into()),
                kind: WebhookKind::Payment {
                    transaction_reference: "000012240124191535300537886000".into(),
                    amount: Some(rust_decimal::Decimal::from_str_exact("1500.25").unwrap()),
                    currency: None,
                    status: "SUCCESS".into(),
                    succeeded: true,
                }
            }]
        );
        assert!(matches!(
            parse_notification(br#"{"amount": 5}"#),
            Err(WebhookError::Malformed(m)) if m.contains("transactionReference")
        ));
        assert!(matches!(
            parse_notification(br#"{"transactionReference":"t","amount":"abc"}"#),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn absence_is_believed_only_from_a_readable_history() {
        let history = |items: &str| {
            format!(
                r#"{{"requestSuccessful":true,"responseMessage":"success","responseCode":"0","responseBody":{{"transactionReference":"t","paymentAmount":100,"refundableAmount":75,"refundsHistory":[{items}]}}}}"#
            )
        };
        let listed = history(r#"{"refundReference":"r-1","refundStatus":"COMPLETED"}"#);
        assert!(matches!(
            interpret_history(StatusCode::OK, listed.as_bytes(), "r-1", LAGOS),
            ProviderOutcome::Succeeded { .. }
        ));
        assert_eq!(
            interpret_history(StatusCode::OK, listed.as_bytes(), "r-2", LAGOS),
            ProviderOutcome::NotFound
        );
        assert_eq!(
            interpret_history(StatusCode::OK, history("").as_bytes(), "r-1", LAGOS),
            ProviderOutcome::NotFound
        );
        // The endpoint does not exist: the documented "not found" decides.
        for (status, body) in [
            (StatusCode::NOT_FOUND, "{}"),
            (StatusCode::NOT_FOUND, ""),
            (StatusCode::NOT_FOUND, NOT_FOUND_ENVELOPE),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "<html>Method Not Allowed</html>",
            ),
            (StatusCode::NOT_IMPLEMENTED, ""),
        ] {
            assert_eq!(
                interpret_history(status, body.as_bytes(), "r-1", LAGOS),
                ProviderOutcome::NotFound,
                "{status} {body}"
            );
        }
        for (status, body) in [
            (StatusCode::UNAUTHORIZED, "".to_string()),
            (StatusCode::FORBIDDEN, NOT_FOUND_ENVELOPE.to_string()),
            (StatusCode::OK, "<html>".to_string()),
            (
                StatusCode::OK,
                r#"{"requestSuccessful":false,"responseCode":"99"}"#.to_string(),
            ),
            (
                StatusCode::OK,
                r#"{"requestSuccessful":true,"responseCode":"0","responseBody":{}}"#.to_string(),
            ),
        ] {
            assert!(
                matches!(
                    interpret_history(status, body.as_bytes(), "r-1", LAGOS),
                    ProviderOutcome::Unknown { .. }
                ),
                "{status} {body}"
            );
        }
    }

    /// The "Get Refunds" example, verbatim from the provider's docs.
    const DOC_LIST_RESPONSE: &str =
        include_str!("../../fixtures/va_services/get-refunds-response.json");

    #[test]
    fn documented_list_page_parses_with_exact_amounts_and_utc_dates() {
        let page = interpret_page(StatusCode::OK, DOC_LIST_RESPONSE.as_bytes()).unwrap();
        assert_eq!((page.number, page.last, page.total_elements), (1, false, 1));
        let r = &page.contents[0];
        assert_eq!(r.refund_reference.as_deref(), Some("909090911"));
        assert!(r.is_partial());
        assert_eq!(
            r.refund_amount.as_ref().map(|v| v.to_string()),
            Some("10".into())
        );
        assert_eq!(
            r.created_at(LAGOS).map(|t| t.to_rfc3339()),
            Some("2024-01-25T00:35:27+00:00".into())
        );
        assert_eq!(
            r.completed_at(LAGOS).map(|t| t.to_rfc3339()),
            Some("2024-01-25T00:39:13+00:00".into())
        );
        let refused =
            br#"{"requestSuccessful":false,"responseMessage":"Unauthorized","responseCode":"401"}"#;
        assert!(interpret_page(StatusCode::OK, refused)
            .unwrap_err()
            .contains("Unauthorized"));
        assert!(interpret_page(StatusCode::OK, b"<html>").is_err());
    }

    #[tokio::test]
    async fn list_all_pages_through_the_sandbox() {
        use refund_sandbox::{Sandbox, SandboxConfig};
        let sandbox = Sandbox::new(SandboxConfig::default());
        let (addr, _) = sandbox.spawn(0, std::future::pending()).await.unwrap();
        let va = VaServices::new(
            crate::config::Config::from_lookup(|k| match k {
                "PROVIDER_VA_SERVICES_BASE_URL" => Some(format!("http://{addr}")),
                "PROVIDER_VA_SERVICES_API_KEY" => Some("sandbox-va-key".into()),
                _ => None,
            })
            .unwrap()
            .providers[&ProviderName::VaServices]
                .clone(),
        )
        .unwrap();
        for n in 0..5 {
            let r = RefundRequest {
                refund_reference: format!("list-{n}"),
                transaction_reference: "tx-list".into(),
                amount: rust_decimal::Decimal::new(1000 + n, 2),
                currency: "NGN".into(),
                reason: "r".into(),
                customer_note: None,
                destination: Some(crate::domain::Destination {
                    account_number: "0040088210".into(),
                    bank_code: "000012".into(),
                }),
                provider_reference: None,
                metadata: None,
            };
            let outcome = va.submit(&r).await;
            assert!(
                matches!(outcome, ProviderOutcome::Accepted { .. }),
                "{outcome:?}"
            );
        }
        let all = va.list_all(2, 10).await.unwrap();
        let refs: Vec<_> = all
            .iter()
            .filter_map(|r| r.refund_reference.clone())
            .collect();
        assert_eq!(refs, ["list-0", "list-1", "list-2", "list-3", "list-4"]);
        assert_eq!(sandbox.ledger().list_calls, 3, "pages of 2, 2 and 1");
    }

    /// The adapter itself, against a VA built from the docs: the documented "not found"
    /// decides when Refund Details is missing (404, 405, 501 without the envelope) or
    /// switched off, not when it is merely failing (503).
    #[tokio::test]
    async fn documented_not_found_decides_when_refund_details_is_missing() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let request = |reference: &str| RefundRequest {
            refund_reference: reference.into(),
            transaction_reference: format!("tx-{reference}"),
            amount: rust_decimal::Decimal::new(1000, 2),
            currency: "NGN".into(),
            reason: "r".into(),
            customer_note: None,
            destination: None,
            provider_reference: None,
            metadata: None,
        };
        let server = MockServer::start().await;
        let adapter = |details: Option<&str>| {
            let uri = server.uri();
            let details = details.map(str::to_owned);
            VaServices::new(
                crate::config::Config::from_lookup(move |k| match k {
                    "PROVIDER_VA_SERVICES_BASE_URL" => Some(uri.clone()),
                    "PROVIDER_VA_SERVICES_API_KEY" => Some("k".into()),
                    "PROVIDER_VA_SERVICES_DETAILS_PATH" => details.clone(),
                    _ => None,
                })
                .unwrap()
                .providers[&ProviderName::VaServices]
                    .clone(),
            )
            .unwrap()
        };
        for (reference, details_status) in [
            ("r-404", 404),
            ("r-405", 405),
            ("r-501", 501),
            ("r-503", 503),
        ] {
            Mock::given(method("GET"))
                .and(path(format!("/va/refunds/{reference}")))
                .respond_with(ResponseTemplate::new(404).set_body_string(NOT_FOUND_ENVELOPE))
                .mount(&server)
                .await;
            Mock::given(method("GET"))
                .and(path(format!("/va/refunds/details/tx-{reference}")))
                .respond_with(ResponseTemplate::new(details_status))
                .mount(&server)
                .await;
        }
        let va = adapter(None);
        for reference in ["r-404", "r-405", "r-501"] {
            assert_eq!(
                va.status(&request(reference)).await,
                ProviderOutcome::NotFound,
                "{reference}"
            );
        }
        assert!(matches!(
            va.status(&request("r-503")).await,
            ProviderOutcome::Retryable { .. }
        ));
        // Switched off: the status lookup alone decides, and details is never asked.
        let before = server.received_requests().await.unwrap().len();
        assert_eq!(
            adapter(Some("off")).status(&request("r-503")).await,
            ProviderOutcome::NotFound
        );
        let asked = server.received_requests().await.unwrap();
        assert_eq!(asked.len(), before + 1);
        assert!(!asked[before].url.path().contains("details"));
    }

    #[test]
    fn dates_are_read_in_the_configured_zone() {
        let t = parse_date("25/01/2024 01:35:27 AM", LAGOS).unwrap();
        assert_eq!(t.to_rfc3339(), "2024-01-25T00:35:27+00:00");
        let pm = parse_date("25/01/2024 01:35:27 PM", chrono_tz::UTC).unwrap();
        assert_eq!(pm.to_rfc3339(), "2024-01-25T13:35:27+00:00");
        assert!(parse_date("2024-01-25", LAGOS).is_none());
    }

    #[test]
    fn initiate_body_matches_the_docs_and_keeps_2517_exact() {
        let r = RefundRequest {
            refund_reference: "909090911".into(),
            transaction_reference: "000012240124191535300537886000".into(),
            amount: rust_decimal::Decimal::from_str_exact("25.17").unwrap(),
            currency: "NGN".into(),
            reason: "Order cancelled!".into(),
            customer_note: Some("An optional note".into()),
            destination: Some(crate::domain::Destination {
                account_number: "0040088210".into(),
                bank_code: "000012".into(),
            }),
            provider_reference: None,
            metadata: None,
        };
        let body = VaServices::initiate_body(&r).to_string();
        assert!(body.contains(r#""refundAmount":25.17"#), "{body}");
        assert!(body.contains(r#""destinationAccountBankCode":"000012""#));
        assert!(body.contains(r#""customerNote":"An optional note""#));
    }
}
