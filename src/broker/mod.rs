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
    let connected = Connection::connect(url, props).await;
    if connected.is_err() {
        // lapin's I/O loop outlives a refused connection by a moment; a command that exits
        // at once would pull the runtime from under it, and it would log "a Tokio 1.x
        // context was found, but it is being shutdown" as an ERROR.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    connected
}

/// Why connecting failed, in words for an operator: the broker's own reason (`vhost x not
/// found`, refused credentials) or the network's, each once.
pub fn describe_connect_error(error: &lapin::Error) -> String {
    match error {
        lapin::Error::ProtocolError(e) => {
            let text = e.get_message().as_str();
            if text.contains("ACCESS_REFUSED") || text.contains("PLAIN login refused") {
                format!("the user or password was refused ({text})")
            } else {
                text.to_string()
            }
        }
        lapin::Error::IOError(e) => crate::store::describe_io(e),
        lapin::Error::InvalidConnectionState(_) => {
            "the broker closed the connection (wrong vhost, user or password?)".into()
        }
        other => other.to_string(),
    }
}
