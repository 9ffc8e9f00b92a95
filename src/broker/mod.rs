//! RabbitMQ: topology, publishing with confirms, consuming with manual acks.

pub(crate) mod acks;
pub mod dlq;
pub mod publisher;
pub mod topology;

pub use acks::AckWindow;
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-refund-worker-error";

/// The AMQP frame size a publish-only connection ([`connect_publishing`]) proposes, unless
/// `AMQP_URL` names one (`?frame_max=`); RabbitMQ's own default is 128 KiB.
///
/// lapin keeps a buffer of 32 frames each way per connection, allocated and zeroed at the
/// negotiated size: 8 MiB a connection at 128 KiB (a heap profile of the worker under load,
/// BENCHMARKS.md tenth session). A body larger than a frame travels in several frames, but
/// a message's properties (its headers) must fit in one, and lapin closes the whole
/// connection on a frame larger than it negotiated (checked on this broker: a 40 KB header
/// table against 16 KiB frames, `FRAMEERROR`). So only a connection that receives nothing
/// but the broker's answers to its own publishes (confirms, and returns of its own
/// messages, whose headers the ingress bounds far below this) proposes the small size; a
/// connection that consumes what others published keeps the broker's, or one upstream
/// message with large headers would break it on every delivery.
pub const PUBLISHING_FRAME_MAX: u32 = 16 * 1024;

/// Opens a connection. Reconnection is the caller's loop: the pipeline re-runs its
/// consumers on a fresh connection. lapin's own recovery (`enable_auto_recover`) stays
/// off: it would resume the consumers on new channels, whose delivery tags start again at
/// 1 under an [`AckWindow`] still holding the old ones.
///
/// lapin runs its internal tasks and socket readiness on the calling tokio runtime (its
/// `tokio` feature). Must be called from within a tokio runtime.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    open(url, name, None).await
}

/// [`connect`] for a connection that only publishes messages the worker builds itself
/// (the provider webhook ingress): it proposes [`PUBLISHING_FRAME_MAX`], 7 MiB less memory.
pub async fn connect_publishing(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    open(url, name, Some(PUBLISHING_FRAME_MAX)).await
}

async fn open(url: &str, name: &str, frame_max: Option<u32>) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let connected = match parse_url(url, frame_max) {
        Ok(uri) => Connection::connect_uri(uri, props).await,
        Err(e) => Err(std::io::Error::other(e).into()),
    };
    if connected.is_err() {
        // lapin's I/O loop outlives a refused connection by a moment; a command that exits
        // at once would pull the runtime from under it, and it would log "a Tokio 1.x
        // context was found, but it is being shutdown" as an ERROR.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    connected
}

/// `url` parsed, proposing `frame_max` unless the URL sets a frame size itself.
fn parse_url(url: &str, frame_max: Option<u32>) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    if let Some(frame_max) = frame_max {
        uri.query.frame_max.get_or_insert(frame_max);
    }
    Ok(uri)
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
