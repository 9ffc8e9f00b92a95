//! Per-source limits of the HTTP server: the webhook ingress's rate (GCRA, `governor`) and
//! failed admin authentications. Both are keyed by [`source_key`] and pruned by a background
//! task, never on the request path.

use axum::extract::ConnectInfo;
use axum::http::Request;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often idle sources are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Failed admin authentications a source may make at once...
const AUTH_FAILURE_BURST: f64 = 5.0;
/// ...and per second after that; beyond, 429 (the token is then not even compared).
const AUTH_FAILURES_PER_SEC: f64 = 1.0;

/// The key a source is limited by. IPv6 by its /64: one subscriber usually gets a whole
/// /64 (often more) and can pick any address in it, so keying by the full address would
/// give them 2^64 separate allowances. IPv4 (and IPv4-mapped IPv6, which is an IPv4 peer on
/// a dual-stack socket) by the address.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The TCP peer of a request (served with connect info, see [`super::serve`]), as a key;
/// a router served without it puts every request under one key.
pub(crate) fn peer_key<B>(request: &Request<B>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| source_key(c.0.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Runs `prune` on whatever `target` still points to, every `every`, until it is dropped.
/// Without a Tokio runtime (a router built outside one) nothing is pruned.
fn prune_in_background<T: Send + Sync + 'static>(target: Weak<T>, every: Duration, prune: fn(&T)) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match target.upgrade() {
                Some(t) => prune(&t),
                None => return,
            }
        }
    });
}

/// Per-source rate limit of the webhook ingress. Behind a proxy every provider shares the
/// proxy's address, so size the limit for the proxy or rate-limit there.
#[derive(Clone)]
pub(crate) struct IngressLimit(pub(crate) Arc<governor::DefaultKeyedRateLimiter<IpAddr>>);

impl IngressLimit {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        Self::pruned_every(per_second, burst, PRUNE_EVERY)
    }

    pub(crate) fn pruned_every(per_second: u32, burst: u32, every: Duration) -> Self {
        let quota =
            governor::Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let limiter = Arc::new(governor::RateLimiter::keyed(quota));
        // Sources back at full allowance are forgotten, so the table holds only the active
        // ones; off the request path, where a scan of a large table would stall a request.
        prune_in_background(Arc::downgrade(&limiter), every, |l| {
            l.retain_recent();
            l.shrink_to_fit();
        });
        Self(limiter)
    }
}

/// Failed admin authentications per source: a token bucket that can be looked at without
/// taking from it (a source out of allowance is refused before its token is compared, so
/// it cannot keep guessing and learn from a 200 which guess was right).
#[derive(Clone)]
pub(crate) struct AuthFailures(Arc<AuthInner>);

struct AuthInner {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    burst: f64,
    per_sec: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl AuthFailures {
    pub(crate) fn new() -> Self {
        Self::with(AUTH_FAILURE_BURST, AUTH_FAILURES_PER_SEC, PRUNE_EVERY)
    }

    fn with(burst: f64, per_sec: f64, every: Duration) -> Self {
        let inner = Arc::new(AuthInner {
            buckets: Mutex::new(HashMap::new()),
            burst,
            per_sec,
        });
        prune_in_background(Arc::downgrade(&inner), every, |inner| {
            let now = Instant::now();
            if let Ok(mut map) = inner.buckets.lock() {
                // Full again: as if never seen.
                map.retain(|_, b| refill(*b, now, inner.burst, inner.per_sec) < inner.burst);
            }
        });
        Self(inner)
    }

    /// How long `key` must wait before it may try again, if it is out of allowance.
    pub(crate) fn blocked(&self, key: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.0.buckets.lock().ok()?;
        let tokens = refill(*map.get(&key)?, now, self.0.burst, self.0.per_sec);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.0.per_sec))
    }

    /// Takes one failure from `key`'s allowance.
    pub(crate) fn failed(&self, key: IpAddr) {
        let now = Instant::now();
        if let Ok(mut map) = self.0.buckets.lock() {
            let bucket = map.entry(key).or_insert(Bucket {
                tokens: self.0.burst,
                at: now,
            });
            let tokens = refill(*bucket, now, self.0.burst, self.0.per_sec);
            *bucket = Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at: now,
            };
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.buckets.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn refill(bucket: Bucket, now: Instant, burst: f64, per_sec: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * per_sec).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        assert_eq!(source_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key("::ffff:203.0.113.7".parse().unwrap()), v4);
    }

    #[test]
    fn one_64_shares_one_ingress_allowance() {
        let limit = IngressLimit::new(1, 3);
        let mut refused = 0;
        for i in 0..10u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 7, i, i, i, i));
            if limit.0.check_key(&source_key(ip)).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 7, "ten addresses of one /64 got one burst of 3");
    }

    #[tokio::test]
    async fn the_ingress_table_is_pruned_in_the_background() {
        // 1000/s, burst 1: a source is back at full allowance after 1 ms.
        let limit = IngressLimit::pruned_every(1000, 1, Duration::from_millis(20));
        for i in 0..50u8 {
            let _ = limit
                .0
                .check_key(&IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)));
        }
        assert_eq!(limit.0.len(), 50);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            limit.0.len(),
            0,
            "idle sources are forgotten without any request"
        );
    }

    #[tokio::test]
    async fn failed_authentications_run_out_per_source() {
        let failures = AuthFailures::with(3.0, 1.0, Duration::from_secs(3600));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(failures.blocked(a), None);
            failures.failed(a);
        }
        let wait = failures.blocked(a).expect("out of allowance");
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(failures.blocked(b), None, "other sources are not affected");
        assert_eq!(failures.len(), 1);
    }
}
