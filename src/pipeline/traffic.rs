//! A worker's traffic book: what it counted and the deliveries it last made,
//! published for the api every `traffic.flush_interval`.
//!
//! In: every recorded attempt (counts per integration, product and minute)
//! and the outcome of every sent request (the newest 10 successes and 10
//! errors per integration and product are kept). Out: [`StatsDelta`] records
//! on `kafka.stats_topic` and [`LogEntry`] records on `kafka.log_topic`, both
//! keyed by integration id. A sample is rendered for display only at flush
//! time, with secrets masked, so the send path pays a map update and a few
//! reference counts per attempt.
//!
//! Failure modes: a broker error at flush is logged and that flush's records
//! are lost (the counts in Prometheus and the deliveries themselves are not);
//! a worker killed outright loses the counts of its last interval.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::model::event::DeviceEvent;
use crate::model::integration::Integration;
use crate::model::outcome::{CountKey, Counts, Outcome, OutcomeKind};
use crate::model::secret_scopes::SecretPolicy;
use crate::model::secrets::Secrets;
use crate::model::variables::{EventContext, SecretMode};
use crate::pipeline::render::render;

/// Samples kept per (integration, product) and kind between flushes; the
/// api keeps as many.
pub const KEPT: usize = 10;
/// Response bodies are shown up to this many bytes.
pub const BODY_SHOWN: usize = 4096;

/// One minute of one (integration, product) from one worker: a delta to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsDelta {
    pub integration: String,
    pub product: Option<u32>,
    /// Start of the minute (UTC).
    pub minute: DateTime<Utc>,
    pub success: u64,
    pub error: u64,
    pub skipped: u64,
}

/// One delivery as the delivery log shows it; secrets masked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub integration: String,
    pub product: Option<u32>,
    pub at: DateTime<Utc>,
    /// `success` or `error` (skips are counted, not logged).
    pub outcome: OutcomeKind,
    /// The event as published.
    pub event: Value,
    /// `{"method","url","headers","body"}` as sent, secrets masked.
    pub request: Option<Value>,
    /// `{"status","body"}` when an answer came.
    pub response: Option<Value>,
    pub error: Option<String>,
}

/// An attempt's outcome kept for display, rendered at flush.
struct Sample {
    integration: Arc<Integration>,
    event: DeviceEvent,
    at: DateTime<Utc>,
    status: Option<u16>,
    body: Bytes,
    error: Option<String>,
}

#[derive(Default)]
struct Samples {
    successes: VecDeque<Sample>,
    errors: VecDeque<Sample>,
}

impl std::fmt::Debug for TrafficBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficBook").finish_non_exhaustive()
    }
}

/// Counts and samples since the last flush, on sharded maps: every delivery
/// counts and samples here.
#[derive(Default)]
pub struct TrafficBook {
    minutes: DashMap<(CountKey, DateTime<Utc>), Counts>,
    samples: DashMap<CountKey, Samples>,
}

impl TrafficBook {
    pub fn count(&self, integration: &Arc<str>, product: Option<u32>, kind: OutcomeKind) {
        let minute = minute_of(Utc::now());
        self.minutes
            .entry(((integration.clone(), product), minute))
            .or_default()
            .add(kind);
    }

    /// Keeps the attempt's outcome as one of the newest of its kind.
    pub fn sample(
        &self,
        integration: &Arc<Integration>,
        product: Option<u32>,
        event: &DeviceEvent,
        outcome: &Outcome,
    ) {
        let (status, error) = match &outcome.result {
            Ok(status) => (Some(*status), None),
            Err(e) => (None, Some(e.to_string())),
        };
        self.keep(
            integration,
            product,
            Sample {
                integration: integration.clone(),
                event: event.clone(),
                at: Utc::now(),
                status,
                body: outcome.body.clone(),
                error,
            },
            outcome.is_success(),
        );
    }

    /// Keeps an attempt that ended before sending (skipped, not rendered).
    pub fn sample_failure(
        &self,
        integration: &Arc<Integration>,
        product: Option<u32>,
        event: &DeviceEvent,
        error: String,
    ) {
        let sample = Sample {
            integration: integration.clone(),
            event: event.clone(),
            at: Utc::now(),
            status: None,
            body: Bytes::new(),
            error: Some(error),
        };
        self.keep(integration, product, sample, false);
    }

    fn keep(&self, integration: &Arc<Integration>, product: Option<u32>, s: Sample, success: bool) {
        let mut row = self
            .samples
            .entry((integration.id.clone(), product))
            .or_default();
        let list = if success {
            &mut row.successes
        } else {
            &mut row.errors
        };
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back(s);
    }

    /// Takes what was counted and sampled since the last call.
    fn drain(&self) -> (Vec<StatsDelta>, Vec<Sample>) {
        let deltas = take_all(&self.minutes)
            .into_iter()
            .map(|(((id, product), minute), c)| StatsDelta {
                integration: id.to_string(),
                product,
                minute,
                success: c.success,
                error: c.error,
                skipped: c.skipped,
            })
            .collect();
        let kept = take_all(&self.samples)
            .into_iter()
            .flat_map(|(_, s)| s.successes.into_iter().chain(s.errors))
            .collect();
        (deltas, kept)
    }

    /// Publishes every `interval` until `stop`, then once more.
    pub async fn run(
        self: Arc<Self>,
        producer: FutureProducer,
        topics: (String, String),
        secrets: SecretPolicy,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            self.flush(&producer, &topics, &secrets).await;
            if last {
                return;
            }
        }
    }

    async fn flush(
        &self,
        producer: &FutureProducer,
        (stats, log): &(String, String),
        secrets: &SecretPolicy,
    ) {
        let (deltas, samples) = self.drain();
        let mut records: Vec<(&str, String, Vec<u8>)> = deltas
            .iter()
            .map(|d| {
                (
                    stats.as_str(),
                    d.integration.clone(),
                    serde_json::to_vec(d).expect("a delta serializes"),
                )
            })
            .collect();
        for s in samples {
            // Masked with the secrets the integration's templates see, and
            // no others: masking another tenant's values would tell a
            // tenant echoing guesses which one is right.
            let visible = secrets.for_integration(&s.integration).clone();
            let entry = shown(s, &visible);
            records.push((
                log.as_str(),
                entry.integration.clone(),
                serde_json::to_vec(&entry).expect("an entry serializes"),
            ));
        }
        let sends = records.iter().map(|(topic, key, payload)| {
            producer.send(
                FutureRecord::<str, [u8]>::to(topic)
                    .key(key)
                    .payload(payload),
                Timeout::After(Duration::from_secs(10)),
            )
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                tracing::warn!(error = %e, "traffic record not published; the api's history misses it");
            }
        }
    }
}

/// Every entry of `map`, removed. An entry added meanwhile is taken now or
/// by the next call, never lost: each is removed under its shard's lock.
fn take_all<K, V>(map: &DashMap<K, V>) -> Vec<(K, V)>
where
    K: Eq + std::hash::Hash + Clone,
{
    let keys: Vec<K> = map.iter().map(|e| e.key().clone()).collect();
    keys.into_iter().filter_map(|k| map.remove(&k)).collect()
}

/// The sample as the delivery log shows it: the request re-rendered with
/// secrets masked, and any secret value echoed in the response or the error
/// replaced.
fn shown(s: Sample, secrets: &Secrets) -> LogEntry {
    // No event-wide bound here: the request rendered within the configured
    // one when it was sent; each template's own bounds still hold.
    let unbounded = crate::template::TemplateLimits {
        max_event_render_steps: std::num::NonZeroUsize::MAX,
        max_event_output_bytes: std::num::NonZeroUsize::MAX,
        ..Default::default()
    };
    let ctx = EventContext::new(s.event.clone(), secrets.clone(), SecretMode::Mask)
        .with_limits(&unbounded);
    let request = render(&s.integration, &ctx).ok().map(|r| r.to_json());
    let outcome = if s.status.is_some_and(|st| (200..300).contains(&st)) {
        OutcomeKind::Success
    } else {
        OutcomeKind::Error
    };

    LogEntry {
        integration: s.integration.id.to_string(),
        product: s.event.product_id,
        at: s.at,
        outcome,
        event: serde_json::from_str(&s.event.raw).unwrap_or(Value::String(s.event.raw.clone())),
        request,
        response: s.status.map(|status| {
            serde_json::json!({
                "status": status,
                "body": shown_body(&s.body, secrets),
            })
        }),
        error: s.error.map(|e| mask(&e, secrets)),
    }
}

/// A response body as shown: masked whole, then cut to [`BODY_SHOWN`]
/// bytes (cut first, a secret across the cut would show its start).
pub fn shown_body(body: &[u8], secrets: &Secrets) -> String {
    let mut text = mask(&String::from_utf8_lossy(body), secrets);
    if text.len() > BODY_SHOWN {
        let mut end = BODY_SHOWN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Replaces every configured secret's value in `text`, raw or in the
/// encodings destinations echo it in (`model::secrets::secret_forms`).
pub fn mask(text: &str, secrets: &Secrets) -> String {
    crate::model::secrets::mask_forms(text.into(), &crate::model::secrets::secret_forms(secrets))
        .into_owned()
}

/// The minute a delta is counted under.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::DurationRound;
    at.duration_trunc(chrono::TimeDelta::minutes(1))
        .expect("a minute divides any time")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Origin;
    use crate::model::outcome::Outcome;

    fn event() -> DeviceEvent {
        DeviceEvent::decode(
            br#"{"name":"temp","data":"21","published_at":"2024-05-13T10:55:40.306Z","coreid":"e00fce68aaaaaaaaaaaaaaaa","productID":7}"#,
            &Origin { topic: "e".into(), partition: 0, offset: 1 },
            Utc::now(),
        )
        .unwrap()
    }

    #[test]
    fn keeps_the_newest_ten_of_each_kind_and_masks_secrets() {
        let hook = Arc::new(
            Integration::from_value(serde_json::json!({
                "id": "h", "product_id": 7, "event": "temp",
                "url": "https://example.com/in?key={{{API_KEY}}}",
                "headers": {"Authorization": "Bearer {{{API_KEY}}}"}
            }))
            .unwrap(),
        );
        let book = TrafficBook::default();
        for n in 0..12u16 {
            let ok = Outcome {
                result: Ok(200),
                body: Bytes::from(format!("n={n} echo=s3cr3t-value")),
                elapsed: Duration::ZERO,
                retry_after: None,
                content_type: None,
            };
            book.sample(&hook, Some(7), &event(), &ok);
            book.count(&hook.id, Some(7), OutcomeKind::Success);
        }
        book.sample_failure(&hook, Some(7), &event(), "refused s3cr3t-value".into());
        book.count(&hook.id, Some(7), OutcomeKind::Skipped);
        let (deltas, samples) = book.drain();
        let total: u64 = deltas.iter().map(|d| d.success).sum();
        assert_eq!(total, 12);
        assert_eq!(deltas.iter().map(|d| d.skipped).sum::<u64>(), 1);
        assert_eq!(samples.len(), KEPT + 1);
        let secrets: Secrets = Arc::new([("API_KEY".to_owned(), "s3cr3t-value".to_owned())].into());
        let entries: Vec<LogEntry> = samples.into_iter().map(|s| shown(s, &secrets)).collect();
        assert_eq!(
            entries[0].response.as_ref().unwrap()["body"],
            "n=2 echo=[[SENSITIVE]]"
        );
        let text = serde_json::to_string(&entries).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("Bearer [[SENSITIVE]]"), "{text}");
        assert_eq!(
            serde_json::to_value(&entries[KEPT]).unwrap()["outcome"],
            "error"
        );
        assert_eq!(
            entries[KEPT].error.as_deref(),
            Some("refused [[SENSITIVE]]")
        );
        assert!(book.drain().0.is_empty(), "a flush takes everything");
    }
}
