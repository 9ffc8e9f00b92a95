//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! Headers: `webhook-id` (the event id), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with the
//! bytes of a `whsec_<base64>` secret. Any Standard Webhooks (or Svix) library verifies them.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret is not `whsec_` followed by base64.
    #[error("webhook secret must be `whsec_` followed by base64 (at least 24 bytes)")]
    BadSecret,
    /// The timestamp is not a number or is outside the tolerance.
    #[error("webhook-timestamp is missing, malformed or outside the tolerance")]
    BadTimestamp,
    /// No `v1` signature matched.
    #[error("no webhook-signature matches")]
    Mismatch,
}

/// A signing key decoded from a `whsec_` secret. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(SecretSlice<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    pub fn from_secret(secret: &str) -> Result<Self, SignatureError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| SignatureError::BadSecret)?;
        if bytes.len() < 24 {
            return Err(SignatureError::BadSecret);
        }
        Ok(Self(bytes.into()))
    }

    /// A new random key, formatted as a `whsec_` secret (for `refund-worker` operators).
    pub fn generate_secret() -> String {
        let bytes: [u8; 32] = rand::random();
        format!("whsec_{}", STANDARD.encode(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value for a message.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Verifies a message as a receiver would: the timestamp within `tolerance_secs` of
    /// `now`, and one of the space-separated `v1,` signatures matching (constant time).
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
    ) -> Result<(), SignatureError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if (now - ts).abs() > tolerance_secs {
            return Err(SignatureError::BadTimestamp);
        }
        for candidate in signatures.split_whitespace() {
            let Some(b64) = candidate.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(b64) else {
                continue;
            };
            if self.mac(id, ts, body).verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector (also reproduced with
    // Python's hmac module when this test was written).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_standard_webhooks_test_vector() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), EXPECTED);
        assert_eq!(
            key.verify(ID, "1614265330", EXPECTED, BODY, TS + 5, 300),
            Ok(())
        );
    }

    #[test]
    fn verification_refuses_tampering_and_stale_timestamps() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(
            key.verify(ID, "1614265330", EXPECTED, br#"{"test": 1}"#, TS, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            key.verify(ID, "1614265330", EXPECTED, BODY, TS + 301, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            key.verify(ID, "1614265330", "v1,AAAA", BODY, TS, 300),
            Err(SignatureError::Mismatch)
        );
        // Several signatures (key rotation): any match passes.
        let both = format!("v1,bm9wZQ== {EXPECTED}");
        assert_eq!(key.verify(ID, "1614265330", &both, BODY, TS, 300), Ok(()));
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        assert_eq!(
            SigningKey::from_secret("whsec_short").unwrap_err(),
            SignatureError::BadSecret
        );
        let generated = SigningKey::generate_secret();
        let key = SigningKey::from_secret(&generated).unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey([REDACTED])");
    }
}
