//! Binance Pay refund API, as its docs describe it (shared/providers/binance-pay-*.txt and
//! the Binance Pay section of shared/providers/README.md), with the gaps filled the way the
//! adapter's module comment (`providers::binance_pay`) decides them:
//!
//! - Auth exactly as Binance checks it: `BinancePay-Certificate-SN` must be
//!   `SandboxConfig::binance_api_key` (else `400004`), `BinancePay-Timestamp` a ms timestamp
//!   within 30 s of our clock (Binance says 1 s; loaded test machines need more; else
//!   `400003`), `BinancePay-Nonce` 32 letters/digits (else `400001`), `BinancePay-Signature`
//!   the *uppercase* hex HMAC-SHA512 with `binance_api_secret` over
//!   `timestamp\nnonce\nbody\n` of the raw body (else `400002`, "Signature for this request
//!   is not valid."). Refused calls answer HTTP 400 and count only in `rejectedAuth`.
//! - Orders are payments keyed by `prepayId` (unknown ones get
//!   `config.default_payment_amount`). Each order allows [`MAX_REFUND_ATTEMPTS`] refunds
//!   (`remainingAttempts`; our assumption, the docs' example shows 8 left after two). With 0
//!   left a new refund is refused `400606` REFUND_ATTEMPTS_EXHAUSTED; with 1 left the refund
//!   ignores its amount and refunds the whole remainder, as Binance documents. Refunds that
//!   have not failed may not exceed `orderAmount` (`400604` REFUND_AMOUNT_EXCEEDED, HTTP 200).
//! - A known `refundRequestId` is a replay: answered with the original refund and
//!   `duplicateRequest: "Y"` (counted in `submitCount`; a differing `prepayId` or amount is
//!   counted in `mismatchedReplays`), even when the order has no attempts left.
//! - The refund answer carries no `refundStatus` (as in the docs' example); the query
//!   answers `REFUND_PENDING` for `completion_delay`, then `REFUND_SUCCESS` or, when forced,
//!   `REFUND_FAIL` (a failed refund frees its amount, not its attempt). An unknown
//!   `refundRequestId` is `400607` REFUND_NOT_FOUND.
//! - Forced outcomes are keyed by `refundRequestId`; `Sandbox::set_outcome` and the admin
//!   route also take a `refundReference` longer than 64 characters and key it by its derived
//!   id, so tests can use our reference either way.
//!
//! Order of checks (like VA's): auth (not counted), count, injected HTTP error (`failNext`,
//! `error_rate`: the error envelope with the HTTP status as code), validation (`400001`),
//! `rejectNext` (`400605` ORDER_NOT_REFUNDABLE, HTTP 200, nothing recorded), replay,
//! attempts, balance, record, then the hang (`timeoutAfterAcceptNext`, `timeout_rate`).

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::book::{Book, OutcomeKey, Refund, Stage};
use super::gate::ProviderError;
use super::notify::Notice;
use super::{
    decimal_and_text, CallKind, Payment, Provider, Reply, Sandbox, SandboxConfig, Simulator, State,
};
// Paths, headers, limits and the signature as Binance Pay's docs give them, from the
// simulator's own reading (never the adapter's).
use super::docs::binance as api;

/// Refunds an order allows (our assumption; Binance's docs do not say).
pub const MAX_REFUND_ATTEMPTS: u64 = 10;
/// How far a request timestamp may be from our clock.
const TIMESTAMP_WINDOW_MS: u64 = 30_000;
/// Binance's limit on `prepayId`.
const MAX_PREPAY_ID_LEN: usize = 19;

/// Binance Pay routes plus this provider's admin route.
pub(super) fn routes() -> Router<Sandbox> {
    Router::new()
        .route(api::REFUND_PATH, post(refund))
        .route(api::QUERY_PATH, post(query))
}

/// What Binance Pay knows: orders by prepayId, refunds in creation order (by
/// refundRequestId and by order), forced outcomes by refundRequestId (they may precede the
/// refund).
pub(super) struct BinanceState {
    pub(super) book: Book<()>,
    /// The webhook signing key, parsed on first use (shared with the signing done after
    /// the lock is released).
    signing_key: OnceLock<Option<Arc<RsaKeyPair>>>,
}

impl Default for BinanceState {
    fn default() -> Self {
        Self {
            book: Book::new(Provider::BinancePay, word, OutcomeKey::Reference),
            signing_key: OnceLock::new(),
        }
    }
}

fn word(stage: Stage) -> &'static str {
    match stage {
        Stage::AwaitingApproval | Stage::Pending => "REFUND_PENDING",
        Stage::Completed => "REFUND_SUCCESS",
        Stage::Failed | Stage::Cancelled => "REFUND_FAIL",
    }
}

/// ring's RSA key pair: PKCS#1 v1.5 signing several times faster than the `rsa` crate's
/// (whose signature was a large share of a benchmark's CPU), with the same bytes.
type RsaKeyPair = ring::signature::RsaKeyPair;

/// Parses the PKCS#8 PEM (`BEGIN PRIVATE KEY`) signing key.
fn parse_signing_key(pem: &str) -> Result<RsaKeyPair, String> {
    let (label, der) =
        rsa::pkcs8::der::pem::decode_vec(pem.as_bytes()).map_err(|e| e.to_string())?;
    if label != "PRIVATE KEY" {
        return Err(format!("expected a PKCS#8 PRIVATE KEY, found {label}"));
    }
    RsaKeyPair::from_pkcs8(&der).map_err(|e| e.to_string())
}

/// Binance Pay's webhook signature: base64 RSA-SHA256 (PKCS#1 v1.5) over
/// `timestamp\nnonce\nbody\n`.
fn sign_webhook(key: &RsaKeyPair, payload: &[u8]) -> Result<String, ring::error::Unspecified> {
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        payload,
        &mut signature,
    )?;
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        signature,
    ))
}

/// One Binance Pay notification of `body`, signed now with a fresh nonce. A copy sent again
/// (the sandbox's duplicates) is signed anew, as a provider sending it again would: the
/// ingress refuses the same nonce twice.
pub(super) fn signed_outbound(
    key: &Arc<RsaKeyPair>,
    body: String,
) -> Option<super::notify::Outbound> {
    let timestamp = Utc::now().timestamp_millis().to_string();
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let payload = format!("{timestamp}\n{nonce}\n{body}\n");
    let signature = match sign_webhook(key, payload.as_bytes()) {
        Ok(signature) => signature,
        // ring fails only on a wrong buffer length, which the key itself sizes.
        Err(e) => {
            tracing::error!(error = %e, "binance sandbox: webhook signing failed");
            return None;
        }
    };
    Some(super::notify::Outbound {
        provider: Provider::BinancePay,
        body: body.into_bytes(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("BinancePay-Timestamp".into(), timestamp),
            ("BinancePay-Nonce".into(), nonce),
            ("BinancePay-Signature".into(), signature),
        ],
        signature_header: "BinancePay-Signature".into(),
        resign_with: Some(key.clone()),
    })
}

/// Binance Pay's payment notification for a paid order: `bizType: "PAY"`, `bizIdStr` the
/// order's `prepayId`, `bizStatus: "PAY_SUCCESS"`, and `data` as a JSON *string* carrying
/// `merchantTradeNo` (the sandbox has no merchant order number: the prepayId), `totalFee`
/// (the order amount, an exact JSON number), `currency`, `transactTime` (ms) and
/// `tradeType`/`transactionId` (ours), the fields of Binance's PAY notification.
pub(super) fn payin_body(payment: &Payment, at: DateTime<Utc>) -> String {
    let data = json!({
        "merchantTradeNo": payment.transaction_reference,
        "totalFee": super::decimal_to_json(payment.amount),
        "currency": payment.currency,
        "transactTime": at.timestamp_millis(),
        "tradeType": "WEB",
        "transactionId": format!("M_R_{}", payment.transaction_reference),
    });
    json!({
        "bizType": "PAY",
        "bizIdStr": payment.transaction_reference,
        "bizStatus": "PAY_SUCCESS",
        "data": data.to_string(),
    })
    .to_string()
}

/// Every Binance error answer: HTTP status, code and message chosen here, in one place.
#[derive(Debug, thiserror::Error)]
enum BinanceError {
    #[error("API identity key not found or invalid.")]
    BadApiKey,
    #[error("Timestamp for this request is outside of the time window.")]
    BadTimestamp,
    #[error("Signature for this request is not valid.")]
    BadSignature,
    #[error("{0}")]
    Invalid(String),
    #[error("{} (injected by sandbox)", .0.canonical_reason().unwrap_or("Error"))]
    Injected(StatusCode),
    #[error("The order is not refundable (declined by sandbox).")]
    Declined,
    #[error(
        "The refund amount exceeds the refundable amount of the order. Refundable amount: {0}"
    )]
    Exceeds(Decimal),
    #[error("The order has no refund attempts left.")]
    AttemptsExhausted,
    #[error("Refund order not found.")]
    RefundNotFound,
}

impl IntoResponse for BinanceError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::BadApiKey => (StatusCode::BAD_REQUEST, "400004".to_owned()),
            Self::BadTimestamp => (StatusCode::BAD_REQUEST, "400003".to_owned()),
            Self::BadSignature => (StatusCode::BAD_REQUEST, "400002".to_owned()),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "400001".to_owned()),
            Self::Injected(s) => (*s, s.as_str().to_owned()),
            Self::Declined => (StatusCode::OK, "400605".to_owned()),
            Self::Exceeds(_) => (StatusCode::OK, "400604".to_owned()),
            Self::AttemptsExhausted => (StatusCode::OK, "400606".to_owned()),
            Self::RefundNotFound => (StatusCode::OK, "400607".to_owned()),
        };
        let data = match &self {
            Self::AttemptsExhausted => json!({ "remainingAttempts": 0 }),
            _ => Value::Null,
        };
        let body = json!({
            "status": "FAIL",
            "code": code,
            "data": data,
            "errorMessage": self.to_string(),
        });
        (status, Json(body)).into_response()
    }
}

fn success(data: Value) -> Response {
    let body =
        json!({ "status": "SUCCESS", "code": api::SUCCESS_CODE, "data": data, "errorMessage": "" });
    (StatusCode::OK, Json(body)).into_response()
}

impl Simulator for BinanceState {
    book_field!(());

    /// Our long references map to their derived id (our naming convention, README, not
    /// Binance's): tests may address a refund either way.
    fn outcome_key(&self, key: &str) -> String {
        api::refund_request_id(key)
    }

    /// `PAY` notifications, signed like the `PAY_REFUND` ones (see [`payin_body`]).
    fn payin_notice(
        &self,
        _: &SandboxConfig,
        payment: &Payment,
        at: DateTime<Utc>,
    ) -> Option<Notice> {
        Some(Notice::rsa(payin_body(payment, at), self.signing_key()?))
    }

    /// `PAY_REFUND` notifications for every refund that became final, signed like Binance
    /// Pay's: base64 RSA-SHA256 over "timestamp\nnonce\nbody\n" with the TEST-ONLY key in
    /// `fixtures/binance_pay/` (its public half is what `provider_env` configures).
    fn refund_notice(
        &self,
        _: &SandboxConfig,
        refund: &Refund<()>,
        stage: Stage,
        _: Instant,
    ) -> Option<Notice> {
        let data = json!({
            "merchantTradeNo": refund.payment,
            "refundInfo": {
                "refundRequestId": refund.key,
                "prepayId": refund.payment,
                "refundAmount": refund.amount.to_string(),
                "duplicateRequest": "N",
            },
        });
        let body = json!({
            "bizType": "PAY_REFUND",
            "bizIdStr": refund.payment,
            "bizStatus": word(stage),
            "data": data.to_string(),
        })
        .to_string();
        Some(Notice::rsa(body, self.signing_key()?))
    }
}

impl BinanceState {
    /// Refunds left on the order (failed refunds used their attempt too).
    fn remaining_attempts(&self, prepay_id: &str) -> u64 {
        let used = self.book.group_len(prepay_id);
        MAX_REFUND_ATTEMPTS.saturating_sub(u64::try_from(used).unwrap_or(u64::MAX))
    }

    /// The `RefundResult` Binance answers; `refundStatus` only on queries.
    fn view(
        &self,
        refund: &Refund<()>,
        config: &SandboxConfig,
        now: Instant,
        duplicate: bool,
        with_status: bool,
    ) -> Value {
        let mut data = json!({
            "refundRequestId": refund.key,
            "prepayId": refund.payment,
            "orderAmount": self.book.payment_amount(&refund.payment, config).to_string(),
            // Refunds that have not failed.
            "refundedAmount": self.book.committed(&refund.payment, config, now).to_string(),
            "refundAmount": refund.amount.to_string(),
            "remainingAttempts": self.remaining_attempts(&refund.payment),
            "payerOpenId": "dde730c2e0ea1f1780cf26343b98fd3b",
            "duplicateRequest": if duplicate { "Y" } else { "N" },
        });
        if with_status {
            data["refundStatus"] = json!(word(self.book.stage(refund, config, now)));
        }
        data
    }

    /// Replays a known refund or records a new one.
    fn accept(
        &mut self,
        request: RefundCall,
        config: &SandboxConfig,
        now: Instant,
    ) -> Result<Response, BinanceError> {
        let replayed = self.book.replay(&request.refund_request_id, |r| {
            r.payment != request.prepay_id || r.amount_text != request.amount_text
        });
        if let Some(refund) = replayed.and_then(|i| self.book.at(i)) {
            return Ok(success(self.view(refund, config, now, true, false)));
        }

        self.book
            .payment_or_default(&request.prepay_id, config, || "USDT".to_owned());
        let remaining = self.remaining_attempts(&request.prepay_id);
        if remaining == 0 {
            return Err(BinanceError::AttemptsExhausted);
        }
        let refundable = self.book.refundable(&request.prepay_id, config, now);
        // Binance: on the last attempt the amount is ignored and the remainder refunded.
        let amount = if remaining == 1 && refundable > Decimal::ZERO {
            refundable
        } else if request.amount > refundable {
            return Err(BinanceError::Exceeds(refundable));
        } else {
            request.amount
        };
        tracing::info!(
            refund_request_id = %request.refund_request_id,
            amount = %amount,
            "binance sandbox: refund accepted"
        );
        let refund = Refund::new(
            request.refund_request_id,
            request.prepay_id,
            (amount, request.amount_text),
            request.body,
            now,
            (),
        );
        let index = self.book.record(refund);
        let refund = self.book.at(index).ok_or(BinanceError::RefundNotFound)?;
        Ok(success(self.view(refund, config, now, false, false)))
    }

    /// The webhook signing key, parsed on first use.
    fn signing_key(&self) -> Option<Arc<RsaKeyPair>> {
        self.signing_key
            .get_or_init(
                || match parse_signing_key(super::BINANCE_WEBHOOK_TEST_PRIVATE_KEY) {
                    Ok(key) => Some(Arc::new(key)),
                    Err(e) => {
                        tracing::error!(error = %e, "binance sandbox: test signing key unreadable");
                        None
                    }
                },
            )
            .clone()
    }
}

/// A validated refund body.
struct RefundCall {
    prepay_id: String,
    refund_request_id: String,
    amount: Decimal,
    amount_text: String,
    body: String,
}

fn fields(body: &[u8]) -> Result<(String, serde_json::Map<String, Value>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "Request body is not UTF-8.".to_owned())?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok((text.to_owned(), map)),
        Ok(_) => Err("Request body must be a JSON object.".to_owned()),
        Err(e) => Err(format!("Malformed JSON request body: {e}")),
    }
}

fn required(
    fields: &serde_json::Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<String, String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => Ok(s.clone()),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            Err(format!("{name}: maximum length {max}."))
        }
        Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("{name} is mandatory.")),
        Some(_) => Err(format!("{name} must be a string.")),
    }
}

impl RefundCall {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let (text, fields) = fields(body)?;
        let prepay_id = required(&fields, "prepayId", MAX_PREPAY_ID_LEN)?;
        let refund_request_id =
            required(&fields, "refundRequestId", api::MAX_REFUND_REQUEST_ID_LEN)?;
        let (amount, amount_text) = match fields.get("refundAmount") {
            None | Some(Value::Null) => return Err("refundAmount is mandatory.".to_owned()),
            Some(v) => {
                decimal_and_text(v).ok_or_else(|| "refundAmount must be a decimal.".to_owned())?
            }
        };
        if amount <= Decimal::ZERO {
            return Err("refundAmount must be greater than 0.".to_owned());
        }
        match fields.get("refundReason") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.chars().count() <= api::MAX_REASON_CHARS => {}
            Some(Value::String(_)) => return Err("refundReason: maximum length 256.".to_owned()),
            Some(_) => return Err("refundReason must be a string.".to_owned()),
        }
        Ok(Self {
            prepay_id,
            refund_request_id,
            amount,
            amount_text,
            body: text,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binance's header checks; the error is the answer.
fn authenticate(
    config: &SandboxConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), BinanceError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let key = header(api::HEADER_CERTIFICATE_SN).ok_or(BinanceError::BadApiKey)?;
    if !constant_time_eq(key.as_bytes(), config.binance_api_key.as_bytes()) {
        return Err(BinanceError::BadApiKey);
    }
    let timestamp = header(api::HEADER_TIMESTAMP).ok_or(BinanceError::BadTimestamp)?;
    let sent: i64 = timestamp.parse().map_err(|_| BinanceError::BadTimestamp)?;
    if Utc::now().timestamp_millis().abs_diff(sent) > TIMESTAMP_WINDOW_MS {
        return Err(BinanceError::BadTimestamp);
    }
    let nonce = header(api::HEADER_NONCE).unwrap_or_default();
    if nonce.len() != api::NONCE_LEN || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(BinanceError::Invalid(
            "BinancePay-Nonce must be 32 letters or digits.".to_owned(),
        ));
    }
    let signature = header(api::HEADER_SIGNATURE).ok_or(BinanceError::BadSignature)?;
    // Binance wants the hex in upper case; lower case is a wrong signature.
    if signature.bytes().any(|b| b.is_ascii_lowercase())
        || !api::signature_ok(
            config.binance_api_secret.as_bytes(),
            timestamp,
            nonce,
            body,
            signature,
        )
    {
        return Err(BinanceError::BadSignature);
    }
    Ok(())
}

impl ProviderError for BinanceError {
    fn injected(status: StatusCode) -> Self {
        Self::Injected(status)
    }
}

/// Runs one Binance Pay call through the fault gate, authenticated over `body`.
async fn binance_call(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    body: &[u8],
    kind: CallKind,
    decide: impl FnOnce(&mut State, &SandboxConfig) -> Result<Reply, BinanceError>,
) -> Response {
    let authenticate = |_: &mut State, config: &SandboxConfig| authenticate(config, headers, body);
    sandbox.call(kind, authenticate, decide).await
}

async fn refund(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    binance_call(
        &sandbox,
        &headers,
        &body,
        CallKind::Submit,
        |state, config| {
            let request = RefundCall::parse(&body).map_err(BinanceError::Invalid)?;
            state.submit(
                config,
                || BinanceError::Declined,
                |state| state.binance.accept(request, config, Instant::now()),
            )
        },
    )
    .await
}

async fn query(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    binance_call(
        &sandbox,
        &headers,
        &body,
        CallKind::Status,
        |state, config| {
            let (_, fields) = fields(&body).map_err(BinanceError::Invalid)?;
            let id = required(&fields, "refundRequestId", api::MAX_REFUND_REQUEST_ID_LEN)
                .map_err(BinanceError::Invalid)?;
            let refund = state
                .binance
                .book
                .get(&id)
                .ok_or(BinanceError::RefundNotFound)?;
            let view = state
                .binance
                .view(refund, config, Instant::now(), false, true);
            Ok(Reply::now(success(view)))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{start, TestServer};
    use super::super::{Faults, ForcedOutcome, OutcomeStatus, Payment, Provider, SandboxConfig};
    use super::MAX_REFUND_ATTEMPTS;
    use refund_worker::providers::binance_pay as api;
    use rust_decimal::Decimal;
    use serde_json::{json, Value};
    use std::time::Duration;

    /// Signs like the adapter, with the sandbox's default credentials unless told otherwise.
    struct Signer {
        key: String,
        secret: String,
        /// Offset of the timestamp from now, in ms.
        skew_ms: i64,
        lower_case: bool,
    }

    impl Default for Signer {
        fn default() -> Self {
            let config = SandboxConfig::default();
            Self {
                key: config.binance_api_key,
                secret: config.binance_api_secret,
                skew_ms: 0,
                lower_case: false,
            }
        }
    }

    async fn call(server: &TestServer, path: &str, body: &str, signer: &Signer) -> (u16, Value) {
        let ts = (chrono::Utc::now().timestamp_millis() + signer.skew_ms).to_string();
        let nonce = api::nonce();
        let mut sig = api::sign_request(signer.secret.as_bytes(), &ts, &nonce, body.as_bytes());
        if signer.lower_case {
            sig = sig.to_ascii_lowercase();
        }
        let response = server
            .client
            .post(server.url(path))
            .header("content-type", "application/json")
            .header(api::HEADER_TIMESTAMP, ts)
            .header(api::HEADER_NONCE, nonce)
            .header(api::HEADER_CERTIFICATE_SN, &signer.key)
            .header(api::HEADER_SIGNATURE, sig)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn refund(server: &TestServer, body: &str) -> (u16, Value) {
        call(server, api::REFUND_PATH, body, &Signer::default()).await
    }

    async fn query(server: &TestServer, id: &str) -> (u16, Value) {
        let body = json!({ "refundRequestId": id }).to_string();
        call(server, api::QUERY_PATH, &body, &Signer::default()).await
    }

    fn body(prepay: &str, id: &str, amount: &str) -> String {
        format!(
            r#"{{"prepayId":"{prepay}","refundRequestId":"{id}","refundAmount":{amount},"refundReason":"changed mind"}}"#
        )
    }

    fn order(prepay: &str, amount: &str) -> Payment {
        Payment {
            provider: Provider::BinancePay,
            transaction_reference: prepay.into(),
            amount: Decimal::from_str_exact(amount).unwrap(),
            currency: "USDT".into(),
        }
    }

    #[tokio::test]
    async fn the_signature_is_checked_exactly() {
        let server = start(SandboxConfig::default()).await;
        let b = body("383729303729303", "r-1", "25.17");
        let wrong_secret = Signer {
            secret: "nope".into(),
            ..Signer::default()
        };
        let (status, answer) = call(&server, api::REFUND_PATH, &b, &wrong_secret).await;
        assert_eq!(status, 400);
        assert_eq!(
            answer,
            json!({"status": "FAIL", "code": "400002", "data": null, "errorMessage": "Signature for this request is not valid."})
        );
        let lower = Signer {
            lower_case: true,
            ..Signer::default()
        };
        assert_eq!(
            call(&server, api::REFUND_PATH, &b, &lower).await.1["code"],
            "400002"
        );
        let wrong_key = Signer {
            key: "other".into(),
            ..Signer::default()
        };
        assert_eq!(
            call(&server, api::REFUND_PATH, &b, &wrong_key).await.1["code"],
            "400004"
        );
        let stale = Signer {
            skew_ms: -60_000,
            ..Signer::default()
        };
        assert_eq!(
            call(&server, api::REFUND_PATH, &b, &stale).await.1["code"],
            "400003"
        );
        // A signature over other bytes than those sent.
        let response = server
            .client
            .post(server.url(api::REFUND_PATH))
            .header(
                api::HEADER_TIMESTAMP,
                chrono::Utc::now().timestamp_millis().to_string(),
            )
            .header(api::HEADER_NONCE, "short")
            .header(
                api::HEADER_CERTIFICATE_SN,
                SandboxConfig::default().binance_api_key,
            )
            .header(api::HEADER_SIGNATURE, "AB")
            .body(b.clone())
            .send()
            .await
            .unwrap();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], "400001", "a bad nonce: {answer}");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.rejected_auth, 5);
        assert_eq!(ledger.submit_calls, 0);
        assert!(ledger.refunds.is_empty());
        let (status, ok) = refund(&server, &b).await;
        assert_eq!((status, ok["code"].as_str()), (200, Some("000000")));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn documented_request_gets_the_documented_answer_shape() {
        let server = start(SandboxConfig::default()).await;
        server
            .sandbox
            .add_payment(order("383729303729303", "100.11"));
        let doc = include_str!("../../../fixtures/binance_pay/refund-request.json");
        // The docs' first refund on this order: 25.17 of 100.11.
        let (status, answer) = refund(&server, doc).await;
        assert_eq!(status, 200);
        assert_eq!(
            answer,
            json!({"status": "SUCCESS", "code": "000000", "errorMessage": "", "data": {
                "refundRequestId": "68711039982968832",
                "prepayId": "383729303729303",
                "orderAmount": "100.11",
                "refundedAmount": "25.17",
                "refundAmount": "25.17",
                "remainingAttempts": MAX_REFUND_ATTEMPTS - 1,
                "payerOpenId": "dde730c2e0ea1f1780cf26343b98fd3b",
                "duplicateRequest": "N",
            }})
        );
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds[0].request_body, doc);
        assert_eq!(ledger.refunds[0].refund_amount, "25.17");
        assert_eq!(ledger.refunds[0].refund_reference, "68711039982968832");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn replays_are_duplicates_and_balances_hold() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(order("111", "100.00"));
        let (_, first) = refund(&server, &body("111", "r-1", "60")).await;
        assert_eq!(first["data"]["duplicateRequest"], "N");
        let (_, again) = refund(&server, &body("111", "r-1", "60")).await;
        assert_eq!(again["data"]["duplicateRequest"], "Y");
        assert_eq!(again["data"]["refundAmount"], "60");
        assert_eq!(again["data"]["refundedAmount"], "60");
        // Over the balance: refused, nothing recorded.
        let (status, over) = refund(&server, &body("111", "r-2", "40.01")).await;
        assert_eq!(status, 200);
        assert_eq!(
            over,
            json!({"status": "FAIL", "code": "400604", "data": null, "errorMessage": "The refund amount exceeds the refundable amount of the order. Refundable amount: 40.00"})
        );
        let (_, exact) = refund(&server, &body("111", "r-3", "40.00")).await;
        assert_eq!(exact["data"]["refundedAmount"], "100.00");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 2);
        assert_eq!(ledger.refund("r-1").unwrap().submit_count, 2);
        assert!(ledger.refund("r-2").is_none());
        // A replay with another amount answers the original and is flagged.
        let (_, odd) = refund(&server, &body("111", "r-1", "61")).await;
        assert_eq!(odd["data"]["refundAmount"], "60");
        assert_eq!(
            server
                .sandbox
                .ledger()
                .refund("r-1")
                .unwrap()
                .mismatched_replays,
            1
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn attempts_run_out_and_the_last_one_refunds_the_remainder() {
        let server = start(SandboxConfig::default()).await;
        server.sandbox.add_payment(order("222", "100"));
        for i in 1..MAX_REFUND_ATTEMPTS {
            let (_, ok) = refund(&server, &body("222", &format!("r-{i}"), "1")).await;
            assert_eq!(
                ok["data"]["remainingAttempts"],
                json!(MAX_REFUND_ATTEMPTS - i)
            );
        }
        // One attempt left: the amount is ignored, the remainder (91) is refunded.
        let (_, last) = refund(&server, &body("222", "r-last", "1")).await;
        assert_eq!(last["data"]["refundAmount"], "91");
        assert_eq!(last["data"]["refundedAmount"], "100");
        assert_eq!(last["data"]["remainingAttempts"], json!(0));
        // None left: final refusal, but a replay is still the same refund.
        let (_, none) = refund(&server, &body("222", "r-more", "1")).await;
        assert_eq!(none["code"], "400606");
        assert_eq!(none["data"]["remainingAttempts"], json!(0));
        let (_, replay) = refund(&server, &body("222", "r-last", "1")).await;
        assert_eq!(replay["data"]["duplicateRequest"], "Y");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn query_follows_the_delay_and_forced_outcomes() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_millis(150),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.add_payment(order("333", "10"));
        let long = "x".repeat(80);
        let long_id = api::refund_request_id(&long);
        // Forced by our (long) reference before the refund exists, over HTTP.
        let (status, answer) = server
            .admin_post(
                &format!("/sandbox/binance_pay/refunds/{long}/outcome"),
                json!({"status": "FAILED"}),
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer["refundRequestId"], json!(long_id));
        assert_eq!(answer["refundKnown"], json!(false));
        let (_, created) = refund(&server, &body("333", &long_id, "10")).await;
        assert!(
            created["data"].get("refundStatus").is_none(),
            "the refund answer has none"
        );
        let (_, ok) = refund(&server, &body("333", "r-ok", "1")).await;
        assert_eq!(ok["code"], "400604", "a pending refund holds the balance");
        let (_, pending) = query(&server, &long_id).await;
        assert_eq!(pending["data"]["refundStatus"], "REFUND_PENDING");

        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, failed) = query(&server, &long_id).await;
        assert_eq!(failed["data"]["refundStatus"], "REFUND_FAIL");
        assert_eq!(
            failed["data"]["refundedAmount"], "0",
            "a failed refund frees its amount"
        );
        let (_, ok) = refund(&server, &body("333", "r-ok", "10")).await;
        assert_eq!(ok["code"], "000000");
        server.sandbox.set_outcome(
            Provider::BinancePay,
            "r-ok",
            ForcedOutcome {
                status: OutcomeStatus::Completed,
            },
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, done) = query(&server, "r-ok").await;
        assert_eq!(done["data"]["refundStatus"], "REFUND_SUCCESS");
        let (_, missing) = query(&server, "nope").await;
        assert_eq!(
            missing,
            json!({"status": "FAIL", "code": "400607", "data": null, "errorMessage": "Refund order not found."})
        );
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refund(&long_id).unwrap().status, "REFUND_FAIL");
        assert_eq!(ledger.refund("r-ok").unwrap().status, "REFUND_SUCCESS");
        assert!(ledger.refund("r-ok").unwrap().completed_at.is_some());
        assert_eq!(ledger.status_calls, 4);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn faults_apply_in_order() {
        let server = start(SandboxConfig {
            hang: Duration::from_secs(5),
            ..SandboxConfig::default()
        })
        .await;
        server.sandbox.inject(Faults {
            fail_next: 1,
            fail_status: Some(503),
            reject_next: 1,
            timeout_after_accept_next: 1,
            ..Faults::default()
        });
        let b = body("444", "r-1", "5");
        let (status, failed) = refund(&server, &b).await;
        assert_eq!((status, failed["code"].as_str()), (503, Some("503")));
        let (status, declined) = refund(&server, &b).await;
        assert_eq!((status, declined["code"].as_str()), (200, Some("400605")));
        assert!(server.sandbox.ledger().refunds.is_empty());
        // Recorded, then hangs past the client's patience.
        let ts = chrono::Utc::now().timestamp_millis().to_string();
        let nonce = api::nonce();
        let secret = SandboxConfig::default().binance_api_secret;
        let error = server
            .client
            .post(server.url(api::REFUND_PATH))
            .header(api::HEADER_TIMESTAMP, &ts)
            .header(api::HEADER_NONCE, &nonce)
            .header(
                api::HEADER_CERTIFICATE_SN,
                SandboxConfig::default().binance_api_key,
            )
            .header(
                api::HEADER_SIGNATURE,
                api::sign_request(secret.as_bytes(), &ts, &nonce, b.as_bytes()),
            )
            .body(b.clone())
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout());
        let (_, found) = query(&server, "r-1").await;
        assert_eq!(found["data"]["refundRequestId"], "r-1");
        let (_, replay) = refund(&server, &b).await;
        assert_eq!(replay["data"]["duplicateRequest"], "Y");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refunds[0].submit_count, 2);
        assert_eq!(
            (
                ledger.injected_failures,
                ledger.injected_rejects,
                ledger.injected_timeouts
            ),
            (1, 1, 1)
        );
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn invalid_bodies_are_invalid_requests() {
        let server = start(SandboxConfig::default()).await;
        for (b, message) in [
            ("{".to_owned(), "Malformed JSON"),
            (
                body("12345678901234567890", "r", "1"),
                "prepayId: maximum length 19.",
            ),
            (
                body("1", &"r".repeat(65), "1"),
                "refundRequestId: maximum length 64.",
            ),
            (body("1", "r", "0"), "refundAmount must be greater than 0."),
            (
                body("1", "r", r#""abc""#),
                "refundAmount must be a decimal.",
            ),
            (
                r#"{"prepayId":"1","refundRequestId":"r"}"#.to_owned(),
                "refundAmount is mandatory.",
            ),
        ] {
            let (status, answer) = refund(&server, &b).await;
            assert_eq!(status, 400, "{b}");
            assert_eq!(answer["code"], "400001");
            assert!(
                answer["errorMessage"]
                    .as_str()
                    .unwrap()
                    .starts_with(message),
                "{answer}"
            );
        }
        assert!(server.sandbox.ledger().refunds.is_empty());
        server.stop(Duration::from_secs(2)).await;
    }
}

/// The signing key and the notification bookkeeping, driven directly with chosen instants.
#[cfg(test)]
mod webhook_tests {
    use super::super::book::Stage;
    use super::super::test_support::refund_notices;
    use super::super::{OutcomeStatus, SandboxConfig, Simulated, BINANCE_WEBHOOK_TEST_PUBLIC_KEY};
    use super::{parse_signing_key, sign_webhook, word, BinanceState, RefundCall};
    use refund_worker::providers::binance_pay as api;
    use rust_decimal::Decimal;
    use serde_json::Value;
    use std::time::Duration;
    use tokio::time::Instant;

    const PRIVATE_KEY: &str = super::super::BINANCE_WEBHOOK_TEST_PRIVATE_KEY;

    // Computed in providers::binance_pay's tests with
    //   cd fixtures/binance_pay && printf '%s\n%s\n%s\n' 1700000000000 \
    //   5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA "$(cat webhook-pay-refund.json)" \
    //   | openssl dgst -sha256 -sign webhook-test-private-key.pem | base64 -w0
    const OPENSSL_REFUND_WEBHOOK_SIGNATURE: &str = "hDLKpPHdx7vqm6zzhMiR41GVB4tmlhc+bkCB3utQ4+fhM96EhfUODkJZncelv5fX4zQK7T26Mq3/MLefESKuUEVPH0ueuPa0kReONkBagfYSZxH5EyHaPXsrj+JGBS9PL3ISz68xzar4vL6572ZBmKkGBmsbxFCEULxmrUrOb0GccIPk/5yGcZQ5tl+135ohuDbN9QO8DznnLBbDtMtCFE++WUFCz7V2d6ehtzhEhl6xtDT/qGPuETVJrSftFeL4o9K3Si/SP1OTqZXBBqDe/fZTQ7qe7GsMxgf39MWFjLIgWwFRh7mocAH/mSbydu4kVh0GKxT0THSKIgMON9Kuzg==";

    /// The signature the sandbox made before it moved to ring, with the `rsa` crate.
    fn rsa_crate_signature(payload: &[u8]) -> String {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(PRIVATE_KEY).unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            signer.sign(payload).to_bytes(),
        )
    }

    #[test]
    fn ring_signs_the_same_bytes_as_the_rsa_crate_and_openssl() {
        let key = parse_signing_key(PRIVATE_KEY).unwrap();
        let public = api::parse_public_key(BINANCE_WEBHOOK_TEST_PUBLIC_KEY).unwrap();
        let fixture = include_str!("../../../fixtures/binance_pay/webhook-pay-refund.json");
        // `$(cat ...)` drops trailing newlines.
        let fixture = fixture.trim_end_matches('\n');
        let (ts, nonce) = ("1700000000000", "5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA");
        let payload = format!("{ts}\n{nonce}\n{fixture}\n");
        let ours = sign_webhook(&key, payload.as_bytes()).unwrap();
        assert_eq!(ours, OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        assert_eq!(ours, rsa_crate_signature(payload.as_bytes()));
        for body in [
            "",
            "{}",
            r#"{"bizType":"PAY_REFUND","bizStatus":"REFUND_SUCCESS"}"#,
        ] {
            let payload = format!("1\nabc\n{body}\n");
            let ours = sign_webhook(&key, payload.as_bytes()).unwrap();
            assert_eq!(ours, rsa_crate_signature(payload.as_bytes()), "{body}");
            assert!(api::verify_webhook_signature(
                &public,
                "1",
                "abc",
                body.as_bytes(),
                &ours
            ));
        }
        assert!(parse_signing_key(BINANCE_WEBHOOK_TEST_PUBLIC_KEY).is_err());
        assert!(parse_signing_key("not a key").is_err());
    }

    fn request(prepay_id: &str, id: &str) -> RefundCall {
        RefundCall {
            prepay_id: prepay_id.into(),
            refund_request_id: id.into(),
            amount: Decimal::ONE,
            amount_text: "1".into(),
            body: String::new(),
        }
    }

    /// What the notify loop used to compute: a walk over every refund.
    fn full_scan(state: &BinanceState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        state
            .book
            .iter()
            .filter_map(|r| {
                let stage = state.book.stage(r, config, now);
                (stage != Stage::Pending && state.book.notified(&r.key) != Some(stage))
                    .then(|| format!("{}:{}", r.key, word(stage)))
            })
            .collect()
    }

    /// Due notifications as `id:status`, checked against the full scan and the signature.
    fn due(state: &mut BinanceState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        let expected = full_scan(state, config, now);
        let signed = refund_notices(state, config, now);
        let public = api::parse_public_key(BINANCE_WEBHOOK_TEST_PUBLIC_KEY).unwrap();
        let got: Vec<String> = signed
            .iter()
            .map(|out| {
                let header = |name: &str| {
                    let (_, value) = out.headers.iter().find(|(n, _)| n == name).unwrap();
                    value.as_str()
                };
                assert!(api::verify_webhook_signature(
                    &public,
                    header("BinancePay-Timestamp"),
                    header("BinancePay-Nonce"),
                    &out.body,
                    header("BinancePay-Signature"),
                ));
                let body: Value = serde_json::from_slice(&out.body).unwrap();
                let data: Value = serde_json::from_str(body["data"].as_str().unwrap()).unwrap();
                format!(
                    "{}:{}",
                    data["refundInfo"]["refundRequestId"].as_str().unwrap(),
                    body["bizStatus"].as_str().unwrap()
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
        let mut state = BinanceState::default();
        state.set_outcome("r-2", OutcomeStatus::Failed);
        for (id, at) in [("r-1", t0), ("r-2", t0), ("r-3", t0 + ms(50))] {
            state.accept(request("p-1", id), &config, at).unwrap();
        }
        assert!(due(&mut state, &config, t0).is_empty());
        assert_eq!(
            due(&mut state, &config, t0 + ms(120)),
            ["r-1:REFUND_SUCCESS", "r-2:REFUND_FAIL"]
        );
        assert_eq!(state.book.unsettled_len(), 1, "r-3 is still pending");
        assert!(due(&mut state, &config, t0 + ms(130)).is_empty());
        assert_eq!(
            due(&mut state, &config, t0 + ms(200)),
            ["r-3:REFUND_SUCCESS"]
        );
        assert_eq!(state.book.unsettled_len(), 0);
        // A late reversal is notified; forcing what was notified sends nothing.
        state.set_outcome("r-1", OutcomeStatus::Failed);
        state.set_outcome("r-3", OutcomeStatus::Completed);
        state.set_outcome("r-9", OutcomeStatus::Failed);
        assert_eq!(due(&mut state, &config, t0 + ms(300)), ["r-1:REFUND_FAIL"]);
        assert_eq!(state.book.unsettled_len(), 0);
        assert!(due(&mut state, &config, t0 + ms(400)).is_empty());
    }
}
