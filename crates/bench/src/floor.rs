//! The floor: the thinnest worker of the same durable shape as refund-worker, run in the
//! same bench run on the same co-tenants, so that refund-worker / floor says what the
//! worker's own cost per refund is (issue 25, target 5: >= 0.8).
//!
//! Per refund, as refund-worker does it but with nothing else: consume the command with a
//! manual ack, `INSERT` its row, publish a PENDING event and wait for the confirm, call the
//! provider (VA Services in the sandbox: initiate, then status), `UPDATE` the row, publish a
//! COMPLETED event and wait for the confirm, ack. No outbox, history, validation, retries or
//! batching. It runs inside the bench process, on its own database, queues and connections.

use super::amqp::{self, Publisher};
use super::e2e::{command, ProviderName};
use super::{create_database, drop_database, Cleanup, Progress};
use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// What the floor needs.
#[derive(Debug, Clone)]
pub struct FloorSettings {
    /// RabbitMQ.
    pub amqp_url: String,
    /// A database of its own (created and dropped here).
    pub database_url: String,
    /// Its queues' names start with this.
    pub queue_prefix: String,
    /// The sandbox's VA Services base URL and API key.
    pub va_base_url: String,
    /// The bearer token.
    pub va_api_key: String,
    /// Refunds to move.
    pub refunds: u64,
    /// Published but not yet COMPLETED, at most.
    pub in_flight: u64,
    /// Consumer prefetch (the worker's `PREFETCH`).
    pub prefetch: u16,
    /// Database connections (the worker's `DATABASE_MAX_CONNECTIONS`).
    pub connections: u32,
    /// Abort when no refund completes for this long.
    pub stall: Duration,
}

/// What the floor did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FloorFigures {
    /// Refunds completed.
    pub refunds: u64,
    /// First command published to last COMPLETED event received.
    pub secs: f64,
    /// Refunds per second.
    pub refunds_per_sec: f64,
    /// Refunds the floor could not move (any step failed; acked and counted).
    pub errors: u64,
}

/// The floor worker's part: everything it holds.
struct Floor {
    pool: PgPool,
    events: Publisher,
    events_queue: String,
    http: reqwest::Client,
    va_base_url: String,
    va_api_key: String,
}

impl Floor {
    /// One refund, start to finish.
    async fn handle(&self, body: &[u8]) -> anyhow::Result<()> {
        let c: Value = serde_json::from_slice(body)?;
        let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
        let (reference, amount) = (field("refundReference"), field("amount"));
        sqlx::query(
            "INSERT INTO floor_refunds (refund_reference, amount, status) VALUES ($1, $2::numeric, 'PENDING')",
        )
        .bind(reference)
        .bind(amount)
        .execute(&self.pool)
        .await?;
        self.event(reference, "PENDING").await?;
        let initiate = serde_json::json!({
            "transactionReference": field("transactionReference"),
            "refundReference": reference,
            "refundAmount": amount,
            "refundReason": field("reason"),
            "destinationAccountNumber": "0040088210",
            "destinationAccountBankCode": "000012",
        });
        let accepted: Value = self
            .http
            .post(format!("{}/va/refunds/initiate-refund", self.va_base_url))
            .bearer_auth(&self.va_api_key)
            .json(&initiate)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let status: Value = self
            .http
            .get(format!("{}/va/refunds/{reference}", self.va_base_url))
            .bearer_auth(&self.va_api_key)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let provider_status = status
            .pointer("/data/status")
            .or_else(|| accepted.pointer("/data/status"))
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN");
        sqlx::query(
            "UPDATE floor_refunds SET status = 'COMPLETED', provider_status = $2, updated_at = now()
             WHERE refund_reference = $1",
        )
        .bind(reference)
        .bind(provider_status)
        .execute(&self.pool)
        .await?;
        self.event(reference, "COMPLETED").await
    }

    /// Publishes a status event and waits for its confirm.
    async fn event(&self, reference: &str, status: &str) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&serde_json::json!({
            "eventId": uuid::Uuid::new_v4(),
            "refundReference": reference,
            "status": status,
        }))?;
        let confirm = self
            .events
            .send("", &self.events_queue, &body, reference)
            .await?;
        Publisher::confirmed(confirm).await
    }
}

/// Runs the floor: its worker, and the same load shape as the throughput phase.
pub async fn run(s: &FloorSettings, cleanup: &mut Cleanup) -> anyhow::Result<FloorFigures> {
    cleanup.databases.push(s.database_url.clone());
    create_database(&s.database_url).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(s.connections.max(1))
        .connect(&s.database_url)
        .await
        .context("connecting to the floor database")?;
    sqlx::query(
        "CREATE TABLE floor_refunds (refund_reference TEXT PRIMARY KEY, amount NUMERIC NOT NULL,
             status TEXT NOT NULL, provider_status TEXT,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(), updated_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;

    let (commands_queue, events_queue) = (
        format!("{}commands", s.queue_prefix),
        format!("{}events", s.queue_prefix),
    );
    cleanup
        .queues
        .extend([commands_queue.clone(), events_queue.clone()]);
    let worker_conn = amqp::connect(&s.amqp_url, "refund-worker-bench-floor").await?;
    let load_conn = amqp::connect(&s.amqp_url, "refund-worker-bench-floor-load").await?;
    let consume = worker_conn.create_channel().await?;
    amqp::quorum_queue(&consume, &commands_queue).await?;
    amqp::quorum_queue(&consume, &events_queue).await?;
    consume
        .basic_qos(s.prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = consume
        .basic_consume(
            commands_queue.as_str().into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let floor = Arc::new(Floor {
        pool: pool.clone(),
        events: Publisher::open(&worker_conn).await?,
        events_queue: events_queue.clone(),
        http: reqwest::Client::new(),
        va_base_url: s.va_base_url.clone(),
        va_api_key: s.va_api_key.clone(),
    });
    let errors = Arc::new(AtomicU64::new(0));
    let worker = {
        let (floor, errors) = (floor.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let (floor, errors) = (floor.clone(), errors.clone());
                // The prefetch bounds the refunds in hand, as the worker's.
                tokio::spawn(async move {
                    if floor.handle(&delivery.data).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                });
            }
        })
    };

    // The load: commands on the queue, bounded in flight; COMPLETED events counted.
    let events_channel = load_conn.create_channel().await?;
    let mut events = events_channel
        .basic_consume(
            events_queue.as_str().into(),
            "floor-load".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let window = Arc::new(Semaphore::new(
        usize::try_from(s.in_flight).unwrap_or(1 << 20).max(1),
    ));
    let completed = Arc::new(AtomicU64::new(0));
    let subscriber = {
        let (window, completed) = (window.clone(), completed.clone());
        tokio::spawn(async move {
            while let Some(Ok(d)) = events.next().await {
                let done = serde_json::from_slice::<Value>(&d.data)
                    .ok()
                    .is_some_and(|v| v.get("status").and_then(Value::as_str) == Some("COMPLETED"));
                if done {
                    completed.fetch_add(1, Ordering::Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    let publisher = Publisher::open(&load_conn).await?;
    let started = Instant::now();
    let publish = {
        let (window, n, queue) = (window.clone(), s.refunds, commands_queue.clone());
        async move {
            let providers = [ProviderName::VaServices];
            for i in 0..n {
                window.acquire().await?.forget();
                let reference = format!("floor-{i}");
                let body = serde_json::to_vec(&command(&reference, i, &providers))?;
                let confirm = publisher.send("", &queue, &body, &reference).await?;
                // Confirms in the background: the window bounds them.
                tokio::spawn(Publisher::confirmed(confirm));
            }
            anyhow::Ok(())
        }
    };
    let progress = Progress::new(s.refunds, "floor");
    let watch = async {
        let (mut last, mut since) = (0, Instant::now());
        loop {
            let now = completed.load(Ordering::Relaxed) + errors.load(Ordering::Relaxed);
            progress.set(now);
            if now >= s.refunds {
                return Ok(started.elapsed());
            }
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > s.stall {
                anyhow::bail!(
                    "the floor made no progress for {:?} ({now} of {})",
                    s.stall,
                    s.refunds
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (published, elapsed) = tokio::join!(publish, watch);
    progress.finish();
    worker.abort();
    subscriber.abort();
    let _ = worker_conn.close(200, "floor done".into()).await;
    let _ = load_conn.close(200, "floor done".into()).await;
    pool.close().await;
    drop_database(&s.database_url).await?;
    cleanup.databases.retain(|u| u != &s.database_url);
    published?;
    let secs = elapsed?.as_secs_f64();
    let done = completed.load(Ordering::Relaxed);
    Ok(FloorFigures {
        refunds: done,
        secs,
        refunds_per_sec: if secs > 0.0 { done as f64 / secs } else { 0.0 },
        errors: errors.load(Ordering::Relaxed),
    })
}

/// refund-worker / floor, when both ran.
pub fn ratio(worker_per_sec: f64, floor: &FloorFigures) -> Option<f64> {
    (floor.refunds_per_sec > 0.0).then(|| worker_per_sec / floor.refunds_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_worker_over_the_floor() {
        let f = |r| FloorFigures {
            refunds: 10,
            secs: 1.0,
            refunds_per_sec: r,
            errors: 0,
        };
        assert_eq!(ratio(800.0, &f(1000.0)), Some(0.8));
        assert_eq!(ratio(800.0, &f(0.0)), None);
    }
}
