//! The HTTP server's own limits (header-read timeout, connection cap, per-source limits)
//! and its error shape on every path. The router is served as `run` serves it; the
//! database is never reached by these requests (a lazy pool).

use crate::helpers::ADMIN_TOKEN;
use refund_worker::config::Config;
use refund_worker::http::{self, AppState, ServeLimits};
use refund_worker::pipeline::worker::Status;
use refund_worker::providers::Providers;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Serves the router with `env` on a free loopback port; returns its address and the stop.
async fn serve(env: &[(&str, &str)]) -> (String, CancellationToken) {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("config");
    let pool = sqlx::PgPool::connect_lazy(&config.database_url).expect("lazy pool");
    let limits = ServeLimits::from_config(&config);
    let context = refund_worker::pipeline::Context::new(pool, config, Providers::default());
    let router = http::router(AppState::new(context, Arc::new(Status::default())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    tokio::spawn(http::serve(listener, router, limits, stop.clone()));
    (addr, stop)
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn http_a_client_sending_headers_slowly_is_cut_off() {
    let (addr, stop) = serve(&[("HTTP_HEADER_TIMEOUT_MS", "500")]).await;
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "half a request line held the connection open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(closed, "an idle connection was kept");
    // A prompt client is served.
    let answer = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    stop.cancel();
}

#[tokio::test]
async fn http_connections_over_the_cap_wait_for_a_free_slot() {
    let (addr, stop) = serve(&[("HTTP_MAX_CONNECTIONS", "2")]).await;
    let first = TcpStream::connect(&addr).await.unwrap();
    let _second = TcpStream::connect(&addr).await.unwrap();
    // Accepted by the kernel, but not served while two connections are open.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (early, closed) = read_until_closed(&mut third, Duration::from_millis(700)).await;
    assert!(
        early.is_empty() && !closed,
        "a third connection was served: {early}"
    );
    drop(first);
    let (answer, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{status} answered with content-type `{content_type}`"
    );
    let body: Value = response.json().await.expect("a JSON body");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, body)
}

#[tokio::test]
async fn http_every_error_answer_has_the_error_shape() {
    let client = reqwest::Client::new();
    // Admin API off: `/v1/...` does not exist, and says so in the error shape.
    let (addr, stop) = serve(&[("WEBHOOK_INGRESS_TIMEOUT_MS", "300")]).await;
    for path in ["/nope", "/v1/refunds", "/v1/dlq/x", "/webhooks"] {
        let (status, body) = error_of(
            client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {body}"
        );
    }
    let answer = client
        .post(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["allow"], "GET,HEAD");
    let (status, body) = error_of(answer).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // The ingress's request timeout: a body that never finishes.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /webhooks/bvnk HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"event\":",
    )
    .await
    .unwrap();
    let (answer, _) = read_until_closed(&mut slow, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or_default())
        .expect("JSON body");
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    stop.cancel();

    // Admin API on: unknown routes under /v1 too.
    let (addr, stop) = serve(&[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let (status, body) = error_of(
        client
            .get(format!("http://{addr}/v1/nothing"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    stop.cancel();
}

#[tokio::test]
async fn http_failed_admin_authentications_are_rate_limited_per_source() {
    let (addr, stop) = serve(&[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/refunds");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let answer = client
            .get(&url)
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        if status == 429 {
            assert!(answer.headers().contains_key("retry-after"));
        }
        let (_, body) = error_of(answer).await;
        statuses.push((
            status,
            body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    assert!(
        statuses[..5]
            .iter()
            .all(|(s, c)| *s == 401 && c == "unauthorized"),
        "{statuses:?}"
    );
    assert!(
        statuses[5..]
            .iter()
            .all(|(s, c)| *s == 429 && c == "rate_limited"),
        "{statuses:?}"
    );
    // While locked out, even the right token is not compared (a right guess is not confirmed).
    let answer = client
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    stop.cancel();
}
