//! Exact money: amounts are `rust_decimal::Decimal`, parsed from JSON text without ever
//! passing through `f64`, and checked against the currency's number of decimals.

use rust_decimal::Decimal;
use std::str::FromStr;

/// Why an amount could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The JSON value is neither a string nor a number.
    #[error("must be a decimal string or JSON number")]
    WrongType,
    /// The text is not a plain decimal (exponents, 1,000 digits, letters...).
    #[error("`{0}` is not a plain decimal number with at most 28 significant digits")]
    NotDecimal(String),
    /// Zero or negative.
    #[error("must be greater than zero, got {0}")]
    NotPositive(Decimal),
    /// More fractional digits than the currency has.
    #[error("{amount} has more than the {decimals} decimal places {currency} allows")]
    TooManyDecimals {
        /// The amount as given.
        amount: Decimal,
        /// The currency code.
        currency: String,
        /// How many decimals the currency has.
        decimals: u32,
    },
    /// Unknown currency code.
    #[error("unknown currency `{0}` (expected an ISO 4217 code or a supported crypto asset)")]
    UnknownCurrency(String),
}

/// The JSON Schema of an exact amount: a decimal string or a JSON number, never an exponent.
pub(crate) struct DecimalText;

impl schemars::JsonSchema for DecimalText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DecimalAmount".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An exact decimal amount, greater than zero, as a string (\"25.17\") or a JSON number (25.17, read exactly, never through floating point). No exponents.",
            "oneOf": [
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
                {"type": "number", "exclusiveMinimum": 0}
            ]
        })
    }
}

/// Crypto assets settled by Binance Pay and BVNK, with the decimals their APIs accept.
/// ISO 4217 does not cover them, so this short table is ours.
const CRYPTO_DECIMALS: &[(&str, u32)] = &[
    ("BTC", 8),
    ("ETH", 18),
    ("BNB", 8),
    ("USDT", 8),
    ("USDC", 8),
    ("BUSD", 8),
    ("FDUSD", 8),
    ("TRX", 6),
    ("SOL", 9),
    ("LTC", 8),
];

/// Number of decimal places a currency allows: ISO 4217 minor units for fiat
/// (`iso_currency`), our table for crypto assets. `None` for unknown codes.
pub fn currency_decimals(code: &str) -> Option<u32> {
    if let Some((_, d)) = CRYPTO_DECIMALS.iter().find(|(c, _)| *c == code) {
        return Some(*d);
    }
    let currency = iso_currency::Currency::from_code(code)?;
    // Funds codes such as XAU have no minor unit; refunds in them make no sense.
    currency.exponent().map(u32::from)
}

/// Parses an amount from a JSON string or number, exactly.
///
/// With serde_json's `arbitrary_precision`, a JSON number keeps its original text, so
/// `25.17` is read as the decimal 25.17 and never as the nearest `f64`.
pub fn parse_amount(value: &serde_json::Value) -> Result<Decimal, MoneyError> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return Err(MoneyError::WrongType),
    };
    parse_amount_text(&text)
}

/// Parses the text of an amount; only plain decimals (`-`? digits, optional `.` digits).
pub(crate) fn parse_amount_text(text: &str) -> Result<Decimal, MoneyError> {
    let plain = !text.is_empty()
        && text.len() <= 64
        && text
            .strip_prefix('-')
            .unwrap_or(text)
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1
        && !text.ends_with('.')
        && !text.starts_with('.');
    if !plain {
        return Err(MoneyError::NotDecimal(truncate(text)));
    }
    Decimal::from_str_exact(text).map_err(|_| MoneyError::NotDecimal(truncate(text)))
}

/// Checks that `amount` is positive and fits the currency's decimals.
pub(crate) fn check_amount(amount: Decimal, currency: &str) -> Result<(), MoneyError> {
    if amount <= Decimal::ZERO {
        return Err(MoneyError::NotPositive(amount));
    }
    let decimals =
        currency_decimals(currency).ok_or_else(|| MoneyError::UnknownCurrency(currency.into()))?;
    // 25.170 is fine for a 2-decimal currency; 25.175 is not.
    if amount.normalize().scale() > decimals {
        return Err(MoneyError::TooManyDecimals {
            amount,
            currency: currency.to_string(),
            decimals,
        });
    }
    Ok(())
}

/// Formats an amount for the wire: trailing zeros beyond the value removed, never an
/// exponent (`25.170` -> `25.17`, `10.00` -> `10`).
pub fn format_amount(amount: Decimal) -> String {
    amount.normalize().to_string()
}

/// Turns an exact decimal into a JSON number without going through `f64`.
pub fn json_number(amount: Decimal) -> serde_json::Value {
    match serde_json::Number::from_str(&format_amount(amount)) {
        Ok(n) => serde_json::Value::Number(n),
        // Unreachable for a Decimal's canonical text; a string is still exact.
        Err(_) => serde_json::Value::String(format_amount(amount)),
    }
}

fn truncate(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}...", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros_free::dec;

    /// Tiny local stand-in for a `dec!` macro, so tests read naturally.
    mod rust_decimal_macros_free {
        macro_rules! dec {
            ($s:literal) => {
                rust_decimal::Decimal::from_str_exact(stringify!($s)).unwrap()
            };
        }
        pub(crate) use dec;
    }

    #[test]
    fn json_number_2517_stays_exact() {
        let v: serde_json::Value = serde_json::from_str(r#"{"a": 25.17}"#).unwrap();
        assert_eq!(parse_amount(&v["a"]).unwrap(), dec!(25.17));
        assert_eq!(parse_amount(&v["a"]).unwrap().to_string(), "25.17");
    }

    #[test]
    fn string_amount_parses() {
        let v = serde_json::json!("0.10");
        assert_eq!(parse_amount(&v).unwrap(), dec!(0.10));
    }

    #[test]
    fn exponents_and_huge_numbers_are_refused() {
        let v: serde_json::Value = serde_json::from_str(r#"[1e400, 1E2, "1e5"]"#).unwrap();
        for item in v.as_array().unwrap() {
            assert!(
                matches!(parse_amount(item), Err(MoneyError::NotDecimal(_))),
                "{item}"
            );
        }
        let huge = "9".repeat(1000);
        assert!(matches!(
            parse_amount_text(&huge),
            Err(MoneyError::NotDecimal(_))
        ));
        assert!(parse_amount_text("12345678901234567890123456789012").is_err());
    }

    #[test]
    fn wrong_types_are_refused() {
        assert_eq!(
            parse_amount(&serde_json::json!(true)),
            Err(MoneyError::WrongType)
        );
        assert_eq!(
            parse_amount(&serde_json::json!(null)),
            Err(MoneyError::WrongType)
        );
        assert!(parse_amount(&serde_json::json!(" 1")).is_err());
        assert!(parse_amount(&serde_json::json!("1.")).is_err());
        assert!(parse_amount(&serde_json::json!("1,5")).is_err());
    }

    #[test]
    fn decimals_follow_the_currency() {
        assert!(check_amount(dec!(25.17), "NGN").is_ok());
        assert!(check_amount(dec!(25.170), "NGN").is_ok());
        assert!(matches!(
            check_amount(dec!(25.175), "NGN"),
            Err(MoneyError::TooManyDecimals { decimals: 2, .. })
        ));
        assert!(check_amount(dec!(100), "JPY").is_ok());
        assert!(check_amount(dec!(100.5), "JPY").is_err());
        assert!(check_amount(dec!(1.234), "KWD").is_ok());
        assert!(check_amount(dec!(0.00000001), "USDT").is_ok());
        assert_eq!(
            check_amount(dec!(1), "XYZ"),
            Err(MoneyError::UnknownCurrency("XYZ".into()))
        );
    }

    #[test]
    fn zero_and_negative_are_refused() {
        assert!(matches!(
            check_amount(dec!(0), "USD"),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            check_amount(dec!(-1), "USD"),
            Err(MoneyError::NotPositive(_))
        ));
    }

    #[test]
    fn wire_format_is_exact_and_plain() {
        assert_eq!(format_amount(dec!(25.170)), "25.17");
        assert_eq!(format_amount(dec!(10.00)), "10");
        assert_eq!(json_number(dec!(25.17)).to_string(), "25.17");
        assert_eq!(json_number(dec!(0.00000001)).to_string(), "0.00000001");
    }
}
