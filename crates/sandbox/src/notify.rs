//! The sandbox's outbound webhooks: providers calling refund-worker back.
//!
//! Each provider's sub-state says which notifications are due ([`Outbound`], already signed
//! the provider's way); this module sends them to `{webhook_url}/webhooks/{provider}` the way
//! providers do, retrying non-2xx answers with a growing delay, and misbehaves on request:
//! a share of notifications is sent twice, held back so later ones overtake it (reordering),
//! or sent with a corrupted signature (which the ingress must refuse; the sandbox then sends
//! the correctly signed one, as a provider retrying would not, so nothing is lost).

use super::{roll, Provider, Sandbox, SandboxConfig};
use rand::Rng;
use ring::signature::RsaKeyPair;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// One notification a simulated provider wants to send.
#[derive(Debug, Clone)]
pub(super) struct Outbound {
    /// Which provider sends it (the ingress path).
    pub provider: Provider,
    /// Raw body, exactly as signed.
    pub body: Vec<u8>,
    /// Headers, signature included.
    pub headers: Vec<(String, String)>,
    /// Name of the header whose value a "bad signature" corrupts.
    pub signature_header: String,
    /// Binance Pay's key: a copy sent again is signed again (fresh timestamp and nonce).
    pub resign_with: Option<Arc<RsaKeyPair>>,
}

/// A notification decided under the sandbox lock, signed after it is released: Binance
/// Pay's RSA signature costs far more than everything else the notify loop does, and
/// provider calls wait on that lock.
pub(super) struct Notice {
    provider: Provider,
    body: String,
    signing: Signing,
}

enum Signing {
    /// Hex HMAC-SHA256 of the body with the webhook secret, in this header (VA Services,
    /// BPN, BVNK).
    Hmac(&'static str),
    /// Binance Pay's RSA signature with this key.
    Rsa(Arc<RsaKeyPair>),
}

impl Notice {
    /// A JSON notification signed the way VA Services, BPN and BVNK sign theirs.
    pub(super) fn hmac(provider: Provider, body: String, signature_header: &'static str) -> Self {
        Self {
            provider,
            body,
            signing: Signing::Hmac(signature_header),
        }
    }

    /// A Binance Pay notification, signed with `key`.
    pub(super) fn rsa(body: String, key: Arc<RsaKeyPair>) -> Self {
        Self {
            provider: Provider::BinancePay,
            body,
            signing: Signing::Rsa(key),
        }
    }

    /// The notification as sent, signed now.
    pub(super) fn sign(self, config: &SandboxConfig) -> Option<Outbound> {
        match self.signing {
            Signing::Hmac(header) => Some(Outbound::hmac_signed(
                self.provider,
                self.body,
                &config.webhook_secret,
                header,
            )),
            Signing::Rsa(key) => super::binance_pay::signed_outbound(&key, self.body),
        }
    }
}

impl Outbound {
    /// A JSON notification signed the way VA Services, BPN and BVNK sign theirs: hex
    /// HMAC-SHA256 of the body with the webhook secret, in `signature_header`.
    fn hmac_signed(provider: Provider, body: String, secret: &str, signature_header: &str) -> Self {
        let signature = super::docs::webhook_signature(secret.as_bytes(), body.as_bytes());
        Self {
            provider,
            body: body.into_bytes(),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (signature_header.into(), signature),
            ],
            signature_header: signature_header.into(),
            resign_with: None,
        }
    }
}

/// Webhook counters, for assertions and the chaos suite.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCounters {
    /// Notifications that got a 2xx.
    pub delivered: u64,
    /// HTTP attempts answered non-2xx or not answered (retried).
    pub failed_attempts: u64,
    /// Extra copies sent on purpose.
    pub duplicates: u64,
    /// Copies sent with a corrupted signature on purpose.
    pub bad_signatures: u64,
    /// Bad-signature copies the ingress refused (it must refuse all of them).
    pub bad_signatures_refused: u64,
    /// Bad-signature copies the ingress answered 2xx: a security failure, must stay 0.
    pub bad_signatures_accepted: u64,
    /// Notifications held back so later ones overtake them.
    pub reordered: u64,
    /// Notifications given up after every retry.
    pub abandoned: u64,
}

/// Corrupts a signature so it no longer verifies, keeping its length and alphabet.
fn corrupt(signature: &str) -> String {
    let mut chars: Vec<char> = signature.chars().collect();
    if let Some(last) = chars.last_mut() {
        *last = match *last {
            '0' => '1',
            'A' => 'B',
            'a' => 'b',
            _ => '0',
        };
    } else {
        chars.push('0');
    }
    chars.into_iter().collect()
}

impl Sandbox {
    /// Sends every due notification until `stop` fires. Runs only when `webhook_url` is set.
    pub(super) async fn notify_loop(self, base: String, stop: tokio::sync::watch::Receiver<bool>) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        loop {
            if *stop.borrow() {
                return;
            }
            let due = self.due_webhooks();
            for out in due {
                let (sandbox, client, base) = (self.clone(), client.clone(), base.clone());
                tokio::spawn(async move { sandbox.send(&client, &base, out).await });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One notification, with the configured misbehaviour, retried until a 2xx.
    async fn send(&self, client: &reqwest::Client, base: &str, out: Outbound) {
        let config = self.config().clone();
        if roll(config.webhook_reorder_rate) {
            self.lock().webhooks.reordered += 1;
            let hold = rand::thread_rng().gen_range(100..600);
            self.pause(Duration::from_millis(hold)).await;
        }
        let url = format!("{base}/webhooks/{}", out.provider.segment());
        if roll(config.webhook_bad_signature_rate) {
            self.lock().webhooks.bad_signatures += 1;
            let mut forged = out.clone();
            for (name, value) in &mut forged.headers {
                if name.eq_ignore_ascii_case(&out.signature_header) {
                    *value = corrupt(value);
                }
            }
            match post(client, &url, &forged).await {
                Ok(r) if r == reqwest::StatusCode::UNAUTHORIZED => {
                    self.lock().webhooks.bad_signatures_refused += 1
                }
                Ok(r) if r.is_success() => self.lock().webhooks.bad_signatures_accepted += 1,
                // Not answered (receiver down) or another error: not accepted either.
                _ => {}
            }
        }
        let copies = if roll(config.webhook_duplicate_rate) {
            self.lock().webhooks.duplicates += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let resigned = match (&out.resign_with, copy) {
                (Some(key), 1..) => super::binance_pay::signed_outbound(
                    key,
                    String::from_utf8_lossy(&out.body).into_owned(),
                ),
                _ => None,
            };
            let out = resigned.as_ref().unwrap_or(&out);
            let mut delay = Duration::from_millis(100);
            let mut delivered = false;
            for _ in 0..12 {
                match post(client, &url, out).await {
                    Ok(status) if status.is_success() => {
                        delivered = true;
                        break;
                    }
                    _ => {
                        self.lock().webhooks.failed_attempts += 1;
                        self.pause(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let mut state = self.lock();
            if delivered {
                state.webhooks.delivered += 1;
            } else {
                state.webhooks.abandoned += 1;
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    out: &Outbound,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let mut request = client.post(url).body(out.body.clone());
    for (name, value) in &out.headers {
        request = request.header(name, value);
    }
    Ok(request.send().await?.status())
}

#[cfg(test)]
mod tests {
    use super::corrupt;

    #[test]
    fn corrupted_signatures_differ_but_keep_their_shape() {
        for sig in ["ab12", "ABC0", "0", "zz", ""] {
            let c = corrupt(sig);
            assert_ne!(c, sig);
            assert_eq!(c.len(), sig.len().max(1));
        }
    }
}
