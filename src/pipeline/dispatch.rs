//! Dispatch: claims due refunds and moves each one step with its provider.
//!
//! One step per refund: submit (when the provider certainly does not have it), or ask its
//! status (when it may have it, or has it); when a status lookup confirms the provider has
//! no such refund after an unknown submit, submit again in the same step with the same
//! idempotency reference. The decision is [`crate::domain::decide`]'s; this module only
//! runs calls and records results. No database transaction is open during a call.
//!
//! [`run`] keeps up to the adaptive limit of refunds in flight ([`super::limit`]: from
//! `DISPATCH_CONCURRENCY` up to `DISPATCH_CONCURRENCY_MAX` as the providers' latency asks),
//! claiming more as slots free up rather than waiting for the slowest of a batch, and one
//! recorder writes finished steps in batches ([`store::refunds::record_steps`]: one
//! transaction for whatever is ready). [`step`] is one claim of that loop, drained: the same
//! claim, step tasks and recorder, one round at a time (tests drive it).
//!
//! Until it is recorded, an outcome lives only in memory: if it is lost (crash, or the
//! database down for longer than the claim's lease) the lease expires, the refund is
//! claimed again, and its phase (moved to `SUBMITTING` by the claim itself) makes that step
//! ask the provider before submitting again.

use super::limit::CallLoad;
use super::Context;
use crate::domain::{
    decide, CallKind, Decision, FailureCode, FailureReason, Phase, ProviderOutcome, RefundCommand,
    RefundStatus, Wait,
};
use crate::providers::{Provider, RefundRequest};
use crate::retry::Backoff;
use crate::store::{self, CallRecord, ClaimedRefund, StepRecord, StoreError, StoreUpdate};
use chrono::Utc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
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

/// New refunds that intake claimed in its own transaction and hands straight to this
/// worker's dispatcher ([`super::intake::store_batch`]), skipping a claim's
/// update and the wait for the next claim. Also the dispatcher's slot count: every refund
/// in flight, claimed here or handed over, holds one of `DISPATCH_CONCURRENCY` slots.
///
/// A handed-over refund is claimed with the usual lease, so if this worker dies before the
/// step is recorded, the lease expires and any worker takes it up as after a crash mid-call.
pub struct Handoff {
    /// `DISPATCH_CONCURRENCY_MAX` permits; how many may be taken at once is `limit`'s.
    slots: Arc<Semaphore>,
    /// Calls allowed in flight now (adapts to the providers' latency).
    pub limit: Arc<super::limit::AdaptiveLimit>,
    sender: mpsc::UnboundedSender<Handed>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
    /// Whether a dispatcher is running to take them (tests drive intake without one).
    open: AtomicBool,
}

/// A refund handed over, with the slot it holds.
struct Handed {
    claimed: ClaimedRefund,
    lease_ends: Instant,
    slot: OwnedSemaphorePermit,
}

impl Handoff {
    /// A hand-off with at least `floor` and at most `ceiling` dispatcher slots.
    pub fn new(floor: usize, ceiling: usize) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let limit = Arc::new(super::limit::AdaptiveLimit::new(floor, ceiling));
        Self {
            slots: Arc::new(Semaphore::new(limit.ceiling())),
            limit,
            sender,
            receiver: Mutex::new(Some(receiver)),
            open: AtomicBool::new(false),
        }
    }

    /// Takes up to `wanted` free dispatcher slots for refunds about to be stored; none when
    /// no dispatcher is running here or it is busy (those refunds are claimed later).
    pub fn reserve(&self, wanted: usize) -> Vec<OwnedSemaphorePermit> {
        if !self.open.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.take_slots(wanted)
    }

    /// Slots free under the current limit.
    fn free(&self) -> usize {
        let in_use = self.limit.ceiling() - self.slots.available_permits();
        self.limit.current().saturating_sub(in_use)
    }

    /// Takes up to `n` free slots (within the current limit), without waiting.
    fn take_slots(&self, n: usize) -> Vec<OwnedSemaphorePermit> {
        std::iter::from_fn(|| self.slots.clone().try_acquire_owned().ok())
            .take(n.min(self.free()))
            .collect()
    }

    /// Hands claimed refunds to the dispatcher, each with one of `slots` (the rest are
    /// released).
    pub fn hand(
        &self,
        claimed: Vec<ClaimedRefund>,
        lease_ends: Instant,
        slots: Vec<OwnedSemaphorePermit>,
    ) {
        for (claimed, slot) in claimed.into_iter().zip(slots) {
            let reference = claimed.row.refund_reference.clone();
            let handed = Handed {
                claimed,
                lease_ends,
                slot,
            };
            if self.sender.send(handed).is_err() {
                // The dispatcher stopped (shutdown) after the claim: the lease expires
                // and the refund is dispatched then, by this worker or another.
                tracing::warn!(refund_reference = %reference, "dispatcher gone; the refund waits for its claim to expire");
            }
        }
    }
}

/// Most step outcomes recorded in one transaction by the recorder.
const RECORD_BATCH: usize = 64;

/// One claimed refund's step, done and waiting to be recorded.
pub(crate) struct Outcome {
    claimed: ClaimedRefund,
    extra_submits: i32,
    calls: Vec<CallRecord>,
    update: StoreUpdate,
    /// The refund's span, for the lines logged when it is recorded.
    span: tracing::Span,
    /// After this the claim may belong to another step: recording is no longer worth
    /// retrying (it would most likely find the claim lost anyway).
    lease_ends: Instant,
}

/// One round of [`run`], drained: claims as many due refunds as there are free slots (up to
/// `DISPATCH_BATCH`), moves them concurrently, and returns once their outcomes are recorded.
/// [`run`] does the same claim continuously, recording while it claims; tests drive this.
pub async fn step(ctx: &Context) -> Result<DispatchOutcome, StoreError> {
    let (outcomes, recorded) = mpsc::channel(ctx.handoff.limit.ceiling());
    let mut in_flight = InFlight::new(ctx, outcomes);
    let claimed = in_flight
        .claim(ctx.handoff.free().min(batch_size(ctx)))
        .await;
    // No shutdown here: the recorder stops once the steps' outcomes are all recorded.
    let no_shutdown = CancellationToken::new();
    tokio::join!(in_flight.finish(), recorder(ctx, recorded, &no_shutdown));
    match claimed?.claimed {
        0 => Ok(DispatchOutcome::Idle),
        n => Ok(DispatchOutcome::Worked(n)),
    }
}

/// Dispatches until shutdown: keeps up to `dispatch_concurrency` refunds in flight, claiming
/// more as slots free up, while one recorder records finished steps in batches. Steps in
/// flight finish and are recorded before this returns.
///
/// Why this is not literally `loop { match step(ctx) { Idle => idle(..), Worked(_) => {} } }`:
/// [`step`] returns only once every refund it claimed is recorded, so such a loop would
/// claim the next batch only after the slowest provider call of the last one came back,
/// and would take no refund intake hands over meanwhile. Under load, one slow call (a
/// provider's timeout is seconds) would idle every other slot: throughput would follow the
/// slowest call instead of the adaptive limit. So the two share everything but the
/// waiting: the same claim (`InFlight::claim`, as many as there are free slots, up to
/// `DISPATCH_BATCH`), the same step tasks (`InFlight::start`, `process_in_span`) and
/// the same recorder (`recorder`, `record`); [`step`] drains after one claim, `run`
/// claims again whenever a quarter of the slots are free.
pub async fn run(ctx: &Context, shutdown: &CancellationToken) {
    // Bounded: while the recorder is behind (database trouble), finished steps wait to be
    // handed over and keep their slots, so nothing more is claimed meanwhile.
    let (outcomes, recorded) = mpsc::channel(ctx.handoff.limit.ceiling());
    crate::metrics::provider_calls_allowed(ctx.handoff.limit.current());
    tokio::join!(
        dispatch(ctx, shutdown, outcomes),
        recorder(ctx, recorded, shutdown)
    );
}

/// The refunds a dispatcher has in flight, each step its own task holding one slot (so calls
/// progress while the dispatcher waits on the database) and handing its outcome to the
/// recorder.
struct InFlight {
    ctx: Arc<Context>,
    tasks: JoinSet<()>,
    outcomes: mpsc::Sender<Outcome>,
}

/// What one claim took.
struct Claimed {
    /// Refunds claimed and started.
    claimed: usize,
    /// Refunds asked for (the slots there were).
    asked: usize,
}

impl InFlight {
    fn new(ctx: &Context, outcomes: mpsc::Sender<Outcome>) -> Self {
        Self {
            ctx: Arc::new(ctx.clone()),
            tasks: JoinSet::new(),
            outcomes,
        }
    }

    /// Starts a claimed refund's step; its slot is freed once the outcome is handed over.
    fn start(&mut self, h: Handed) {
        let (ctx, outcomes) = (self.ctx.clone(), self.outcomes.clone());
        self.tasks.spawn(async move {
            let outcome = process_in_span(&ctx, h.claimed, h.lease_ends).await;
            // The recorder outlives every sender, so this fails only if `run` itself was
            // dropped; the claim's lease expiry covers that.
            let _ = outcomes.send(outcome).await;
            drop(h.slot);
        });
    }

    /// Claims up to `wanted` due refunds, as many as it gets free slots for, and starts
    /// their steps.
    async fn claim(&mut self, wanted: usize) -> Result<Claimed, StoreError> {
        // On an error the slots are released as this returns.
        let slots = self.ctx.handoff.take_slots(wanted);
        let asked = slots.len();
        let claimed = claim(&self.ctx, i64::try_from(asked).unwrap_or(1)).await?;
        let n = claimed.len();
        for ((claimed, lease_ends), slot) in claimed.into_iter().zip(slots) {
            self.start(Handed {
                claimed,
                lease_ends,
                slot,
            });
        }
        Ok(Claimed { claimed: n, asked })
    }

    /// Lets the steps in flight finish; the recorder stops once they and this are gone.
    async fn finish(mut self) {
        while let Some(done) = self.tasks.join_next().await {
            reaped(done);
        }
    }
}

/// Most refunds claimed at once (`DISPATCH_BATCH`).
fn batch_size(ctx: &Context) -> usize {
    usize::try_from(ctx.config.dispatch_batch)
        .unwrap_or(1)
        .max(1)
}

/// The claiming half of [`run`]: claims again as slots free up, takes the refunds intake
/// hands over, and starts each step as it comes ([`InFlight`]).
async fn dispatch(ctx: &Context, shutdown: &CancellationToken, outcomes: mpsc::Sender<Outcome>) {
    let mut in_flight = InFlight::new(ctx, outcomes);
    // Claim again once a quarter of the slots are free: a claim per finished call would
    // cost a round trip per refund, waiting for all of them is waiting for the slowest.
    let refill = || (ctx.handoff.limit.current() / 4).max(1);
    // Whether the last claim came back full: more was due than the slots could take.
    let mut more_due = false;
    let batch = batch_size(ctx);
    let handoff = &ctx.handoff;
    // One dispatcher per context takes the hand-off; another one (if any) only claims.
    let mut handed = handoff.receiver.lock().ok().and_then(|mut r| r.take());
    if handed.is_some() {
        handoff.open.store(true, Ordering::Release);
    }
    let mut backoff = Backoff::new(ctx.config.retry);
    // When to look for due refunds next: at once while claims come back full (more may be
    // due), else when woken or after the idle poll. A finished call is no reason to look:
    // it rescheduled its refund for later, if at all, and looking costs a query.
    let mut look_at = Instant::now();
    while !shutdown.is_cancelled() {
        while let Some(done) = in_flight.tasks.try_join_next() {
            reaped(done);
        }
        while let Some(h) = handed.as_mut().and_then(|r| r.try_recv().ok()) {
            in_flight.start(h);
        }
        let free = handoff.free();
        let busy = free < refill();
        if busy && more_due {
            // Due work waits for slots: the limit may grow if the providers keep up.
            handoff.limit.note_saturated();
        }
        if busy || Instant::now() < look_at {
            // Busy: only a finished call can make room. The slots are the context's, so
            // another dispatcher on it (or intake's hand-off) may hold them while this one
            // has nothing in flight: then look again after the idle poll, never spin.
            let until = if busy {
                Instant::now() + ctx.config.idle_poll
            } else {
                look_at
            };
            tokio::select! {
                done = in_flight.tasks.join_next(), if !in_flight.tasks.is_empty() => if let Some(done) = done { reaped(done) },
                h = next_handed(&mut handed) => if let Some(h) = h { in_flight.start(h) },
                _ = ctx.dispatch_wakeup.notified() => look_at = Instant::now(),
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        }
        match in_flight.claim(free.min(batch)).await {
            Ok(Claimed { claimed, asked }) => {
                backoff.reset();
                more_due = claimed >= asked;
                // Fewer than asked for: nothing else is due now.
                look_at = match claimed < asked {
                    true => Instant::now() + ctx.config.idle_poll,
                    false => Instant::now(),
                };
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "dispatcher claim failed");
                Backoff::sleep(delay, shutdown).await;
            }
        }
    }
    // No more hand-offs; the refunds already handed over are claimed: run them too.
    handoff.open.store(false, Ordering::Release);
    if let Some(mut receiver) = handed {
        while let Ok(h) = receiver.try_recv() {
            in_flight.start(h);
        }
        // Give the receiver back for a dispatcher started later on this context: a refund
        // handed over in the instant before `open` turned false waits there for it (or for
        // its lease to expire).
        if let Ok(mut slot) = handoff.receiver.lock() {
            *slot = Some(receiver);
        }
    }
    // Let the steps in flight finish; they hand their outcomes to the recorder, which
    // stops once this sender and theirs are gone.
    in_flight.finish().await;
}

/// The next refund handed over; never, when this dispatcher has no hand-off.
async fn next_handed(handed: &mut Option<mpsc::UnboundedReceiver<Handed>>) -> Option<Handed> {
    match handed {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// A step task ended; one that panicked left its claim to expire.
fn reaped(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(error = %e, "dispatcher step task failed; its claim will expire");
    }
}

/// The recording half of [`run`]: takes whatever outcomes are ready (up to
/// [`RECORD_BATCH`], without waiting for more) and records them in one transaction.
async fn recorder(
    ctx: &Context,
    mut recorded: mpsc::Receiver<Outcome>,
    shutdown: &CancellationToken,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while recorded.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        record_reliably(ctx, std::mem::take(&mut batch), shutdown).await;
    }
}

/// Records `batch`, retrying with backoff while the database is unavailable. A batch the
/// database refuses outright is recorded one step at a time, so one bad step cannot take
/// the others' outcomes with it. Outcomes are dropped once their lease has run out or
/// when shutdown interrupts a retry: the refund is then claimed again later, and its phase
/// says whether the provider must be asked first.
async fn record_reliably(ctx: &Context, mut batch: Vec<Outcome>, shutdown: &CancellationToken) {
    let Err(e) = record_retrying(ctx, &mut batch, shutdown).await else {
        return;
    };
    if batch.len() == 1 {
        given_up(&batch, &e);
        return;
    }
    tracing::warn!(error = %e, refunds = batch.len(), "recording a batch failed; recording its steps one by one");
    for outcome in batch {
        let mut one = vec![outcome];
        if let Err(e) = record_retrying(ctx, &mut one, shutdown).await {
            given_up(&one, &e);
        }
    }
}

/// [`record`] until it succeeds, the leases run out or shutdown interrupts a retry (all
/// `Ok`, having logged what was dropped); `Err` for an error that retrying cannot fix.
async fn record_retrying(
    ctx: &Context,
    batch: &mut Vec<Outcome>,
    shutdown: &CancellationToken,
) -> Result<(), StoreError> {
    let mut backoff = Backoff::new(ctx.config.retry);
    loop {
        let now = Instant::now();
        let (live, expired): (Vec<Outcome>, Vec<Outcome>) = std::mem::take(batch)
            .into_iter()
            .partition(|o| o.lease_ends > now);
        *batch = live;
        if !expired.is_empty() {
            given_up(&expired, &"the claim's lease ran out while retrying");
        }
        if batch.is_empty() {
            return Ok(());
        }
        let e = match record(ctx, batch).await {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, refunds = batch.len(), "recording provider outcomes failed, retrying");
        if !Backoff::sleep(delay, shutdown).await {
            given_up(batch, &"shutting down");
            return Ok(());
        }
    }
}

/// Logs outcomes that will not be recorded.
fn given_up(outcomes: &[Outcome], why: &dyn std::fmt::Display) {
    for o in outcomes {
        o.span.in_scope(|| {
            // The claim's lease expires and the refund is picked up again; its phase says
            // whether the provider must be asked first.
            tracing::warn!(error = %why, "recording a provider outcome failed");
        });
    }
}

/// Claims up to `limit` due refunds, each with the instant its lease ends (counted from
/// before the claim, so never later than the database's).
async fn claim(ctx: &Context, limit: i64) -> Result<Vec<(ClaimedRefund, Instant)>, StoreError> {
    let lease_ends = Instant::now() + ctx.config.claim_lease;
    let claimed = store::refunds::claim_due(&ctx.pool, limit, ctx.config.claim_lease).await?;
    Ok(claimed.into_iter().map(|c| (c, lease_ends)).collect())
}

/// Records dispatcher steps in one transaction ([`store::refunds::record_steps`]): their
/// new schedules or final statuses, provider calls and fan-out. Answers, in `steps` order,
/// each step's event (`None` for a reschedule or a lost claim).
pub async fn record_steps(
    pool: &sqlx::PgPool,
    steps: &[StepRecord<'_>],
    sink: &store::EventSink,
) -> Result<Vec<Option<crate::domain::RefundEvent>>, StoreError> {
    let mut tx = pool.begin().await?;
    let events = store::refunds::record_steps(&mut tx, steps, sink).await?;
    tx.commit().await?;
    Ok(events)
}

/// Records step outcomes in one transaction, then counts, logs and announces their events.
pub(crate) async fn record(ctx: &Context, outcomes: &[Outcome]) -> Result<(), StoreError> {
    let steps: Vec<StepRecord<'_>> = outcomes
        .iter()
        .map(|o| StepRecord {
            claimed: &o.claimed,
            extra_submits: o.extra_submits,
            calls: &o.calls,
            update: &o.update,
        })
        .collect();
    let events = record_steps(&ctx.pool, &steps, &ctx.sink).await?;
    let mut any = false;
    for (o, event) in outcomes.iter().zip(events) {
        if let Some(event) = event {
            crate::metrics::refund_event(&event);
            o.span.in_scope(|| {
                tracing::info!(
                    status = %event.status,
                    failure_code = event.failure_reason.as_ref().map(|f| f.code.as_str()),
                    failure_message = event.failure_reason.as_ref().map(|f| f.message.as_str()),
                    "refund finished"
                );
            });
            any = true;
        }
    }
    if any {
        ctx.event_committed();
    }
    Ok(())
}

/// [`process`] inside the refund's span.
pub(crate) async fn process_in_span(
    ctx: &Context,
    c: ClaimedRefund,
    lease_ends: Instant,
) -> Outcome {
    // `instrument`, not `Span::enter`: an entered guard held across `.await` corrupts
    // the subscriber's span registry when steps interleave (seen under load).
    let span = tracing::info_span!("refund", refund_reference = %c.row.refund_reference,
        provider = c.row.provider.as_deref().unwrap_or("?"));
    let (extra_submits, calls, update) = process(ctx, &c).instrument(span.clone()).await;
    Outcome {
        claimed: c,
        extra_submits,
        calls,
        update,
        span,
        lease_ends,
    }
}

/// Moves one claimed refund one step: its provider calls and the change to record.
async fn process(ctx: &Context, c: &ClaimedRefund) -> (i32, Vec<CallRecord>, StoreUpdate) {
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
        Err(e) => return (0, Vec::new(), fail(e.message())),
    };
    let Some(provider) = ctx.providers.get(cmd.provider) else {
        // Configuration changed since intake. Never sent: it can fail. Sent (or maybe
        // sent): the money may move, so it waits for the provider to be configured again
        // (and reaches operator review after REVIEW_AFTER), never a false REFUND_FAIL.
        let msg = format!("provider {} is not configured", cmd.provider);
        if c.phase_before == Phase::NotSubmitted {
            return (0, Vec::new(), fail(msg));
        }
        tracing::error!(
            phase = c.phase_before.as_str(),
            "{msg}; the refund may exist at the provider, so it waits"
        );
        let update = StoreUpdate::Reschedule {
            phase: c.phase_before,
            delay: ctx
                .config
                .retry
                .delay(u32::try_from(c.row.failures).unwrap_or(0) + 1, None),
            failed: true,
            provider_reference: None,
            provider_status: None,
            fee: None,
        };
        return (0, Vec::new(), update);
    };
    let provider_name = cmd.provider.as_str();
    let request = RefundRequest::from_command(cmd, c.row.provider_reference.clone());

    let max = ctx.config.retry.max_attempts;
    let attempts = u32::try_from(c.row.attempts).unwrap_or(0);
    let mut calls = Vec::new();
    let call = match c.phase_before {
        Phase::NotSubmitted => CallKind::Submit,
        Phase::Submitting | Phase::Accepted | Phase::Final => CallKind::Status,
    };
    let outcome = timed(
        provider.as_ref(),
        &ctx.handoff.limit,
        call,
        &request,
        &mut calls,
    )
    .await;
    let mut decision = decide(c.phase_before, call, outcome, attempts, max);
    let mut extra_submits = 0;
    if decision == Decision::Submit {
        extra_submits = 1;
        let outcome = timed(
            provider.as_ref(),
            &ctx.handoff.limit,
            CallKind::Submit,
            &request,
            &mut calls,
        )
        .await;
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
            // In review, an operator is on it: keep asking the provider, on the slow
            // schedule. A submit that never reached the provider keeps its backoff, so it
            // still ends RETRIES_EXHAUSTED in its time.
            let delay = match c.row.review_since {
                Some(_) if phase != Phase::NotSubmitted => delay.max(ctx.config.review_poll),
                _ => delay,
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
    (extra_submits, calls, update)
}

/// Makes one provider call and logs it for the attempts table.
async fn timed(
    provider: &dyn Provider,
    limit: &super::limit::AdaptiveLimit,
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
    if let Some(allowed) = limit.record(start.elapsed(), load_of(&outcome)) {
        crate::metrics::provider_calls_allowed(allowed);
    }
    let (label, detail) = outcome.describe();
    let call_name = match call {
        CallKind::Submit => "submit",
        CallKind::Status => "status",
    };
    crate::metrics::provider_call(provider.name().as_str(), call_name, label, start.elapsed());
    // A call that went as hoped is routine (counted in metrics, kept in the attempts
    // table): debug. One that failed or left the outcome open is worth a line at info.
    if matches!(
        outcome,
        ProviderOutcome::Accepted { .. } | ProviderOutcome::Succeeded { .. }
    ) {
        tracing::debug!(
            call = call_name,
            outcome = label,
            detail = detail.as_deref().unwrap_or(""),
            "provider call"
        );
    } else {
        tracing::info!(
            call = call_name,
            outcome = label,
            detail = detail.as_deref().unwrap_or(""),
            "provider call"
        );
    }
    calls.push(CallRecord {
        call: call_name,
        outcome: label.to_string(),
        detail,
        started_at,
        latency: start.elapsed(),
    });
    outcome
}

/// What a call's outcome says about the provider's load, for the adaptive limit.
fn load_of(outcome: &ProviderOutcome) -> CallLoad {
    match outcome {
        // A timeout after sending, or the provider telling us to slow down.
        ProviderOutcome::Unknown { .. } => CallLoad::PushedBack,
        ProviderOutcome::Retryable { reason, .. } if reason.contains("429") => CallLoad::PushedBack,
        ProviderOutcome::Retryable {
            may_have_reached_provider: true,
            ..
        } => CallLoad::Failed,
        _ => CallLoad::Answered,
    }
}
