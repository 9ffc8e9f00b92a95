//! Scale: the worker's database as it looks after a long time, and what it costs per refund.
//!
//! - [`preload`]: fills a fresh bench database with finished refunds and what the worker
//!   leaves of each (history, published events, a provider call, the provider's webhook, the
//!   payment), server-side from `generate_series` in chunks, then `VACUUM ANALYZE`. The rows
//!   are written with the bench's own SQL of the worker's schema: like every reader of the
//!   database, the bench knows its tables, never the worker's code.
//! - [`plans`]: `EXPLAIN` of the worker's hot statements (given by the worker, see
//!   [`HotStatement`]) at that size, flagging a sequential scan on a big table.
//! - [`Sizes`]: the database's size and its main tables' (`pg_total_relation_size`), before
//!   and after a run: bytes per refund.

use super::{HotStatement, Progress};
use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Executor as _, PgPool};
use std::collections::BTreeSet;
use std::time::Instant;

/// The tables whose sizes are reported.
pub const TABLES: [&str; 8] = [
    "refunds",
    "refund_transitions",
    "outbox",
    "provider_attempts",
    "provider_webhook_inbox",
    "payments",
    "webhook_deliveries",
    "webhook_attempts",
];

/// Refunds per preload transaction.
const CHUNK: u64 = 50_000;

/// A table with at least this many rows (the planner's estimate) is big: a sequential scan
/// on it is flagged.
pub const BIG_TABLE_ROWS: f64 = 10_000.0;

/// The preloaded history spans this long, ending now: inside the worker's default retention
/// (30 days), so its sweep has nothing to remove during the measured run.
const PRELOAD_SPAN_SECS: u64 = 20 * 24 * 3600;

/// What `--preload` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preload {
    /// Finished refunds written.
    pub refunds: u64,
    /// Seconds to write them (without the vacuum).
    pub secs: f64,
    /// Seconds of `VACUUM ANALYZE`.
    pub vacuum_secs: f64,
    /// The database's size after it, bytes.
    pub database_bytes: i64,
}

/// One hot statement's plan at size.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanCheck {
    /// Where the worker runs it.
    pub name: String,
    /// Each scan: `Index Scan on refunds using refunds_pkey`, `Seq Scan on outbox`.
    pub scans: Vec<String>,
    /// Big tables it reads with a sequential scan.
    pub seq_scans_on_big_tables: Vec<String>,
    /// The planner's total cost.
    pub cost: f64,
}

/// Sizes, bytes.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sizes {
    /// `pg_database_size`.
    pub database: i64,
    /// `pg_total_relation_size` (heap, indexes, TOAST) of each of [`TABLES`].
    pub tables: Vec<(String, i64)>,
}

/// Bytes per refund of one run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BytesPerRefund {
    /// Refunds the run added.
    pub refunds: u64,
    /// The whole database.
    pub database: f64,
    /// Each table (heap, indexes, TOAST).
    pub tables: Vec<(String, f64)>,
}

/// The scale figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleFigures {
    /// `--preload`, when given.
    pub preload: Option<Preload>,
    /// The hot statements' plans (after the preload; at the empty database otherwise).
    pub plans: Vec<PlanCheck>,
    /// Sizes before the measured refunds (after the preload).
    pub before: Sizes,
    /// Sizes after the run.
    pub after: Sizes,
    /// Growth per refund.
    pub bytes_per_refund: BytesPerRefund,
    /// The server's `autovacuum` setting (`on`/`off`): with it off, dead rows and index
    /// entries stay until someone vacuums, and sizes and queue-like scans grow with them.
    pub autovacuum: String,
}

impl Sizes {
    /// Reads them.
    pub async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let database: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t, COALESCE(pg_total_relation_size(to_regclass(t)), 0)
             FROM unnest($1::text[]) t",
        )
        .bind(&TABLES[..])
        .fetch_all(pool)
        .await?;
        Ok(Self {
            database,
            tables: rows,
        })
    }

    /// Growth from `before` to `self`, per refund.
    pub fn per_refund(&self, before: &Sizes, refunds: u64) -> BytesPerRefund {
        let per = |a: i64, b: i64| {
            if refunds == 0 {
                0.0
            } else {
                (a - b) as f64 / refunds as f64
            }
        };
        BytesPerRefund {
            refunds,
            database: per(self.database, before.database),
            tables: self
                .tables
                .iter()
                .map(|(t, after)| {
                    let b = before
                        .tables
                        .iter()
                        .find(|(n, _)| n == t)
                        .map_or(0, |(_, v)| *v);
                    (t.clone(), per(*after, b))
                })
                .collect(),
        }
    }
}

/// The `INSERT ... SELECT` statements of one chunk, refunds `$1..=$2` of `$3`, events on
/// `exchange`. Four providers in turn, as the bench's commands.
fn preload_statements(exchange: &str) -> Vec<String> {
    let exchange = exchange.replace('\'', "''");
    // Per refund g: its time t (spread over the span, oldest first), provider and currency.
    let base = format!(
        "SELECT g, 'preload-' || g AS r, 'txn-preload-' || g AS txn,
             now() - make_interval(secs => {PRELOAD_SPAN_SECS}::float8 * ($3 - g + 1) / $3) AS t,
             (ARRAY['va_services', 'bvnk', 'binance_pay', 'bpn'])[g % 4 + 1] AS provider,
             (ARRAY['NGN', 'EUR', 'USDT', 'NGN'])[g % 4 + 1] AS currency
         FROM generate_series($1::bigint, $2::bigint) g"
    );
    let event = |status: &str, at: &str| {
        format!(
            "jsonb_build_object('eventId', md5('{status}' || g)::uuid, 'refundReference', r,
                 'status', '{status}', 'provider', provider, 'transactionReference', txn,
                 'amount', '25.17', 'currency', currency, 'occurredAt', {at})"
        )
    };
    vec![
        format!(
            "INSERT INTO payments (provider, transaction_reference, payment_amount, currency,
                 amount_source, created_at, updated_at)
             SELECT provider, txn, 100.00, currency, 'command', t, t FROM ({base}) s"
        ),
        format!(
            "INSERT INTO refunds (refund_reference, provider, transaction_reference, amount,
                 currency, status, phase, provider_reference, provider_status, attempts,
                 next_attempt_at, command, command_hash, created_at, updated_at, finished_at,
                 guard_source)
             SELECT r, provider, txn, 25.17, currency, 'COMPLETED', 'FINAL', 'prv-' || md5(r),
                 'SUCCESS', 1, NULL, c, encode(sha256(convert_to(c::text, 'UTF8')), 'hex'),
                 t, t + interval '1 second', t + interval '1 second', 'command'
             FROM (SELECT *, jsonb_build_object('refundReference', r, 'provider', provider,
                       'transactionReference', txn, 'amount', '25.17', 'currency', currency,
                       'reason', 'Order cancelled!', 'paymentAmount', '100.00',
                       'metadata', jsonb_build_object('orderId', 'A-' || g)) AS c
                   FROM ({base}) s) s"
        ),
        format!(
            "INSERT INTO refund_transitions (refund_reference, from_status, to_status, cause,
                 event_id, occurred_at)
             SELECT r, NULL, 'PENDING', 'command received', md5('PENDING' || g)::uuid, t
             FROM ({base}) s
             UNION ALL
             SELECT r, 'PENDING', 'COMPLETED', 'provider confirmed the refund',
                 md5('COMPLETED' || g)::uuid, t + interval '1 second'
             FROM ({base}) s"
        ),
        format!(
            "INSERT INTO outbox (event_id, exchange, routing_key, payload, created_at,
                 published_at)
             SELECT md5('PENDING' || g)::uuid, '{exchange}', 'refund.status.pending', {pending},
                 t, t + interval '5 milliseconds'
             FROM ({base}) s
             UNION ALL
             SELECT md5('COMPLETED' || g)::uuid, '{exchange}', 'refund.status.completed',
                 {completed}, t + interval '1 second', t + interval '1005 milliseconds'
             FROM ({base}) s",
            pending = event("PENDING", "t"),
            completed = event("COMPLETED", "t + interval '1 second'"),
        ),
        format!(
            "INSERT INTO provider_attempts (refund_reference, call, outcome, started_at,
                 latency_ms)
             SELECT r, 'submit', 'accepted', t + interval '10 milliseconds', 5 FROM ({base}) s"
        ),
        format!(
            "INSERT INTO provider_webhook_inbox (provider, event_key, part, body, state,
                 refund_reference, received_at, updated_at)
             SELECT provider, 'preload:' || g, 0,
                 convert_to(jsonb_build_object('reference', 'prv-' || md5(r),
                     'merchantReference', r, 'status', 'SUCCESS', 'amount', '25.17',
                     'currency', currency, 'signature', md5(txn) || md5(r))::text, 'UTF8'),
                 'APPLIED', r, t + interval '1 second', t + interval '1 second'
             FROM ({base}) s"
        ),
    ]
}

/// The chunks of a preload of `n` refunds: `(first, last)`, 1-based, inclusive.
fn chunks(n: u64, size: u64) -> Vec<(u64, u64)> {
    let size = size.max(1);
    (0..n.div_ceil(size))
        .map(|k| (k * size + 1, ((k + 1) * size).min(n)))
        .collect()
}

/// Writes `n` finished refunds with their rows, a chunk per transaction, then
/// `VACUUM ANALYZE`.
pub async fn preload(pool: &PgPool, n: u64, exchange: &str) -> anyhow::Result<Preload> {
    let statements = preload_statements(exchange);
    let progress = Progress::new(n, "preload");
    let started = Instant::now();
    let total = i64::try_from(n).context("--preload is too large")?;
    for (first, last) in chunks(n, CHUNK) {
        let mut tx = pool.begin().await?;
        for sql in &statements {
            sqlx::query(sql)
                .bind(i64::try_from(first)?)
                .bind(i64::try_from(last)?)
                .bind(total)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("preloading refunds {first}..={last}"))?;
        }
        tx.commit().await?;
        progress.set(last);
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        progress.message(format!("{:.0} refunds/s", last as f64 / secs));
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    let vacuum = Instant::now();
    pool.execute("VACUUM ANALYZE")
        .await
        .context("VACUUM ANALYZE after the preload")?;
    let database_bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(pool)
        .await?;
    Ok(Preload {
        refunds: n,
        secs,
        vacuum_secs: vacuum.elapsed().as_secs_f64(),
        database_bytes,
    })
}

/// `EXPLAIN` of each statement, with the big tables' sequential scans flagged.
pub async fn plans(pool: &PgPool, statements: &[HotStatement]) -> anyhow::Result<Vec<PlanCheck>> {
    let big: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
         WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace AND reltuples >= $1",
    )
    .bind(BIG_TABLE_ROWS as f32)
    .fetch_all(pool)
    .await?;
    let big: BTreeSet<String> = big.into_iter().collect();
    let mut out = Vec::new();
    for s in statements {
        let plan: Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {}", s.sql))
            .fetch_one(pool)
            .await
            .with_context(|| format!("EXPLAIN of {}", s.name))?;
        out.push(check(&s.name, &plan, &big));
    }
    Ok(out)
}

/// Judges one JSON plan.
fn check(name: &str, plan: &Value, big: &BTreeSet<String>) -> PlanCheck {
    let mut scans = Vec::new();
    let mut flagged = Vec::new();
    walk(plan, &mut |node| {
        let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or("");
        let relation = node.get("Relation Name").and_then(Value::as_str);
        let index = node.get("Index Name").and_then(Value::as_str);
        if !kind.ends_with("Scan") {
            return;
        }
        let mut text = kind.to_owned();
        if let Some(r) = relation {
            text.push_str(&format!(" on {r}"));
        }
        if let Some(i) = index {
            text.push_str(&format!(" using {i}"));
        }
        if kind == "Seq Scan" {
            if let Some(r) = relation.filter(|r| big.contains(*r)) {
                flagged.push(r.to_owned());
            }
        }
        scans.push(text);
    });
    let cost = plan
        .get(0)
        .and_then(|p| p.get("Plan"))
        .and_then(|p| p.get("Total Cost"))
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    PlanCheck {
        name: name.to_owned(),
        scans,
        seq_scans_on_big_tables: flagged,
        cost,
    }
}

/// Calls `f` on every plan node, depth first.
fn walk(value: &Value, f: &mut impl FnMut(&serde_json::Map<String, Value>)) {
    match value {
        Value::Object(node) => {
            if node.contains_key("Node Type") {
                f(node);
            }
            node.values().for_each(|v| walk(v, f));
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// The scale section of the text report.
pub fn render(out: &mut String, s: &ScaleFigures) {
    use std::fmt::Write as _;
    let mib = |b: f64| b / (1024.0 * 1024.0);
    if let Some(p) = &s.preload {
        let _ = writeln!(
            out,
            "preload    {} finished refunds with their rows in {:.1} s ({:.0}/s), VACUUM ANALYZE {:.1} s; database {:.0} MiB",
            p.refunds,
            p.secs,
            p.refunds as f64 / p.secs.max(1e-9),
            p.vacuum_secs,
            mib(p.database_bytes as f64)
        );
    }
    if !s.plans.is_empty() {
        let flagged = s
            .plans
            .iter()
            .filter(|p| !p.seq_scans_on_big_tables.is_empty())
            .count();
        let _ = writeln!(
            out,
            "plans      {} hot statements of the worker, {} with a sequential scan on a big table (>= {} rows)",
            s.plans.len(),
            flagged,
            BIG_TABLE_ROWS
        );
        for p in &s.plans {
            let mark = if p.seq_scans_on_big_tables.is_empty() {
                "ok  "
            } else {
                "SEQ "
            };
            let _ = writeln!(
                out,
                "  {mark} {:<36} cost {:>10.1}  {}",
                p.name,
                p.cost,
                p.scans.join(", ")
            );
        }
    }
    let b = &s.bytes_per_refund;
    if b.refunds > 0 {
        let _ = writeln!(
            out,
            "storage    database {:.0} -> {:.0} MiB: {:.0} bytes per refund over {} refunds",
            mib(s.before.database as f64),
            mib(s.after.database as f64),
            b.database,
            b.refunds
        );
        let tables: Vec<String> = b
            .tables
            .iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(t, v)| format!("{t} {v:.0}"))
            .collect();
        let _ = writeln!(out, "  per table (bytes/refund): {}", tables.join(", "));
        if s.autovacuum == "off" {
            let _ = writeln!(
                out,
                "  !! autovacuum is off on this server: dead rows stay until someone vacuums, \
                 so sizes, and the relay's and the dispatcher's scans, grow with every update"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chunks_cover_every_refund_once() {
        assert_eq!(chunks(0, 10), vec![]);
        assert_eq!(chunks(10, 10), vec![(1, 10)]);
        assert_eq!(chunks(25, 10), vec![(1, 10), (11, 20), (21, 25)]);
        assert_eq!(chunks(3, 0), vec![(1, 1), (2, 2), (3, 3)]);
    }

    #[test]
    fn bytes_per_refund_is_the_growth_divided() {
        let before = Sizes {
            database: 1_000,
            tables: vec![("refunds".into(), 100), ("outbox".into(), 50)],
        };
        let after = Sizes {
            database: 5_000,
            tables: vec![("refunds".into(), 2_100), ("outbox".into(), 50)],
        };
        let b = after.per_refund(&before, 10);
        assert_eq!(b.database, 400.0);
        assert_eq!(
            b.tables,
            vec![("refunds".into(), 200.0), ("outbox".into(), 0.0)]
        );
        assert_eq!(after.per_refund(&before, 0).database, 0.0);
    }

    #[test]
    fn a_sequential_scan_is_flagged_only_on_a_big_table() {
        let plan = json!([{ "Plan": {
            "Node Type": "Nested Loop", "Total Cost": 12.5,
            "Plans": [
                { "Node Type": "Seq Scan", "Relation Name": "outbox" },
                { "Node Type": "Seq Scan", "Relation Name": "payments" },
                { "Node Type": "Index Scan", "Relation Name": "refunds",
                  "Index Name": "refunds_pkey" },
                { "Node Type": "Bitmap Index Scan", "Index Name": "outbox_by_age" }
            ]
        }}]);
        let big = BTreeSet::from(["outbox".to_owned(), "refunds".to_owned()]);
        let c = check("x", &plan, &big);
        assert_eq!(c.seq_scans_on_big_tables, ["outbox"]);
        assert_eq!(c.cost, 12.5);
        assert_eq!(
            c.scans,
            [
                "Seq Scan on outbox",
                "Seq Scan on payments",
                "Index Scan on refunds using refunds_pkey",
                "Bitmap Index Scan using outbox_by_age"
            ]
        );
    }

    #[test]
    fn preload_writes_every_table_of_a_finished_refund_with_quoted_names() {
        let s = preload_statements("ex'q");
        let tables: Vec<&str> = s
            .iter()
            .filter_map(|sql| sql.split_whitespace().nth(2))
            .collect();
        assert_eq!(
            tables,
            [
                "payments",
                "refunds",
                "refund_transitions",
                "outbox",
                "provider_attempts",
                "provider_webhook_inbox"
            ]
        );
        assert!(s[3].contains("'ex''q'"));
    }
}
