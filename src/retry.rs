//! The one retry policy: how long to wait before the next provider call or status poll.
//!
//! Delays are exponential with **full jitter** (a uniform draw between zero and the
//! exponential ceiling), which spreads retries of many refunds that failed together instead
//! of having them hit a recovering provider in waves. The exponential ceiling comes from
//! the `backoff` crate; the policy is evaluated from the stored failure count, so retries
//! are scheduled in PostgreSQL (`next_attempt_at`) and survive restarts, rather than living
//! in a sleeping task.

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use std::time::Duration;

/// Exponential backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
    /// Growth per failure.
    pub multiplier: f64,
    /// Provider submits allowed before a never-accepted refund fails `RETRIES_EXHAUSTED`.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Delay before retry number `failures` (1 = first retry), full jitter, and never
    /// shorter than the provider's `Retry-After`.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.ceiling(failures).mul_f64(rand::random::<f64>());
        jittered.max(retry_after.unwrap_or_default())
    }

    /// The exponential ceiling for retry number `failures`, as the `backoff` crate computes it.
    pub fn ceiling(&self, failures: u32) -> Duration {
        // `backoff` draws its jitter around the current interval; we take the interval itself
        // (randomization 0) and apply full jitter in `delay`.
        let mut b = ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial)
            .with_multiplier(self.multiplier)
            .with_max_interval(self.max)
            .with_randomization_factor(0.0)
            .with_max_elapsed_time(None)
            .build();
        let mut current = self.initial;
        // Past ~64 doublings every realistic ceiling is at `max`; stop iterating there.
        for _ in 0..failures.clamp(1, 64) {
            current = b.next_backoff().unwrap_or(self.max);
        }
        current.min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 5,
        }
    }

    #[test]
    fn ceilings_grow_exponentially_up_to_max() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(2), Duration::from_millis(200));
        assert_eq!(p.ceiling(4), Duration::from_millis(800));
        assert_eq!(p.ceiling(30), Duration::from_secs(10));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn delays_are_jittered_below_the_ceiling() {
        let p = policy();
        let delays: Vec<_> = (0..200).map(|_| p.delay(4, None)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        // Full jitter spreads them out: not all the same, some well below the ceiling.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(400)));
    }

    #[test]
    fn retry_after_is_honoured() {
        let p = policy();
        assert!(p.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
