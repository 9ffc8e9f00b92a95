//! The raw bound: what RabbitMQ and PostgreSQL can do on this machine with nothing of
//! refund-worker in between.
//!
//! - Broker: publish + confirm + consume + ack of command-sized persistent messages on a
//!   throw-away quorum queue, confirms pipelined in a sliding window, consumed with manual
//!   acks (one per message, as intake acks) and the worker's prefetch.
//! - Database: single-row committed `INSERT`s of the command JSON into a throw-away table of
//!   a throw-away database, from as many connections as the worker's pool.

use super::amqp::{self, Publisher};
use super::sys::{self, CpuSnapshot, CpuUse};
use super::{Cleanup, Progress};
use anyhow::Context as _;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Broker figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerBound {
    /// Messages sent and consumed.
    pub messages: u64,
    /// Body size (a refund command's).
    pub body_bytes: usize,
    /// Consumer prefetch (the worker's `PREFETCH`).
    pub prefetch: u16,
    /// Unconfirmed publishes allowed at once.
    pub confirm_window: usize,
    /// First publish to last confirm.
    pub publish_secs: f64,
    /// First publish to last ack.
    pub secs: f64,
    /// Full cycles (publish, confirm, consume, ack) per second.
    pub messages_per_sec: f64,
    /// CPU used meanwhile (the bench process is the publisher and the consumer).
    pub cpu: CpuUse,
}

/// Database figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBound {
    /// Committed single-row inserts.
    pub commits: u64,
    /// Concurrent connections (the worker's `DATABASE_MAX_CONNECTIONS`).
    pub connections: u32,
    /// Bytes of JSON per row.
    pub row_bytes: usize,
    /// Wall time.
    pub secs: f64,
    /// Commits per second.
    pub commits_per_sec: f64,
    /// Median latency of one insert+commit.
    pub commit_p50_ms: f64,
    /// 99th percentile latency of one insert+commit.
    pub commit_p99_ms: f64,
    /// CPU used meanwhile.
    pub cpu: CpuUse,
}

/// Publishes and consumes `messages` bodies of `body` on a throw-away quorum queue.
pub async fn broker(
    amqp_url: &str,
    queue: &str,
    body: &[u8],
    messages: u64,
    prefetch: u16,
    window: usize,
    cleanup: &mut Cleanup,
) -> anyhow::Result<BrokerBound> {
    let producer = amqp::connect(amqp_url, "refund-worker-bench-raw-publisher").await?;
    let consumer_conn = amqp::connect(amqp_url, "refund-worker-bench-raw-consumer").await?;
    let channel = consumer_conn.create_channel().await?;
    cleanup.queues.push(queue.to_owned());
    amqp::quorum_queue(&channel, queue).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.into(),
            "refund-worker-bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = Publisher::open(&producer).await?;

    let acked = Arc::new(AtomicU64::new(0));
    let progress = Progress::new(messages, "raw broker");
    let cpu_before = CpuSnapshot::take(None);
    let started = Instant::now();
    let consume = {
        let (acked, progress) = (acked.clone(), &progress);
        async move {
            while acked.load(Ordering::Relaxed) < messages {
                match deliveries.next().await {
                    Some(Ok(d)) => {
                        d.ack(BasicAckOptions::default()).await?;
                        let n = acked.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 256 == 0 {
                            progress.set(n);
                        }
                    }
                    Some(Err(e)) => return Err(anyhow::Error::from(e)),
                    None => anyhow::bail!("the raw consumer was cancelled"),
                }
            }
            anyhow::Ok(started.elapsed())
        }
    };
    let publish = async {
        let mut confirms = VecDeque::with_capacity(window);
        for i in 0..messages {
            if confirms.len() >= window {
                if let Some(c) = confirms.pop_front() {
                    Publisher::confirmed(c).await?;
                }
            }
            let confirm = publisher.send("", queue, body, &format!("raw-{i}")).await?;
            confirms.push_back(confirm);
        }
        for c in confirms {
            Publisher::confirmed(c).await?;
        }
        anyhow::Ok(started.elapsed())
    };
    let both = async { tokio::try_join!(publish, consume) };
    let (publish_time, total) = tokio::time::timeout(Duration::from_secs(300), both)
        .await
        .context("the raw broker test took more than 5 minutes")??;
    let cpu = cpu_before.until(
        &CpuSnapshot::take(None),
        sys::clock_ticks_per_sec(),
        sys::Machine::read().cpus,
    );
    progress.finish();
    // Consumer first (closing its channel cancels it), then the queue, then the rest.
    let _ = channel.close(200, "raw done".into()).await;
    let _ = consumer_conn.close(200, "raw done".into()).await;
    let deleted = async {
        let ch = producer.create_channel().await?;
        ch.queue_delete(queue.into(), Default::default()).await?;
        ch.close(200, "deleted".into()).await
    };
    if deleted.await.is_ok() {
        cleanup.queues.retain(|q| q != queue);
    }
    let _ = publisher.channel().close(200, "raw done".into()).await;
    let _ = producer.close(200, "raw done".into()).await;
    let secs = total.as_secs_f64();
    Ok(BrokerBound {
        messages,
        body_bytes: body.len(),
        prefetch,
        confirm_window: window,
        publish_secs: publish_time.as_secs_f64(),
        secs,
        messages_per_sec: messages as f64 / secs.max(1e-9),
        cpu,
    })
}

/// Runs `commits` single-row committed inserts of `row` from `connections` connections.
pub async fn postgres(
    database_url: &str,
    row: &serde_json::Value,
    commits: u64,
    connections: u32,
) -> anyhow::Result<PostgresBound> {
    super::create_database(database_url)
        .await
        .context("creating the raw database")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("connecting to the raw database")?;
    sqlx::query(
        "CREATE TABLE raw_commits (
             id         BIGSERIAL   PRIMARY KEY,
             payload    JSONB       NOT NULL,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .context("creating the raw table")?;

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::new(commits, "raw database");
    let cpu_before = CpuSnapshot::take(None);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (pool, next, done, row) = (pool.clone(), next.clone(), done.clone(), row.clone());
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            while next.fetch_add(1, Ordering::Relaxed) < commits {
                let t = Instant::now();
                sqlx::query("INSERT INTO raw_commits (payload) VALUES ($1)")
                    .bind(&row)
                    .execute(&mut *conn)
                    .await?;
                latencies.saturating_record(micros(t.elapsed()));
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(r) => latencies.add(r.context("a raw insert task panicked")??)?,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => progress.set(done.load(Ordering::Relaxed)),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_before.until(
        &CpuSnapshot::take(None),
        sys::clock_ticks_per_sec(),
        sys::Machine::read().cpus,
    );
    progress.finish();
    pool.close().await;
    Ok(PostgresBound {
        commits,
        connections,
        row_bytes: row.to_string().len(),
        secs,
        commits_per_sec: commits as f64 / secs.max(1e-9),
        commit_p50_ms: latencies.value_at_quantile(0.5) as f64 / 1000.0,
        commit_p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        cpu,
    })
}

/// A duration in whole microseconds, at least 1 (histograms start at 1).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}
