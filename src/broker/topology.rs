//! Exchange and queue names, and their idempotent declaration at start.
//!
//! ```text
//!  publishers ──refund.request──▶ [refunds] (topic) ──▶ refund.commands (quorum)
//!                                    │   └─refund.status.*──▶ your consumers' queues
//!                                    └─unroutable──▶ [refunds.unrouted] ──▶ refunds.unrouted
//!  worker / broker ──dead letters──▶ [refunds.dlx] (direct) ──▶ refund.commands.dlq
//!                                                          └──▶ provider.webhooks.dlq
//!  webhook ingress ──{provider}──▶ [provider.webhooks] (topic) ──▶ provider.webhooks (quorum)
//! ```
//!
//! Every queue is a quorum queue (replicated, `x-delivery-limit` supported). The command
//! queue dead-letters into `refunds.dlx` once a message has been delivered
//! `x-delivery-limit` times, so a message that crashes workers cannot loop forever. The
//! `refunds` exchange has an alternate exchange, so a publish that no queue is bound for
//! (an event nobody subscribed to yet, a command with a mistyped routing key) is kept in
//! `refunds.unrouted` instead of vanishing.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// Routing key of refund commands.
pub const COMMAND_ROUTING_KEY: &str = "refund.request";
/// AMQP header naming the provider of a provider webhook message (set by the ingress;
/// survives dead-lettering and replay, which may lose the routing key).
pub const PROVIDER_HEADER: &str = "x-provider";
/// Binding that matches every status event.
pub const STATUS_BINDING: &str = "refund.status.#";
/// Deliveries of one command before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;

/// Names of everything the worker declares. `with_prefix("")` is the production contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange for commands and events: `refunds`.
    pub exchange: String,
    /// Command queue: `refund.commands`.
    pub commands_queue: String,
    /// Dead-letter exchange: `refunds.dlx`.
    pub dlx: String,
    /// Dead-letter queue of commands: `refund.commands.dlq`.
    pub commands_dlq: String,
    /// Alternate exchange and queue for unroutable publishes: `refunds.unrouted`.
    pub unrouted: String,
    /// Exchange of inbound provider webhooks: `provider.webhooks` (topic, routing key = the
    /// provider's wire name).
    pub webhooks_exchange: String,
    /// Queue of inbound provider webhooks: `provider.webhooks`.
    pub webhooks_queue: String,
    /// Dead-letter queue of inbound provider webhooks: `provider.webhooks.dlq`.
    pub webhooks_dlq: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topology {
    /// All names with `prefix` in front (tests isolate themselves on a shared broker this way).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            exchange: format!("{prefix}refunds"),
            commands_queue: format!("{prefix}refund.commands"),
            dlx: format!("{prefix}refunds.dlx"),
            commands_dlq: format!("{prefix}refund.commands.dlq"),
            unrouted: format!("{prefix}refunds.unrouted"),
            webhooks_exchange: format!("{prefix}provider.webhooks"),
            webhooks_queue: format!("{prefix}provider.webhooks"),
            webhooks_dlq: format!("{prefix}provider.webhooks.dlq"),
        }
    }

    /// Declares everything; safe to run on every start and from many workers at once.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.unrouted.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.quorum_queue(channel, &self.unrouted, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                self.unrouted.as_str().into(),
                self.unrouted.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut args = FieldTable::default();
        args.insert("alternate-exchange".into(), long_string(&self.unrouted));
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                args,
            )
            .await?;
        channel
            .exchange_declare(
                self.dlx.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;

        self.consumed_queue(
            channel,
            &self.commands_queue,
            &self.commands_dlq,
            &self.exchange,
            COMMAND_ROUTING_KEY,
        )
        .await?;

        // Inbound provider webhooks: same dead-letter exchange and delivery limit.
        channel
            .exchange_declare(
                self.webhooks_exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.consumed_queue(
            channel,
            &self.webhooks_queue,
            &self.webhooks_dlq,
            &self.webhooks_exchange,
            "#",
        )
        .await
    }

    /// A queue the worker consumes, bound to `exchange` with `binding`, that dead-letters
    /// (through `refunds.dlx`) into `dlq` after `DELIVERY_LIMIT` deliveries; and its `dlq`.
    async fn consumed_queue(
        &self,
        channel: &Channel,
        queue: &str,
        dlq: &str,
        exchange: &str,
        binding: &str,
    ) -> Result<(), lapin::Error> {
        self.quorum_queue(channel, dlq, FieldTable::default())
            .await?;
        channel
            .queue_bind(
                dlq.into(),
                self.dlx.as_str().into(),
                dlq.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), long_string(&self.dlx));
        args.insert("x-dead-letter-routing-key".into(), long_string(dlq));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        self.quorum_queue(channel, queue, args).await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// The dead-letter queues operators may replay, with where a message goes back to when
    /// it does not say (the broker's own dead-lettering records no original exchange).
    pub fn replay_target(&self, dlq: &str) -> Option<(String, String)> {
        if dlq == self.commands_dlq {
            Some((self.exchange.clone(), COMMAND_ROUTING_KEY.to_owned()))
        } else if dlq == self.webhooks_dlq {
            // The queue is bound with `#`: any routing key reaches it. The consumer reads the
            // provider from the routing key, so a replay keeps the original one (recorded in
            // the dead letter's headers) when it has it.
            Some((self.webhooks_exchange.clone(), String::new()))
        } else {
            None
        }
    }

    /// Every queue `declare` makes (`unrouted` is a queue and the exchange it is bound to).
    pub fn queues(&self) -> [&str; 5] {
        [
            &self.commands_queue,
            &self.commands_dlq,
            &self.unrouted,
            &self.webhooks_queue,
            &self.webhooks_dlq,
        ]
    }

    /// Every exchange `declare` makes.
    pub fn exchanges(&self) -> [&str; 4] {
        [
            &self.exchange,
            &self.dlx,
            &self.unrouted,
            &self.webhooks_exchange,
        ]
    }

    /// Deletes everything `declare` made (tests and the demo clean up after themselves).
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for q in self.queues() {
            channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await?;
        }
        for e in self.exchanges() {
            channel
                .exchange_delete(e.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    async fn quorum_queue(
        &self,
        channel: &Channel,
        name: &str,
        mut args: FieldTable,
    ) -> Result<(), lapin::Error> {
        args.insert("x-queue-type".into(), long_string("quorum"));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(name.into(), options, args)
            .await
            .map(|_| ())
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Declares a subscriber queue bound to every status event on `exchange`, as a downstream
/// consumer would. `durable` makes it a quorum queue that outlives connections and broker
/// restarts; otherwise it is exclusive to this connection and deleted with it.
pub async fn subscribe_status_events(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    durable: bool,
) -> Result<(), lapin::Error> {
    let (options, mut args) = if durable {
        (
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
    } else {
        (
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
    };
    if durable {
        args.insert("x-queue-type".into(), long_string("quorum"));
    }
    channel.queue_declare(queue.into(), options, args).await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            STATUS_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Reads a string header from a message's headers.
pub fn header_str(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    let value = headers.as_ref()?.inner().get(&ShortString::from(name))?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_contract() {
        let t = Topology::default();
        assert_eq!(t.exchange, "refunds");
        assert_eq!(t.commands_queue, "refund.commands");
        assert_eq!(t.dlx, "refunds.dlx");
        assert_eq!(t.commands_dlq, "refund.commands.dlq");
        assert_eq!(COMMAND_ROUTING_KEY, "refund.request");
        assert_eq!(t.webhooks_dlq, "provider.webhooks.dlq");
        assert_eq!(
            t.replay_target("refund.commands.dlq"),
            Some(("refunds".into(), "refund.request".into()))
        );
        assert!(t.replay_target("provider.webhooks.dlq").is_some());
        assert_eq!(t.replay_target("anything.else"), None);
    }
}
