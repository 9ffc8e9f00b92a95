//! Dispatch: claims due refunds and moves each one step with its provider.
//!
//! One step per refund: submit (when the provider certainly does not have it), or ask its
//! status (when it may have it, or has it); when a status lookup confirms the provider has
//! no such refund after an unknown submit, submit again in the same step with the same
//! idempotency reference. The decision is [`crate::domain::decide`]'s; this module only
//! runs calls and records results. No database transaction is open during a call.

use super::Context;
use crate::domain::{
    decide, CallKind, Decision, FailureCode, FailureReason, Phase, ProviderOutcome, RefundCommand,
    RefundStatus, Wait,
};
use crate::providers::{Provider, RefundRequest};
use crate::store::{self, CallRecord, ClaimedRefund, StoreError, StoreUpdate};
use chrono::Utc;
use futures::StreamExt;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What one dispatcher step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// Refunds were claimed and moved.
    Worked(usize),
    /// Nothing was due.
    Idle,
}

/// Claims a batch of due refunds and processes them concurrently.
pub async fn step(ctx: &Context) -> Result<DispatchOutcome, StoreError> {
    let claimed =
        store::refunds::claim_due(&ctx.pool, ctx.config.dispatch_batch, ctx.config.claim_lease)
            .await?;
    if claimed.is_empty() {
        return Ok(DispatchOutcome::Idle);
    }
    let n = claimed.len();
    futures::stream::iter(claimed)
        .for_each_concurrent(ctx.config.dispatch_concurrency, |c| async move {
            let reference = c.row.refund_reference.clone();
            // `instrument`, not `Span::enter`: an entered guard held across `.await` corrupts
            // the subscriber's span registry when steps interleave (seen under load).
            let span = tracing::info_span!("refund", refund_reference = %reference,
                provider = c.row.provider.as_deref().unwrap_or("?"));
            if let Err(e) = process(ctx, &c).instrument(span).await {
                // The claim's lease expires and the refund is picked up again; its phase
                // says whether the provider must be asked first.
                tracing::warn!(refund_reference = %reference, error = %e, "recording a provider outcome failed");
            }
        })
        .await;
    Ok(DispatchOutcome::Worked(n))
}

/// Runs [`step`] until shutdown. A step in progress finishes before this returns.
pub async fn run(ctx: &Context, shutdown: &CancellationToken) {
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        match step(ctx).await {
            Ok(DispatchOutcome::Worked(_)) => failures = 0,
            Ok(DispatchOutcome::Idle) => {
                failures = 0;
                super::idle(&ctx.dispatch_wakeup, ctx.config.idle_poll, shutdown).await;
            }
            Err(e) => {
                failures += 1;
                let delay = ctx.config.retry.delay(failures.min(6), None);
                tracing::warn!(error = %e, ?delay, "dispatcher step failed");
                tokio::select! { _ = tokio::time::sleep(delay) => {}, _ = shutdown.cancelled() => {} }
            }
        }
    }
}

/// Moves one claimed refund one step.
async fn process(ctx: &Context, c: &ClaimedRefund) -> Result<(), StoreError> {
    let fail = |message: String| StoreUpdate::Finish {
        status: RefundStatus::RefundFail,
        failure: Some(FailureReason::new(FailureCode::InvalidCommand, message)),
        provider_reference: None,
        provider_status: None,
        fee: None,
    };
    let cmd = match RefundCommand::from_value(c.command.clone()) {
        Ok(cmd) => cmd,
        // Validated at intake; only a schema change could get here.
        Err(e) => return record(ctx, c, 0, &[], fail(e.message())).await,
    };
    let Some(provider) = ctx.providers.get(cmd.provider) else {
        // Configuration changed since intake (the refund was never sent).
        let msg = format!("provider {} is not configured", cmd.provider);
        return record(ctx, c, 0, &[], fail(msg)).await;
    };
    let request = RefundRequest {
        refund_reference: cmd.refund_reference.clone(),
        transaction_reference: cmd.transaction_reference,
        amount: cmd.amount,
        currency: cmd.currency,
        reason: cmd.reason,
        customer_note: cmd.customer_note,
        destination: cmd.destination,
        provider_reference: c.row.provider_reference.clone(),
        metadata: cmd.metadata,
    };

    let max = ctx.config.retry.max_attempts;
    let attempts = u32::try_from(c.row.attempts).unwrap_or(0);
    let mut calls = Vec::new();
    let call = match c.phase_before {
        Phase::NotSubmitted => CallKind::Submit,
        Phase::Submitting | Phase::Accepted | Phase::Final => CallKind::Status,
    };
    let provider_name = cmd.provider.as_str();
    let outcome = timed(provider.as_ref(), call, &request, &mut calls).await;
    let mut decision = decide(c.phase_before, call, outcome, attempts, max);
    let mut extra_submits = 0;
    if decision == Decision::Submit {
        extra_submits = 1;
        let outcome = timed(provider.as_ref(), CallKind::Submit, &request, &mut calls).await;
        decision = decide(
            Phase::Submitting,
            CallKind::Submit,
            outcome,
            attempts + 1,
            max,
        );
    }
    let update = match decision {
        Decision::Complete {
            provider_reference,
            provider_status,
            fee,
        } => StoreUpdate::Finish {
            status: RefundStatus::Completed,
            failure: None,
            provider_reference,
            provider_status: Some(provider_status),
            fee,
        },
        Decision::Fail(reason) => StoreUpdate::Finish {
            status: RefundStatus::RefundFail,
            failure: Some(reason),
            provider_reference: None,
            provider_status: None,
            fee: None,
        },
        // `decide` only answers Submit to a status lookup, and we submitted already.
        Decision::Submit => StoreUpdate::Reschedule {
            phase: Phase::Submitting,
            delay: ctx.config.retry.delay(1, None),
            failed: true,
            provider_reference: None,
            provider_status: None,
            fee: None,
        },
        Decision::Wait {
            phase,
            wait,
            provider_reference,
            provider_status,
            fee,
        } => {
            crate::metrics::retry_scheduled(
                provider_name,
                match wait {
                    Wait::Backoff { .. } => "backoff",
                    Wait::Poll => "poll",
                },
            );
            let (delay, failed) = match wait {
                Wait::Backoff { retry_after } => {
                    let n = u32::try_from(c.row.failures).unwrap_or(0) + 1;
                    (ctx.config.retry.delay(n, retry_after), true)
                }
                Wait::Poll => {
                    let n = u32::try_from(c.row.polls).unwrap_or(0) + 1;
                    (ctx.config.poll.delay(n, None), false)
                }
            };
            StoreUpdate::Reschedule {
                phase,
                delay,
                failed,
                provider_reference,
                provider_status,
                fee,
            }
        }
    };
    record(ctx, c, extra_submits, &calls, update).await
}

async fn record(
    ctx: &Context,
    c: &ClaimedRefund,
    extra_submits: i32,
    calls: &[CallRecord],
    update: StoreUpdate,
) -> Result<(), StoreError> {
    let event =
        store::refunds::record_step(&ctx.pool, c, extra_submits, calls, update, &ctx.sink).await?;
    if let Some(event) = event {
        crate::metrics::refund_event(&event);
        tracing::info!(status = %event.status, failure = ?event.failure_reason, "refund finished");
        ctx.event_committed();
    }
    Ok(())
}

/// Makes one provider call and logs it for the attempts table.
async fn timed(
    provider: &dyn Provider,
    call: CallKind,
    request: &RefundRequest,
    calls: &mut Vec<CallRecord>,
) -> ProviderOutcome {
    let started_at = Utc::now();
    let start = Instant::now();
    let outcome = match call {
        CallKind::Submit => provider.submit(request).await,
        CallKind::Status => provider.status(request).await,
    };
    let (label, detail) = outcome.describe();
    let call_name = match call {
        CallKind::Submit => "submit",
        CallKind::Status => "status",
    };
    crate::metrics::provider_call(provider.name().as_str(), call_name, label, start.elapsed());
    tracing::info!(call = ?call, outcome = label, detail = detail.as_deref().unwrap_or(""), "provider call");
    calls.push(CallRecord {
        call: call_name,
        outcome: label.to_string(),
        detail,
        started_at,
        latency: start.elapsed(),
    });
    outcome
}
