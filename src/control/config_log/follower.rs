//! Following `hookd.config`: replay from the beginning, then live.
//!
//! In: the config topic (one partition, read by assignment: every reader
//! reads everything). Out: the [`ConfigState`] as of the last record read,
//! the dispatch [`IndexHandle`] swapped after each batch of records, the
//! outcome of each recent record (for the api's read-your-writes), and a
//! caught-up signal once the replay reached the end offset seen at start.
//!
//! Failure modes: a refused record is counted
//! (`hookd_config_records_invalid_total{source="kafka"}`) and logged with its
//! reason, and changes nothing; a broker error is logged and reading resumes.
//! A topic with more than one partition is refused at start, because records
//! of different partitions have no order between them and readers could then
//! disagree.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::state::{Applied, ConfigState, RecordRefused};
use crate::pipeline::resolve::IndexHandle;
use crate::runtime::config::KafkaSettings;
use crate::runtime::telemetry::{CONFIG_APPLIED, CONFIG_INVALID};
use crate::template::TemplateLimits;

/// Outcomes kept for writers to look up; a writer asks within seconds.
const OUTCOMES_KEPT: usize = 4096;
/// Records applied per batch at most: a burst of changes coalesces into one
/// index swap, and a long replay still reports its progress.
const BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigLogError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("config topic {topic:?} has {partitions} partitions; it must have exactly 1, so that every reader applies its records in one order")]
    Partitions { topic: String, partitions: usize },
    #[error("config topic {0:?} does not exist (create it, or set kafka.create_topics = true)")]
    Missing(String),
}

/// The outcome of one record of the log.
pub type Outcome = Result<Applied, RecordRefused>;

/// One reader's view of the config log.
pub struct ConfigLog {
    topic: String,
    state: RwLock<ConfigState>,
    /// Swapped after each batch; `None` for readers that do not dispatch.
    index: Option<IndexHandle>,
    /// The next offset to read: every record below it is applied.
    position: watch::Sender<i64>,
    caught_up: watch::Sender<bool>,
    outcomes: Mutex<BTreeMap<i64, Outcome>>,
    /// Keys of records refused after the replay, for the api's repair.
    refused: broadcast::Sender<String>,
    /// The follower, until [`ConfigLog::stopped`] has waited for it.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ConfigLog {
    /// Creates the topic if asked, checks it has one partition and starts
    /// following it from the beginning until `shutdown`.
    pub async fn start(
        k: &KafkaSettings,
        index: Option<IndexHandle>,
        limits: TemplateLimits,
        shutdown: CancellationToken,
    ) -> Result<Arc<ConfigLog>, ConfigLogError> {
        let topic = k.config_topic.clone();
        if k.create_topics {
            crate::runtime::kafka::ensure_topic_specs(
                k,
                &[crate::runtime::kafka::TopicSpec {
                    name: &topic,
                    partitions: 1,
                    configs: &[("cleanup.policy", "compact")],
                }],
            )
            .await?;
        }
        let consumer: StreamConsumer = crate::runtime::kafka::reader_config(k).create()?;
        let (consumer, end) = tokio::task::spawn_blocking({
            let topic = topic.clone();
            move || -> Result<_, ConfigLogError> {
                let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
                let partitions = metadata
                    .topics()
                    .first()
                    .map(|t| t.partitions().len())
                    .unwrap_or(0);
                match partitions {
                    0 => return Err(ConfigLogError::Missing(topic)),
                    1 => {}
                    n => {
                        return Err(ConfigLogError::Partitions {
                            topic,
                            partitions: n,
                        })
                    }
                }
                let (_, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10))?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
                consumer.assign(&tpl)?;
                Ok((consumer, high))
            }
        })
        .await
        .expect("the metadata task does not panic")?;

        let log = Arc::new(ConfigLog {
            topic,
            state: RwLock::new(ConfigState::with_limits(limits)),
            index,
            position: watch::channel(0).0,
            caught_up: watch::channel(false).0,
            outcomes: Mutex::new(BTreeMap::new()),
            refused: broadcast::channel(1024).0,
            task: Mutex::new(None),
        });
        tracing::info!(topic = %log.topic, end, "replaying the config log");
        if end <= 0 {
            log.caught_up.send_replace(true);
        }
        let task = tokio::spawn(log.clone().follow(consumer, end, shutdown));
        *log.task.lock().expect("task lock is never poisoned") = Some(task);
        Ok(log)
    }

    /// Waits, after `shutdown`, until the follower has stopped and its
    /// consumer is closed: a caller that stops the broker (the demo's
    /// embedded one) or the process does so after this, so no client is
    /// left talking to a broker that is gone.
    pub async fn stopped(&self) {
        let task = self
            .task
            .lock()
            .expect("task lock is never poisoned")
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The config as of the last record read.
    pub fn state(&self) -> RwLockReadGuard<'_, ConfigState> {
        self.state
            .read()
            .expect("config state lock is never poisoned")
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Resolves once the replay reached the end the log had at start.
    pub async fn caught_up(&self) {
        let mut rx = self.caught_up.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Keys of records refused from now on (live, not during the replay,
    /// whose refusals were handled when they were live).
    pub fn refused_keys(&self) -> broadcast::Receiver<String> {
        self.refused.subscribe()
    }

    /// Waits until the record at `offset` is applied and returns its
    /// outcome; `None` past `timeout`.
    pub async fn outcome_of(&self, offset: i64, timeout: Duration) -> Option<Outcome> {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p > offset))
            .await
            .ok()?
            .ok()?;
        self.outcomes
            .lock()
            .expect("outcomes lock is never poisoned")
            .get(&offset)
            .cloned()
    }

    async fn follow(
        self: Arc<Self>,
        consumer: StreamConsumer,
        end: i64,
        shutdown: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            let mut next = match first {
                Ok(m) => {
                    self.apply(&m);
                    m.offset() + 1
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "reading the config log failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            // Whatever else is already fetched joins this batch: one swap
            // for a burst of changes.
            for _ in 1..BATCH {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => {
                        self.apply(&m);
                        next = m.offset() + 1;
                    }
                    _ => break,
                }
            }
            let replayed = next >= end;
            // Mid-replay the index would only show a past config: build it
            // once the replay is done, then after every batch.
            if let (Some(index), true) = (&self.index, replayed) {
                // O(integrations) (~0.2 s at 100k, BENCHMARKS.md): off the
                // runtime's threads and below their priority, so deliveries
                // keep flowing meanwhile.
                let log = self.clone();
                if let Some(built) =
                    crate::runtime::background::run("index", move || log.state().index()).await
                {
                    index.swap(built);
                }
            }
            self.position.send_replace(next);
            if replayed && !self.is_caught_up() {
                tracing::info!(topic = %self.topic, integrations = self.state().integrations().count(), "config log replayed");
                self.caught_up.send_replace(true);
            }
        }
    }

    fn apply(&self, m: &BorrowedMessage<'_>) {
        let offset = m.offset();
        let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
        let outcome = self
            .state
            .write()
            .expect("config state lock is never poisoned")
            .apply(&key, m.payload());
        match &outcome {
            Ok(applied) => {
                metrics::counter!(CONFIG_APPLIED).increment(1);
                tracing::debug!(key = %key, offset, ?applied, "config record applied");
            }
            Err(refused) => {
                metrics::counter!(CONFIG_INVALID, "source" => "kafka").increment(1);
                tracing::warn!(key = %key, offset, reason = %refused, "config record refused; the previous version keeps running");
                if self.is_caught_up() && !matches!(refused, RecordRefused::Key(_)) {
                    let _ = self.refused.send(key.clone().into_owned());
                }
            }
        }
        let mut outcomes = self
            .outcomes
            .lock()
            .expect("outcomes lock is never poisoned");
        outcomes.insert(offset, outcome);
        while outcomes.len() > OUTCOMES_KEPT {
            outcomes.pop_first();
        }
    }
}
