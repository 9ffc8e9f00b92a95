//! The HMAC primitives the providers' signing schemes are built from, in one place so
//! every adapter (and the sandbox, which verifies what the adapters send) computes them the
//! same way. Verification always goes through `Mac::verify_slice`, which compares in
//! constant time.

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

/// Lowercase hex HMAC-SHA256 of the concatenated `parts`.
pub fn hmac_sha256_hex(key: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac_sha256(key, parts))
}

/// Raw HMAC-SHA256 of the concatenated `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Uppercase hex HMAC-SHA512 of the concatenated `parts` (Binance Pay's form).
pub fn hmac_sha512_hex_upper(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = match Hmac::<Sha512>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    for part in parts {
        mac.update(part);
    }
    hex::encode_upper(mac.finalize().into_bytes())
}

/// Whether `given_hex` (either case) is the HMAC-SHA256 of `parts` under `key`, compared in
/// constant time. Malformed hex or a wrong length is simply "no".
pub fn verify_hmac_sha256_hex(key: &[u8], parts: &[&[u8]], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&given).is_ok()
}

/// Whether `given_hex` (either case) is the HMAC-SHA512 of `parts` under `key`, compared in
/// constant time.
pub fn verify_hmac_sha512_hex(key: &[u8], parts: &[&[u8]], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(&given).is_ok()
}

/// Verifies a webhook signed with hex HMAC-SHA256 of the raw body in one header (VA
/// Services, BPN, BVNK): the secret is `settings.webhook_secret`, the header
/// `settings.webhook_signature_header` or the provider's `default_header`.
pub fn verify_body_hmac_header(
    provider: crate::domain::ProviderName,
    settings: &crate::config::ProviderSettings,
    default_header: &str,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<(), crate::providers::WebhookError> {
    use crate::providers::WebhookError;
    use secrecy::ExposeSecret;
    let secret = settings
        .webhook_secret
        .as_ref()
        .ok_or(WebhookError::NotConfigured(provider))?;
    let header = settings
        .webhook_signature_header
        .as_deref()
        .unwrap_or(default_header);
    let given = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| WebhookError::BadSignature(format!("missing {header} header")))?;
    if verify_hmac_sha256_hex(secret.expose_secret().as_bytes(), &[body], given) {
        Ok(())
    } else {
        Err(WebhookError::BadSignature(format!(
            "{header} does not match the body"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently:
    //   printf 'hello&1700000000000' | openssl dgst -sha256 -hmac key
    //   printf 'hello' | openssl dgst -sha512 -hmac key
    #[test]
    fn matches_openssl() {
        assert_eq!(
            hmac_sha256_hex(b"key", &[b"hello", b"&", b"1700000000000"]),
            OPENSSL_SHA256
        );
        assert_eq!(
            hmac_sha512_hex_upper(b"key", &[b"hello"]),
            OPENSSL_SHA512.to_ascii_uppercase()
        );
    }

    #[test]
    fn verification_is_exact() {
        let good = hmac_sha256_hex(b"key", &[b"body"]);
        assert!(verify_hmac_sha256_hex(b"key", &[b"body"], &good));
        assert!(verify_hmac_sha256_hex(
            b"key",
            &[b"body"],
            &good.to_ascii_uppercase()
        ));
        assert!(!verify_hmac_sha256_hex(b"key", &[b"body!"], &good));
        assert!(!verify_hmac_sha256_hex(b"other", &[b"body"], &good));
        assert!(!verify_hmac_sha256_hex(b"key", &[b"body"], &good[..62]));
        assert!(!verify_hmac_sha256_hex(b"key", &[b"body"], "zz"));
        assert!(!verify_hmac_sha256_hex(b"key", &[b"body"], ""));
        let upper = hmac_sha512_hex_upper(b"key", &[b"a", b"b"]);
        assert!(verify_hmac_sha512_hex(b"key", &[b"ab"], &upper));
        assert!(!verify_hmac_sha512_hex(b"key", &[b"ab "], &upper));
    }

    const OPENSSL_SHA256: &str = "75ec388d9039febb421cd6aada50b4cb605269a5232d4c0184cc43dc552b333e";
    const OPENSSL_SHA512: &str = "ff06ab36757777815c008d32c8e14a705b4e7bf310351a06a23b612dc4c7433e7757d20525a5593b71020ea2ee162d2311b247e9855862b270122419652c0c92";
}
