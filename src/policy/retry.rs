//! Retries: failed or skipped attempts wait in Kafka, not in memory.
//!
//! In: an attempt that failed (or was skipped, or deferred by the throttle),
//! with the history so far. Out: a [`RetryRecord`] for the retry topic of its
//! step (`<prefix>.<delay>`, e.g. `hookd.retry.30s`) with its due time, or the
//! decision to dead-letter it when the schedule is exhausted. Whichever worker
//! owns the retry partition delivers it when due; a worker killed with
//! retries pending loses none, as they are records in Kafka whose offsets are
//! committed only once handled.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::event::Origin;

/// Config `[retry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Delay before each retry; attempts = 1 + delays.
    #[serde(deserialize_with = "durations")]
    pub delays: Vec<Duration>,
    pub topic_prefix: String,
    /// Retries held by this worker waiting for their due time.
    #[serde(deserialize_with = "crate::template::at_least_one")]
    pub max_waiting: NonZeroUsize,
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!("{s:?} is not a duration like \"30s\": {e}"))
            })
        })
        .collect()
}

impl RetrySettings {
    /// The topic of retry step `step` (0-based).
    pub fn topic(&self, step: usize) -> String {
        let d = self.delays[step];
        let label = if d.subsec_millis() == 0 {
            format!("{}s", d.as_secs())
        } else {
            format!("{}ms", d.as_millis())
        };
        format!("{}.{label}", self.topic_prefix)
    }

    pub fn topics(&self) -> Vec<String> {
        (0..self.delays.len()).map(|s| self.topic(s)).collect()
    }

    /// Where attempt `attempt` (1-based) goes after failing.
    pub fn after_failure(&self, attempt: u32, retry_after: Option<Duration>, now_ms: i64) -> Next {
        let step = attempt as usize - 1;
        if step >= self.delays.len() {
            return Next::DeadLetter;
        }
        let (min, max) = (
            self.delays[0],
            *self.delays.last().expect("delays is not empty here"),
        );
        // `max(min).min(max)`, not `clamp`: clamp panics when min > max,
        // and a panic here would end a delivery task.
        let delay = retry_after
            .map(|r| r.max(min).min(max))
            .unwrap_or(self.delays[step]);
        Next::Retry {
            topic: self.topic(self.step_for(delay)),
            due_at_ms: now_ms + delay.as_millis() as i64,
        }
    }

    /// The step whose topic a record due in `delay` waits in: the first whose
    /// delay is at least as long (else the last). A retry topic is read in
    /// order and its partition paused until the head is due, so a record
    /// due later than its topic's delay would hold up those behind it.
    pub fn step_for(&self, delay: Duration) -> usize {
        self.delays
            .iter()
            .position(|d| *d >= delay)
            .unwrap_or(self.delays.len().saturating_sub(1))
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Retry { topic: String, due_at_ms: i64 },
    DeadLetter,
}

/// One past attempt, kept with the retry and in the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    pub attempt: u32,
    /// RFC 3339.
    pub at: String,
    pub outcome: AttemptOutcome,
}

/// How a past attempt ended. Written as `skipped`, `deferred`, or the
/// error's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Its host was asleep.
    Skipped,
    /// Its host's rate limit sent it to a retry topic.
    Deferred,
    /// Sent or rendered, and failed.
    Failed(String),
}

impl AttemptOutcome {
    pub fn as_str(&self) -> &str {
        match self {
            AttemptOutcome::Skipped => "skipped",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Failed(error) => error,
        }
    }
}

impl From<&str> for AttemptOutcome {
    fn from(text: &str) -> AttemptOutcome {
        match text {
            "skipped" => AttemptOutcome::Skipped,
            "deferred" => AttemptOutcome::Deferred,
            error => AttemptOutcome::Failed(error.to_owned()),
        }
    }
}

impl Serialize for AttemptOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AttemptOutcome, D::Error> {
        Ok(AttemptOutcome::from(
            <std::borrow::Cow<'de, str>>::deserialize(d)?.as_ref(),
        ))
    }
}

/// Why a retry was dropped rather than attempted: its integration no
/// longer executes on its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDropped {
    Deleted,
    Disabled,
    /// The retry record's event no longer decodes.
    Invalid,
    /// Its product was separated from the org integration.
    Separated,
    /// Its product left the integration's list, or its owner, device or
    /// prefix changed.
    OutOfScope,
}

impl RetryDropped {
    pub fn as_label(self) -> &'static str {
        match self {
            RetryDropped::Deleted => "deleted",
            RetryDropped::Disabled => "disabled",
            RetryDropped::Invalid => "invalid",
            RetryDropped::Separated => "separated",
            RetryDropped::OutOfScope => "out_of_scope",
        }
    }
}

/// A delivery waiting for its next attempt. The event travels whole (its
/// original record and origin), so the retry renders exactly what the first
/// attempt did and carries the same idempotency key.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRecord {
    /// The original record's text.
    pub event: String,
    pub origin: Origin,
    pub integration: String,
    /// Written even when `None` (`"product":null`), as before.
    #[serialize_always]
    pub product: Option<u32>,
    /// The attempt to make (1-based; 2 is the first retry). A deferred
    /// attempt keeps its number.
    pub attempt: u32,
    pub due_at_ms: i64,
    pub history: Vec<AttemptLog>,
    /// The event's `published_at` as the first attempt rendered it, for
    /// events that carried none (they take their record's time).
    #[serde(default)]
    pub published_at: Option<String>,
}

impl RetryRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a retry record always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_outcomes_are_written_as_before() {
        for (outcome, text) in [
            (AttemptOutcome::Skipped, "skipped"),
            (AttemptOutcome::Deferred, "deferred"),
            (
                AttemptOutcome::Failed("error status 503".into()),
                "error status 503",
            ),
        ] {
            let json = serde_json::to_string(&outcome).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<AttemptOutcome>(&json).unwrap(),
                outcome
            );
        }
    }

    fn settings() -> RetrySettings {
        RetrySettings {
            delays: vec![Duration::from_secs(30), Duration::from_secs(60)],
            topic_prefix: "hookd.retry".into(),
            max_waiting: NonZeroUsize::new(100).unwrap(),
        }
    }

    #[test]
    fn the_schedule_then_dead_letter() {
        let s = settings();
        assert_eq!(s.topics(), ["hookd.retry.30s", "hookd.retry.60s"]);
        assert_eq!(
            s.after_failure(1, None, 1000),
            Next::Retry {
                topic: "hookd.retry.30s".into(),
                due_at_ms: 31_000
            }
        );
        assert_eq!(
            s.after_failure(2, None, 1000),
            Next::Retry {
                topic: "hookd.retry.60s".into(),
                due_at_ms: 61_000
            }
        );
        assert_eq!(s.after_failure(3, None, 1000), Next::DeadLetter);
    }

    #[test]
    fn retry_after_is_clamped_to_the_schedule() {
        let s = settings();
        let due = |r: u64| match s.after_failure(1, Some(Duration::from_secs(r)), 0) {
            Next::Retry { due_at_ms, .. } => due_at_ms,
            Next::DeadLetter => panic!(),
        };
        assert_eq!(due(45), 45_000);
        assert_eq!(due(1), 30_000, "no sooner than the first delay");
        assert_eq!(due(3600), 60_000, "no later than the last");
        // Waiting in the topic of a delay at least that long, so that the
        // records behind it in the 30 s topic are not held up.
        assert_eq!(
            s.after_failure(1, Some(Duration::from_secs(45)), 0),
            Next::Retry {
                topic: "hookd.retry.60s".into(),
                due_at_ms: 45_000
            }
        );
        assert_eq!(s.step_for(Duration::from_secs(10)), 0);
        assert_eq!(s.step_for(Duration::from_secs(30)), 0);
        assert_eq!(s.step_for(Duration::from_secs(31)), 1);
        assert_eq!(s.step_for(Duration::from_secs(600)), 1);
    }
}
