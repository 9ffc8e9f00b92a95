//! The delivery retry schedule: a list of delays, like Svix's (immediately, 5 s, 5 min,
//! 30 min, 2 h, 5 h, 10 h, 10 h), each jittered by +-20% so that deliveries that failed
//! together do not retry together.

use std::time::Duration;

/// The default schedule.
pub(crate) const DEFAULT: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

/// Delays before each attempt of a round; attempt 1 waits `delays[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    delays: Vec<Duration>,
}

impl Schedule {
    /// Parses `0s,5s,5m,30m,2h` (units `ms`, `s`, `m`, `h`).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(|part| {
                let d = parse_duration(part.trim())?;
                if d > MAX_DELAY {
                    return Err(format!(
                        "`{}` is longer than the longest delay allowed ({MAX_DELAY_DAYS} days)",
                        part.trim()
                    ));
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err("the schedule needs at least one delay".into());
        }
        Ok(Self { delays })
    }

    /// Attempts in one round.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> usize {
        self.delays.len()
    }

    /// Delay before attempt `n + 1` once `n` attempts of the round were made, or `None`
    /// when the round is over (the delivery has failed).
    pub(crate) fn next_delay(&self, attempts_made: usize) -> Option<Duration> {
        let base = *self.delays.get(attempts_made)?;
        let factor = 0.8 + 0.4 * rand::random::<f64>();
        Some(base.mul_f64(factor))
    }
}

/// Parses one duration: a whole number with a unit, `ms`, `s`, `m`, `h` or `d` (`90s`,
/// `24h`, `30d`); a bare number is seconds. Shared by every duration setting.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 5m, 24h or 30d"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{s}` is longer than the longest delay allowed"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!("`{s}` has an unknown unit (use ms, s, m, h or d)")),
    }
}

/// Longest delay a schedule may name, in days: the next attempt is stored as a PostgreSQL
/// interval from now, which a huge value would overflow (and the delivery would never be
/// recorded again).
pub(crate) const MAX_DELAY_DAYS: u64 = 30;
const MAX_DELAY: Duration = Duration::from_secs(MAX_DELAY_DAYS * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_svix_like() {
        let s = Schedule::parse(DEFAULT).unwrap();
        assert_eq!(s.attempts(), 8);
        assert_eq!(s.next_delay(0), Some(Duration::ZERO));
        let d = s.next_delay(2).unwrap();
        assert!(
            d >= Duration::from_secs(240) && d <= Duration::from_secs(360),
            "{d:?}"
        );
        assert_eq!(s.next_delay(8), None);
    }

    #[test]
    fn absurd_delays_are_refused_not_overflowed() {
        assert!(Schedule::parse("99999999999999999h")
            .unwrap_err()
            .contains("longest delay"));
        assert!(Schedule::parse("0s,31d").is_err());
        assert!(Schedule::parse("0s,721h").unwrap_err().contains("30 days"));
        assert!(Schedule::parse("0s,720h").is_ok());
    }

    #[test]
    fn bad_schedules_are_named() {
        assert!(Schedule::parse("5x").unwrap_err().contains("unknown unit"));
        assert!(Schedule::parse("soon")
            .unwrap_err()
            .contains("not a duration"));
    }
}
