//! Prometheus metrics, served at `/metrics`.
//!
//! Counters and histograms are recorded where things happen (intake, dispatch, delivery);
//! gauges that describe the work in flight (PENDING refunds, outbox lag, queued and failed
//! merchant webhooks, queue depths) are sampled periodically by [`sample`] so that a scrape
//! never runs a query. The sample reads only rows still moving (`store::stats`).

use crate::store::stats::InFlight;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once and returns its handle (`None` if another recorder
/// was installed first, e.g. by an embedding application).
pub(crate) fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// The metrics, for the `/metrics` endpoint.
pub(crate) fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

fn describe() {
    describe_counter!(
        "refund_worker_commands_total",
        "Commands consumed, by outcome (stored, duplicate, dead_letter)."
    );
    describe_counter!(
        "refund_worker_refund_events_total",
        "Status changes (events), by provider, status and failure code."
    );
    describe_gauge!(
        "refund_worker_refunds",
        "PENDING refunds, by provider (sampled; final statuses are counted by refund_worker_refund_events_total)."
    );
    describe_gauge!(
        "refund_worker_refunds_oldest_pending_seconds",
        "Age of the oldest PENDING refund (sampled)."
    );
    describe_histogram!(
        "refund_worker_provider_call_seconds",
        Unit::Seconds,
        "Provider call latency, by provider, call and outcome class."
    );
    describe_counter!(
        "refund_worker_provider_calls_total",
        "Provider calls, by provider, call and outcome class."
    );
    describe_counter!("refund_worker_retries_scheduled_total", "Refunds rescheduled, by provider and kind (backoff after a failure, poll of an accepted refund).");
    describe_gauge!(
        "refund_worker_outbox_pending",
        "Events committed but not yet published (sampled)."
    );
    describe_gauge!(
        "refund_worker_outbox_lag_seconds",
        "Age of the oldest unpublished event (sampled)."
    );
    describe_counter!(
        "refund_worker_events_published_total",
        "Events published with a broker confirm."
    );
    describe_counter!(
        "refund_worker_webhook_attempts_total",
        "Merchant webhook attempts, by result (delivered, retry, failed)."
    );
    describe_histogram!(
        "refund_worker_webhook_attempt_seconds",
        Unit::Seconds,
        "Merchant webhook attempt latency."
    );
    describe_gauge!(
        "refund_worker_webhook_deliveries",
        "Merchant webhook deliveries queued or failed (sampled)."
    );
    describe_gauge!(
        "refund_worker_queue_depth",
        "Messages in the command and provider webhook queues, their dead-letter queues and refunds.unrouted (sampled)."
    );
    describe_gauge!(
        "refund_worker_commands_in_flight",
        "Commands being processed, from refund.commands and refund.commands.backlog (each bounded by PREFETCH)."
    );
    describe_counter!(
        "refund_worker_provider_webhooks_received_total",
        "Provider webhooks at the HTTP ingress, by provider and result (accepted, bad_signature, unavailable, ...)."
    );
    describe_counter!(
        "refund_worker_provider_webhooks_applied_total",
        "Provider webhooks consumed, by provider and what applying them did (applied, unchanged, duplicate, parked, contradiction, ...)."
    );
    describe_gauge!(
        "refund_worker_refunds_in_review",
        "Refunds flagged for operator review: no final answer after REVIEW_AFTER, or contradicting provider webhooks (sampled)."
    );
    describe_counter!(
        "refund_worker_provider_webhook_contradictions_total",
        "ALERT: a provider reported a final status contradicting the refund's final status (never applied)."
    );
}

/// Counts a provider webhook at the ingress.
pub(crate) fn provider_webhook_received(provider: &str, result: &'static str) {
    counter!("refund_worker_provider_webhooks_received_total", "provider" => provider.to_owned(), "result" => result).increment(1);
}

/// Counts a consumed provider webhook by what applying it did.
pub(crate) fn provider_webhook_applied(provider: &str, state: &'static str) {
    counter!("refund_worker_provider_webhooks_applied_total", "provider" => provider.to_owned(), "state" => state).increment(1);
}

/// Counts a contradicting final status (an alert).
pub(crate) fn provider_webhook_contradiction(provider: &str) {
    counter!("refund_worker_provider_webhook_contradictions_total", "provider" => provider.to_owned()).increment(1);
}

/// Counts a consumed command by outcome.
pub(crate) fn command(outcome: &'static str) {
    counter!("refund_worker_commands_total", "outcome" => outcome).increment(1);
}

/// Counts a status change.
pub(crate) fn refund_event(e: &crate::domain::RefundEvent) {
    let code = e
        .failure_reason
        .as_ref()
        .map(|f| f.code.as_str())
        .unwrap_or("");
    counter!("refund_worker_refund_events_total",
        "provider" => e.provider.clone().unwrap_or_default(), "status" => e.status.as_str(), "failure_code" => code)
    .increment(1);
}

/// Records one provider call.
pub(crate) fn provider_call(
    provider: &str,
    call: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    let labels = [
        ("provider", provider.to_owned()),
        ("call", call.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    histogram!("refund_worker_provider_call_seconds", &labels).record(elapsed.as_secs_f64());
    counter!("refund_worker_provider_calls_total", &labels).increment(1);
}

/// Counts a rescheduled refund.
pub(crate) fn retry_scheduled(provider: &str, kind: &'static str) {
    counter!("refund_worker_retries_scheduled_total", "provider" => provider.to_owned(), "kind" => kind).increment(1);
}

/// Counts published events.
pub(crate) fn events_published(n: usize) {
    counter!("refund_worker_events_published_total").increment(n as u64);
}

/// Records one webhook attempt.
pub(crate) fn webhook_attempt(result: &'static str, elapsed: Duration) {
    counter!("refund_worker_webhook_attempts_total", "result" => result).increment(1);
    histogram!("refund_worker_webhook_attempt_seconds").record(elapsed.as_secs_f64());
}

/// Sets the provider calls the adaptive limit allows in flight now.
pub(crate) fn provider_calls_allowed(n: usize) {
    gauge!("refund_worker_provider_calls_allowed").set(n as f64);
}

/// Sets the number of commands in flight.
pub(crate) fn commands_in_flight(n: usize) {
    gauge!("refund_worker_commands_in_flight").set(n as f64);
}

/// Sets a queue's depth.
pub(crate) fn queue_depth(queue: &str, depth: u32) {
    gauge!("refund_worker_queue_depth", "queue" => queue.to_owned()).set(f64::from(depth));
}

/// Samples the database gauges and runs the exporter's upkeep, every `every`, until
/// `shutdown`.
pub(crate) async fn sample(
    pool: PgPool,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Providers reported PENDING before: one that drops out of the query's groups is set
    // back to 0 rather than left at its last count.
    let mut seen = BTreeSet::new();
    loop {
        if let Some(h) = handle() {
            h.run_upkeep();
        }
        match crate::store::stats::in_flight(&pool).await {
            Ok(now) => record_in_flight(&now, &mut seen),
            Err(e) => tracing::debug!(error = %e, "metrics sampling failed"),
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = shutdown.cancelled() => return }
    }
}

/// Sets the sampled gauges from a snapshot of the work in flight.
fn record_in_flight(now: &InFlight, seen: &mut BTreeSet<String>) {
    for provider in seen.iter() {
        if !now.pending_by_provider.iter().any(|(p, _)| p == provider) {
            gauge!("refund_worker_refunds", "provider" => provider.clone(), "status" => "PENDING")
                .set(0.0);
        }
    }
    for (provider, n) in &now.pending_by_provider {
        gauge!("refund_worker_refunds", "provider" => provider.clone(), "status" => "PENDING")
            .set(*n as f64);
        seen.insert(provider.clone());
    }
    gauge!("refund_worker_refunds_oldest_pending_seconds").set(now.oldest_pending_secs);
    gauge!("refund_worker_outbox_pending").set(now.outbox_pending as f64);
    gauge!("refund_worker_outbox_lag_seconds").set(now.outbox_lag_secs);
    gauge!("refund_worker_webhook_deliveries", "state" => "queued")
        .set(now.deliveries_queued as f64);
    gauge!("refund_worker_webhook_deliveries", "state" => "failed")
        .set(now.deliveries_failed as f64);
    gauge!("refund_worker_refunds_in_review").set(now.refunds_in_review as f64);
}
