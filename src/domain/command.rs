//! Refund commands as upstream systems publish them, and their validation.
//!
//! Parsing is two-staged on purpose: first we only need a usable `refundReference` (without
//! it the message cannot be tied to a refund and goes to the dead-letter queue); everything
//! else is validated afterwards, and every problem found is reported at once, so a
//! `REFUND_FAIL`/`INVALID_COMMAND` event tells the publisher precisely what to fix.

use super::money::{self, MoneyError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Longest `refundReference` we accept. Longer ones go to the dead-letter queue: they cannot
/// be stored as a key nor sent to any provider.
pub(crate) const MAX_REFERENCE_LEN: usize = 128;
/// Longest free-text field (`reason`, `customerNote`).
pub(crate) const MAX_TEXT_LEN: usize = 500;

/// The payment providers refund-worker can drive.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// VA Services (Transaction Point virtual accounts).
    VaServices,
    /// BPN, Better Payment Network.
    Bpn,
    /// Binance Pay.
    BinancePay,
    /// BVNK.
    Bvnk,
}

impl ProviderName {
    /// Every provider, in a stable order.
    pub const ALL: [ProviderName; 4] = [Self::VaServices, Self::Bpn, Self::BinancePay, Self::Bvnk];

    /// The wire name (`va_services`, `bpn`, `binance_pay`, `bvnk`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VaServices => "va_services",
            Self::Bpn => "bpn",
            Self::BinancePay => "binance_pay",
            Self::Bvnk => "bvnk",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The currencies the provider's docs say its refunds support, where they limit them
    /// (BVNK: "GBP, USD, EUR"); `None` where the docs name no limit.
    pub fn refund_currencies(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Bvnk => Some(&["GBP", "USD", "EUR"]),
            Self::VaServices | Self::Bpn | Self::BinancePay => None,
        }
    }

    /// Whether the adapter asks the provider what is left to refund before every refund
    /// call, and refuses more (`AMOUNT_EXCEEDS_REFUNDABLE`) without calling: BVNK's
    /// estimate (`maxAvailableToRefund`) and BPN's order lookup. The over-refund guard's
    /// source is then `provider` when nothing else knows the payment's amount.
    pub fn checks_refundable_first(self) -> bool {
        match self {
            Self::Bvnk | Self::Bpn => true,
            Self::VaServices | Self::BinancePay => false,
        }
    }
}

impl fmt::Display for ProviderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the money goes back to (bank account), required by VA Services.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Destination account number.
    #[schemars(length(min = 1, max = 64))]
    pub account_number: String,
    /// Destination bank code.
    #[schemars(length(min = 1, max = 64))]
    pub bank_code: String,
}

impl fmt::Debug for Destination {
    // Account numbers are personal data: only the last four digits ever reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("account_number", &mask(&self.account_number))
            .field("bank_code", &self.bank_code)
            .finish()
    }
}

/// Masks all but the last four characters (`******7886`).
pub(crate) fn mask(value: &str) -> String {
    let n = value.chars().count();
    let keep = n.saturating_sub(4);
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i < keep { '*' } else { c })
        .collect()
}

/// A refund command, as published to `refunds` with routing key `refund.request`.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(title = "RefundCommand")]
pub struct RefundCommand {
    /// Unique reference; the idempotency key for the whole pipeline.
    #[schemars(length(min = 1, max = 128))]
    pub refund_reference: String,
    /// Which provider holds the payment.
    pub provider: ProviderName,
    /// The original payment at the provider.
    #[schemars(length(min = 1, max = 128))]
    pub transaction_reference: String,
    /// Amount to refund, exact; no more decimals than the currency has.
    #[serde(with = "rust_decimal::serde::str")]
    #[schemars(with = "super::money::DecimalText")]
    pub amount: Decimal,
    /// Currency code (ISO 4217 or a crypto asset).
    #[schemars(length(min = 3, max = 5))]
    pub currency: String,
    /// Why the refund is made.
    #[schemars(length(min = 1, max = 500))]
    pub reason: String,
    /// Optional note from the customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub customer_note: Option<String>,
    /// Bank account to refund to (required by VA Services).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    /// The original payment's amount, for the over-refund guard.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    #[schemars(with = "Option<super::money::DecimalText>")]
    pub payment_amount: Option<Decimal>,
    /// Where to deliver the merchant webhook for this refund (http or https).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub callback_url: Option<String>,
    /// Opaque data passed through to events and providers that accept it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub metadata: Option<Value>,
}

/// Why a message could not become a valid command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON, or not a JSON object: dead-lettered.
    #[error("message is not a JSON object: {0}")]
    NotJson(String),
    /// JSON object without a usable `refundReference`: dead-lettered.
    #[error("message has no usable refundReference: {0}")]
    NoReference(String),
    /// A command with a usable reference that fails validation: `REFUND_FAIL`/`INVALID_COMMAND`.
    #[error("invalid command {refund_reference}: {}", problems.join("; "))]
    Invalid {
        /// The command's reference.
        refund_reference: String,
        /// Every problem found, each naming its field.
        problems: Vec<String>,
        /// The raw JSON, kept with the failed refund.
        raw: Value,
    },
}

impl CommandError {
    /// The precise, publisher-facing message.
    pub fn message(&self) -> String {
        match self {
            Self::Invalid { problems, .. } => problems.join("; "),
            other => other.to_string(),
        }
    }
}

/// Extracts and validates the `refundReference` of any JSON value.
pub(crate) fn reference_of(raw: &Value) -> Result<String, CommandError> {
    let obj = raw
        .as_object()
        .ok_or_else(|| CommandError::NotJson(format!("expected an object, got {}", kind(raw))))?;
    match obj.get("refundReference") {
        None | Some(Value::Null) => Err(CommandError::NoReference(
            "refundReference is missing".into(),
        )),
        Some(Value::String(s)) => check_reference("refundReference", s)
            .map(|()| s.clone())
            .map_err(CommandError::NoReference),
        Some(other) => Err(CommandError::NoReference(format!(
            "refundReference must be a string, got {}",
            kind(other)
        ))),
    }
}

/// A reference must be 1..=128 printable characters without surrounding blanks.
fn check_reference(field: &str, s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("{field} is empty"));
    }
    let len = s.chars().count();
    if len > MAX_REFERENCE_LEN {
        return Err(format!(
            "{field} is {len} characters long, at most {MAX_REFERENCE_LEN} are allowed"
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    if let Some(c) = s.chars().find(|c| is_invisible_format(*c)) {
        return Err(format!(
            "{field} contains the invisible formatting character U+{:04X} (zero-width or bidirectional control)",
            u32::from(c)
        ));
    }
    if s.trim() != s {
        return Err(format!("{field} has leading or trailing whitespace"));
    }
    Ok(())
}

/// Invisible characters that make two references look the same while being different
/// (zero-width spaces and joiners, bidirectional overrides and isolates, word joiners, the
/// byte-order mark). They are Unicode format characters, not control characters, so
/// `char::is_control` lets them through.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
    )
}

/// Most duplicate keys reported for one message.
const MAX_DUPLICATES_REPORTED: usize = 10;

/// Every key that appears more than once in the same JSON object of `bytes` (at any depth),
/// as a path (`amount`, `destination.bankCode`, `metadata.items[2].id`); at most ten.
///
/// `serde_json` keeps the last of duplicate keys silently; for a money command that is
/// ambiguous (which `"amount"` did the publisher mean?), so duplicates are refused.
/// Bytes that are not JSON give an empty list (the parse error is reported elsewhere).
pub(crate) fn duplicate_keys(bytes: &[u8]) -> Vec<String> {
    use serde::de::DeserializeSeed;
    let found = std::cell::RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let walk = DuplicateWalk {
        path: String::new(),
        found: &found,
    };
    if walk.deserialize(&mut de).is_err() {
        return Vec::new();
    }
    found.into_inner()
}

/// Walks a JSON document without building it, recording duplicate keys.
struct DuplicateWalk<'a> {
    path: String,
    found: &'a std::cell::RefCell<Vec<String>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DuplicateWalk<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DuplicateWalk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while seq
            .next_element_seed(DuplicateWalk {
                path: format!("{}[{i}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                let mut found = self.found.borrow_mut();
                if found.len() < MAX_DUPLICATES_REPORTED && !found.contains(&path) {
                    found.push(path.clone());
                }
            }
            map.next_value_seed(DuplicateWalk {
                path,
                found: self.found,
            })?;
        }
        Ok(())
    }
}

impl RefundCommand {
    /// Parses and validates raw message bytes (duplicate keys included).
    pub fn parse(bytes: &[u8]) -> Result<Self, CommandError> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            CommandError::NotJson(format!("{e} (at line {}, column {})", e.line(), e.column()))
        })?;
        Self::validate(raw, &duplicate_keys(bytes))
    }

    /// Validates an already parsed JSON value (whose duplicate keys, if any, are lost).
    pub fn from_value(raw: Value) -> Result<Self, CommandError> {
        Self::validate(raw, &[])
    }

    /// Validates a parsed JSON value, given the duplicate keys [`duplicate_keys`] found in
    /// its text: a duplicated `refundReference` makes the message unusable (dead letter),
    /// any other duplicate is a problem of the command (`INVALID_COMMAND`).
    pub fn validate(raw: Value, duplicates: &[String]) -> Result<Self, CommandError> {
        if duplicates.iter().any(|d| d == "refundReference") {
            return Err(CommandError::NoReference(
                "refundReference appears more than once; a key may appear only once".into(),
            ));
        }
        let refund_reference = reference_of(&raw)?;
        let obj = raw.as_object().cloned().unwrap_or_default();
        let mut v = Validator {
            obj: &obj,
            problems: duplicates
                .iter()
                .map(|d| {
                    format!("{d} appears more than once; a key may appear only once (which value counts would be ambiguous)")
                })
                .collect(),
        };

        let provider = match v.required_str("provider") {
            Some(p) => match ProviderName::parse(&p) {
                Some(p) => Some(p),
                None => {
                    v.problems.push(format!(
                        "provider `{}` is unknown (expected one of va_services, bpn, binance_pay, bvnk)",
                        p.chars().take(40).collect::<String>()
                    ));
                    None
                }
            },
            None => None,
        };
        let transaction_reference = v.reference("transactionReference");
        let currency = v.required_str("currency").and_then(|c| {
            if money::currency_decimals(&c).is_some() {
                Some(c)
            } else {
                v.problems
                    .push(format!("currency: {}", MoneyError::UnknownCurrency(c)));
                None
            }
        });
        if let (Some(p), Some(c)) = (provider, currency.as_deref()) {
            if let Some(allowed) = p.refund_currencies() {
                if !allowed.contains(&c) {
                    v.problems.push(format!(
                        "currency {c} is not one {p} refunds support ({})",
                        allowed.join(", ")
                    ));
                }
            }
        }
        let amount = v.amount("amount", currency.as_deref(), true);
        let payment_amount = v.amount("paymentAmount", currency.as_deref(), false);
        let reason = v.text("reason", true);
        let customer_note = v.text("customerNote", false);
        let destination = v.destination(provider);
        let callback_url = v.callback_url();
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => None,
            Some(m @ Value::Object(_)) => Some(m.clone()),
            Some(other) => {
                v.problems
                    .push(format!("metadata must be an object, got {}", kind(other)));
                None
            }
        };
        if let (Some(a), Some(p)) = (amount, payment_amount) {
            if a > p {
                v.problems
                    .push(format!("amount {a} is greater than paymentAmount {p}"));
            }
        }

        match (provider, transaction_reference, amount, currency, reason) {
            (
                Some(provider),
                Some(transaction_reference),
                Some(amount),
                Some(currency),
                Some(reason),
            ) if v.problems.is_empty() => Ok(Self {
                refund_reference,
                provider,
                transaction_reference,
                amount,
                currency,
                reason,
                customer_note,
                destination,
                payment_amount,
                callback_url,
                metadata,
            }),
            _ => Err(CommandError::Invalid {
                refund_reference,
                problems: v.problems,
                raw,
            }),
        }
    }

    /// The command as canonical JSON (keys sorted), the form whose hash decides whether a
    /// second message with the same reference is the same command.
    pub fn canonical_json(raw: &Value) -> String {
        // serde_json's Map is a BTreeMap (no `preserve_order`), so keys come out sorted.
        raw.to_string()
    }
}

struct Validator<'a> {
    obj: &'a Map<String, Value>,
    problems: Vec<String>,
}

impl Validator<'_> {
    fn required_str(&mut self, field: &str) -> Option<String> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                self.problems.push(format!("{field} is missing"));
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.problems.push(format!("{field} is empty"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problems
                    .push(format!("{field} must be a string, got {}", kind(other)));
                None
            }
        }
    }

    fn reference(&mut self, field: &str) -> Option<String> {
        let s = self.required_str(field)?;
        match check_reference(field, &s) {
            Ok(()) => Some(s),
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }

    fn text(&mut self, field: &str, required: bool) -> Option<String> {
        let s = if required {
            self.required_str(field)?
        } else {
            match self.obj.get(field) {
                None | Some(Value::Null) => return None,
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    self.problems
                        .push(format!("{field} must be a string, got {}", kind(other)));
                    return None;
                }
            }
        };
        let len = s.chars().count();
        if len > MAX_TEXT_LEN {
            self.problems.push(format!(
                "{field} is {len} characters long, at most {MAX_TEXT_LEN} are allowed"
            ));
            return None;
        }
        Some(s)
    }

    fn amount(&mut self, field: &str, currency: Option<&str>, required: bool) -> Option<Decimal> {
        let value = match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.problems.push(format!("{field} is missing"));
                }
                return None;
            }
            Some(v) => v,
        };
        let parsed = money::parse_amount(value).and_then(|a| match currency {
            Some(c) => money::check_amount(a, c).map(|()| a),
            None if a <= Decimal::ZERO => Err(MoneyError::NotPositive(a)),
            None => Ok(a),
        });
        match parsed {
            Ok(a) => Some(a),
            Err(e) => {
                self.problems.push(format!("{field} {e}"));
                None
            }
        }
    }

    fn destination(&mut self, provider: Option<ProviderName>) -> Option<Destination> {
        let required = provider == Some(ProviderName::VaServices);
        let obj = match self.obj.get("destination") {
            None | Some(Value::Null) => {
                if required {
                    self.problems
                        .push("destination is missing (required by va_services)".into());
                }
                return None;
            }
            Some(Value::Object(o)) => o,
            Some(other) => {
                self.problems.push(format!(
                    "destination must be an object, got {}",
                    kind(other)
                ));
                return None;
            }
        };
        let mut field = |name: &str| match obj.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 64 => Some(s.clone()),
            Some(Value::String(_)) => {
                self.problems
                    .push(format!("destination.{name} must be 1 to 64 characters"));
                None
            }
            None | Some(Value::Null) => {
                self.problems.push(format!("destination.{name} is missing"));
                None
            }
            Some(other) => {
                self.problems.push(format!(
                    "destination.{name} must be a string, got {}",
                    kind(other)
                ));
                None
            }
        };
        let account_number = field("accountNumber");
        let bank_code = field("bankCode");
        Some(Destination {
            account_number: account_number?,
            bank_code: bank_code?,
        })
    }

    fn callback_url(&mut self) -> Option<String> {
        let s = self.text("callbackUrl", false)?;
        match url::Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(s),
            Ok(u) => {
                self.problems.push(format!(
                    "callbackUrl must be an http(s) URL with a host, got scheme `{}`",
                    u.scheme()
                ));
                None
            }
            Err(e) => {
                self.problems.push(format!("callbackUrl is not a URL: {e}"));
                None
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "refundReference": "rf-1",
            "provider": "va_services",
            "transactionReference": "000012240124191535300537886000",
            "amount": "25.17",
            "currency": "NGN",
            "reason": "Order cancelled!",
            "destination": {"accountNumber": "0040088210", "bankCode": "000012"}
        })
    }

    fn problems(v: Value) -> Vec<String> {
        match RefundCommand::from_value(v) {
            Err(CommandError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_command_parses_exactly() {
        let bytes =
            br#"{"refundReference":"rf-1","provider":"va_services","transactionReference":"t1",
            "amount":25.17,"currency":"NGN","reason":"r","paymentAmount":100,
            "destination":{"accountNumber":"0040088210","bankCode":"000012"}}"#;
        let c = RefundCommand::parse(bytes).unwrap();
        assert_eq!(c.amount.to_string(), "25.17");
        assert_eq!(c.payment_amount.unwrap().to_string(), "100");
        assert_eq!(c.provider, ProviderName::VaServices);
    }

    #[test]
    fn not_json_and_missing_reference_are_dead_letters() {
        assert!(matches!(
            RefundCommand::parse(b"{nope"),
            Err(CommandError::NotJson(_))
        ));
        assert!(matches!(
            RefundCommand::parse(b"[1,2]"),
            Err(CommandError::NotJson(_))
        ));
        assert!(matches!(
            RefundCommand::parse(br#"{"amount": 1}"#),
            Err(CommandError::NoReference(_))
        ));
        assert!(matches!(
            RefundCommand::parse(br#"{"refundReference": 17}"#),
            Err(CommandError::NoReference(m)) if m.contains("must be a string")
        ));
        let long = format!(r#"{{"refundReference": "{}"}}"#, "x".repeat(10_000));
        assert!(matches!(
            RefundCommand::parse(long.as_bytes()),
            Err(CommandError::NoReference(m)) if m.contains("10000 characters")
        ));
        assert!(matches!(
            RefundCommand::parse(br#"{"refundReference": "a\u0000b"}"#),
            Err(CommandError::NoReference(m)) if m.contains("control")
        ));
    }

    #[test]
    fn every_problem_is_named() {
        let mut v = valid();
        v["amount"] = json!("-5");
        v["provider"] = json!("paypal");
        v.as_object_mut().unwrap().remove("reason");
        let p = problems(v);
        assert!(
            p.iter().any(|m| m.contains("provider `paypal` is unknown")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m == "reason is missing"), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("amount must be greater than zero")),
            "{p:?}"
        );
    }

    #[test]
    fn zero_and_too_many_decimals_are_invalid() {
        let mut v = valid();
        v["amount"] = json!(0);
        assert!(problems(v)[0].contains("greater than zero"));
        let mut v = valid();
        v["amount"] = json!("1.001");
        assert!(problems(v)[0].contains("more than the 2 decimal places NGN allows"));
    }

    #[test]
    fn bvnk_refunds_only_the_currencies_its_docs_list() {
        let cmd = |currency: &str| {
            json!({
                "refundReference": "rf-1", "provider": "bvnk", "transactionReference": "t1",
                "amount": "1.00", "currency": currency, "reason": "r"
            })
        };
        for ok in ["GBP", "USD", "EUR"] {
            assert!(RefundCommand::from_value(cmd(ok)).is_ok(), "{ok}");
        }
        assert_eq!(
            problems(cmd("NGN")),
            vec!["currency NGN is not one bvnk refunds support (GBP, USD, EUR)"]
        );
    }

    #[test]
    fn va_services_needs_a_destination() {
        let mut v = valid();
        v.as_object_mut().unwrap().remove("destination");
        assert_eq!(
            problems(v),
            vec!["destination is missing (required by va_services)"]
        );
        let mut v = valid();
        v["provider"] = json!("bvnk");
        v["currency"] = json!("EUR");
        v.as_object_mut().unwrap().remove("destination");
        assert!(RefundCommand::from_value(v).is_ok());
    }

    #[test]
    fn amount_above_payment_amount_is_invalid() {
        let mut v = valid();
        v["paymentAmount"] = json!("20");
        assert_eq!(
            problems(v),
            vec!["amount 25.17 is greater than paymentAmount 20"]
        );
    }

    #[test]
    fn callback_url_must_be_http() {
        let mut v = valid();
        v["callbackUrl"] = json!("file:///etc/passwd");
        assert!(problems(v)[0].contains("http(s)"));
    }

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: Value = serde_json::from_str(r#"{"b":1, "a":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":2,"b":1}"#).unwrap();
        assert_eq!(
            RefundCommand::canonical_json(&a),
            RefundCommand::canonical_json(&b)
        );
    }

    #[test]
    fn duplicate_keys_are_found_and_refused() {
        assert!(duplicate_keys(br#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}"#).is_empty());
        assert_eq!(
            duplicate_keys(br#"{"a":1,"a":2,"d":{"x":1,"x":2},"l":[{"y":1,"y":1}]}"#),
            vec!["a", "d.x", "l[0].y"]
        );
        assert!(duplicate_keys(b"{nope").is_empty());
        let mut text = valid().to_string();
        text = text.replace(r#""amount":"25.17""#, r#""amount":"25.17","amount":"1""#);
        assert!(matches!(
            RefundCommand::parse(text.as_bytes()),
            Err(CommandError::Invalid { problems, .. }) if problems[0].starts_with("amount appears more than once")
        ));
        let text = valid().to_string().replace(
            r#""refundReference":"rf-1""#,
            r#""refundReference":"rf-1","refundReference":"rf-2""#,
        );
        assert!(matches!(
            RefundCommand::parse(text.as_bytes()),
            Err(CommandError::NoReference(m)) if m.contains("more than once")
        ));
    }

    #[test]
    fn invisible_characters_in_references_are_refused() {
        for bad in ["a\u{202E}b", "\u{200B}a", "a\u{FEFF}"] {
            assert!(
                check_reference("refundReference", bad)
                    .unwrap_err()
                    .contains("invisible formatting character"),
                "{bad:?}"
            );
        }
        assert!(check_reference("refundReference", "R-ünïcødé-返金-😀").is_ok());
    }

    #[test]
    fn account_numbers_are_masked_in_debug() {
        let d = Destination {
            account_number: "0040088210".into(),
            bank_code: "000012".into(),
        };
        let s = format!("{d:?}");
        assert!(!s.contains("0040088210"));
        assert!(s.contains("******8210"));
    }
}
