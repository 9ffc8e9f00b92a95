//! BPN (Better Payment Network) virtual-account order API, as its published page describes
//! the refund (shared/providers/bpn-refund-virtual-account-order.txt), with the gaps filled
//! the way shared/providers/README.md and `providers/bpn.rs` decide them:
//!
//! - `POST /v1/virtual-account/order/refund` with `{"orderId"}` refunds the whole order;
//!   with an amount ([`REFUND_AMOUNT_FIELD`]) it refunds that much of it ("refund by amount":
//!   partial or full), with a pay-in reference ([`REFUND_TRANSACTION_FIELD`], kept in the
//!   ledger's request body) that pay-in ("refund by transaction reference"). The field names are
//!   the same guesses the adapter makes by default, written here again on purpose (the
//!   sandbox never imports the adapter's choices). BPN has no idempotency key, so the same
//!   partial refund sent twice is made twice, as it would be at BPN.
//!   Answers are BPN's envelope `{"status", "message", "data", "traceId"}` (status 0 = ok).
//! - Auth: `API-KEY`, `API-TIMESTAMP` (ms, at most 5 minutes from our clock) and
//!   `API-SIGNATURE` = lowercase hex HMAC-SHA256 with `SandboxConfig::bpn_api_secret` over
//!   `content + "&" + timestamp`; content is the raw body for POST and the query parameters
//!   (decoded) as `k=v` sorted and joined with `&` for GET. This file rebuilds that content
//!   itself rather than calling the adapter's function, so a shared mistake cannot hide.
//!   Refusals are HTTP 401 with status 10001 (key), 10002 (signature), 10003 (timestamp).
//! - Order lookups (paths ours, the adapter's defaults): `GET /v1/virtual-account/order/detail
//!   ?orderId=` and `GET /v1/virtual-account/order/list?pageNum=&pageSize=` (pageNum from 1,
//!   default size 10, at most 100). An order shows `orderId, amount, currency, status
//!   ("SUCCESS"), refundStatus` (its latest refund's: null, REFUNDING, REFUNDED or
//!   REFUND_FAILED) and `refundedAmount` (every refund not failed, in progress included).
//! - Orders are the shared `Payment`s (orderId = transactionReference); an order never told
//!   about reads as a paid order of `default_payment_amount` and is stored once refunded.
//! - An order is refunded up to its amount: a whole-order refund of an order with any refund
//!   left standing, or an amount when nothing is left, is `status 20002 "order already
//!   refunded"` (still counted in the latest refund's `submit_count`); an amount above what is
//!   left `status 20004`. A new refund replaces the order's failed ones in the ledger.
//! - The ledger's `refundReference` is the order id for an order's first refund (BPN never
//!   sees ours) and `orderId#n` for its n-th; `refundAmount` is the amount refunded. A forced
//!   outcome applies to every refund of the order.
//!
//! Order of checks: auth (401, counted only in `rejectedAuth`), count, injected HTTP error
//! (`failNext`, then `error_rate`; HTTP status with status 50000), body validation (400, status
//! 40000), `rejectNext` (200, status 20005), the already-refunded check, record, then the hang
//! (`timeoutAfterAcceptNext`, then `timeout_rate`). All decided under the sandbox lock.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::book::{Book, OutcomeKey, Refund, Stage};
use super::gate::ProviderError;
use super::notify::Notice;
use super::{
    decimal_to_json, default_currency, CallKind, Payment, Provider, Reply, Sandbox, SandboxConfig,
    Simulator, State,
};

/// The refund body's amount field ("refund by amount"; BPN's page names no field).
pub const REFUND_AMOUNT_FIELD: &str = "amount";
/// The refund body's pay-in field ("refund by transaction reference"; not named either).
pub const REFUND_TRANSACTION_FIELD: &str = "transactionReference";
/// "resend fail webhook": the path and the window's fields (ms since the epoch), the same
/// guesses as the adapter's defaults, written here again. Not served with `--strict`.
pub const RESEND_WEBHOOK_PATH: &str = "/v1/webhook/resend";
const RESEND_START_FIELD: &str = "startTime";
const RESEND_END_FIELD: &str = "endTime";
const DEFAULT_PAGE_SIZE: usize = 10;
const MAX_PAGE_SIZE: usize = 100;
/// How far `API-TIMESTAMP` may be from our clock.
const TIMESTAMP_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// BPN routes. Strict: BPN's page names the order lookups and the re-send but shows none
/// of their paths; ours are guesses, so a strict BPN answers them like any unknown path.
pub(super) fn routes(strict: bool) -> Router<Sandbox> {
    let documented = Router::new().route("/v1/virtual-account/order/refund", post(refund));
    if strict {
        return documented;
    }
    documented
        .route("/v1/virtual-account/order/detail", get(detail))
        .route("/v1/virtual-account/order/list", get(list))
        .route(RESEND_WEBHOOK_PATH, post(resend))
}

/// The header BPN's notifications carry their signature in (hex HMAC-SHA256 of the raw body;
/// the README leaves it open, this is the adapter's default, written here again).
pub const SIGNATURE_HEADER: &str = "X-BPN-Signature";

/// BPN's virtual-account payment status notification for a paid order. BPN's page names the
/// notification, not its payload: `notifyType` `VA_PAYMENT_STATUS`, a `notifyId`, and `data`
/// with the order (`orderId`, `amount` as an exact JSON number, `currency`,
/// `status: "SUCCESS"`, `refundStatus: null`), as the order lookups show it.
fn payin_notice(payment: &Payment) -> Notice {
    let body = json!({
        "notifyType": "VA_PAYMENT_STATUS",
        "notifyId": uuid::Uuid::new_v4().to_string(),
        "data": {
            "orderId": payment.transaction_reference,
            "amount": decimal_to_json(payment.amount),
            "currency": payment.currency,
            "status": "SUCCESS",
            "refundStatus": null,
        },
    })
    .to_string();
    Notice::hmac(Provider::Bpn, body, SIGNATURE_HEADER)
}

/// What BPN knows: orders (the book's payments) and their refunds in the order made, each
/// keyed by the order id for its first refund and `orderId#n` for the n-th; forced outcomes
/// by order id (they may precede the refund, and apply to every refund of the order).
pub(super) struct BpnState {
    pub(super) book: Book<()>,
}

impl Default for BpnState {
    fn default() -> Self {
        Self {
            book: Book::new(Provider::Bpn, word, OutcomeKey::Payment),
        }
    }
}

fn word(stage: Stage) -> &'static str {
    match stage {
        Stage::AwaitingApproval | Stage::Pending => "REFUNDING",
        Stage::Completed => "REFUNDED",
        Stage::Failed | Stage::Cancelled => "REFUND_FAILED",
    }
}

/// Every BPN error answer; HTTP status and BPN status code are chosen here, in one place.
#[derive(Debug, thiserror::Error)]
enum BpnError {
    #[error("invalid API-KEY")]
    BadKey,
    #[error("invalid signature")]
    BadSignature,
    #[error("API-TIMESTAMP missing or expired")]
    BadTimestamp,
    #[error("{} (injected by sandbox)", .0.canonical_reason().unwrap_or("Error"))]
    Injected(StatusCode),
    #[error("{0}")]
    Invalid(String),
    #[error("refund declined by risk control (injected by sandbox)")]
    Declined,
    #[error("order already refunded")]
    AlreadyRefunded,
    #[error("refund amount {0} exceeds the order's refundable amount {1}")]
    AmountTooLarge(Decimal, Decimal),
}

impl IntoResponse for BpnError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Self::BadKey => (StatusCode::UNAUTHORIZED, 10001),
            Self::BadSignature => (StatusCode::UNAUTHORIZED, 10002),
            Self::BadTimestamp => (StatusCode::UNAUTHORIZED, 10003),
            Self::Injected(status) => (*status, 50000),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, 40000),
            Self::Declined => (StatusCode::OK, 20005),
            Self::AlreadyRefunded => (StatusCode::OK, 20002),
            Self::AmountTooLarge(..) => (StatusCode::OK, 20004),
        };
        envelope(status, code, &self.to_string(), Value::Null)
    }
}

fn envelope(status: StatusCode, code: i64, message: &str, data: Value) -> Response {
    let body = json!({
        "status": code,
        "message": message,
        "data": data,
        "traceId": uuid::Uuid::new_v4().simple().to_string(),
    });
    (status, Json(body)).into_response()
}

fn success(data: Value) -> Response {
    envelope(StatusCode::OK, 0, "success", data)
}

impl Simulator for BpnState {
    book_field!(());

    fn payin_notice(
        &self,
        _: &SandboxConfig,
        payment: &Payment,
        _: DateTime<Utc>,
    ) -> Option<Notice> {
        Some(payin_notice(payment))
    }

    /// Refund status notifications (`notifyType: REFUND`, signed with `X-BPN-Signature`,
    /// hex HMAC-SHA256 of the body) for every refund that became final.
    fn refund_notice(
        &self,
        _: &SandboxConfig,
        refund: &Refund<()>,
        stage: Stage,
        _: Instant,
    ) -> Option<Notice> {
        let currency = self
            .book
            .payments
            .get(&refund.payment)
            .map(|p| p.currency.clone())
            .unwrap_or_else(default_currency);
        let body = json!({
            "notifyType": "REFUND",
            "notifyId": uuid::Uuid::new_v4().to_string(),
            "data": {
                "orderId": refund.payment,
                "refundStatus": word(stage),
                "amount": decimal_to_json(refund.amount),
                "currency": currency,
            },
        })
        .to_string();
        Some(Notice::hmac(Provider::Bpn, body, SIGNATURE_HEADER))
    }
}

impl BpnState {
    /// The order as BPN shows it; one never told about reads as a paid default order.
    fn order_view(&self, order_id: &str, config: &SandboxConfig, now: Instant) -> Value {
        let (amount, currency) = match self.book.payments.get(order_id) {
            Some(p) => (p.amount, p.currency.clone()),
            None => (config.default_payment_amount, default_currency()),
        };
        let refund_status = self
            .book
            .in_group(order_id)
            .last()
            .map(|r| word(self.book.stage(r, config, now)));
        json!({
            "orderId": order_id,
            "amount": decimal_to_json(amount),
            "currency": currency,
            "status": "SUCCESS",
            "refundStatus": refund_status,
            // Every refund not failed, in progress included.
            "refundedAmount": decimal_to_json(self.book.committed(order_id, config, now)),
        })
    }

    /// Records a refund of `amount` (the whole order when `None`), or refuses one that does
    /// not fit in what is left of the order.
    fn accept(
        &mut self,
        order_id: String,
        amount: Option<Decimal>,
        body: String,
        config: &SandboxConfig,
        now: Instant,
    ) -> Result<Response, BpnError> {
        let order_amount = self
            .book
            .payment_or_default(&order_id, config, default_currency)
            .amount;
        let refunded = self.book.committed(&order_id, config, now);
        let left = order_amount - refunded;
        let too_much = match amount {
            None => refunded > Decimal::ZERO,
            Some(a) => a > left,
        };
        if too_much {
            if let Some(a) = amount.filter(|_| left > Decimal::ZERO) {
                return Err(BpnError::AmountTooLarge(a, left));
            }
            if let Some(latest) = self.book.latest_mut(&order_id) {
                latest.submit_count += 1;
            }
            return Err(BpnError::AlreadyRefunded);
        }
        let amount = amount.unwrap_or(order_amount);
        // Failed refunds make way for the new one (the ledger shows what stands).
        self.book.drop_released(&order_id, config, now);
        let key = match self.book.group_len(&order_id) {
            0 => order_id.clone(),
            n => format!("{order_id}#{}", n + 1),
        };
        tracing::info!(order_id = %order_id, amount = %amount, "bpn sandbox: refund accepted");
        let refund = Refund::new(
            key,
            order_id.clone(),
            (amount, amount.to_string()),
            body,
            now,
            (),
        );
        self.book.record(refund);
        Ok(success(json!({
            "orderId": order_id,
            "status": word(Stage::Pending),
        })))
    }
}

/// Constant-time equality of two byte strings (out of habit, as for the VA token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The signed content of a GET: decoded query pairs sorted, `k=v` joined with `&`.
fn query_content(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Checks BPN's three auth headers against `content`.
fn authenticate(
    headers: &HeaderMap,
    config: &SandboxConfig,
    content: &[u8],
) -> Result<(), BpnError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("API-KEY") {
        Some(key) if same(key.as_bytes(), config.bpn_api_key.as_bytes()) => {}
        _ => return Err(BpnError::BadKey),
    }
    let timestamp = header("API-TIMESTAMP").ok_or(BpnError::BadTimestamp)?;
    let ms: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| BpnError::BadTimestamp)?;
    if (Utc::now().timestamp_millis() - ms).abs() > TIMESTAMP_TOLERANCE_MS {
        return Err(BpnError::BadTimestamp);
    }
    let given = header("API-SIGNATURE").ok_or(BpnError::BadSignature)?;
    if super::docs::bpn_signature_ok(config.bpn_api_secret.as_bytes(), content, timestamp, given) {
        Ok(())
    } else {
        Err(BpnError::BadSignature)
    }
}

impl ProviderError for BpnError {
    fn injected(status: StatusCode) -> Self {
        Self::Injected(status)
    }
}

/// Runs one BPN call through the fault gate, authenticated over `content`.
async fn bpn_call(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    content: &[u8],
    kind: CallKind,
    decide: impl FnOnce(&mut State, &SandboxConfig) -> Result<Reply, BpnError>,
) -> Response {
    let authenticate =
        |_: &mut State, config: &SandboxConfig| authenticate(headers, config, content);
    sandbox.call(kind, authenticate, decide).await
}

/// A refund body, validated like a strict provider: the order id, the amount when given
/// (a JSON number or a decimal string, > 0), and the body as text.
fn parse_refund(body: &[u8]) -> Result<(String, Option<Decimal>, String), String> {
    let text =
        std::str::from_utf8(body).map_err(|_| "malformed JSON body: not UTF-8".to_owned())?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("malformed JSON body: {e}"))?;
    let order_id = match value.get("orderId") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err("orderId is required".to_owned())
        }
        Some(_) => return Err("orderId must be a string".to_owned()),
    };
    let amount = match value.get(REFUND_AMOUNT_FIELD) {
        None | Some(Value::Null) => None,
        Some(v) => {
            let text = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return Err(format!("{REFUND_AMOUNT_FIELD} must be a number")),
            };
            match Decimal::from_str_exact(text.trim()) {
                Ok(a) if a > Decimal::ZERO => Some(a),
                _ => return Err(format!("{REFUND_AMOUNT_FIELD} must be a positive amount")),
            }
        }
    };
    match value.get(REFUND_TRANSACTION_FIELD) {
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => return Err(format!("{REFUND_TRANSACTION_FIELD} must be a string")),
    }
    Ok((order_id, amount, text.to_owned()))
}

async fn refund(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bpn_call(
        &sandbox,
        &headers,
        &body,
        CallKind::Submit,
        |state, config| {
            let (order_id, amount, text) = parse_refund(&body).map_err(BpnError::Invalid)?;
            state.submit(
                config,
                || BpnError::Declined,
                |state| {
                    state
                        .bpn
                        .accept(order_id, amount, text, config, Instant::now())
                },
            )
        },
    )
    .await
}

/// `POST /v1/webhook/resend` with `{"startTime", "endTime"}` (ms): the refunds of that window
/// are notified again. Signed like every BPN call.
async fn resend(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    bpn_call(
        &sandbox,
        &headers,
        &body,
        CallKind::Resend,
        |state, _config| {
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| BpnError::Invalid(format!("malformed JSON body: {e}")))?;
            let at = |field: &str| {
                value
                    .get(field)
                    .and_then(Value::as_i64)
                    .and_then(DateTime::<Utc>::from_timestamp_millis)
                    .ok_or_else(|| BpnError::Invalid(format!("{field} (ms) is required")))
            };
            let (start, end) = (at(RESEND_START_FIELD)?, at(RESEND_END_FIELD)?);
            let resent = state
                .bpn
                .book
                .renotify(|r| r.created_at >= start && r.created_at < end);
            Ok(Reply::now(success(json!({ "resent": resent }))))
        },
    )
    .await
}

fn params(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn detail(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let content = query_content(query.as_deref());
    let order_id = params(query.as_deref()).remove("orderId");
    bpn_call(
        &sandbox,
        &headers,
        content.as_bytes(),
        CallKind::Details,
        |state, config| {
            let order_id = order_id
                .filter(|o| !o.trim().is_empty())
                .ok_or_else(|| BpnError::Invalid("orderId is required".into()))?;
            let view = state.bpn.order_view(&order_id, config, Instant::now());
            Ok(Reply::now(success(view)))
        },
    )
    .await
}

async fn list(
    AxumState(sandbox): AxumState<Sandbox>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let content = query_content(query.as_deref());
    let p = params(query.as_deref());
    let page_num = p
        .get("pageNum")
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let page_size = p
        .get("pageSize")
        .and_then(|n| n.trim().parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE);
    bpn_call(
        &sandbox,
        &headers,
        content.as_bytes(),
        CallKind::List,
        |state, config| {
            let now = Instant::now();
            let bpn = &state.bpn;
            let orders: Vec<Value> = bpn
                .book
                .payments
                .keys()
                .skip((page_num - 1).saturating_mul(page_size))
                .take(page_size)
                .map(|id| bpn.order_view(id, config, now))
                .collect();
            Ok(Reply::now(success(json!({
                "list": orders,
                "total": bpn.book.payments.len(),
                "pageNum": page_num,
                "pageSize": page_size,
            }))))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{start, TestServer};
    use super::super::{Faults, Payment, Provider, SandboxConfig};
    use refund_worker::providers::bpn::{signature, SignedContent};
    use rust_decimal::Decimal;
    use serde_json::{json, Value};
    use std::time::Duration;

    const KEY: &str = "sandbox-bpn-key";
    const SECRET: &[u8] = b"sandbox-bpn-secret";

    fn now_ms() -> String {
        chrono::Utc::now().timestamp_millis().to_string()
    }

    /// A signed refund call: (HTTP status, parsed envelope).
    async fn refund(server: &TestServer, body: &str) -> (u16, Value) {
        refund_with(server, body, KEY, SECRET, &now_ms()).await
    }

    async fn refund_with(
        server: &TestServer,
        body: &str,
        key: &str,
        secret: &[u8],
        timestamp: &str,
    ) -> (u16, Value) {
        let sig = signature(secret, SignedContent::Body(body.as_bytes()), timestamp);
        let response = server
            .client
            .post(server.url("/v1/virtual-account/order/refund"))
            .header("API-KEY", key)
            .header("API-TIMESTAMP", timestamp)
            .header("API-SIGNATURE", sig)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// A signed GET with `params`.
    async fn get(server: &TestServer, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let pairs: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let timestamp = now_ms();
        let sig = signature(SECRET, SignedContent::Params(&pairs), &timestamp);
        let response = server
            .client
            .get(server.url(path))
            .query(&pairs)
            .header("API-KEY", KEY)
            .header("API-TIMESTAMP", timestamp)
            .header("API-SIGNATURE", sig)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn detail(server: &TestServer, order_id: &str) -> Value {
        let (status, body) = get(
            server,
            "/v1/virtual-account/order/detail",
            &[("orderId", order_id)],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], json!(0));
        body["data"].clone()
    }

    fn order(server: &TestServer, id: &str, amount: &str) {
        server.sandbox.add_payment(Payment {
            provider: Provider::Bpn,
            transaction_reference: id.into(),
            amount: Decimal::from_str_exact(amount).unwrap(),
            currency: "USD".into(),
        });
    }

    fn quick() -> SandboxConfig {
        SandboxConfig {
            completion_delay: Duration::from_millis(150),
            hang: Duration::from_secs(5),
            ..SandboxConfig::default()
        }
    }

    #[tokio::test]
    async fn wrong_key_signature_or_timestamp_is_refused() {
        let server = start(quick()).await;
        let body = r#"{"orderId":"o-1"}"#;
        let (status, e) = refund_with(&server, body, KEY, b"wrong", &now_ms()).await;
        assert_eq!((status, e["status"].clone()), (401, json!(10002)));
        assert_eq!(e["message"], "invalid signature");
        assert!(e["traceId"].as_str().is_some_and(|t| !t.is_empty()));
        let (status, e) = refund_with(&server, body, "nope", SECRET, &now_ms()).await;
        assert_eq!((status, e["status"].clone()), (401, json!(10001)));
        let stale = (chrono::Utc::now().timestamp_millis() - 10 * 60 * 1000).to_string();
        let (status, e) = refund_with(&server, body, KEY, SECRET, &stale).await;
        assert_eq!((status, e["status"].clone()), (401, json!(10003)));
        // A signature over other bytes than those sent.
        let sig = signature(SECRET, SignedContent::Body(b"{\"orderId\":\"o-2\"}"), "1");
        let response = server
            .client
            .post(server.url("/v1/virtual-account/order/refund"))
            .header("API-KEY", KEY)
            .header("API-TIMESTAMP", now_ms())
            .header("API-SIGNATURE", sig)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401);
        let ledger = server.sandbox.ledger();
        assert_eq!((ledger.rejected_auth, ledger.submit_calls), (4, 0));
        assert!(ledger.refunds.is_empty());
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn an_order_is_refunded_whole_once_then_completes() {
        let server = start(quick()).await;
        order(&server, "o-1", "25.17");
        let before = detail(&server, "o-1").await;
        assert_eq!(before["refundStatus"], Value::Null);
        assert_eq!(before["amount"].to_string(), "25.17");
        let (status, e) = refund(&server, r#"{"orderId":"o-1"}"#).await;
        assert_eq!(status, 200);
        assert_eq!(e["status"], json!(0));
        assert_eq!(e["data"], json!({"orderId": "o-1", "status": "REFUNDING"}));
        assert_eq!(detail(&server, "o-1").await["refundStatus"], "REFUNDING");
        // A second refund of the order is refused and counted.
        let (status, again) = refund(&server, r#"{"orderId":"o-1"}"#).await;
        assert_eq!((status, again["status"].clone()), (200, json!(20002)));
        assert_eq!(again["message"], "order already refunded");

        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(detail(&server, "o-1").await["refundStatus"], "REFUNDED");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        let r = ledger.refund("o-1").unwrap();
        assert_eq!((r.submit_count, r.refund_amount.as_str()), (2, "25.17"));
        assert_eq!(
            (r.status.as_str(), r.request_body.as_str()),
            ("REFUNDED", r#"{"orderId":"o-1"}"#)
        );
        assert!(r.completed_at.is_some());
        // An order never told about is a paid default order.
        let unknown = detail(&server, "never-seen").await;
        assert_eq!(unknown["amount"].to_string(), "1000000");
        assert_eq!(unknown["status"], "SUCCESS");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn partial_refunds_add_up_to_the_order_and_no_further() {
        let server = start(quick()).await;
        order(&server, "o-p", "100.00");
        let (status, e) = refund(&server, r#"{"orderId":"o-p","amount":"30.50"}"#).await;
        assert_eq!((status, e["status"].clone()), (200, json!(0)));
        let view = detail(&server, "o-p").await;
        assert_eq!(view["refundStatus"], "REFUNDING");
        assert_eq!(view["refundedAmount"].to_string(), "30.50");
        // By pay-in reference, with an amount as a JSON number.
        let (_, e) = refund(
            &server,
            r#"{"orderId":"o-p","amount":60,"transactionReference":"payin-2"}"#,
        )
        .await;
        assert_eq!(e["status"], json!(0));
        // 9.50 is left: 10 is refused with what is left, and a whole-order refund too.
        let (_, e) = refund(&server, r#"{"orderId":"o-p","amount":"10"}"#).await;
        assert_eq!(e["status"], json!(20004));
        assert!(e["message"].as_str().unwrap().contains("9.50"), "{e}");
        let (_, e) = refund(&server, r#"{"orderId":"o-p"}"#).await;
        assert_eq!(e["status"], json!(20002));
        let (status, e) = refund(&server, r#"{"orderId":"o-p","amount":"-1"}"#).await;
        assert_eq!((status, e["status"].clone()), (400, json!(40000)));
        let (_, e) = refund(&server, r#"{"orderId":"o-p","amount":"9.50"}"#).await;
        assert_eq!(e["status"], json!(0));
        assert_eq!(
            detail(&server, "o-p").await["refundedAmount"].to_string(),
            "100.00"
        );
        let ledger = server.sandbox.ledger();
        let mut keys: Vec<(String, String)> = ledger
            .refunds
            .iter()
            .map(|r| (r.refund_reference.clone(), r.refund_amount.clone()))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("o-p".to_owned(), "30.50".to_owned()),
                ("o-p#2".to_owned(), "60".to_owned()),
                ("o-p#3".to_owned(), "9.50".to_owned())
            ]
        );
        let second = ledger.refund("o-p#2").unwrap();
        assert!(second.request_body.contains("payin-2"));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_strict_bpn_serves_the_refund_but_not_the_order_lookups_it_does_not_document() {
        let server = start(SandboxConfig {
            strict: true,
            ..quick()
        })
        .await;
        for path in [
            "/v1/virtual-account/order/detail?orderId=o-1",
            "/v1/virtual-account/order/list?pageNum=1&pageSize=10",
        ] {
            let response = server.client.get(server.url(path)).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 404, "{path}");
        }
        let (status, answer) = refund(&server, r#"{"orderId":"o-1","amount":10.00}"#).await;
        assert_eq!((status, answer["status"].clone()), (200, json!(0)));
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn faults_fail_reject_and_hang() {
        let server = start(SandboxConfig {
            completion_delay: Duration::from_secs(3),
            ..quick()
        })
        .await;
        server.sandbox.inject(Faults {
            fail_next: 1,
            fail_status: Some(503),
            reject_next: 1,
            ..Faults::default()
        });
        let body = r#"{"orderId":"o-1"}"#;
        let (status, e) = refund(&server, body).await;
        assert_eq!((status, e["status"].clone()), (503, json!(50000)));
        let (status, e) = refund(&server, body).await;
        assert_eq!((status, e["status"].clone()), (200, json!(20005)));
        assert!(server.sandbox.ledger().refunds.is_empty());
        let (status, e) = refund(&server, r#"{"order":"x"}"#).await;
        assert_eq!((status, e["status"].clone()), (400, json!(40000)));

        server.sandbox.inject(Faults {
            timeout_after_accept_next: 1,
            ..Faults::default()
        });
        let timestamp = now_ms();
        let error = server
            .client
            .post(server.url("/v1/virtual-account/order/refund"))
            .header("API-KEY", KEY)
            .header("API-TIMESTAMP", &timestamp)
            .header(
                "API-SIGNATURE",
                signature(SECRET, SignedContent::Body(body.as_bytes()), &timestamp),
            )
            .body(body)
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refund("o-1").unwrap().submit_count, 1);
        assert_eq!(
            (
                ledger.injected_failures,
                ledger.injected_rejects,
                ledger.injected_timeouts
            ),
            (1, 1, 1)
        );
        assert_eq!(detail(&server, "o-1").await["refundStatus"], "REFUNDING");
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn a_forced_failure_lets_the_order_be_refunded_again() {
        let server = start(quick()).await;
        order(&server, "o-1", "10");
        let (status, answer) = server
            .admin_post(
                "/sandbox/bpn/refunds/o-1/outcome",
                json!({"status": "FAILED"}),
            )
            .await;
        assert_eq!((status, answer["refundKnown"].clone()), (200, json!(false)));
        refund(&server, r#"{"orderId":"o-1"}"#).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            detail(&server, "o-1").await["refundStatus"],
            "REFUND_FAILED"
        );
        // Retried while the failure stands (setting COMPLETED now would rewrite the old one).
        let (_, e) = refund(&server, r#"{"orderId":"o-1"}"#).await;
        assert_eq!(
            e["status"],
            json!(0),
            "a failed refund does not block a new one"
        );
        let ledger = server.sandbox.ledger();
        assert_eq!(ledger.refunds.len(), 1);
        assert_eq!(ledger.refund("o-1").unwrap().submit_count, 1);
        server.stop(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn orders_list_in_pages() {
        let server = start(quick()).await;
        for id in ["a", "b", "c"] {
            order(&server, id, "1.50");
        }
        let (status, page) = get(
            &server,
            "/v1/virtual-account/order/list",
            &[("pageSize", "2"), ("pageNum", "1")],
        )
        .await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = page["data"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(page["data"]["total"], json!(3));
        let (_, page) = get(
            &server,
            "/v1/virtual-account/order/list",
            &[("pageNum", "2"), ("pageSize", "2")],
        )
        .await;
        assert_eq!(page["data"]["list"][0]["orderId"], "c");
        assert_eq!(page["data"]["list"][0]["amount"].to_string(), "1.50");
        let (_, page) = get(&server, "/v1/virtual-account/order/list", &[]).await;
        assert_eq!(page["data"]["pageSize"], json!(10));
        assert_eq!(server.sandbox.ledger().list_calls, 3);
        server.stop(Duration::from_secs(2)).await;
    }
}

/// The notification bookkeeping, driven directly with chosen instants.
#[cfg(test)]
mod webhook_tests {
    use super::super::book::Stage;
    use super::super::test_support::refund_notices;
    use super::super::{OutcomeStatus, SandboxConfig, Simulated};
    use super::{word, BpnState};
    use serde_json::Value;
    use std::time::Duration;
    use tokio::time::Instant;

    /// What the notify loop used to compute: a walk over every refund (sorted, as the map
    /// had no order).
    fn full_scan(state: &BpnState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        let mut due: Vec<String> = state
            .book
            .iter()
            .filter_map(|r| {
                let stage = state.book.stage(r, config, now);
                (stage != Stage::Pending && state.book.notified(&r.key) != Some(stage))
                    .then(|| format!("{}:{}", r.payment, word(stage)))
            })
            .collect();
        due.sort();
        due
    }

    /// Due notifications as `orderId:refundStatus`, checked against the full scan.
    fn due(state: &mut BpnState, config: &SandboxConfig, now: Instant) -> Vec<String> {
        let expected = full_scan(state, config, now);
        let mut got: Vec<String> = refund_notices(state, config, now)
            .iter()
            .map(|out| {
                let body: Value = serde_json::from_slice(&out.body).unwrap();
                let data = &body["data"];
                format!(
                    "{}:{}",
                    data["orderId"].as_str().unwrap(),
                    data["refundStatus"].as_str().unwrap()
                )
            })
            .collect();
        got.sort();
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
        let mut state = BpnState::default();
        let accept = |state: &mut BpnState, order: &str, at: Instant| {
            state
                .accept(order.into(), None, String::new(), &config, at)
                .unwrap();
        };
        accept(&mut state, "o-1", t0);
        accept(&mut state, "o-2", t0);
        state.set_outcome("o-2", OutcomeStatus::Failed);
        assert!(due(&mut state, &config, t0).is_empty());
        assert_eq!(
            due(&mut state, &config, t0 + ms(120)),
            ["o-1:REFUNDED", "o-2:REFUND_FAILED"]
        );
        assert_eq!(state.book.unsettled_len(), 0);
        // A failed order may be refunded again; it is notified when that refund ends.
        state.set_outcome("o-2", OutcomeStatus::Completed);
        state.set_outcome("o-1", OutcomeStatus::Failed);
        assert_eq!(
            due(&mut state, &config, t0 + ms(130)),
            ["o-1:REFUND_FAILED", "o-2:REFUNDED"]
        );
        accept(&mut state, "o-1", t0 + ms(200));
        state.set_outcome("o-1", OutcomeStatus::Completed);
        assert!(due(&mut state, &config, t0 + ms(250)).is_empty());
        assert_eq!(due(&mut state, &config, t0 + ms(300)), ["o-1:REFUNDED"]);
        assert_eq!(state.book.unsettled_len(), 0);
        assert!(due(&mut state, &config, t0 + ms(400)).is_empty());
    }

    #[test]
    fn every_partial_refund_of_an_order_is_notified_once() {
        let config = SandboxConfig {
            completion_delay: std::time::Duration::from_millis(100),
            ..SandboxConfig::default()
        };
        let t0 = Instant::now();
        let mut state = BpnState::default();
        for amount in ["1.00", "2.00"] {
            let amount = rust_decimal::Decimal::from_str_exact(amount).ok();
            state
                .accept("o-1".into(), amount, String::new(), &config, t0)
                .unwrap();
        }
        let later = t0 + std::time::Duration::from_millis(150);
        assert_eq!(refund_notices(&mut state, &config, later).len(), 2);
        assert!(refund_notices(&mut state, &config, later).is_empty());
    }
}
