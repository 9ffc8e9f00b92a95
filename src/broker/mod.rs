//! RabbitMQ: topology, publishing with confirms, consuming with manual acks.

pub mod dlq;
pub mod publisher;
pub mod topology;

pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use lapin::{Connection, ConnectionProperties};

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-refund-worker-error";

/// Opens a connection. Reconnection is the caller's loop: a lapin connection does not
/// recover by itself, so the pipeline re-runs its consumers on a fresh one.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await
}
