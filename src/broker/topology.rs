//! Exchange and queue names, and their idempotent declaration at start.
//!
//! ```text
//!  publishers ──refund.request──▶ [refunds] (topic) ──▶ refund.commands (quorum, fresh)
//!                                    │   │                  │ older than 1 s, or delivered
//!                                    │   │                  ▼ 20 times (at-least-once)
//!                                    │   │  [refunds.dlx] ──▶ refund.commands.backlog (quorum)
//!                                    │   └─refund.status.*──▶ your consumers' queues
//!                                    └─unroutable──▶ [refunds.unrouted] ──▶ refunds.unrouted
//!  worker / broker ──dead letters──▶ [refunds.dlx] (direct) ──▶ refund.commands.dlq
//!                                                          └──▶ provider.webhooks.dlq
//!  webhook ingress ──{provider}──▶ [provider.webhooks] (topic) ──▶ provider.webhooks (quorum)
//! ```
//!
//! Every queue is a quorum queue (replicated, `x-delivery-limit` supported).
//!
//! **Fresh commands first.** `refund.commands` keeps a command for [`COMMAND_FRESH_FOR`]
//! (`x-message-ttl`); one still waiting then (the worker was down, or is behind) moves to
//! `refund.commands.backlog`, and the worker consumes both. So after an outage a new command
//! is not queued behind the whole backlog: it reaches a worker within that second while
//! the backlog drains beside it. The move is the broker's own at-least-once dead-lettering
//! (`x-dead-letter-strategy`, which needs `x-overflow: reject-publish`; nothing limits the
//! queue's length, so nothing is ever rejected), so a command is never lost on the way, and
//! one moved twice is a duplicate the intake already answers. The order of commands is not
//! kept across the two queues; it never was across the intake's concurrent batches, and
//! every decision that orders refunds (the payment's refundable balance) is taken under
//! the payment's row lock.
//!
//! **Poison messages.** A command delivered `x-delivery-limit` times moves the same way:
//! to the backlog, which dead-letters it into `refund.commands.dlq` after as many
//! deliveries there, so a message that crashes workers cannot loop forever.
//!
//! The `refunds` exchange has an alternate exchange, so a publish that no queue is bound for
//! (an event nobody subscribed to yet, a command with a mistyped routing key) is kept in
//! `refunds.unrouted` instead of vanishing.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use std::time::Duration;

/// Routing key of refund commands.
pub const COMMAND_ROUTING_KEY: &str = "refund.request";
/// AMQP header naming the provider of a provider webhook message (set by the ingress;
/// survives dead-lettering and replay, which may lose the routing key).
pub const PROVIDER_HEADER: &str = "x-provider";
/// Binding that matches every status event.
pub const STATUS_BINDING: &str = "refund.status.#";
/// Deliveries of one command before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;
/// How long a command waits in `refund.commands` before the broker moves it to
/// `refund.commands.backlog` (`x-message-ttl`). A queue argument, so changing it means
/// redeclaring the queue; a RabbitMQ `message-ttl` policy can lower it at runtime (the
/// lower of the two applies).
pub const COMMAND_FRESH_FOR: Duration = Duration::from_secs(1);

/// Names of everything the worker declares. `with_prefix("")` is the production contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange for commands and events: `refunds`.
    pub exchange: String,
    /// Command queue: `refund.commands`. Holds fresh commands (see [`COMMAND_FRESH_FOR`]).
    pub commands_queue: String,
    /// Commands that waited longer than [`COMMAND_FRESH_FOR`] in `refund.commands`:
    /// `refund.commands.backlog`. The worker consumes it beside the fresh queue.
    pub commands_backlog: String,
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
            commands_backlog: format!("{prefix}refund.commands.backlog"),
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

        // Each queue after the one it dead-letters into, so that is bound before the first
        // message can move: the DLQ, then the backlog (bound to `refunds.dlx` under its own
        // name, as the fresh queue dead-letters it), then the fresh queue.
        self.dead_letter_target(channel, &self.commands_dlq, FieldTable::default())
            .await?;
        let backlog = self.dead_lettering(at_least_once(FieldTable::default()), &self.commands_dlq);
        self.dead_letter_target(channel, &self.commands_backlog, backlog)
            .await?;
        let mut fresh = at_least_once(FieldTable::default());
        fresh.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(COMMAND_FRESH_FOR.as_millis() as i64),
        );
        self.consumed_queue(
            channel,
            &self.commands_queue,
            &self.commands_backlog,
            &self.exchange,
            COMMAND_ROUTING_KEY,
            fresh,
        )
        .await?;

        // Inbound provider webhooks: same dead-letter exchange and delivery limit.
        self.dead_letter_target(channel, &self.webhooks_dlq, FieldTable::default())
            .await?;
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
            FieldTable::default(),
        )
        .await
    }

    /// `dlq`, a queue bound to `refunds.dlx` under its own name (dead letters, or the
    /// backlog of commands).
    async fn dead_letter_target(
        &self,
        channel: &Channel,
        dlq: &str,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        self.quorum_queue(channel, dlq, args).await?;
        channel
            .queue_bind(
                dlq.into(),
                self.dlx.as_str().into(),
                dlq.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// `args` with dead-lettering through `refunds.dlx` into `dlq` after `DELIVERY_LIMIT`
    /// deliveries (and whatever else `args` says, such as a TTL).
    fn dead_lettering(&self, mut args: FieldTable, dlq: &str) -> FieldTable {
        args.insert("x-dead-letter-exchange".into(), long_string(&self.dlx));
        args.insert("x-dead-letter-routing-key".into(), long_string(dlq));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        args
    }

    /// A queue the worker consumes, bound to `exchange` with `binding`, that dead-letters
    /// into `dlq` ([`Self::dead_lettering`]). `dlq` must be declared first.
    async fn consumed_queue(
        &self,
        channel: &Channel,
        queue: &str,
        dlq: &str,
        exchange: &str,
        binding: &str,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        self.quorum_queue(channel, queue, self.dead_lettering(args, dlq))
            .await?;
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
    pub fn queues(&self) -> [&str; 6] {
        [
            &self.commands_queue,
            &self.commands_backlog,
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

/// `args` with the broker's at-least-once dead-lettering: a dead-lettered message leaves
/// its queue only once the queue it moves to has confirmed it (quorum queues, RabbitMQ >=
/// 3.10). It requires reject-publish overflow, which never applies here (no length limit).
/// The command queues use it, since a command moves to the backlog in normal operation;
/// `provider.webhooks` keeps the arguments it was first declared with (changing a queue's
/// arguments makes every redeclaration fail).
fn at_least_once(mut args: FieldTable) -> FieldTable {
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
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
