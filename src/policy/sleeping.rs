//! Sleeping hosts: skip attempts to a destination host that is failing many
//! times in quick succession (docs/behaviour.md, "Sleeping hosts").
//!
//! In: every outcome per tenant and target hostname
//! ([`SleepingHosts::observe`]) and the question whether to attempt now
//! ([`SleepingHosts::admit`]). Out: admit or skip. The rating is per hostname
//! within a tenant (an organization, a product or a user): not per
//! integration or port, and, unlike Particle's rule, never shared across
//! tenants, so one tenant's failures against a shared host (a chat service,
//! a cloud ingest endpoint) never put it to sleep for the others.
//!
//! The rule. Successes and errors of a host are counted with exponential decay
//! (`half_life`). A host *falls asleep* when its decayed error count reaches
//! `trip_errors` while errors are at least `trip_ratio` of its outcomes. While
//! asleep, every attempt is skipped until `quiet` has passed without an error;
//! after that one probe attempt is let through per `probe_every`. The host
//! wakes (skipping falls back to zero) as soon as the decayed counts no longer
//! meet the trip condition: successful probes raise the success count, and
//! without any attempts the error count decays by half every `half_life`.
//! Defaults: half-life 30 s, trip at 10 (decayed) errors and 50 %, quiet 5 s, a probe
//! per second.

use std::collections::HashMap;
use std::time::Duration;

use dashmap::DashMap;

use crate::policy::clock::Clock;

/// The parameters of the rule (config `[sleeping]`).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepRule {
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    pub trip_errors: f64,
    pub trip_ratio: f64,
    #[serde(with = "humantime_serde")]
    pub quiet: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_every: Duration,
}

impl Default for SleepRule {
    fn default() -> Self {
        SleepRule {
            half_life: Duration::from_secs(30),
            trip_errors: 10.0,
            trip_ratio: 0.5,
            quiet: Duration::from_secs(5),
            probe_every: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct HostState {
    errors: f64,
    successes: f64,
    updated: Duration,
    last_error: Duration,
    last_probe: Duration,
    asleep: bool,
}

impl HostState {
    fn decay(&mut self, now: Duration, half_life: Duration) {
        let dt = now.saturating_sub(self.updated).as_secs_f64();
        let factor = 0.5f64.powf(dt / half_life.as_secs_f64().max(1e-9));
        self.errors *= factor;
        self.successes *= factor;
        self.updated = now;
    }

    fn tripped(&self, rule: &SleepRule) -> bool {
        self.errors >= rule.trip_errors
            && self.errors / (self.errors + self.successes) >= rule.trip_ratio
    }
}

/// Per-(tenant, hostname) health, shared by every delivery of a worker.
pub struct SleepingHosts<C: Clock> {
    rule: SleepRule,
    clock: C,
    /// Tenant → hostname → state. Sharded by tenant, so deliveries of
    /// different tenants rarely share a lock; only failing hosts are kept.
    tenants: DashMap<String, HashMap<String, HostState>>,
}

impl<C: Clock> SleepingHosts<C> {
    pub fn new(rule: SleepRule, clock: C) -> Self {
        SleepingHosts {
            rule,
            clock,
            tenants: DashMap::new(),
        }
    }

    /// Whether to attempt a delivery of `tenant`'s to `host` now; `false`
    /// means skip.
    pub fn admit(&self, tenant: &str, host: &str) -> bool {
        let now = self.clock.now();
        let Some(mut hosts) = self.tenants.get_mut(tenant) else {
            return true;
        };
        let Some(state) = hosts.get_mut(host) else {
            return true;
        };
        if !state.asleep {
            return true;
        }
        state.decay(now, self.rule.half_life);
        if !state.tripped(&self.rule) {
            state.asleep = false;
            return true;
        }
        if now.saturating_sub(state.last_error) < self.rule.quiet {
            return false;
        }
        if now.saturating_sub(state.last_probe) >= self.rule.probe_every {
            state.last_probe = now;
            return true;
        }
        false
    }

    /// Counts an attempt's outcome against `tenant`'s rating of `host`.
    pub fn observe(&self, tenant: &str, host: &str, success: bool) {
        let now = self.clock.now();
        let mut hosts = match self.tenants.get_mut(tenant) {
            Some(hosts) => hosts,
            // Healthy hosts cost no memory.
            None if success => return,
            None => self.tenants.entry(tenant.to_owned()).or_default(),
        };
        if success && !hosts.contains_key(host) {
            return;
        }
        let state = hosts.entry(host.to_owned()).or_insert(HostState {
            updated: now,
            ..HostState::default()
        });
        state.decay(now, self.rule.half_life);
        if success {
            state.successes += 1.0;
        } else {
            state.errors += 1.0;
            state.last_error = now;
        }
        state.asleep = state.tripped(&self.rule);
        if !state.asleep && state.errors < 0.01 {
            hosts.remove(host);
        }
    }

    pub fn is_asleep(&self, tenant: &str, host: &str) -> bool {
        self.tenants
            .get(tenant)
            .and_then(|hosts| hosts.get(host).map(|s| s.asleep))
            .unwrap_or(false)
    }

    /// Forgets hosts whose errors have decayed away, and tenants left with
    /// none; run periodically.
    pub fn prune(&self) {
        let now = self.clock.now();
        let half_life = self.rule.half_life;
        self.tenants.retain(|_, hosts| {
            hosts.retain(|_, s| {
                s.decay(now, half_life);
                s.asleep || s.errors >= 0.01
            });
            !hosts.is_empty()
        });
    }

    /// (tenant, host) ratings held.
    pub fn tracked(&self) -> usize {
        self.tenants.iter().map(|hosts| hosts.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::ManualClock;
    use std::sync::Arc;

    /// The tenant of most tests.
    const T: &str = "org:acme";

    fn hosts() -> (SleepingHosts<Arc<ManualClock>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        (
            SleepingHosts::new(SleepRule::default(), clock.clone()),
            clock,
        )
    }

    fn fail(h: &SleepingHosts<Arc<ManualClock>>, clock: &ManualClock, n: usize) {
        for _ in 0..n {
            h.observe(T, "h.example", false);
            clock.advance(Duration::from_millis(10));
        }
    }

    #[test]
    fn many_quick_failures_put_a_host_to_sleep() {
        let (h, clock) = hosts();
        fail(&h, &clock, 9);
        assert!(h.admit(T, "h.example"), "nine errors are not enough");
        fail(&h, &clock, 2);
        assert!(h.is_asleep(T, "h.example"));
        assert!(!h.admit(T, "h.example"));
        assert!(h.admit(T, "other.example"), "per hostname");
        assert!(
            h.admit("org:other", "h.example"),
            "per tenant: another tenant's deliveries to the same host go on"
        );
        assert!(!h.is_asleep("org:other", "h.example"));
        h.observe("org:other", "h.example", true);
        assert!(!h.admit(T, "h.example"), "and cannot wake it for this one");
    }

    #[test]
    fn slow_failures_never_trip() {
        let (h, clock) = hosts();
        for _ in 0..100 {
            h.observe(T, "h.example", false);
            clock.advance(Duration::from_secs(30));
        }
        assert!(h.admit(T, "h.example"));
    }

    #[test]
    fn mostly_successful_hosts_never_trip() {
        let (h, clock) = hosts();
        for _ in 0..30 {
            h.observe(T, "h.example", false);
            h.observe(T, "h.example", true);
            h.observe(T, "h.example", true);
            clock.advance(Duration::from_millis(10));
        }
        assert!(h.admit(T, "h.example"), "errors are a third of outcomes");
    }

    #[test]
    fn quiet_period_then_probes_then_awake() {
        let (h, clock) = hosts();
        fail(&h, &clock, 20);
        clock.advance(Duration::from_secs(4));
        assert!(!h.admit(T, "h.example"), "within the quiet period");
        clock.advance(Duration::from_secs(2));
        assert!(h.admit(T, "h.example"), "a probe after 5 s without errors");
        assert!(!h.admit(T, "h.example"), "one probe per second");
        // Probes succeed: the success ratio improves until the host wakes.
        let mut admitted = 0;
        for _ in 0..20 {
            clock.advance(Duration::from_secs(1));
            if h.admit(T, "h.example") {
                admitted += 1;
                h.observe(T, "h.example", true);
            }
            if !h.is_asleep(T, "h.example") {
                break;
            }
        }
        assert!(
            !h.is_asleep(T, "h.example"),
            "awake after {admitted} good probes"
        );
        assert!(
            (0..10).all(|_| h.admit(T, "h.example")),
            "skipping is back to zero"
        );
    }

    #[test]
    fn a_failed_probe_restarts_the_quiet_period() {
        let (h, clock) = hosts();
        fail(&h, &clock, 20);
        clock.advance(Duration::from_secs(6));
        assert!(h.admit(T, "h.example"));
        h.observe(T, "h.example", false);
        clock.advance(Duration::from_secs(2));
        assert!(!h.admit(T, "h.example"));
    }

    #[test]
    fn errors_decay_without_traffic_and_hosts_are_pruned() {
        let (h, clock) = hosts();
        fail(&h, &clock, 20);
        clock.advance(Duration::from_secs(120));
        assert!(
            h.admit(T, "h.example"),
            "two minutes of silence decay 20 errors below the trip"
        );
        clock.advance(Duration::from_secs(300));
        h.prune();
        assert_eq!(h.tracked(), 0);
    }
}
