//! Test harness: spawns an isolated app (database, topology, sandbox, worker), built and
//! served by `refund_worker::app` as `run` builds and serves it.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use refund_sandbox::{Faults, Sandbox, SandboxConfig};
use refund_worker::app::{App, RunningApp};
use refund_worker::broker::publisher::json_properties;
use refund_worker::broker::{self, topology, Publisher, Topology, ERROR_HEADER};
use refund_worker::config::Config;
use refund_worker::domain::{RefundEvent, RefundStatus};
use refund_worker::pipeline::{worker, Context};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// PostgreSQL server for tests (a database per test is created on it).
pub fn pg_server() -> String {
    std::env::var("TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// RabbitMQ for tests.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| refund_worker::config::DEFAULT_AMQP_URL.into())
}

/// How long a test waits for something that should happen within a second or two.
pub const WAIT: Duration = Duration::from_secs(20);

/// The merchant webhook signing secret used by tests.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The admin API token used by tests.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running, isolated refund-worker.
pub struct TestApp {
    pub ctx: Context,
    pub pool: PgPool,
    pub sandbox: Sandbox,
    /// Base URL of the app's HTTP API (health, metrics, admin, the webhook ingress).
    pub http_base: String,
    pub topology: Topology,
    pub connection: lapin::Connection,
    pub publisher: Publisher,
    events: lapin::Consumer,
    /// Events received so far, by refund.
    pub seen: Vec<RefundEvent>,
    db_name: String,
    sandbox_stop: CancellationToken,
    /// HTTP and the metrics sampler, until `app_stop`; workers come and go separately.
    app: RunningApp,
    app_stop: CancellationToken,
    worker: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

/// Settings tweaks for one test.
pub struct Options {
    pub sandbox: SandboxConfig,
    pub env: Vec<(&'static str, String)>,
    /// Let the sandbox's providers send their notifications to refund-worker's webhook
    /// ingress.
    pub ingress: bool,
    /// How often the `/metrics` gauges are sampled.
    pub metrics_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sandbox: SandboxConfig {
                completion_delay: Duration::from_millis(150),
                hang: Duration::from_secs(3),
                ..SandboxConfig::default()
            },
            env: Vec::new(),
            ingress: false,
            metrics_every: Duration::from_secs(15),
        }
    }
}

impl TestApp {
    /// Spawns with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    /// Creates a database and topology, starts the sandbox and the app's HTTP API; the
    /// worker is not started (tests drive the steps, or call `start_worker`).
    pub async fn spawn_with(options: Options) -> Self {
        let _ = tracing_subscriber_init();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("rw_test_{}", &id[..16]);
        let database_url = format!("{}/{db_name}", pg_server());

        let sandbox_stop = CancellationToken::new();
        let mut sandbox_config = options.sandbox;
        // Bound first: the sandbox's providers must know where the ingress is.
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let http_base = format!("http://{}", http_listener.local_addr().expect("addr"));
        if options.ingress {
            sandbox_config.webhook_url = Some(http_base.clone());
        }
        let sandbox_env = sandbox_config.clone();
        let sandbox = Sandbox::new(sandbox_config);
        let stop = sandbox_stop.clone();
        let (addr, _) = sandbox
            .spawn(0, async move { stop.cancelled().await })
            .await
            .expect("sandbox");

        let mut env: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL", database_url),
            ("AMQP_URL", amqp_url()),
            ("AMQP_NAME_PREFIX", format!("test-{}.", &id[..12])),
            ("CLAIM_LEASE_SECS", "10".into()),
            ("RETRY_INITIAL_MS", "50".into()),
            ("RETRY_MAX_MS", "400".into()),
            ("POLL_INITIAL_MS", "60".into()),
            ("POLL_MAX_MS", "300".into()),
            ("IDLE_POLL_MS", "50".into()),
            ("MAX_SUBMIT_ATTEMPTS", "5".into()),
            ("PREFETCH", "16".into()),
            ("WEBHOOK_TIMEOUT_MS", "1000".into()),
            ("WEBHOOK_SIGNING_SECRET", WEBHOOK_SECRET.into()),
            ("WEBHOOK_RETRY_SCHEDULE", "0s,100ms,200ms,300ms".into()),
            // Merchant endpoints in tests are on loopback: allowed explicitly.
            ("WEBHOOK_ALLOW_NETWORKS", "127.0.0.0/8".into()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ])
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Every provider points at the sandbox, with its credentials and a short timeout.
        env.extend(sandbox_env.provider_env(addr));
        for p in ["VA_SERVICES", "BPN", "BINANCE_PAY", "BVNK"] {
            env.insert(format!("PROVIDER_{p}_TIMEOUT_MS"), "1000".into());
        }
        // An empty value removes a setting (e.g. to leave a provider unconfigured).
        for (k, v) in options.env {
            if v.is_empty() {
                env.remove(k);
            } else {
                env.insert(k.to_owned(), v);
            }
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        let app_stop = CancellationToken::new();
        let app = App::builder(config)
            .listener(http_listener)
            .metrics_every(options.metrics_every)
            .build()
            .await
            .expect("the app builds")
            .serve(app_stop.clone());
        let ctx = app.context().clone();
        let pool = ctx.pool.clone();
        let topology = ctx.topology.clone();

        let connection = broker::connect(&amqp_url(), "refund-worker-tests")
            .await
            .expect("amqp");
        let channel = connection.create_channel().await.expect("channel");
        topology.declare(&channel).await.expect("declare");
        // Our own subscriber to status events, like any downstream consumer.
        let events_queue = format!("{}events", ctx.config.amqp_name_prefix);
        topology::subscribe_status_events(&channel, &topology.exchange, &events_queue, false)
            .await
            .expect("events queue");
        let events = channel
            .basic_consume(
                events_queue.as_str().into(),
                "tests".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume events");
        let publisher = Publisher::open(&connection).await.expect("publisher");
        Self {
            ctx,
            pool,
            sandbox,
            topology,
            connection,
            publisher,
            events,
            seen: Vec::new(),
            db_name,
            sandbox_stop,
            app,
            app_stop,
            worker: None,
            http_base,
        }
    }

    /// Starts the worker (consumer, dispatcher, relay) in-process, as `run` starts it.
    pub fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "worker already running");
        let stop = CancellationToken::new();
        let handle = self.app.spawn_worker(stop.clone());
        self.worker = Some((stop, handle));
    }

    /// Starts a second, independent worker on the same database and queue.
    pub fn spawn_extra_worker(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let ctx = Context::new(
            self.pool.clone(),
            (*self.ctx.config).clone(),
            self.ctx.providers.clone(),
        );
        let handle = tokio::spawn(worker::run(
            ctx,
            Arc::new(worker::Status::default()),
            stop.clone(),
        ));
        (stop, handle)
    }

    /// Stops the worker gracefully (drains in-flight work).
    pub async fn stop_worker(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            stop.cancel();
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("worker drains in time")
                .expect("worker task");
        }
    }

    /// Kills the worker abruptly (like SIGKILL: no drain, no flush).
    pub fn kill_worker(&mut self) {
        if let Some((_, handle)) = self.worker.take() {
            handle.abort();
        }
    }

    /// Publishes a command (JSON) to `refunds` with `refund.request`.
    pub async fn publish(&self, command: &Value) {
        self.publish_raw(command.to_string().as_bytes()).await;
    }

    /// Publishes raw bytes as a command.
    pub async fn publish_raw(&self, body: &[u8]) {
        self.publisher
            .publish(broker::publisher::Outgoing {
                exchange: &self.topology.exchange,
                routing_key: topology::COMMAND_ROUTING_KEY,
                payload: body,
                properties: json_properties(&uuid::Uuid::new_v4().to_string()),
            })
            .await
            .expect("publish confirmed");
    }

    /// Waits for the next status event.
    pub async fn next_event(&mut self) -> RefundEvent {
        let delivery = tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("an event within the wait")
            .expect("events stream open")
            .expect("event delivery");
        let event: RefundEvent =
            serde_json::from_slice(&delivery.data).expect("event JSON matches the contract");
        assert_eq!(
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            Some(event.event_id.to_string()),
            "message_id is the eventId"
        );
        self.seen.push(event.clone());
        event
    }

    /// Waits until `reference` has an event with `status`, returning it.
    pub async fn wait_for(&mut self, reference: &str, status: RefundStatus) -> RefundEvent {
        if let Some(e) = self
            .seen
            .iter()
            .find(|e| e.refund_reference == reference && e.status == status)
        {
            return e.clone();
        }
        loop {
            let e = self.next_event().await;
            if e.refund_reference == reference && e.status == status {
                return e;
            }
        }
    }

    /// Waits until `reference` reaches a final status, returning that event.
    pub async fn wait_final(&mut self, reference: &str) -> RefundEvent {
        loop {
            if let Some(e) = self
                .seen
                .iter()
                .find(|e| e.refund_reference == reference && e.status.is_final())
            {
                return e.clone();
            }
            self.next_event().await;
        }
    }

    /// Events seen for `reference`, in arrival order.
    pub fn events_for(&self, reference: &str) -> Vec<RefundEvent> {
        self.seen
            .iter()
            .filter(|e| e.refund_reference == reference)
            .cloned()
            .collect()
    }

    /// Takes one message from the command DLQ: (body, reason header).
    pub async fn dlq_get(&self) -> Option<(Vec<u8>, String)> {
        let channel = self.connection.create_channel().await.expect("channel");
        for _ in 0..100 {
            if let Some(msg) = channel
                .basic_get(
                    self.topology.commands_dlq.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .expect("basic_get")
            {
                let reason = topology::header_str(msg.delivery.properties.headers(), ERROR_HEADER)
                    .unwrap_or_default();
                msg.delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .expect("ack");
                return Some((msg.delivery.data, reason));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Messages ready in `queue` (not counting those delivered and not yet acknowledged).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = channel.close(200, "done".into()).await;
        q.message_count()
    }

    /// Injects sandbox faults.
    pub fn faults(&self, faults: Faults) {
        self.sandbox.inject(faults);
    }

    /// The refund's status in the database.
    pub async fn db_status(&self, reference: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM refunds WHERE refund_reference = $1")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
            .expect("query")
    }

    /// Polls `check` until it is true or the wait runs out.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    /// The base URL of the app's HTTP API (health and admin), served as `run` serves it.
    pub async fn serve_http(&self) -> String {
        self.http_base.clone()
    }

    /// A client of the app's admin routes, with the token.
    pub async fn admin(&self) -> Admin {
        Admin {
            base: self.serve_http().await,
            client: reqwest::Client::new(),
        }
    }

    /// Deliveries of a refund as the admin API shows them.
    pub async fn deliveries(
        &self,
        reference: &str,
    ) -> Vec<refund_worker::store::merchant_webhooks::DeliveryRow> {
        refund_worker::store::merchant_webhooks::for_refund(&self.pool, reference)
            .await
            .expect("deliveries")
    }

    /// Stops everything and drops the database and topology.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        self.app_stop.cancel();
        self.app.stopped().await;
        self.sandbox_stop.cancel();
        if let Ok(channel) = self.connection.create_channel().await {
            let _ = self.topology.delete(&channel).await;
        }
        let _ = self.connection.close(200, "done".into()).await;
        self.pool.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", pg_server())).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
        }
    }
}

/// An authenticated client of the admin API.
pub struct Admin {
    /// Base URL of the HTTP server.
    pub base: String,
    pub client: reqwest::Client,
}

impl Admin {
    /// `GET path` with the admin token.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        self.client
            .get(url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin GET")
    }

    /// `POST path` with a JSON body and the admin token.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        let url = format!("{}{path}", self.base);
        self.client
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .expect("admin POST")
    }

    /// `GET path`, answer as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("JSON answer")
    }

    /// `POST path`, answer as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Value {
        self.post(path, body)
            .await
            .json()
            .await
            .expect("JSON answer")
    }
}

/// A valid VA Services command.
pub fn va_command(reference: &str, amount: &str) -> Value {
    json!({
        "refundReference": reference,
        "provider": "va_services",
        "transactionReference": format!("txn-{reference}"),
        "amount": amount,
        "currency": "NGN",
        "reason": "Order cancelled!",
        "customerNote": "An optional note",
        "destination": {"accountNumber": "0040088210", "bankCode": "000012"}
    })
}

/// A unique reference.
pub fn reference(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

fn tracing_subscriber_init() -> Result<(), ()> {
    if std::env::var("TEST_LOG").is_ok() {
        refund_worker::telemetry::init(
            refund_worker::telemetry::SERVICE_FILTER,
            refund_worker::telemetry::LogTo::Stdout,
        );
    }
    Ok(())
}

/// The plans of `statements` (EXPLAIN, JSON) with sequential scans disabled: the planner
/// then picks one only where no index can answer, so a plan with one means a statement
/// that reads a whole table.
pub async fn plans_without_seq_scans(
    app: &TestApp,
    statements: impl IntoIterator<Item = String>,
) -> Vec<(String, Value)> {
    let mut conn = app.pool.acquire().await.expect("connection");
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .expect("set");
    let mut plans = Vec::new();
    for statement in statements {
        let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {statement}"))
            .fetch_one(&mut *conn)
            .await
            .expect("explain");
        plans.push((statement, plan));
    }
    plans
}

/// Every scan node of a JSON plan with the index it reads (None for a sequential scan); a
/// bitmap heap scan is judged by the bitmap index scan below it.
pub fn collect_scans(plan: &Value) -> Vec<(String, Option<String>)> {
    fn walk(plan: &Value, out: &mut Vec<(String, Option<String>)>) {
        match plan {
            Value::Object(node) => {
                if let Some(kind) = node.get("Node Type").and_then(|k| k.as_str()) {
                    let index = node.get("Index Name").and_then(|i| i.as_str());
                    if kind == "Seq Scan" || index.is_some() {
                        out.push((kind.to_owned(), index.map(str::to_owned)));
                    }
                }
                node.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// Applies one parsed provider webhook in a transaction of its own, as a lane does with a
/// batch ([`refund_worker::pipeline::provider_webhooks::receive_batch`]).
pub async fn receive_webhook(
    pool: &PgPool,
    provider: refund_worker::domain::ProviderName,
    body: &[u8],
    part: usize,
    webhook: &refund_worker::providers::ProviderWebhook,
    sink: &refund_worker::store::EventSink,
) -> Result<refund_worker::store::provider_webhooks::Applied, refund_worker::store::StoreError> {
    let mut tx = pool.begin().await?;
    let applied = refund_worker::store::provider_webhooks::receive(
        &mut tx, provider, body, part, webhook, sink,
    )
    .await?;
    tx.commit().await?;
    Ok(applied)
}

/// Tries a parked webhook again in a transaction of its own, as the parked sweep does.
pub async fn retry_parked(
    pool: &PgPool,
    provider: refund_worker::domain::ProviderName,
    key: &str,
    webhook: &refund_worker::providers::ProviderWebhook,
    give_up: bool,
    sink: &refund_worker::store::EventSink,
) -> Result<refund_worker::store::provider_webhooks::Applied, refund_worker::store::StoreError> {
    let mut tx = pool.begin().await?;
    let applied = refund_worker::store::provider_webhooks::retry_parked(
        &mut tx, provider, key, webhook, give_up, sink,
    )
    .await?;
    tx.commit().await?;
    Ok(applied)
}
