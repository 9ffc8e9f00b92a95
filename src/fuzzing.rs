//! Fuzz harnesses: the functions that read untrusted bytes, each wrapped so it can be fed
//! any input. The cargo-fuzz targets in `fuzz/` and the corpus test `tests/fuzz_corpus.rs`
//! both call these, so a corpus file exercises exactly the code the fuzzer found it with.
//!
//! Every harness must return for every input (a clean `Err` is fine); a panic is a bug.
//! Where a result must hold an invariant (a valid command's amount fits its currency), the
//! harness asserts it, so the fuzzer reports a broken invariant as a crash too.

use crate::config::Config;
use crate::domain::{money, CallKind, Fee, ProviderName, RefundCommand};
use crate::pipeline::intake::MAX_COMMAND_BYTES;
use crate::providers::{binance_pay, bpn, bvnk, va_services, Providers, RefundRequest};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use std::sync::OnceLock;

/// Every fuzz target, by name (the name of its `fuzz/fuzz_targets/<name>.rs` and of its
/// corpus directory `fuzz/corpus/<name>/`).
pub const TARGETS: &[&str] = &[
    "command",
    "parse_va_services",
    "parse_bpn",
    "parse_binance_pay",
    "parse_bvnk",
    "verify_va_services",
    "verify_bpn",
    "verify_binance_pay",
    "verify_bvnk",
    "interpret_va_services",
    "interpret_bpn",
    "interpret_binance_pay",
    "interpret_bvnk",
    "retry_after",
    "ingress_headers",
    "dead_letter",
];

/// The public half of the test key the simulated Binance Pay signs with (never a real key):
/// the Binance Pay verification harness is configured with it.
const BINANCE_WEBHOOK_TEST_PUBLIC_KEY: &str =
    include_str!("../fixtures/binance_pay/webhook-test-public-key.pem");

/// The HMAC webhook secret the verification harnesses are configured with.
pub const WEBHOOK_SECRET: &str = "fuzz-webhook-secret";

/// Runs the harness called `target` on `data`; `false` for an unknown target name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "command" => command(data),
        "parse_va_services" => parse_webhook(ProviderName::VaServices, data),
        "parse_bpn" => parse_webhook(ProviderName::Bpn, data),
        "parse_binance_pay" => parse_webhook(ProviderName::BinancePay, data),
        "parse_bvnk" => parse_webhook(ProviderName::Bvnk, data),
        "verify_va_services" => verify_webhook(ProviderName::VaServices, data),
        "verify_bpn" => verify_webhook(ProviderName::Bpn, data),
        "verify_binance_pay" => verify_webhook(ProviderName::BinancePay, data),
        "verify_bvnk" => verify_webhook(ProviderName::Bvnk, data),
        "interpret_va_services" => interpret(ProviderName::VaServices, data),
        "interpret_bpn" => interpret(ProviderName::Bpn, data),
        "interpret_binance_pay" => interpret(ProviderName::BinancePay, data),
        "interpret_bvnk" => interpret(ProviderName::Bvnk, data),
        "retry_after" => retry_after(data),
        "ingress_headers" => ingress_headers(data),
        "dead_letter" => dead_letter(data),
        _ => return false,
    }
    true
}

/// What intake does with a command body: size limit, JSON, duplicate keys, validation,
/// canonical form. A command that validates must satisfy the contract's rules.
pub fn command(data: &[u8]) {
    if data.len() > MAX_COMMAND_BYTES {
        return;
    }
    let _ = RefundCommand::parse(data);
    let Ok(raw) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let duplicates = crate::domain::command::duplicate_keys(data);
    let _ = RefundCommand::canonical_json(&raw);
    if let Ok(cmd) = RefundCommand::validate(raw, &duplicates) {
        assert!(
            duplicates.is_empty(),
            "a command with duplicate keys validated"
        );
        assert!(
            cmd.amount > rust_decimal::Decimal::ZERO,
            "amount must be > 0"
        );
        assert!(
            money::check_amount(cmd.amount, &cmd.currency).is_ok(),
            "amount {} does not fit {}",
            cmd.amount,
            cmd.currency
        );
        if let Some(p) = cmd.payment_amount {
            assert!(cmd.amount <= p, "amount above paymentAmount");
        }
        let n = cmd.refund_reference.chars().count();
        assert!((1..=128).contains(&n), "reference length {n}");
        assert!(!cmd.refund_reference.chars().any(char::is_control));
        // The wire form of the amount is exact and parses back to the same value.
        let wire = money::format_amount(cmd.amount);
        assert_eq!(money::parse_amount_text(&wire).ok(), Some(cmd.amount));
    }
}

/// Providers configured like production, with the fuzz secrets (built once).
fn providers() -> &'static Providers {
    static PROVIDERS: OnceLock<Providers> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        let env = |key: &str| -> Option<String> {
            let (name, setting) = ["VA_SERVICES", "BPN", "BINANCE_PAY", "BVNK"]
                .iter()
                .find_map(|p| {
                    key.strip_prefix(&format!("PROVIDER_{p}_"))
                        .map(|rest| (*p, rest.to_owned()))
                })?;
            match setting.as_str() {
                "BASE_URL" => Some("http://127.0.0.1:9".into()),
                "API_KEY" => Some("fuzz-key".into()),
                "API_SECRET" => Some("fuzz-secret".into()),
                "WEBHOOK_SECRET" if name == "BINANCE_PAY" => {
                    Some(BINANCE_WEBHOOK_TEST_PUBLIC_KEY.to_owned())
                }
                "WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.into()),
                _ => None,
            }
        };
        let config = Config::from_lookup(env).expect("fuzz configuration");
        Providers::from_config(&config).expect("fuzz providers")
    })
}

/// A provider's webhook parser on a (verified) body.
pub fn parse_webhook(provider: ProviderName, data: &[u8]) {
    let direct = match provider {
        ProviderName::VaServices => va_services::parse_notification(data),
        ProviderName::Bpn => bpn::parse_notification(data),
        ProviderName::BinancePay => binance_pay::parse_notification(data),
        ProviderName::Bvnk => bvnk::parse_notification(data),
    };
    if let Some(adapter) = providers().get(provider) {
        assert_eq!(
            adapter.parse_webhook(data),
            direct,
            "the adapter parses alike"
        );
    }
}

/// Splits `data` at its first `n` newlines: `n` header texts, then the body.
fn split_fields(data: &[u8], n: usize) -> (Vec<&[u8]>, &[u8]) {
    let mut fields = Vec::with_capacity(n);
    let mut rest = data;
    for _ in 0..n {
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => {
                fields.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                fields.push(rest);
                rest = &[];
            }
        }
    }
    (fields, rest)
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    // Bytes that are not a valid header value cannot arrive over HTTP: leave it out.
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// A provider's webhook signature check. Input: the signature header(s), one per line,
/// then the body (HMAC providers: `signature\nbody`; Binance Pay:
/// `timestamp\nnonce\nsignature\nbody`). A first byte `!` (HMAC providers) replaces the
/// signature with the correct one, which must then verify.
pub fn verify_webhook(provider: ProviderName, data: &[u8]) {
    let Some(adapter) = providers().get(provider) else {
        return;
    };
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    let mut headers = HeaderMap::new();
    if provider == ProviderName::BinancePay {
        let (fields, body) = split_fields(data, 3);
        insert(&mut headers, "binancepay-timestamp", fields[0]);
        insert(&mut headers, "binancepay-nonce", fields[1]);
        insert(&mut headers, "binancepay-signature", fields[2]);
        let result = adapter.verify_webhook(&headers, body, now);
        // The primitive itself, also on text the headers could not carry; whatever the
        // adapter accepts, the primitive must accept too.
        if let Ok(key) = binance_pay::parse_public_key(BINANCE_WEBHOOK_TEST_PUBLIC_KEY) {
            let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
            let primitive = binance_pay::verify_webhook_signature(
                &key,
                &text(fields[0]),
                &text(fields[1]),
                body,
                &text(fields[2]),
            );
            if result.is_ok() {
                assert!(primitive, "the adapter accepted what the primitive refuses");
            }
        }
        return;
    }
    let header: &'static str = match provider {
        ProviderName::VaServices => "x-va-signature",
        ProviderName::Bpn => "x-bpn-signature",
        _ => "x-signature",
    };
    let forge = data.first() == Some(&b'!');
    let data = if forge { &data[1..] } else { data };
    let (fields, body) = split_fields(data, 1);
    if forge {
        let good = crate::providers::signing::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), &[body]);
        insert(&mut headers, header, good.as_bytes());
        assert_eq!(
            adapter.verify_webhook(&headers, body, now),
            Ok(()),
            "the correct signature must verify"
        );
    } else {
        insert(&mut headers, header, fields[0]);
        let result = adapter.verify_webhook(&headers, body, now);
        let good = crate::providers::signing::hmac_sha256_hex(WEBHOOK_SECRET.as_bytes(), &[body]);
        let given = String::from_utf8_lossy(fields[0]);
        if result.is_ok() {
            assert!(
                given.trim().eq_ignore_ascii_case(&good),
                "a wrong signature verified"
            );
        }
    }
}

const STATUSES: [u16; 12] = [200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 429, 500];

fn refund_request() -> RefundRequest {
    RefundRequest {
        refund_reference: "fuzz-ref-1".into(),
        transaction_reference: "fuzz-txn-1".into(),
        amount: rust_decimal::Decimal::new(2517, 2),
        currency: "USDT".into(),
        reason: "fuzz".into(),
        customer_note: None,
        destination: None,
        provider_reference: Some("fuzz-provider-ref".into()),
        metadata: None,
    }
}

/// A provider's response interpreters. Input: a selector byte (which function, submit or
/// status), a status byte (an HTTP status from a fixed list), then the response body.
pub fn interpret(provider: ProviderName, data: &[u8]) {
    let (selector, status, body) = match data {
        [s, c, body @ ..] => (*s, STATUSES[usize::from(*c) % STATUSES.len()], body),
        _ => return,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let refund = refund_request();
    match provider {
        ProviderName::VaServices => {
            let _ =
                va_services::interpret(status, body, selector % 2 == 0, chrono_tz::Africa::Lagos);
            let _ =
                va_services::parse_date(&String::from_utf8_lossy(body), chrono_tz::Africa::Lagos);
            let _ = va_services::interpret_history(
                status,
                body,
                &refund.refund_reference,
                chrono_tz::Africa::Lagos,
            );
        }
        ProviderName::Bpn => match selector % 3 {
            0 => {
                let _ = bpn::interpret_refund(status, body, "fuzz-order-1");
            }
            1 => {
                let _ = bpn::interpret_status(status, body, "fuzz-order-1");
                if let bpn::Lookup::Order(order) = bpn::interpret_detail(status, body) {
                    let _ = bpn::refund_outcome(&order, "fuzz-order-1");
                    let _ = bpn::plan_refund(&order, &refund);
                }
            }
            _ => {
                if let Ok(page) = bpn::interpret_list(status, body) {
                    for order in &page.orders {
                        let _ = bpn::refund_outcome(order, "fuzz-order-1");
                        let _ = bpn::plan_refund(order, &refund);
                    }
                }
            }
        },
        ProviderName::BinancePay => {
            let call = if selector % 2 == 0 {
                CallKind::Submit
            } else {
                CallKind::Status
            };
            let requested = (call == CallKind::Submit).then_some(refund.amount);
            let _ = binance_pay::interpret(status, body, call, requested);
        }
        ProviderName::Bvnk => match selector % 3 {
            0 => {
                let _ = bvnk::interpret_estimate(status, body, &refund);
            }
            1 => {
                let fee = Fee {
                    amount: rust_decimal::Decimal::new(100, 2),
                    currency: "USDT".into(),
                };
                let _ = bvnk::interpret_refund(status, body, &refund, Some(fee));
                let _ = bvnk::error_message(body);
            }
            _ => {
                let _ = bvnk::interpret_status(status, body, &refund.refund_reference);
            }
        },
    }
}

/// A provider's `Retry-After` (seconds, an HTTP-date, or anything): never more than the
/// ceiling, never a panic, whatever the text.
pub fn retry_after(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
    if let Some(wait) = crate::retry::parse_retry_after(&text, now) {
        assert!(
            wait <= crate::retry::MAX_RETRY_AFTER,
            "{wait:?} over the ceiling"
        );
    }
    // Through a header map, as a response brings it.
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, value);
        if let Some(wait) = crate::retry::retry_after_header(&headers) {
            assert!(wait <= crate::retry::MAX_RETRY_AFTER);
        }
    }
}

/// The ingress's header handling: the content-type check and the headers kept with a
/// queued webhook. Input: `name: value` lines (any bytes). What is kept must fit an AMQP
/// frame: names of at most 255 bytes, values within the total bound, never a credential.
pub fn ingress_headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = crate::provider_webhooks::ingress::content_type_problem(&headers);
    let table = crate::provider_webhooks::ingress::kept_headers(ProviderName::Bpn, &headers);
    let mut bytes = 0usize;
    for (key, value) in table.inner() {
        let key = key.as_str();
        assert!(key.len() <= 255, "an AMQP field name over 255 bytes");
        assert!(
            !key.contains("authorization") && !key.contains("cookie"),
            "a credential header was kept: {key}"
        );
        if let lapin::types::AMQPValue::LongString(v) = value {
            bytes += key.len() + v.as_bytes().len();
        }
    }
    // The provider header comes on top of the bound.
    assert!(bytes <= crate::provider_webhooks::ingress::KEPT_HEADER_BYTES + 64);
}

/// What `dlq list` decodes from a dead letter: headers (`name=value` lines, a line `#id`
/// sets the message id, `!reason` an `x-death` reason), a blank line, then the body.
pub fn dead_letter(data: &[u8]) {
    use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
    let split = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let (head, body) = (&data[..split], data.get(split + 2..).unwrap_or_default());
    let mut table = FieldTable::default();
    let mut props = lapin::BasicProperties::default();
    // What a broker can deliver: short strings of at most 255 bytes (lapin panics on more).
    let short = |s: &str| {
        let end = (0..=s.len().min(255))
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        ShortString::from(&s[..end])
    };
    for line in head.split(|b| *b == b'\n') {
        let text = String::from_utf8_lossy(line);
        if let Some(id) = text.strip_prefix('#') {
            props = props.with_message_id(short(id));
        } else if let Some(reason) = text.strip_prefix('!') {
            let mut death = FieldTable::default();
            death.insert(
                "reason".into(),
                AMQPValue::LongString(LongString::from(reason.as_bytes().to_vec())),
            );
            table.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
            );
        } else if let Some((k, v)) = text.split_once('=') {
            let value = match v.parse::<i64>() {
                Ok(n) => AMQPValue::LongLongInt(n),
                Err(_) => AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            };
            table.insert(short(k), value);
        }
    }
    let props = props.with_headers(table);
    let d = crate::broker::dlq::describe(1, &props, body);
    let again = crate::broker::dlq::describe(2, &props, body);
    assert_eq!(d.id, again.id, "a dead letter's id is stable");
    match props.message_id() {
        Some(id) => assert_eq!(d.id, id.as_str()),
        None => assert!(
            d.id.starts_with("sha256:") && d.id.len() == 7 + 16,
            "{}",
            d.id
        ),
    }
    assert!(d.body.len() <= 4096 + 3, "the shown body is bounded");
}
