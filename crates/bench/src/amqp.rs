//! RabbitMQ as any upstream publisher or downstream subscriber sees it: a connection, a
//! channel in confirm mode, a publish that counts only when the broker acked and routed it.
//! The bench's own code, not the worker's, so the load tool shares no broker code with what
//! it measures.

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::PublisherConfirm;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// Connects, naming the connection (it shows in RabbitMQ's management UI).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props)
        .await
        .context("connecting to RabbitMQ")
}

/// A channel in confirm mode.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn open(connection: &Connection) -> anyhow::Result<Self> {
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

    /// Publishes a persistent JSON body (mandatory, so an unroutable one is returned) and
    /// returns the pending confirmation, so many publishes can be pipelined.
    pub async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> anyhow::Result<PublisherConfirm> {
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(message_id));
        let name = |s: &str| ShortString::try_new(s).map_err(|e| anyhow::anyhow!("{e}"));
        Ok(self
            .channel
            .basic_publish(
                name(exchange)?,
                name(routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await?)
    }

    /// Waits for one confirmation: acked and routed, or an error saying which it was not.
    pub async fn confirmed(confirm: PublisherConfirm) -> anyhow::Result<()> {
        match confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => anyhow::bail!(
                "unroutable: {} (exchange `{}`, routing key `{}`)",
                returned.reply_text,
                returned.delivery.exchange,
                returned.delivery.routing_key
            ),
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                anyhow::bail!("the broker nacked the message")
            }
        }
    }
}

/// Messages ready in `queues` together, each read with a passive declare on a channel of
/// its own (a queue that does not exist counts as empty: the broker closes only that
/// channel).
pub async fn ready_in(connection: &Connection, queues: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for q in queues {
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let name = ShortString::try_new(q.as_str()).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(state) = channel
            .queue_declare(name, passive, FieldTable::default())
            .await
        {
            total += u64::from(state.message_count());
            let _ = channel.close(200, "read".into()).await;
        }
    }
    Ok(total)
}

/// Declares a durable quorum queue (as the worker's are).
pub async fn quorum_queue(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring the quorum queue {name}"))?;
    Ok(())
}
