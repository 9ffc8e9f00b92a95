//! End to end: refund commands published to RabbitMQ, a `refund-worker run` child process
//! moving them through PostgreSQL and the provider sandbox, and status events received by a
//! subscriber bound to `refund.status.#`, as any downstream consumer would be.
//!
//! Every refund's command publish, first `PENDING` event and final event are time-stamped in
//! this process (one monotonic clock); afterwards the database's own timestamps (intake
//! transaction, provider calls, outbox relay) split those latencies into stages.

use super::amqp::{self, Publisher};
use super::raw::micros;
use super::scale::{self, ScaleFigures, Sizes};
use super::sys::{self, CpuSnapshot, CpuUse};
use super::target::{HotStatement, Names};
use super::{Cleanup, Progress};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The groups of refunds one run publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not measured: fills caches and connection pools.
    Warmup,
    /// As fast as the worker takes them, with a bounded number in flight.
    Throughput,
    /// At a fixed publish rate.
    Steady,
    /// Published while the worker is stopped (`--backlog`).
    Backlog,
    /// Published at `--probe-rate` while the backlog drains.
    Probe,
    /// At `--rate` for `--soak`.
    Soak,
}

impl Phase {
    const ALL: [Phase; 6] = [
        Phase::Warmup,
        Phase::Throughput,
        Phase::Steady,
        Phase::Backlog,
        Phase::Probe,
        Phase::Soak,
    ];

    fn tag(self) -> char {
        match self {
            Phase::Warmup => 'w',
            Phase::Throughput => 't',
            Phase::Steady => 's',
            Phase::Backlog => 'b',
            Phase::Probe => 'p',
            Phase::Soak => 'k',
        }
    }

    /// What a refund's number in its phase adds to make the payment it refunds (the
    /// command's `n`): the first three phases share payments (three refunds of 25.17 fit a
    /// payment of 100.00); the backlog's and the probes' are their own, or a fourth refund
    /// of a payment would be refused as over-refunding it.
    fn payment_base(self) -> u64 {
        match self {
            Phase::Warmup | Phase::Throughput | Phase::Steady => 0,
            Phase::Backlog => 20_000_000,
            Phase::Probe => 30_000_000,
            Phase::Soak => 40_000_000,
        }
    }

    fn index(self) -> usize {
        match self {
            Phase::Warmup => 0,
            Phase::Throughput => 1,
            Phase::Steady => 2,
            Phase::Backlog => 3,
            Phase::Probe => 4,
            Phase::Soak => 5,
        }
    }
}

/// What the end-to-end part needs from the caller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Run id: names the database, the exchanges and queues, and every refund.
    pub run_id: String,
    /// Exchange and queue names of the worker under test.
    pub names: Names,
    /// The worker's executable.
    pub exe: PathBuf,
    /// RabbitMQ.
    pub amqp_url: String,
    /// The bench database (fresh).
    pub database_url: String,
    /// Environment of the worker child, on top of the inherited one.
    pub child_env: BTreeMap<String, String>,
    /// Inherited variables to remove from the child's environment.
    pub child_env_remove: Vec<String>,
    /// The worker's `/healthz` `/readyz` address.
    pub http_addr: SocketAddr,
    /// Refunds of the warm-up.
    pub warmup: u64,
    /// Refunds of the throughput phase.
    pub refunds: u64,
    /// Refunds published but not final, at most, in the warm-up and throughput phases.
    pub in_flight: u64,
    /// Unconfirmed publishes at most.
    pub confirm_window: usize,
    /// Publish rate of the steady phase (0: no steady phase).
    pub rate: f64,
    /// Length of the steady phase.
    pub steady: Duration,
    /// Abort when nothing moves for this long.
    pub stall: Duration,
    /// Where the worker's output goes.
    pub worker_log: PathBuf,
    /// Providers the commands rotate through (`--providers`).
    pub providers: Vec<ProviderName>,
    /// Finished refunds written into the database before the run (`--preload`).
    pub preload: u64,
    /// The worker's hot statements, explained after the preload.
    pub hot_statements: Vec<HotStatement>,
    /// Commands published while the worker is stopped, then drained (`--backlog`).
    pub backlog: u64,
    /// Probe commands per second during the drain (`--probe-rate`).
    pub probe_rate: f64,
    /// Worker processes against the same broker and database (`--workers`, at least 1).
    pub workers: usize,
    /// A long phase at `rate` (`--soak`), sampled every `soak_every`.
    pub soak: Option<Duration>,
    /// How often the soak is sampled.
    pub soak_every: Duration,
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseFigures {
    /// Refunds published.
    pub refunds: u64,
    /// Refunds whose COMPLETED event arrived.
    pub completed: u64,
    /// Refunds whose REFUND_FAIL event arrived (none expected).
    pub failed: u64,
    /// First command publish to last final event.
    pub secs: f64,
    /// Refunds per second over `secs`.
    pub refunds_per_sec: f64,
    /// First to last command publish.
    pub publish_secs: f64,
    /// Commands per second over `publish_secs`.
    pub publish_rate: f64,
    /// Target publish rate (steady phase).
    pub target_rate: Option<f64>,
    /// How late the publisher was against its schedule, worst case (steady phase).
    pub schedule_lag_max_ms: Option<f64>,
    /// Command publish to the first PENDING event.
    pub to_pending: Latency,
    /// Command publish to the COMPLETED event.
    pub to_completed: Latency,
    /// CPU time of the participants over the phase.
    pub cpu: Option<CpuUse>,
    /// CPU milliseconds per refund, by participant.
    pub cpu_ms_per_refund: Option<CpuPerRefund>,
    /// Latencies split by stage (database timestamps).
    pub stages: Vec<Stage>,
    /// Throughput of each stage over the phase.
    pub stage_rates: StageRates,
}

/// CPU milliseconds one refund costs each participant (over a phase), and the rate the
/// machine's CPUs would allow at that cost if nothing else ran.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuPerRefund {
    /// The worker process.
    pub worker: f64,
    /// PostgreSQL (server-wide).
    pub postgres: f64,
    /// RabbitMQ (server-wide).
    pub rabbitmq: f64,
    /// This process (publisher, subscriber, sandbox).
    pub bench: f64,
    /// Their sum.
    pub total: f64,
    /// CPUs x 1000 / total: refunds per second with every CPU busy on them.
    pub cpu_bound_refunds_per_sec: f64,
}

impl CpuPerRefund {
    fn new(cpu: &CpuUse, refunds: u64, cpus: usize) -> Option<Self> {
        if refunds == 0 {
            return None;
        }
        let per = |secs: f64| secs * 1000.0 / refunds as f64;
        let total = per(cpu.worker_secs + cpu.postgres_secs + cpu.rabbitmq_secs + cpu.bench_secs);
        Some(Self {
            worker: per(cpu.worker_secs),
            postgres: per(cpu.postgres_secs),
            rabbitmq: per(cpu.rabbitmq_secs),
            bench: per(cpu.bench_secs),
            total,
            cpu_bound_refunds_per_sec: if total > 0.0 {
                cpus as f64 * 1000.0 / total
            } else {
                0.0
            },
        })
    }
}

/// One stage of a refund's way, in milliseconds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// What the stage covers.
    pub name: &'static str,
    /// Distribution.
    pub latency: Latency,
}

/// Throughput of each part of the pipeline over a phase (refunds or events per second
/// between the first and the last of them).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRates {
    /// Intake transactions started per second.
    pub intake_per_sec: f64,
    /// Refunds recorded final per second.
    pub dispatch_per_sec: f64,
    /// Events published by the relay per second.
    pub relay_events_per_sec: f64,
    /// Events marked per relay transaction.
    pub events_per_relay_commit: f64,
    /// Refunds stored per intake transaction (the phase's refunds over their distinct
    /// `created_at`).
    pub commands_per_intake_commit: f64,
    /// Refunds finished per record transaction (the dispatcher's finishing transitions over
    /// their distinct `occurred_at`; record transactions that only rescheduled are not seen).
    pub finishes_per_record_commit: f64,
}

/// What the worker did, counted in its database and by the subscriber.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counted {
    /// Refund rows (warm-up and all phases).
    pub refunds: i64,
    /// COMPLETED refunds.
    pub completed: i64,
    /// REFUND_FAIL refunds.
    pub failed: i64,
    /// Still PENDING.
    pub pending: i64,
    /// `provider_attempts` rows.
    pub provider_calls: i64,
    /// Of which submits.
    pub submits: i64,
    /// Of which status polls.
    pub status_polls: i64,
    /// Outbox events.
    pub events: i64,
    /// Outbox events never published.
    pub unpublished: i64,
    /// Relay transactions that marked events (distinct `published_at`).
    pub relay_commits: i64,
    /// Intake transactions that stored refunds: distinct `refunds.created_at`, since every
    /// refund stored by one intake transaction gets that transaction's `now()`. An intake
    /// transaction that stored nothing new (only repeats) leaves no row and is not counted.
    /// Two transactions starting in the same microsecond would count as one, so this and
    /// [`Self::record_commits`] are lower bounds (tight ones in practice).
    pub intake_commits: i64,
    /// Record transactions that finished at least one refund: distinct `occurred_at` of the
    /// dispatcher's finishing transitions (`store::refunds::record_steps` stamps them with
    /// its transaction's `now()`). A record transaction that only rescheduled refunds leaves
    /// no lasting timestamp (the finish overwrites `updated_at`) and is not counted.
    pub record_commits: i64,
    /// Refunds the dispatcher finished (its finishing transitions).
    pub record_finishes: i64,
    /// Refunds finished otherwise: by a provider webhook that arrived before the
    /// dispatcher recorded the provider's answer (in the webhook's ingress transaction).
    pub other_finishes: i64,
    /// Webhook ingress transactions: distinct `provider_webhook_inbox.received_at` (the
    /// inserting transaction's start; a lane's batch shares one, a repeat is rolled back).
    /// Later retries of parked webhooks are not counted.
    pub webhook_commits: i64,
    /// `provider_webhook_inbox` rows: the webhooks those transactions took in.
    pub webhooks: i64,
    /// `refund_transitions` rows.
    pub transitions: i64,
    /// Events the subscriber received, duplicates included.
    pub events_received: u64,
    /// Redelivered events (same refund and status twice).
    pub duplicate_events: u64,
    /// Messages the subscriber could not place.
    pub unknown_events: u64,
    /// Commands published by the bench.
    pub commands: u64,
    /// Committed transactions of the bench database over the worker's life
    /// (`pg_stat_database.xact_commit`, read-only ones included).
    pub transactions: Option<i64>,
    /// WAL written during the throughput phase (server-wide).
    pub wal_bytes_throughput: Option<i64>,
}

/// `a / b`, or 0 when `b` is 0.
impl Counted {
    /// What the database counts now less what it counted at `base` (rows written before
    /// the run: a preload). Exact for the distinct-time counts too: a preload's times are
    /// all before the run's.
    pub fn since(self, base: &Counted) -> Counted {
        Counted {
            refunds: self.refunds - base.refunds,
            completed: self.completed - base.completed,
            failed: self.failed - base.failed,
            pending: self.pending - base.pending,
            provider_calls: self.provider_calls - base.provider_calls,
            submits: self.submits - base.submits,
            status_polls: self.status_polls - base.status_polls,
            events: self.events - base.events,
            unpublished: self.unpublished - base.unpublished,
            relay_commits: self.relay_commits - base.relay_commits,
            intake_commits: self.intake_commits - base.intake_commits,
            record_commits: self.record_commits - base.record_commits,
            record_finishes: self.record_finishes - base.record_finishes,
            other_finishes: self.other_finishes - base.other_finishes,
            webhook_commits: self.webhook_commits - base.webhook_commits,
            webhooks: self.webhooks - base.webhooks,
            transitions: self.transitions - base.transitions,
            ..self
        }
    }
}

fn ratio(a: i64, b: i64) -> f64 {
    if b > 0 {
        a as f64 / b as f64
    } else {
        0.0
    }
}

impl Counted {
    /// `x` per refund row (0 without refunds).
    pub fn per_refund(&self, x: f64) -> f64 {
        if self.refunds > 0 {
            x / self.refunds as f64
        } else {
            0.0
        }
    }

    /// Provider calls per refund.
    pub fn calls_per_refund(&self) -> f64 {
        self.per_refund(self.provider_calls as f64)
    }

    /// Broker messages per refund: commands consumed plus events published.
    pub fn messages_per_refund(&self) -> f64 {
        self.per_refund((self.commands as i64 + self.events - self.unpublished) as f64)
    }

    /// Write commits per refund that the rows prove: intake, record (those that finished
    /// a refund), relay and webhook ingress transactions, each counted by distinct commit
    /// timestamps or rows. Claims, reschedule-only records and empty relay or intake rounds
    /// leave no row and are not in it; `pg_stat_database` ([`Self::transactions`]) has all.
    pub fn counted_commits_per_refund(&self) -> f64 {
        self.per_refund(
            (self.intake_commits + self.record_commits + self.relay_commits + self.webhook_commits)
                as f64,
        )
    }

    /// Refunds stored per intake transaction (the intake batch size).
    pub fn commands_per_intake_commit(&self) -> f64 {
        ratio(self.refunds, self.intake_commits)
    }

    /// Refunds finished per record transaction that finished any (the record batch size).
    pub fn finishes_per_record_commit(&self) -> f64 {
        ratio(self.record_finishes, self.record_commits)
    }

    /// Events marked published per relay transaction.
    pub fn events_per_relay_commit(&self) -> f64 {
        ratio(self.events - self.unpublished, self.relay_commits)
    }

    /// All committed transactions per refund (pg_stat_database).
    pub fn transactions_per_refund(&self) -> Option<f64> {
        self.transactions.map(|t| self.per_refund(t as f64))
    }

    /// WAL bytes per refund of the throughput phase.
    pub fn wal_bytes_per_refund(&self, refunds: u64) -> Option<f64> {
        self.wal_bytes_throughput
            .filter(|_| refunds > 0)
            .map(|b| b as f64 / refunds as f64)
    }
}

/// The worker process and what it used.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerFigures {
    /// Its pid.
    pub pid: u32,
    /// Peak resident memory (`VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// Resident memory at the end, KiB.
    pub rss_kib_at_end: Option<u64>,
    /// How it ended after SIGTERM.
    pub exit: String,
    /// Its output.
    pub log: String,
    /// Panics in its log (a panicking task does not stop the process, but what it was
    /// doing is left undone: an intake task's message stays unacknowledged).
    pub panics: usize,
    /// The first panic's message.
    pub first_panic: Option<String>,
    /// The settings it ran with (bench-owned ones; the rest is inherited).
    pub env: BTreeMap<String, String>,
    /// With `--workers K`: the other processes' peak RSS (KiB) and how each ended; their CPU
    /// is not in the worker's CPU figures (it shows under "anything else").
    pub others: Vec<OtherWorker>,
}

/// Everything the end-to-end part measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// The throughput phase.
    pub throughput: PhaseFigures,
    /// The steady-rate phase, if run.
    pub steady: Option<PhaseFigures>,
    /// Counts.
    pub counted: Counted,
    /// The worker process.
    pub worker: WorkerFigures,
    /// Preload, plans at size, bytes per refund.
    pub scale: ScaleFigures,
    /// The backlog drain, if run.
    pub backlog: Option<BacklogFigures>,
    /// The soak's samples, if run.
    pub soak: Vec<SoakSample>,
}

/// Wall-clock mapping of the run's monotonic clock.
struct Clock {
    base: Instant,
    base_wall: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            base_wall: Utc::now(),
        }
    }

    /// Nanoseconds since the base; never 0 (0 means "not yet").
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn wall(&self, ns: u64) -> DateTime<Utc> {
        self.base_wall + chrono::Duration::nanoseconds(i64::try_from(ns).unwrap_or(i64::MAX))
    }
}

/// Per-refund time stamps of one phase (ns since the base; 0 = not yet).
struct Track {
    published: Vec<AtomicU64>,
    pending_rx: Vec<AtomicU64>,
    final_rx: Vec<AtomicU64>,
    published_count: AtomicU64,
    pending: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Bounds refunds in flight (publish takes a permit, the final event returns it).
    in_flight: Option<Arc<Semaphore>>,
}

impl Track {
    fn new(n: u64, in_flight: Option<u64>) -> Self {
        let slots = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            published: slots(),
            pending_rx: slots(),
            final_rx: slots(),
            published_count: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: in_flight.map(|k| {
                Arc::new(Semaphore::new(
                    usize::try_from(k).unwrap_or(usize::MAX >> 4).max(1),
                ))
            }),
        }
    }

    fn finals(&self) -> u64 {
        self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    fn len(&self) -> u64 {
        self.published.len() as u64
    }
}

/// State shared by the publisher, the subscriber and the monitor.
struct Shared {
    clock: Clock,
    /// `bench-<id>-`: every refund reference starts with it.
    prefix: String,
    tracks: [Track; 6],
    received: AtomicU64,
    duplicates: AtomicU64,
    unknown: AtomicU64,
    /// Set when the event subscription ended early (a broker restart, for example).
    subscriber_error: std::sync::Mutex<Option<String>>,
    /// Providers the commands rotate through.
    providers: Vec<ProviderName>,
}

/// The part of a status event the subscriber needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventHead {
    refund_reference: String,
    status: String,
}

impl Shared {
    fn reference(&self, phase: Phase, n: u64) -> String {
        format!("{}{}{n}", self.prefix, phase.tag())
    }

    fn track(&self, phase: Phase) -> &Track {
        &self.tracks[phase.index()]
    }

    fn locate(&self, reference: &str) -> Option<(&Track, usize)> {
        let rest = reference.strip_prefix(&self.prefix)?;
        let mut chars = rest.chars();
        let tag = chars.next()?;
        let phase = Phase::ALL.into_iter().find(|p| p.tag() == tag)?;
        let n: usize = chars.as_str().parse().ok()?;
        let track = self.track(phase);
        (n < track.published.len()).then_some((track, n))
    }

    fn on_event(&self, body: &[u8]) {
        let now = self.clock.now_ns();
        self.received.fetch_add(1, Ordering::Relaxed);
        let located = serde_json::from_slice::<EventHead>(body)
            .ok()
            .and_then(|e| self.locate(&e.refund_reference).map(|(t, n)| (e, t, n)));
        let Some((event, track, n)) = located else {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let first = |slot: &AtomicU64| {
            slot.compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        match event.status.as_str() {
            "PENDING" => {
                if first(&track.pending_rx[n]) {
                    track.pending.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            "COMPLETED" | "REFUND_FAIL" => {
                if first(&track.final_rx[n]) {
                    let counter = if event.status == "COMPLETED" {
                        &track.completed
                    } else {
                        &track.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Some(window) = &track.in_flight {
                        window.add_permits(1);
                    }
                } else {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The providers of `--providers` when it is not given: a quarter of the refunds each.
/// A provider, by its wire name in the command's `provider` field (the command contract,
/// README "Refund commands"), as an upstream publisher names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProviderName {
    /// `va_services`.
    VaServices,
    /// `bpn`.
    Bpn,
    /// `binance_pay`.
    BinancePay,
    /// `bvnk`.
    Bvnk,
}

impl ProviderName {
    /// Every provider, in the worker's order.
    pub const ALL: [ProviderName; 4] = [Self::VaServices, Self::Bpn, Self::BinancePay, Self::Bvnk];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VaServices => "va_services",
            Self::Bpn => "bpn",
            Self::BinancePay => "binance_pay",
            Self::Bvnk => "bvnk",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for ProviderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const DEFAULT_PROVIDERS: [ProviderName; 4] = [
    ProviderName::VaServices,
    ProviderName::Bvnk,
    ProviderName::BinancePay,
    ProviderName::Bpn,
];

/// A refund command for its own payment (so the over-refund guard's payment lock is taken
/// but never contended): the `n`th command goes to `providers[n % len]`, so a list's
/// providers share the refunds equally (a name listed twice gets twice the share). An
/// empty list means [`DEFAULT_PROVIDERS`].
pub fn command(reference: &str, n: u64, providers: &[ProviderName]) -> serde_json::Value {
    let providers = if providers.is_empty() {
        &DEFAULT_PROVIDERS[..]
    } else {
        providers
    };
    let slot = usize::try_from(n % providers.len() as u64).unwrap_or(0);
    let provider = providers
        .get(slot)
        .copied()
        .unwrap_or(ProviderName::VaServices);
    let payment = format!("txn-{reference}");
    match provider {
        ProviderName::VaServices => serde_json::json!({
            "refundReference": reference,
            "provider": "va_services",
            "transactionReference": payment,
            "amount": "25.17",
            "currency": "NGN",
            "reason": "Order cancelled!",
            "customerNote": "An optional note",
            "destination": { "accountNumber": "0040088210", "bankCode": "000012" },
            "paymentAmount": "100.00",
            "metadata": { "orderId": format!("A-{n}") }
        }),
        ProviderName::Bvnk => serde_json::json!({
            "refundReference": reference,
            "provider": "bvnk",
            "transactionReference": payment,
            "amount": "25.17",
            "currency": "EUR",
            "reason": "Order cancelled!",
            "paymentAmount": "100.00",
            "metadata": { "orderId": format!("A-{n}") }
        }),
        ProviderName::BinancePay => serde_json::json!({
            "refundReference": reference,
            "provider": "binance_pay",
            // Binance Pay prepay ids are numeric, at most 19 digits.
            "transactionReference": format!("9{n:017}"),
            "amount": "25.17",
            "currency": "USDT",
            "reason": "Order cancelled!",
            "paymentAmount": "100.00"
        }),
        // BPN refunds whole orders: an order the sandbox was not told about is worth its
        // default payment amount (1,000,000 NGN), refunded whole.
        ProviderName::Bpn => serde_json::json!({
            "refundReference": reference,
            "provider": "bpn",
            "transactionReference": payment,
            "amount": "1000000",
            "currency": "NGN",
            "reason": "Order cancelled!",
            "paymentAmount": "1000000"
        }),
    }
}

/// How a phase is paced.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// As fast as the in-flight bound allows.
    Window,
    /// At a fixed rate (commands per second).
    Rate(f64),
}

/// What the publisher saw.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    lag_max: Duration,
}

/// Publishes `n` commands of `phase`, with confirms pipelined in a sliding window.
async fn publish(
    shared: Arc<Shared>,
    phase: Phase,
    publisher: Publisher,
    names: Names,
    pace: Pace,
    window: usize,
) -> anyhow::Result<Published> {
    let track = shared.track(phase);
    let mut confirms = VecDeque::with_capacity(window);
    let mut lag_max = Duration::ZERO;
    let start = tokio::time::Instant::now();
    for i in 0..track.len() {
        match pace {
            Pace::Window => {
                if let Some(bound) = &track.in_flight {
                    bound.acquire().await?.forget();
                }
            }
            Pace::Rate(per_sec) => {
                let due = start + Duration::from_secs_f64(i as f64 / per_sec);
                tokio::time::sleep_until(due).await;
                lag_max = lag_max.max(tokio::time::Instant::now().saturating_duration_since(due));
            }
        }
        if confirms.len() >= window {
            if let Some(c) = confirms.pop_front() {
                Publisher::confirmed(c)
                    .await
                    .context("a command publish was not confirmed")?;
            }
        }
        let reference = shared.reference(phase, i);
        let n = phase.payment_base() + i;
        let body = serde_json::to_vec(&command(&reference, n, &shared.providers))?;
        let message_id = uuid::Uuid::new_v4().to_string();
        let slot = usize::try_from(i).unwrap_or(usize::MAX);
        track.published[slot].store(shared.clock.now_ns(), Ordering::Release);
        let confirm = publisher
            .send(
                &names.exchange,
                &names.command_routing_key,
                &body,
                &message_id,
            )
            .await
            .context("publishing a command")?;
        confirms.push_back(confirm);
        track.published_count.fetch_add(1, Ordering::Relaxed);
    }
    for c in confirms {
        Publisher::confirmed(c)
            .await
            .context("a command publish was not confirmed")?;
    }
    Ok(Published { lag_max })
}

/// Receives status events until stopped.
async fn subscribe(
    shared: Arc<Shared>,
    consumer: lapin::Consumer,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let result = receive(&shared, consumer, stop).await;
    if let Err(e) = &result {
        let mut slot = shared
            .subscriber_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(format!("{e:#}"));
    }
    result
}

async fn receive(
    shared: &Shared,
    mut consumer: lapin::Consumer,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => shared.on_event(&delivery.data),
            Some(Err(e)) => return Err(e).context("the event subscription failed"),
            None => anyhow::bail!("the event subscription was cancelled by the broker"),
        }
    }
}

/// The worker under test, as a child process. Killed when dropped.
pub struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts `<this executable> run` with `env` on top of the inherited environment.
    fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let exe = &settings.exe;
        let log = std::fs::File::create(&settings.worker_log).with_context(|| {
            format!("creating the worker log {}", settings.worker_log.display())
        })?;
        let mut command = std::process::Command::new(exe);
        command
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for k in &settings.child_env_remove {
            command.env_remove(k);
        }
        command.envs(&settings.child_env);
        let child = command.spawn().context("starting the worker process")?;
        Ok(Self {
            child,
            log: settings.worker_log.clone(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The end of its output, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        lines[from..].join("\n")
    }

    /// Panics in the log so far: how many, and the first one's location and message.
    fn panics(&self) -> (usize, Option<String>) {
        use std::io::BufRead;
        match std::fs::File::open(&self.log) {
            // Line by line: the log of a full run is tens of megabytes.
            Ok(f) => scan_panics(std::io::BufReader::new(f).lines().map_while(Result::ok)),
            Err(_) => (0, None),
        }
    }

    /// Fails with the log's tail if the worker has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "the worker exited ({status}); the end of its log ({}):\n{}",
                self.log.display(),
                self.log_tail()
            ),
        }
    }

    /// Waits until `/readyz` answers 200 (database reachable, broker connected).
    async fn wait_ready(&mut self, addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://{addr}/readyz");
        let deadline = Instant::now() + within;
        loop {
            self.check_alive()?;
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the worker was not ready within {within:?}; the end of its log ({}):\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    async fn stop(&mut self, grace: Duration) -> String {
        if let Some(status) = self.exited() {
            return format!("had already exited ({status})");
        }
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return format!("stopped on SIGTERM ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("did not stop within {grace:?} of SIGTERM; killed")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counts `panicked at` lines in a log and returns the first one with the line after it
/// (the panic message), ANSI colours removed.
fn scan_panics(lines: impl Iterator<Item = String>) -> (usize, Option<String>) {
    let strip = |line: &str| {
        let mut out = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // An escape sequence: ESC [ ... letter.
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let mut count = 0;
    let mut first: Option<String> = None;
    let mut want_message = false;
    for line in lines {
        if want_message {
            if let Some(f) = first.as_mut() {
                f.push(' ');
                f.push_str(strip(&line).trim());
            }
            want_message = false;
        }
        if line.contains("panicked at") {
            count += 1;
            if first.is_none() {
                first = Some(strip(&line).trim().to_owned());
                want_message = true;
            }
        }
    }
    (count, first)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the worker to take).
pub fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `<worker> migrate` against the bench database: creates it and applies the migrations.
async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new(&settings.exe);
    command
        .arg("migrate")
        .envs(&settings.child_env)
        .stdin(Stdio::null());
    for k in &settings.child_env_remove {
        command.env_remove(k);
    }
    let out = command
        .output()
        .await
        .with_context(|| format!("starting {} migrate", settings.exe.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "`{} migrate` failed ({}): {}",
            settings.exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A throw-away queue bound to every status event of the worker's exchange, consumed
/// without acks, as any downstream consumer would be.
async fn subscription(
    conn: &lapin::Connection,
    settings: &Settings,
) -> anyhow::Result<lapin::Consumer> {
    let channel = conn.create_channel().await?;
    let events_queue = format!("bench-{}.events", settings.run_id);
    channel
        .queue_declare(
            events_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            events_queue.as_str().into(),
            settings.names.exchange.as_str().into(),
            settings.names.status_binding.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(channel
        .basic_consume(
            events_queue.as_str().into(),
            "refund-worker-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Runs the end-to-end part: warm-up, throughput phase, steady phase.
pub async fn run(settings: &Settings, cleanup: &mut Cleanup) -> anyhow::Result<Figures> {
    cleanup.databases.push(settings.database_url.clone());
    // The worker creates its database and applies its migrations, as an operator would.
    migrate(settings).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&settings.database_url)
        .await
        .context("connecting to the bench database")?;
    let mut scale_figures = ScaleFigures::default();
    if settings.preload > 0 {
        scale_figures.preload =
            Some(scale::preload(&pool, settings.preload, &settings.names.exchange).await?);
        scale_figures.plans = scale::plans(&pool, &settings.hot_statements).await?;
    }
    // What was there before the run (the preload) is not the run's.
    let counted_before = count(&pool).await?;
    scale_figures.before = Sizes::read(&pool).await?;
    scale_figures.autovacuum = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&pool)
        .await?;

    // Two connections, as two separate clients would have: commands out, events in.
    let commands_conn = amqp::connect(&settings.amqp_url, "refund-worker-bench-publisher").await?;
    let events_conn = amqp::connect(&settings.amqp_url, "refund-worker-bench-subscriber").await?;
    let publisher = Publisher::open(&commands_conn).await?;

    let soak_n = settings
        .soak
        .map_or(0, |d| (settings.rate * d.as_secs_f64()).ceil() as u64);
    let steady_n = if settings.rate > 0.0 {
        (settings.rate * settings.steady.as_secs_f64()).ceil() as u64
    } else {
        0
    };
    let shared = Arc::new(Shared {
        clock: Clock::new(),
        prefix: format!("bench-{}-", settings.run_id),
        tracks: [
            Track::new(settings.warmup, Some(settings.in_flight)),
            Track::new(settings.refunds, Some(settings.in_flight)),
            Track::new(steady_n, None),
            Track::new(settings.backlog, None),
            Track::new(
                if settings.backlog > 0 {
                    probe_capacity(settings.probe_rate)
                } else {
                    0
                },
                None,
            ),
            Track::new(soak_n, None),
        ],
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        subscriber_error: std::sync::Mutex::new(None),
        providers: settings.providers.clone(),
    });
    let stop_subscriber = CancellationToken::new();
    // On an early return (an error, ctrl-c) the subscription ends with this function.
    let _stop_on_return = stop_subscriber.clone().drop_guard();

    let xact_before = xact_commit(&settings.database_url).await;
    // The worker declares its exchanges and queues as it starts; they are deleted after
    // the run, whatever happens.
    cleanup.names = Some(settings.names.clone());
    let mut worker = WorkerProcess::spawn(settings)?;
    let pid = worker.pid();
    worker
        .wait_ready(settings.http_addr, Duration::from_secs(60))
        .await?;
    let others = spawn_others(settings).await?;
    let consumer = subscription(&events_conn, settings).await?;
    let subscriber = tokio::spawn(subscribe(shared.clone(), consumer, stop_subscriber.clone()));
    let ticks = sys::clock_ticks_per_sec();
    let cpus = sys::Machine::read().cpus;

    let phase = |phase, pace| PhaseRun {
        shared: shared.clone(),
        phase,
        pace,
        publisher: publisher.clone(),
        names: settings.names.clone(),
        window: settings.confirm_window,
        stall: settings.stall,
    };
    if settings.warmup > 0 {
        phase(Phase::Warmup, Pace::Window)
            .run(&mut worker, "warm-up")
            .await?;
    }

    let wal_before = wal_lsn(&pool).await;
    let cpu_before = CpuSnapshot::take(Some(pid));
    let throughput = phase(Phase::Throughput, Pace::Window)
        .run(&mut worker, "throughput")
        .await?;
    let cpu_throughput = cpu_before.until(&CpuSnapshot::take(Some(pid)), ticks, cpus);
    let wal_bytes = match (wal_before, wal_lsn(&pool).await) {
        (Some(a), Some(b)) => wal_diff(&pool, &b, &a).await,
        _ => None,
    };

    let steady = if steady_n > 0 {
        // Let the worker's queues settle after the throughput phase.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = CpuSnapshot::take(Some(pid));
        let published = phase(Phase::Steady, Pace::Rate(settings.rate))
            .run(&mut worker, "steady rate")
            .await?;
        Some((
            published,
            before.until(&CpuSnapshot::take(Some(pid)), ticks, cpus),
        ))
    } else {
        None
    };

    let soak = match settings.soak {
        Some(_) if soak_n > 0 => {
            let stop = CancellationToken::new();
            let sampler = sample_soak(&pool, pid, settings.soak_every, stop.clone());
            let run = async {
                let r = phase(Phase::Soak, Pace::Rate(settings.rate))
                    .run(&mut worker, "soak")
                    .await;
                stop.cancel();
                r
            };
            let (published, samples) = tokio::join!(run, sampler);
            published?;
            soak_samples(samples?, shared.track(Phase::Soak), &shared.clock)?
        }
        _ => Vec::new(),
    };

    let peak_rss_kib = sys::peak_rss_kib(pid);
    let rss_kib_at_end = sys::rss_kib(pid);
    let exit = worker.stop(Duration::from_secs(30)).await;
    let (panics, first_panic) = worker.panics();
    let others = stop_others(others).await;
    let backlog = if settings.backlog > 0 {
        Some(
            drain_backlog(settings, &shared, &phase(Phase::Backlog, Pace::Window))
                .await
                .context("backlog")?,
        )
    } else {
        None
    };
    stop_subscriber.cancel();
    match subscriber.await {
        Ok(r) => r?,
        Err(e) => anyhow::bail!("the event subscriber panicked: {e}"),
    }
    let _ = publisher.channel().close(200, "bench done".into()).await;
    let _ = commands_conn.close(200, "bench done".into()).await;
    let _ = events_conn.close(200, "bench done".into()).await;

    let mut counted = count(&pool).await?.since(&counted_before);
    scale_figures.after = Sizes::read(&pool).await?;
    scale_figures.bytes_per_refund = scale_figures.after.per_refund(
        &scale_figures.before,
        u64::try_from(counted.refunds).unwrap_or(0),
    );
    counted.events_received = shared.received.load(Ordering::Relaxed);
    counted.duplicate_events = shared.duplicates.load(Ordering::Relaxed);
    counted.unknown_events = shared.unknown.load(Ordering::Relaxed);
    counted.commands = Phase::ALL
        .iter()
        .map(|p| shared.track(*p).published_count.load(Ordering::Relaxed))
        .sum();
    counted.wal_bytes_throughput = wal_bytes;

    let mut throughput_figures = figures(&shared, Phase::Throughput, &throughput, None)?;
    throughput_figures.cpu = Some(cpu_throughput);
    throughput_figures.cpu_ms_per_refund =
        CpuPerRefund::new(&cpu_throughput, settings.refunds, cpus);
    (throughput_figures.stages, throughput_figures.stage_rates) =
        stages(&pool, &shared, Phase::Throughput).await?;
    let steady_figures = match steady {
        Some((published, cpu)) => {
            let mut f = figures(&shared, Phase::Steady, &published, Some(settings.rate))?;
            f.cpu = Some(cpu);
            f.cpu_ms_per_refund = CpuPerRefund::new(&cpu, steady_n, cpus);
            (f.stages, f.stage_rates) = stages(&pool, &shared, Phase::Steady).await?;
            Some(f)
        }
        None => None,
    };
    pool.close().await;
    // Backends report their counters when they exit; give the worker's a moment.
    tokio::time::sleep(Duration::from_millis(700)).await;
    counted.transactions = match (xact_before, xact_commit(&settings.database_url).await) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };

    Ok(Figures {
        soak,
        backlog,
        scale: scale_figures,
        throughput: throughput_figures,
        steady: steady_figures,
        counted,
        worker: WorkerFigures {
            pid,
            peak_rss_kib,
            rss_kib_at_end,
            exit,
            log: settings.worker_log.display().to_string(),
            panics,
            first_panic,
            env: settings.child_env.clone(),
            others,
        },
    })
}

/// One sample of the soak.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SoakSample {
    /// Seconds since the soak started.
    pub at_secs: f64,
    /// The database's size and its main tables'.
    pub sizes: Sizes,
    /// The worker's RSS, KiB.
    pub rss_kib: Option<u64>,
    /// Refunds published since the previous sample that have their PENDING event.
    pub refunds: u64,
    /// Their command -> PENDING p99, ms.
    pub p99_pending_ms: f64,
}

/// Samples sizes and RSS every `every` until stopped (and once more then).
async fn sample_soak(
    pool: &PgPool,
    pid: u32,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<Vec<(u64, Sizes, Option<u64>)>> {
    let clock = Clock::new();
    let mut out = Vec::new();
    loop {
        let stopped = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.cancelled() => true,
        };
        out.push((clock.now_ns(), Sizes::read(pool).await?, sys::rss_kib(pid)));
        if stopped {
            return Ok(out);
        }
    }
}

/// The samples with each window's command -> PENDING p99 (refunds published in it).
fn soak_samples(
    samples: Vec<(u64, Sizes, Option<u64>)>,
    track: &Track,
    clock: &Clock,
) -> anyhow::Result<Vec<SoakSample>> {
    // The sampler's clock started within microseconds of the phase's first publish.
    let first = (0..track.published.len())
        .map(|i| track.published[i].load(Ordering::Acquire))
        .filter(|&p| p > 0)
        .min()
        .unwrap_or_else(|| clock.now_ns());
    let mut out = Vec::new();
    let mut from = 0u64;
    for (at, sizes, rss_kib) in samples {
        // The last sample, taken when the phase ends, may close a window of no length.
        if at.saturating_sub(from) < 1_000_000_000 && !out.is_empty() {
            continue;
        }
        let mut h = histogram()?;
        for i in 0..track.published.len() {
            let p = track.published[i].load(Ordering::Acquire);
            let pending = track.pending_rx[i].load(Ordering::Acquire);
            let rel = p.saturating_sub(first);
            if p > 0 && rel >= from && rel < at && pending >= p {
                h.saturating_record(micros(Duration::from_nanos(pending - p)));
            }
        }
        out.push(SoakSample {
            at_secs: Duration::from_nanos(at).as_secs_f64(),
            sizes,
            rss_kib,
            refunds: h.len(),
            p99_pending_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        });
        from = at;
    }
    Ok(out)
}

/// One more worker process of `--workers`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OtherWorker {
    /// Its pid.
    pub pid: u32,
    /// Peak resident memory (`VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// How it ended after SIGTERM.
    pub exit: String,
    /// Panics in its log.
    pub panics: usize,
}

/// Starts the other worker processes of `--workers`, each on its own HTTP address and log.
async fn spawn_others(settings: &Settings) -> anyhow::Result<Vec<(WorkerProcess, PathBuf)>> {
    let mut others = Vec::new();
    for k in 1..settings.workers {
        let mut s = settings.clone();
        s.http_addr = free_local_addr()?;
        s.child_env
            .insert("HTTP_ADDR".into(), s.http_addr.to_string());
        s.worker_log = settings.worker_log.with_extension(format!("{k}.log"));
        let mut w = WorkerProcess::spawn(&s)?;
        w.wait_ready(s.http_addr, Duration::from_secs(60)).await?;
        others.push((w, s.worker_log));
    }
    Ok(others)
}

/// Stops the other worker processes; a clean one's log is deleted.
async fn stop_others(others: Vec<(WorkerProcess, PathBuf)>) -> Vec<OtherWorker> {
    let mut out = Vec::new();
    for (mut w, log) in others {
        let pid = w.pid();
        let peak_rss_kib = sys::peak_rss_kib(pid);
        let exit = w.stop(Duration::from_secs(30)).await;
        let (panics, _) = w.panics();
        if panics == 0 {
            let _ = std::fs::remove_file(&log);
        }
        out.push(OtherWorker {
            pid,
            peak_rss_kib,
            exit,
            panics,
        });
    }
    out
}

/// The backlog drain: commands published while the worker was stopped, drained by a new
/// worker process while probes arrive at a steady rate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BacklogFigures {
    /// Commands queued while the worker was stopped.
    pub commands: u64,
    /// Seconds to publish them.
    pub publish_secs: f64,
    /// Seconds after the publish until every command was ready in the worker's queues
    /// (the broker's own work while the worker is away, such as refund-worker's move of
    /// commands older than a second to its backlog queue); `None` if that did not happen
    /// within the stall time (the worker then starts anyway).
    pub settle_secs: Option<f64>,
    /// Seconds from the new worker's readiness to the backlog's last final event.
    pub drain_secs: f64,
    /// Backlog refunds per second over that time.
    pub drain_per_sec: f64,
    /// The draining worker's peak RSS (`VmHWM`), KiB.
    pub peak_rss_kib: Option<u64>,
    /// Probe commands published during the drain.
    pub probes: u64,
    /// Their rate (`--probe-rate`).
    pub probe_rate: f64,
    /// Probe command -> PENDING.
    pub probe_to_pending: Latency,
    /// Probe command -> final.
    pub probe_to_completed: Latency,
    /// How the draining worker ended.
    pub exit: String,
}

/// Waits until `queues` hold `n` ready messages together, polling every 200 ms for up to
/// the stall time; the seconds it took, or `None` if they never did.
async fn settle(settings: &Settings, queues: &[String], n: u64) -> anyhow::Result<Option<f64>> {
    let connection = amqp::connect(&settings.amqp_url, "refund-worker-bench-settle").await?;
    let started = Instant::now();
    let settled = loop {
        if amqp::ready_in(&connection, queues).await? >= n {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= settings.stall {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = connection.close(200, "settled".into()).await;
    Ok(settled)
}

/// Probe slots: an hour at the rate at most.
fn probe_capacity(rate: f64) -> u64 {
    if rate > 0.0 && rate.is_finite() {
        (rate * 3600.0).ceil().min(1_000_000.0) as u64
    } else {
        0
    }
}

/// Publishes the backlog with no worker running, starts one, and measures the drain while
/// probes arrive at `--probe-rate`.
async fn drain_backlog(
    settings: &Settings,
    shared: &Arc<Shared>,
    run: &PhaseRun,
) -> anyhow::Result<BacklogFigures> {
    let track = shared.track(Phase::Backlog);
    let started = Instant::now();
    let published = publish(
        shared.clone(),
        Phase::Backlog,
        run.publisher.clone(),
        run.names.clone(),
        Pace::Window,
        run.window,
    )
    .await?;
    let publish_secs = started.elapsed().as_secs_f64();
    // The outage lasts until the broker has put every command where the worker will find
    // it: a worker's topology may move waiting commands between its queues (refund-worker
    // moves those older than a second to its backlog). In a real outage of minutes that
    // happens while the worker is away; the bench compresses the outage into the publish,
    // so it waits for the broker and reports how long that took, apart from the drain.
    let settle_secs = settle(settings, &run.names.command_queues, track.len()).await?;

    let mut second = settings.clone();
    second.worker_log = settings.worker_log.with_extension("backlog.log");
    let mut worker = WorkerProcess::spawn(&second)?;
    let pid = worker.pid();
    worker
        .wait_ready(settings.http_addr, Duration::from_secs(60))
        .await?;
    let ready = shared.clock.now_ns();
    let probes = tokio::spawn(publish(
        shared.clone(),
        Phase::Probe,
        run.publisher.clone(),
        run.names.clone(),
        Pace::Rate(settings.probe_rate.max(f64::MIN_POSITIVE)),
        run.window,
    ));
    let done = tokio::spawn(async move { Ok(published) });
    let progress = Progress::new(track.len(), "backlog");
    let drained = run.monitor(&mut worker, done, &progress).await;
    progress.finish();
    let last_final = (0..track.final_rx.len())
        .map(|i| track.final_rx[i].load(Ordering::Acquire))
        .max()
        .unwrap_or(0);
    probes.abort();
    let peak_rss_kib = sys::peak_rss_kib(pid);
    drained?;
    // The probes already published get their final events before the worker stops.
    let probe = shared.track(Phase::Probe);
    let wait = Instant::now();
    while probe.finals() < probe.published_count.load(Ordering::Relaxed)
        && wait.elapsed() < settings.stall
    {
        worker.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = worker.stop(Duration::from_secs(30)).await;
    let (panics, first) = worker.panics();
    if panics > 0 {
        anyhow::bail!(
            "the draining worker panicked {panics} time(s), first: {}",
            first.unwrap_or_default()
        );
    }
    let _ = std::fs::remove_file(&second.worker_log);
    let drain_secs = Duration::from_nanos(last_final.saturating_sub(ready)).as_secs_f64();
    let (to_pending, to_completed) = latencies(probe)?;
    Ok(BacklogFigures {
        commands: track.len(),
        publish_secs,
        settle_secs,
        drain_secs,
        drain_per_sec: if drain_secs > 0.0 {
            track.len() as f64 / drain_secs
        } else {
            0.0
        },
        peak_rss_kib,
        probes: probe.published_count.load(Ordering::Relaxed),
        probe_rate: settings.probe_rate,
        probe_to_pending: Latency::of(&to_pending),
        probe_to_completed: Latency::of(&to_completed),
        exit,
    })
}

/// Command -> PENDING and command -> final of every refund of a track that has them.
fn latencies(track: &Track) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let (mut to_pending, mut to_final) = (histogram()?, histogram()?);
    for i in 0..track.published.len() {
        let p = track.published[i].load(Ordering::Acquire);
        if p == 0 {
            continue;
        }
        let pending = track.pending_rx[i].load(Ordering::Acquire);
        if pending >= p {
            to_pending.saturating_record(micros(Duration::from_nanos(pending - p)));
        }
        let done = track.final_rx[i].load(Ordering::Acquire);
        if done >= p {
            to_final.saturating_record(micros(Duration::from_nanos(done - p)));
        }
    }
    Ok((to_pending, to_final))
}

/// One phase: a publisher task and a monitor that waits for every final event.
struct PhaseRun {
    shared: Arc<Shared>,
    phase: Phase,
    pace: Pace,
    publisher: Publisher,
    names: Names,
    window: usize,
    stall: Duration,
}

impl PhaseRun {
    async fn run(self, worker: &mut WorkerProcess, label: &str) -> anyhow::Result<Published> {
        let track = self.shared.track(self.phase);
        let n = track.len();
        let progress = Progress::new(n, label);
        let task = tokio::spawn(publish(
            self.shared.clone(),
            self.phase,
            self.publisher.clone(),
            self.names.clone(),
            self.pace,
            self.window,
        ));
        let result = self.monitor(worker, task, &progress).await;
        progress.finish();
        result
    }

    async fn monitor(
        &self,
        worker: &mut WorkerProcess,
        mut task: tokio::task::JoinHandle<anyhow::Result<Published>>,
        progress: &Progress,
    ) -> anyhow::Result<Published> {
        let track = self.shared.track(self.phase);
        let n = track.len();
        let mut published = None;
        let mut last = (0, 0, 0);
        let mut last_change = Instant::now();
        loop {
            let now = (
                track.published_count.load(Ordering::Relaxed),
                track.pending.load(Ordering::Relaxed),
                track.finals(),
            );
            if now != last {
                last = now;
                last_change = Instant::now();
            }
            progress.set(now.2);
            progress.message(format!(
                "published {}  PENDING {}  final {}",
                now.0, now.1, now.2
            ));
            if published.is_none() && task.is_finished() {
                published = Some(match (&mut task).await {
                    Ok(r) => r?,
                    Err(e) => anyhow::bail!("the publisher panicked: {e}"),
                });
            }
            if let Some(p) = published {
                if now.2 >= n {
                    return Ok(p);
                }
            }
            if last_change.elapsed() > self.stall {
                task.abort();
                let (panics, first) = worker.panics();
                let panicked = match first {
                    Some(p) if panics > 0 => {
                        format!("; the worker panicked {panics} time(s), first: {p}")
                    }
                    _ => String::new(),
                };
                anyhow::bail!(
                    "no progress for {:?}: published {}, PENDING {}, final {} of {n} (worker log: {}){panicked}",
                    self.stall,
                    now.0,
                    now.1,
                    now.2,
                    worker.log.display()
                );
            }
            if let Err(e) = worker.check_alive() {
                task.abort();
                return Err(e);
            }
            let subscriber_error = self
                .shared
                .subscriber_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(e) = subscriber_error {
                task.abort();
                anyhow::bail!("{e} (was RabbitMQ restarted during the run?)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Latencies and rates of a phase from its time stamps.
fn figures(
    shared: &Shared,
    phase: Phase,
    published: &Published,
    target_rate: Option<f64>,
) -> anyhow::Result<PhaseFigures> {
    let track = shared.track(phase);
    let mut to_pending = histogram()?;
    let mut to_completed = histogram()?;
    let (mut first, mut last_publish, mut last_final) = (u64::MAX, 0u64, 0u64);
    for i in 0..track.published.len() {
        let p = track.published[i].load(Ordering::Acquire);
        if p == 0 {
            continue;
        }
        first = first.min(p);
        last_publish = last_publish.max(p);
        let pending = track.pending_rx[i].load(Ordering::Acquire);
        if pending >= p {
            to_pending.saturating_record(micros(Duration::from_nanos(pending - p)));
        }
        let done = track.final_rx[i].load(Ordering::Acquire);
        if done >= p {
            to_completed.saturating_record(micros(Duration::from_nanos(done - p)));
            last_final = last_final.max(done);
        }
    }
    let secs = Duration::from_nanos(last_final.saturating_sub(first)).as_secs_f64();
    let publish_secs = Duration::from_nanos(last_publish.saturating_sub(first)).as_secs_f64();
    let n = track.len();
    Ok(PhaseFigures {
        refunds: n,
        completed: track.completed.load(Ordering::Relaxed),
        failed: track.failed.load(Ordering::Relaxed),
        secs,
        refunds_per_sec: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        publish_secs,
        publish_rate: if publish_secs > 0.0 {
            n.saturating_sub(1) as f64 / publish_secs
        } else {
            0.0
        },
        target_rate,
        schedule_lag_max_ms: target_rate.map(|_| published.lag_max.as_secs_f64() * 1000.0),
        to_pending: Latency::of(&to_pending),
        to_completed: Latency::of(&to_completed),
        cpu: None,
        cpu_ms_per_refund: None,
        stages: Vec::new(),
        stage_rates: StageRates::default(),
    })
}

/// Microseconds from 1 µs to 1 hour, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// One refund's timestamps from the database.
type StageRow = (
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Splits the phase's latencies into stages with the database's timestamps.
async fn stages(
    pool: &PgPool,
    shared: &Shared,
    phase: Phase,
) -> anyhow::Result<(Vec<Stage>, StageRates)> {
    let pattern = format!("{}{}%", shared.prefix, phase.tag());
    let rows: Vec<StageRow> = sqlx::query_as(
        "SELECT r.refund_reference, r.created_at, r.finished_at,
                a.first_call, a.calls_end, a.calls_ms,
                p.published_at, c.published_at
         FROM refunds r
         LEFT JOIN LATERAL (
             SELECT min(started_at) AS first_call,
                    max(started_at + latency_ms * interval '1 millisecond') AS calls_end,
                    sum(latency_ms)::bigint AS calls_ms
             FROM provider_attempts WHERE refund_reference = r.refund_reference) a ON true
         LEFT JOIN LATERAL (
             SELECT o.published_at FROM refund_transitions t JOIN outbox o ON o.event_id = t.event_id
             WHERE t.refund_reference = r.refund_reference AND t.to_status = 'PENDING' LIMIT 1) p ON true
         LEFT JOIN LATERAL (
             SELECT o.published_at FROM refund_transitions t JOIN outbox o ON o.event_id = t.event_id
             WHERE t.refund_reference = r.refund_reference AND t.to_status <> 'PENDING' LIMIT 1) c ON true
         WHERE r.refund_reference LIKE $1",
    )
    .bind(&pattern)
    .fetch_all(pool)
    .await
    .context("reading stage timestamps")?;

    const NAMES: [&str; 8] = [
        "publish -> intake transaction starts (queue, consume, parse, duplicate check)",
        "intake transaction -> relay picks up PENDING (commit, relay wake-up/batch)",
        "relay picks up PENDING -> subscriber has it (publish, confirms, delivery)",
        "intake transaction -> first provider call (commit, dispatcher claim)",
        "provider calls (HTTP to the sandbox, sum)",
        "last provider call ends -> record transaction starts",
        "record transaction -> relay picks up COMPLETED (commit, relay wake-up/batch)",
        "relay picks up COMPLETED -> subscriber has it (publish, confirms, delivery)",
    ];
    let mut hist = NAMES
        .iter()
        .map(|_| histogram())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let span_us = |a: DateTime<Utc>, b: DateTime<Utc>| {
        u64::try_from((b - a).num_microseconds().unwrap_or(0)).unwrap_or(0)
    };
    let mut spans = Spans::default();
    for (reference, created, finished, first_call, calls_end, calls_ms, pending_pub, final_pub) in
        &rows
    {
        let Some((track, n)) = shared.locate(reference) else {
            continue;
        };
        let ns = |slot: &AtomicU64| Some(slot.load(Ordering::Acquire)).filter(|v| *v > 0);
        let published = ns(&track.published[n]).map(|v| shared.clock.wall(v));
        let pending_rx = ns(&track.pending_rx[n]).map(|v| shared.clock.wall(v));
        let final_rx = ns(&track.final_rx[n]).map(|v| shared.clock.wall(v));
        let d = |from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>| match (from, to) {
            (Some(a), Some(b)) => Some(span_us(a, b).max(1)),
            _ => None,
        };
        let created = Some(*created);
        let samples = [
            d(published, created),
            d(created, *pending_pub),
            d(*pending_pub, pending_rx),
            d(created, *first_call),
            calls_ms.map(|ms| u64::try_from(ms).unwrap_or(0).saturating_mul(1000).max(1)),
            d(*calls_end, *finished),
            d(*finished, *final_pub),
            d(*final_pub, final_rx),
        ];
        for (h, sample) in hist.iter_mut().zip(samples) {
            if let Some(v) = sample {
                h.saturating_record(v);
            }
        }
        spans.intake.add(created);
        spans.dispatch.add(*finished);
        spans.relay.add(*pending_pub);
        spans.relay.add(*final_pub);
    }
    let relay_commits: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT o.published_at) FROM outbox o
         JOIN refund_transitions t ON t.event_id = o.event_id
         WHERE t.refund_reference LIKE $1 AND o.published_at IS NOT NULL",
    )
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    // Batch sizes of the phase (its refunds are stored and finished by transactions of
    // their own: a phase starts after the previous one's refunds are all final).
    let (phase_refunds, intake_commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT created_at) FROM refunds WHERE refund_reference LIKE $1",
    )
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    let (record_finishes, record_commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT occurred_at) FROM refund_transitions
         WHERE refund_reference LIKE $1 AND from_status IS NOT NULL AND cause = ANY($2)",
    )
    .bind(&pattern)
    .bind(&RECORD_CAUSES[..])
    .fetch_one(pool)
    .await?;
    let stages = NAMES
        .iter()
        .zip(&hist)
        .map(|(name, h)| Stage {
            name,
            latency: Latency::of(h),
        })
        .collect();
    let rates = StageRates {
        intake_per_sec: spans.intake.rate(),
        dispatch_per_sec: spans.dispatch.rate(),
        relay_events_per_sec: spans.relay.rate(),
        events_per_relay_commit: ratio(relay_commits.0, relay_commits.1),
        commands_per_intake_commit: ratio(phase_refunds, intake_commits),
        finishes_per_record_commit: ratio(record_finishes, record_commits),
    };
    Ok((stages, rates))
}

/// First and last time of something, and how many.
#[derive(Default)]
struct Span {
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    count: u64,
}

impl Span {
    fn add(&mut self, t: Option<DateTime<Utc>>) {
        if let Some(t) = t {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
            self.count += 1;
        }
    }

    fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) if b > a && self.count > 1 => {
                let secs = (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6;
                (self.count - 1) as f64 / secs
            }
            _ => 0.0,
        }
    }
}

#[derive(Default)]
struct Spans {
    intake: Span,
    dispatch: Span,
    relay: Span,
}

/// History causes of the finishes the worker records from a provider's answer (its
/// `store::refunds::CAUSE_PROVIDER_CONFIRMED` and `CAUSE_PROVIDER_OUTCOME`: a test of the
/// worker's crate keeps the two in step).
pub const RECORD_CAUSES: [&str; 2] = ["provider confirmed the refund", "provider outcome"];

/// Counts rows of the bench database.
async fn count(pool: &PgPool) -> anyhow::Result<Counted> {
    let (refunds, completed, failed, pending, intake_commits): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'COMPLETED'),
                    count(*) FILTER (WHERE status = 'REFUND_FAIL'),
                    count(*) FILTER (WHERE status = 'PENDING'),
                    count(DISTINCT created_at) FROM refunds",
        )
        .fetch_one(pool)
        .await?;
    let (provider_calls, submits, status_polls): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE call = 'submit'),
                count(*) FILTER (WHERE call = 'status') FROM provider_attempts",
    )
    .fetch_one(pool)
    .await?;
    let (events, unpublished, relay_commits): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE published_at IS NULL),
                count(DISTINCT published_at) FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    // A finishing transition has a from-status; the dispatcher's carry its causes.
    let (transitions, record_finishes, record_commits, other_finishes): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*),
                    count(*) FILTER (WHERE from_status IS NOT NULL AND cause = ANY($1)),
                    count(DISTINCT occurred_at)
                        FILTER (WHERE from_status IS NOT NULL AND cause = ANY($1)),
                    count(*) FILTER (WHERE from_status IS NOT NULL AND cause <> ALL($1))
             FROM refund_transitions",
        )
        .bind(&RECORD_CAUSES[..])
        .fetch_one(pool)
        .await?;
    let (webhooks, webhook_commits): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT received_at) FROM provider_webhook_inbox")
            .fetch_one(pool)
            .await?;
    Ok(Counted {
        refunds,
        completed,
        failed,
        pending,
        provider_calls,
        submits,
        status_polls,
        events,
        unpublished,
        relay_commits,
        intake_commits,
        record_commits,
        record_finishes,
        other_finishes,
        webhook_commits,
        webhooks,
        transitions,
        ..Counted::default()
    })
}

/// `pg_stat_database.xact_commit` of the database in `database_url` (read from the
/// server's `postgres` database, so our own connection does not count).
async fn xact_commit(database_url: &str) -> Option<i64> {
    let (admin, name) = super::admin_url(database_url).ok()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .ok()?;
    let n = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&pool)
        .await
        .ok()
        .flatten();
    pool.close().await;
    n
}

/// The server's current WAL position.
async fn wal_lsn(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .ok()
}

/// Bytes of WAL between two positions.
async fn wal_diff(pool: &PgPool, later: &str, earlier: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint")
        .bind(later)
        .bind(earlier)
        .fetch_one(pool)
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_and_the_probes_refund_payments_of_their_own() {
        // Refund numbers stay below 10 million per phase (`--refunds`, `--backlog`).
        let max = 10_000_000;
        assert!(Phase::Backlog.payment_base() >= max);
        assert!(Phase::Probe.payment_base() >= Phase::Backlog.payment_base() + max);
        let binance =
            |n| command("r", n, &[ProviderName::BinancePay])["transactionReference"].clone();
        assert_ne!(binance(Phase::Probe.payment_base()), binance(0));
        assert_eq!(
            binance(Phase::Probe.payment_base() + max - 1)
                .as_str()
                .map(str::len),
            Some(18)
        );
        let tags: Vec<char> = Phase::ALL.iter().map(|p| p.tag()).collect();
        assert_eq!(tags, ['w', 't', 's', 'b', 'p', 'k']);
        assert!(Phase::ALL.iter().enumerate().all(|(i, p)| p.index() == i));
    }

    #[test]
    fn each_soak_sample_has_the_p99_of_the_refunds_published_in_its_window() -> anyhow::Result<()> {
        let clock = Clock::new();
        let track = Track::new(4, None);
        let s = 1_000_000_000u64;
        // Published at 1 s, 1.5 s (first window), 3 s (second); one never PENDING.
        for (i, (p, pending)) in [
            (s, s + 10_000_000),
            (s + s / 2, s + s / 2 + 30_000_000),
            (3 * s, 3 * s + 50_000_000),
            (3 * s + 1, 0),
        ]
        .into_iter()
        .enumerate()
        {
            track.published[i].store(p, Ordering::Release);
            track.pending_rx[i].store(pending, Ordering::Release);
        }
        let sizes = Sizes::default();
        let samples = vec![
            (2 * s, sizes.clone(), Some(1)),
            (4 * s, sizes.clone(), None),
            (4 * s + 10, sizes, None),
        ];
        let out = soak_samples(samples, &track, &clock)?;
        assert_eq!(out.len(), 2, "the window of no length is dropped");
        assert_eq!((out[0].refunds, out[1].refunds), (2, 1));
        assert!(
            (out[0].p99_pending_ms - 30.0).abs() < 0.1,
            "{}",
            out[0].p99_pending_ms
        );
        assert!(
            (out[1].p99_pending_ms - 50.0).abs() < 0.1,
            "{}",
            out[1].p99_pending_ms
        );
        assert_eq!(out[1].at_secs, 4.0);
        Ok(())
    }

    #[test]
    fn probes_have_an_hour_of_slots_at_most() {
        assert_eq!(probe_capacity(5.0), 18_000);
        assert_eq!(probe_capacity(0.0), 0);
        assert_eq!(probe_capacity(f64::NAN), 0);
        assert_eq!(probe_capacity(1e9), 1_000_000);
    }

    #[test]
    fn a_backlog_refund_is_found_by_its_reference() {
        let s = shared();
        s.on_event(br#"{"refundReference":"bench-abc-b1","status":"PENDING"}"#);
        assert_eq!(s.track(Phase::Backlog).pending.load(Ordering::Relaxed), 1);
    }

    fn shared() -> Shared {
        Shared {
            clock: Clock::new(),
            prefix: "bench-abc-".into(),
            tracks: [
                Track::new(1, None),
                Track::new(3, Some(1)),
                Track::new(0, None),
                Track::new(2, None),
                Track::new(0, None),
                Track::new(0, None),
            ],
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            subscriber_error: std::sync::Mutex::new(None),
            providers: DEFAULT_PROVIDERS.to_vec(),
        }
    }

    #[test]
    fn references_round_trip_and_strangers_are_ignored() {
        let s = shared();
        let r = s.reference(Phase::Throughput, 2);
        assert_eq!(r, "bench-abc-t2");
        assert!(s.locate(&r).is_some_and(|(_, n)| n == 2));
        assert!(s.locate("bench-abc-t3").is_none(), "out of range");
        assert!(s.locate("bench-abc-s0").is_none(), "empty phase");
        assert!(s.locate("bench-xyz-t0").is_none(), "another run");
        assert!(s.locate("bench-abc-x0").is_none(), "unknown phase");
    }

    #[test]
    fn events_are_deduplicated_and_release_the_window() {
        let s = shared();
        let ev = |status: &str| {
            format!(r#"{{"refundReference":"bench-abc-t1","status":"{status}","eventId":"x"}}"#)
        };
        s.on_event(ev("PENDING").as_bytes());
        s.on_event(ev("PENDING").as_bytes());
        s.on_event(ev("COMPLETED").as_bytes());
        s.on_event(b"not json");
        let t = s.track(Phase::Throughput);
        assert_eq!(t.pending.load(Ordering::Relaxed), 1);
        assert_eq!(t.completed.load(Ordering::Relaxed), 1);
        assert_eq!(s.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(s.unknown.load(Ordering::Relaxed), 1);
        assert_eq!(t.in_flight.as_ref().map(|w| w.available_permits()), Some(2));
    }

    #[test]
    fn commands_rotate_through_the_chosen_providers() {
        let provider = |n: u64, list: &[ProviderName]| {
            command(&format!("bench-abc-t{n}"), n, list)["provider"].clone()
        };
        let two = [ProviderName::Bpn, ProviderName::Bvnk];
        let got: Vec<_> = (0..4).map(|n| provider(n, &two)).collect();
        assert_eq!(got, ["bpn", "bvnk", "bpn", "bvnk"]);
        assert_eq!(provider(5, &[ProviderName::BinancePay]), "binance_pay");
        // The default order, also for an empty list.
        let got: Vec<_> = (0..4).map(|n| provider(n, &[])).collect();
        assert_eq!(got, ["va_services", "bvnk", "binance_pay", "bpn"]);
    }

    #[test]
    fn batch_sizes_and_row_commits() {
        let c = Counted {
            refunds: 100,
            intake_commits: 10,
            record_commits: 4,
            record_finishes: 98,
            relay_commits: 5,
            webhook_commits: 100,
            webhooks: 100,
            events: 200,
            ..Counted::default()
        };
        assert!((c.commands_per_intake_commit() - 10.0).abs() < 1e-9);
        assert!((c.finishes_per_record_commit() - 24.5).abs() < 1e-9);
        assert!((c.events_per_relay_commit() - 40.0).abs() < 1e-9);
        assert!((c.counted_commits_per_refund() - 1.19).abs() < 1e-9);
        let none = Counted::default();
        assert_eq!(none.commands_per_intake_commit(), 0.0);
        assert_eq!(none.counted_commits_per_refund(), 0.0);
    }

    #[test]
    fn panics_are_found_in_the_log() {
        let log = "a\n\u{1b}[2mthread 'w' (7) panicked at src/x.rs:3:9:\u{1b}[0m\nboom\nb\nthread 'v' panicked at y\nbang\n";
        let (n, first) = scan_panics(log.lines().map(str::to_owned));
        assert_eq!(n, 2);
        assert_eq!(
            first.as_deref(),
            Some("thread 'w' (7) panicked at src/x.rs:3:9: boom")
        );
        assert_eq!(scan_panics(std::iter::once("all good".into())), (0, None));
    }

    #[test]
    fn spans_give_rates() {
        let mut s = Span::default();
        let t0 = Utc::now();
        for i in 0..11 {
            s.add(Some(t0 + chrono::Duration::milliseconds(i * 100)));
        }
        assert!((s.rate() - 10.0).abs() < 1e-9);
    }
}
