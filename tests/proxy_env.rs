//! The merchant webhook client ignores proxy environment variables: through a proxy, the
//! network policy would check only the proxy's address and the proxy would reach whatever
//! the merchant's URL names.
//!
//! Its own test binary (one test): proxy variables are process-wide, and setting them in
//! the shared integration binary would send other tests' clients to the fake proxy.

use refund_worker::config::Config;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener answering every request with 200 and counting the connections it got.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn the_delivery_client_does_not_use_proxies_from_the_environment() {
    let (proxy, proxy_hits) = counting_server().await;
    let (target, target_hits) = counting_server().await;
    for key in ["NO_PROXY", "no_proxy"] {
        std::env::remove_var(key);
    }
    for key in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        std::env::set_var(key, &proxy);
    }

    // The environment is set up right: a default client goes through the proxy.
    let plain = reqwest::Client::new();
    plain.get(format!("{target}/hook")).send().await.unwrap();
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 1, "the fake proxy works");
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);

    let config =
        Config::from_lookup(|k| (k == "WEBHOOK_ALLOW_NETWORKS").then(|| "127.0.0.0/8".to_string()))
            .unwrap();
    let policy = Arc::new(config.webhooks.network_policy.clone());
    let client =
        refund_worker::merchant_webhooks::delivery::client(&config.webhooks, policy).unwrap();
    let answer = client
        .post(format!("{target}/hook"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        1,
        "the merchant was called directly"
    );
    assert_eq!(
        proxy_hits.load(Ordering::SeqCst),
        1,
        "the proxy was not used"
    );
}
