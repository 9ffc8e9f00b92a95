//! Connecting to PostgreSQL and RabbitMQ so that a failure names the setting, the target
//! (never a password) and the cause, once; `main` exits with code 5 for [`Unreachable`].

use crate::config::{redact_url, Config};
use std::time::Duration;

/// The database or the broker could not be reached: the message names the setting, the
/// target without its password, the step and the cause. `main` exits with
/// `cli::exit::UNREACHABLE` (5).
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
