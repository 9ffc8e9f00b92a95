//! `refund-worker bench`: throughput and latency of the whole pipeline on this machine,
//! against what the broker and the database alone allow.
//!
//! One run measures, in order:
//!
//! 1. **The raw bound** ([`raw`]): RabbitMQ's publish + confirm + consume + ack rate for
//!    command-sized messages on a quorum queue, and PostgreSQL's single-row commit rate from
//!    as many connections as the worker's pool. Divided by what one refund costs (counted
//!    from the code: messages and commits per refund), the smaller quotient is the rate a
//!    perfect worker could reach.
//! 2. **End to end** ([`e2e`]): a `refund-worker run` child process (so its memory is its
//!    own) against a fresh database, a throw-away exchange/queue prefix and the provider
//!    sandbox in this process (completion delay 0, no faults). Refunds are published as fast
//!    as the worker takes them (bounded in flight), then at a fixed rate; every refund's
//!    command -> PENDING and command -> COMPLETED latency goes into HDR histograms, and the
//!    database's own timestamps split them into stages.
//!
//! Everything printed is measured in the run; the targets of the issue are compared, never
//! assumed. The run cleans up after itself: the worker is stopped, the queues and exchanges
//! deleted, the databases dropped (also on ctrl-c and on errors).

mod amqp;
mod e2e;
mod floor;
mod raw;
mod report;
mod scale;
mod sys;
mod target;

pub use e2e::{command, ProviderName, DEFAULT_PROVIDERS, RECORD_CAUSES};
pub use target::{HotStatement, Lookup, Names, Settings, Worker, WorkerSettings};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use refund_sandbox::{Sandbox, SandboxConfig};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags of `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Refunds in the end-to-end throughput phase [default: 20000; 500 with --quick].
    #[arg(long, value_name = "N")]
    pub refunds: Option<u64>,
    /// A run of a few seconds for CI: fewer refunds, small raw samples, a short steady phase.
    #[arg(long)]
    pub quick: bool,
    /// Publish rate of the steady phase, refunds per second (0 skips the phase).
    #[arg(long, value_name = "R", default_value_t = 500.0)]
    pub rate: f64,
    /// Length of the steady phase in seconds [default: 10; 2 with --quick].
    #[arg(long, value_name = "SECS")]
    pub steady_secs: Option<f64>,
    /// Messages of the raw broker test [default: 50000; 5000 with --quick].
    #[arg(long, value_name = "N")]
    pub raw_messages: Option<u64>,
    /// Commits of the raw database test [default: 20000; 2000 with --quick].
    #[arg(long, value_name = "N")]
    pub raw_commits: Option<u64>,
    /// Unmeasured refunds before the throughput phase [default: 200; 50 with --quick].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u64>,
    /// Refunds published but not yet final, at most, in the throughput phase.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub in_flight: u64,
    /// Abort when no refund moves for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub stall_secs: u64,
    /// Keep the worker's log file even when the run succeeded (it is always kept on failure).
    #[arg(long)]
    pub keep_log: bool,
    /// Print the figures as JSON on stdout as well (the text report then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Exit with status 2 when a target is missed (status 1 stays "the run failed").
    #[arg(long)]
    pub fail_on_miss: bool,
    /// Providers the commands rotate through, comma-separated; each gets an equal share (a
    /// name listed twice, twice the share).
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = parse_provider,
        default_value = "va_services,bvnk,binance_pay,bpn"
    )]
    pub providers: Vec<ProviderName>,
    /// How long the simulated providers take to answer: `300ms`, or a median and a 99th
    /// percentile, `300ms,2s` (log-normal) [default: 0].
    #[arg(long, value_name = "P50[,P99]", value_parser = parse_latency)]
    pub provider_latency: Option<ProviderLatency>,
    /// Before the end-to-end run, fill its database with this many finished refunds and
    /// their rows (history, published events, provider calls, provider webhooks), then
    /// `VACUUM ANALYZE` and report the plans of the worker's hot statements at that size.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preload: u64,
    /// After the steady phase, stop the worker, publish this many commands, start a new
    /// worker and measure the drain (rate, peak RSS) while probes arrive at --probe-rate.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub backlog: u64,
    /// Probe commands per second during the backlog drain (their command -> PENDING).
    #[arg(long, value_name = "R", default_value_t = 5.0)]
    pub probe_rate: f64,
    /// Skip the floor worker (the thinnest worker of the same durable shape, run after the
    /// end-to-end part with as many refunds): on by default, off with --quick.
    #[arg(long, conflicts_with = "floor")]
    pub no_floor: bool,
    /// Run the floor worker even with --quick.
    #[arg(long)]
    pub floor: bool,
    /// Worker processes against the same broker and database (compare the throughput with
    /// a run of 1).
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub workers: usize,
    /// After the steady phase, publish at --rate for this long (`30m`), sampling table
    /// sizes, the worker's RSS and the p99 command -> PENDING every --soak-every.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub soak: Option<Duration>,
    /// How often the soak is sampled.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "1m")]
    pub soak_every: Duration,
    /// The refund-worker executable to measure [default: this one]. Another build (an
    /// earlier commit's, say) measured by the same bench makes a paired comparison; it must
    /// take the same settings and declare the same names.
    #[arg(long, value_name = "PATH")]
    pub worker: Option<std::path::PathBuf>,
}

/// `--provider-latency`: a median, and optionally a 99th percentile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProviderLatency {
    /// Median (every answer's, without `p99`).
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Option<Duration>,
}

fn parse_latency(text: &str) -> Result<ProviderLatency, String> {
    let one =
        |t: &str| humantime::parse_duration(t.trim()).map_err(|e| format!("`{}`: {e}", t.trim()));
    match text.split_once(',') {
        None => Ok(ProviderLatency {
            p50: one(text)?,
            p99: None,
        }),
        Some((p50, p99)) => {
            let (p50, p99) = (one(p50)?, one(p99)?);
            if p99 < p50 {
                return Err(format!("the p99 ({p99:?}) is below the median ({p50:?})"));
            }
            Ok(ProviderLatency {
                p50,
                p99: Some(p99),
            })
        }
    }
}

/// One name of `--providers`; the error lists the valid ones.
fn parse_provider(name: &str) -> Result<ProviderName, String> {
    ProviderName::parse(name.trim()).ok_or_else(|| {
        let valid: Vec<&str> = ProviderName::ALL.iter().map(|p| p.as_str()).collect();
        format!("unknown provider `{name}`; valid: {}", valid.join(", "))
    })
}

/// The worker's database server when `DATABASE_URL` is unset (its documented default).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/refund_worker";

/// Unconfirmed publishes allowed at once, in the raw test and for commands.
const CONFIRM_WINDOW: usize = 256;

/// The sizes of one run, from the flags.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    refunds: u64,
    warmup: u64,
    raw_messages: u64,
    raw_commits: u64,
    rate: f64,
    steady: Duration,
    in_flight: u64,
    stall: Duration,
    keep_log: bool,
    providers: Vec<ProviderName>,
    provider_latency: Option<ProviderLatency>,
    preload: u64,
    backlog: u64,
    probe_rate: f64,
    floor: bool,
    workers: usize,
    soak: Option<Duration>,
    soak_every: Duration,
    worker: Option<std::path::PathBuf>,
}

impl Plan {
    fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let pick = |given: Option<u64>, full: u64, quick: u64| {
            given.unwrap_or(if args.quick { quick } else { full })
        };
        let plan = Self {
            quick: args.quick,
            refunds: pick(args.refunds, 20_000, 500),
            warmup: pick(args.warmup, 200, 50),
            raw_messages: pick(args.raw_messages, 50_000, 5_000),
            raw_commits: pick(args.raw_commits, 20_000, 2_000),
            rate: args.rate,
            steady: Duration::try_from_secs_f64(args.steady_secs.unwrap_or(if args.quick {
                2.0
            } else {
                10.0
            }))
            .map_err(|_| anyhow::anyhow!("--steady-secs must be a positive number"))?,
            in_flight: args.in_flight,
            stall: Duration::from_secs(args.stall_secs.max(1)),
            keep_log: args.keep_log,
            providers: args.providers.clone(),
            provider_latency: args.provider_latency,
            preload: args.preload,
            backlog: args.backlog,
            probe_rate: args.probe_rate,
            floor: args.floor || !(args.quick || args.no_floor),
            workers: args.workers,
            soak: args.soak,
            soak_every: args.soak_every,
            worker: args.worker.clone(),
        };
        if plan.providers.is_empty() {
            anyhow::bail!("--providers needs at least one provider");
        }
        const MAX: u64 = 10_000_000;
        for (flag, n) in [
            ("--refunds", plan.refunds),
            ("--raw-messages", plan.raw_messages),
            ("--raw-commits", plan.raw_commits),
            ("--in-flight", plan.in_flight),
        ] {
            if n == 0 || n > MAX {
                anyhow::bail!("{flag} must be between 1 and {MAX}, got {n}");
            }
        }
        if plan.preload > 100 * MAX {
            anyhow::bail!("--preload must be at most {}", 100 * MAX);
        }
        if let Some(d) = plan.soak {
            if d > Duration::from_secs(24 * 3600)
                || plan.rate <= 0.0
                || plan.rate * d.as_secs_f64() > MAX as f64
                || plan.soak_every < Duration::from_secs(1)
            {
                anyhow::bail!(
                    "--soak needs --rate above 0, at most 24h, rate x duration at most {MAX}, and --soak-every of 1s or more"
                );
            }
        }
        if !(1..=8).contains(&plan.workers) {
            anyhow::bail!("--workers must be between 1 and 8");
        }
        if plan.backlog > MAX {
            anyhow::bail!("--backlog must be at most {MAX}");
        }
        if !(plan.probe_rate.is_finite() && (0.1..=1_000.0).contains(&plan.probe_rate)) {
            anyhow::bail!("--probe-rate must be between 0.1 and 1000 commands/s");
        }
        if plan.warmup > MAX {
            anyhow::bail!("--warmup must be at most {MAX}");
        }
        if !(plan.rate.is_finite() && (0.0..=100_000.0).contains(&plan.rate)) {
            anyhow::bail!("--rate must be between 0 and 100000 refunds/s");
        }
        if plan.rate > 0.0
            && (plan.steady.is_zero()
                || plan.steady > Duration::from_secs(3600)
                || plan.rate * plan.steady.as_secs_f64() > MAX as f64)
        {
            anyhow::bail!(
                "--steady-secs must be above 0, at most 3600, and rate x secs at most {MAX}"
            );
        }
        Ok(plan)
    }
}

/// What to delete at the end, whatever happened: filled in as things are created.
#[derive(Debug, Default)]
pub struct Cleanup {
    amqp_url: String,
    /// Throw-away queues.
    pub queues: Vec<String>,
    /// The worker's exchanges and queues.
    pub names: Option<Names>,
    /// Throw-away databases (full URLs).
    pub databases: Vec<String>,
}

impl Cleanup {
    /// Deletes everything recorded; returns what could not be deleted.
    async fn run(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let (mut queues, mut exchanges) = (std::mem::take(&mut self.queues), Vec::new());
        if let Some(names) = self.names.take() {
            queues.extend(names.queues);
            exchanges = names.exchanges;
        }
        if !queues.is_empty() || !exchanges.is_empty() {
            match amqp::connect(&self.amqp_url, "refund-worker-bench-cleanup").await {
                Ok(conn) => {
                    // A failed delete closes the channel: one channel per deletion.
                    for (kind, name) in queues
                        .iter()
                        .map(|q| ("queue", q))
                        .chain(exchanges.iter().map(|e| ("exchange", e)))
                    {
                        let deleted = async {
                            let ch = conn.create_channel().await?;
                            if kind == "queue" {
                                ch.queue_delete(name.as_str().into(), Default::default())
                                    .await?;
                            } else {
                                ch.exchange_delete(name.as_str().into(), Default::default())
                                    .await?;
                            }
                            ch.close(200, "deleted".into()).await
                        };
                        if let Err(e) = deleted.await {
                            problems.push(format!("{kind} {name}: {e}"));
                        }
                    }
                    let _ = conn.close(200, "bench cleanup".into()).await;
                }
                Err(e) => problems.push(format!("RabbitMQ: {e:#}")),
            }
        }
        for url in self.databases.drain(..) {
            if let Err(e) = drop_database(&url).await {
                problems.push(format!("{e:#}"));
            }
        }
        problems
    }
}

/// The server's `postgres` database URL and the database name of `database_url`.
fn admin_url(database_url: &str) -> anyhow::Result<(String, String)> {
    let mut url = url::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    let name = url.path().trim_start_matches('/').to_owned();
    url.set_path("/postgres");
    Ok((url.to_string(), name))
}

/// `database_url` with another database name.
fn with_database(database_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(database_url).context("DATABASE_URL is not a URL")?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Creates a database for this run (the name is ours, see [`bench_database_name`]).
async fn create_database(database_url: &str) -> anyhow::Result<()> {
    on_server(database_url, "create", |name| {
        format!("CREATE DATABASE \"{name}\"")
    })
    .await
}

/// Drops a database this run created.
async fn drop_database(database_url: &str) -> anyhow::Result<()> {
    on_server(database_url, "drop", |name| {
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")
    })
    .await
}

/// Runs `statement(name)` on the server's `postgres` database for the bench database
/// `database_url` names (`verb` says what, in errors).
async fn on_server(
    database_url: &str,
    verb: &str,
    statement: impl FnOnce(&str) -> String,
) -> anyhow::Result<()> {
    let (admin, name) = admin_url(database_url)?;
    bench_database_name(&name)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await
        .with_context(|| format!("connecting to {verb} database {name}"))?;
    let done = sqlx::query(&statement(&name))
        .execute(&pool)
        .await
        .with_context(|| format!("{verb} database {name}: failed"));
    pool.close().await;
    done.map(|_| ())
}

/// Refuses a database name the bench did not make: lowercase letters, digits, `_`.
fn bench_database_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        anyhow::bail!("refusing database `{name}`: not a bench database name");
    }
    Ok(())
}

/// A progress bar on stderr, hidden unless stdout is a terminal.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `len` steps labelled `label`.
    pub fn new(len: u64, label: &str) -> Self {
        let bar = if std::io::stdout().is_terminal() {
            let bar = ProgressBar::new(len);
            let style = ProgressStyle::with_template(
                "{prefix:>12} [{bar:32}] {pos}/{len} {elapsed:>4} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        } else {
            ProgressBar::hidden()
        };
        bar.set_prefix(label.to_owned());
        Self { bar }
    }

    /// Moves the bar.
    pub fn set(&self, position: u64) {
        self.bar.set_position(position);
    }

    /// Sets the text after the bar.
    pub fn message(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Worker settings the bench chooses unless the environment sets them.
///
/// Status polling keeps the service default (`POLL_INITIAL_MS` 2 s): with webhooks on, the
/// providers' webhooks finish their refunds, as in production, and a poll is the fallback
/// for a webhook that never comes. (Until 2026-12-01 the bench polled after 10 ms, racing
/// each webhook: 0.3 extra provider calls and records per refund. `POLL_INITIAL_MS=10
/// POLL_MAX_MS=100` in the environment reproduces that.)
///
/// The idle loops' fallback look (`IDLE_POLL_MS`) keeps its default too: every loop is woken
/// on new work (until 2026-12-01 the bench set 20 ms).
const WORKER_DEFAULTS: [(&str, &str); 2] = [
    // Every provider webhook comes from the one sandbox address: no per-source limit here.
    ("WEBHOOK_INGRESS_RATE_PER_SEC", "1000000"),
    ("WEBHOOK_INGRESS_BURST", "1000000"),
];

/// Runs the benchmark against `worker`.
pub async fn run(args: BenchArgs, worker: Worker) -> anyhow::Result<ExitCode> {
    let plan = Plan::new(&args)?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut cleanup = Cleanup::default();
    let sandbox_stop = CancellationToken::new();
    let result = tokio::select! {
        r = measure(&plan, &worker, &run_id, &mut cleanup, &sandbox_stop) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    sandbox_stop.cancel();
    for problem in cleanup.run().await {
        eprintln!("cleanup: could not delete {problem}");
    }
    let report = result?;
    if args.json {
        // The text for people on stderr, so stdout is nothing but the JSON document.
        eprint!("{}", report.render());
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if !report.run_ok() {
        ExitCode::FAILURE
    } else if args.fail_on_miss && report.any_miss() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Everything but the cleanup.
async fn measure(
    plan: &Plan,
    worker: &Worker,
    run_id: &str,
    cleanup: &mut Cleanup,
    sandbox_stop: &CancellationToken,
) -> anyhow::Result<report::Report> {
    let machine = sys::Machine::read();
    // The worker's HTTP address first: the sandbox's providers send their webhooks to it.
    let http_addr = e2e::free_local_addr()?;
    let sandbox = Sandbox::new(SandboxConfig {
        completion_delay: Duration::ZERO,
        webhook_url: Some(format!("http://{http_addr}")),
        // Refund notifications only, as in every earlier session's figures.
        payin_notifications: false,
        latency: plan.provider_latency.map(|l| l.p50).unwrap_or_default(),
        latency_p99: plan.provider_latency.and_then(|l| l.p99),
        ..SandboxConfig::default()
    });
    let stop = sandbox_stop.clone();
    let (sandbox_addr, _) = sandbox
        .spawn(0, async move { stop.cancelled().await })
        .await
        .context("starting the provider sandbox")?;

    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let server = env("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
    let database_url = with_database(&server, &format!("rw_bench_{run_id}"))?;
    let raw_database_url = with_database(&server, &format!("rw_bench_{run_id}_raw"))?;
    let prefix = format!("bench-{run_id}.");

    let mut child_env: BTreeMap<String, String> = BTreeMap::from([
        ("DATABASE_URL".into(), database_url.clone()),
        ("AMQP_NAME_PREFIX".into(), prefix.clone()),
        ("HTTP_ADDR".into(), http_addr.to_string()),
    ]);
    child_env.extend(SandboxConfig::default().provider_env(sandbox_addr));
    for (k, v) in WORKER_DEFAULTS {
        if env(k).is_none() {
            child_env.insert(k.into(), v.into());
        }
    }
    // Only the sandbox provider: other providers' settings in this shell are not for us.
    let child_env_remove: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("PROVIDER_") && !child_env.contains_key(k))
        .collect();
    let config = (worker.settings)(&|k: &str| {
        child_env.get(k).cloned().or_else(|| {
            if k.starts_with("PROVIDER_") {
                None
            } else {
                env(k)
            }
        })
    })
    .context("the worker's configuration")?;
    cleanup.amqp_url = config.amqp_url.clone();

    // A command as large as the ones the end-to-end part sends.
    let sample = e2e::command(
        &format!("bench-{run_id}-t{}", plan.refunds.saturating_sub(1)),
        plan.refunds.saturating_sub(1),
        &plan.providers,
    );
    let body = serde_json::to_vec(&sample)?;

    let broker = raw::broker(
        &config.amqp_url,
        &format!("bench-{run_id}.raw"),
        &body,
        plan.raw_messages,
        config.shaping.prefetch,
        CONFIRM_WINDOW,
        cleanup,
    )
    .await
    .context("raw broker test")?;
    cleanup.databases.push(raw_database_url.clone());
    let postgres = raw::postgres(
        &raw_database_url,
        &sample,
        plan.raw_commits,
        config.shaping.database_max_connections,
    )
    .await
    .context("raw database test")?;
    // Gone before the end-to-end part, so it does not share the server with it.
    drop_database(&raw_database_url).await?;
    cleanup.databases.retain(|u| u != &raw_database_url);

    let settings = e2e::Settings {
        run_id: run_id.to_owned(),
        names: config.names.clone(),
        exe: plan.worker.clone().unwrap_or_else(|| worker.exe.clone()),
        amqp_url: config.amqp_url.clone(),
        database_url,
        child_env,
        child_env_remove,
        http_addr,
        warmup: plan.warmup,
        refunds: plan.refunds,
        in_flight: plan.in_flight,
        confirm_window: CONFIRM_WINDOW,
        rate: plan.rate,
        steady: plan.steady,
        stall: plan.stall,
        worker_log: std::env::temp_dir().join(format!("refund-worker-bench-{run_id}.log")),
        providers: plan.providers.clone(),
        preload: plan.preload,
        backlog: plan.backlog,
        probe_rate: plan.probe_rate,
        workers: plan.workers,
        soak: plan.soak,
        soak_every: plan.soak_every,
        hot_statements: config.hot_statements.clone(),
    };
    let end_to_end = e2e::run(&settings, cleanup)
        .await
        .context("end-to-end test")?;
    let floor = if plan.floor {
        let setting = |k: &str| settings.child_env.get(k).cloned().unwrap_or_default();
        Some(
            floor::run(
                &floor::FloorSettings {
                    amqp_url: config.amqp_url.clone(),
                    database_url: with_database(&server, &format!("rw_bench_{run_id}_floor"))?,
                    queue_prefix: format!("bench-{run_id}.floor."),
                    va_base_url: setting("PROVIDER_VA_SERVICES_BASE_URL"),
                    va_api_key: setting("PROVIDER_VA_SERVICES_API_KEY"),
                    refunds: plan.refunds,
                    in_flight: plan.in_flight,
                    prefetch: config.shaping.prefetch,
                    connections: config.shaping.database_max_connections,
                    stall: plan.stall,
                },
                cleanup,
            )
            .await
            .context("floor worker")?,
        )
    } else {
        None
    };
    let provider_calls = sandbox.ledger();
    let report = report::Report::new(report::Inputs {
        run_id: run_id.to_owned(),
        worker_exe: settings.exe.display().to_string(),
        quick: plan.quick,
        in_flight: plan.in_flight,
        providers: &plan.providers,
        machine,
        worker: &config.shaping,
        broker,
        postgres,
        end_to_end,
        sandbox_submits: provider_calls.submit_calls,
        sandbox_status_calls: provider_calls.status_calls,
        bench_peak_rss_kib: sys::peak_rss_kib(std::process::id()),
        floor,
    });
    if report.run_ok() && !plan.keep_log {
        let _ = std::fs::remove_file(&settings.worker_log);
        let mut worker = report.end_to_end.worker.clone();
        worker.log = "deleted after a good run (--keep-log keeps it)".into();
        return Ok(report.with_worker(worker));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {

    #[test]
    fn provider_latency_is_a_median_and_an_optional_p99() {
        assert_eq!(
            parse_latency("300ms"),
            Ok(ProviderLatency {
                p50: Duration::from_millis(300),
                p99: None
            })
        );
        assert_eq!(
            parse_latency("300ms,2s"),
            Ok(ProviderLatency {
                p50: Duration::from_millis(300),
                p99: Some(Duration::from_secs(2))
            })
        );
        assert!(parse_latency("2s,300ms")
            .unwrap_err()
            .contains("below the median"));
        assert!(parse_latency("soon").is_err());
    }
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Plan::new(&cli.bench)
    }

    #[test]
    fn quick_shrinks_everything_and_flags_win() -> anyhow::Result<()> {
        let full = plan(&[])?;
        assert_eq!((full.refunds, full.raw_messages), (20_000, 50_000));
        let quick = plan(&["--quick"])?;
        assert_eq!((quick.refunds, quick.steady), (500, Duration::from_secs(2)));
        let given = plan(&["--quick", "--refunds", "42", "--rate", "0"])?;
        assert_eq!((given.refunds, given.rate), (42, 0.0));
        Ok(())
    }

    #[test]
    fn scale_scenarios_default_off_and_the_floor_follows_quick() -> anyhow::Result<()> {
        let full = plan(&[])?;
        assert_eq!((full.preload, full.backlog, full.workers), (0, 0, 1));
        assert_eq!(full.probe_rate, 5.0);
        assert!(full.floor);
        assert!(!plan(&["--quick"])?.floor);
        assert!(plan(&["--quick", "--floor"])?.floor);
        assert!(!plan(&["--no-floor"])?.floor);
        assert!(plan(&["--floor", "--no-floor"]).is_err());
        let given = plan(&["--preload", "1000", "--backlog", "20", "--workers", "3"])?;
        assert_eq!((given.preload, given.backlog, given.workers), (1000, 20, 3));
        assert!(plan(&["--workers", "0"]).is_err());
        assert!(plan(&["--workers", "9"]).is_err());
        assert!(plan(&["--probe-rate", "0"]).is_err());
        assert!(plan(&["--backlog", "10000001"]).is_err());
        let soak = plan(&["--soak", "30m"])?;
        assert_eq!(soak.soak, Some(Duration::from_secs(1800)));
        assert_eq!(soak.soak_every, Duration::from_secs(60));
        assert!(plan(&["--soak", "30m", "--rate", "0"]).is_err());
        assert!(plan(&["--soak", "25h"]).is_err());
        Ok(())
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(plan(&["--refunds", "0"]).is_err());
        assert!(plan(&["--rate", "-1"]).is_err());
        assert!(plan(&["--rate", "NaN"]).is_err());
        assert!(plan(&["--steady-secs", "-2"]).is_err());
        assert!(plan(&["--steady-secs", "0"]).is_err());
        assert!(plan(&["--rate", "0", "--steady-secs", "0"]).is_ok());
    }

    #[test]
    fn providers_default_to_all_four_and_can_be_chosen() -> anyhow::Result<()> {
        assert_eq!(plan(&[])?.providers, e2e::DEFAULT_PROVIDERS);
        let two = plan(&["--providers", "bvnk,bpn"])?;
        assert_eq!(two.providers, [ProviderName::Bvnk, ProviderName::Bpn]);
        let repeated = plan(&["--providers", "bvnk", "--providers", "bvnk,va_services"])?;
        assert_eq!(repeated.providers.len(), 3);
        Ok(())
    }

    #[test]
    fn unknown_providers_are_refused_with_the_valid_names() {
        let err = plan(&["--providers", "bvnk,stripe"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown provider `stripe`"), "{err}");
        assert!(err.contains("va_services, bpn, binance_pay, bvnk"), "{err}");
        assert!(plan(&["--providers", ""]).is_err());
    }

    #[test]
    fn database_urls_are_rewritten() -> anyhow::Result<()> {
        let url = with_database("postgres://u:p@db:5433/app?sslmode=disable", "rw_bench_x")?;
        assert_eq!(url, "postgres://u:p@db:5433/rw_bench_x?sslmode=disable");
        let (admin, name) = admin_url(&url)?;
        assert_eq!(admin, "postgres://u:p@db:5433/postgres?sslmode=disable");
        assert_eq!(name, "rw_bench_x");
        Ok(())
    }
}
