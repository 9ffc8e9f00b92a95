//! Binance Pay refund adapter.
//!
//! - Refund: `POST /binancepay/openapi/order/refund` with `prepayId` (the command's
//!   `transactionReference`), `refundRequestId` (our idempotency key, see below),
//!   `refundAmount` (an exact JSON number, never through `f64`) and `refundReason` (cut to
//!   Binance's 256 characters).
//! - Status: `POST /binancepay/openapi/order/refund/query` with `refundRequestId`;
//!   `refundStatus` `REFUND_SUCCESS` completes, `REFUND_FAIL` fails ("the transaction cannot
//!   be refunded": `NOT_REFUNDABLE`), `REFUND_PENDING` and unknown words stay pending. The
//!   refund answer carries no `refundStatus` in the docs' example: a successful refund
//!   answer is "accepted" (provider status `ACCEPTED`) and the query decides.
//! - `refundRequestId`: Binance allows at most 64 characters. A `refundReference` of up to 64
//!   bytes is sent as is; a longer one is replaced by [`refund_request_id`]:
//!   `rw-sha256-` + the first 54 hex digits of SHA-256(refundReference) (64 characters,
//!   deterministic, so every retry names the same refund). The provider reference we record
//!   is the `refundRequestId` Binance knows, so webhooks find such refunds too.
//! - A repeated `refundRequestId` answers `duplicateRequest: "Y"` with the original refund:
//!   the same refund, interpreted like a first answer (never an error).
//! - Envelope `{"status": "SUCCESS"|"FAIL", "code", "data", "errorMessage"}`; anything but
//!   `SUCCESS`/`000000` is an error, classified by [`classify_error`] from Binance's code and,
//!   for codes we do not know, the words of its message. The refund page we have lists no
//!   codes. From Binance Pay's common result codes: `400000` UNKNOWN_ERROR ("try again
//!   later": retryable), `400001` INVALID_REQUEST, `400002` INVALID_SIGNATURE, `400004`
//!   INVALID_API_KEY_OR_IP, `400005` BAD_API_KEY_FMT (all `PROVIDER_REJECTED`), `400003`
//!   INVALID_TIMESTAMP (retryable: the request was refused unprocessed, a new timestamp may
//!   pass), `400202` ORDER_NOT_FOUND (`NOT_REFUNDABLE` on refund, not-found on query) and
//!   the FAQ's `100001001` "System abnormality" (retryable). **Open**, our assumption until
//!   checked against the live result-code table: `400604` REFUND_AMOUNT_EXCEEDED
//!   (`AMOUNT_EXCEEDS_REFUNDABLE`), `400605` ORDER_NOT_REFUNDABLE and `400606`
//!   REFUND_ATTEMPTS_EXHAUSTED (`NOT_REFUNDABLE`), `400607` REFUND_NOT_FOUND (query: not
//!   found), `400609` SYSTEM_BUSY (retryable). The sandbox answers with these.
//! - Only a refund's own status fails it from a query: a query refused for any other reason
//!   (signature, key, clock, a CloudFront 403 page) is retried, since the refund may exist.
//!   "No such refund" on a query comes from the code table only (`400202`, `400607`): an
//!   unknown code whose message reads "not found" is retried, not taken as absent.
//! - A body without Binance's envelope (no `status`, no `code`) is not Binance's answer: on a
//!   refund, 401/403 is retried as unprocessed (the refund ends `RETRIES_EXHAUSTED`), any
//!   other status after a query; a missing `PROVIDER_BINANCE_PAY_API_SECRET` is retried too
//!   (nothing was sent), never a made-up rejection.
//! - `remainingAttempts` (refunds left on the order): an order with 0 attempts left is final.
//!   Where it bites: Binance refuses a *new* refund on it (`400606`, or any error whose data
//!   shows `remainingAttempts: 0`) and we fail it `NOT_REFUNDABLE` at once, without retries;
//!   a `REFUND_FAIL` on such an order says so in its message. A replay of a refund that used
//!   the last attempt is still a duplicate, not a rejection. Binance's docs add that when 1
//!   attempt is left the next refund ignores its amount and refunds the whole remainder: we
//!   cannot see that before submitting (no order lookup is documented), so a refund answer
//!   whose `refundAmount` differs from ours is logged as a warning and recorded as is
//!   (**open**: the money moved, so it is not a failure).
//! - Auth: `BinancePay-Timestamp` (ms), `BinancePay-Nonce` (32 random letters/digits),
//!   `BinancePay-Certificate-SN` (the API key) and `BinancePay-Signature` = uppercase hex
//!   HMAC-SHA512 with the API secret over `timestamp\nnonce\nbody\n`, over the exact bytes
//!   sent.
//! - Webhooks: `{bizType, bizId, bizIdStr, bizStatus, data}` with `data` a JSON *string*.
//!   `PAY_REFUND` (`REFUND_SUCCESS` / `REFUND_REJECTED`) is a refund update: its
//!   `refundInfo.refundRequestId` is our reference (unless it is a derived `rw-sha256-` id,
//!   then only the provider reference) and `bizIdStr` the prepayId; `PAY` (`PAY_SUCCESS`,
//!   `PAY_CLOSED`) is a payment update; other types are ignored. Event id:
//!   `bizType:id:bizStatus` (Binance sends none; that triple is one event). Signature:
//!   base64 RSA-SHA256 (PKCS#1 v1.5) over `timestamp\nnonce\nbody\n` from headers
//!   `BinancePay-Timestamp`/`-Nonce`/`-Signature`, verified with the PEM public key in
//!   `PROVIDER_BINANCE_PAY_WEBHOOK_SECRET` (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`;
//!   `\n` escapes allowed), timestamp within `_WEBHOOK_TOLERANCE_SECS`. Ack:
//!   `{"returnCode":"SUCCESS","returnMessage":null}`.

use super::signing::{hmac_sha512_hex_upper, verify_hmac_sha512_hex};
use super::{
    classify_send_error, classify_status, http_client, Provider, ProviderWebhook, RefundRequest,
    WebhookError, WebhookKind,
};
use crate::config::ProviderSettings;
use crate::domain::money::json_number;
use crate::domain::{CallKind, FailureCode, FailureReason, ProviderName, ProviderOutcome};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::Rng;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPublicKey;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Refund endpoint.
pub const REFUND_PATH: &str = "/binancepay/openapi/order/refund";
/// Refund query endpoint.
pub const QUERY_PATH: &str = "/binancepay/openapi/order/refund/query";
/// Request and webhook timestamp header (ms since the epoch).
pub const HEADER_TIMESTAMP: &str = "BinancePay-Timestamp";
/// Request and webhook nonce header.
pub const HEADER_NONCE: &str = "BinancePay-Nonce";
/// API key header.
pub const HEADER_CERTIFICATE_SN: &str = "BinancePay-Certificate-SN";
/// Signature header (uppercase hex HMAC-SHA512 on requests, base64 RSA on webhooks).
pub const HEADER_SIGNATURE: &str = "BinancePay-Signature";
/// Binance's limit on `refundRequestId`.
pub const MAX_REFUND_REQUEST_ID_LEN: usize = 64;
/// Prefix of the `refundRequestId`s we derive from long references.
pub const DERIVED_ID_PREFIX: &str = "rw-sha256-";
/// Binance's limit on `refundReason`.
pub const MAX_REASON_CHARS: usize = 256;
/// Length of a request nonce.
pub const NONCE_LEN: usize = 32;
/// The success code.
pub const SUCCESS_CODE: &str = "000000";

/// The `refundRequestId` for our `refundReference`: itself when it fits Binance's 64
/// characters, else `rw-sha256-` + 54 hex digits of its SHA-256 (always 64 characters).
pub fn refund_request_id(refund_reference: &str) -> String {
    if refund_reference.len() <= MAX_REFUND_REQUEST_ID_LEN {
        return refund_reference.to_owned();
    }
    let digest = hex::encode(Sha256::digest(refund_reference.as_bytes()));
    let keep = MAX_REFUND_REQUEST_ID_LEN - DERIVED_ID_PREFIX.len();
    format!("{DERIVED_ID_PREFIX}{}", &digest[..keep])
}

/// Whether `id` is one of our derived ids (so not a `refundReference` itself).
pub fn is_derived_id(id: &str) -> bool {
    id.len() == MAX_REFUND_REQUEST_ID_LEN && id.starts_with(DERIVED_ID_PREFIX)
}

/// `BinancePay-Signature` of a request: uppercase hex HMAC-SHA512 over
/// `timestamp\nnonce\nbody\n`.
pub fn sign_request(secret: &[u8], timestamp: &str, nonce: &str, body: &[u8]) -> String {
    hmac_sha512_hex_upper(
        secret,
        &[
            timestamp.as_bytes(),
            b"\n",
            nonce.as_bytes(),
            b"\n",
            body,
            b"\n",
        ],
    )
}

/// Checks a request signature in constant time (the sandbox's side of [`sign_request`]).
pub fn verify_request(
    secret: &[u8],
    timestamp: &str,
    nonce: &str,
    body: &[u8],
    given: &str,
) -> bool {
    verify_hmac_sha512_hex(
        secret,
        &[
            timestamp.as_bytes(),
            b"\n",
            nonce.as_bytes(),
            b"\n",
            body,
            b"\n",
        ],
        given,
    )
}

/// 32 random letters and digits.
pub fn nonce() -> String {
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(NONCE_LEN)
        .map(char::from)
        .collect()
}

/// The refund body in the documented shape.
pub fn refund_body(refund: &RefundRequest) -> Value {
    json!({
        "prepayId": refund.transaction_reference,
        "refundRequestId": refund_request_id(&refund.refund_reference),
        "refundAmount": json_number(refund.amount),
        "refundReason": refund.reason.chars().take(MAX_REASON_CHARS).collect::<String>(),
    })
}

/// The refund query body.
pub fn query_body(refund: &RefundRequest) -> Value {
    json!({ "refundRequestId": refund_request_id(&refund.refund_reference) })
}

/// Binance's response envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// `SUCCESS` or `FAIL` (the FAQ shows `ERROR` for system errors).
    pub status: Option<String>,
    /// Result code, `000000` on success (a string; numbers are accepted too).
    pub code: Option<Value>,
    /// The payload.
    pub data: Option<Value>,
    /// Error description.
    pub error_message: Option<String>,
    /// Older error shape (`{"code":"400002","msg":"..."}` in Binance's FAQ).
    pub msg: Option<String>,
    /// System error shape (`errorData` in Binance's FAQ).
    pub error_data: Option<Value>,
}

impl Envelope {
    fn code(&self) -> String {
        match &self.code {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    fn message(&self) -> String {
        self.error_message
            .clone()
            .filter(|m| !m.is_empty())
            .or_else(|| self.msg.clone())
            .or_else(|| self.error_data.as_ref().map(value_text))
            .unwrap_or_else(|| "no message".into())
    }
}

/// A refund as Binance describes it (refund answer, query answer, webhook `refundInfo`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundResult {
    /// Our id of the refund.
    pub refund_request_id: Option<String>,
    /// The refunded order.
    pub prepay_id: Option<String>,
    /// The order's amount (a decimal string).
    pub order_amount: Option<Value>,
    /// Refunded so far on the order, this refund included.
    pub refunded_amount: Option<Value>,
    /// This refund's amount.
    pub refund_amount: Option<Value>,
    /// Refunds left on the order.
    pub remaining_attempts: Option<Value>,
    /// The payer.
    pub payer_open_id: Option<String>,
    /// `Y` when the `refundRequestId` was seen before.
    pub duplicate_request: Option<String>,
    /// `REFUND_SUCCESS`, `REFUND_FAIL`, `REFUND_PENDING` (query answers).
    pub refund_status: Option<String>,
}

impl RefundResult {
    /// `remainingAttempts`, as a number (Binance documents both int and string).
    pub fn remaining_attempts(&self) -> Option<u64> {
        match &self.remaining_attempts {
            Some(Value::Number(n)) => n.to_string().parse().ok(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// This refund's amount, exactly.
    pub fn refund_amount(&self) -> Option<Decimal> {
        self.refund_amount
            .as_ref()
            .and_then(|v| crate::domain::parse_amount(v).ok())
    }

    fn is_duplicate(&self) -> bool {
        self.duplicate_request
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case("Y"))
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How Binance's error codes are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Final, with this failure code.
    Final(FailureCode),
    /// Transient; `processed` says whether the request may have been applied.
    Retry {
        /// Whether the request may have been processed.
        processed: bool,
    },
    /// "No such order/refund": not-found on a query, `NOT_REFUNDABLE` on a refund.
    Missing,
    /// "No such refund": not-found on a query, a rejection on a refund.
    MissingRefund,
}

/// The error codes we know: (code, Binance's name, how we handle it). See the module
/// comment for which come from Binance's docs and which are our assumption.
pub const ERROR_CODES: &[(&str, &str, ErrorClass)] = &[
    (
        "400000",
        "UNKNOWN_ERROR",
        ErrorClass::Retry { processed: true },
    ),
    (
        "400001",
        "INVALID_REQUEST",
        ErrorClass::Final(FailureCode::ProviderRejected),
    ),
    (
        "400002",
        "INVALID_SIGNATURE",
        ErrorClass::Final(FailureCode::ProviderRejected),
    ),
    (
        "400003",
        "INVALID_TIMESTAMP",
        ErrorClass::Retry { processed: false },
    ),
    (
        "400004",
        "INVALID_API_KEY_OR_IP",
        ErrorClass::Final(FailureCode::ProviderRejected),
    ),
    (
        "400005",
        "BAD_API_KEY_FMT",
        ErrorClass::Final(FailureCode::ProviderRejected),
    ),
    ("400202", "ORDER_NOT_FOUND", ErrorClass::Missing),
    (
        "400604",
        "REFUND_AMOUNT_EXCEEDED",
        ErrorClass::Final(FailureCode::AmountExceedsRefundable),
    ),
    (
        "400605",
        "ORDER_NOT_REFUNDABLE",
        ErrorClass::Final(FailureCode::NotRefundable),
    ),
    (
        "400606",
        "REFUND_ATTEMPTS_EXHAUSTED",
        ErrorClass::Final(FailureCode::NotRefundable),
    ),
    ("400607", "REFUND_NOT_FOUND", ErrorClass::MissingRefund),
    (
        "400609",
        "SYSTEM_BUSY",
        ErrorClass::Retry { processed: true },
    ),
    (
        "100001001",
        "SYSTEM_ERROR",
        ErrorClass::Retry { processed: true },
    ),
];

/// Classifies an error code, falling back on the message's words for codes we do not know.
pub fn classify_error(code: &str, message: &str) -> (Option<&'static str>, ErrorClass) {
    if let Some((_, name, class)) = ERROR_CODES.iter().find(|(c, _, _)| *c == code) {
        return (Some(*name), *class);
    }
    let m = message.to_ascii_lowercase();
    let class = if m.contains("exceed") && (m.contains("amount") || m.contains("refund")) {
        ErrorClass::Final(FailureCode::AmountExceedsRefundable)
    } else if m.contains("busy") || m.contains("try again") || m.contains("too many") {
        ErrorClass::Retry { processed: true }
    } else if m.contains("not refundable")
        || m.contains("cannot be refunded")
        || m.contains("can not be refunded")
        || m.contains("attempt")
    {
        ErrorClass::Final(FailureCode::NotRefundable)
    } else if m.contains("refund") && (m.contains("not found") || m.contains("not exist")) {
        ErrorClass::MissingRefund
    } else if m.contains("not found") || m.contains("not exist") {
        ErrorClass::Missing
    } else {
        ErrorClass::Final(FailureCode::ProviderRejected)
    };
    (None, class)
}

/// Maps one Binance answer (HTTP status and body) to an outcome. `call` says whether it
/// answers a refund or a query; `requested` is the amount we asked for (refund calls).
pub fn interpret(
    status: reqwest::StatusCode,
    body: &[u8],
    call: CallKind,
    requested: Option<Decimal>,
) -> ProviderOutcome {
    // Binance's envelope carries `status` or `code`; any other body (HTML from a proxy,
    // `{}`) is not Binance's answer.
    let envelope = serde_json::from_slice::<Envelope>(body)
        .map_err(|e| e.to_string())
        .and_then(|e| match e.status.is_some() || e.code.is_some() {
            true => Ok(e),
            false => Err("no status or code".to_owned()),
        });
    let envelope: Envelope = match envelope {
        Ok(e) => e,
        // A 2xx we cannot read may still mean the refund was created.
        Err(e) if status.is_success() => {
            return ProviderOutcome::Unknown {
                reason: format!("unreadable Binance Pay response (HTTP {status}): {e}"),
            }
        }
        // A query that fails says nothing about the refund: never fail it from here.
        Err(_) if call == CallKind::Status => {
            return ProviderOutcome::Retryable {
                reason: format!("Binance Pay answered the query HTTP {status} without an envelope"),
                retry_after: None,
                may_have_reached_provider: false,
            }
        }
        // Refused before processing (credentials, a proxy's auth): Binance has nothing from
        // this call. Retried, so a submit ends RETRIES_EXHAUSTED rather than a made-up
        // rejection.
        Err(_) if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN => {
            return ProviderOutcome::Retryable {
                reason: format!("Binance Pay refused the refund with HTTP {status} and no envelope; check PROVIDER_BINANCE_PAY_API_KEY / PROVIDER_BINANCE_PAY_API_SECRET"),
                retry_after: None,
                may_have_reached_provider: false,
            }
        }
        // Not Binance's answer: it may or may not have reached Binance, so the pipeline
        // queries the refund before sending it again (same refundRequestId).
        Err(_) => {
            return ProviderOutcome::Retryable {
                reason: format!("Binance Pay answered the refund HTTP {status} without an envelope"),
                retry_after: None,
                may_have_reached_provider: true,
            }
        }
    };
    let code = envelope.code();
    let ok = envelope
        .status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("SUCCESS"));
    if ok && code == SUCCESS_CODE && status.is_success() {
        let refund: RefundResult = match envelope.data.map(serde_json::from_value).transpose() {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => {
                return ProviderOutcome::Unknown {
                    reason: "Binance Pay answered SUCCESS without a refund result".into(),
                }
            }
        };
        if call == CallKind::Submit {
            check_amount(&refund, requested);
        }
        return outcome_of(&refund);
    }
    error_outcome(status, &envelope, call)
}

/// Warns when Binance refunded another amount than we asked for (the last-attempt rule, or
/// a duplicate whose original differs).
fn check_amount(refund: &RefundResult, requested: Option<Decimal>) {
    if let (Some(asked), Some(got)) = (requested, refund.refund_amount()) {
        if asked != got {
            tracing::warn!(
                refund_request_id = refund.refund_request_id.as_deref().unwrap_or(""),
                requested = %asked,
                refunded = %got,
                duplicate = refund.is_duplicate(),
                remaining_attempts = refund.remaining_attempts(),
                "Binance Pay refunded another amount than requested"
            );
        }
    }
}

fn error_outcome(
    status: reqwest::StatusCode,
    envelope: &Envelope,
    call: CallKind,
) -> ProviderOutcome {
    let code = envelope.code();
    let message = envelope.message();
    let (name, mut class) = classify_error(&code, &message);
    // An order with no attempts left is final, whatever the code says.
    let exhausted = envelope
        .data
        .clone()
        .and_then(|d| serde_json::from_value::<RefundResult>(d).ok())
        .and_then(|r| r.remaining_attempts())
        == Some(0);
    if exhausted && call == CallKind::Submit {
        class = ErrorClass::Final(FailureCode::NotRefundable);
    }
    let described = format!(
        "{message} (code {code}{}, HTTP {})",
        name.map(|n| format!(" {n}")).unwrap_or_default(),
        status.as_u16()
    );
    match (class, call) {
        // Only a code from the table says "no such refund" (it leads to a resubmit); the same
        // words in an unknown code's message are not explicit enough.
        (ErrorClass::Missing | ErrorClass::MissingRefund, CallKind::Status) if name.is_some() => {
            ProviderOutcome::NotFound
        }
        (ErrorClass::Missing | ErrorClass::MissingRefund, CallKind::Status) => {
            ProviderOutcome::Retryable {
                reason: format!("Binance Pay refused the query: {described}"),
                retry_after: None,
                may_have_reached_provider: false,
            }
        }
        // Only the refund's own status may fail it: a query refused for our credentials or
        // request (a rotated key, a bad clock) keeps the refund as it was and asks again.
        (ErrorClass::Final(_), CallKind::Status) => ProviderOutcome::Retryable {
            reason: format!("Binance Pay refused the query: {described}"),
            retry_after: None,
            may_have_reached_provider: false,
        },
        (ErrorClass::Missing, CallKind::Submit) => ProviderOutcome::Failed(FailureReason::new(
            FailureCode::NotRefundable,
            format!("Binance Pay has no such order to refund: {described}"),
        )),
        (ErrorClass::Retry { processed }, _) => ProviderOutcome::Retryable {
            reason: format!("Binance Pay: {described}"),
            retry_after: None,
            may_have_reached_provider: processed,
        },
        (ErrorClass::Final(code), _) => {
            let suffix = if exhausted {
                "; the order has no refund attempts left"
            } else {
                ""
            };
            ProviderOutcome::Failed(FailureReason::new(
                code,
                format!("Binance Pay rejected the refund: {described}{suffix}"),
            ))
        }
        (ErrorClass::MissingRefund, CallKind::Submit) => {
            ProviderOutcome::Failed(FailureReason::new(
                FailureCode::ProviderRejected,
                format!("Binance Pay rejected the refund: {described}"),
            ))
        }
    }
}

/// Maps a refund's status word to an outcome (query answers, refund answers, webhooks).
pub fn outcome_of(refund: &RefundResult) -> ProviderOutcome {
    status_outcome(
        refund.refund_status.as_deref(),
        refund.refund_request_id.clone(),
        refund.remaining_attempts(),
    )
}

fn status_outcome(
    word: Option<&str>,
    provider_reference: Option<String>,
    remaining_attempts: Option<u64>,
) -> ProviderOutcome {
    let Some(word) = word.map(str::trim).filter(|w| !w.is_empty()) else {
        // The refund answer has no refundStatus: accepted, the query tells the rest.
        return ProviderOutcome::Accepted {
            provider_reference,
            provider_status: "ACCEPTED".into(),
            fee: None,
        };
    };
    let upper = word.to_ascii_uppercase();
    let no_attempts = if remaining_attempts == Some(0) {
        "; the order has no refund attempts left"
    } else {
        ""
    };
    match upper.as_str() {
        "REFUND_SUCCESS" => ProviderOutcome::Succeeded {
            provider_reference,
            provider_status: upper,
            fee: None,
        },
        "REFUND_FAIL" | "REFUND_FAILED" => ProviderOutcome::Failed(FailureReason::new(
            FailureCode::NotRefundable,
            format!("Binance Pay reports {upper}: the transaction cannot be refunded{no_attempts}"),
        )),
        "REFUND_REJECTED" => ProviderOutcome::Failed(FailureReason::new(
            FailureCode::ProviderRejected,
            format!("Binance Pay reports {upper}: the refund was rejected{no_attempts}"),
        )),
        _ => ProviderOutcome::Accepted {
            provider_reference,
            provider_status: upper,
            fee: None,
        },
    }
}

/// A Binance Pay webhook.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `PAY`, `PAY_REFUND`...
    pub biz_type: Option<String>,
    /// The prepayId (a number that may exceed 64 bits; kept as its text).
    pub biz_id: Option<Value>,
    /// `bizId` as a string.
    pub biz_id_str: Option<String>,
    /// `PAY_SUCCESS`, `PAY_CLOSED`, `REFUND_SUCCESS`, `REFUND_REJECTED`...
    pub biz_status: Option<String>,
    /// The details: a JSON string (an object is accepted too).
    pub data: Option<Value>,
}

/// A value that is JSON text in a string, or already an object.
fn nested(value: Option<&Value>, what: &str) -> Result<Option<Value>, WebhookError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| WebhookError::Malformed(format!("Binance Pay {what} is not JSON: {e}"))),
        Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
        Some(_) => Err(WebhookError::Malformed(format!(
            "Binance Pay {what} must be a JSON string"
        ))),
    }
}

/// Parses a Binance Pay webhook body.
pub fn parse_notification(body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError> {
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("Binance Pay notification: {e}")))?;
    let biz_type = n
        .biz_type
        .clone()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            WebhookError::Malformed("Binance Pay notification without bizType".into())
        })?;
    let biz_status = n.biz_status.clone().unwrap_or_default();
    let biz_id = n
        .biz_id_str
        .clone()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| n.biz_id.as_ref().map(value_text))
        .filter(|s| !s.trim().is_empty());
    let data = nested(n.data.as_ref(), "data")?.unwrap_or(Value::Null);
    match biz_type.as_str() {
        "PAY_REFUND" => {
            let info: RefundResult = match nested(data.get("refundInfo"), "refundInfo")? {
                Some(v) => serde_json::from_value(v)
                    .map_err(|e| WebhookError::Malformed(format!("Binance Pay refundInfo: {e}")))?,
                None => RefundResult::default(),
            };
            let request_id = info
                .refund_request_id
                .clone()
                .filter(|s| !s.trim().is_empty());
            let transaction_reference = biz_id.clone().or_else(|| info.prepay_id.clone());
            if request_id.is_none() && transaction_reference.is_none() {
                return Err(WebhookError::Malformed(
                    "Binance Pay refund notification names neither refundRequestId nor bizId"
                        .into(),
                ));
            }
            let outcome = status_outcome(
                Some(biz_status.as_str()),
                request_id.clone(),
                info.remaining_attempts(),
            );
            let key = request_id
                .clone()
                .or_else(|| transaction_reference.clone())
                .unwrap_or_default();
            Ok(vec![ProviderWebhook {
                event_id: Some(format!("{biz_type}:{key}:{biz_status}")),
                kind: WebhookKind::Refund {
                    refund_reference: request_id.clone().filter(|id| !is_derived_id(id)),
                    provider_reference: request_id,
                    transaction_reference,
                    outcome,
                },
            }])
        }
        "PAY" => {
            let transaction_reference = biz_id.ok_or_else(|| {
                WebhookError::Malformed("Binance Pay payment notification without bizId".into())
            })?;
            let amount =
                match data.get("totalFee") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(crate::domain::parse_amount(v).map_err(|e| {
                        WebhookError::Malformed(format!("Binance Pay totalFee: {e}"))
                    })?),
                };
            let currency = data
                .get("currency")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(vec![ProviderWebhook {
                event_id: Some(format!("{biz_type}:{transaction_reference}:{biz_status}")),
                kind: WebhookKind::Payment {
                    transaction_reference,
                    amount,
                    currency,
                    succeeded: biz_status.eq_ignore_ascii_case("PAY_SUCCESS"),
                    status: biz_status,
                },
            }])
        }
        other => Ok(vec![ProviderWebhook {
            event_id: biz_id.map(|id| format!("{other}:{id}:{biz_status}")),
            kind: WebhookKind::Ignored {
                kind: other.to_owned(),
            },
        }]),
    }
}

/// Reads an RSA public key from PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`); `\n`
/// escapes (from a one-line environment variable) are turned into newlines.
pub fn parse_public_key(pem: &str) -> Result<RsaPublicKey, String> {
    let pem = pem.trim().replace("\\n", "\n");
    RsaPublicKey::from_public_key_pem(&pem)
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(&pem))
        .map_err(|e| format!("not a PEM RSA public key: {e}"))
}

/// Checks a webhook's RSA-SHA256 signature over `timestamp\nnonce\nbody\n`.
pub fn verify_webhook_signature(
    key: &RsaPublicKey,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
    signature_b64: &str,
) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let mut payload = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    for part in [
        timestamp.as_bytes(),
        b"\n",
        nonce.as_bytes(),
        b"\n",
        body,
        b"\n",
    ] {
        payload.extend_from_slice(part);
    }
    // ring's RSA (assembly, no key copy) rather than the `rsa` crate's, which cost about
    // 6% of the worker's CPU in the benchmark. Binance Pay keys are 2048 bits or more.
    let key = ring::signature::RsaPublicKeyComponents {
        n: key.n().to_bytes_be(),
        e: key.e().to_bytes_be(),
    };
    key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &payload, &raw)
        .is_ok()
}

/// Most webhook nonces remembered per process. At the default 300 s tolerance this is
/// over 600 webhooks a second for the whole window; beyond it the oldest are forgotten
/// early (their replays are still caught by the inbox's deduplication).
const MAX_REMEMBERED_NONCES: usize = 200_000;

/// Nonces of webhooks taken, each kept until its signed timestamp leaves the tolerance
/// window (after that the timestamp check refuses a replay anyway), so memory is bounded by
/// the webhook rate times the window, and by [`MAX_REMEMBERED_NONCES`].
///
/// Per process: another pod does not know them. A replay sent to another pod is queued
/// and then recognised by the inbox's deduplication (on the notification's `bizIdStr` and
/// status), so it is never applied twice; this set only keeps replays off the queue.
#[derive(Default)]
struct NonceWindow {
    inner: std::sync::Mutex<NonceWindowInner>,
}

#[derive(Default)]
struct NonceWindowInner {
    /// nonce -> when it may be forgotten (ms since the epoch).
    expiry: std::collections::HashMap<String, i64>,
    /// (expiry, nonce), oldest first, to forget without scanning.
    order: std::collections::BTreeSet<(i64, String)>,
}

impl NonceWindow {
    fn seen(&self, nonce: &str, now_ms: i64) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        inner
            .expiry
            .get(nonce)
            .is_some_and(|&until| until >= now_ms)
    }

    fn remember(&self, nonce: &str, until_ms: i64, now_ms: i64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        while let Some(first) = inner.order.first().cloned() {
            if first.0 >= now_ms && inner.order.len() < MAX_REMEMBERED_NONCES {
                break;
            }
            inner.order.remove(&first);
            inner.expiry.remove(&first.1);
        }
        if let Some(old) = inner.expiry.insert(nonce.to_owned(), until_ms) {
            inner.order.remove(&(old, nonce.to_owned()));
        }
        inner.order.insert((until_ms, nonce.to_owned()));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.expiry.len()).unwrap_or(0)
    }
}

/// The Binance Pay adapter.
pub struct BinancePay {
    settings: ProviderSettings,
    client: reqwest::Client,
    /// The webhook public key, parsed once (`None`: not configured).
    webhook_key: Option<Result<RsaPublicKey, String>>,
    /// Nonces of the webhooks taken within the tolerance window (replays are refused).
    nonces: NonceWindow,
}

impl BinancePay {
    /// Creates the adapter.
    pub fn new(settings: ProviderSettings) -> Result<Self, crate::config::ConfigError> {
        let client = http_client(&settings)?;
        let webhook_key = settings
            .webhook_secret
            .as_ref()
            .map(|pem| parse_public_key(pem.expose_secret()));
        // A key that cannot work stops the start (the providers are built there), naming
        // the variable, never the value: logged and ignored, it would refuse every webhook
        // while the worker looked healthy.
        if let Some(Err(e)) = &webhook_key {
            return Err(crate::config::ConfigError(format!(
                "PROVIDER_BINANCE_PAY_WEBHOOK_SECRET must be Binance Pay's webhook public key \
                 in PEM (-----BEGIN PUBLIC KEY-----, newlines or \\n escapes): {e}"
            )));
        }
        Ok(Self {
            settings,
            client,
            webhook_key,
            nonces: NonceWindow::default(),
        })
    }

    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.settings.base_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(path.split('/').filter(|s| !s.is_empty()));
        }
        url
    }

    /// Signs and sends `body` (the exact bytes signed are the bytes sent).
    async fn call(
        &self,
        path: &str,
        body: &Value,
        call: CallKind,
        requested: Option<Decimal>,
    ) -> ProviderOutcome {
        let Some(secret) = self.settings.api_secret.as_ref() else {
            // Nothing was sent: a query must not fail a refund Binance may have, and a
            // refund ends RETRIES_EXHAUSTED with this reason (Binance certainly has nothing).
            return ProviderOutcome::Retryable {
                reason: "PROVIDER_BINANCE_PAY_API_SECRET is not configured".into(),
                retry_after: None,
                may_have_reached_provider: false,
            };
        };
        let bytes = body.to_string().into_bytes();
        let timestamp = Utc::now().timestamp_millis().to_string();
        let nonce = nonce();
        let signature = sign_request(
            secret.expose_secret().as_bytes(),
            &timestamp,
            &nonce,
            &bytes,
        );
        let request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_TIMESTAMP, &timestamp)
            .header(HEADER_NONCE, &nonce)
            .header(HEADER_CERTIFICATE_SN, self.settings.api_key.expose_secret())
            .header(HEADER_SIGNATURE, signature)
            .body(bytes);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return classify_send_error(&e),
        };
        let status = response.status();
        if let Some(outcome) = classify_status(status, response.headers()) {
            return outcome;
        }
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return classify_send_error(&e),
        };
        interpret(status, &bytes, call, requested)
    }
}

#[async_trait]
impl Provider for BinancePay {
    fn name(&self) -> ProviderName {
        ProviderName::BinancePay
    }

    async fn submit(&self, refund: &RefundRequest) -> ProviderOutcome {
        let body = refund_body(refund);
        self.call(REFUND_PATH, &body, CallKind::Submit, Some(refund.amount))
            .await
    }

    async fn status(&self, refund: &RefundRequest) -> ProviderOutcome {
        self.call(QUERY_PATH, &query_body(refund), CallKind::Status, None)
            .await
    }

    fn verify_webhook(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), WebhookError> {
        let key = match &self.webhook_key {
            None => return Err(WebhookError::NotConfigured(ProviderName::BinancePay)),
            Some(Err(e)) => {
                return Err(WebhookError::BadSignature(format!(
                    "the configured Binance Pay public key is unusable: {e}"
                )))
            }
            Some(Ok(key)) => key,
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| WebhookError::BadSignature(format!("missing {name} header")))
        };
        let timestamp = header(HEADER_TIMESTAMP)?;
        let nonce = header(HEADER_NONCE)?;
        let signature = header(HEADER_SIGNATURE)?;
        let sent_ms: i64 = timestamp.parse().map_err(|_| {
            WebhookError::BadSignature(format!("{HEADER_TIMESTAMP} is not a number"))
        })?;
        let skew_ms = now.timestamp_millis().abs_diff(sent_ms);
        let tolerance_ms =
            u64::try_from(self.settings.webhook_tolerance.as_millis()).unwrap_or(u64::MAX);
        if skew_ms > tolerance_ms {
            return Err(WebhookError::StaleTimestamp(format!(
                "{HEADER_TIMESTAMP} is {skew_ms} ms from our clock (tolerance {tolerance_ms} ms)"
            )));
        }
        if !verify_webhook_signature(key, timestamp, nonce, body, signature) {
            return Err(WebhookError::BadSignature(format!(
                "{HEADER_SIGNATURE} does not match the body"
            )));
        }
        // Checked after the signature, so only Binance's own nonces are looked up.
        if self.nonces.seen(nonce, now.timestamp_millis()) {
            return Err(WebhookError::Replayed(format!(
                "{HEADER_NONCE} was already taken within the tolerance window"
            )));
        }
        Ok(())
    }

    fn webhook_queued(&self, headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) {
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let (Some(nonce), Some(Ok(sent_ms))) = (
            value(HEADER_NONCE),
            value(HEADER_TIMESTAMP).map(str::parse::<i64>),
        ) else {
            return;
        };
        let tolerance_ms =
            i64::try_from(self.settings.webhook_tolerance.as_millis()).unwrap_or(i64::MAX);
        // Past this its timestamp is stale: the nonce need not be remembered any longer.
        let until_ms = sent_ms.saturating_add(tolerance_ms);
        self.nonces
            .remember(nonce, until_ms, now.timestamp_millis());
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<ProviderWebhook>, WebhookError> {
        parse_notification(body)
    }

    fn webhook_ack(&self) -> Value {
        json!({ "returnCode": "SUCCESS", "returnMessage": null })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    /// The docs' examples, verbatim (shared/providers/binance-pay-refund-order.txt).
    const DOC_REFUND_REQUEST: &str = include_str!("../../fixtures/binance_pay/refund-request.json");
    const DOC_REFUND_RESPONSE: &str =
        include_str!("../../fixtures/binance_pay/refund-response.json");
    const DOC_QUERY_REQUEST: &str =
        include_str!("../../fixtures/binance_pay/refund-query-request.json");
    const DOC_QUERY_RESPONSE: &str =
        include_str!("../../fixtures/binance_pay/refund-query-response.json");
    /// Webhooks in the documented shape (the docs carry no full example), and the TEST-ONLY
    /// public key whose private half signed them.
    const WEBHOOK_REFUND: &str = include_str!("../../fixtures/binance_pay/webhook-pay-refund.json");
    const WEBHOOK_PAY: &str = include_str!("../../fixtures/binance_pay/webhook-pay.json");
    const TEST_PUBLIC_KEY: &str =
        include_str!("../../fixtures/binance_pay/webhook-test-public-key.pem");

    const TS: &str = "1700000000000";
    const NONCE: &str = "5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA";

    // cd fixtures/binance_pay && printf '%s\n%s\n%s\n' 1700000000000 \
    //   5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA "$(cat refund-request.json)" \
    //   | openssl dgst -sha512 -hmac sandbox-binance-secret | awk '{print toupper($2)}'
    const OPENSSL_REQUEST_SIGNATURE: &str = "50C270BFDE98D1440AB628091DBD39818079FA1B4B5775D22E289CB1E2B965DAA769325548124A71D06A89A144FAA0535A06E8F0EF8890E135D1879DC81E455D";

    // cd fixtures/binance_pay && printf '%s\n%s\n%s\n' 1700000000000 \
    //   5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA "$(cat webhook-pay-refund.json)" \
    //   | openssl dgst -sha256 -sign webhook-test-private-key.pem | base64 -w0
    const OPENSSL_REFUND_WEBHOOK_SIGNATURE: &str = "hDLKpPHdx7vqm6zzhMiR41GVB4tmlhc+bkCB3utQ4+fhM96EhfUODkJZncelv5fX4zQK7T26Mq3/MLefESKuUEVPH0ueuPa0kReONkBagfYSZxH5EyHaPXsrj+JGBS9PL3ISz68xzar4vL6572ZBmKkGBmsbxFCEULxmrUrOb0GccIPk/5yGcZQ5tl+135ohuDbN9QO8DznnLBbDtMtCFE++WUFCz7V2d6ehtzhEhl6xtDT/qGPuETVJrSftFeL4o9K3Si/SP1OTqZXBBqDe/fZTQ7qe7GsMxgf39MWFjLIgWwFRh7mocAH/mSbydu4kVh0GKxT0THSKIgMON9Kuzg==";
    // The same command with webhook-pay.json.
    const OPENSSL_PAY_WEBHOOK_SIGNATURE: &str = "LAd+K6Zx0zZddNy05dklpUvRS8OtOAQJZeSZZzcJ55IgpZJJtvk19R5OgZ7rfkp8ymsBZrSgR8jrKWhRFzl+XcUu7qNZVUW5KgQicvtoIPcygfPl+uslwInI+MsYwbxA0TM4UVt89+5SJN7t1GUuQVgp0oLtNVLGHC4Qh+Sf7tRUOHe7rvyWJZPDI6lfDqXKprhR9ifqsYDDfU2GoFNDRmvdjesl91uEyopovOiVj5QK/rlLxHYmlrpucYLMOp558j+Wsju6/M4owMrXLn1DMslDv4AhNE5rmkrn+yrGLMBAR8tRMxxyOw87omNGpS7GXPGDAPHAHk2DwtOXKn6FzQ==";

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    /// The docs' response examples end `"duplicateRequest": "N",      },`: a trailing comma
    /// no JSON parser takes. This removes exactly that comma (and proves it was there).
    fn without_doc_typo(doc: &str) -> String {
        let typo = r#""duplicateRequest": "N",      }"#;
        assert!(doc.contains(typo), "the docs' typo moved: {doc}");
        doc.replace(typo, r#""duplicateRequest": "N"      }"#)
    }

    fn request(reference: &str, amount: &str) -> RefundRequest {
        RefundRequest {
            refund_reference: reference.into(),
            transaction_reference: "383729303729303".into(),
            amount: dec(amount),
            currency: "USDT".into(),
            reason: String::new(),
            customer_note: None,
            destination: None,
            provider_reference: None,
            metadata: None,
        }
    }

    #[test]
    fn request_signature_matches_openssl() {
        let sig = sign_request(
            b"sandbox-binance-secret",
            TS,
            NONCE,
            DOC_REFUND_REQUEST.as_bytes(),
        );
        assert_eq!(sig, OPENSSL_REQUEST_SIGNATURE);
        assert!(verify_request(
            b"sandbox-binance-secret",
            TS,
            NONCE,
            DOC_REFUND_REQUEST.as_bytes(),
            &sig
        ));
        // Every signed part counts, the final newline included.
        assert!(!verify_request(
            b"sandbox-binance-secret",
            TS,
            NONCE,
            b"{}",
            &sig
        ));
        assert!(!verify_request(
            b"other",
            TS,
            NONCE,
            DOC_REFUND_REQUEST.as_bytes(),
            &sig
        ));
        assert_ne!(
            hmac_sha512_hex_upper(
                b"sandbox-binance-secret",
                &[
                    TS.as_bytes(),
                    b"\n",
                    NONCE.as_bytes(),
                    b"\n",
                    DOC_REFUND_REQUEST.as_bytes()
                ]
            ),
            sig
        );
    }

    #[test]
    fn nonces_are_32_random_alphanumerics() {
        let a = nonce();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, nonce());
    }

    #[test]
    fn refund_body_matches_the_documented_request() {
        let mut r = request("68711039982968832", "25.17");
        r.reason = String::new();
        let ours = refund_body(&r);
        let doc: Value = serde_json::from_str(DOC_REFUND_REQUEST).unwrap();
        assert_eq!(ours, doc);
        // Exact digits on the wire, never through f64.
        assert!(
            ours.to_string().contains(r#""refundAmount":25.17"#),
            "{ours}"
        );
        r.amount = dec("0.10000001");
        assert!(refund_body(&r)
            .to_string()
            .contains(r#""refundAmount":0.10000001"#));
        let q: Value = serde_json::from_str(DOC_QUERY_REQUEST).unwrap();
        assert_eq!(query_body(&request("68711039982968832", "1")), q);
        // Binance's 256-character reason limit.
        r.reason = "x".repeat(300);
        assert_eq!(refund_body(&r)["refundReason"].as_str().unwrap().len(), 256);
    }

    #[test]
    fn long_references_get_a_deterministic_64_character_id() {
        assert_eq!(refund_request_id("r-1"), "r-1");
        let exactly = "a".repeat(64);
        assert_eq!(refund_request_id(&exactly), exactly);
        let long = "r".repeat(100);
        // python3 -c "import hashlib;print('rw-sha256-'+hashlib.sha256(b'r'*100).hexdigest()[:54])"
        assert_eq!(
            refund_request_id(&long),
            "rw-sha256-f1f2954356bea23d292c50dbc9b5302693601a75a8b92f8921d556"
        );
        assert_eq!(refund_request_id(&long).len(), 64);
        assert_eq!(refund_request_id(&long), refund_request_id(&long));
        assert_ne!(
            refund_request_id(&long),
            refund_request_id(&"r".repeat(101))
        );
        assert!(is_derived_id(&refund_request_id(&long)));
        assert!(!is_derived_id("r-1"));
        assert_eq!(
            refund_body(&request(&long, "1"))["refundRequestId"],
            json!(refund_request_id(&long))
        );
    }

    #[test]
    fn documented_examples_parse_once_their_typo_is_removed() {
        // Verbatim, the examples are not JSON: an unreadable 2xx is an unknown outcome.
        assert!(matches!(
            interpret(
                StatusCode::OK,
                DOC_REFUND_RESPONSE.as_bytes(),
                CallKind::Submit,
                None
            ),
            ProviderOutcome::Unknown { .. }
        ));
        let refund = without_doc_typo(DOC_REFUND_RESPONSE);
        assert_eq!(
            interpret(
                StatusCode::OK,
                refund.as_bytes(),
                CallKind::Submit,
                Some(dec("25.17"))
            ),
            ProviderOutcome::Accepted {
                provider_reference: Some("68711039982968832".into()),
                provider_status: "ACCEPTED".into(),
                fee: None,
            }
        );
        let envelope: Envelope = serde_json::from_str(&refund).unwrap();
        let data: RefundResult = serde_json::from_value(envelope.data.unwrap()).unwrap();
        assert_eq!(data.refund_amount(), Some(dec("25.17")));
        assert_eq!(data.remaining_attempts(), Some(8));
        assert!(!data.is_duplicate());
        // The query example has no refundStatus either: still pending.
        let query = without_doc_typo(DOC_QUERY_RESPONSE);
        assert!(matches!(
            interpret(StatusCode::OK, query.as_bytes(), CallKind::Status, None),
            ProviderOutcome::Accepted { .. }
        ));
    }

    #[test]
    fn refund_statuses_map() {
        let query = without_doc_typo(DOC_QUERY_RESPONSE);
        let with = |word: &str| {
            query.replace(
                r#""duplicateRequest": "N""#,
                &format!(r#""duplicateRequest": "N", "refundStatus": "{word}""#),
            )
        };
        assert_eq!(
            interpret(
                StatusCode::OK,
                with("REFUND_SUCCESS").as_bytes(),
                CallKind::Status,
                None
            ),
            ProviderOutcome::Succeeded {
                provider_reference: Some("68711039982968832".into()),
                provider_status: "REFUND_SUCCESS".into(),
                fee: None,
            }
        );
        assert!(matches!(
            interpret(StatusCode::OK, with("REFUND_PENDING").as_bytes(), CallKind::Status, None),
            ProviderOutcome::Accepted { provider_status, .. } if provider_status == "REFUND_PENDING"
        ));
        match interpret(
            StatusCode::OK,
            with("REFUND_FAIL").as_bytes(),
            CallKind::Status,
            None,
        ) {
            ProviderOutcome::Failed(r) => {
                assert_eq!(r.code, FailureCode::NotRefundable);
                assert!(r.message.contains("REFUND_FAIL"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // A failure on an order without attempts left says so.
        let last =
            with("REFUND_FAIL").replace(r#""remainingAttempts": 8"#, r#""remainingAttempts": 0"#);
        assert!(matches!(
            interpret(StatusCode::OK, last.as_bytes(), CallKind::Status, None),
            ProviderOutcome::Failed(r) if r.message.contains("no refund attempts left")
        ));
    }

    #[test]
    fn a_duplicate_request_is_the_same_refund() {
        let dup = without_doc_typo(DOC_REFUND_RESPONSE)
            .replace(r#""duplicateRequest": "N""#, r#""duplicateRequest": "Y""#);
        assert_eq!(
            interpret(
                StatusCode::OK,
                dup.as_bytes(),
                CallKind::Submit,
                Some(dec("25.17"))
            ),
            ProviderOutcome::Accepted {
                provider_reference: Some("68711039982968832".into()),
                provider_status: "ACCEPTED".into(),
                fee: None,
            }
        );
    }

    /// The classification table: every documented answer and every assumed one, as
    /// (call, HTTP status, body, expected outcome class). 429 and 5xx are classified before
    /// (`classify_status`).
    fn classification() -> Vec<(CallKind, u16, String, &'static str)> {
        use CallKind::{Status, Submit};
        let refund = without_doc_typo(DOC_REFUND_RESPONSE);
        let query = without_doc_typo(DOC_QUERY_RESPONSE);
        let word = |w: &str| {
            json!({"status": "SUCCESS", "code": "000000", "data": {"refundRequestId": "r-1", "refundStatus": w}, "errorMessage": ""}).to_string()
        };
        let mut rows = vec![
            // Documented examples (once their trailing comma is removed); verbatim, unreadable.
            (Submit, 200, refund.clone(), "accepted"),
            (Status, 200, query.clone(), "accepted"),
            (Submit, 200, DOC_REFUND_RESPONSE.to_owned(), "unknown"),
            (Status, 200, DOC_QUERY_RESPONSE.to_owned(), "unknown"),
            // Documented refundStatus words; unknown words stay pending.
            (Status, 200, word("REFUND_SUCCESS"), "succeeded"),
            (Status, 200, word("REFUND_PENDING"), "accepted"),
            (Status, 200, word("REFUND_FAIL"), "failed"),
            (Status, 200, word("SOMETHING_NEW"), "accepted"),
            // "No such refund/order" from the table: not found on a query.
            (
                Status,
                200,
                fail("400607", "Refund order not found."),
                "not_found",
            ),
            (Status, 200, fail("400202", "Order not found."), "not_found"),
            (Submit, 200, fail("400202", "Order not found."), "failed"),
            // Words alone (an unknown code) are not explicit enough on a query.
            (Status, 200, fail("499999", "refund not exist"), "retryable"),
            // Busy and system errors: retried.
            (Submit, 200, fail("400609", "System busy"), "retryable"),
            (Status, 200, fail("400000", "unknown error"), "retryable"),
            // Non-envelope answers: a query is retried; a refund too (401/403: not processed).
            (Status, 401, String::new(), "retryable"),
            (Status, 403, "<html>".into(), "retryable"),
            (Status, 404, "<html>".into(), "retryable"),
            (Status, 400, "{}".into(), "retryable"),
            (Submit, 401, String::new(), "retryable"),
            (Submit, 403, "<html>".into(), "retryable"),
            (Submit, 404, "<html>".into(), "retryable"),
            (Submit, 200, "<html>".into(), "unknown"),
            (Status, 200, "<html>".into(), "unknown"),
            (
                Submit,
                200,
                json!({"status": "SUCCESS", "code": "000000"}).to_string(),
                "unknown",
            ),
        ];
        // Every documented final code is final on a refund and retried on a query.
        for (code, _, class) in ERROR_CODES {
            if let ErrorClass::Final(_) = class {
                rows.push((Submit, 400, fail(code, "refused"), "failed"));
                rows.push((Status, 400, fail(code, "refused"), "retryable"));
                rows.push((Status, 401, fail(code, "refused"), "retryable"));
            }
        }
        rows
    }

    #[test]
    fn classification_table() {
        for (call, status, body, expected) in classification() {
            let http = StatusCode::from_u16(status).unwrap();
            let outcome = interpret(http, body.as_bytes(), call, None);
            assert_eq!(
                outcome.describe().0,
                expected,
                "{call:?} HTTP {status} {body}: {outcome:?}"
            );
        }
    }

    fn fail(code: &str, message: &str) -> String {
        json!({"status": "FAIL", "code": code, "data": null, "errorMessage": message}).to_string()
    }

    #[test]
    fn documented_errors_map_to_failure_codes() {
        let submit =
            |body: String| interpret(StatusCode::OK, body.as_bytes(), CallKind::Submit, None);
        let failed = |o: ProviderOutcome| match o {
            ProviderOutcome::Failed(r) => r,
            other => panic!("{other:?}"),
        };
        let r = failed(submit(fail(
            "400604",
            "The refund amount exceeds the refundable amount",
        )));
        assert_eq!(r.code, FailureCode::AmountExceedsRefundable);
        assert!(
            r.message.contains("code 400604 REFUND_AMOUNT_EXCEEDED"),
            "{}",
            r.message
        );
        assert!(r.message.contains("The refund amount exceeds"));
        assert_eq!(
            failed(submit(fail(
                "400605",
                "Order status does not support refund"
            )))
            .code,
            FailureCode::NotRefundable
        );
        assert_eq!(
            failed(submit(fail("400606", "No refund attempts left"))).code,
            FailureCode::NotRefundable
        );
        assert_eq!(
            failed(submit(fail("400202", "Order not found."))).code,
            FailureCode::NotRefundable
        );
        for code in ["400001", "400002", "400004", "400005"] {
            let r = failed(interpret(
                StatusCode::BAD_REQUEST,
                fail(code, "Signature for this request is not valid.").as_bytes(),
                CallKind::Submit,
                None,
            ));
            assert_eq!(r.code, FailureCode::ProviderRejected, "{code}");
            assert!(r.message.contains("HTTP 400"), "{}", r.message);
        }
        // The FAQ's older shape, {"code","msg"}, keeps its message.
        let r = failed(submit(
            r#"{"code":"400002","msg":"Signature for this request is not valid."}"#.into(),
        ));
        assert!(r
            .message
            .contains("Signature for this request is not valid."));
        // Unknown codes fall back on the message's words.
        assert_eq!(
            failed(submit(fail("499999", "Refund amount exceeds order amount"))).code,
            FailureCode::AmountExceedsRefundable
        );
        assert_eq!(
            failed(submit(fail("499999", "This order cannot be refunded"))).code,
            FailureCode::NotRefundable
        );
        assert_eq!(
            failed(submit(fail("499999", "Something odd"))).code,
            FailureCode::ProviderRejected
        );
        // Data showing no attempts left makes any rejection final NOT_REFUNDABLE.
        let exhausted = json!({"status": "FAIL", "code": "499999", "data": {"remainingAttempts": 0}, "errorMessage": "odd"});
        assert!(matches!(
            submit(exhausted.to_string()),
            ProviderOutcome::Failed(r) if r.code == FailureCode::NotRefundable && r.message.contains("no refund attempts left")
        ));
    }

    #[test]
    fn busy_and_unknown_errors_are_retried() {
        for (code, message, processed) in [
            (
                "400000",
                "An unknown error occurred while processing the request.",
                true,
            ),
            ("400609", "System busy", true),
            ("499999", "System is busy, please try again later", true),
            (
                "400003",
                "Timestamp for this request is outside of the time window.",
                false,
            ),
        ] {
            match interpret(
                StatusCode::OK,
                fail(code, message).as_bytes(),
                CallKind::Submit,
                None,
            ) {
                ProviderOutcome::Retryable {
                    may_have_reached_provider,
                    reason,
                    ..
                } => {
                    assert_eq!(may_have_reached_provider, processed, "{code}");
                    assert!(reason.contains(message), "{reason}");
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let system = r#"{"status":"ERROR","type":"SYS","code":"100001001","errorData":"System abnormality"}"#;
        assert!(matches!(
            interpret(StatusCode::OK, system.as_bytes(), CallKind::Submit, None),
            ProviderOutcome::Retryable { reason, .. } if reason.contains("System abnormality")
        ));
    }

    #[test]
    fn refund_not_found_on_query_is_not_found() {
        for code in ["400607", "400202"] {
            assert_eq!(
                interpret(
                    StatusCode::OK,
                    fail(code, "Refund order not found.").as_bytes(),
                    CallKind::Status,
                    None
                ),
                ProviderOutcome::NotFound
            );
        }
        // An unknown code whose words say "no such refund" is not explicit enough to lead to
        // a resubmit: asked again.
        assert!(matches!(
            interpret(
                StatusCode::OK,
                fail("499999", "refund not exist").as_bytes(),
                CallKind::Status,
                None
            ),
            ProviderOutcome::Retryable { .. }
        ));
        // On a refund call, "no such refund" makes no sense: a rejection, never NotFound.
        assert!(matches!(
            interpret(StatusCode::OK, fail("400607", "Refund order not found.").as_bytes(), CallKind::Submit, None),
            ProviderOutcome::Failed(r) if r.code == FailureCode::ProviderRejected
        ));
        // A failed query never fails the refund: it is asked again.
        assert!(matches!(
            interpret(StatusCode::FORBIDDEN, b"<html>", CallKind::Status, None),
            ProviderOutcome::Retryable { .. }
        ));
        // Refused before processing on a refund: retried (RETRIES_EXHAUSTED in the end).
        assert!(matches!(
            interpret(StatusCode::FORBIDDEN, b"<html>", CallKind::Submit, None),
            ProviderOutcome::Retryable {
                may_have_reached_provider: false,
                ..
            }
        ));
        assert!(matches!(
            interpret(
                StatusCode::BAD_REQUEST,
                fail("400002", "Signature for this request is not valid.").as_bytes(),
                CallKind::Status,
                None
            ),
            ProviderOutcome::Retryable { reason, .. } if reason.contains("400002 INVALID_SIGNATURE")
        ));
    }

    fn settings(public_key: Option<&str>) -> ProviderSettings {
        let config = crate::config::Config::from_lookup(|k| match k {
            "PROVIDER_BINANCE_PAY_BASE_URL" => Some("http://127.0.0.1:1".into()),
            "PROVIDER_BINANCE_PAY_API_KEY" => Some("k".into()),
            "PROVIDER_BINANCE_PAY_API_SECRET" => Some("s".into()),
            "PROVIDER_BINANCE_PAY_WEBHOOK_SECRET" => public_key.map(Into::into),
            _ => None,
        })
        .unwrap();
        config.providers[&ProviderName::BinancePay].clone()
    }

    #[test]
    fn an_unusable_webhook_key_stops_the_start_naming_the_variable_not_the_value() {
        let Err(e) = BinancePay::new(settings(Some("not-a-pem-key-5f3e"))) else {
            panic!("a key that is not PEM was accepted");
        };
        let e = e.to_string();
        assert!(e.contains("PROVIDER_BINANCE_PAY_WEBHOOK_SECRET"), "{e}");
        assert!(e.contains("PEM"), "{e}");
        assert!(!e.contains("not-a-pem-key-5f3e"), "{e}");
        let pem = include_str!("../../fixtures/binance_pay/webhook-test-public-key.pem");
        assert!(BinancePay::new(settings(Some(pem))).is_ok());
    }

    /// The adapter against the sandbox over HTTP: what it signs is what it sends.
    #[tokio::test]
    async fn adapter_and_sandbox_agree_on_the_wire() {
        use refund_sandbox::{Sandbox, SandboxConfig};
        let config = SandboxConfig {
            completion_delay: std::time::Duration::from_millis(100),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(config.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, handle) = sandbox
            .spawn(0, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        let adapter_with = |secret: &str| {
            let base = format!("http://{addr}");
            let secret = secret.to_owned();
            let key = config.binance_api_key.clone();
            let config = crate::config::Config::from_lookup(move |k| match k {
                "PROVIDER_BINANCE_PAY_BASE_URL" => Some(base.clone()),
                "PROVIDER_BINANCE_PAY_API_KEY" => Some(key.clone()),
                "PROVIDER_BINANCE_PAY_API_SECRET" => Some(secret.clone()),
                _ => None,
            })
            .unwrap();
            BinancePay::new(config.providers[&ProviderName::BinancePay].clone()).unwrap()
        };
        let binance = adapter_with(&config.binance_api_secret);
        let mut r = request("r-wire", "25.17");
        r.reason = "Customer returned the goods".into();
        assert_eq!(binance.status(&r).await, ProviderOutcome::NotFound);
        assert!(matches!(
            binance.submit(&r).await,
            ProviderOutcome::Accepted { provider_reference: Some(p), .. } if p == "r-wire"
        ));
        assert!(matches!(
            binance.status(&r).await,
            ProviderOutcome::Accepted { provider_status, .. } if provider_status == "REFUND_PENDING"
        ));
        // Resubmitting is a duplicate, the same refund.
        assert!(matches!(
            binance.submit(&r).await,
            ProviderOutcome::Accepted { .. }
        ));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(matches!(
            binance.status(&r).await,
            ProviderOutcome::Succeeded { provider_status, .. } if provider_status == "REFUND_SUCCESS"
        ));
        let ledger = sandbox.ledger();
        assert_eq!(ledger.refund("r-wire").unwrap().submit_count, 2);
        assert_eq!(ledger.refund("r-wire").unwrap().refund_amount, "25.17");
        assert_eq!(ledger.rejected_auth, 0);
        // A wrong secret: Binance's signature error, final.
        let wrong = adapter_with("not-the-secret");
        match wrong.submit(&request("r-2", "1")).await {
            ProviderOutcome::Failed(f) => {
                assert_eq!(f.code, FailureCode::ProviderRejected);
                assert!(
                    f.message.contains("400002 INVALID_SIGNATURE"),
                    "{}",
                    f.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(sandbox.ledger().rejected_auth, 1);
        let _ = stop.send(());
        handle.await.unwrap();
    }

    fn webhook_headers(ts: &str, signature: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(HEADER_TIMESTAMP, ts.parse().unwrap());
        h.insert(HEADER_NONCE, NONCE.parse().unwrap());
        h.insert(HEADER_SIGNATURE, signature.parse().unwrap());
        h.insert(HEADER_CERTIFICATE_SN, "cert-sn".parse().unwrap());
        h
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn webhook_signature_is_rsa_sha256_checked_against_openssl() {
        let binance = BinancePay::new(settings(Some(TEST_PUBLIC_KEY))).unwrap();
        let now = at(1_700_000_000_000 + 1_000);
        let headers = webhook_headers(TS, OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        assert_eq!(
            binance.verify_webhook(&headers, WEBHOOK_REFUND.as_bytes(), now),
            Ok(())
        );
        let pay = webhook_headers(TS, OPENSSL_PAY_WEBHOOK_SIGNATURE);
        assert_eq!(
            binance.verify_webhook(&pay, WEBHOOK_PAY.as_bytes(), now),
            Ok(())
        );
        // A changed body, another nonce, another timestamp: all refused.
        let tampered = WEBHOOK_REFUND.replace("25.17", "95.17");
        assert!(matches!(
            binance.verify_webhook(&headers, tampered.as_bytes(), now),
            Err(WebhookError::BadSignature(_))
        ));
        let mut other_nonce = headers.clone();
        other_nonce.insert(HEADER_NONCE, "X".repeat(32).parse().unwrap());
        assert!(matches!(
            binance.verify_webhook(&other_nonce, WEBHOOK_REFUND.as_bytes(), now),
            Err(WebhookError::BadSignature(_))
        ));
        let shifted = webhook_headers("1700000000001", OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        assert!(matches!(
            binance.verify_webhook(&shifted, WEBHOOK_REFUND.as_bytes(), now),
            Err(WebhookError::BadSignature(_))
        ));
        let garbage = webhook_headers(TS, "not base64!");
        assert!(matches!(
            binance.verify_webhook(&garbage, WEBHOOK_REFUND.as_bytes(), now),
            Err(WebhookError::BadSignature(_))
        ));
        let mut missing = headers.clone();
        missing.remove(HEADER_SIGNATURE);
        assert!(matches!(
            binance.verify_webhook(&missing, WEBHOOK_REFUND.as_bytes(), now),
            Err(WebhookError::BadSignature(m)) if m.contains("missing BinancePay-Signature")
        ));
    }

    #[test]
    fn a_webhook_taken_once_is_refused_as_a_replay_within_the_window() {
        let binance = BinancePay::new(settings(Some(TEST_PUBLIC_KEY))).unwrap();
        let headers = webhook_headers(TS, OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        let body = WEBHOOK_REFUND.as_bytes();
        let now = at(1_700_000_000_000 + 1_000);
        assert_eq!(binance.verify_webhook(&headers, body, now), Ok(()));
        // Not queued (the broker was down, 503): the provider's retry is still taken.
        assert_eq!(binance.verify_webhook(&headers, body, now), Ok(()));
        binance.webhook_queued(&headers, now);
        assert!(matches!(
            binance.verify_webhook(&headers, body, at(1_700_000_010_000)),
            Err(WebhookError::Replayed(_))
        ));
        // Past the window it is stale, and the nonce is forgotten with the next one taken.
        assert!(matches!(
            binance.verify_webhook(&headers, body, at(1_700_000_300_001)),
            Err(WebhookError::StaleTimestamp(_))
        ));
        let mut other = headers.clone();
        other.insert(HEADER_NONCE, "Y".repeat(32).parse().unwrap());
        other.insert(HEADER_TIMESTAMP, "1700000400000".parse().unwrap());
        binance.webhook_queued(&other, at(1_700_000_400_000));
        assert_eq!(binance.nonces.len(), 1);
    }

    #[test]
    fn the_nonce_window_is_bounded() {
        let window = NonceWindow::default();
        for i in 0..(MAX_REMEMBERED_NONCES + 10) {
            window.remember(&format!("n{i}"), 1_000_000 + i as i64, 0);
        }
        assert_eq!(window.len(), MAX_REMEMBERED_NONCES);
        assert!(!window.seen("n0", 0), "the oldest went first");
        assert!(window.seen(&format!("n{}", MAX_REMEMBERED_NONCES + 9), 0));
    }

    #[test]
    fn webhook_timestamp_tolerance_applies() {
        let binance = BinancePay::new(settings(Some(TEST_PUBLIC_KEY))).unwrap();
        let headers = webhook_headers(TS, OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        let body = WEBHOOK_REFUND.as_bytes();
        // Default tolerance 300 s, either direction.
        assert_eq!(
            binance.verify_webhook(&headers, body, at(1_700_000_300_000)),
            Ok(())
        );
        assert_eq!(
            binance.verify_webhook(&headers, body, at(1_699_999_700_000)),
            Ok(())
        );
        assert!(matches!(
            binance.verify_webhook(&headers, body, at(1_700_000_300_001)),
            Err(WebhookError::StaleTimestamp(_))
        ));
        assert!(matches!(
            binance.verify_webhook(&headers, body, at(1_699_999_699_999)),
            Err(WebhookError::StaleTimestamp(_))
        ));
    }

    #[test]
    fn webhook_keys_are_configured_as_pem() {
        let unconfigured = BinancePay::new(settings(None)).unwrap();
        let headers = webhook_headers(TS, OPENSSL_REFUND_WEBHOOK_SIGNATURE);
        let now = at(1_700_000_000_000);
        assert_eq!(
            unconfigured.verify_webhook(&headers, WEBHOOK_REFUND.as_bytes(), now),
            Err(WebhookError::NotConfigured(ProviderName::BinancePay))
        );
        // An unusable key stops the start (config), naming the variable, not the value;
        // it used to be logged while every webhook was refused.
        let mut broken = settings(None);
        broken.webhook_secret = Some("not a key".to_string().into());
        let error = BinancePay::new(broken).err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.contains("PROVIDER_BINANCE_PAY_WEBHOOK_SECRET") && !error.contains("not a key"),
            "{error}"
        );
        // One-line form with \n escapes, as an environment variable holds it.
        let one_line = TEST_PUBLIC_KEY.trim().replace('\n', "\\n");
        let escaped = BinancePay::new(settings(Some(&one_line))).unwrap();
        assert_eq!(
            escaped.verify_webhook(&headers, WEBHOOK_REFUND.as_bytes(), now),
            Ok(())
        );
        // The PKCS#1 form (`BEGIN RSA PUBLIC KEY`) of the same key works too.
        let key = parse_public_key(TEST_PUBLIC_KEY).unwrap();
        let pkcs1 = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_pem(&key, Default::default()).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PUBLIC KEY"));
        assert_eq!(parse_public_key(&pkcs1).unwrap(), key);
    }

    #[test]
    fn refund_webhook_becomes_a_refund_update() {
        let parsed = parse_notification(WEBHOOK_REFUND.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            vec![ProviderWebhook {
                event_id: Some("PAY_REFUND:68711039982968832:REFUND_SUCCESS".into()),
                kind: WebhookKind::Refund {
                    refund_reference: Some("68711039982968832".into()),
                    provider_reference: Some("68711039982968832".into()),
                    transaction_reference: Some("383729303729303".into()),
                    outcome: ProviderOutcome::Succeeded {
                        provider_reference: Some("68711039982968832".into()),
                        provider_status: "REFUND_SUCCESS".into(),
                        fee: None,
                    },
                },
            }]
        );
        let rejected = WEBHOOK_REFUND.replace("\"REFUND_SUCCESS\"", "\"REFUND_REJECTED\"");
        match &parse_notification(rejected.as_bytes()).unwrap()[0].kind {
            WebhookKind::Refund {
                outcome: ProviderOutcome::Failed(r),
                ..
            } => {
                assert_eq!(r.code, FailureCode::ProviderRejected);
                assert!(r.message.contains("REFUND_REJECTED"));
            }
            other => panic!("{other:?}"),
        }
        // refundInfo as a JSON string (the docs' type) reads the same.
        let data: Value = serde_json::from_str(
            serde_json::from_str::<Value>(WEBHOOK_REFUND).unwrap()["data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let mut as_string = data.clone();
        as_string["refundInfo"] = json!(data["refundInfo"].to_string());
        let body = json!({"bizType": "PAY_REFUND", "bizId": 383729303729303u64, "bizStatus": "REFUND_SUCCESS", "data": as_string.to_string()});
        assert_eq!(
            parse_notification(body.to_string().as_bytes()).unwrap(),
            parsed
        );
        // A derived id is not our reference, but still the provider's.
        let long = "r".repeat(100);
        let derived = WEBHOOK_REFUND.replace("68711039982968832", &refund_request_id(&long));
        match &parse_notification(derived.as_bytes()).unwrap()[0].kind {
            WebhookKind::Refund {
                refund_reference,
                provider_reference,
                ..
            } => {
                assert_eq!(refund_reference, &None);
                assert_eq!(
                    provider_reference.as_deref(),
                    Some(refund_request_id(&long).as_str())
                );
            }
            other => panic!("{other:?}"),
        }
        // Without refundInfo (Binance sends it only to approved merchants): the order.
        let bare = json!({"bizType": "PAY_REFUND", "bizIdStr": "383729303729303", "bizStatus": "REFUND_SUCCESS", "data": "{\"merchantTradeNo\":\"1\"}"});
        assert!(matches!(
            &parse_notification(bare.to_string().as_bytes()).unwrap()[0].kind,
            WebhookKind::Refund { refund_reference: None, transaction_reference: Some(t), .. } if t == "383729303729303"
        ));
    }

    #[test]
    fn pay_webhook_becomes_an_exact_payment_update() {
        let parsed = parse_notification(WEBHOOK_PAY.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            vec![ProviderWebhook {
                // bizId exceeds 64 bits: kept as its text.
                event_id: Some("PAY:29383937493038367292:PAY_SUCCESS".into()),
                kind: WebhookKind::Payment {
                    transaction_reference: "29383937493038367292".into(),
                    amount: Some(dec("0.88000000")),
                    currency: Some("USDT".into()),
                    status: "PAY_SUCCESS".into(),
                    succeeded: true,
                },
            }]
        );
        let closed = WEBHOOK_PAY.replace("PAY_SUCCESS", "PAY_CLOSED");
        assert!(matches!(
            &parse_notification(closed.as_bytes()).unwrap()[0].kind,
            WebhookKind::Payment { succeeded: false, status, .. } if status == "PAY_CLOSED"
        ));
        let other = r#"{"bizType":"PAYOUT","bizIdStr":"9","bizStatus":"PAYOUT_DONE","data":"{}"}"#;
        assert!(matches!(
            &parse_notification(other.as_bytes()).unwrap()[0].kind,
            WebhookKind::Ignored { kind } if kind == "PAYOUT"
        ));
        for bad in [
            "{}",
            r#"{"bizType":"PAY","data":"{}"}"#,
            r#"{"bizType":"PAY","bizIdStr":"1","data":"{not json"}"#,
            r#"{"bizType":"PAY","bizIdStr":"1","data":"{\"totalFee\":\"abc\"}"}"#,
        ] {
            assert!(
                matches!(
                    parse_notification(bad.as_bytes()),
                    Err(WebhookError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let binance = BinancePay::new(settings(None)).unwrap();
        assert_eq!(
            binance.webhook_ack(),
            json!({"returnCode": "SUCCESS", "returnMessage": null})
        );
    }
}
