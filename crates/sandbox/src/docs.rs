//! What the providers' docs say about signing, paths and limits, written here from the docs
//! themselves for the simulator. Never imported from the adapters (`refund_worker::providers`): the
//! simulator is a second reading of the docs, so a misreading the adapters share with it
//! cannot pass both (`../shared/providers/README.md` quotes each scheme).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Binance Pay, "Refund Order" and its API docs.
pub(super) mod binance {
    use hmac::Mac;

    /// `POST` refund.
    pub const REFUND_PATH: &str = "/binancepay/openapi/order/refund";
    /// `POST` refund query.
    pub const QUERY_PATH: &str = "/binancepay/openapi/order/refund/query";
    /// Request headers.
    pub const HEADER_TIMESTAMP: &str = "BinancePay-Timestamp";
    pub const HEADER_NONCE: &str = "BinancePay-Nonce";
    pub const HEADER_CERTIFICATE_SN: &str = "BinancePay-Certificate-SN";
    pub const HEADER_SIGNATURE: &str = "BinancePay-Signature";
    /// "32 random letters/digits".
    pub const NONCE_LEN: usize = 32;
    /// `refundRequestId`: "<= 64 chars".
    pub const MAX_REFUND_REQUEST_ID_LEN: usize = 64;
    /// `refundReason`: at most 256 characters.
    pub const MAX_REASON_CHARS: usize = 256;
    /// `code` of a successful answer.
    pub const SUCCESS_CODE: &str = "000000";
    /// Prefix of the ids refund-worker derives from references too long for Binance.
    const DERIVED_ID_PREFIX: &str = "rw-sha256-";

    /// The `refundRequestId` refund-worker sends for a `refundReference`: the reference when
    /// it fits Binance's 64 (bytes, as sent), else `rw-sha256-` + the first 54 hex digits of
    /// its SHA-256. Not Binance's rule but refund-worker's, from its README ("Binance Pay"),
    /// written here again so the sandbox addresses a refund by our reference either way.
    pub fn refund_request_id(refund_reference: &str) -> String {
        use sha2::Digest;
        if refund_reference.len() <= MAX_REFUND_REQUEST_ID_LEN {
            return refund_reference.to_owned();
        }
        let digest = hex::encode(sha2::Sha256::digest(refund_reference.as_bytes()));
        let keep = MAX_REFUND_REQUEST_ID_LEN - DERIVED_ID_PREFIX.len();
        format!(
            "{DERIVED_ID_PREFIX}{}",
            digest.get(..keep).unwrap_or_default()
        )
    }

    /// Whether `given` is `BinancePay-Signature` for the request: uppercase hex
    /// HMAC-SHA512 with the secret over `timestamp + "\n" + nonce + "\n" + body + "\n"`.
    pub fn signature_ok(
        secret: &[u8],
        timestamp: &str,
        nonce: &str,
        body: &[u8],
        given: &str,
    ) -> bool {
        let payload = [
            timestamp.as_bytes(),
            b"\n",
            nonce.as_bytes(),
            b"\n",
            body,
            b"\n",
        ]
        .concat();
        super::verify(
            super::Hmac::<sha2::Sha512>::new_from_slice(secret),
            &payload,
            given,
        )
    }
}

/// BPN's "Signature Authentication Mechanism": `API-SIGNATURE` is lowercase hex
/// HMAC-SHA256 with the API secret over `request_content + "&" + timestamp`.
pub(super) fn bpn_signature_ok(
    secret: &[u8],
    content: &[u8],
    timestamp: &str,
    given: &str,
) -> bool {
    let payload = [content, b"&", timestamp.as_bytes()].concat();
    verify(Hmac::<Sha256>::new_from_slice(secret), &payload, given)
}

/// The webhook signature VA Services, BPN and BVNK notifications carry: hex HMAC-SHA256 of
/// the raw body with the webhook secret.
pub(super) fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes a key of any length: this cannot happen.
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a hex MAC (`verify_slice`) keyed already; bad hex, or a key the
/// MAC refused (never, for HMAC), is simply wrong.
fn verify<M: Mac>(
    mac: Result<M, hmac::digest::InvalidLength>,
    payload: &[u8],
    given_hex: &str,
) -> bool {
    let (Ok(given), Ok(mut mac)) = (hex::decode(given_hex.trim()), mac) else {
        return false;
    };
    mac.update(payload);
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers computed outside Rust (Python's `hmac` module), so neither the
    /// adapters' code nor this module decides what is right.
    #[test]
    fn schemes_match_independently_computed_signatures() {
        // hmac.new(b'k', b'{"a":1}&1700000000000', sha256).hexdigest()
        let bpn = "bb4cb9c101fb8d5dc94cb01b50696dcc29dfdc25fa918e6c9601894f8450bc60";
        assert!(bpn_signature_ok(b"k", br#"{"a":1}"#, "1700000000000", bpn));
        assert!(!bpn_signature_ok(b"k", br#"{"a":2}"#, "1700000000000", bpn));
        assert!(!bpn_signature_ok(
            b"k",
            br#"{"a":1}"#,
            "1700000000000",
            "zz"
        ));
        // hmac.new(b'sandbox-webhook-secret', b'{}', sha256).hexdigest()
        assert_eq!(
            webhook_signature(b"sandbox-webhook-secret", b"{}"),
            "c7f98ea98c28a811e003a633f661d4d122abb58e7688b10b4df086e6de1f2202"
        );
        // hmac.new(b's', b'1700000000000\nABCDEFGHIJKLMNOPQRSTUVWXYZ012345\n{"a":1}\n', sha512).hexdigest().upper()
        let binance = "C0E371A25102CD6064B945293D3B475695DBBB461A546415AE081702943925679BF759E8EDFB307705A53E536EB032A7EED9FB32B9C088E0AD908D44B4F58B01";
        let nonce = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
        assert!(binance::signature_ok(
            b"s",
            "1700000000000",
            nonce,
            br#"{"a":1}"#,
            binance
        ));
        // 'rw-sha256-' + hashlib.sha256(b'x' * 80).hexdigest()[:54]
        assert_eq!(
            binance::refund_request_id(&"x".repeat(80)),
            "rw-sha256-d929cdeea7e6a0f46b59448d36a6fd491df8647cf292040508162e"
        );
        // 82 bytes in 42 characters: the length that counts is the bytes'.
        let accented = format!("R-{}", "\u{e9}".repeat(40));
        assert_eq!(
            binance::refund_request_id(&accented),
            "rw-sha256-514d46e1e90f5d90aefead2896ea3c65e8c80f2e2ae4ca32be5841"
        );
        assert_eq!(binance::refund_request_id(&"y".repeat(64)), "y".repeat(64));
        assert!(!binance::signature_ok(
            b"s",
            "1700000000001",
            nonce,
            br#"{"a":1}"#,
            binance
        ));
    }
}
