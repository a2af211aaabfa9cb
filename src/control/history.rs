//! The api's traffic history: the workers' deltas and samples aggregated.
//!
//! In: every record of `kafka.stats_topic` ([`StatsDelta`]) and
//! `kafka.log_topic` ([`LogEntry`]), read from the beginning at start (so a
//! restarted api rebuilds what it showed) and then live. Out: daily counts
//! per (integration, product) for `api.history_days`, and the newest 10
//! successes and 10 errors per integration and per (integration, product).
//! Deltas of several workers for the same minute add up.
//!
//! Failure modes: an undecodable record is logged and skipped; history
//! older than the topics' retention is gone after a restart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::model::outcome::{Counts, OutcomeKind};
use crate::pipeline::traffic::{LogEntry, StatsDelta, KEPT};
use crate::runtime::config::KafkaSettings;

/// Whose traffic of an integration is shown: all of it, or one product's
/// (an org integration seen under one of its products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    All,
    One(u32),
}

impl Products {
    /// Whether traffic counted under `product` is shown.
    pub fn admits(self, product: Option<u32>) -> bool {
        match self {
            Products::All => true,
            Products::One(p) => product == Some(p),
        }
    }
}

/// The newest successes and errors of one integration (or one product of it).
#[derive(Debug, Default, Clone)]
pub struct Recent {
    pub successes: VecDeque<LogEntry>,
    pub errors: VecDeque<LogEntry>,
}

impl Recent {
    fn add(&mut self, e: LogEntry) {
        let list = if e.outcome == OutcomeKind::Success {
            &mut self.successes
        } else {
            &mut self.errors
        };
        // Workers flush independently: keep the list in time order.
        let at = list.partition_point(|x| x.at <= e.at);
        list.insert(at, e);
        while list.len() > KEPT {
            list.pop_front();
        }
    }
}

type Daily = BTreeMap<(NaiveDate, Option<u32>), Counts>;

#[derive(Default)]
struct Inner {
    daily: HashMap<String, Daily>,
    recent: HashMap<String, Recent>,
    recent_by_product: HashMap<(String, Option<u32>), Recent>,
    /// The oldest day kept, moved forward as days pass.
    horizon: Option<NaiveDate>,
}

/// Aggregated traffic, shared by the api's handlers.
pub struct History {
    days: u32,
    inner: RwLock<Inner>,
}

impl History {
    /// A history of the last `days` days (today included).
    pub fn new(days: std::num::NonZeroU32) -> History {
        History {
            days: days.get(),
            inner: RwLock::default(),
        }
    }

    pub fn days(&self) -> u32 {
        self.days
    }

    fn first_day(&self, today: NaiveDate) -> NaiveDate {
        today - chrono::Days::new(u64::from(self.days) - 1)
    }

    pub fn add_delta(&self, d: &StatsDelta) {
        let day = d.minute.date_naive();
        let first = self.first_day(Utc::now().date_naive());
        if day < first {
            return;
        }
        let mut inner = self.inner.write().expect("history lock is never poisoned");
        if inner.horizon != Some(first) {
            inner.horizon = Some(first);
            for daily in inner.daily.values_mut() {
                daily.retain(|(day, _), _| *day >= first);
            }
        }
        let c = inner
            .daily
            .entry(d.integration.clone())
            .or_default()
            .entry((day, d.product))
            .or_default();
        *c += Counts {
            success: d.success,
            error: d.error,
            skipped: d.skipped,
        };
    }

    pub fn add_entry(&self, e: LogEntry) {
        let mut inner = self.inner.write().expect("history lock is never poisoned");
        inner
            .recent_by_product
            .entry((e.integration.clone(), e.product))
            .or_default()
            .add(e.clone());
        inner
            .recent
            .entry(e.integration.clone())
            .or_default()
            .add(e);
    }

    /// Daily counts of `integration` within the kept days, per product.
    pub fn daily(&self, integration: &str) -> Vec<(NaiveDate, Option<u32>, Counts)> {
        let first = self.first_day(Utc::now().date_naive());
        let inner = self.inner.read().expect("history lock is never poisoned");
        inner
            .daily
            .get(integration)
            .map(|d| {
                d.range((first, None)..)
                    .map(|((day, p), c)| (*day, *p, *c))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Counts of `integration` summed over its products (or of one product),
    /// since `since` (a UTC day).
    pub fn total(&self, integration: &str, products: Products, since: NaiveDate) -> Counts {
        self.daily(integration)
            .into_iter()
            .filter(|(day, p, _)| *day >= since && products.admits(*p))
            .fold(Counts::default(), |mut acc, (_, _, c)| {
                acc += c;
                acc
            })
    }

    /// The newest deliveries of `integration`, or of one of its products.
    pub fn recent(&self, integration: &str, products: Products) -> Recent {
        let inner = self.inner.read().expect("history lock is never poisoned");
        match products {
            Products::All => inner.recent.get(integration).cloned(),
            Products::One(p) => inner
                .recent_by_product
                .get(&(integration.to_owned(), Some(p)))
                .cloned(),
        }
        .unwrap_or_default()
    }

    /// The first day of the window ending today (UTC).
    pub fn window_start(&self) -> NaiveDate {
        self.first_day(Utc::now().date_naive())
    }

    /// Reads the stats and log topics from the beginning, then live, until
    /// `shutdown`; the task ends once its consumer is closed.
    pub async fn follow(
        self: Arc<Self>,
        k: &KafkaSettings,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, KafkaError> {
        let consumer: StreamConsumer = crate::runtime::kafka::reader_config(k).create()?;
        let topics = [k.stats_topic.clone(), k.log_topic.clone()];
        let consumer = tokio::task::spawn_blocking(move || -> Result<_, KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                    }
                }
            }
            consumer.assign(&tpl)?;
            Ok(consumer)
        })
        .await
        .expect("the metadata task does not panic")?;
        let stats_topic = k.stats_topic.clone();
        Ok(tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = consumer.recv() => m,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading traffic failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let payload = m.payload().unwrap_or_default();
                let decoded = if m.topic() == stats_topic {
                    serde_json::from_slice::<StatsDelta>(payload).map(|d| self.add_delta(&d))
                } else {
                    serde_json::from_slice::<LogEntry>(payload).map(|e| self.add_entry(e))
                };
                if let Err(e) = decoded {
                    tracing::warn!(error = %e, topic = m.topic(), offset = m.offset(), "undecodable traffic record skipped");
                }
            }
        }))
    }
}

/// Today's first instant (UTC), for "today" counts.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::traffic::minute_of;
    use chrono::DateTime;

    fn delta(integration: &str, product: u32, minute: DateTime<Utc>, success: u64) -> StatsDelta {
        StatsDelta {
            integration: integration.into(),
            product: Some(product),
            minute,
            success,
            error: 1,
            skipped: 0,
        }
    }

    #[test]
    fn deltas_of_several_workers_add_up_per_day_and_product() {
        let h = History::new(std::num::NonZeroU32::new(30).unwrap());
        let now = minute_of(Utc::now());
        h.add_delta(&delta("o", 1, now, 5));
        h.add_delta(&delta("o", 1, now, 7));
        h.add_delta(&delta("o", 2, now, 3));
        h.add_delta(&delta("o", 2, now - chrono::Days::new(2), 4));
        h.add_delta(&delta("o", 2, now - chrono::Days::new(45), 100));
        assert_eq!(h.total("o", Products::All, today()).success, 15);
        assert_eq!(h.total("o", Products::One(1), today()).success, 12);
        assert_eq!(
            h.total("o", Products::All, h.window_start()).success,
            19,
            "45 days ago is outside"
        );
        assert_eq!(h.total("o", Products::All, h.window_start()).error, 4);
        assert_eq!(h.daily("o").len(), 3);
    }

    #[test]
    fn keeps_the_newest_ten_in_time_order() {
        let h = History::new(std::num::NonZeroU32::new(30).unwrap());
        let base = Utc::now();
        for n in (0..15).rev() {
            h.add_entry(LogEntry {
                integration: "o".into(),
                product: Some(n % 2),
                at: base + chrono::TimeDelta::seconds(n.into()),
                outcome: OutcomeKind::Success,
                event: serde_json::Value::Null,
                request: None,
                response: None,
                error: None,
            });
        }
        let r = h.recent("o", Products::All);
        assert_eq!(r.successes.len(), 10);
        assert_eq!(
            r.successes.back().unwrap().at,
            base + chrono::TimeDelta::seconds(14)
        );
        assert_eq!(
            r.successes.front().unwrap().at,
            base + chrono::TimeDelta::seconds(5)
        );
        assert_eq!(h.recent("o", Products::One(1)).successes.len(), 7);
        assert!(h.recent("o", Products::All).errors.is_empty());
    }
}
