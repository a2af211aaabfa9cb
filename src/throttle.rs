//! Throttle: per-destination rate limits (governor keyed limiters, key =
//! destination host).
//!
//! In: the host of each request about to be sent. Out: [`Decision::Go`], or
//! [`Decision::Wait`] with how long until the host's quota allows it. The
//! caller waits only for its own host (other hosts' deliveries never queue
//! behind it), and hands a delivery that would wait longer than
//! `limits.max_wait` to the retry topic as *deferred*, so the consumer keeps
//! flowing.
//!
//! A fleet enforces one limit together: each worker takes the share of every
//! quota in proportion to its assigned partitions of the events topic
//! ([`Throttle::set_share`], called on every rebalance).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::Deserialize;

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
    /// Longer waits are deferred to the retry topic instead.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostLimit>,
}

impl LimitSettings {
    /// Names the key and value of the first invalid limit.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let check = |key: String, l: HostLimit| {
            if !(l.rate >= 0.0 && l.rate.is_finite()) {
                return Err((
                    format!("{key}.rate"),
                    format!("must be 0 (no limit) or a positive number, got {}", l.rate),
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
    Wait(Duration),
}

type Keyed<C> = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    C,
    NoOpMiddleware<<C as GovernorClock>::Instant>,
>;

/// The limiters of one share; rebuilt as a whole when the share changes.
struct Limiters<C: GovernorClock> {
    default: Option<Keyed<C>>,
    /// Hosts with their own limit; `None` inside: that host is unlimited.
    overrides: HashMap<String, Option<Keyed<C>>>,
}

pub struct Throttle<C: GovernorClock + Clone = DefaultClock> {
    settings: LimitSettings,
    clock: C,
    limiters: ArcSwap<Limiters<C>>,
}

impl Throttle<DefaultClock> {
    pub fn new(settings: LimitSettings) -> Self {
        Throttle::with_clock(settings, DefaultClock::default())
    }
}

impl<C: GovernorClock + Clone> Throttle<C> {
    pub fn with_clock(settings: LimitSettings, clock: C) -> Self {
        let limiters = ArcSwap::from_pointee(build(&settings, 1.0, &clock));
        Throttle {
            settings,
            clock,
            limiters,
        }
    }

    pub fn check(&self, host: &str) -> Decision {
        let limiters = self.limiters.load();
        let limiter = match limiters.overrides.get(host) {
            Some(l) => l.as_ref(),
            None => limiters.default.as_ref(),
        };
        let Some(limiter) = limiter else {
            return Decision::Go;
        };
        match limiter.check_key(&host.to_owned()) {
            Ok(()) => Decision::Go,
            Err(not_until) => Decision::Wait(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// This worker's share of the fleet's limits, `assigned / total`
    /// partitions of the events topic. Rebuilds the limiters.
    pub fn set_share(&self, assigned: usize, total: usize) {
        let share = if total == 0 {
            1.0
        } else {
            (assigned as f64 / total as f64).clamp(0.0, 1.0)
        };
        self.limiters.store(std::sync::Arc::new(build(
            &self.settings,
            share,
            &self.clock,
        )));
    }

    pub fn max_wait(&self) -> Duration {
        self.settings.max_wait
    }

    /// Forgets hosts whose limiter state is back to full; run periodically so
    /// keys of hosts no longer sent to do not accumulate.
    pub fn prune(&self) {
        let limiters = self.limiters.load();
        for l in limiters
            .default
            .iter()
            .chain(limiters.overrides.values().flatten())
        {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Hosts with limiter state held.
    pub fn tracked(&self) -> usize {
        let limiters = self.limiters.load();
        limiters
            .default
            .iter()
            .chain(limiters.overrides.values().flatten())
            .map(|l| l.len())
            .sum()
    }
}

fn build<C: GovernorClock + Clone>(s: &LimitSettings, share: f64, clock: &C) -> Limiters<C> {
    let limiter = |l: HostLimit| -> Option<Keyed<C>> {
        let quota = quota(l, share)?;
        Some(RateLimiter::new(
            quota,
            DefaultKeyedStateStore::default(),
            clock.clone(),
        ))
    };
    Limiters {
        default: limiter(HostLimit {
            rate: s.rate,
            burst: s.burst,
        }),
        overrides: s
            .hosts
            .iter()
            .map(|(h, l)| (h.clone(), limiter(*l)))
            .collect(),
    }
}

/// `l` scaled by `share`; `None` for no limit. A share of 0 (no partitions
/// assigned) still allows a trickle rather than nothing.
fn quota(l: HostLimit, share: f64) -> Option<Quota> {
    if l.rate <= 0.0 {
        return None;
    }
    let share = share.max(1e-3);
    let period = Duration::from_secs_f64(1.0 / (l.rate * share));
    let burst =
        NonZeroU32::new(((l.burst as f64 * share).round() as u32).max(1)).expect("at least 1");
    Some(Quota::with_period(period)?.allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn settings(rate: f64, burst: u32) -> LimitSettings {
        LimitSettings {
            rate,
            burst,
            max_wait: Duration::from_secs(1),
            hosts: BTreeMap::new(),
        }
    }

    fn admitted(t: &Throttle<FakeRelativeClock>, host: &str, n: usize) -> usize {
        (0..n).filter(|_| t.check(host) == Decision::Go).count()
    }

    #[test]
    fn burst_then_rate() {
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(settings(10.0, 5), clock.clone());
        assert_eq!(admitted(&t, "a", 20), 5, "the burst");
        assert_eq!(t.check("a"), Decision::Wait(Duration::from_millis(100)));
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
    fn hosts_are_limited_independently_with_overrides() {
        let clock = FakeRelativeClock::default();
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
            t.check("slow.example"),
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
        let clock = FakeRelativeClock::default();
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
        assert_eq!(admitted(&t, "h", 100), 40, "rebalanced to all partitions");
    }

    #[test]
    fn unlimited_by_default_rate_zero() {
        let t = Throttle::with_clock(settings(0.0, 0), FakeRelativeClock::default());
        assert_eq!(admitted(&t, "h", 10_000), 10_000);
    }

    #[test]
    fn idle_hosts_are_pruned() {
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(settings(10.0, 5), clock.clone());
        for h in ["a", "b", "c"] {
            t.check(h);
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
    }
}
