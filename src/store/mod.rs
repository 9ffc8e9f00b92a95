//! PostgreSQL: the source of truth and the idempotency guard.
//!
//! Every state change is one transaction that also writes the transition history and the
//! outbox event, so a crash can never leave a status change without its event or history.
//! No transaction is ever held open across a provider call: the dispatcher claims work
//! (short transaction), calls the provider, then records the result (short transaction).
//!
//! The transactions are the callers' (zero2prod's `try_processing` shape): a function here
//! that writes more than one statement takes `&mut PgConnection` (callers pass `&mut tx`, a `Transaction` derefs to one)
//! and only reads and writes; the caller ([`crate::pipeline`]) begins, commits or rolls
//! back, and the decisions between the reads and the writes are [`crate::domain`]'s. A
//! single statement (a claim, an operator's read) takes the pool.
//!
//! # Plans
//!
//! sqlx prepares every statement once per connection, and after five executions
//! PostgreSQL may keep one generic plan for it. For the batch statements that look refunds
//! or payments up by an array of keys, that plan is made for an unknown array on the
//! statistics of the moment: on a young database (tables of a page or two, not analyzed
//! again yet) a sequential scan, kept while the table grew a hundredfold. The benchmark
//! caught it (7 to 10 ms per lock of a few refunds at 25,000 refunds, in some runs and not
//! others). Those statements are therefore planned at each execution (`.persistent(false)`),
//! with the real keys and the table's current size, and also say `= ANY(keys)` on the
//! indexed column so the planner sees an index look-up. Planning them costs a little CPU per
//! batch, not per refund.

pub mod merchant_webhooks;
pub(crate) mod outbox;
pub mod provider_webhooks;
pub(crate) mod recovery;
pub mod refunds;
pub mod retention;
pub(crate) mod review;
pub mod stats;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};
use std::time::Duration;

pub use refunds::{
    CallRecord, ClaimedRefund, Intake, IntakeItem, Preclaim, RefundRow, RefundView, StepRecord,
    StoreUpdate, TransitionRow,
};

/// Where a status change's side effects go: the exchange its event is published on, and
/// the merchant endpoint used when a command has no `callbackUrl`.
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    /// Exchange of status events.
    pub exchange: String,
    /// Default merchant webhook endpoint.
    pub webhook_default_url: Option<String>,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database error.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row does not hold what the schema promises.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The caller's input cannot be used (e.g. a pagination cursor we did not issue).
    #[error("{0}")]
    Invalid(String),
    /// Concurrent writers kept changing what a transaction decided on; trying again later
    /// will see their committed work.
    #[error("contended: {0}")]
    Contended(String),
}

impl StoreError {
    /// Whether trying again later may succeed (see [`crate::error`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) => crate::error::sqlx_is_retryable(e),
            Self::Contended(_) => true,
            Self::Migrate(_) | Self::Corrupt(_) | Self::Invalid(_) => false,
        }
    }
}

/// Opens a connection pool. Connections are made lazily and re-made after the server
/// restarts, so a pool survives PostgreSQL restarts on its own.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let mut options: PgConnectOptions = url.parse()?;
    let sslmode_given = std::env::var_os("PGSSLMODE").is_some()
        || url::Url::parse(url).map_or(true, |u| u.query_pairs().any(|(k, _)| k == "sslmode"));
    if skip_tls(sslmode_given, options.get_host()) {
        options = options.ssl_mode(PgSslMode::Disable);
    }
    // One connection first, on its own: the pool's first connect retries until its acquire
    // timeout and then says only "pool timed out", hiding the cause (a closed port, a
    // missing database, a refused password).
    {
        use sqlx::Connection as _;
        let probe = sqlx::PgConnection::connect_with(&options).await?;
        let _ = probe.close().await;
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // No `SELECT 1` round trip before every checkout: a dead connection fails its
        // query instead, which every caller already treats as retryable (see error.rs).
        .test_before_acquire(false)
        .connect_with(options)
        .await?)
}

/// Why connecting failed, in words for an operator: the server's own message (a missing
/// database, a refused password), or the network's (connection refused, a name that does
/// not resolve), without sqlx's wrapping.
pub fn describe_connect_error(error: &StoreError) -> String {
    match error {
        StoreError::Database(sqlx::Error::Io(e)) => describe_io(e),
        StoreError::Database(sqlx::Error::Database(e)) => e.message().to_string(),
        StoreError::Database(sqlx::Error::Tls(e)) => format!("TLS: {e}"),
        StoreError::Database(sqlx::Error::Configuration(e)) => format!("the URL: {e}"),
        StoreError::Database(sqlx::Error::PoolTimedOut) => {
            "no connection could be made in time".into()
        }
        other => other.to_string(),
    }
}

/// An I/O error as an operator reads it: what happened, not `Connect` or `os error 111`.
pub fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let text = e.to_string();
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused (nothing listens on that port)".into(),
        ErrorKind::TimedOut => "connection timed out".into(),
        _ if text.contains("failed to lookup address")
            || text.contains("Name or service not known") =>
        {
            format!("the host name does not resolve (DNS): {text}")
        }
        _ => text,
    }
}

/// Whether to connect without TLS: only when nobody chose an `sslmode` (in the URL or
/// `PGSSLMODE`) and the server is on this machine (loopback or a Unix socket), where TLS
/// protects nothing and costs CPU on both ends (6% of the benchmark's throughput on the
/// loopback, BENCHMARKS.md). Anywhere else sqlx's default, `prefer`, uses TLS whenever the
/// server offers it.
fn skip_tls(sslmode_given: bool, host: &str) -> bool {
    let local = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !sslmode_given && local
}

/// Creates the database if it does not exist (local setups and tests).
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}

/// Applies the migrations in `migrations/` (embedded at build time).
///
/// Migrations newer than this binary are tolerated, so the previous release can still
/// start during a rollback (migrations are additive; see docs/operations.md).
///
/// Every pod migrates at start, so several may try at once. sqlx serialises them with a
/// *blocking* `pg_advisory_lock`, and a pod waiting in that statement holds a snapshot,
/// which a `CREATE INDEX CONCURRENTLY` in the lock holder's migration waits for: a lock
/// cycle PostgreSQL breaks by cancelling one side. If it cancels the index build, an
/// INVALID index is left behind, and the next pod's `CREATE INDEX ... IF NOT EXISTS` skips
/// it and records the migration as applied (the same bug: element-hq/matrix-authentication-
/// service#5297). So the worker takes sqlx's own lock (same key, so older binaries still
/// exclude us) by polling `pg_try_advisory_lock`, which holds no snapshot while it waits,
/// and afterwards refuses to start if any index of the schema is INVALID.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.set_locking(false);
    let mut conn = pool.acquire().await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let key = migration_lock_key(&database);
    while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `run_direct` on our connection: `run` takes an `Acquire`, whose lifetimes do not let
    // the future be spawned (sqlx's own comment on `run_direct`).
    let applied = migrator.run_direct(&mut *conn).await;
    // Released with the session too, should this connection die first.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(&mut *conn)
        .await;
    applied?;
    let invalid: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT i.indisvalid AND n.nspname = current_schema()
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !invalid.is_empty() {
        return Err(StoreError::Invalid(format!(
            "INVALID index(es) {} (a CREATE INDEX CONCURRENTLY that did not finish): \
             run REINDEX INDEX CONCURRENTLY on each, then start again (dropping it instead \
             would lose it for good when its migration is already recorded as applied) \
             (docs/operations.md, \"Upgrades and migrations\")",
            invalid.join(", ")
        )));
    }
    Ok(())
}

/// The advisory lock key sqlx's PostgreSQL migrator uses for `database` (sqlx-postgres
/// `generate_lock_id`): sharing it keeps binaries that lock the sqlx way and ours mutually
/// exclusive.
fn migration_lock_key(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::skip_tls;

    #[test]
    fn tls_is_skipped_only_for_a_local_server_nobody_chose_a_mode_for() {
        for host in [
            "127.0.0.1",
            "localhost",
            "::1",
            "[::1]",
            "/var/run/postgresql",
        ] {
            assert!(skip_tls(false, host), "{host}");
            assert!(!skip_tls(true, host), "{host} with an explicit sslmode");
        }
        for host in ["db.internal", "10.0.0.5", "refunds-pg-rw.refunds.svc"] {
            assert!(!skip_tls(false, host), "{host}");
        }
    }
}
