//! BVNK "Refund payments" API, as shared/providers/bvnk-refund-payments.txt describes it,
//! with the gaps filled the way shared/providers/README.md and the adapter decide them:
//!
//! - Auth is Hawk with HMAC-SHA256 (`SandboxConfig::bvnk_hawk_id` / `bvnk_hawk_key`),
//!   verified with the `hawk` crate over method, path and query, the `Host` header's host
//!   and port; no payload hash (BVNK does not use it), timestamps within 60 s, and a nonce
//!   seen twice is refused. Anything wrong: HTTP 401 `{"code": "UNAUTHORIZED", ...}`
//!   (BVNK answers 401; the body shape is ours), counted only in `rejectedAuth`.
//! - `GET /payment/v1/payins/{ref}/estimate`: `fee` (flat, 1.00 by default, in the pay-in's
//!   currency) and `maxAvailableToRefund` (payment less refunds not failed or cancelled).
//! - `POST /payment/v1/payins/{ref}/refund`: `X-Idempotency-Key` (a UUID) is required; a
//!   repeated key answers the same refund and counts in `submitCount` (a repeat that differs
//!   counts in `mismatchedReplays`). A new key is a new refund, even with the same
//!   `customerReference`, as an idempotency-key API does. Over the balance: HTTP 400
//!   `Invalid amount to refund from pay-in: {ref}. Available amount: {amount}.`;
//!   `rejectNext`: HTTP 400 `Pay-in {ref} not refundable.` The answer is
//!   `{transactionReference: <the pay-in>, fee}` as documented.
//! - `GET /payment/v1/payins/{ref}/refund`: a JSON array of the pay-in's refunds, each
//!   payout-shaped: `transactionReference` (the refund payout's id), `customerReference`,
//!   `status`, `approvalStatus`, `reason`, `amount`, `fee`, `metadata`, `createdAt`. A pay-in
//!   the sandbox has never seen: 404.
//! - States: `PENDING_APPROVAL` while 4-eyes approval is awaited, then `PROCESSING` for
//!   `completion_delay` (from acceptance, or from the approval), then `COMPLETED` or the
//!   forced outcome (`FAILED`). A rejected approval reads `CANCELLED` with
//!   `approvalStatus: "REJECTED"`, as BVNK cancels refunds whose approval is rejected.
//! - 4-eyes approval is off by default; `POST /sandbox/bvnk/settings` with
//!   `{"fourEyes": true}` turns it on for every refund created after (like configuring it
//!   in the portal), `"fee"` changes the flat fee. `POST /sandbox/bvnk/refunds/{key}/approve`
//!   and `/reject` act like the portal's buttons; `/outcome` forces the final state. `key`
//!   is our refundReference (the `customerReference`).
//!
//! Order of checks: Hawk (401), count, injected HTTP error (`failNext`, `error_rate`), then
//! per route: validation (400), `rejectNext` (refund only), idempotent replay, balance,
//! record, and only then a hang (`timeoutAfterAcceptNext`, `timeout_rate`). All of that is
//! decided under the sandbox lock; the hang and the latency come after it is released.

use std::collections::{HashSet, VecDeque};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::book::{Approval, Book, OutcomeKey, Refund, Stage};
use super::gate::ProviderError;
use super::notify::Notice;
use super::{
    admin_error, decimal_and_text, decimal_to_json, parse_admin, CallKind, Payment, Provider,
    Reply, Sandbox, SandboxConfig, Simulator, State,
};

/// The header BVNK's webhooks carry their signature in (hex HMAC-SHA256 of the raw body).
pub const SIGNATURE_HEADER: &str = "x-signature";

/// BVNK's pay-in status-change webhook for a completed pay-in: `event`
/// `bvnk:payment:payin:status-change`, an `eventId`, the signed `timestamp` (RFC 3339, as in
/// their payout webhook) and `data` with `transactionReference`, `status: "COMPLETED"` and
/// `amount` as BVNK writes money, `{value, currency}` (the value an exact JSON number).
fn payin_notice(payment: &Payment, at: DateTime<Utc>) -> Notice {
    let body = json!({
        "event": "bvnk:payment:payin:status-change",
        "eventId": uuid::Uuid::new_v4().to_string(),
        "timestamp": at.to_rfc3339(),
        "data": {
            "transactionReference": payment.transaction_reference,
            "status": "COMPLETED",
            "amount": {
                "value": decimal_to_json(payment.amount),
                "currency": payment.currency,
            },
        },
    })
    .to_string();
    Notice::hmac(Provider::Bvnk, body, SIGNATURE_HEADER)
}

/// How far a Hawk timestamp may be from our clock (Hawk's usual 60 s).
const HAWK_SKEW: Duration = Duration::from_secs(60);

/// BVNK routes plus this provider's admin routes.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(
            "/payment/v1/payins/{transaction_reference}/estimate",
            get(estimate),
        )
        .route(
            "/payment/v1/payins/{transaction_reference}/refund",
            post(refund).get(status),
        )
        .route("/sandbox/bvnk/settings", post(settings_route))
        .route("/sandbox/bvnk/refunds/{key}/approve", post(approve_route))
        .route("/sandbox/bvnk/refunds/{key}/reject", post(reject_route))
}

/// What BVNK knows: pay-ins and their refunds (by idempotency key, by pay-in, and by
/// `customerReference`, which several refunds may share: a new idempotency key is a new
/// refund; the admin routes and forced outcomes go by it), the settings, and Hawk nonces.
pub(super) struct BvnkState {
    pub(super) book: Book<BvnkDetail>,
    /// Whether new refunds wait for 4-eyes approval.
    four_eyes: bool,
    /// Flat fee per refund, in the pay-in's currency.
    fee: Decimal,
    /// Hawk nonces seen within the skew window (`id:ts:nonce`), oldest first.
    nonces: VecDeque<(SystemTime, String)>,
    /// The same nonces, for an O(1) replay check (the window holds many thousands under load).
    nonce_set: HashSet<String>,
}

impl Default for BvnkState {
    fn default() -> Self {
        Self {
            book: Book::new(Provider::Bvnk, word, OutcomeKey::Reference),
            four_eyes: false,
            fee: Decimal::new(100, 2),
            nonces: VecDeque::new(),
            nonce_set: HashSet::new(),
        }
    }
}

/// What a BVNK refund keeps beside the book's fields.
pub(super) struct BvnkDetail {
    /// The refund payout's own id.
    id: String,
    currency: String,
    fee: Decimal,
    metadata: Value,
}

type BvnkRefund = Refund<BvnkDetail>;

fn word(stage: Stage) -> &'static str {
    match stage {
        Stage::AwaitingApproval => "PENDING_APPROVAL",
        Stage::Pending => "PROCESSING",
        Stage::Completed => "COMPLETED",
        Stage::Failed => "FAILED",
        Stage::Cancelled => "CANCELLED",
    }
}

/// Every BVNK error answer: `{"code", "message"}` with the HTTP status chosen here.
#[derive(Debug, thiserror::Error)]
enum BvnkError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{} (injected by sandbox)", .0.canonical_reason().unwrap_or("Error"))]
    Injected(StatusCode),
    #[error("{0}")]
    Invalid(String),
    #[error("Pay-in {0} not refundable.")]
    NotRefundable(String),
    #[error("Invalid amount to refund from pay-in: {0}. Available amount: {1}.")]
    InvalidAmount(String, Decimal),
    #[error("Pay-in {0} not found.")]
    NotFound(String),
}

impl IntoResponse for BvnkError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::Injected(status) => (*status, "INTERNAL_ERROR"),
            Self::Invalid(_) | Self::NotRefundable(_) | Self::InvalidAmount(..) => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        };
        let body = json!({ "code": code, "message": self.to_string() });
        (status, Json(body)).into_response()
    }
}

fn money(value: Decimal, currency: &str) -> Value {
    json!({ "value": decimal_to_json(value), "currency": currency })
}

impl Simulator for BvnkState {
    book_field!(BvnkDetail);

    fn payin_notice(
        &self,
        _: &SandboxConfig,
        payment: &Payment,
        at: DateTime<Utc>,
    ) -> Option<Notice> {
        Some(payin_notice(payment, at))
    }

    /// Payout status-change notifications (BVNK's documented webhook, signed with
    /// `x-signature`) for every refund whose status changed to one worth telling: waiting
    /// for approval, or final.
    fn refund_notice(
        &self,
        config: &SandboxConfig,
        refund: &BvnkRefund,
        _: Stage,
        now: Instant,
    ) -> Option<Notice> {
        let body = json!({
            "event": "bvnk:payment:payout:status-change",
            "eventId": uuid::Uuid::new_v4().to_string(),
            "timestamp": Utc::now().to_rfc3339(),
            "data": self.view(refund, config, now),
        })
        .to_string();
        Some(Notice::hmac(Provider::Bvnk, body, SIGNATURE_HEADER))
    }
}

impl BvnkState {
    fn view(&self, refund: &BvnkRefund, config: &SandboxConfig, now: Instant) -> Value {
        let stage = self.book.stage(refund, config, now);
        let approval_status = match refund.approval {
            Approval::NotRequired => Value::Null,
            Approval::Pending => json!("PENDING"),
            Approval::Approved { .. } => json!("APPROVED"),
            Approval::Rejected => json!("REJECTED"),
        };
        let reason = match stage {
            Stage::Cancelled => json!("Four-eyes approval rejected"),
            Stage::Failed => json!("Rejected by the processing partner (forced by sandbox)"),
            _ => Value::Null,
        };
        let d = &refund.detail;
        json!({
            "transactionReference": d.id,
            "customerReference": refund.reference,
            "status": word(stage),
            "approvalStatus": approval_status,
            "reason": reason,
            "amount": { "value": refund.amount_text, "currency": d.currency },
            "fee": money(d.fee, &d.currency),
            "metadata": d.metadata,
            "createdAt": refund.created_at.to_rfc3339(),
        })
    }

    /// Replays the refund with this idempotency key, or records a new one.
    fn accept(
        &mut self,
        request: RefundCall,
        config: &SandboxConfig,
        now: Instant,
    ) -> Result<Response, BvnkError> {
        let replayed = self.book.replay(&request.idempotency_key, |r| {
            r.payment != request.transaction_reference
                || r.amount != request.amount
                || r.reference != request.customer_reference
        });
        if let Some(refund) = replayed.and_then(|i| self.book.at(i)) {
            return Ok(created_answer(refund));
        }

        let payment = self
            .book
            .payment_or_default(&request.transaction_reference, config, || {
                request.currency.clone()
            });
        if !payment.currency.eq_ignore_ascii_case(&request.currency) {
            return Err(BvnkError::Invalid(format!(
                "Invalid currency to refund from pay-in: {}. Expected: {}.",
                request.transaction_reference, payment.currency
            )));
        }
        let currency = payment.currency.clone();
        let refundable = self
            .book
            .refundable(&request.transaction_reference, config, now);
        if request.amount > refundable {
            return Err(BvnkError::InvalidAmount(
                request.transaction_reference,
                refundable,
            ));
        }
        tracing::info!(
            customer_reference = %request.customer_reference,
            amount = %request.amount_text,
            "bvnk sandbox: refund accepted"
        );
        let detail = BvnkDetail {
            id: uuid::Uuid::new_v4().to_string(),
            currency,
            fee: self.fee,
            metadata: request.metadata,
        };
        let mut refund = Refund::new(
            request.idempotency_key,
            request.transaction_reference,
            (request.amount, request.amount_text),
            request.body,
            now,
            detail,
        );
        refund.reference = request.customer_reference;
        if self.four_eyes {
            refund.approval = Approval::Pending;
        }
        let response = created_answer(&refund);
        self.book.record(refund);
        Ok(response)
    }

    /// Approves or rejects a refund waiting for approval (the portal's buttons).
    fn decide_approval(&mut self, customer_reference: &str, approve: bool) -> Result<(), String> {
        let unknown = || format!("no BVNK refund with customerReference {customer_reference}");
        let index = self
            .book
            .first_with_outcome_key(customer_reference)
            .ok_or_else(unknown)?;
        let refund = self.book.at_mut(index).ok_or_else(unknown)?;
        if refund.approval != Approval::Pending {
            return Err(format!(
                "refund {customer_reference} is not waiting for approval"
            ));
        }
        refund.approval = if approve {
            Approval::Approved {
                at: Instant::now(),
                wall: Utc::now(),
            }
        } else {
            Approval::Rejected
        };
        self.book.watch(index);
        Ok(())
    }

    /// Records a Hawk nonce; false when it was seen within the skew window (a replay).
    fn fresh_nonce(&mut self, ts: SystemTime, key: String) -> bool {
        let now = SystemTime::now();
        while let Some((seen_ts, _)) = self.nonces.front() {
            let age = now.duration_since(*seen_ts).unwrap_or_default();
            if age > HAWK_SKEW * 2 {
                if let Some((_, old)) = self.nonces.pop_front() {
                    self.nonce_set.remove(&old);
                }
            } else {
                break;
            }
        }
        if !self.nonce_set.insert(key.clone()) {
            return false;
        }
        self.nonces.push_back((ts, key));
        true
    }
}

/// The documented refund answer: the pay-in's reference and the fee.
fn created_answer(refund: &BvnkRefund) -> Response {
    let body = json!({
        "transactionReference": refund.payment,
        "fee": money(refund.detail.fee, &refund.detail.currency),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// A validated refund call.
struct RefundCall {
    idempotency_key: String,
    transaction_reference: String,
    customer_reference: String,
    amount: Decimal,
    amount_text: String,
    currency: String,
    metadata: Value,
    body: String,
}

/// The `amount` object: `{value, currency}`, value a string or number, exact.
fn parse_money(
    fields: &serde_json::Map<String, Value>,
) -> Result<(Decimal, String, String), String> {
    let Some(Value::Object(amount)) = fields.get("amount") else {
        return Err("amount is required".to_owned());
    };
    let (value, text) = amount
        .get("value")
        .and_then(decimal_and_text)
        .ok_or_else(|| "amount.value must be a decimal".to_owned())?;
    if value <= Decimal::ZERO {
        return Err("amount.value must be greater than zero".to_owned());
    }
    let currency = match amount.get("currency") {
        Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
        _ => return Err("amount.currency is required".to_owned()),
    };
    Ok((value, text, currency))
}

impl RefundCall {
    fn parse(
        headers: &HeaderMap,
        transaction_reference: &str,
        body: &[u8],
    ) -> Result<Self, String> {
        let key = headers
            .get("x-idempotency-key")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| "X-Idempotency-Key header is required".to_owned())?;
        let key = uuid::Uuid::parse_str(key.trim())
            .map_err(|_| "X-Idempotency-Key must be a UUID".to_owned())?;
        let text =
            std::str::from_utf8(body).map_err(|_| "Malformed JSON request body".to_owned())?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("Malformed JSON request body: {e}"))?;
        let Value::Object(fields) = &value else {
            return Err("Request body must be a JSON object".to_owned());
        };
        let customer_reference = match fields.get("customerReference") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => return Err("customerReference is required".to_owned()),
        };
        let (amount, amount_text, currency) = parse_money(fields)?;
        let metadata = match fields.get("metadata") {
            None | Some(Value::Null) => json!({}),
            Some(m @ Value::Object(_)) => m.clone(),
            Some(_) => return Err("metadata must be an object".to_owned()),
        };
        Ok(Self {
            idempotency_key: key.to_string(),
            transaction_reference: transaction_reference.to_owned(),
            customer_reference,
            amount,
            amount_text,
            currency,
            metadata,
            body: text.to_owned(),
        })
    }
}

/// Verifies the Hawk `Authorization` header of a request, as BVNK's API does.
fn hawk_ok(
    state: &mut BvnkState,
    config: &SandboxConfig,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, rest)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("hawk") {
        return false;
    }
    let Ok(parsed) = hawk::Header::from_str(rest) else {
        return false;
    };
    if parsed.id.as_deref() != Some(config.bvnk_hawk_id.as_str()) {
        return false;
    }
    let Some(host_header) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (host, port) = match host_header.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return false,
        },
        None => (host_header, 80),
    };
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let Ok(key) = hawk::Key::new(config.bvnk_hawk_key.as_bytes(), hawk::SHA256) else {
        return false;
    };
    let valid = hawk::RequestBuilder::new(method.as_str(), host, port, &path)
        .request()
        .validate_header(&parsed, &key, HAWK_SKEW);
    if !valid {
        return false;
    }
    let (Some(ts), Some(nonce)) = (parsed.ts, parsed.nonce.as_deref()) else {
        return false;
    };
    let secs = ts.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    state.fresh_nonce(ts, format!("{}:{secs}:{nonce}", config.bvnk_hawk_id))
}

impl ProviderError for BvnkError {
    fn injected(status: StatusCode) -> Self {
        Self::Injected(status)
    }
}

/// Runs one BVNK call through the fault gate, authenticated by Hawk over the request line.
async fn bvnk_call(
    sandbox: &Sandbox,
    (method, uri, headers): (&Method, &Uri, &HeaderMap),
    kind: CallKind,
    decide: impl FnOnce(&mut State, &SandboxConfig) -> Result<Reply, BvnkError>,
) -> Response {
    let authenticate = |state: &mut State, config: &SandboxConfig| {
        hawk_ok(&mut state.bvnk, config, method, uri, headers)
            .then_some(())
            .ok_or(BvnkError::Unauthorized)
    };
    sandbox.call(kind, authenticate, decide).await
}

async fn estimate(
    AxumState(sandbox): AxumState<Sandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(transaction_reference): Path<String>,
    body: Bytes,
) -> Response {
    let call = (&method, &uri, &headers);
    bvnk_call(&sandbox, call, CallKind::Details, |state, config| {
        // The documented GET carries the refund body; its currency names an unseen pay-in's.
        let asked_currency = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
            v.get("amount")?
                .get("currency")?
                .as_str()
                .map(str::to_owned)
        });
        let bvnk = &state.bvnk;
        let currency = bvnk
            .book
            .payments
            .get(&transaction_reference)
            .map(|p| p.currency.clone())
            .or(asked_currency)
            .unwrap_or_else(|| "EUR".to_owned());
        let available = bvnk
            .book
            .refundable(&transaction_reference, config, Instant::now());
        let answer = json!({
            "fee": money(bvnk.fee, &currency),
            "maxAvailableToRefund": money(available, &currency),
        });
        Ok(Reply::now((StatusCode::OK, Json(answer)).into_response()))
    })
    .await
}

async fn refund(
    AxumState(sandbox): AxumState<Sandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(transaction_reference): Path<String>,
    body: Bytes,
) -> Response {
    let call = (&method, &uri, &headers);
    bvnk_call(&sandbox, call, CallKind::Submit, |state, config| {
        let request = RefundCall::parse(&headers, &transaction_reference, &body)
            .map_err(BvnkError::Invalid)?;
        state.submit(
            config,
            || BvnkError::NotRefundable(transaction_reference.clone()),
            |state| state.bvnk.accept(request, config, Instant::now()),
        )
    })
    .await
}

async fn status(
    AxumState(sandbox): AxumState<Sandbox>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(transaction_reference): Path<String>,
) -> Response {
    let call = (&method, &uri, &headers);
    bvnk_call(&sandbox, call, CallKind::Status, |state, config| {
        let bvnk = &state.bvnk;
        let now = Instant::now();
        let refunds: Vec<Value> = bvnk
            .book
            .in_group(&transaction_reference)
            .map(|r| bvnk.view(r, config, now))
            .collect();
        if refunds.is_empty() && !bvnk.book.payments.contains_key(&transaction_reference) {
            return Err(BvnkError::NotFound(transaction_reference.clone()));
        }
        Ok(Reply::now((StatusCode::OK, Json(refunds)).into_response()))
    })
    .await
}

/// `POST /sandbox/bvnk/settings`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BvnkSettings {
    /// Whether refunds created from now on wait for 4-eyes approval.
    pub four_eyes: Option<bool>,
    /// Flat fee per refund (a decimal string or number).
    pub fee: Option<Value>,
}

impl Sandbox {
    /// Turns BVNK's 4-eyes approval on or off for refunds created from now on.
    pub fn bvnk_four_eyes(&self, on: bool) {
        self.lock().bvnk.four_eyes = on;
    }

    /// Approves (like the portal's Approve) a BVNK refund waiting for approval.
    pub fn bvnk_approve(&self, refund_reference: &str) -> Result<(), String> {
        self.lock().bvnk.decide_approval(refund_reference, true)
    }

    /// Rejects (like the portal's Reject) a BVNK refund waiting for approval.
    pub fn bvnk_reject(&self, refund_reference: &str) -> Result<(), String> {
        self.lock().bvnk.decide_approval(refund_reference, false)
    }
}

async fn settings_route(AxumState(sandbox): AxumState<Sandbox>, body: Bytes) -> Response {
    let settings: BvnkSettings = match parse_admin(&body) {
        Ok(s) => s,
        Err(message) => return admin_error(StatusCode::BAD_REQUEST, message),
    };
    let fee = match settings.fee.as_ref().map(decimal_and_text) {
        None => None,
        Some(Some((fee, _))) if fee >= Decimal::ZERO => Some(fee),
        Some(_) => return admin_error(StatusCode::BAD_REQUEST, "fee must be a decimal >= 0"),
    };
    let mut state = sandbox.lock();
    if let Some(on) = settings.four_eyes {
        state.bvnk.four_eyes = on;
    }
    if let Some(fee) = fee {
        state.bvnk.fee = fee;
    }
    Json(json!({
        "fourEyes": state.bvnk.four_eyes,
        "fee": state.bvnk.fee.to_string(),
    }))
    .into_response()
}

async fn approval(sandbox: &Sandbox, key: &str, approve: bool) -> Response {
    let result = sandbox.lock().bvnk.decide_approval(key, approve);
    match result {
        Ok(()) => Json(json!({
            "refundReference": key,
            "approvalStatus": if approve { "APPROVED" } else { "REJECTED" },
        }))
        .into_response(),
        Err(message) if message.starts_with("no BVNK refund") => {
            admin_error(StatusCode::NOT_FOUND, message)
        }
        Err(message) => admin_error(StatusCode::CONFLICT, message),
    }
}

async fn approve_route(
    AxumState(sandbox): AxumState<Sandbox>,
    Path(key): Path<String>,
) -> Response {
    approval(&sandbox, &key, true).await
}

async fn reject_route(AxumState(sandbox): AxumState<Sandbox>, Path(key): Path<String>) -> Response {
    approval(&sandbox, &key, false).await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{start, TestServer};
    use super::super::{Faults, ForcedOutcome, OutcomeStatus, Payment, Provider, SandboxConfig};
    use refund_worker::providers::bvnk::{hawk_header, idempotency_key};
    use rust_decimal::Decimal;
    use serde_json::{json, Value};
    use std::str::FromStr;
    use std::time::{Duration, SystemTime};

    const TX: &str = "018e5e83-ac50-4df0-a7e4-c9f15d493f90";
    const DOC_REQUEST: &str = include_str!("../../../fixtures/bvnk/refund-request.json");

    struct Call {
        status: u16,
        body: Value,
    }

    fn nonce() -> String {
        uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
    }

    /// A Hawk-signed call with the sandbox's default credentials.
    async fn call(
        server: &TestServer,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<String>,
    ) -> Call {
        let config = SandboxConfig::default();
        signed(
            server,
            method,
            path,
            body,
            key,
            &config.bvnk_hawk_key,
            &nonce(),
        )
        .await
    }

    async fn signed(
        server: &TestServer,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<String>,
        hawk_key: &str,
        nonce: &str,
    ) -> Call {
        let url = reqwest::Url::parse(&server.url(path)).unwrap();
        let config = SandboxConfig::default();
        let auth = hawk_header(
            method,
            &url,
            &config.bvnk_hawk_id,
            hawk_key.as_bytes(),
            SystemTime::now(),
            nonce,
        )
        .unwrap();
        let mut request = server
            .client
            .request(reqwest::Method::from_str(method).unwrap(), url)
            .header("authorization", auth)
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("x-idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        Call {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    fn body(reference: &str, amount: &str) -> String {
        format!(
            r#"{{"customerReference":"{reference}","amount":{{"value":"{amount}","currency":"EUR"}},"metadata":{{}}}}"#
        )
    }

    fn key(reference: &str) -> Option<String> {
        Some(idempotency_key(reference).to_string())
    }

    async fn refund(server: &TestServer, reference: &str, amount: &str) -> Call {
        let path = format!("/payment/v1/payins/{TX}/refund");
        call(
            server,
            "POST",
            &path,
            Some(&body(reference, amount)),
            key(reference),
        )
        .await
    }

    async fn refunds(server: &TestServer) -> Call {
        call(
            server,
            "GET",
            &format!("/payment/v1/payins/{TX}/refund"),
            None,
            None,
        )
        .await
    }

    fn payment(amount: &str) -> Payment {
        Payment {
            provider: Provider::Bvnk,
            transaction_reference: TX.to_owned(),
            amount: Decimal::from_str(amount).unwrap(),
            currency: "EUR".to_owned(),
        }
    }

    #[tokio::test]
    async fn wrong_or_missing_hawk_is_401_and_records_nothing() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.inject(Faults {
            fail_next: 1,
            ..Faults::default()
        });
        let path = format!("/payment/v1/payins/{TX}/refund");
        let b = body("r-1", "5");
        let wrong_key = signed(
            &server,
            "POST",
            &path,
            Some(&b),
            key("r-1"),
            "wrong",
            &nonce(),
        )
        .await;
        assert_eq!(wrong_key.status, 401);
        assert_eq!(
            wrong_key.body,
            json!({"code": "UNAUTHORIZED", "message": "Unauthorized"})
        );
        let unsigned = server
            .client
            .post(server.url(&path))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status().as_u16(), 401);
        let bearer = server
            .client
            .post(server.url(&path))
            .bearer_auth("sandbox-bvnk-key")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status().as_u16(), 401);
        // Signed for another path: the MAC covers the path.
        let url = reqwest::Url::parse(&server.url("/payment/v1/payins/other/refund")).unwrap();
        let auth = hawk_header(
            "POST",
            &url,
            "sandbox-bvnk-id",
            b"sandbox-bvnk-key",
            SystemTime::now(),
            "n1",
        )
        .unwrap();
        let moved = server
            .client
            .post(server.url(&path))
            .header("authorization", auth)
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(moved.status().as_u16(), 401);
        // A replayed nonce is refused the second time.
        let first = signed(
            &server,
            "GET",
            &format!("/payment/v1/payins/{TX}/estimate"),
            None,
            None,
            "sandbox-bvnk-key",
            "same-nonce",
        )
        .await;
        assert_eq!(first.status, 500, "consumes the injected failure");
        let replay = signed(
            &server,
            "GET",
            &format!("/payment/v1/payins/{TX}/estimate"),
            None,
            None,
            "sandbox-bvnk-key",
            "same-nonce",
        )
        .await;
        assert_eq!(replay.status, 401);

        let ledger = server.sandbox.ledger();
        assert!(ledger.refunds.is_empty());
        assert_eq!((ledger.rejected_auth, ledger.submit_calls), (5, 0));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn estimate_answers_fee_and_balance_in_the_documented_shape() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(payment("150.00"));
        let path = format!("/payment/v1/payins/{TX}/estimate");
        let e = call(&server, "GET", &path, Some(DOC_REQUEST), None).await;
        assert_eq!(e.status, 200);
        assert_eq!(e.body["fee"]["currency"], "EUR");
        assert_eq!(e.body["fee"]["value"].to_string(), "1.00");
        assert_eq!(
            e.body["maxAvailableToRefund"]["value"].to_string(),
            "150.00"
        );
        let documented: Value = serde_json::from_str(include_str!(
            "../../../fixtures/bvnk/estimate-response.json"
        ))
        .unwrap();
        assert_eq!(
            e.body, documented,
            "the docs' example, byte for byte in value"
        );

        assert_eq!(refund(&server, "r-1", "50.25").await.status, 200);
        let e = call(&server, "GET", &path, None, None).await;
        assert_eq!(e.body["maxAvailableToRefund"]["value"].to_string(), "99.75");
        assert_eq!(server.sandbox.ledger().details_calls, 2);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn over_refund_is_the_documented_400_and_records_nothing() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(payment("100.00"));
        assert_eq!(refund(&server, "r-1", "60").await.status, 200);
        let declined = refund(&server, "r-2", "40.01").await;
        assert_eq!(declined.status, 400);
        assert_eq!(
            declined.body["message"],
            format!("Invalid amount to refund from pay-in: {TX}. Available amount: 40.00.")
        );
        assert!(server.sandbox.ledger().refund("r-2").is_none());
        assert_eq!(
            refund(&server, "r-3", "40").await.status,
            200,
            "the exact remainder fits"
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn same_idempotency_key_is_the_same_refund() {
        let server = start(SandboxConfig::default()).await;
        let first = refund(&server, "r-1", "25.17").await;
        assert_eq!(first.status, 200);
        assert_eq!(first.body["transactionReference"], TX);
        assert_eq!(first.body["fee"]["value"].to_string(), "1.00");
        let again = refund(&server, "r-1", "25.17").await;
        assert_eq!(again.body, first.body);
        // Same key, other amount: the original is answered and the mismatch counted.
        let path = format!("/payment/v1/payins/{TX}/refund");
        call(&server, "POST", &path, Some(&body("r-1", "30")), key("r-1")).await;
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        let r = ledger.refund("r-1").unwrap();
        assert_eq!((r.submit_count, r.mismatched_replays), (3, 1));
        assert_eq!(r.refund_amount, "25.17");
        assert!(r.request_body.contains(r#""value":"25.17""#));
        // A new key is a new refund, even for the same customerReference.
        let other_key = Some(uuid::Uuid::new_v4().to_string());
        call(
            &server,
            "POST",
            &path,
            Some(&body("r-1", "25.17")),
            other_key,
        )
        .await;
        assert_eq!(server.sandbox.ledger().refunds.len(), 2);
        // No key, or not a UUID: 400.
        for bad in [None, Some("not-a-uuid".to_owned())] {
            let c = call(&server, "POST", &path, Some(&body("r-9", "1")), bad).await;
            assert_eq!(c.status, 400);
            assert!(c.body["message"]
                .as_str()
                .unwrap()
                .contains("X-Idempotency-Key"));
        }
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn faults_fail_reject_and_hang_after_recording() {
        let server = start(SandboxConfig {
            hang: Duration::from_secs(5),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.inject(Faults {
            fail_next: 1,
            reject_next: 1,
            timeout_after_accept_next: 1,
            ..Faults::default()
        });
        assert_eq!(refund(&server, "r-1", "5").await.status, 500);
        let rejected = refund(&server, "r-1", "5").await;
        assert_eq!(rejected.status, 400);
        assert_eq!(
            rejected.body["message"],
            format!("Pay-in {TX} not refundable.")
        );
        assert!(server.sandbox.ledger().refunds.is_empty());

        let url = server.url(&format!("/payment/v1/payins/{TX}/refund"));
        let auth = hawk_header(
            "POST",
            &reqwest::Url::parse(&url).unwrap(),
            "sandbox-bvnk-id",
            b"sandbox-bvnk-key",
            SystemTime::now(),
            &nonce(),
        )
        .unwrap();
        let error = server
            .client
            .post(&url)
            .header("authorization", auth)
            .header("x-idempotency-key", key("r-1").unwrap())
            .body(body("r-1", "5"))
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout());
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refund("r-1").unwrap().submit_count, 1);
        assert_eq!(
            (
                ledger.injected_failures,
                ledger.injected_rejects,
                ledger.injected_timeouts
            ),
            (1, 1, 1)
        );
        // The status shows it; a resubmission with the same key is a replay.
        let list = refunds(&server).await;
        assert_eq!(list.body[0]["customerReference"], "r-1");
        assert_eq!(refund(&server, "r-1", "5").await.status, 200);
        assert_eq!(server.sandbox.ledger().refunds[0].submit_count, 2);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn refund_processes_then_completes_or_fails_as_forced() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_millis(200),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.add_payment(payment("100"));
        server.sandbox.set_outcome(
            Provider::Bvnk,
            "r-2",
            ForcedOutcome {
                status: OutcomeStatus::Failed,
            },
        );
        refund(&server, "r-1", "10").await;
        refund(&server, "r-2", "90").await;
        let list = refunds(&server).await;
        assert_eq!(list.status, 200);
        assert_eq!(list.body[0]["status"], "PROCESSING");
        assert_eq!(list.body[0]["approvalStatus"], Value::Null);
        assert_eq!(
            list.body[0]["amount"],
            json!({"value": "10", "currency": "EUR"})
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let list = refunds(&server).await;
        assert_eq!(list.body[0]["status"], "COMPLETED");
        assert_eq!(list.body[1]["status"], "FAILED");
        // The failed refund's 90 is refundable again.
        assert_eq!(refund(&server, "r-3", "90").await.status, 200);
        let ledger = server.sandbox.ledger();
        assert!(ledger.refund("r-1").unwrap().completed_at.is_some());
        assert_eq!(ledger.refund("r-2").unwrap().status, "FAILED");
        // An unknown pay-in has no refunds to list.
        let unknown = call(&server, "GET", "/payment/v1/payins/nope/refund", None, None).await;
        assert_eq!(unknown.status, 404);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn four_eyes_waits_for_approval_and_rejection_cancels() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_millis(100),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.add_payment(payment("100"));
        let (status, settings) = server
            .admin_post(
                "/sandbox/bvnk/settings",
                json!({"fourEyes": true, "fee": "0.50"}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(settings, json!({"fourEyes": true, "fee": "0.50"}));
        let created = refund(&server, "r-1", "60").await;
        assert_eq!(created.body["fee"]["value"].to_string(), "0.50");
        refund(&server, "r-2", "40").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let list = refunds(&server).await;
        assert_eq!(list.body[0]["status"], "PENDING_APPROVAL");
        assert_eq!(list.body[0]["approvalStatus"], "PENDING");
        assert_eq!(
            refund(&server, "r-3", "1").await.status,
            400,
            "pending holds the balance"
        );

        let (status, _) = server
            .admin_post("/sandbox/bvnk/refunds/r-1/approve", json!({}))
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .admin_post("/sandbox/bvnk/refunds/r-2/reject", json!({}))
            .await;
        assert_eq!(status, 200);
        let (status, _) = server
            .admin_post("/sandbox/bvnk/refunds/r-2/approve", json!({}))
            .await;
        assert_eq!(status, 409, "a rejection cannot be reversed");
        let (status, _) = server
            .admin_post("/sandbox/bvnk/refunds/nope/approve", json!({}))
            .await;
        assert_eq!(status, 404);

        let list = refunds(&server).await;
        assert_eq!(
            list.body[0]["status"], "PROCESSING",
            "processing starts at approval"
        );
        assert_eq!(list.body[1]["status"], "CANCELLED");
        assert_eq!(list.body[1]["approvalStatus"], "REJECTED");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(refunds(&server).await.body[0]["status"], "COMPLETED");
        assert_eq!(
            refund(&server, "r-3", "40").await.status,
            200,
            "the rejected 40 is free"
        );
        server.stop(Duration::from_secs(2)).await;
    }
}

/// The adapter against this simulator: what the unit tests of each side cannot show alone.
#[cfg(test)]
mod adapter_tests {
    use super::super::test_support::{start, TestServer};
    use super::super::{Payment, Provider as SandboxProvider, SandboxConfig};
    use refund_worker::domain::{FailureCode, Fee, ProviderName, ProviderOutcome};
    use refund_worker::providers::bvnk::Bvnk;
    use refund_worker::providers::{Provider, RefundRequest};
    use rust_decimal::Decimal;
    use std::time::Duration;

    fn adapter(server: &TestServer, secret: &str) -> Bvnk {
        let base = server.base.clone();
        let secret = secret.to_owned();
        let config = refund_worker::config::Config::from_lookup(|k| match k {
            "PROVIDER_BVNK_BASE_URL" => Some(base.clone()),
            "PROVIDER_BVNK_API_KEY" => Some("sandbox-bvnk-id".into()),
            "PROVIDER_BVNK_API_SECRET" => Some(secret.clone()),
            _ => None,
        })
        .unwrap();
        Bvnk::new(config.providers[&ProviderName::Bvnk].clone()).unwrap()
    }

    fn request(reference: &str, amount: &str) -> RefundRequest {
        RefundRequest {
            refund_reference: reference.into(),
            transaction_reference: "payin-1".into(),
            amount: Decimal::from_str_exact(amount).unwrap(),
            currency: "EUR".into(),
            reason: "Order cancelled!".into(),
            customer_note: None,
            destination: None,
            provider_reference: None,
            metadata: None,
        }
    }

    #[tokio::test]
    async fn adapter_refunds_through_hawk_and_a_wrong_key_is_refused() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_secs(60),
            ..SandboxConfig::default()
        })
        .await;
        let bvnk = adapter(&server, "sandbox-bvnk-key");
        let fee = Some(Fee {
            amount: Decimal::new(100, 2),
            currency: "EUR".into(),
        });
        assert_eq!(
            bvnk.submit(&request("r-1", "12.34")).await,
            ProviderOutcome::Accepted {
                provider_reference: None,
                provider_status: "SUBMITTED".into(),
                fee: fee.clone(),
            }
        );
        match bvnk.status(&request("r-1", "12.34")).await {
            ProviderOutcome::Accepted {
                provider_reference: Some(_),
                provider_status,
                fee: f,
            } => {
                assert_eq!(provider_status, "PROCESSING");
                assert_eq!(f, fee);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            bvnk.status(&request("r-2", "1")).await,
            ProviderOutcome::NotFound
        );

        // Refused before processing: retried (RETRIES_EXHAUSTED in the end), never a
        // made-up rejection.
        let wrong = adapter(&server, "not-the-key");
        match wrong.submit(&request("r-3", "1")).await {
            ProviderOutcome::Retryable {
                reason,
                may_have_reached_provider: false,
                ..
            } => assert!(reason.contains("HTTP 401"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            wrong.status(&request("r-1", "12.34")).await,
            ProviderOutcome::Retryable { .. }
        ));
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.rejected_auth, 2);
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refunds[0].refund_amount, "12.34");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_resubmit_whose_balance_went_to_itself_is_not_failed() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(Payment {
            provider: SandboxProvider::Bvnk,
            transaction_reference: "payin-1".into(),
            amount: Decimal::from(10),
            currency: "EUR".into(),
        });
        let bvnk = adapter(&server, "sandbox-bvnk-key");
        assert!(matches!(
            bvnk.submit(&request("r-1", "10")).await,
            ProviderOutcome::Accepted { .. }
        ));
        // The same refund submitted again: the estimate shows 0 left, but it is ours.
        assert!(matches!(
            bvnk.submit(&request("r-1", "10")).await,
            ProviderOutcome::Accepted { .. }
        ));
        // Another refund really does not fit, and is never sent.
        assert!(matches!(
            bvnk.submit(&request("r-2", "0.01")).await,
            ProviderOutcome::Failed(f) if f.code == FailureCode::AmountExceedsRefundable
        ));
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.submit_calls, 1);
        assert_eq!(ledger.refunds[0].submit_count, 1);
        server.stop(Duration::from_secs(2)).await;
    }
}

/// The notification bookkeeping, driven directly with chosen instants.
#[cfg(test)]
mod webhook_tests {
    use super::super::book::Stage;
    use super::super::test_support::refund_notices;
    use super::super::{OutcomeStatus, SandboxConfig, Simulated};
    use super::{word, BvnkState, RefundCall};
    use rust_decimal::Decimal;
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::time::Instant;

    fn request(key: &str, customer_reference: &str) -> RefundCall {
        RefundCall {
            idempotency_key: key.into(),
            transaction_reference: "tx-1".into(),
            customer_reference: customer_reference.into(),
            amount: Decimal::ONE,
            amount_text: "1".into(),
            currency: "EUR".into(),
            metadata: json!({}),
            body: String::new(),
        }
    }

    /// What the notify loop used to compute: a walk over every refund.
    fn full_scan(state: &BvnkState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        state
            .book
            .iter()
            .filter_map(|r| {
                let stage = state.book.stage(r, config, now);
                (stage != Stage::Pending && state.book.notified(&r.key) != Some(stage))
                    .then(|| format!("{}:{}", r.reference, word(stage)))
            })
            .collect()
    }

    /// Due notifications as `customerReference:status`, checked against the full scan.
    fn due(state: &mut BvnkState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        let expected = full_scan(state, config, now);
        let got: Vec<String> = refund_notices(state, config, now)
            .iter()
            .map(|out| {
                let body: Value = serde_json::from_slice(&out.body).unwrap();
                let data = &body["data"];
                format!(
                    "{}:{}",
                    data["customerReference"].as_str().unwrap(),
                    data["status"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(got, expected);
        assert!(full_scan(state, config, now).is_empty(), "all handed out");
        got
    }

    #[test]
    fn only_unsettled_refunds_are_looked_at_and_nothing_is_missed() {
        let config = SandboxConfig {
            completion_delay: Duration::from_millis(100),
            ..SandboxConfig::default()
        };
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut state = BvnkState {
            four_eyes: true,
            ..BvnkState::default()
        };
        state.accept(request("k-1", "c-1"), &config, t0).unwrap();
        state.four_eyes = false;
        // A new idempotency key with the same customerReference is a second refund.
        state.accept(request("k-2", "c-2"), &config, t0).unwrap();
        state.accept(request("k-3", "c-2"), &config, t0).unwrap();
        assert_eq!(
            due(&mut state, &config, t0),
            ["c-1:PENDING_APPROVAL"],
            "waiting for approval is told at once"
        );
        assert!(due(&mut state, &config, t0).is_empty());
        assert_eq!(
            due(&mut state, &config, t0 + ms(120)),
            ["c-2:COMPLETED", "c-2:COMPLETED"]
        );
        assert_eq!(
            state.book.unsettled_len(),
            0,
            "c-1 waits for a decision only"
        );
        // Forcing by customerReference reaches both of its refunds.
        state.set_outcome("c-2", OutcomeStatus::Failed);
        assert_eq!(
            due(&mut state, &config, t0 + ms(130)),
            ["c-2:FAILED", "c-2:FAILED"]
        );
        state.decide_approval("c-1", true).unwrap();
        let approved = Instant::now();
        assert!(due(&mut state, &config, approved).is_empty());
        assert_eq!(state.book.unsettled_len(), 1, "processing after approval");
        assert_eq!(
            due(&mut state, &config, approved + ms(120)),
            ["c-1:COMPLETED"]
        );
        state.four_eyes = true;
        state.accept(request("k-4", "c-3"), &config, t0).unwrap();
        assert_eq!(
            due(&mut state, &config, approved + ms(130)),
            ["c-3:PENDING_APPROVAL"]
        );
        state.decide_approval("c-3", false).unwrap();
        assert!(state.decide_approval("c-3", true).is_err());
        assert_eq!(
            due(&mut state, &config, approved + ms(140)),
            ["c-3:CANCELLED"]
        );
        assert_eq!(state.book.unsettled_len(), 0);
        assert!(due(&mut state, &config, approved + ms(500)).is_empty());
    }
}
