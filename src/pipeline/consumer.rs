//! The one queue consumer: consume with manual acks, batch what is waiting, store it,
//! settle each delivery through the ack window, drain on shutdown, give up the channel when
//! a task holding deliveries panicked. Intake ([`super::intake`]) and provider webhooks
//! ([`super::provider_webhooks`]) are [`Handler`]s of it: what a batch means is theirs, how
//! a delivery is received, held, acknowledged or dead-lettered is this module's.
//!
//! The rules every handler gets:
//! - **Ack after commit.** A delivery is acknowledged only after its batch's transaction
//!   committed, or after its dead letter was confirmed; the [`AckWindow`] acknowledges a run
//!   at a time and never passes a delivery still being worked on.
//! - **Dead letters carry their reason** (header `x-refund-worker-error`), copied to the
//!   handler's dead-letter queue with a confirm before the original is acknowledged; a copy
//!   the broker did not confirm leaves the original for redelivery.
//! - **Database trouble holds, never drops**: a batch is retried with back-off, unacked (not
//!   requeued, so the delivery limit is not burnt), until it commits or shutdown comes.
//! - **Nothing lost on shutdown**: no new delivery is taken, the workers finish what they
//!   hold and settle it, then the channels close (whatever is unacked is redelivered).
//! - **A panic gives up the channel**: a worker that panicked holds deliveries no ack may
//!   pass, so the loop ends with [`ConsumeError::TaskPanicked`]; the worker reconnects and
//!   the broker redelivers them (a stored one comes back as a duplicate).
//!
//! The work is spread over [`Workers`]: a pool sharing one queue (intake: any free worker
//! takes whatever is waiting) or ordered lanes (provider webhooks: a delivery's lane comes
//! from what it is about, so one refund's notifications keep their order).

use super::Context;
use crate::broker::{AckWindow, Publisher};
use crate::retry::Backoff;
use crate::store::StoreError;
use futures::StreamExt;
use lapin::message::Delivery;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why a consumer loop ended; the worker reconnects after either.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker connection or channel failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// A task holding deliveries panicked. Its deliveries can never be settled, and no
    /// acknowledgement may pass them, so the channel is given up: closing it redelivers
    /// them (a stored one comes back as a duplicate).
    #[error("a {0} task panicked; its messages are redelivered on a new channel")]
    TaskPanicked(&'static str),
}

/// What becomes of one delivery once its batch is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Committed (or a repeat of something committed): acknowledge it.
    Ack,
    /// Copy it to the handler's dead-letter queue with this reason, then acknowledge it.
    DeadLetter(String),
}

/// A delivery as a worker holds it, with what the handler learnt from it on receipt.
pub(crate) struct Message<R> {
    pub delivery: Delivery,
    pub received: R,
}

/// What one queue's messages mean: the consumer calls it; it stores and judges.
pub(crate) trait Handler: Send + Sync + 'static {
    /// What is learnt from a delivery as it arrives, before it goes to a worker (no I/O).
    type Received: Send + Sync + 'static;

    /// Reads a delivery as it arrives (provider webhooks parse it here, to pick its lane).
    fn receive(&self, delivery: &Delivery) -> Self::Received;

    /// The lane of a delivery, with [`Workers::Lanes`] (taken modulo the lane count).
    fn lane(&self, _received: &Self::Received) -> usize {
        0
    }

    /// Stores a batch in one go and answers a [`Verdict`] per message, in order, having
    /// counted and logged each. `Err` is an infrastructure error (database down): nothing of
    /// the batch was kept, and it is tried again.
    fn store(
        &self,
        batch: &[Message<Self::Received>],
    ) -> impl Future<Output = Result<Vec<Verdict>, StoreError>> + Send;

    /// Deliveries being stored now, across the workers (a gauge, if the handler has one).
    fn in_flight(&self, _n: usize) {}

    /// Side work run between deliveries every [`Queue::sweep_every`] (the parked-webhook
    /// sweep); it holds up receiving while it runs.
    fn sweep(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How a consumer spreads its deliveries over workers; each worker stores one batch at a
/// time, of whatever is waiting for it (up to `batch`; a lone delivery is a batch of one).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Workers {
    /// `workers` share one queue: any free worker takes the next batch.
    Pool { workers: usize, batch: usize },
    /// One queue per lane ([`Handler::lane`]): a lane's deliveries are stored in their queue
    /// order.
    Lanes { lanes: usize, batch: usize },
}

/// One consumed queue and how it is worked.
pub(crate) struct Queue<'a> {
    /// The queue consumed.
    pub name: &'a str,
    /// The consumer tag's beginning (a UUID follows).
    pub tag: &'a str,
    /// Where dead letters go (on the `refunds.dlx` exchange).
    pub dead_letters: &'a str,
    /// What its tasks are called in logs and in [`ConsumeError::TaskPanicked`].
    pub what: &'static str,
    /// What the errors of storing a batch are called in the retry log line.
    pub storing: &'static str,
    /// The workers.
    pub workers: Workers,
    /// How often [`Handler::sweep`] runs, if at all.
    pub sweep_every: Option<Duration>,
}

/// A worker's end of the hand-over: its own lane, or the pool's shared queue.
type Inbox<T> = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<T>>>;

/// Consumes `queue` with `handler` until shutdown or until the connection fails. Returns
/// `Ok` on shutdown (the deliveries taken finished and settled) and `Err` when the broker
/// connection failed or a worker panicked (the caller reconnects).
pub(crate) async fn consume<H: Handler>(
    ctx: &Context,
    connection: &lapin::Connection,
    queue: Queue<'_>,
    handler: H,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let handler = Arc::new(handler);
    let channel = QueueConsumer::open(ctx, connection, queue.name, queue.tag).await?;
    let mut consumer = channel.consumer.clone();
    let (count, batch, by_lane) = match queue.workers {
        Workers::Pool { workers, batch } => (workers.max(1), batch.max(1), false),
        Workers::Lanes { lanes, batch } => (lanes.max(1), batch.max(1), true),
    };
    // The prefetch bounds what is taken; a worker's queue never holds more.
    let inboxes: Vec<_> = (0..if by_lane { count } else { 1 })
        .map(|_| mpsc::unbounded_channel::<Message<H::Received>>())
        .collect();
    let (senders, receivers): (Vec<_>, Vec<Inbox<Message<H::Received>>>) = inboxes
        .into_iter()
        .map(|(s, r)| (s, Arc::new(tokio::sync::Mutex::new(r))))
        .unzip();
    let settler = Arc::new(Settler {
        ctx: ctx.clone(),
        publisher: channel.publisher.clone(),
        acks: channel.acks.clone(),
        dead_letters: queue.dead_letters.to_owned(),
        storing: queue.storing,
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..count {
        let inbox = receivers[i % receivers.len()].clone();
        let (handler, settler) = (handler.clone(), settler.clone());
        let (in_flight, shutdown) = (in_flight.clone(), shutdown.clone());
        workers.spawn(async move {
            while let Some(messages) = next_batch(&inbox, batch).await {
                let n = messages.len();
                handler.in_flight(in_flight.fetch_add(n, Ordering::Relaxed) + n);
                settler.process(handler.as_ref(), messages, &shutdown).await;
                handler.in_flight(in_flight.fetch_sub(n, Ordering::Relaxed) - n);
            }
        });
    }
    drop(receivers);
    let mut sweep = queue.sweep_every.map(|every| {
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep
    });
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick(&mut sweep) => {
                handler.sweep().await;
                continue;
            }
            // A worker ends only when its queue is dropped after this loop: here it
            // panicked, holding deliveries no ack may pass. Noticed even when the prefetch
            // window is full and no delivery comes.
            done = workers.join_next(), if !workers.is_empty() => {
                break Err(task_failed(done.and_then(Result::err), queue.what));
            }
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(e.into()),
            None => break Err(channel.ended().into()),
        };
        channel.acks.received(&delivery);
        let received = handler.receive(&delivery);
        let lane = if by_lane {
            handler.lane(&received) % count
        } else {
            0
        };
        if senders[lane].send(Message { delivery, received }).is_err() {
            // Only if every worker of that queue ended (panicked): what it held can never
            // be settled, so give up the channel; closing it redelivers the messages.
            break Err(task_failed(None, queue.what));
        }
    };
    // Drain by drop: the workers finish and settle what they hold, then end.
    drop(senders);
    while workers.join_next().await.is_some() {}
    channel.close().await;
    result
}

/// The next tick of the sweep; never, without one.
async fn tick(sweep: &mut Option<tokio::time::Interval>) {
    match sweep {
        Some(sweep) => {
            sweep.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next batch from a worker's queue: the first message to come, and whatever else is
/// waiting behind it (up to `batch`); `None` once the queue is dropped and empty.
async fn next_batch<T>(inbox: &Inbox<T>, batch: usize) -> Option<Vec<T>> {
    // A pool's workers take turns at the shared queue; the lock is held only while taking.
    let mut inbox = inbox.lock().await;
    let first = inbox.recv().await?;
    let mut messages = vec![first];
    while messages.len() < batch {
        match inbox.try_recv() {
            Ok(next) => messages.push(next),
            Err(_) => break,
        }
    }
    Some(messages)
}

/// The error that ends a consumer loop when one of its tasks stopped (it panicked): logs
/// the cause, if known.
fn task_failed(cause: Option<tokio::task::JoinError>, what: &'static str) -> ConsumeError {
    match cause {
        Some(e) => tracing::error!(error = %e, "{what} task failed"),
        None => tracing::error!("{what} task stopped"),
    }
    ConsumeError::TaskPanicked(what)
}

/// What settling a consumer's deliveries needs: the ack window, the dead-letter publisher
/// and queue.
struct Settler {
    ctx: Context,
    publisher: Publisher,
    acks: Arc<AckWindow>,
    dead_letters: String,
    storing: &'static str,
}

impl Settler {
    /// Handles a batch end to end: store it (until it commits, or shutdown), then settle
    /// each delivery (dead letters first go to their queue); the acks go out a run at a time.
    async fn process<H: Handler>(
        &self,
        handler: &H,
        messages: Vec<Message<H::Received>>,
        shutdown: &CancellationToken,
    ) {
        let Some(verdicts) = self
            .until_stored(&messages, shutdown, || handler.store(&messages))
            .await
        else {
            return;
        };
        if verdicts.len() != messages.len() {
            // A handler bug: a delivery without a verdict would never be settled and would
            // hold back every ack behind it. Stored or not, it is redelivered (a stored one
            // comes back as a duplicate).
            tracing::error!(
                messages = messages.len(),
                verdicts = verdicts.len(),
                "{} answered a verdict count unlike its batch; the rest are redelivered",
                self.storing
            );
        }
        let mut verdicts = verdicts.into_iter();
        for message in messages {
            match verdicts.next() {
                Some(Verdict::Ack) => self.settle(message.delivery, None).await,
                Some(Verdict::DeadLetter(reason)) => {
                    self.settle(message.delivery, Some(&reason)).await
                }
                None => self.requeue(&message.delivery).await,
            }
        }
    }

    /// Runs `attempt` until it succeeds, backing off while the database is unavailable: the
    /// messages stay unacked meanwhile (not requeued, so their delivery limit is not burnt).
    /// Returns `None` on shutdown, after nacking the deliveries so they are redelivered.
    async fn until_stored<R, T, F, Fut>(
        &self,
        messages: &[Message<R>],
        shutdown: &CancellationToken,
        mut attempt: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::new(self.ctx.config.retry).at_least(Duration::from_millis(100));
        loop {
            let e = match attempt().await {
                Ok(outcome) => return Some(outcome),
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            let what = self.storing;
            tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "{what} failed, retrying");
            if !Backoff::sleep(delay, shutdown).await {
                for message in messages {
                    self.requeue(&message.delivery).await;
                }
                return None;
            }
        }
    }

    /// Settles a processed delivery: with a `dead_letter` reason it is first copied to the
    /// dead-letter queue with it (and nacked for redelivery if the broker did not confirm
    /// the copy); then it is acknowledged, with the run it closes ([`AckWindow`]).
    async fn settle(&self, delivery: Delivery, dead_letter: Option<&str>) {
        if let Some(reason) = dead_letter {
            let source = (delivery.exchange.as_str(), delivery.routing_key.as_str());
            if let Err(e) = self
                .publisher
                .dead_letter(
                    &self.ctx.topology.dlx,
                    &self.dead_letters,
                    &delivery.data,
                    &delivery.properties,
                    source,
                    reason,
                )
                .await
            {
                // Not confirmed: leave it for redelivery; it comes back after reconnecting.
                tracing::error!(error = %e, "dead-letter publish failed; message kept");
                self.requeue(&delivery).await;
                return;
            }
        }
        self.settled(&delivery, true).await;
    }

    /// Nacks a delivery for redelivery and settles it in the ack window.
    async fn requeue(&self, delivery: &Delivery) {
        let _ = delivery
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        self.settled(delivery, false).await;
    }

    /// Settles a delivery in the ack window (`ack`: to acknowledge, or already nacked). If
    /// the ack the window sends fails, the channel died after the commit: the broker
    /// redelivers, and the redeliveries are recognised as duplicates.
    async fn settled(&self, delivery: &Delivery, ack: bool) {
        if let Err(e) = self.acks.settle(delivery, ack).await {
            tracing::warn!(error = %e, "ack failed; the messages will be redelivered and deduplicated");
        }
    }
}

/// One queue's consumer channel: its own channel with the `PREFETCH` window and manual
/// acks, and a publisher (with confirms) for dead letters.
struct QueueConsumer {
    /// The consuming channel.
    channel: lapin::Channel,
    /// Publishes dead letters, on its own channel.
    publisher: Publisher,
    /// The deliveries.
    consumer: lapin::Consumer,
    /// Acknowledges the deliveries a run at a time; every delivery is registered on receipt.
    acks: Arc<AckWindow>,
}

impl QueueConsumer {
    /// Starts consuming `queue` under a consumer tag beginning with `tag`.
    async fn open(
        ctx: &Context,
        connection: &lapin::Connection,
        queue: &str,
        tag: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(
                ctx.config.prefetch,
                lapin::options::BasicQosOptions::default(),
            )
            .await?;
        let publisher = Publisher::open(connection).await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                format!("{tag}-{}", uuid::Uuid::new_v4()).into(),
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            publisher,
            consumer,
            acks: Default::default(),
        })
    }

    /// The error for a delivery stream that ended: its channel is no longer open (lapin 4
    /// does not say in which state it left).
    fn ended(&self) -> lapin::Error {
        let state = lapin::ChannelState::Closed;
        lapin::ErrorKind::InvalidChannelState(state, "the delivery stream ended").into()
    }

    /// Closes both channels (after the loop drained its work).
    async fn close(&self) {
        let _ = self.channel.close(200, "shutting down".into()).await;
        let _ = self
            .publisher
            .channel()
            .close(200, "shutting down".into())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox<T>() -> (mpsc::UnboundedSender<T>, Inbox<T>) {
        let (send, receive) = mpsc::unbounded_channel();
        (send, Arc::new(tokio::sync::Mutex::new(receive)))
    }

    #[tokio::test]
    async fn a_batch_is_what_is_waiting_up_to_its_size() {
        let (send, inbox) = inbox();
        (1..=5).for_each(|i| send.send(i).unwrap());
        assert_eq!(next_batch(&inbox, 3).await, Some(vec![1, 2, 3]));
        // A lone message is a batch of one: nothing waits to fill a batch.
        assert_eq!(next_batch(&inbox, 3).await, Some(vec![4, 5]));
        send.send(6).unwrap();
        assert_eq!(next_batch(&inbox, 3).await, Some(vec![6]));
    }

    #[tokio::test]
    async fn dropping_the_sender_drains_what_is_queued_then_ends() {
        let (send, inbox) = inbox();
        (1..=4).for_each(|i| send.send(i).unwrap());
        drop(send);
        assert_eq!(next_batch(&inbox, 3).await, Some(vec![1, 2, 3]));
        assert_eq!(next_batch(&inbox, 3).await, Some(vec![4]));
        assert_eq!(next_batch(&inbox, 3).await, None);
    }

    #[tokio::test]
    async fn a_pools_workers_share_one_queue_and_each_message_goes_to_one() {
        let (send, inbox) = inbox();
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while let Some(batch) = next_batch(&inbox, 4).await {
                        got.extend(batch);
                        tokio::task::yield_now().await;
                    }
                    got
                })
            })
            .collect();
        (0..100).for_each(|i| send.send(i).unwrap());
        drop(send);
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }

    /// Each stored message's body, and whether it came redelivered.
    type Stored = Arc<std::sync::Mutex<Vec<(Vec<u8>, bool)>>>;

    /// Panics on its first batch; acknowledges every message after that, counting them and
    /// whether they came redelivered, and stops the consumer once it has seen `stop_after`.
    struct PanicsOnce {
        panicked: Arc<std::sync::atomic::AtomicBool>,
        stored: Stored,
        stop_after: usize,
        stop: CancellationToken,
    }

    impl Handler for PanicsOnce {
        type Received = ();

        fn receive(&self, _delivery: &Delivery) {}

        async fn store(&self, batch: &[Message<()>]) -> Result<Vec<Verdict>, StoreError> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("a handler bug, on purpose");
            }
            let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
            for m in batch {
                stored.push((m.delivery.data.clone(), m.delivery.redelivered));
            }
            if stored.len() >= self.stop_after {
                self.stop.cancel();
            }
            Ok(vec![Verdict::Ack; batch.len()])
        }
    }

    #[tokio::test]
    async fn a_panicking_worker_gives_up_the_channel_and_its_messages_come_back() {
        use lapin::options::{
            BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
        };
        use lapin::types::{AMQPValue, FieldTable};
        let url = std::env::var("TEST_AMQP_URL")
            .unwrap_or_else(|_| crate::config::DEFAULT_AMQP_URL.into());
        let config = crate::config::Config::from_lookup(|k| match k {
            "AMQP_URL" => Some(url.clone()),
            _ => None,
        })
        .unwrap();
        // Never connected: nothing here reaches the database.
        let pool = sqlx::PgPool::connect_lazy(&config.database_url).unwrap();
        let ctx = Context::new(pool, config, Default::default());
        let connection = crate::broker::connect(&url, "consumer-panic-test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let queue = format!("consumer-panic-test-{}", uuid::Uuid::new_v4());
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                // Not auto-delete (the first consumer's end would take the messages with
                // it); gone a minute after the test, even one that failed half way.
                FieldTable::from(std::collections::BTreeMap::from([(
                    "x-expires".into(),
                    AMQPValue::LongUInt(60_000),
                )])),
            )
            .await
            .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let bodies: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("message {i}").into_bytes())
            .collect();
        for body in &bodies {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    Default::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let stop = CancellationToken::new();
        let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stored = Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler = || PanicsOnce {
            panicked: panicked.clone(),
            stored: stored.clone(),
            stop_after: bodies.len(),
            stop: stop.clone(),
        };
        let queue_of = || Queue {
            name: &queue,
            tag: "panic-test",
            dead_letters: "unused",
            what: "panic test",
            storing: "storing the test batch",
            workers: Workers::Pool {
                workers: 1,
                batch: 8,
            },
            sweep_every: None,
        };
        let first = tokio::time::timeout(
            Duration::from_secs(20),
            consume(&ctx, &connection, queue_of(), handler(), &stop),
        )
        .await
        .expect("the loop ends when its worker panics");
        assert!(
            matches!(first, Err(ConsumeError::TaskPanicked("panic test"))),
            "{first:?}"
        );
        assert!(stored.lock().unwrap().is_empty());

        // Like the worker after the error: consume again. Everything the panicked worker
        // held is delivered again, none of it lost or acknowledged.
        let second = tokio::time::timeout(
            Duration::from_secs(20),
            consume(&ctx, &connection, queue_of(), handler(), &stop),
        )
        .await
        .expect("every message comes back");
        assert!(second.is_ok(), "{second:?}");
        let got = stored.lock().unwrap().clone();
        let mut bodies_got: Vec<Vec<u8>> = got.iter().map(|(b, _)| b.clone()).collect();
        bodies_got.sort();
        assert_eq!(bodies_got, bodies, "each message once");
        // The first was in the batch that panicked: it can only have come back.
        assert!(got.iter().any(|(b, again)| b == &bodies[0] && *again));
        let left = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(left.message_count(), 0, "every message was acknowledged");
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = connection.close(200, "done".into()).await;
    }
}
