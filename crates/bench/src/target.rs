//! The worker under test, as the bench knows it: told by the worker's command line, never
//! imported. The bench is a load tool of its own: it publishes commands as any upstream
//! system would, receives status events as any downstream consumer would, reads the worker's
//! database with SQL and starts the worker as a child process. What it must know of the
//! worker (its settings under an environment, its exchange and queue names) comes in a
//! [`Worker`], filled in by `refund-worker bench`.

use serde::Serialize;
use std::path::PathBuf;

/// A lookup of environment variables.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The worker under test.
pub struct Worker {
    /// The executable, started as `<exe> migrate` and `<exe> run`.
    pub exe: PathBuf,
    /// The settings the worker would run with under an environment; an error says why it
    /// would refuse to start.
    #[allow(clippy::type_complexity)]
    pub settings: Box<dyn Fn(Lookup<'_>) -> anyhow::Result<Settings> + Send + Sync>,
}

/// What the bench needs of the worker's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// RabbitMQ.
    pub amqp_url: String,
    /// The exchanges and queues it declares, under its `AMQP_NAME_PREFIX`.
    pub names: Names,
    /// The settings that shape the figures (also in the report).
    pub shaping: WorkerSettings,
    /// The statements the worker runs often or on big tables, with their parameters
    /// written in as literals, for the plan check at size (`--preload`).
    pub hot_statements: Vec<HotStatement>,
}

/// One statement of the worker's, ready for `EXPLAIN`.
#[derive(Debug, Clone)]
pub struct HotStatement {
    /// Where it runs (for the report).
    pub name: String,
    /// The SQL, parameters written in.
    pub sql: String,
}

/// The worker settings that shape the figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSettings {
    /// `PREFETCH`.
    pub prefetch: u16,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// `INTAKE_BATCH`.
    pub intake_batch: usize,
    /// `WEBHOOK_LANES`.
    pub webhook_lanes: usize,
    /// `DISPATCH_BATCH`.
    pub dispatch_batch: i64,
    /// `DISPATCH_CONCURRENCY`.
    pub dispatch_concurrency: usize,
    /// `IDLE_POLL_MS`.
    pub idle_poll_ms: u128,
    /// `POLL_INITIAL_MS`.
    pub poll_initial_ms: u128,
    /// `RUST_LOG` of the worker (unset: the service default).
    pub log_filter: String,
}

/// The worker's exchange and queue names.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Where commands are published and status events come from.
    pub exchange: String,
    /// The routing key of a refund command.
    pub command_routing_key: String,
    /// The binding that receives every status event.
    pub status_binding: String,
    /// Every exchange it declares (deleted after the run).
    pub exchanges: Vec<String>,
    /// Every queue it declares (deleted after the run).
    pub queues: Vec<String>,
    /// The queues commands wait in while no worker consumes them (for a backlog: the bench
    /// starts the draining worker once they hold every command).
    pub command_queues: Vec<String>,
}
