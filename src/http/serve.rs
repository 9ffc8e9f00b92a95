//! Serving the router over HTTP/1.1 with limits `axum::serve` does not set: it runs hyper
//! without a timer, so hyper's header-read timeout is off and a client that sends its
//! headers a byte at a time holds a connection (and a task) forever; and it accepts any
//! number of connections. The request timeouts and the rate limiter are tower layers, which
//! start only once the headers are in, so neither helps against that.
//!
//! Here every connection has `HTTP_HEADER_TIMEOUT_MS` to send a request's headers (which
//! also closes keep-alive connections idle that long), and at most `HTTP_MAX_CONNECTIONS`
//! are served at once: past that the server stops accepting, and new connections wait in
//! the kernel's backlog until one closes. HTTP/2 is not served (providers and operators use
//! HTTP/1.1; a TLS-terminating proxy in front speaks HTTP/1.1 to us).

use crate::config::Config;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Time a client has to send a request's headers (from the connection's start, or the
    /// end of its previous response).
    pub header_read_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl ServeLimits {
    /// `HTTP_HEADER_TIMEOUT_MS` and `HTTP_MAX_CONNECTIONS`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_read_timeout: config.http_header_timeout,
            max_connections: config.http_max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets the requests in flight finish
/// (keep-alive connections are closed after their current response) and returns. Requests
/// carry the peer address as `ConnectInfo<SocketAddr>` (the rate limits key on it).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A free slot first, then accept: at the cap, new connections queue in the kernel.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let (router, shutdown) = (router.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Header timeouts, resets, malformed requests: the client's problem.
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}
