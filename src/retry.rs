//! The one retry policy: how long to wait before the next provider call or status poll.
//!
//! Delays are exponential with **full jitter** (a uniform draw between zero and the
//! exponential ceiling), which spreads retries of many refunds that failed together instead
//! of having them hit a recovering provider in waves. The exponential ceiling comes from
//! the `backoff` crate; the policy is evaluated from the stored failure count, so retries
//! are scheduled in PostgreSQL (`next_attempt_at`) and survive restarts, rather than living
//! in a sleeping task.
//!
//! The same policy paces the infrastructure loops ([`Backoff`]): a broker reconnect, a
//! claim, a relay step or a delivery step that failed is tried again after the next delay,
//! and a success starts the count again.

use backoff::backoff::Backoff as _;
use backoff::ExponentialBackoffBuilder;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The longest `Retry-After` we honour, from a provider or a merchant endpoint. A longer one
/// (a typo, a misconfigured proxy, `10^12` seconds) would otherwise park a refund or a
/// delivery for ever, or overflow the database interval it is stored as; past an hour we
/// look again anyway and let the other side tell us to wait once more.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Reads a `Retry-After` header value: delay-seconds or an HTTP-date (RFC 9110 section
/// 10.2.3; the IMF-fixdate form is RFC 2822, which chrono parses), relative to `now`. A date
/// in the past is no wait; anything else unreadable is ignored. Clamped to
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
        // Digits too long for u64: certainly beyond the ceiling.
        MAX_RETRY_AFTER
    } else {
        let at = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        (at - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// [`parse_retry_after`] of a response's `Retry-After` header, if it has a readable one.
pub fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, Utc::now())
}

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
    /// shorter than the provider's `Retry-After` (itself at most [`MAX_RETRY_AFTER`], also
    /// when a caller built the outcome by hand).
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = self.ceiling(failures).mul_f64(rand::random::<f64>());
        jittered.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
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

/// The back-off of an infrastructure loop (broker reconnects, claims, relay, recording,
/// merchant webhook delivery): the failures since the last success, and the next delay
/// from the one [`RetryPolicy`], full jitter included. Unlike a refund's retries it lives
/// in memory: a restarted loop starts from the first delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    /// The ceiling stops growing after this many failures: an outage's loop keeps looking
    /// every few seconds instead of the policy's `max`.
    cap: u32,
    /// The shortest delay.
    floor: Duration,
}

impl Backoff {
    /// A back-off on `policy` whose ceiling grows for six failures, with no floor.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy,
            failures: 0,
            cap: 6,
            floor: Duration::ZERO,
        }
    }

    /// The ceiling stops growing after `failures` failures.
    pub fn capped_at(mut self, failures: u32) -> Self {
        self.cap = failures.max(1);
        self
    }

    /// No delay shorter than `floor`.
    pub fn at_least(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// Counts a failure and answers how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy
            .delay(self.failures.min(self.cap), None)
            .max(self.floor)
    }

    /// A success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Sleeps `delay` unless `shutdown` comes first; `false` when it did (the loop drains
    /// instead of trying again).
    pub async fn sleep(delay: Duration, shutdown: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
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

    #[test]
    fn retry_after_is_clamped_to_the_ceiling() {
        let p = policy();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1_000_000_000_000))),
            MAX_RETRY_AFTER
        );
        let now = Utc::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 1000000000000 ", now),
            Some(MAX_RETRY_AFTER)
        );
        // More digits than u64 holds.
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn retry_after_accepts_an_http_date() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        // In the past: no wait.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:48:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Years ahead: the ceiling.
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn backoff_grows_up_to_its_cap_keeps_its_floor_and_resets() {
        let mut b = Backoff::new(policy())
            .capped_at(3)
            .at_least(Duration::from_millis(50));
        for failures in 1..=10u32 {
            let d = b.next_delay();
            assert_eq!(b.failures(), failures);
            // Never above the ceiling of min(failures, cap), never below the floor.
            assert!(
                d <= policy()
                    .ceiling(failures.min(3))
                    .max(Duration::from_millis(50))
            );
            assert!(d >= Duration::from_millis(50));
        }
        b.reset();
        assert_eq!(b.failures(), 0);
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_sleeps_its_delay_on_paused_time_and_stops_on_shutdown() {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut b = Backoff::new(policy()).at_least(Duration::from_millis(300));
        // The first ceiling is 100 ms, so the floor decides: exactly 300 ms.
        let delay = b.next_delay();
        assert_eq!(delay, Duration::from_millis(300));
        let sleeping = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { Backoff::sleep(delay, &shutdown).await }
        });
        tokio::time::advance(Duration::from_millis(299)).await;
        tokio::task::yield_now().await;
        assert!(!sleeping.is_finished());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(sleeping.await.unwrap(), "slept the whole delay");

        // Shutdown ends the sleep at once, however long it was to be.
        let long = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { Backoff::sleep(Duration::from_secs(3600), &shutdown).await }
        });
        tokio::task::yield_now().await;
        shutdown.cancel();
        assert!(!long.await.unwrap(), "cut short by shutdown");
    }
}
