//! VA Services (Transaction Point) refund API, as its published docs describe it
//! (shared/providers/va-services-*.txt), with the gaps filled the way
//! shared/providers/README.md decides them:
//!
//! - Auth is a bearer token (`SandboxConfig::va_api_key`); the docs leave it open.
//! - "Get Refund Status" is `GET /va/refunds/{refundReference}` (path open in the docs) and
//!   "Refund Details" is `GET /va/refunds/details/{transactionReference}` (path ours).
//! - Dates are `dd/MM/yyyy hh:mm:ss AM/PM` with no zone; we write them in
//!   `SandboxConfig::zone` (default Africa/Lagos).
//! - A repeated `refundReference` is an idempotent replay answered with the existing refund.
//!   The docs do not say so, but refund-worker uses the reference as its idempotency key, so
//!   this is the behaviour the worker is built (and tested) against.
//! - FAILED is not in the docs; it exists here only when a test forces it.
//! - Spring-style paging is lenient like Spring's resolver: a bad or missing `page` reads 0,
//!   a bad or missing `size` reads 20, sizes above 100 are cut to 100.
//!
//! Order of checks, which decides what a fault leaves behind: every call is authenticated
//! (401, counted only in `rejectedAuth`), counted, then may get an injected HTTP error
//! (`failNext`, then `error_rate`) before any work. An initiate call is then validated
//! (400), may be declined by `rejectNext` (200, code "99"), is answered as a replay if its
//! `refundReference` is known, is checked against the payment's balance (200, code "99"),
//! is recorded, and only then may hang (`timeoutAfterAcceptNext`, then `timeout_rate`).
//! All of that is decided under the sandbox lock in one synchronous closure; the async
//! handlers add the hang and the latency afterwards.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::book::{Book, OutcomeKey, Refund, Stage};
use super::gate::ProviderError;
use super::notify::Notice;
use super::{
    decimal_and_text, decimal_to_json, default_currency, CallKind, Payment, Provider, Reply,
    Sandbox, SandboxConfig, Simulator, State,
};

/// The header VA Services' notifications carry their signature in (hex HMAC-SHA256 of the
/// raw body with the webhook secret; the README leaves the scheme open, this is ours).
pub const SIGNATURE_HEADER: &str = "X-VA-Signature";

/// VA's zone-less date format, e.g. `25/01/2024 01:35:27 AM`.
const DATE_FORMAT: &str = "%d/%m/%Y %I:%M:%S %p";
/// "Send Notification": our guess of its path, as the adapter's default, written here again.
/// Not served with `--strict`.
pub const SEND_NOTIFICATION_PATH: &str = "/va/notifications/send";
const DEFAULT_PAGE_SIZE: usize = 20;
const MAX_PAGE_SIZE: usize = 100;

/// VA routes. Strict: only what VA's docs define; "Refund Details" and "Send Notification"
/// are documented pages without a documented path, so a strict VA answers ours like any
/// unknown path.
pub(super) fn routes(strict: bool) -> Router<Sandbox> {
    let documented = Router::new()
        .route("/va/refunds/initiate-refund", post(initiate))
        .route("/va/refunds", get(list))
        .route("/va/refunds/{refund_reference}", get(status));
    if strict {
        return documented;
    }
    documented
        .route("/va/refunds/details/{transaction_reference}", get(details))
        .route(SEND_NOTIFICATION_PATH, post(send_notification))
}

/// What VA Services knows: payments by reference, refunds in creation order (by refund
/// reference and by payment), and outcomes forced by tests (keyed by refund reference, so
/// they may precede the refund). VA sends no refund notifications.
pub(super) struct VaState {
    pub(super) book: Book<VaDetail>,
}

impl Default for VaState {
    fn default() -> Self {
        Self {
            book: Book::new(Provider::VaServices, word, OutcomeKey::Reference)
                .without_refund_notifications(),
        }
    }
}

/// What a VA refund keeps beside the book's fields.
pub(super) struct VaDetail {
    refund_reason: String,
    customer_note: Option<String>,
    /// Fixed at creation, from the payment amount at that time.
    refund_type: &'static str,
}

type VaRefund = Refund<VaDetail>;

/// VA's words; FAILED is not in the docs, it exists here only when a test forces it.
fn word(stage: Stage) -> &'static str {
    match stage {
        Stage::AwaitingApproval | Stage::Pending => "PENDING",
        Stage::Completed => "COMPLETED",
        Stage::Failed | Stage::Cancelled => "FAILED",
    }
}

fn comment(stage: Stage) -> &'static str {
    match stage {
        Stage::AwaitingApproval | Stage::Pending => "Transaction refund is in progress.",
        Stage::Completed => "Transaction refund completed.",
        Stage::Failed | Stage::Cancelled => "Refund failed at the bank.",
    }
}

/// VA's response envelope; `responseBody` is `null` on errors.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<T> {
    request_successful: bool,
    response_message: String,
    response_code: String,
    response_body: Option<T>,
}

fn success<T: Serialize>(body: T) -> Response {
    let envelope = Envelope {
        request_successful: true,
        response_message: "success".to_owned(),
        response_code: "0".to_owned(),
        response_body: Some(body),
    };
    (StatusCode::OK, Json(envelope)).into_response()
}

fn failure(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let envelope = Envelope::<()> {
        request_successful: false,
        response_message: message.into(),
        response_code: code.to_owned(),
        response_body: None,
    };
    (status, Json(envelope)).into_response()
}

/// Every VA error answer. The HTTP status and `responseCode` are chosen here, in one place;
/// the message becomes the `responseMessage`.
#[derive(Debug, thiserror::Error)]
enum VaError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{} (injected by sandbox)", .0.canonical_reason().unwrap_or("Error"))]
    Injected(StatusCode),
    #[error("{0}")]
    Invalid(String),
    #[error("Refund request declined (injected by sandbox)")]
    Declined,
    #[error("Refund amount exceeds refundable amount. Refundable amount: {0}")]
    ExceedsRefundable(Decimal),
    #[error("Refund not found")]
    NotFound,
}

impl IntoResponse for VaError {
    fn into_response(self) -> Response {
        // Business declines are HTTP 200 with code "99", the way VA answers them.
        let (status, code) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "401"),
            Self::Injected(status) => (*status, status.as_str()),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "400"),
            Self::Declined | Self::ExceedsRefundable(_) => (StatusCode::OK, "99"),
            Self::NotFound => (StatusCode::NOT_FOUND, "404"),
        };
        failure(status, code, self.to_string())
    }
}

/// One refund as VA answers it (initiate, status, list and details share it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefundView<'a> {
    transaction_reference: &'a str,
    refund_reference: &'a str,
    refund_amount: Value,
    refund_reason: &'a str,
    customer_note: Option<&'a str>,
    refund_type: &'static str,
    refund_status: &'static str,
    refund_strategy: &'static str,
    comment: &'static str,
    completed_on: Option<String>,
    created_on: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SortView {
    sorted: bool,
    unsorted: bool,
    empty: bool,
}

// No sort criteria are accepted, so this is Spring's `Sort.unsorted()`.
const UNSORTED: SortView = SortView {
    sorted: false,
    unsorted: true,
    empty: true,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageableView {
    sort: SortView,
    page_size: usize,
    page_number: usize,
    offset: usize,
    paged: bool,
    unpaged: bool,
}

/// Spring's `Page`, with the field names of VA's example (`contents`, `noOfElements`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageView<'a> {
    contents: Vec<RefundView<'a>>,
    pageable: PageableView,
    sort: SortView,
    last: bool,
    first: bool,
    empty: bool,
    total_elements: usize,
    total_pages: usize,
    no_of_elements: usize,
    size: usize,
    number: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailsView<'a> {
    transaction_reference: &'a str,
    payment_amount: Value,
    refundable_amount: Value,
    refunds_history: Vec<RefundView<'a>>,
}

fn format_date(at: DateTime<Utc>, zone: chrono_tz::Tz) -> String {
    at.with_timezone(&zone).format(DATE_FORMAT).to_string()
}

/// VA Services' transaction (pay-in) notification for a payment, with the fields the docs
/// list: `transactionType`, `amount` (an exact JSON number), `narration`,
/// `classificationCode`, `success`, `traceID`, `transactionReference`, `accountID` and
/// `transactionTime` (VA's `dd/MM/yyyy hh:mm:ss a`, in the configured zone). The values of
/// `transactionType`, `narration`, `classificationCode` and `accountID` are ours: the docs
/// name the fields only.
fn payin_notice(config: &SandboxConfig, payment: &Payment, at: DateTime<Utc>) -> Notice {
    let body = serde_json::json!({
        "transactionType": "CREDIT",
        "amount": decimal_to_json(payment.amount),
        "narration": format!("Payment {}", payment.transaction_reference),
        "classificationCode": "INFLOW",
        "success": true,
        "traceID": uuid::Uuid::new_v4().to_string(),
        "transactionReference": payment.transaction_reference,
        "accountID": "VA-SANDBOX-0001",
        "transactionTime": format_date(at, config.zone),
    })
    .to_string();
    Notice::hmac(Provider::VaServices, body, SIGNATURE_HEADER)
}

impl Simulator for VaState {
    book_field!(VaDetail);

    fn payin_notice(
        &self,
        config: &SandboxConfig,
        payment: &Payment,
        at: DateTime<Utc>,
    ) -> Option<Notice> {
        Some(payin_notice(config, payment, at))
    }
}

impl VaState {
    fn view<'a>(
        &self,
        refund: &'a VaRefund,
        config: &SandboxConfig,
        now: Instant,
    ) -> RefundView<'a> {
        let stage = self.book.stage(refund, config, now);
        RefundView {
            transaction_reference: &refund.payment,
            refund_reference: &refund.key,
            refund_amount: decimal_to_json(refund.amount),
            refund_reason: &refund.detail.refund_reason,
            customer_note: refund.detail.customer_note.as_deref(),
            refund_type: refund.detail.refund_type,
            refund_status: word(stage),
            refund_strategy: "MERCHANT_WALLET",
            comment: comment(stage),
            completed_on: Book::completed_at(refund, stage, config)
                .map(|at| format_date(at, config.zone)),
            created_on: format_date(refund.created_at, config.zone),
        }
    }

    /// Replays an existing refund or records a new one. `Ok` is a success answer (the call
    /// may then hang), `Err` a decline.
    fn accept(
        &mut self,
        request: InitiateRequest,
        config: &SandboxConfig,
        now: Instant,
    ) -> Result<Response, VaError> {
        let replayed = self.book.replay(&request.refund_reference, |r| {
            r.payment != request.transaction_reference || r.amount != request.amount
        });
        if let Some(refund) = replayed.and_then(|i| self.book.at(i)) {
            return Ok(success(self.view(refund, config, now)));
        }

        let payment_amount = self
            .book
            .payment_or_default(&request.transaction_reference, config, default_currency)
            .amount;
        let refundable = self
            .book
            .refundable(&request.transaction_reference, config, now);
        if request.amount > refundable {
            return Err(VaError::ExceedsRefundable(refundable));
        }

        tracing::info!(
            refund_reference = %request.refund_reference,
            amount = %request.amount_text,
            "va sandbox: refund accepted"
        );
        let detail = VaDetail {
            refund_type: if request.amount < payment_amount {
                "PARTIAL_REFUND"
            } else {
                "FULL_REFUND"
            },
            refund_reason: request.refund_reason,
            customer_note: request.customer_note,
        };
        let refund = Refund::new(
            request.refund_reference,
            request.transaction_reference,
            (request.amount, request.amount_text),
            request.body,
            now,
            detail,
        );
        let index = self.book.record(refund);
        let refund = self.book.at(index).ok_or(VaError::NotFound)?;
        Ok(success(self.view(refund, config, now)))
    }
}

/// A validated initiate body.
struct InitiateRequest {
    transaction_reference: String,
    refund_reference: String,
    amount: Decimal,
    amount_text: String,
    refund_reason: String,
    customer_note: Option<String>,
    /// The raw body, kept for the ledger.
    body: String,
}

impl InitiateRequest {
    /// Validates like a strict provider; the error is the `responseMessage` of a 400.
    fn parse(body: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body)
            .map_err(|_| "Malformed JSON request body: not UTF-8".to_owned())?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("Malformed JSON request body: {e}"))?;
        let Value::Object(fields) = &value else {
            return Err("Request body must be a JSON object".to_owned());
        };
        let required = |name: &str| match fields.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            None | Some(Value::Null) | Some(Value::String(_)) => Err(format!("{name} is required")),
            Some(_) => Err(format!("{name} must be a string")),
        };
        let transaction_reference = required("transactionReference")?;
        let refund_reference = required("refundReference")?;
        let (amount, amount_text) = match fields.get("refundAmount") {
            None | Some(Value::Null) => return Err("refundAmount is required".to_owned()),
            Some(v) => decimal_and_text(v)
                .ok_or_else(|| "refundAmount must be a decimal number".to_owned())?,
        };
        if amount <= Decimal::ZERO {
            return Err("refundAmount must be greater than zero".to_owned());
        }
        let refund_reason = required("refundReason")?;
        let customer_note = match fields.get("customerNote") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("customerNote must be a string".to_owned()),
        };
        required("destinationAccountNumber")?;
        required("destinationAccountBankCode")?;
        Ok(Self {
            transaction_reference,
            refund_reference,
            amount,
            amount_text,
            refund_reason,
            customer_note,
            body: text.to_owned(),
        })
    }
}

/// `Authorization: Bearer <key>`; the scheme is case-insensitive (RFC 7235), the token is
/// compared in constant time out of habit.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    let (token, key) = (token.trim().as_bytes(), key.as_bytes());
    scheme.eq_ignore_ascii_case("bearer")
        && token.len() == key.len()
        && token.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl ProviderError for VaError {
    fn injected(status: StatusCode) -> Self {
        Self::Injected(status)
    }
}

/// Runs one VA call through the fault gate, authenticated by its bearer token.
async fn va_call(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    kind: CallKind,
    decide: impl FnOnce(&mut State, &SandboxConfig) -> Result<Reply, VaError>,
) -> Response {
    let authenticate = |_: &mut State, config: &SandboxConfig| {
        authorized(headers, &config.va_api_key)
            .then_some(())
            .ok_or(VaError::Unauthorized)
    };
    sandbox.call(kind, authenticate, decide).await
}

async fn initiate(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    va_call(&sandbox, &headers, CallKind::Submit, |state, config| {
        let request = InitiateRequest::parse(&body).map_err(VaError::Invalid)?;
        state.submit(
            config,
            || VaError::Declined,
            |state| state.va.accept(request, config, Instant::now()),
        )
    })
    .await
}

async fn status(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    Path(refund_reference): Path<String>,
) -> Response {
    va_call(&sandbox, &headers, CallKind::Status, |state, config| {
        let refund = state
            .va
            .book
            .get(&refund_reference)
            .ok_or(VaError::NotFound)?;
        let view = state.va.view(refund, config, Instant::now());
        Ok(Reply::now(success(view)))
    })
    .await
}

async fn list(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let number = params
        .get("page")
        .and_then(|p| p.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let size = params
        .get("size")
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE);
    va_call(&sandbox, &headers, CallKind::List, |state, config| {
        let now = Instant::now();
        let va = &state.va;
        let offset = number.saturating_mul(size);
        let contents: Vec<_> = va
            .book
            .iter()
            .skip(offset)
            .take(size)
            .map(|r| va.view(r, config, now))
            .collect();
        let total_elements = va.book.len();
        let total_pages = total_elements.div_ceil(size);
        Ok(Reply::now(success(PageView {
            pageable: PageableView {
                sort: UNSORTED,
                page_size: size,
                page_number: number,
                offset,
                paged: true,
                unpaged: false,
            },
            sort: UNSORTED,
            // Spring: last = !hasNext = !(number + 1 < totalPages).
            last: number.saturating_add(1) >= total_pages,
            first: number == 0,
            empty: contents.is_empty(),
            total_elements,
            total_pages,
            no_of_elements: contents.len(),
            size,
            number,
            contents,
        })))
    })
    .await
}

async fn details(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    Path(transaction_reference): Path<String>,
) -> Response {
    va_call(&sandbox, &headers, CallKind::Details, |state, config| {
        let now = Instant::now();
        let va = &state.va;
        let tx = transaction_reference.as_str();
        // An unknown payment reads as the default one without being stored: reads stay pure.
        Ok(Reply::now(success(DetailsView {
            transaction_reference: tx,
            payment_amount: decimal_to_json(va.book.payment_amount(tx, config)),
            refundable_amount: decimal_to_json(va.book.refundable(tx, config, now)),
            refunds_history: va
                .book
                .in_group(tx)
                .map(|r| va.view(r, config, now))
                .collect(),
        })))
    })
    .await
}

/// "Send Notification" (`{"transactionReference"}`): acknowledged and counted; a known
/// payment's pay-in notification is queued again.
async fn send_notification(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    va_call(&sandbox, &headers, CallKind::Resend, |state, _config| {
        let tx = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("transactionReference")?.as_str().map(str::to_owned))
            .filter(|t| !t.trim().is_empty());
        Ok(Reply::now(match tx {
            Some(tx) => {
                // A known payment's pay-in notification is sent again; an unknown one is
                // acknowledged all the same (the docs show no error for it).
                state.va.book.payments.notify_again(&tx);
                success(serde_json::json!({ "transactionReference": tx }))
            }
            None => failure(
                StatusCode::BAD_REQUEST,
                "400",
                "transactionReference is required",
            ),
        }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{refund_body, start};
    use super::super::{Faults, ForcedOutcome, OutcomeStatus, Payment, Provider, SandboxConfig};
    use super::{format_date, DATE_FORMAT};
    use chrono::{NaiveDateTime, TimeZone, Utc};
    use rust_decimal::Decimal;
    use serde_json::{json, Value};
    use std::str::FromStr;
    use std::time::Duration;

    const DOCS_EXAMPLE: &str = r#"{
    "transactionReference": "000012240124191535300537886000",
    "refundReference":"909090911",
    "refundAmount": 10,
    "refundReason": "Order cancelled!",
    "customerNote": "An optional note",
    "destinationAccountNumber": "0040088210",
    "destinationAccountBankCode": "000012"
}"#;

    fn parse_va_date(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, DATE_FORMAT)
            .unwrap_or_else(|e| panic!("{text:?} is not a VA date: {e}"))
    }

    fn payment(transaction: &str, amount: &str) -> Payment {
        Payment {
            provider: Provider::VaServices,
            transaction_reference: transaction.to_owned(),
            amount: Decimal::from_str(amount).unwrap(),
            currency: "NGN".to_owned(),
        }
    }

    #[test]
    fn dates_use_the_documented_format_in_the_zone() {
        let zone = chrono_tz::Africa::Lagos;
        let at = Utc.with_ymd_and_hms(2024, 1, 25, 0, 35, 27).unwrap();
        assert_eq!(format_date(at, zone), "25/01/2024 01:35:27 AM");
        let at = Utc.with_ymd_and_hms(2024, 1, 25, 12, 5, 0).unwrap();
        assert_eq!(format_date(at, zone), "25/01/2024 01:05:00 PM");
    }

    #[tokio::test]
    async fn bad_bearer_is_401_and_records_nothing() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.inject(Faults {
            fail_next: 1,
            ..Faults::default()
        });
        let url = server.url("/va/refunds/initiate-refund");
        let body = refund_body("tx", "r-1", "5");
        let attempts = [
            server.client.post(&url),
            server.client.post(&url).bearer_auth("wrong-key"),
            server
                .client
                .post(&url)
                .basic_auth("sandbox-va-key", None::<&str>),
        ];
        for request in attempts {
            let response = request.body(body.clone()).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 401);
            let envelope: Value = response.json().await.unwrap();
            assert_eq!(
                envelope,
                json!({"requestSuccessful": false, "responseMessage": "Unauthorized", "responseCode": "401", "responseBody": null})
            );
        }
        let ledger = server.sandbox.ledger();
        assert!(ledger.refunds.is_empty() && ledger.payments.is_empty());
        assert_eq!((ledger.rejected_auth, ledger.submit_calls), (3, 0));
        assert_eq!(
            ledger.pending_faults.fail_next, 1,
            "a refused call consumes no fault"
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn amount_sent_as_a_number_is_kept_exactly() {
        let server = start(SandboxConfig::default()).await;
        let body = refund_body("tx-1", "r-1", "25.17");
        let (status, text, envelope) = server.initiate(&body).await;
        assert_eq!(status, 200);
        assert!(text.contains(r#""refundAmount":25.17,"#), "{text}");
        assert_eq!(
            envelope["responseBody"]["refundAmount"].to_string(),
            "25.17"
        );
        let ledger = server.sandbox.ledger();
        let refund = ledger.refund("r-1").unwrap();
        assert_eq!(refund.refund_amount, "25.17");
        assert_eq!(refund.request_body, body);
        assert!(refund.request_body.contains("25.17"));
        assert_eq!(refund.submit_count, 1);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn replay_answers_the_same_refund_once() {
        let server = start(SandboxConfig::default()).await;
        let body = refund_body("tx-1", "r-1", "25.17");
        let (_, _, first) = server.initiate(&body).await;
        let (status, _, second) = server.initiate(&body).await;
        assert_eq!(status, 200);
        assert_eq!(first, second);
        // A replay with another amount is answered with the original and flagged.
        let (_, _, third) = server.initiate(&refund_body("tx-1", "r-1", "30")).await;
        assert_eq!(third["responseBody"]["refundAmount"].to_string(), "25.17");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refunds[0].submit_count, 3);
        assert_eq!(ledger.refunds[0].mismatched_replays, 1);
        assert_eq!(ledger.submit_calls, 3);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn over_balance_is_declined_with_code_99() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(payment("tx-1", "100.00"));
        let (_, _, ok) = server.initiate(&refund_body("tx-1", "r-1", "60")).await;
        assert_eq!(ok["responseBody"]["refundType"], "PARTIAL_REFUND");
        let (status, _, declined) = server.initiate(&refund_body("tx-1", "r-2", "40.01")).await;
        assert_eq!(status, 200);
        assert_eq!(
            declined,
            json!({"requestSuccessful": false, "responseMessage": "Refund amount exceeds refundable amount. Refundable amount: 40.00", "responseCode": "99", "responseBody": null})
        );
        assert!(server.sandbox.ledger().refund("r-2").is_none());
        let (_, _, ok) = server.initiate(&refund_body("tx-1", "r-3", "40")).await;
        assert_eq!(ok["responseCode"], "0", "the exact remainder still fits");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn fail_next_answers_500_before_any_work() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.inject(Faults {
            fail_next: 2,
            ..Faults::default()
        });
        let body = refund_body("tx-1", "r-1", "5");
        for _ in 0..2 {
            let (status, _, envelope) = server.initiate(&body).await;
            assert_eq!(status, 500);
            assert_eq!(envelope["requestSuccessful"], json!(false));
            assert_eq!(envelope["responseCode"], "500");
            assert_eq!(envelope["responseBody"], Value::Null);
        }
        let (status, _, envelope) = server.initiate(&body).await;
        assert_eq!(
            (status, envelope["responseCode"].as_str()),
            (200, Some("0"))
        );
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refunds[0].submit_count, 1);
        assert_eq!((ledger.injected_failures, ledger.submit_calls), (2, 3));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn reject_next_declines_without_recording() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.inject(Faults {
            reject_next: 1,
            ..Faults::default()
        });
        let body = refund_body("tx-1", "r-1", "5");
        let (status, _, envelope) = server.initiate(&body).await;
        assert_eq!(status, 200);
        assert_eq!(envelope["requestSuccessful"], json!(false));
        assert_eq!(envelope["responseCode"], "99");
        assert!(server.sandbox.ledger().refunds.is_empty());
        let (_, _, envelope) = server.initiate(&body).await;
        assert_eq!(envelope["responseCode"], "0");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn timeout_after_accept_records_the_refund() {
        let server = start(SandboxConfig {
            hang: Duration::from_secs(5),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.inject(Faults {
            timeout_after_accept_next: 1,
            ..Faults::default()
        });
        let error = server
            .client
            .post(server.url("/va/refunds/initiate-refund"))
            .bearer_auth(&server.key)
            .body(refund_body("tx-1", "r-1", "7.50"))
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");

        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refund("r-1").unwrap().refund_amount, "7.50");
        assert_eq!(ledger.injected_timeouts, 1);
        let (status, envelope) = server.get("/va/refunds/r-1").await;
        assert_eq!(status, 200);
        assert_eq!(envelope["responseBody"]["refundReference"], "r-1");

        // The worker's resubmission with the same key is a replay, answered at once.
        let (_, _, envelope) = server.initiate(&refund_body("tx-1", "r-1", "7.50")).await;
        assert_eq!(envelope["responseCode"], "0");
        assert_eq!(server.sandbox.ledger().refunds[0].submit_count, 2);
        // Shutdown cuts any hang short instead of waiting the full 5 s.
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn refund_completes_after_the_delay() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_millis(300),
            ..SandboxConfig::default()
        })
        .await;
        let (_, _, created) = server.initiate(&refund_body("tx-1", "r-1", "5")).await;
        let created = &created["responseBody"];
        assert_eq!(created["refundStatus"], "PENDING");
        assert_eq!(created["completedOn"], Value::Null);
        let (_, pending) = server.get("/va/refunds/r-1").await;
        assert_eq!(pending["responseBody"]["refundStatus"], "PENDING");
        assert_eq!(
            pending["responseBody"]["comment"],
            "Transaction refund is in progress."
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, done) = server.get("/va/refunds/r-1").await;
        assert_eq!(status, 200);
        let done = &done["responseBody"];
        assert_eq!(done["refundStatus"], "COMPLETED");
        assert_eq!(done["comment"], "Transaction refund completed.");
        let created_on = parse_va_date(done["createdOn"].as_str().unwrap());
        let completed_on = parse_va_date(done["completedOn"].as_str().unwrap());
        assert!(completed_on >= created_on);
        assert!(completed_on - created_on <= chrono::TimeDelta::seconds(1));
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds[0].status, "COMPLETED");
        assert!(ledger.refunds[0].completed_at.is_some());
        assert_eq!(ledger.status_calls, 2);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn forced_failure_frees_the_balance() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_millis(100),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.add_payment(payment("tx-1", "100"));
        // Arranged over HTTP before the refund exists.
        let (status, answer) = server
            .admin_post(
                "/sandbox/va_services/refunds/r-1/outcome",
                json!({ "status": "FAILED" }),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer["refundKnown"], json!(false));
        let (_, _, created) = server.initiate(&refund_body("tx-1", "r-1", "100")).await;
        assert_eq!(created["responseBody"]["refundType"], "FULL_REFUND");
        assert_eq!(created["responseBody"]["refundStatus"], "PENDING");
        let (_, _, declined) = server.initiate(&refund_body("tx-1", "r-2", "1")).await;
        assert_eq!(
            declined["responseCode"], "99",
            "a pending refund holds the balance"
        );

        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, failed) = server.get("/va/refunds/r-1").await;
        assert_eq!(failed["responseBody"]["refundStatus"], "FAILED");
        assert_eq!(
            failed["responseBody"]["comment"],
            "Refund failed at the bank."
        );
        assert_eq!(failed["responseBody"]["completedOn"], Value::Null);
        let (_, details) = server.get("/va/refunds/details/tx-1").await;
        assert_eq!(
            details["responseBody"]["refundableAmount"].to_string(),
            "100"
        );
        assert_eq!(details["responseBody"]["paymentAmount"].to_string(), "100");
        assert_eq!(
            details["responseBody"]["refundsHistory"][0]["refundReference"],
            "r-1"
        );

        let (_, _, retried) = server.initiate(&refund_body("tx-1", "r-2", "100")).await;
        assert_eq!(retried["responseCode"], "0");
        server.sandbox.set_outcome(
            Provider::VaServices,
            "r-2",
            ForcedOutcome {
                status: OutcomeStatus::Completed,
            },
        );
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refund("r-1").unwrap().status, "FAILED");
        assert_eq!(
            ledger.refund("r-2").unwrap().forced_outcome,
            Some(OutcomeStatus::Completed)
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn list_pages_like_spring() {
        let server = start(SandboxConfig::default()).await;
        for reference in ["r-1", "r-2", "r-3"] {
            server.initiate(&refund_body("tx-1", reference, "1")).await;
        }
        let (status, first) = server.get("/va/refunds?page=0&size=2").await;
        assert_eq!(status, 200);
        let page = &first["responseBody"];
        let refs: Vec<&str> = page["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["refundReference"].as_str().unwrap())
            .collect();
        assert_eq!(refs, ["r-1", "r-2"]);
        assert_eq!(page["last"], json!(false));
        assert_eq!(page["first"], json!(true));
        assert_eq!(page["totalElements"], json!(3));
        assert_eq!(page["totalPages"], json!(2));
        assert_eq!(page["noOfElements"], json!(2));
        assert_eq!(
            (page["size"].clone(), page["number"].clone()),
            (json!(2), json!(0))
        );
        assert_eq!(
            page["pageable"],
            json!({"sort": {"sorted": false, "unsorted": true, "empty": true}, "pageSize": 2, "pageNumber": 0, "offset": 0, "paged": true, "unpaged": false})
        );

        let (_, second) = server.get("/va/refunds?page=1&size=2").await;
        let page = &second["responseBody"];
        assert_eq!(page["contents"][0]["refundReference"], "r-3");
        assert_eq!(page["noOfElements"], json!(1));
        assert_eq!(page["last"], json!(true));
        assert_eq!(page["first"], json!(false));
        assert_eq!(page["pageable"]["offset"], json!(2));

        let (_, beyond) = server.get("/va/refunds?page=5&size=2").await;
        assert_eq!(beyond["responseBody"]["empty"], json!(true));
        let (_, all) = server.get("/va/refunds?size=1000").await;
        assert_eq!(all["responseBody"]["size"], json!(100));
        assert_eq!(all["responseBody"]["last"], json!(true));
        let (_, default) = server.get("/va/refunds").await;
        assert_eq!(default["responseBody"]["size"], json!(20));
        assert_eq!(server.sandbox.ledger().list_calls, 5);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn docs_example_request_is_accepted() {
        let server = start(SandboxConfig::default()).await;
        let (status, text, mut envelope) = server.initiate(DOCS_EXAMPLE).await;
        assert_eq!(status, 200);
        assert!(text.contains(r#""refundAmount":10,"#), "{text}");
        let created_on = envelope["responseBody"]["createdOn"].take();
        parse_va_date(created_on.as_str().unwrap());
        // The docs' example response, createdOn aside.
        let mut expected: Value = serde_json::from_str(include_str!(
            "../../../fixtures/va_services/initiate-refund-response.json"
        ))
        .unwrap();
        expected["responseBody"]["createdOn"] = Value::Null;
        assert_eq!(envelope, expected);
        assert_eq!(
            server.sandbox.ledger().refunds[0].request_body,
            DOCS_EXAMPLE
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn invalid_requests_are_400_with_a_reason() {
        let server = start(SandboxConfig::default()).await;
        let cases = [
            (r#"{"transactionReference":"#.to_owned(), "Malformed JSON request body"),
            ("[]".to_owned(), "Request body must be a JSON object"),
            (
                r#"{"transactionReference":"tx","refundReference":"r","refundReason":"x","destinationAccountNumber":"1","destinationAccountBankCode":"2"}"#.to_owned(),
                "refundAmount is required",
            ),
            (refund_body("tx", "r", "0"), "refundAmount must be greater than zero"),
            (refund_body("tx", "r", "-1.5"), "refundAmount must be greater than zero"),
            (refund_body("tx", "r", r#""abc""#), "refundAmount must be a decimal number"),
            (refund_body("", "r", "1"), "transactionReference is required"),
            (
                refund_body("tx", "r", "1").replace(r#""0040088210""#, "40088210"),
                "destinationAccountNumber must be a string",
            ),
        ];
        for (body, message) in cases {
            let (status, _, envelope) = server.initiate(&body).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(envelope["requestSuccessful"], json!(false));
            assert_eq!(envelope["responseCode"], "400");
            let got = envelope["responseMessage"].as_str().unwrap();
            assert!(got.starts_with(message), "{body}: {got}");
        }
        // A string amount is fine and kept as written.
        let (status, _, _) = server.initiate(&refund_body("tx", "r", r#""12.30""#)).await;
        assert_eq!(status, 200);
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refunds[0].refund_amount, "12.30");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_strict_va_serves_only_its_documented_paths() {
        let server = start(SandboxConfig {
            strict: true,
            ..SandboxConfig::default()
        })
        .await;
        let (status, _, _) = server.initiate(&refund_body("tx-1", "r-1", "5")).await;
        assert_eq!(status, 200);
        assert_eq!(server.get("/va/refunds/r-1").await.0, 200);
        assert_eq!(server.get("/va/refunds").await.0, 200);
        let details = server
            .client
            .get(server.url("/va/refunds/details/tx-1"))
            .bearer_auth(&server.key)
            .send()
            .await
            .unwrap();
        assert_eq!(details.status().as_u16(), 404);
        let send = server
            .client
            .post(server.url(super::SEND_NOTIFICATION_PATH))
            .bearer_auth(&server.key)
            .body(r#"{"transactionReference":"tx-1"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(send.status().as_u16(), 404);
        let ledger = server.sandbox.ledger();
        assert_eq!((ledger.details_calls, ledger.resend_calls), (0, 0));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn unknown_refund_is_404() {
        let server = start(SandboxConfig::default()).await;
        let (status, envelope) = server.get("/va/refunds/nope").await;
        assert_eq!(status, 404);
        assert_eq!(
            envelope,
            json!({"requestSuccessful": false, "responseMessage": "Refund not found", "responseCode": "404", "responseBody": null})
        );
        let (status, details) = server.get("/va/refunds/details/unseen-tx").await;
        assert_eq!(status, 200);
        assert_eq!(
            details["responseBody"]["refundableAmount"].to_string(),
            "1000000"
        );
        assert_eq!(details["responseBody"]["refundsHistory"], json!([]));
        server.stop(Duration::from_secs(2)).await;
    }
}
