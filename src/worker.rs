//! The worker: consume → resolve → render → deliver → record, at least once.
//!
//! In: the events topic (consumer group `kafka.group_id`) and the live
//! [`IndexHandle`]. Out: webhooks sent, outcomes recorded, undecodable records
//! on the dead-letter topic, and offsets committed only behind completely
//! handled events ([`OffsetLedger`]).
//!
//! Backpressure: a permit per event in flight (`worker.max_inflight_events`)
//! is taken before a record is pulled, and a permit per request
//! (`worker.max_inflight_deliveries`) before it is sent; every event's fan-out
//! runs in its own task, so a slow destination holds only its own permits.
//!
//! Shutdown: cancelling the token stops the intake; deliveries in flight get
//! `worker.shutdown_grace` to finish; then the commit points are committed
//! synchronously and [`Worker::run`] returns. Whatever did not finish is not
//! committed and is redelivered to the partition's next owner.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::dead_letter::DeadLetter;
use crate::deliver::{Deliverer, DeliveryError, Outcome};
use crate::event::{DeviceEvent, Origin};
use crate::offsets::{OffsetLedger, Ticket};
use crate::record::{Recorder, Tally};
use crate::render::{render, EventContext, SecretMode, Secrets};
use crate::resolve::{IndexHandle, Match};
use crate::telemetry::{EVENTS_CONSUMED, EVENTS_INVALID, EVENTS_UNMATCHED, INFLIGHT_DELIVERIES};

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// Set once the worker consumes with its integrations loaded; `/readyz`
/// answers from it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Forgets revoked partitions in the ledger, so late completions of their
/// old work cannot store offsets for the next assignment.
struct WorkerContext {
    ledger: Arc<OffsetLedger>,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.ledger.revoke(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
    }
}

type EventConsumer = StreamConsumer<WorkerContext>;

/// What every event task needs; cloned into each.
#[derive(Clone)]
struct Pipeline {
    index: IndexHandle,
    deliverer: Deliverer,
    recorder: Recorder,
    secrets: Secrets,
    deliveries: Arc<Semaphore>,
    ledger: Arc<OffsetLedger>,
    consumer: Arc<EventConsumer>,
    producer: FutureProducer,
    dead_letter_topic: Arc<str>,
}

/// A configured worker, ready to [`run`](Worker::run).
pub struct Worker {
    settings: Settings,
    index: IndexHandle,
    recorder: Recorder,
    readiness: Readiness,
}

impl Worker {
    pub fn new(settings: Settings, index: IndexHandle) -> Worker {
        let recorder = Recorder::new(Tally::default(), settings.metrics.integration_label);
        Worker {
            settings,
            index,
            recorder,
            readiness: Readiness::default(),
        }
    }

    /// Counts per (integration, product), live.
    pub fn tally(&self) -> Tally {
        self.recorder.tally().clone()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let k = &self.settings.kafka;
        if k.create_topics {
            crate::kafka::ensure_topics(k, &[&k.dead_letter_topic]).await?;
        }
        let ledger = Arc::new(OffsetLedger::default());
        let consumer: EventConsumer =
            crate::kafka::consumer_config(k).create_with_context(WorkerContext {
                ledger: ledger.clone(),
            })?;
        consumer.subscribe(&[&k.events_topic])?;
        let consumer = Arc::new(consumer);
        let producer: FutureProducer = crate::kafka::producer_config(k).create()?;
        let w = &self.settings.worker;
        let pipeline = Pipeline {
            index: self.index.clone(),
            deliverer: Deliverer::new(&self.settings.delivery, &self.settings.outbound),
            recorder: self.recorder.clone(),
            secrets: Arc::new(self.settings.secrets.clone()),
            deliveries: Arc::new(Semaphore::new(w.max_inflight_deliveries)),
            ledger: ledger.clone(),
            consumer: consumer.clone(),
            producer,
            dead_letter_topic: Arc::from(k.dead_letter_topic.as_str()),
        };
        let events = Arc::new(Semaphore::new(w.max_inflight_events));
        let tasks = TaskTracker::new();
        self.readiness.set_ready();
        tracing::info!(topic = %k.events_topic, group = %k.group_id, "worker consuming");

        loop {
            // Take the permit first: at the limit, stop pulling records.
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = events.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consume failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            metrics::counter!(EVENTS_CONSUMED).increment(1);
            let (origin, ticket, work) = accept(&pipeline, &message);
            drop(message);
            match work {
                Work::Done => pipeline.finish(&ticket),
                work => {
                    let pipeline = pipeline.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move {
                        pipeline.handle(origin, work, &shutdown).await;
                        pipeline.finish(&ticket);
                        drop(permit);
                    });
                }
            }
        }

        tasks.close();
        let grace = w.shutdown_grace;
        tracing::info!(in_flight = ledger.in_flight(), ?grace, "draining");
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                unfinished = ledger.in_flight(),
                "shutdown grace ran out; unfinished events will be redelivered"
            );
        }
        commit_final(&consumer, &ledger);
        Ok(())
    }
}

/// What a consumed record needs done.
enum Work {
    /// Nothing: no integration fires.
    Done,
    Deliver(DeviceEvent, Vec<Match>),
    DeadLetter(DeadLetter, Option<Vec<u8>>),
}

/// Decodes and resolves one record; cheap, so it runs in the consume loop.
fn accept(p: &Pipeline, m: &BorrowedMessage<'_>) -> (Origin, Ticket, Work) {
    let origin = Origin {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
    };
    let ticket = p.ledger.begin(m.topic(), m.partition(), m.offset());
    let payload = m.payload().unwrap_or_default();
    let published = m
        .timestamp()
        .to_millis()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    let work = match DeviceEvent::decode(payload, &origin, published) {
        Err(invalid) => {
            metrics::counter!(EVENTS_INVALID, "reason" => invalid.reason.as_label()).increment(1);
            tracing::warn!(reason = %invalid.reason, error = %invalid, partition = origin.partition, offset = origin.offset, "invalid event; dead-lettering");
            Work::DeadLetter(
                DeadLetter::invalid_event(&invalid, &origin, payload),
                m.key().map(<[u8]>::to_vec),
            )
        }
        Ok(event) => {
            let matches = p.index.load().resolve(&event);
            if matches.is_empty() {
                metrics::counter!(EVENTS_UNMATCHED).increment(1);
                Work::Done
            } else {
                Work::Deliver(event, matches)
            }
        }
    };
    (origin, ticket, work)
}

impl Pipeline {
    async fn handle(&self, origin: Origin, work: Work, shutdown: &CancellationToken) {
        match work {
            Work::Done => {}
            Work::Deliver(event, matches) => self.deliver_all(event, matches).await,
            Work::DeadLetter(letter, key) => self.dead_letter(&origin, letter, key, shutdown).await,
        }
    }

    /// Every delivery of one event, concurrently; returns when all are done.
    async fn deliver_all(&self, event: DeviceEvent, matches: Vec<Match>) {
        let ctx = EventContext::new(event, self.secrets.clone(), SecretMode::Reveal);
        join_all(matches.iter().map(|m| self.deliver_one(m, &ctx))).await;
    }

    async fn deliver_one(&self, m: &Match, ctx: &EventContext) {
        let outcome = match render(&m.integration, ctx) {
            Ok(request) => {
                let _permit = self
                    .deliveries
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                metrics::gauge!(INFLIGHT_DELIVERIES).increment(1.0);
                let outcome = self
                    .deliverer
                    .send(&request, m.integration.reject_unauthorized)
                    .await;
                metrics::gauge!(INFLIGHT_DELIVERIES).decrement(1.0);
                outcome
            }
            Err(e) => Outcome::not_sent(DeliveryError::Render(e.to_string())),
        };
        if let Err(e) = &outcome.result {
            tracing::debug!(integration = %m.integration.id, event = %ctx.event().id, error = %e, "webhook failed");
        }
        self.recorder.record(m, &outcome);
    }

    /// Writes a dead letter, retrying until the broker takes it: the record's
    /// offset is not committed before, so a dead letter is never lost. Gives
    /// up only at shutdown, leaving the record to be consumed again.
    async fn dead_letter(
        &self,
        origin: &Origin,
        letter: DeadLetter,
        key: Option<Vec<u8>>,
        shutdown: &CancellationToken,
    ) {
        let payload = letter.to_json();
        loop {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).payload(&payload);
            if let Some(k) = &key {
                record = record.key(k);
            }
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
            {
                Ok(_) => return,
                Err((e, _)) => {
                    tracing::error!(error = %e, partition = origin.partition, offset = origin.offset, "cannot write dead letter; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Marks an event handled and stores the partition's new commit point.
    fn finish(&self, ticket: &Ticket) {
        if let Some(next) = self.ledger.finish(ticket) {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&ticket.topic, ticket.partition, Offset::Offset(next))
                .and_then(|_| self.consumer.store_offsets(&tpl));
            if let Err(e) = stored {
                // The partition was revoked meanwhile; its new owner redelivers.
                tracing::debug!(error = %e, partition = ticket.partition, "offset not stored");
            }
        }
    }
}

fn commit_final(consumer: &EventConsumer, ledger: &OffsetLedger) {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, offset) in ledger.committable() {
        if tpl
            .add_partition_offset(&topic, partition, Offset::Offset(offset))
            .is_err()
        {
            continue;
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => tracing::info!(partitions = tpl.count(), "final offsets committed"),
        Err(e) => {
            tracing::warn!(error = %e, "final commit failed; the last events may be redelivered")
        }
    }
}
