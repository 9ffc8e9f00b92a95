//! `refund-worker bench`: tells the bench (a load tool of its own, which cannot import the
//! worker) what it must know of the worker under test: this executable, the settings it
//! would run with, and its exchange and queue names.

use crate::broker::topology::{self, Topology};
use crate::config::Config;
use anyhow::Context as _;
use refund_bench::{HotStatement, Lookup, Names, Settings, Worker, WorkerSettings};

/// This executable as the worker under test.
pub(crate) fn worker() -> anyhow::Result<Worker> {
    Ok(Worker {
        exe: std::env::current_exe().context("locating the refund-worker executable")?,
        settings: Box::new(settings),
    })
}

/// The settings `refund-worker run` would take from `lookup`.
fn settings(lookup: Lookup<'_>) -> anyhow::Result<Settings> {
    let config = Config::from_lookup(lookup)?;
    let t = Topology::with_prefix(&config.amqp_name_prefix);
    Ok(Settings {
        amqp_url: config.amqp_url.clone(),
        names: Names {
            exchange: t.exchange.clone(),
            command_routing_key: topology::COMMAND_ROUTING_KEY.into(),
            status_binding: topology::STATUS_BINDING.into(),
            exchanges: t.exchanges().map(str::to_owned).to_vec(),
            queues: t.queues().map(str::to_owned).to_vec(),
            command_queues: vec![t.commands_queue.clone(), t.commands_backlog.clone()],
        },
        shaping: WorkerSettings {
            prefetch: config.prefetch,
            database_max_connections: config.database_max_connections,
            intake_batch: config.intake_batch,
            webhook_lanes: config.webhook_lanes,
            dispatch_batch: config.dispatch_batch,
            dispatch_concurrency: config.dispatch_concurrency,
            idle_poll_ms: config.idle_poll.as_millis(),
            poll_initial_ms: config.poll.initial.as_millis(),
            log_filter: lookup("RUST_LOG")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| {
                    format!("{} (service default)", crate::telemetry::SERVICE_FILTER)
                }),
        },
        hot_statements: hot_statements(&config, &t.exchange),
    })
}

/// Rows per retention statement (the sweep's batch).
const RETENTION_BATCH: &str = "1000";
/// Rows per relay statement.
const RELAY_BATCH: &str = "256";

/// The statements that run often, or on tables that only grow, with the values this worker
/// would give their parameters: the dispatcher's claim, the relay's take, the metrics
/// sampler's reads, the retention sweep's deletes.
fn hot_statements(config: &Config, exchange: &str) -> Vec<HotStatement> {
    use crate::store::{outbox, refunds, retention, stats};
    let literal = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut out = vec![
        HotStatement {
            name: "dispatcher: claim due refunds".into(),
            sql: refunds::claims::claim_due_statement()
                .replace("$1", &config.dispatch_batch.to_string())
                .replace("$2", &config.claim_lease.as_secs_f64().to_string())
                .replace("$3", "'00000000-0000-0000-0000-000000000000'::uuid"),
        },
        HotStatement {
            name: "relay: take a batch of events".into(),
            sql: outbox::TAKE_BATCH
                .replace("$1", RELAY_BATCH)
                .replace("$2", &literal(exchange)),
        },
    ];
    for (n, sql) in stats::STATEMENTS.iter().enumerate() {
        out.push(HotStatement {
            name: format!("metrics sampler: in flight #{}", n + 1),
            sql: (*sql).into(),
        });
    }
    let r = &config.retention;
    let keep = [
        ("outbox", r.outbox),
        ("inbox", r.inbox),
        ("merchant webhook attempts", r.webhook_attempts),
        ("provider attempts", r.provider_attempts),
    ];
    for ((table, keep), sql) in keep.iter().zip(retention::STATEMENTS) {
        out.push(HotStatement {
            name: format!("retention: {table}"),
            sql: sql
                .replace("$1", &keep.as_secs().to_string())
                .replace("$2", RETENTION_BATCH),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RefundCommand;
    use crate::store::refunds::{CAUSE_PROVIDER_CONFIRMED, CAUSE_PROVIDER_OUTCOME};
    use refund_bench::{command, DEFAULT_PROVIDERS, RECORD_CAUSES};

    #[test]
    fn the_bench_splits_stages_by_the_causes_the_worker_writes() {
        assert_eq!(
            RECORD_CAUSES,
            [CAUSE_PROVIDER_CONFIRMED, CAUSE_PROVIDER_OUTCOME]
        );
    }

    #[test]
    fn the_bench_publishes_commands_the_worker_accepts_for_every_provider() {
        for (n, provider) in DEFAULT_PROVIDERS.into_iter().enumerate() {
            let n = n as u64;
            let c = command(&format!("bench-abc-t{n}"), n, &DEFAULT_PROVIDERS);
            let parsed = RefundCommand::from_value(c);
            assert!(
                parsed
                    .as_ref()
                    .is_ok_and(|c| c.provider.as_str() == provider.as_str()),
                "{provider}: {parsed:?}"
            );
        }
    }

    #[test]
    fn the_bench_deletes_every_exchange_and_queue_the_worker_declares() -> anyhow::Result<()> {
        let s = settings(&|k: &str| (k == "AMQP_NAME_PREFIX").then(|| "bench-x.".to_owned()))?;
        let t = Topology::with_prefix("bench-x.");
        assert_eq!(s.names.exchange, t.exchange);
        for q in [
            &t.commands_queue,
            &t.commands_backlog,
            &t.commands_dlq,
            &t.webhooks_queue,
            &t.webhooks_dlq,
        ] {
            assert!(s.names.queues.contains(q), "{q}");
        }
        assert!(s.names.exchanges.iter().all(|e| e.starts_with("bench-x.")));
        assert_eq!(s.names.queues.len() + s.names.exchanges.len(), 10);
        // A backlog is drained once the broker holds it in these two, wherever it put each.
        assert_eq!(
            s.names.command_queues,
            [t.commands_queue.clone(), t.commands_backlog.clone()]
        );
        Ok(())
    }
}
