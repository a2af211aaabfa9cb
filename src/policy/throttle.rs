//! Throttle: per-destination rate limits, key = destination host.
//!
//! In: the host of each request about to be sent. Out: a [`Decision`]: go
//! now, wait a given time (a slot in the host's queue is reserved for that
//! moment), or defer, when the wait this delivery faces (everyone queued
//! for the host before it included) is longer than allowed. The caller waits
//! only for its own host, and hands a deferred delivery to the retry topic,
//! so neither the consumer nor other hosts wait behind a limited one.
//!
//! The limit is GCRA (the algorithm of token buckets, kept as one
//! "theoretical arrival time" per host) with reservations: taking a slot in
//! the future moves the host's time on, so the next caller learns the whole
//! queue's wait, not one period. A rate limiter that only answers "not now"
//! cannot tell the total wait; that is why this is not `governor`. Host
//! states live in a sharded map, so deliveries to different hosts rarely
//! share a lock.
//!
//! A fleet enforces one limit together: each worker takes the share of every
//! quota in proportion to the partitions it owns ([`Throttle::set_share`]).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use serde::Deserialize;

use crate::policy::clock::{Clock, MonotonicClock};

/// A rate and burst for one host (or the default): `rate` requests per
/// second sustained, `burst` at once. `rate = 0` means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostLimit {
    pub rate: f64,
    pub burst: u32,
}

/// Config `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub rate: f64,
    pub burst: u32,
    /// Deliveries that would wait longer than this (queue included) are
    /// deferred to the retry topic instead.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How often one delivery may be deferred before it is dead-lettered
    /// (`rate_limited`): a host sent more than its limit for long enough
    /// loses the excess rather than circulating it through Kafka forever.
    pub max_deferrals: u32,
    /// Deliveries waiting for their hosts' quotas at once, across hosts, on
    /// one worker; past it, deliveries are deferred.
    #[serde(deserialize_with = "crate::template::at_least_one")]
    pub max_waiting: NonZeroUsize,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostLimit>,
}

impl LimitSettings {
    /// Names the key and value of the first invalid limit.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let check = |key: String, l: HostLimit| {
            if !(l.rate == 0.0 || (l.rate >= MIN_RATE && l.rate <= 1e9)) {
                return Err((
                    format!("{key}.rate"),
                    format!(
                        "must be 0 (no limit) or between {MIN_RATE} and 1e9 requests per second, got {}",
                        l.rate
                    ),
                ));
            }
            if l.burst > MAX_BURST {
                return Err((
                    format!("{key}.burst"),
                    format!("must be at most {MAX_BURST}, got {}", l.burst),
                ));
            }
            if l.rate > 0.0 && l.burst == 0 {
                return Err((
                    format!("{key}.burst"),
                    "must be at least 1 when a rate is set, got 0".to_owned(),
                ));
            }
            Ok(())
        };
        check(
            "limits".into(),
            HostLimit {
                rate: self.rate,
                burst: self.burst,
            },
        )?;
        for (host, l) in &self.hosts {
            check(format!("limits.hosts.{host:?}"), *l)?;
        }
        Ok(())
    }
}

/// What a delivery to a host may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// A slot is reserved this far from now: wait, then send.
    Wait(Duration),
    /// The wait would be this long, over the allowed one; nothing reserved.
    Defer(Duration),
}

/// One host's limiter state: the theoretical arrival time of the next
/// request, on the throttle's clock.
#[derive(Debug, Clone, Copy)]
struct HostState {
    tat: Duration,
}

/// The smallest share a worker takes, so one that owns no partitions (just
/// revoked, or not yet assigned) still lets its in-flight work trickle.
const MIN_SHARE: f64 = 1e-3;

/// The smallest rate a limit may have, per second: one request in about 17
/// minutes. Below it (with the least share) periods would not fit a
/// `Duration`'s arithmetic comfortably.
pub(crate) const MIN_RATE: f64 = 1e-3;

/// The largest burst a limit may have.
pub(crate) const MAX_BURST: u32 = 1_000_000;

/// How far ahead a host's queue is ever kept: one day.
const MAX_AHEAD: Duration = Duration::from_secs(24 * 3600);

pub struct Throttle<C: Clock = MonotonicClock> {
    settings: LimitSettings,
    clock: C,
    /// This worker's share of every quota, as `f64` bits.
    share: AtomicU64,
    hosts: DashMap<String, HostState>,
}

impl Throttle<MonotonicClock> {
    pub fn new(settings: LimitSettings) -> Self {
        Throttle::with_clock(settings, MonotonicClock::default())
    }
}

impl<C: Clock> Throttle<C> {
    pub fn with_clock(settings: LimitSettings, clock: C) -> Self {
        Throttle {
            settings,
            clock,
            share: AtomicU64::new(1.0f64.to_bits()),
            hosts: DashMap::new(),
        }
    }

    /// The limit of `host`, scaled by this worker's share: the period between
    /// two requests and the burst tolerance. `None`: no limit.
    fn quota(&self, host: &str) -> Option<(Duration, Duration)> {
        let l = match self.settings.hosts.get(host) {
            Some(l) => *l,
            None => HostLimit {
                rate: self.settings.rate,
                burst: self.settings.burst,
            },
        };
        if l.rate <= 0.0 {
            return None;
        }
        let share = self.share();
        // Validated rates and bursts keep these finite and small; saturate
        // anyway rather than panic on a delivery's path.
        let period = Duration::try_from_secs_f64(1.0 / (l.rate * share)).unwrap_or(MAX_AHEAD);
        let burst = ((l.burst as f64 * share).round() as u32).max(1);
        Some((period, period.saturating_mul(burst - 1)))
    }

    /// Reserves a slot for one request to `host` if it can go within
    /// `max_wait` (queue included); otherwise reserves nothing.
    pub fn reserve(&self, host: &str, max_wait: Duration) -> Decision {
        let Some((period, tolerance)) = self.quota(host) else {
            return Decision::Go;
        };
        let now = self.clock.now();
        let mut state = match self.hosts.get_mut(host) {
            Some(s) => s,
            None => self
                .hosts
                .entry(host.to_owned())
                .or_insert(HostState { tat: now }),
        };
        let tat = state.tat.max(now);
        let wait = (tat.saturating_sub(tolerance)).saturating_sub(now);
        if wait > max_wait {
            return Decision::Defer(wait);
        }
        state.tat = tat.saturating_add(period);
        if wait.is_zero() {
            Decision::Go
        } else {
            Decision::Wait(wait)
        }
    }

    /// This worker's share of the fleet's limits, `owned / total`
    /// partitions (of the events and retry topics together), at least
    /// `MIN_SHARE`. Host states stay: a reservation made under the old
    /// share keeps its slot.
    pub fn set_share(&self, owned: usize, total: usize) {
        let share = if total == 0 {
            MIN_SHARE
        } else {
            (owned as f64 / total as f64).clamp(MIN_SHARE, 1.0)
        };
        let before = f64::from_bits(self.share.swap(share.to_bits(), Ordering::Relaxed));
        if before == share {
            return;
        }
        // Reservations made under the old share are rescaled: the queue
        // ahead of a host drains at the new rate. Otherwise a moment at the
        // least share (between a revocation and the next assignment) would
        // push every host's queue far out.
        let now = self.clock.now();
        let factor = before / share;
        for mut state in self.hosts.iter_mut() {
            let ahead = state.tat.saturating_sub(now).as_secs_f64() * factor;
            state.tat = now
                + Duration::try_from_secs_f64(ahead)
                    .unwrap_or(MAX_AHEAD)
                    .min(MAX_AHEAD);
        }
    }

    pub fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }

    pub fn max_wait(&self) -> Duration {
        self.settings.max_wait
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// Forgets hosts whose state is back to full (no request reserved
    /// ahead); run periodically so keys of hosts no longer sent to do not
    /// accumulate.
    pub fn prune(&self) {
        let now = self.clock.now();
        self.hosts.retain(|_, s| s.tat > now);
        self.hosts.shrink_to_fit();
    }

    /// Hosts with limiter state held.
    pub fn tracked(&self) -> usize {
        self.hosts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;
    use std::sync::Arc;

    fn settings(rate: f64, burst: u32) -> LimitSettings {
        LimitSettings {
            rate,
            burst,
            max_wait: Duration::from_secs(1),
            max_deferrals: 3,
            max_waiting: NonZeroUsize::new(100).unwrap(),
            hosts: BTreeMap::new(),
        }
    }

    const NOW: Duration = Duration::ZERO;
    const FOREVER: Duration = Duration::MAX;

    /// Requests to `host` that go at once, of `n` asked without waiting
    /// (nothing reserved beyond them).
    fn admitted(t: &Throttle<Arc<ManualClock>>, host: &str, n: usize) -> usize {
        (0..n)
            .filter(|_| t.reserve(host, NOW) == Decision::Go)
            .count()
    }

    #[test]
    fn burst_then_rate() {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::with_clock(settings(10.0, 5), clock.clone());
        assert_eq!(admitted(&t, "a", 20), 5, "the burst");
        assert_eq!(
            t.reserve("a", NOW),
            Decision::Defer(Duration::from_millis(100))
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            admitted(&t, "a", 20),
            5,
            "a second refills ten, capped at the burst"
        );
        clock.advance(Duration::from_millis(300));
        assert_eq!(admitted(&t, "a", 20), 3, "10/s for 300 ms");
    }

    #[test]
    fn a_reservation_tells_the_wait_of_the_whole_queue() {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::with_clock(settings(10.0, 1), clock.clone());
        assert_eq!(t.reserve("a", FOREVER), Decision::Go);
        // Each caller queues behind the previous ones: 100 ms apart.
        for n in 1..=10u64 {
            assert_eq!(
                t.reserve("a", FOREVER),
                Decision::Wait(Duration::from_millis(100 * n))
            );
        }
        // The eleventh in line would wait 1.1 s: over a 1 s maximum, it is
        // deferred, and reserves nothing.
        assert_eq!(
            t.reserve("a", Duration::from_secs(1)),
            Decision::Defer(Duration::from_millis(1100))
        );
        assert_eq!(
            t.reserve("a", Duration::from_secs(2)),
            Decision::Wait(Duration::from_millis(1100)),
            "the deferral took no slot"
        );
        clock.advance(Duration::from_millis(1100));
        assert_eq!(
            t.reserve("a", NOW),
            Decision::Defer(Duration::from_millis(100))
        );
        clock.advance(Duration::from_millis(100));
        assert_eq!(t.reserve("a", NOW), Decision::Go, "the queue has drained");
    }

    #[test]
    fn hosts_are_limited_independently_with_overrides() {
        let clock = Arc::new(ManualClock::default());
        let mut s = settings(10.0, 2);
        s.hosts.insert(
            "slow.example".into(),
            HostLimit {
                rate: 1.0,
                burst: 1,
            },
        );
        s.hosts.insert(
            "free.example".into(),
            HostLimit {
                rate: 0.0,
                burst: 0,
            },
        );
        let t = Throttle::with_clock(s, clock.clone());
        assert_eq!(admitted(&t, "slow.example", 10), 1);
        assert_eq!(
            t.reserve("slow.example", FOREVER),
            Decision::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            admitted(&t, "a.example", 10),
            2,
            "another host is not held up"
        );
        assert_eq!(admitted(&t, "b.example", 10), 2);
        assert_eq!(
            admitted(&t, "free.example", 1000),
            1000,
            "rate 0 is no limit"
        );
    }

    #[test]
    fn the_share_follows_the_assignment() {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::with_clock(settings(100.0, 40), clock.clone());
        t.set_share(1, 4);
        assert_eq!(admitted(&t, "h", 100), 10, "a quarter of the burst");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            admitted(&t, "h", 100),
            10,
            "a quarter of the rate, capped by the burst"
        );
        clock.advance(Duration::from_millis(200));
        assert_eq!(admitted(&t, "h", 100), 5, "25/s for 200 ms");
        t.set_share(4, 4);
        clock.advance(Duration::from_secs(1));
        assert_eq!(admitted(&t, "h", 100), 40, "rebalanced to all partitions");
    }

    #[test]
    fn queued_reservations_follow_a_change_of_share() {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::with_clock(settings(10.0, 1), clock.clone());
        for _ in 0..11 {
            t.reserve("h", FOREVER);
        }
        let next = |t: &Throttle<Arc<ManualClock>>| match t.reserve("h", NOW) {
            Decision::Defer(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(next(&t), Duration::from_millis(1100));
        t.set_share(1, 2);
        assert_eq!(
            next(&t),
            Duration::from_millis(2200),
            "half the rate: twice the wait"
        );
        // Revoked, then assigned again: the queue is back to what it was, not
        // a thousand times longer.
        t.set_share(0, 2);
        t.set_share(2, 2);
        let wait = next(&t).as_secs_f64();
        assert!((wait - 1.1).abs() < 1e-6, "{wait}");
    }

    #[test]
    fn a_worker_without_partitions_keeps_a_trickle_not_the_whole_rate() {
        let t = Throttle::with_clock(settings(100.0, 40), Arc::new(ManualClock::default()));
        t.set_share(0, 0);
        assert_eq!(t.share(), MIN_SHARE);
        t.set_share(0, 12);
        assert_eq!(t.share(), MIN_SHARE);
        assert_eq!(admitted(&t, "h", 100), 1);
    }

    #[test]
    fn unlimited_by_default_rate_zero() {
        let t = Throttle::with_clock(settings(0.0, 0), Arc::new(ManualClock::default()));
        assert_eq!(admitted(&t, "h", 10_000), 10_000);
    }

    #[test]
    fn idle_hosts_are_pruned() {
        let clock = Arc::new(ManualClock::default());
        let t = Throttle::with_clock(settings(10.0, 1), clock.clone());
        for h in ["a", "b", "c"] {
            t.reserve(h, FOREVER);
        }
        assert_eq!(t.tracked(), 3);
        clock.advance(Duration::from_secs(10));
        t.prune();
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn invalid_limits_name_the_key() {
        assert_eq!(settings(-1.0, 1).validate().unwrap_err().0, "limits.rate");
        assert_eq!(
            settings(5.0, 0).validate().unwrap_err(),
            (
                "limits.burst".into(),
                "must be at least 1 when a rate is set, got 0".into()
            )
        );
        assert_eq!(settings(1e-6, 1).validate().unwrap_err().0, "limits.rate");
        assert_eq!(
            settings(5.0, 2_000_000).validate().unwrap_err().0,
            "limits.burst"
        );
    }
}
