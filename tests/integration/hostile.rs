//! Hostile input: every message or request an attacker (or a broken publisher) can send ends
//! in one clear, specific outcome, and nothing is silently dropped. A command is stored
//! (`REFUND_FAIL`/`INVALID_COMMAND` with a precise message) or dead-lettered with its reason
//! in `x-refund-worker-error`; a webhook is refused with a specific HTTP error, or queued
//! and then dead-lettered with its reason.

use crate::helpers::*;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use refund_worker::broker::{topology, ERROR_HEADER};
use refund_worker::domain::{FailureCode, RefundStatus};
use refund_worker::pipeline::intake::MAX_COMMAND_BYTES;
use refund_worker::providers::signing::hmac_sha256_hex;
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "sandbox-webhook-secret";
const BINANCE_TEST_PRIVATE_KEY: &str =
    include_str!("../../fixtures/binance_pay/webhook-test-private-key.pem");

/// Publishes `body` and expects it in the command DLQ, byte for byte; returns the reason.
async fn expect_dead_letter(app: &TestApp, body: &[u8]) -> String {
    app.publish_raw(body).await;
    let (kept, reason) = app.dlq_get().await.expect("a dead letter");
    assert_eq!(kept.len(), body.len(), "the original body is kept");
    assert!(kept == body, "the original body is kept byte for byte");
    reason
}

/// Publishes `body` (whose reference is `r`) and expects `REFUND_FAIL`/`INVALID_COMMAND`;
/// returns the failure message.
async fn expect_invalid(app: &mut TestApp, r: &str, body: &[u8]) -> String {
    app.publish_raw(body).await;
    let e = app.wait_for(r, RefundStatus::RefundFail).await;
    let failure = e.failure_reason.expect("failure reason");
    assert_eq!(failure.code, FailureCode::InvalidCommand);
    assert_eq!(e.attempts, 0);
    assert_eq!(app.db_status(r).await.as_deref(), Some("REFUND_FAIL"));
    failure.message
}

/// A valid command whose `amount` is the raw JSON text `amount`.
fn with_raw_amount(r: &str, amount: &str) -> String {
    va_command(r, "1.00")
        .to_string()
        .replace(r#""amount":"1.00""#, &format!(r#""amount":{amount}"#))
}

#[tokio::test]
async fn hostile_oversized_command_is_dead_lettered_unread() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    // A well-formed command with a usable reference, padded just past the limit.
    let r = reference("huge");
    let mut cmd = va_command(&r, "10.00");
    let base = cmd.to_string().len();
    cmd["metadata"] = json!({"pad": "x".repeat(MAX_COMMAND_BYTES - base)});
    let body = cmd.to_string();
    assert!(body.len() > MAX_COMMAND_BYTES);
    let reason = expect_dead_letter(&app, body.as_bytes()).await;
    assert_eq!(
        reason,
        format!(
            "message is {} bytes, at most 262144 are accepted",
            body.len()
        )
    );
    assert_eq!(app.db_status(&r).await, None, "not stored, not read");
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_deeply_nested_json_is_dead_lettered() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let bare = "[".repeat(10_000);
    let reason = expect_dead_letter(&app, bare.as_bytes()).await;
    assert!(
        reason.starts_with("message is not a JSON object: recursion limit exceeded"),
        "{reason}"
    );
    // The same bomb inside an otherwise valid command (closed, so it is valid JSON).
    let r = reference("nested");
    let bomb = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let body = va_command(&r, "1.00").to_string().replace(
        r#""currency":"NGN""#,
        &format!(r#""currency":"NGN","metadata":{{"a":{bomb}}}"#),
    );
    let reason = expect_dead_letter(&app, body.as_bytes()).await;
    assert!(reason.contains("recursion limit exceeded"), "{reason}");
    assert_eq!(app.db_status(&r).await, None);
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_amount_with_a_thousand_digits_is_invalid_command() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = reference("digits");
    let body = with_raw_amount(&r, &"9".repeat(1000));
    let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
    assert_eq!(
        message,
        format!(
            "amount `{}...` is not a plain decimal number with at most 28 significant digits",
            "9".repeat(40)
        )
    );
    // 1,000 digits as a string, and a fraction of 1,000 digits, likewise.
    let r = reference("digits-str");
    let body = with_raw_amount(&r, &format!("\"0.{}1\"", "0".repeat(998)));
    let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
    assert!(
        message.starts_with("amount `0.000") && message.contains("is not a plain decimal"),
        "{message}"
    );
    assert_eq!(app.sandbox.ledger().submit_calls, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_amount_1e400_is_invalid_command() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    for (i, amount) in ["1e400", "1E2", "-1e-400", "\"1e400\""].iter().enumerate() {
        let r = reference(&format!("exp{i}"));
        let body = with_raw_amount(&r, amount);
        let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
        // serde_json keeps a number's digits but may respell its exponent (`1e+400`).
        let exponent = message
            .strip_prefix("amount `")
            .and_then(|m| {
                m.strip_suffix("` is not a plain decimal number with at most 28 significant digits")
            })
            .unwrap_or_else(|| panic!("{amount}: {message}"));
        assert!(exponent.to_ascii_lowercase().contains('e'), "{message}");
    }
    assert_eq!(app.sandbox.ledger().submit_calls, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_amounts_with_more_decimals_than_the_currency_are_invalid_command() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let cases = [
        (
            "NGN",
            "1.001",
            "amount 1.001 has more than the 2 decimal places NGN allows",
        ),
        (
            "NGN",
            "\"1.001\"",
            "amount 1.001 has more than the 2 decimal places NGN allows",
        ),
        (
            "JPY",
            "1.5",
            "amount 1.5 has more than the 0 decimal places JPY allows",
        ),
        (
            "JPY",
            "\"1.5\"",
            "amount 1.5 has more than the 0 decimal places JPY allows",
        ),
        (
            "KWD",
            "0.0001",
            "amount 0.0001 has more than the 3 decimal places KWD allows",
        ),
    ];
    for (i, (currency, amount, expected)) in cases.iter().enumerate() {
        let r = reference(&format!("decimals{i}"));
        let body = with_raw_amount(&r, amount).replace(
            r#""currency":"NGN""#,
            &format!(r#""currency":"{currency}""#),
        );
        let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
        assert_eq!(&message, expected, "{currency} {amount}");
    }
    // Trailing zeros are not extra precision: 100.000 JPY is fine.
    let r = reference("zeros");
    let body = with_raw_amount(&r, "100.000").replace("NGN", "JPY");
    app.publish_raw(body.as_bytes()).await;
    app.wait_for(&r, RefundStatus::Pending).await;
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_unicode_reference_is_kept_exactly() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    // Non-ASCII letters, CJK and an emoji (4 bytes in UTF-8) are legitimate characters.
    let r = format!("R-ünïcødé-返金-😀-{}", uuid::Uuid::new_v4().simple());
    app.publish(&va_command(&r, "10.00")).await;
    let e = app.wait_final(&r).await;
    assert_eq!(e.refund_reference, r, "stored and echoed byte for byte");
    assert_eq!(e.status, RefundStatus::Completed, "{e:?}");
    assert_eq!(
        app.sandbox
            .ledger()
            .refund(&r)
            .expect("at provider")
            .submit_count,
        1
    );
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_control_and_invisible_characters_in_reference_are_dead_lettered() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let cases = [
        ("R-bell-\u{7}", "refundReference contains control characters"),
        ("R-\u{1b}[31mred", "refundReference contains control characters"),
        ("R-line\nbreak", "refundReference contains control characters"),
        ("R-\u{85}-nel", "refundReference contains control characters"),
        (
            "R-\u{202E}gpj.exe",
            "refundReference contains the invisible formatting character U+202E (zero-width or bidirectional control)",
        ),
        (
            "R-zero\u{200B}width",
            "refundReference contains the invisible formatting character U+200B (zero-width or bidirectional control)",
        ),
        (
            "\u{FEFF}R-bom",
            "refundReference contains the invisible formatting character U+FEFF (zero-width or bidirectional control)",
        ),
    ];
    for (r, expected) in cases {
        let body = va_command(r, "10.00").to_string();
        let reason = expect_dead_letter(&app, body.as_bytes()).await;
        assert_eq!(
            reason,
            format!("message has no usable refundReference: {expected}"),
            "{r:?}"
        );
    }
    // NUL inside JSON text is a control character too (and PostgreSQL refuses it).
    let body = br#"{"refundReference":"R-\u0000-nul","amount":"1"}"#;
    let reason = expect_dead_letter(&app, body).await;
    assert!(reason.ends_with("contains control characters"), "{reason}");
    // In another field (transactionReference) it is a problem of a usable command.
    let r = reference("txn-bidi");
    let mut cmd = va_command(&r, "10.00");
    cmd["transactionReference"] = json!("T-\u{202E}1");
    let message = expect_invalid(&mut app, &r, cmd.to_string().as_bytes()).await;
    assert_eq!(
        message,
        "transactionReference contains the invisible formatting character U+202E (zero-width or bidirectional control)"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_ten_kilobyte_reference_is_dead_lettered() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let r = "R".repeat(10 * 1024);
    let body = va_command(&r, "10.00").to_string();
    let reason = expect_dead_letter(&app, body.as_bytes()).await;
    assert_eq!(
        reason,
        "message has no usable refundReference: refundReference is 10240 characters long, at most 128 are allowed"
    );
    // 129 four-byte characters: counted in characters, not bytes, and still refused.
    let r = "😀".repeat(129);
    let body = va_command(&r, "10.00").to_string();
    let reason = expect_dead_letter(&app, body.as_bytes()).await;
    assert!(
        reason.ends_with("is 129 characters long, at most 128 are allowed"),
        "{reason}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_duplicate_json_keys_are_refused() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    // "amount" twice: serde_json would silently keep 1000.00. Refused, nothing sent.
    let r = reference("dupkey");
    let body = va_command(&r, "1.00").to_string().replace(
        r#""amount":"1.00""#,
        r#""amount":"1.00","amount":"1000.00""#,
    );
    let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
    assert_eq!(
        message,
        "amount appears more than once; a key may appear only once (which value counts would be ambiguous)"
    );
    // The exact same bytes again: a duplicate, acknowledged, no second event.
    app.publish_raw(body.as_bytes()).await;
    // The same reference with the other value first: a different command, dead-lettered.
    let swapped = va_command(&r, "1.00").to_string().replace(
        r#""amount":"1.00""#,
        r#""amount":"1000.00","amount":"1.00""#,
    );
    let reason = expect_dead_letter(&app, swapped.as_bytes()).await;
    assert!(
        reason.contains("already exists with a different command (status REFUND_FAIL)"),
        "{reason}"
    );
    assert_eq!(app.events_for(&r).len(), 1, "one event only");

    // Nested duplicates are named by their path.
    let r = reference("dupnested");
    let body = va_command(&r, "1.00").to_string().replace(
        r#""bankCode":"000012""#,
        r#""bankCode":"000012","bankCode":"999999""#,
    );
    let message = expect_invalid(&mut app, &r, body.as_bytes()).await;
    assert!(
        message.starts_with("destination.bankCode appears more than once"),
        "{message}"
    );

    // A duplicated refundReference cannot be tied to one refund: dead letter.
    let r = reference("dupref");
    let other = reference("dupref-other");
    let body = va_command(&r, "1.00").to_string().replace(
        &format!(r#""refundReference":"{r}""#),
        &format!(r#""refundReference":"{r}","refundReference":"{other}""#),
    );
    let reason = expect_dead_letter(&app, body.as_bytes()).await;
    assert_eq!(
        reason,
        "message has no usable refundReference: refundReference appears more than once; a key may appear only once"
    );
    assert_eq!(app.db_status(&r).await, None);
    assert_eq!(app.db_status(&other).await, None);
    assert_eq!(app.sandbox.ledger().submit_calls, 0);
    app.cleanup().await;
}

// ---- the webhook ingress ----

fn va_body(tag: &str) -> String {
    format!(
        r#"{{"transactionType":"CREDIT","amount":10.00,"narration":"order","classificationCode":"NIP","success":true,"traceID":"{tag}","transactionReference":"{tag}","accountID":"0040088210","transactionTime":"25/01/2024 01:35:27 AM"}}"#
    )
}

async fn post(
    base: &str,
    provider: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/webhooks/{provider}"))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.expect("ingress reachable");
    let status = answer.status().as_u16();
    let text = answer.text().await.expect("answer body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("the answer ({status}) is JSON: {text:?}"));
    (status, json)
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"].as_str().unwrap_or_default()
}

/// Messages the ingress published to `provider.webhooks` that no consumer took yet.
async fn queued_webhooks(app: &TestApp) -> u32 {
    app.queue_depth(&app.topology.webhooks_queue).await
}

#[tokio::test]
async fn hostile_oversized_webhook_bodies_are_413() {
    // No worker: whatever the ingress queues stays in the queue, where we can count it.
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let huge = va_body(&"x".repeat(300 * 1024));
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &[huge.as_bytes()]);
    for provider in ["va_services", "bpn", "binance_pay", "bvnk"] {
        let headers = [
            ("content-type", "application/json"),
            ("X-VA-Signature", sig.as_str()),
        ];
        let (status, answer) = post(&base, provider, &headers, huge.clone()).await;
        assert_eq!(status, 413, "{provider}: {answer}");
        assert_eq!(code(&answer), "payload_too_large", "{answer}");
    }
    // Without a Content-Length (chunked), the limit is enforced while reading.
    let (status, answer) = post_chunked(&base, "va_services", huge.as_bytes(), &sig).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(code(&answer), "payload_too_large", "{answer}");
    // Exactly at the limit is read (and then judged by its signature).
    let at_limit = "x".repeat(256 * 1024);
    let (status, answer) = post(&base, "va_services", &[("X-VA-Signature", "00")], at_limit).await;
    assert_eq!((status, code(&answer)), (401, "bad_signature"));
    assert_eq!(queued_webhooks(&app).await, 0, "nothing refused was queued");
    app.cleanup().await;
}

/// Posts `body` with `Transfer-Encoding: chunked` over a raw connection.
async fn post_chunked(base: &str, provider: &str, body: &[u8], sig: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /webhooks/{provider} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-VA-Signature: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    for chunk in body.chunks(16 * 1024) {
        let frame = format!("{:x}\r\n", chunk.len());
        // The server may stop reading (and answer) as soon as the limit is passed.
        if stream.write_all(frame.as_bytes()).await.is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP answer: {text:?}"));
    let json_start = text.find('{').expect("a JSON body");
    let json_end = text.rfind('}').expect("a JSON body");
    let json = serde_json::from_str(&text[json_start..=json_end]).expect("JSON error body");
    (status, json)
}

#[tokio::test]
async fn hostile_wrong_content_types_at_the_ingress_are_415() {
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let body = va_body(&reference("ctype"));
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "text/html; charset=utf-8",
        "application/jsonx",
        "",
    ] {
        let headers = [
            ("content-type", content_type),
            ("X-VA-Signature", sig.as_str()),
        ];
        let (status, answer) = post(&base, "va_services", &headers, body.clone()).await;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
        assert_eq!(code(&answer), "unsupported_media_type", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("is not JSON; send application/json"),
            "{answer}"
        );
    }
    assert_eq!(queued_webhooks(&app).await, 0);
    // JSON in its usual spellings, and no content type at all, are accepted.
    for content_type in [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("Application/JSON"),
        Some("application/vnd.provider+json"),
        None,
    ] {
        let mut headers = vec![("X-VA-Signature", sig.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let (status, answer) = post(&base, "va_services", &headers, body.clone()).await;
        assert_eq!(status, 200, "{content_type:?}: {answer}");
    }
    app.eventually("each accepted webhook is queued", || async {
        queued_webhooks(&app).await == 5
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_webhook_signatures_of_the_wrong_length_are_401() {
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let body = va_body(&reference("siglen"));
    let good = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
    let sha512_len = format!("{good}{good}");
    let long = "a".repeat(10 * 1024);
    let wrong_lengths = [
        good[..62].to_string(), // one byte short
        good[..63].to_string(), // odd number of hex digits
        format!("{good}00"),    // one byte too many
        sha512_len,             // an HMAC-SHA512's length
        long,                   // 10 kB
        "zz".repeat(32),        // right length, not hex
        String::new(),          // empty
    ];
    for (provider, header) in [
        ("va_services", "X-VA-Signature"),
        ("bpn", "X-BPN-Signature"),
        ("bvnk", "x-signature"),
    ] {
        for sig in &wrong_lengths {
            let headers = [("content-type", "application/json"), (header, sig.as_str())];
            let (status, answer) = post(&base, provider, &headers, body.clone()).await;
            assert_eq!(status, 401, "{provider} {} chars: {answer}", sig.len());
            assert_eq!(code(&answer), "bad_signature", "{answer}");
        }
    }
    // Binance Pay: RSA signatures (256 bytes for the 2048-bit test key) of other lengths.
    use base64::Engine;
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0x5au8; n]);
    let now = chrono::Utc::now().timestamp_millis().to_string();
    for sig in [
        b64(255),
        b64(257),
        b64(1),
        b64(4096),
        String::new(),
        "not base64 at all!".to_string(),
        "=".repeat(344),
    ] {
        let headers = [
            ("content-type", "application/json"),
            ("BinancePay-Timestamp", now.as_str()),
            ("BinancePay-Nonce", "5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA"),
            ("BinancePay-Signature", sig.as_str()),
        ];
        let (status, answer) = post(&base, "binance_pay", &headers, body.clone()).await;
        assert_eq!(status, 401, "binance {} chars: {answer}", sig.len());
        assert_eq!(code(&answer), "bad_signature", "{answer}");
    }
    assert_eq!(queued_webhooks(&app).await, 0);
    app.cleanup().await;
}

/// Signs a Binance Pay webhook like Binance: base64 RSA-SHA256 of "ts\nnonce\nbody\n".
fn binance_sign(timestamp: &str, nonce: &str, body: &str) -> String {
    use base64::Engine;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(BINANCE_TEST_PRIVATE_KEY).expect("test key");
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let signature = signer.sign(format!("{timestamp}\n{nonce}\n{body}\n").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
}

#[tokio::test]
async fn hostile_binance_pay_webhook_replayed_outside_the_tolerance_is_401_stale() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    let biz_id = reference("prepay");
    let body = json!({
        "bizType": "PAY", "bizIdStr": biz_id, "bizStatus": "PAY_SUCCESS",
        "data": json!({"merchantTradeNo": "m1", "totalFee": "0.88", "currency": "USDT"}).to_string(),
    })
    .to_string();
    let nonce = "5RhaTrZPhknNv0kDSA2UQ67cPMVNS4sA";
    let now = chrono::Utc::now().timestamp_millis();
    let send = |ts: String| {
        let (base, body) = (base.clone(), body.clone());
        async move {
            let sig = binance_sign(&ts, nonce, &body);
            let headers = [
                ("content-type", "application/json"),
                ("BinancePay-Timestamp", ts.as_str()),
                ("BinancePay-Nonce", nonce),
                ("BinancePay-Signature", sig.as_str()),
            ];
            post(&base, "binance_pay", &headers, body).await
        }
    };
    // Correctly signed, but 301 s old (a replay), 301 s ahead, or from 1970: stale.
    for ts in [now - 301_000, now + 301_000, 0, i64::MIN, i64::MAX] {
        let (status, answer) = send(ts.to_string()).await;
        assert_eq!(status, 401, "{ts}: {answer}");
        assert_eq!(code(&answer), "stale_timestamp", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("from our clock (tolerance 300000 ms)"),
            "{answer}"
        );
    }
    // A timestamp that is not a number is a bad signature (it cannot be checked).
    for ts in ["yesterday", "1e12", "99999999999999999999999"] {
        let (status, answer) = send(ts.into()).await;
        assert_eq!(
            (status, code(&answer)),
            (401, "bad_signature"),
            "{ts}: {answer}"
        );
    }
    // The same notification, fresh: accepted and applied once (the control).
    let (status, answer) = send(now.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"returnCode": "SUCCESS", "returnMessage": null})
    );
    app.eventually(
        "the fresh notification reaches the pay-ins ledger",
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_webhook_inbox")
                .fetch_one(&app.pool)
                .await
                .unwrap();
            n == 1
        },
    )
    .await;
    // The same signed notification again, within the window: a replay, refused.
    let (status, answer) = send(now.to_string()).await;
    assert_eq!((status, code(&answer)), (401, "replayed"), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_webhook_inbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "the stale replays were never queued");
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_bvnk_webhook_with_a_stale_signed_timestamp_is_401_stale() {
    // No worker: whatever the ingress queues stays in the queue, where we can count it.
    let app = TestApp::spawn().await;
    let base = app.serve_http().await;
    let body = |ts: &str| {
        format!(
            r#"{{"event":"bvnk:payment:payout:status-change","eventId":"e-1","timestamp":"{ts}","data":{{"status":"COMPLETED","customerReference":"r-1","transactionReference":"t-1"}}}}"#
        )
    };
    let now = chrono::Utc::now();
    for ts in [
        now - chrono::Duration::seconds(301),
        now + chrono::Duration::seconds(301),
    ] {
        let body = body(&ts.to_rfc3339());
        let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
        let headers = [
            ("content-type", "application/json"),
            ("x-signature", sig.as_str()),
        ];
        let (status, answer) = post(&base, "bvnk", &headers, body).await;
        assert_eq!(
            (status, code(&answer)),
            (401, "stale_timestamp"),
            "{answer}"
        );
    }
    assert_eq!(queued_webhooks(&app).await, 0);
    // The control: fresh, accepted and queued.
    let body = body(&now.to_rfc3339());
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
    let headers = [
        ("content-type", "application/json"),
        ("x-signature", sig.as_str()),
    ];
    let (status, answer) = post(&base, "bvnk", &headers, body).await;
    assert_eq!(status, 200, "{answer}");
    app.cleanup().await;
}

#[tokio::test]
async fn hostile_signed_but_unparsable_webhooks_are_dead_lettered_with_a_reason() {
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    // The signature is valid (a provider's bug, or a leaked secret): queued, then
    // dead-lettered by the consumer with the parser's reason, never dropped.
    let bomb = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let thousand = format!(
        r#"{{"event":"bvnk:payment:payin:status-change","data":{{"transactionReference":"p1","status":"COMPLETED","amount":{{"value":{},"currencyCode":"EUR"}}}}}}"#,
        "9".repeat(1000)
    );
    for (provider, header, body) in [
        ("bvnk", "x-signature", bomb.clone()),
        ("va_services", "X-VA-Signature", bomb),
        ("bpn", "X-BPN-Signature", "not json".to_string()),
        ("bvnk", "x-signature", thousand),
    ] {
        let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
        let headers = [("content-type", "application/json"), (header, sig.as_str())];
        let (status, answer) = post(&base, provider, &headers, body.clone()).await;
        assert_eq!(status, 200, "{provider}: {answer}");
        let (kept, reason) = webhook_dlq_get(&app).await.expect("a dead letter");
        assert_eq!(kept, body.as_bytes(), "the body is kept");
        assert!(reason.contains("malformed webhook"), "{provider}: {reason}");
    }
    app.cleanup().await;
}

/// Takes one message from `provider.webhooks.dlq`: (body, reason header).
async fn webhook_dlq_get(app: &TestApp) -> Option<(Vec<u8>, String)> {
    let channel = app.connection.create_channel().await.expect("channel");
    for _ in 0..200 {
        if let Some(msg) = channel
            .basic_get(
                app.topology.webhooks_dlq.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic_get")
        {
            let reason = topology::header_str(msg.delivery.properties.headers(), ERROR_HEADER)
                .unwrap_or_default();
            msg.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            return Some((msg.delivery.data, reason));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test]
async fn hostile_oversized_headers_on_a_signed_webhook_do_not_break_queueing() {
    // Header names and values are not signed: whoever replays a signed body may add any.
    // A name over AMQP's 255-byte short string, or more header bytes than one AMQP frame,
    // must not corrupt the publish: the webhook is queued (without them) and applied.
    let mut app = TestApp::spawn().await;
    app.start_worker();
    let base = app.serve_http().await;
    let txn = reference("txn-headers");
    let body = va_body(&txn);
    let sig = hmac_sha256_hex(SECRET.as_bytes(), &[body.as_bytes()]);
    let long_name = format!("x-{}", "n".repeat(300));
    let pad_value = "v".repeat(2000);
    let pad_names: Vec<String> = (0..80).map(|i| format!("x-pad-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("X-VA-Signature", sig.as_str()),
        (long_name.as_str(), "1"),
    ];
    for name in &pad_names {
        headers.push((name.as_str(), pad_value.as_str()));
    }
    for _ in 0..2 {
        let (status, answer) = post(&base, "va_services", &headers, body.clone()).await;
        assert_eq!(status, 200, "{answer}");
    }
    app.eventually("the pay-in reaches the ledger", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pay_ins WHERE transaction_reference = $1")
                .bind(&txn)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        n == 1
    })
    .await;
    app.cleanup().await;
}
