//! Exit codes of every command, and connecting to the database and the broker so that a
//! failure names the setting, the target (never a password) and the cause, once.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | an operation failed |
//! | 2 | usage error (clap's own code too) |
//! | 3 | `reconcile`: mismatches found |
//! | 4 | the thing named does not exist |
//! | 5 | the database or the broker could not be reached |

use crate::config::{redact_url, Config};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code: an operation failed.
pub const FAILURE: u8 = 1;
/// Exit code: a usage error (a bad option or combination of options).
pub const USAGE: u8 = 2;
/// Exit code: the refund, dead letter or webhook named does not exist.
pub const NOT_FOUND: u8 = 4;
/// Exit code: PostgreSQL or RabbitMQ could not be reached (or refused us).
pub const UNREACHABLE: u8 = 5;

/// `ExitCode` for "not found".
pub fn not_found() -> ExitCode {
    ExitCode::from(NOT_FOUND)
}

/// `ExitCode` for a usage error.
pub fn usage() -> ExitCode {
    ExitCode::from(USAGE)
}

/// The database or the broker could not be reached: the message names the setting, the
/// target without its password, the step and the cause. `main` exits with [`UNREACHABLE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// How long one connection attempt may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `url` points, for messages: the URL without its password.
fn target(url: &str) -> String {
    redact_url(url)
}

/// Connects to PostgreSQL for a one-shot command (a pool of `size`), with an error naming
/// `DATABASE_URL`'s target and the real cause (not sqlx's "pool timed out").
pub async fn database(config: &Config, size: u32) -> anyhow::Result<sqlx::PgPool> {
    database_url(&config.database_url, size).await
}

/// [`database`] for a URL.
pub async fn database_url(url: &str, size: u32) -> anyhow::Result<sqlx::PgPool> {
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, crate::store::connect(url, size)).await;
    match attempt {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(e)) => Err(Unreachable(format!(
            "connecting to PostgreSQL at DATABASE_URL {}: {}",
            target(url),
            crate::store::describe_connect_error(&e)
        ))
        .into()),
        Err(_) => Err(Unreachable(format!(
            "connecting to PostgreSQL at DATABASE_URL {}: no answer within {}s",
            target(url),
            CONNECT_TIMEOUT.as_secs()
        ))
        .into()),
    }
}

/// Connects to RabbitMQ, with an error naming `AMQP_URL`'s target (host and vhost) and the
/// broker's reason (a missing vhost, refused credentials, a closed port).
pub async fn broker(config: &Config, name: &str) -> anyhow::Result<lapin::Connection> {
    let url = &config.amqp_url;
    match tokio::time::timeout(CONNECT_TIMEOUT, crate::broker::connect(url, name)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Unreachable(format!(
            "connecting to RabbitMQ at AMQP_URL {}: {}",
            target(url),
            crate::broker::describe_connect_error(&e)
        ))
        .into()),
        Err(_) => Err(Unreachable(format!(
            "connecting to RabbitMQ at AMQP_URL {}: no answer within {}s",
            target(url),
            CONNECT_TIMEOUT.as_secs()
        ))
        .into()),
    }
}

/// The exit code for an error that ended a command: [`UNREACHABLE`] when the database or
/// broker could not be reached, else [`FAILURE`].
pub fn code_for(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(|e| e.is::<Unreachable>()) {
        ExitCode::from(UNREACHABLE)
    } else {
        ExitCode::from(FAILURE)
    }
}

/// The error and its causes on one line, each cause once: libraries often repeat their
/// source's text in their own (`pool timed out: pool timed out`), which `{:#}` would print
/// twice.
pub fn message(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let e = anyhow::Error::msg("pool timed out").context("database: pool timed out");
        let e = e.context("connecting");
        assert_eq!(message(&e), "connecting: database: pool timed out");
        assert_eq!(code_for(&e), ExitCode::from(FAILURE));
        let e = anyhow::Error::from(Unreachable("x".into())).context("step");
        assert_eq!(code_for(&e), ExitCode::from(UNREACHABLE));
    }
}
