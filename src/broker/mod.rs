//! RabbitMQ: topology, publishing with confirms, consuming with manual acks.

pub(crate) mod acks;
pub mod dlq;
pub mod publisher;
pub mod topology;

pub use acks::AckWindow;
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use lapin::{Connection, ConnectionProperties, ErrorKind};

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-refund-worker-error";

/// Opens a connection. Reconnection is the caller's loop: the pipeline re-runs its
/// consumers on a fresh connection. lapin's own recovery (`enable_auto_recover`) stays
/// off: it would resume the consumers on new channels, whose delivery tags start again at
/// 1 under an [`AckWindow`] still holding the old ones.
///
/// lapin runs its internal tasks and socket readiness on the calling tokio runtime (its
/// `tokio` feature). Must be called from within a tokio runtime.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
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
    match error.kind() {
        ErrorKind::ProtocolError(e) => {
            let text = e.get_message().as_str();
            if text.contains("ACCESS_REFUSED") || text.contains("PLAIN login refused") {
                format!("the user or password was refused ({text})")
            } else {
                text.to_string()
            }
        }
        ErrorKind::IOError(e) => crate::store::describe_io(e),
        ErrorKind::InvalidConnectionState(_) => {
            "the broker closed the connection (wrong vhost, user or password?)".into()
        }
        _ => error.to_string(),
    }
}
