//! The application wired once: what `run`, the demo and the tests start.
//!
//! [`App::build`] does everything that can fail before anything runs, in this order:
//! create the database if missing and migrate, bind `HTTP_ADDR`, build the provider
//! adapters, check that RabbitMQ does not refuse us, log what was configured. Then
//! [`App::start`] spawns the HTTP server, the metrics sampler and the worker (intake,
//! provider webhooks, dispatch, relay, review, retention, merchant webhooks), and
//! [`RunningApp::stopped`] drains them in order once `shutdown` is cancelled.
//!
//! The bench runs `refund-worker run` as a child process, so it goes through here too.

pub(crate) mod connect;

use crate::config::Config;
use crate::pipeline::{worker, Context};
use crate::providers::Providers;
use crate::{http, store};
use anyhow::Context as _;
use connect::Unreachable;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long HTTP requests in flight may finish after the worker's drain. With the default
/// SHUTDOWN_GRACE_SECS (25) it keeps the whole shutdown inside Kubernetes' 30 s.
const HTTP_DRAIN: Duration = Duration::from_secs(3);

/// How often `run` samples the gauges `/metrics` shows (work in flight, outbox lag).
const METRICS_EVERY: Duration = Duration::from_secs(15);

/// The application, built and not yet running: its context is ready for the pipeline's
/// steps, its HTTP address is bound.
pub struct App {
    ctx: Context,
    status: Arc<worker::Status>,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    metrics_every: Duration,
}

/// Options of [`App::build`] beyond the configuration.
pub struct AppBuilder {
    config: Config,
    listener: Option<tokio::net::TcpListener>,
    metrics_every: Duration,
}

impl AppBuilder {
    /// Serves HTTP on this socket instead of binding `HTTP_ADDR`: for a caller that must
    /// know the address before the configuration exists (the demo's and the tests' sandbox
    /// sends its webhooks there).
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Samples the `/metrics` gauges this often (15 s by default).
    pub fn metrics_every(mut self, every: Duration) -> Self {
        self.metrics_every = every;
        self
    }

    /// Migrates, binds, builds the providers and checks the broker: see [`App::build`].
    pub async fn build(self) -> anyhow::Result<App> {
        let config = self.config;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "refund-worker starting"
        );
        let pool = migrate(&config).await?;
        tracing::info!(
            database = %crate::config::redact_url(&config.database_url),
            "migrations applied"
        );
        let listener = match self.listener {
            Some(listener) => listener,
            None => bind_http(config.http_addr).await?,
        };
        let addr = listener
            .local_addr()
            .context("reading the HTTP listener's address")?;
        let providers = Providers::from_config(&config)?;
        broker_preflight(&config).await?;
        log_start(&config, addr);
        Ok(App {
            ctx: Context::new(pool, config, providers),
            status: Arc::new(worker::Status::default()),
            listener,
            addr,
            metrics_every: self.metrics_every,
        })
    }
}

impl App {
    /// Options beyond the configuration (a bound listener, the sampling interval).
    pub fn builder(config: Config) -> AppBuilder {
        AppBuilder {
            config,
            listener: None,
            metrics_every: METRICS_EVERY,
        }
    }

    /// Creates the database if missing and migrates, binds `HTTP_ADDR`, builds the
    /// providers, and connects to RabbitMQ once: one that refuses us (a vhost that does not
    /// exist, refused credentials) stops the start with the reason; one that is merely down
    /// is waited for by the worker. Errors name the setting and the cause (exit code 5 for
    /// an unreachable database or broker, see `cli::exit`).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::builder(config).build().await
    }

    /// The context the pipeline's loops share (tests drive its steps before `start`).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Where HTTP listens (the bound address: with port 0, the port chosen).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Spawns the HTTP server, the metrics sampler and the worker. They run until
    /// `shutdown` is cancelled; [`RunningApp::stopped`] then drains them in order.
    pub fn start(self, shutdown: CancellationToken) -> RunningApp {
        let mut running = self.serve(shutdown.clone());
        running.worker = Some(running.spawn_worker(shutdown));
        running
    }

    /// [`App::start`] without the worker: HTTP and the metrics sampler only. The tests use
    /// it to drive the pipeline's steps themselves, or to start and stop workers
    /// ([`RunningApp::spawn_worker`]) while HTTP keeps serving.
    pub fn serve(self, shutdown: CancellationToken) -> RunningApp {
        // The HTTP endpoints stop after the worker's drain, not with it (see `stopped`).
        let http_stop = CancellationToken::new();
        let router = http::router(http::AppState::new(self.ctx.clone(), self.status.clone()));
        // Header-read timeout and connection cap (HTTP_HEADER_TIMEOUT_MS,
        // HTTP_MAX_CONNECTIONS); requests carry the peer address for the rate limits.
        let limits = http::ServeLimits::from_config(&self.ctx.config);
        let server = tokio::spawn(http::serve(
            self.listener,
            router,
            limits,
            http_stop.clone(),
        ));
        crate::metrics::handle();
        tokio::spawn(crate::metrics::sample(
            self.ctx.pool.clone(),
            self.metrics_every,
            shutdown.clone(),
        ));
        RunningApp {
            ctx: self.ctx,
            status: self.status,
            addr: self.addr,
            shutdown,
            http_stop,
            server,
            worker: None,
        }
    }
}

/// The application running: HTTP, the metrics sampler and (after [`App::start`]) the worker.
pub struct RunningApp {
    ctx: Context,
    status: Arc<worker::Status>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    http_stop: CancellationToken,
    server: JoinHandle<()>,
    worker: Option<JoinHandle<()>>,
}

impl RunningApp {
    /// The context the worker runs on.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The database pool.
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.ctx.pool
    }

    /// Where HTTP listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a worker on this application's context, reporting to its readiness
    /// (`/readyz`), until `shutdown` is cancelled; the handle ends when it has drained.
    pub fn spawn_worker(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(worker::run(self.ctx.clone(), self.status.clone(), shutdown))
    }

    /// Waits for `shutdown`, then drains: the worker within `SHUTDOWN_GRACE_SECS` (it stops
    /// consuming, finishes what it holds, flushes the outbox), then the HTTP requests in
    /// flight within 3 s.
    pub async fn stopped(self) {
        self.shutdown.cancelled().await;
        if let Some(work) = self.worker {
            let grace = self.ctx.config.shutdown_grace;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: draining in-flight work"
            );
            match tokio::time::timeout(grace, work).await {
                Ok(_) => tracing::info!("drained"),
                Err(_) => tracing::warn!(
                    "drain took longer than SHUTDOWN_GRACE_SECS; unacked commands will be redelivered"
                ),
            }
        }
        // The HTTP endpoints served through the drain: a provider webhook routed here while
        // the pod's removal from the Service propagates is still taken (it only goes to the
        // queue, where the other pods apply it). Requests still running get HTTP_DRAIN, not
        // the admin API's own timeout, so the process ends within SHUTDOWN_GRACE_SECS +
        // HTTP_DRAIN.
        self.http_stop.cancel();
        if tokio::time::timeout(HTTP_DRAIN, self.server).await.is_err() {
            tracing::warn!(
                drain_secs = HTTP_DRAIN.as_secs(),
                "HTTP requests still running at exit were cut off"
            );
        }
    }
}

/// Creates the database if it is missing, connects, and migrates.
pub async fn migrate(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    store::ensure_database(&config.database_url)
        .await
        .map_err(|e| {
            Unreachable(format!(
                "creating the database if missing, at DATABASE_URL {}: {}",
                crate::config::redact_url(&config.database_url),
                store::describe_connect_error(&e)
            ))
        })?;
    let pool = connect::database(config, config.database_max_connections).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    Ok(pool)
}

/// Binds `HTTP_ADDR`; a port in use or a forbidden one is named as such.
async fn bind_http(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "port {} is already in use (another refund-worker, or another program, listens \
                 there; pick another port in HTTP_ADDR)",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "not allowed to listen on port {} (ports below 1024 need privileges)",
                addr.port()
            ),
            std::io::ErrorKind::AddrNotAvailable => {
                format!("{} is not an address of this machine", addr.ip())
            }
            _ => e.to_string(),
        };
        anyhow::anyhow!("listening on HTTP_ADDR {addr}: {why}")
    })
}

/// Connects to RabbitMQ once before starting: a broker that refuses us for good (a vhost
/// that does not exist, refused credentials) stops the start with the reason, instead of
/// an endless reconnect loop. A broker that is merely down is waited for, as before.
async fn broker_preflight(config: &Config) -> anyhow::Result<()> {
    match crate::broker::connect(&config.amqp_url, "refund-worker-preflight").await {
        Ok(connection) => {
            let _ = connection.close(200, "preflight".into()).await;
            Ok(())
        }
        Err(e) if e.is_amqp_error() => Err(Unreachable(format!(
            "connecting to RabbitMQ at AMQP_URL {}: {}",
            crate::config::redact_url(&config.amqp_url),
            crate::broker::describe_connect_error(&e)
        ))
        .into()),
        Err(e) => {
            tracing::warn!(
                amqp = %crate::config::redact_url(&config.amqp_url),
                error = %crate::broker::describe_connect_error(&e),
                "RabbitMQ is not reachable yet; the worker keeps trying"
            );
            Ok(())
        }
    }
}

/// One line each: where HTTP listens, the admin API, the providers, and a warning for each
/// provider whose webhooks cannot be verified.
fn log_start(config: &Config, addr: SocketAddr) {
    tracing::info!(addr = %addr, "HTTP listening (health, metrics, provider webhooks)");
    if config.admin_token.is_some() {
        tracing::info!(addr = %addr, "admin API on (/v1, bearer ADMIN_TOKEN)");
    } else {
        tracing::info!("admin API off (set ADMIN_TOKEN to enable /v1)");
    }
    let names: Vec<&str> = config.providers.keys().map(|p| p.as_str()).collect();
    if names.is_empty() {
        tracing::warn!(
            "no provider configured (PROVIDER_<NAME>_BASE_URL): every refund fails INVALID_COMMAND"
        );
    } else {
        tracing::info!(providers = %names.join(","), "providers configured");
    }
    for (name, settings) in &config.providers {
        if settings.webhook_secret.is_none() {
            let variable = format!(
                "PROVIDER_{}_WEBHOOK_SECRET",
                name.as_str().to_ascii_uppercase()
            );
            tracing::warn!(
                provider = name.as_str(),
                variable = %variable,
                "no webhook secret: this provider's webhooks are refused (set {variable})"
            );
        }
    }
}
