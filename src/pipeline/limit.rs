//! How many provider calls a worker keeps in flight: a limit that sizes itself to the
//! providers' latency, in the spirit of TCP Vegas and Netflix's concurrency-limits.
//!
//! By Little's law a worker completing R refunds a second against a provider answering in
//! L seconds needs R x L calls in flight: 32 slots at 300 ms are at most ~100 calls a
//! second, whatever the machine could do. A fixed large limit would cost memory for nothing
//! on a fast provider and could overrun a slow one. So the limit starts at
//! `DISPATCH_CONCURRENCY` and, one round of calls at a time:
//! - grows by half while the dispatcher was short of slots, calls take long enough for
//!   slots to be what limits throughput (10 ms: below that, 32 slots already carry over
//!   3,000 calls a second, more than a worker does), and the round's latency stayed near the
//!   best seen (the provider is not queueing our calls), up to `DISPATCH_CONCURRENCY_MAX`;
//! - shrinks by a quarter when the provider pushed back (429, a timeout, more than a tenth
//!   of the round's calls failing with 5xx), and by a tenth when latency inflated past twice
//!   the best (our own calls are queueing somewhere), never below `DISPATCH_CONCURRENCY`.
//!
//! Pure bookkeeping: the dispatcher feeds it calls and reads the limit.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Below this round median, more calls in flight buy nothing (see the module comment).
const GROW_MIN_LATENCY: Duration = Duration::from_millis(10);

/// What one provider call said about the provider's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallLoad {
    /// Answered (whatever the answer).
    Answered,
    /// 429, or a timeout: the provider is overloaded or we are overrunning it.
    PushedBack,
    /// A 5xx: a failure that may be load (counted against a share of the round).
    Failed,
}

/// The adaptive limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    floor: usize,
    ceiling: usize,
    limit: AtomicUsize,
    /// Set by the dispatcher when it had due work but no free slot in this round.
    saturated: AtomicBool,
    round: Mutex<Round>,
}

#[derive(Debug, Default)]
struct Round {
    latencies: Vec<Duration>,
    pushed_back: usize,
    failed: usize,
    /// Lowest round median seen (decays slowly so a provider that got slower for good
    /// becomes the new normal).
    best: Option<Duration>,
}

impl AdaptiveLimit {
    /// A limit between `floor` and `ceiling` (raised to `floor` if lower), starting at the
    /// floor. With `floor == ceiling` it is fixed.
    pub fn new(floor: usize, ceiling: usize) -> Self {
        let floor = floor.max(1);
        Self {
            floor,
            ceiling: ceiling.max(floor),
            limit: AtomicUsize::new(floor),
            saturated: AtomicBool::new(false),
            round: Mutex::new(Round::default()),
        }
    }

    /// Calls allowed in flight now.
    pub fn current(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// The most it can ever allow.
    pub fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// The dispatcher had due work and no free slot.
    pub fn note_saturated(&self) {
        self.saturated.store(true, Ordering::Relaxed);
    }

    /// Records one finished provider call; at the end of a round (as many calls as the
    /// limit), adjusts the limit and returns it (the caller reports it), else `None`.
    pub fn record(&self, latency: Duration, load: CallLoad) -> Option<usize> {
        if self.floor == self.ceiling {
            return None;
        }
        let Ok(mut round) = self.round.lock() else {
            return None;
        };
        round.latencies.push(latency);
        match load {
            CallLoad::Answered => {}
            CallLoad::PushedBack => round.pushed_back += 1,
            CallLoad::Failed => round.failed += 1,
        }
        let limit = self.current();
        if round.latencies.len() < limit.min(256) {
            return None;
        }
        let mut latencies = std::mem::take(&mut round.latencies);
        latencies.sort_unstable();
        let median = latencies[latencies.len() / 2];
        let best = match round.best {
            // Drift up by 1% a round, so the baseline follows a provider that got slower.
            Some(b) => b.mul_f64(1.01).min(median),
            None => median,
        };
        round.best = Some(best);
        let (pushed_back, failed) = (round.pushed_back, round.failed);
        round.pushed_back = 0;
        round.failed = 0;
        drop(round);
        let saturated = self.saturated.swap(false, Ordering::Relaxed);
        // Below a millisecond, latency is noise of this machine, not the provider's queue.
        let inflated = median > best * 2 && median > Duration::from_millis(5);
        let next = if pushed_back > 0 || failed * 10 > latencies.len() {
            limit - limit / 4
        } else if inflated {
            limit - limit / 10
        } else if saturated && median >= GROW_MIN_LATENCY {
            limit + limit.div_ceil(2)
        } else {
            limit
        };
        let next = next.clamp(self.floor, self.ceiling);
        self.limit.store(next, Ordering::Relaxed);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(limit: &AdaptiveLimit, n: usize, latency: Duration, load: CallLoad, saturated: bool) {
        for _ in 0..n {
            if saturated {
                limit.note_saturated();
            }
            for _ in 0..limit.current().min(256) {
                limit.record(latency, load);
            }
        }
    }

    #[test]
    fn a_slow_provider_that_keeps_up_gets_more_calls_in_flight() {
        let limit = AdaptiveLimit::new(32, 512);
        rounds(
            &limit,
            10,
            Duration::from_millis(300),
            CallLoad::Answered,
            true,
        );
        assert_eq!(
            limit.current(),
            512,
            "grows to the ceiling while latency holds"
        );
        // Not short of slots: no reason to grow or shrink.
        let limit = AdaptiveLimit::new(32, 512);
        rounds(
            &limit,
            10,
            Duration::from_millis(300),
            CallLoad::Answered,
            false,
        );
        assert_eq!(limit.current(), 32);
    }

    #[test]
    fn the_limit_is_reported_when_a_round_ends_and_only_then() {
        let limit = AdaptiveLimit::new(4, 64);
        let slow = Duration::from_millis(300);
        limit.note_saturated();
        for _ in 0..3 {
            assert_eq!(limit.record(slow, CallLoad::Answered), None);
        }
        assert_eq!(limit.record(slow, CallLoad::Answered), Some(6));
        assert_eq!(limit.current(), 6);
        let fixed = AdaptiveLimit::new(8, 8);
        assert_eq!(fixed.record(slow, CallLoad::PushedBack), None);
    }

    #[test]
    fn push_back_and_inflating_latency_shrink_it_never_below_the_floor() {
        let limit = AdaptiveLimit::new(32, 512);
        rounds(
            &limit,
            6,
            Duration::from_millis(300),
            CallLoad::Answered,
            true,
        );
        let grown = limit.current();
        assert!(grown > 100, "{grown}");
        rounds(
            &limit,
            1,
            Duration::from_millis(300),
            CallLoad::PushedBack,
            true,
        );
        assert_eq!(limit.current(), grown - grown / 4, "429s cut a quarter");
        let before = limit.current();
        rounds(
            &limit,
            1,
            Duration::from_millis(900),
            CallLoad::Answered,
            true,
        );
        assert!(limit.current() < before, "latency tripled: our calls queue");
        rounds(
            &limit,
            50,
            Duration::from_millis(300),
            CallLoad::PushedBack,
            true,
        );
        assert_eq!(limit.current(), 32);
    }

    #[test]
    fn a_fast_provider_stays_at_the_floor_and_a_fixed_limit_never_moves() {
        // Sub-millisecond answers: more calls in flight would only add contention.
        let limit = AdaptiveLimit::new(32, 512);
        for n in 0..20 {
            limit.note_saturated();
            for i in 0..limit.current() {
                // Noise of a busy machine: 0.2 to 3 ms.
                let us = 200 + ((n * 131 + i * 17) % 2800) as u64;
                limit.record(Duration::from_micros(us), CallLoad::Answered);
            }
        }
        assert_eq!(limit.current(), 32);
        let fixed = AdaptiveLimit::new(64, 64);
        rounds(
            &fixed,
            5,
            Duration::from_millis(300),
            CallLoad::Answered,
            true,
        );
        assert_eq!(fixed.current(), 64);
        rounds(
            &fixed,
            5,
            Duration::from_millis(300),
            CallLoad::PushedBack,
            true,
        );
        assert_eq!(fixed.current(), 64);
    }

    #[test]
    fn many_5xx_in_a_round_count_as_push_back() {
        let limit = AdaptiveLimit::new(32, 512);
        rounds(
            &limit,
            4,
            Duration::from_millis(300),
            CallLoad::Answered,
            true,
        );
        let before = limit.current();
        limit.note_saturated();
        for i in 0..limit.current() {
            let load = if i % 5 == 0 {
                CallLoad::Failed
            } else {
                CallLoad::Answered
            };
            limit.record(Duration::from_millis(300), load);
        }
        assert!(limit.current() < before);
    }
}
