//! RabbitMQ: topology, publishing with confirms, consuming with manual acks.

pub mod acks;
pub mod dlq;
pub mod publisher;
pub mod topology;

pub use acks::AckWindow;
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use lapin::{Connection, ConnectionProperties};

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-refund-worker-error";

/// Opens a connection. Reconnection is the caller's loop: a lapin connection does not
/// recover by itself, so the pipeline re-runs its consumers on a fresh one.
///
/// lapin runs its internal tasks and socket readiness on the calling tokio runtime (by
/// default it starts an async-global-executor and an async-io reactor of its own, and every
/// frame crossed their threads to reach ours). Must be called from within a tokio runtime.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    Connection::connect(url, props).await
}
