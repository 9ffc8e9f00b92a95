//! Dead-letter queues for operators: list, show, replay.
//!
//! Listing reads messages without acknowledging them and closes the channel, which returns
//! them to the queue. Replay republishes a dead letter to where it came from (with
//! confirms) and only then removes it from the dead-letter queue. One replay run looks at
//! each message present at its start at most once, so a message that is still bad and is
//! dead-lettered again by the worker is not replayed in a loop.

use super::publisher::{Outgoing, Publisher};
use super::topology::header_str;
use super::ERROR_HEADER;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use sha2::{Digest, Sha256};

/// Header counting how many times a message was replayed.
pub const REPLAYED_HEADER: &str = "x-refund-worker-replayed";

/// One dead letter.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Stable id: the AMQP `message_id`, or `sha256:` and 16 hex digits of a hash of the
    /// message's headers and body when it has none. Positions shift as messages are replayed
    /// (and as listings return them); ids do not.
    #[schema(example = "sha256:3f2a9c0d1e4b5a67")]
    pub id: String,
    /// Position in the queue when listed (1-based); it shifts, so select by id.
    pub position: usize,
    /// AMQP `message_id`, if the publisher set one.
    pub message_id: Option<String>,
    /// Why it was dead-lettered (`x-refund-worker-error`, or the broker's `x-death` reason).
    pub reason: Option<String>,
    /// Exchange it was first published to.
    pub original_exchange: Option<String>,
    /// Routing key it was first published with.
    pub original_routing_key: Option<String>,
    /// Times replayed before.
    pub replayed: i64,
    /// Body as text (lossy UTF-8).
    pub body: String,
}

/// Which dead letters to replay: exactly one selector. They used to be optional fields that
/// were ANDed together, so `--id X --position 1` replayed nothing or something unexpected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFilter {
    /// The message(s) with this id ([`DeadLetter::id`]: the `message_id`, or the derived
    /// `sha256:...` one).
    Id(String),
    /// The message at this position (1-based, as `list` shows it).
    Position(usize),
    /// Messages whose reason contains this text.
    ReasonContains(String),
    /// Every message.
    All,
}

impl ReplayFilter {
    /// The one selector among optional ones (a request body's or flags'), or why not:
    /// `names` are how the caller calls them (`messageId` or `--id`...), for the message.
    pub fn exactly_one(
        id: Option<String>,
        position: Option<usize>,
        reason_contains: Option<String>,
        all: bool,
        names: [&str; 4],
    ) -> Result<Self, String> {
        let mut given = Vec::new();
        if let Some(id) = id {
            given.push((names[0], Self::Id(id)));
        }
        if let Some(p) = position {
            if p == 0 {
                return Err(format!("{} counts from 1", names[1]));
            }
            given.push((names[1], Self::Position(p)));
        }
        if let Some(text) = reason_contains {
            given.push((names[2], Self::ReasonContains(text)));
        }
        if all {
            given.push((names[3], Self::All));
        }
        match given.len() {
            1 => Ok(given.remove(0).1),
            0 => Err(format!(
                "say what to replay: exactly one of {}",
                names.join(", ")
            )),
            _ => Err(format!(
                "give exactly one of {}, not {}",
                names.join(", "),
                given
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(" and ")
            )),
        }
    }

    fn matches(&self, d: &DeadLetter) -> bool {
        match self {
            Self::Id(id) => d.id == *id,
            Self::Position(p) => *p == d.position,
            Self::ReasonContains(text) => d.reason.as_deref().unwrap_or("").contains(text.as_str()),
            Self::All => true,
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Messages looked at.
    pub examined: usize,
    /// Messages that matched the filter.
    pub matched: usize,
    /// Republished (confirmed) and removed from the dead-letter queue.
    pub replayed: usize,
    /// Matched but could not be republished (left in the dead-letter queue).
    pub failed: usize,
    /// Whether this was a dry run (nothing republished or removed).
    pub dry_run: bool,
    /// The matched messages.
    pub messages: Vec<DeadLetter>,
}

/// Errors of dead-letter operations.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Broker.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The queue does not exist.
    #[error("queue `{0}` does not exist")]
    NoQueue(String),
}

/// Number of messages in `queue`.
pub async fn depth(connection: &Connection, queue: &str) -> Result<u32, DlqError> {
    let channel = connection.create_channel().await?;
    let depth = depth_on(&channel, queue).await;
    // A passive declare of a missing queue closes the channel; closing it again is harmless.
    let _ = channel.close(200, "depth".into()).await;
    depth
}

/// Number of messages in `queue`, asked on an existing channel.
pub async fn depth_on(channel: &lapin::Channel, queue: &str) -> Result<u32, DlqError> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = channel
        .queue_declare(queue_name(queue)?, options, FieldTable::default())
        .await
        .map_err(|_| DlqError::NoQueue(queue.to_owned()))?;
    Ok(q.message_count())
}

/// A queue's name as AMQP sends it: at most 255 bytes (lapin panics on a longer one), so a
/// longer name is a queue that cannot exist.
fn queue_name(queue: &str) -> Result<ShortString, DlqError> {
    ShortString::try_new(queue).map_err(|_| DlqError::NoQueue(queue.to_owned()))
}

/// Reads up to `limit` dead letters without removing them.
pub async fn list(
    connection: &Connection,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let total = depth(connection, queue).await? as usize;
    let channel = connection.create_channel().await?;
    let mut out = Vec::new();
    for position in 1..=total.min(limit) {
        let get = channel.basic_get(queue_name(queue)?, BasicGetOptions::default());
        let Some(msg) = get.await? else {
            break;
        };
        out.push(describe(
            position,
            &msg.delivery.properties,
            &msg.delivery.data,
        ));
    }
    // Closing the channel returns every unacknowledged message to the queue. Wait for the
    // whole queue, not just for as many as were read: the unread ones are counted at once,
    // so "at least as many as read" held before anything came back, and a replay right
    // after a partial listing (`--position N --yes`) missed the message it was to replay.
    let _ = channel.close(200, "listed".into()).await;
    settle_depth(connection, queue, total).await;
    Ok(out)
}

/// Waits (briefly) until `queue` counts at least `expected` messages again (all it held but
/// those removed): a quorum queue takes the messages we put back through its log, and an
/// operator's next `list` or `replay` right after this one must see them all.
async fn settle_depth(connection: &Connection, queue: &str, expected: usize) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        match depth(connection, queue).await {
            Ok(d) if d as usize >= expected => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(_) => return,
        }
    }
}

/// Replays the dead letters matching `filter` to where they came from (`fallback` when a
/// message does not say: the broker's own dead-lettering does not record it).
pub async fn replay(
    connection: &Connection,
    queue: &str,
    filter: &ReplayFilter,
    fallback: (&str, &str),
    dry_run: bool,
    on_progress: impl Fn(usize, usize),
) -> Result<ReplayReport, DlqError> {
    let total = depth(connection, queue).await? as usize;
    let channel = connection.create_channel().await?;
    let publisher = Publisher::open(connection).await?;
    let mut report = ReplayReport {
        dry_run,
        ..Default::default()
    };
    let mut keep = Vec::new();
    for position in 1..=total {
        let get = channel.basic_get(queue_name(queue)?, BasicGetOptions::default());
        let Some(msg) = get.await? else {
            break;
        };
        report.examined += 1;
        on_progress(position, total);
        let d = describe(position, &msg.delivery.properties, &msg.delivery.data);
        if !filter.matches(&d) {
            keep.push(msg.delivery);
            continue;
        }
        report.matched += 1;
        report.messages.push(d.clone());
        if dry_run {
            keep.push(msg.delivery);
            continue;
        }
        let exchange = d
            .original_exchange
            .clone()
            .unwrap_or_else(|| fallback.0.to_owned());
        let routing_key = d
            .original_routing_key
            .clone()
            .unwrap_or_else(|| fallback.1.to_owned());
        let properties = replay_properties(&msg.delivery.properties, d.replayed + 1);
        let sent = publisher
            .publish(Outgoing {
                exchange: &exchange,
                routing_key: &routing_key,
                payload: &msg.delivery.data,
                properties,
            })
            .await;
        match sent {
            Ok(()) => {
                // Removed only now that the broker confirmed the republished copy.
                super::acks::sent(msg.delivery.ack(BasicAckOptions::default()).await?)?;
                report.replayed += 1;
            }
            Err(e) => {
                tracing::warn!(position, error = %e, "replay failed; the dead letter stays");
                report.failed += 1;
                keep.push(msg.delivery);
            }
        }
    }
    for delivery in keep {
        let requeue = BasicNackOptions {
            requeue: true,
            ..Default::default()
        };
        super::acks::sent(delivery.nack(requeue).await?)?;
    }
    let _ = channel.close(200, "replayed".into()).await;
    let _ = publisher.channel().close(200, "replayed".into()).await;
    settle_depth(connection, queue, total.saturating_sub(report.replayed)).await;
    Ok(report)
}

/// What `dlq list` shows of one message (also the fuzz harness's dead-letter decoding).
pub fn describe(position: usize, props: &BasicProperties, body: &[u8]) -> DeadLetter {
    let headers = props.headers();
    let replayed = headers
        .as_ref()
        .and_then(|h| h.inner().get(REPLAYED_HEADER).cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => Some(n),
            AMQPValue::LongInt(n) => Some(n.into()),
            _ => None,
        })
        .unwrap_or(0);
    let mut text = String::from_utf8_lossy(body).into_owned();
    if text.len() > 4096 {
        let cut = (0..=4096)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    DeadLetter {
        id: stable_id(props, body),
        position,
        message_id: props.message_id().as_ref().map(|m| m.to_string()),
        reason: header_str(headers, ERROR_HEADER).or_else(|| death_reason(headers)),
        original_exchange: header_str(headers, "x-original-exchange"),
        original_routing_key: header_str(headers, "x-original-routing-key"),
        replayed,
        body: mask_account_numbers(&text),
    }
}

/// Masks the value of every `accountNumber` (or `account_number`) in a message body as
/// everywhere else (`******7886`, see [`crate::domain::command::mask`]), whether or not the
/// body is valid JSON: operators see the reason and the shape, not the account. Only what is
/// shown is masked; a replay republishes the original bytes.
pub fn mask_account_numbers(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    loop {
        let next = ["\"accountNumber\"", "\"account_number\""]
            .iter()
            .filter_map(|k| rest.find(k).map(|i| (i, k.len())))
            .min();
        let Some((at, key_len)) = next else {
            out.push_str(rest);
            return out;
        };
        let (head, tail) = rest.split_at(at + key_len);
        out.push_str(head);
        // Whitespace, a colon, whitespace, then a string or a bare number.
        let after_colon = tail.trim_start();
        let Some(value) = after_colon.strip_prefix(':') else {
            rest = tail;
            continue;
        };
        let value_start = value.trim_start();
        out.push_str(&tail[..tail.len() - value_start.len()]);
        if let Some(inner) = value_start.strip_prefix('"') {
            // Up to the closing quote (not one escaped), or the end of a truncated body.
            let mut end = inner.len();
            let mut escaped = false;
            for (i, c) in inner.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = i;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            out.push('"');
            out.push_str(&crate::domain::command::mask(&inner[..end]));
            rest = &inner[end..];
        } else {
            let end = value_start
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
                .unwrap_or(value_start.len());
            out.push_str(&crate::domain::command::mask(&value_start[..end]));
            rest = &value_start[end..];
        }
    }
}

/// Headers the broker changes while a message sits in a queue (each time a listing returns
/// it): left out of the derived id, which must not change between listings.
const VOLATILE_HEADERS: [&str; 2] = ["x-delivery-count", "x-acquired-count"];

/// A dead letter's id: its AMQP `message_id`, or, when the publisher set none, `sha256:` and
/// the first 16 hex digits of a SHA-256 of its headers (but the volatile ones) and body.
/// Identical messages without a message id share the id (replaying by it replays them all).
pub fn stable_id(props: &BasicProperties, body: &[u8]) -> String {
    if let Some(id) = props.message_id() {
        return id.to_string();
    }
    let mut hash = Sha256::new();
    if let Some(headers) = props.headers() {
        let stable: std::collections::BTreeMap<&str, &AMQPValue> = headers
            .inner()
            .iter()
            .filter(|(k, _)| !VOLATILE_HEADERS.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        // Serialization of a BTreeMap is in key order, so the same headers hash the same.
        hash.update(serde_json::to_vec(&stable).unwrap_or_default());
    }
    hash.update([0]);
    hash.update(body);
    let digest = hex::encode(hash.finalize());
    format!("sha256:{}", &digest[..16])
}

/// The broker's own reason (`x-death[0].reason`, e.g. `delivery_limit`).
fn death_reason(headers: &Option<FieldTable>) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.as_ref()?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(format!(
            "broker dead-lettered it: {}",
            String::from_utf8_lossy(s.as_bytes())
        )),
        AMQPValue::ShortString(s) => Some(format!("broker dead-lettered it: {}", s.as_str())),
        _ => None,
    }
}

fn replay_properties(original: &BasicProperties, replayed: i64) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    // The old reason moves aside: if the worker dead-letters it again, the new reason shows.
    if let Some(reason) = headers.inner().get(ERROR_HEADER).cloned() {
        headers.insert("x-refund-worker-previous-error".into(), reason);
    }
    let mut cleaned = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != ERROR_HEADER && k.as_str() != "x-death" {
            cleaned.insert(k.clone(), v.clone());
        }
    }
    cleaned.insert(REPLAYED_HEADER.into(), AMQPValue::LongLongInt(replayed));
    cleaned.insert(
        "x-refund-worker-replayed-by".into(),
        AMQPValue::LongString(LongString::from("refund-worker dlq replay")),
    );
    original.clone().with_headers(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (k, v) in pairs {
            headers.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_dead_letter_without_message_id_gets_an_id_that_survives_redelivery() {
        let reason = (ERROR_HEADER, AMQPValue::LongString("bad".into()));
        let first = stable_id(&with_headers(std::slice::from_ref(&reason)), b"body");
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 16,
            "{first}"
        );
        let redelivered = with_headers(&[
            reason.clone(),
            ("x-delivery-count", AMQPValue::LongLongInt(3)),
        ]);
        assert_eq!(stable_id(&redelivered, b"body"), first);
        assert_ne!(
            stable_id(&with_headers(std::slice::from_ref(&reason)), b"other"),
            first
        );
        let other_reason = (ERROR_HEADER, AMQPValue::LongString("worse".into()));
        assert_ne!(stable_id(&with_headers(&[other_reason]), b"body"), first);
        let named = BasicProperties::default().with_message_id("m-1".into());
        assert_eq!(stable_id(&named, b"body"), "m-1");
    }

    #[test]
    fn a_replay_takes_exactly_one_selector() {
        let names = ["--id", "--position", "--reason-contains", "--all"];
        let one = ReplayFilter::exactly_one(None, Some(2), None, false, names);
        assert_eq!(one, Ok(ReplayFilter::Position(2)));
        let two = ReplayFilter::exactly_one(Some("x".into()), Some(2), None, false, names);
        assert_eq!(
            two,
            Err("give exactly one of --id, --position, --reason-contains, --all, not --id and --position".into())
        );
        assert!(ReplayFilter::exactly_one(None, None, None, false, names).is_err());
        assert!(ReplayFilter::exactly_one(None, Some(0), None, false, names).is_err());
    }

    #[test]
    fn account_numbers_in_dead_letter_bodies_are_masked() {
        assert_eq!(
            mask_account_numbers(
                r#"{"destination":{"accountNumber": "1234567886","bankCode":"X"}}"#
            ),
            r#"{"destination":{"accountNumber": "******7886","bankCode":"X"}}"#
        );
        // Not valid JSON, a number, snake case, an escaped quote, a truncated body.
        assert_eq!(
            mask_account_numbers(r#"{"account_number":99887766, "accountNumber":"12\"345678"#),
            r#"{"account_number":****7766, "accountNumber":"******5678"#
        );
        assert_eq!(mask_account_numbers("not json at all"), "not json at all");
        assert_eq!(
            mask_account_numbers(r#"{"accountNumber" "x"}"#),
            r#"{"accountNumber" "x"}"#
        );
    }
}
