//! Publishing with publisher confirms and `mandatory`: a publish succeeds only when the
//! broker has taken responsibility for the message (acked) and routed it to a queue.

use super::ERROR_HEADER;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};

/// Why a publish did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The channel or connection failed.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (nack).
    #[error("broker nacked the message")]
    Nacked,
    /// No queue was bound for the routing key.
    #[error("message was unroutable: {0}")]
    Unroutable(String),
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body.
    pub payload: &'a [u8],
    /// Properties (content type, message id, headers...).
    pub properties: BasicProperties,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// The underlying channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Sends a message and returns the pending confirmation, so callers can pipeline many
    /// publishes before waiting.
    pub async fn send(&self, msg: Outgoing<'_>) -> Result<PublisherConfirm, PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        // AMQP names are at most 255 bytes, and lapin panics on a longer one; a dead letter
        // being replayed names its own, so they are checked here. No queue is bound for
        // such a name: the message is unroutable.
        let name =
            |s: &str| ShortString::try_new(s).map_err(|e| PublishError::Unroutable(e.to_string()));
        Ok(self
            .channel
            .basic_publish(
                name(msg.exchange)?,
                name(msg.routing_key)?,
                options,
                msg.payload,
                msg.properties,
            )
            .await?)
    }

    /// Waits for one confirmation.
    pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), PublishError> {
        match confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable(format!(
                "{} (exchange `{}`, routing key `{}`)",
                returned.reply_text, returned.delivery.exchange, returned.delivery.routing_key
            ))),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // Only happens if the channel was not in confirm mode, which `open` ensures.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }

    /// Publishes and waits for the confirmation.
    pub async fn publish(&self, msg: Outgoing<'_>) -> Result<(), PublishError> {
        Self::confirmed(self.send(msg).await?).await
    }

    /// Publishes a JSON body with a message id, persistent.
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        self.publish(Outgoing {
            exchange,
            routing_key,
            payload,
            properties: json_properties(message_id),
        })
        .await
    }

    /// Sends a message to a dead-letter queue with the reason in `x-refund-worker-error`,
    /// keeping its body and properties and noting where it came from.
    pub async fn dead_letter(
        &self,
        dlx: &str,
        dlq: &str,
        payload: &[u8],
        original: &BasicProperties,
        source: (&str, &str),
        reason: &str,
    ) -> Result<(), PublishError> {
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(ERROR_HEADER.into(), long_string(reason));
        headers.insert("x-original-exchange".into(), long_string(source.0));
        headers.insert("x-original-routing-key".into(), long_string(source.1));
        let properties = original.clone().with_headers(headers).with_delivery_mode(2);
        self.publish(Outgoing {
            exchange: dlx,
            routing_key: dlq,
            payload,
            properties,
        })
        .await
    }
}

/// Properties of a persistent JSON message.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
}

/// Builds a header table from pairs.
pub fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), long_string(v));
    }
    t
}

fn long_string(s: &str) -> AMQPValue {
    // Header values are capped so a huge reason cannot exceed the broker's frame size.
    let s: String = s.chars().take(2000).collect();
    AMQPValue::LongString(LongString::from(s.into_bytes()))
}
