//! The worker: consume → resolve → dispatch (render, throttle, deliver,
//! record, respond, retry), at least once.
//!
//! In: the events topic and the retry topics (consumer groups `kafka.group_id`
//! and `<group_id>.retry`) and the live [`IndexHandle`]. Out: webhooks sent,
//! outcomes recorded, response events, retries and dead letters produced, and
//! offsets committed only behind completely handled records
//! (`OffsetLedger`).
//!
//! Backpressure: a permit per record in flight is taken before a record is
//! pulled (`worker.max_inflight_events` for events, `retry.max_waiting` for
//! retries), and a permit per request before it is sent
//! (`worker.max_inflight_deliveries`); every record's work runs in its own
//! task, so a slow destination holds only its own permits, and a rate-limited
//! one is deferred to the retry topics.
//!
//! Shutdown: cancelling the token stops both intakes; deliveries in flight get
//! `worker.shutdown_grace` to finish (retries still waiting for their due time
//! are abandoned at once, to be read again by the next owner); then the commit
//! points are committed (6 s at most) and the groups left, beside the last
//! traffic and the producers' flush, and [`Worker::run`] returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use futures::FutureExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::panic::AssertUnwindSafe;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::event::{DeviceEvent, InvalidEvent, InvalidReason, Origin};
use crate::model::secret_scopes::SecretPolicy;
use crate::model::variables::{EventContext, SecretMode};
use crate::pipeline::dispatch::{Attempt, Dispatcher, Intake, Settled};
use crate::pipeline::offsets::{CommitPoint, OffsetLedger, Ticket};
use crate::pipeline::resolve::{IndexHandle, Match};
use crate::pipeline::tally::{Recorder, Tally};
use crate::policy::clock::MonotonicClock;
use crate::policy::dead_letter::{DeadLetter, Dropped};
use crate::policy::retry::{RetryDropped, RetryRecord};
use crate::policy::sleeping::SleepingHosts;
use crate::policy::throttle::Throttle;
use crate::runtime::config::{IntegrationSource, Settings};
use crate::runtime::health::Readiness;
use crate::runtime::telemetry::{
    EVENTS_CONSUMED, EVENTS_FAILED, EVENTS_INVALID, EVENTS_UNMATCHED, PARTITIONS_STALLED,
    RECORDS_DROPPED, RETRIES_DROPPED,
};
use crate::template::TemplateLimits;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A consumer that cannot go on: librdkafka set a fatal error on it
    /// (with static membership, another worker joined with the same
    /// `kafka.instance_id` and fenced this one).
    #[error("kafka consumer stopped for good: {reason}{}", fatal_hint(*.code))]
    Fatal {
        code: RDKafkaErrorCode,
        reason: String,
    },
}

fn fatal_hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::FencedInstanceId => {
            " (another worker runs with the same kafka.instance_id; each needs its own)"
        }
        _ => "",
    }
}

/// This worker's share of the fleet's rate limits: the partitions it owns
/// over all partitions, of the events topic and the retry topics together
/// (a worker that owns only retry partitions sends retries, and takes its
/// part of the limit for them). Owned counts change on every rebalance,
/// totals when the topics' partition counts are read again
/// ([`refresh_partition_counts`]).
struct Share {
    throttle: Arc<Throttle>,
    /// Per consumer ([`EVENTS`], [`RETRIES`]): partitions owned.
    owned: [AtomicUsize; 2],
    /// Per consumer: partitions of its topics.
    total: [AtomicUsize; 2],
    updating: std::sync::Mutex<()>,
}

const EVENTS: usize = 0;
const RETRIES: usize = 1;

impl Share {
    fn set(&self, counts: &[AtomicUsize; 2], consumer: usize, n: usize) {
        // The two consumers' rebalance callbacks run on their own threads:
        // one at a time, so the share stored is computed from the latest
        // counts of both.
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        if counts[consumer].swap(n, Ordering::Relaxed) != n {
            let owned: usize = self.owned.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            let total: usize = self.total.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            self.throttle.set_share(owned, total);
            tracing::info!(
                owned,
                total,
                share = self.throttle.share(),
                "rate-limit share recomputed"
            );
        }
    }
}

/// Forgets revoked partitions in the ledger, so late completions of their
/// old work cannot store offsets for the next assignment, and recomputes the
/// rate-limit share from the consumer's assignment.
struct WorkerContext {
    ledger: Arc<OffsetLedger>,
    share: Arc<Share>,
    /// [`EVENTS`] or [`RETRIES`].
    consumer: usize,
    /// Set once the final commit is made, as the worker leaves the group
    /// (or its consumer closes: the last handle dropped). A revocation served
    /// after that stores and commits nothing: a commit waiting on an absent
    /// coordinator would hold the stop for seconds, and librdkafka aborts the
    /// process when a commit is outstanding as the group terminates
    /// (`rd_kafka_cgrp_terminated` asserts none is). What the final commit
    /// did not cover is redelivered by the partitions' next owner.
    closing: AtomicBool,
}

impl ClientContext for WorkerContext {
    /// librdkafka's log as rdkafka logs it, but for one line: a stopping
    /// worker that leaves a group whose session is expiring (the broker
    /// gone or failing) makes librdkafka log the revocation of its
    /// assignment as unexpected, at error level, and carry on as asked. The
    /// worker asked for it; it is logged as a warning.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let expected = self.closing.load(Ordering::Acquire)
            && fac == "REBALANCE"
            && log_message.contains("unexpected instruction to revoke current assignment");
        if expected {
            tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message} (leaving the group as the worker stops)");
        } else {
            rdkafka::client::DefaultClientContext.log(level, fac, log_message);
        }
    }
}

impl ConsumerContext for WorkerContext {
    /// rdkafka's own handling (`pre_rebalance`, the assignment changed as
    /// the protocol wants, `post_rebalance`), but for a rebalance served by a
    /// closing consumer whose group has already terminated: that one is not
    /// answered. librdkafka (2.12) never replies to an assign or unassign
    /// sent to a terminated group, and the close would wait for that reply
    /// for ever (upstream issues 4527 and 4884); with the group gone there is
    /// nothing left to hand back. [`Subscription::leave`] makes this rare; a
    /// group that terminates between the check and the unassign still hangs.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        if self.closing.load(Ordering::Acquire) && consumer.closed() {
            tracing::debug!("rebalance after the group terminated; not answered");
            return;
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let answered = match (&rebalance, cooperative) {
            (Rebalance::Assign(tpl), true) => consumer.incremental_assign(tpl),
            (Rebalance::Assign(tpl), false) => consumer.assign(tpl),
            (Rebalance::Revoke(tpl), true) => consumer.incremental_unassign(tpl),
            (Rebalance::Error(_), true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = answered {
            tracing::warn!(error = %e, "rebalance not applied");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let elements = tpl.elements();
            let unstored = self
                .ledger
                .revoke(elements.iter().map(|e| (e.topic(), e.partition())));
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            // Stored and committed before letting go, so the next owner
            // starts after everything finished here (else it redelivers it).
            // Not when the assignment was lost (this member was evicted):
            // the partitions are someone else's already.
            store(consumer, &unstored);
            if !consumer.assignment_lost() {
                // The callback runs on a runtime thread: let the runtime move
                // its other tasks elsewhere while the commit waits.
                let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi_thread {
                    tokio::task::block_in_place(|| commit(consumer, CommitMode::Sync));
                } else {
                    commit(consumer, CommitMode::Sync);
                }
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // The offsets stay stored: the next commit carries them.
            Err(e) => tracing::warn!(error = %e, "offset commit failed; retried in a second"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The whole assignment, whatever the rebalance protocol handed
        // over this time (all of it, or an increment).
        let assignment = consumer.assignment().unwrap_or_default();
        let partitions: Vec<String> = assignment
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        match rebalance {
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
            _ => tracing::info!(
                consumer = ["events", "retries"][self.consumer],
                partitions = %partitions.join(","),
                "partitions owned"
            ),
        }
        self.share
            .set(&self.share.owned, self.consumer, partitions.len());
    }
}

type RecordConsumer = StreamConsumer<WorkerContext>;

/// The consumer, which tells its context it is closing as the last handle
/// to it goes (just before librdkafka's close runs, on the same thread).
struct ClosingConsumer(RecordConsumer);

impl std::ops::Deref for ClosingConsumer {
    type Target = RecordConsumer;

    fn deref(&self) -> &RecordConsumer {
        &self.0
    }
}

impl Drop for ClosingConsumer {
    fn drop(&mut self) {
        self.0.context().closing.store(true, Ordering::Release);
    }
}

/// A consumer of one topic set and the offsets of what it handed out.
#[derive(Clone)]
struct Subscription {
    consumer: Arc<ClosingConsumer>,
    ledger: Arc<OffsetLedger>,
}

/// Hands commit points to a consumer's offset store, all in one call.
fn store<C: ConsumerContext>(consumer: &impl Consumer<C>, points: &[CommitPoint]) {
    if points.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::with_capacity(points.len());
    for (topic, partition, offset) in points {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // A partition was revoked meanwhile; its new owner redelivers.
        tracing::debug!(error = %e, "offsets not stored");
    }
}

/// Commits the offsets stored for the consumer's assignment. Unlike
/// librdkafka's auto-commit timer, this commits while the group rebalances
/// too: partitions still owned keep their progress however long that takes.
fn commit<C: ConsumerContext>(consumer: &impl Consumer<C>, mode: CommitMode) {
    if let Err(e) = consumer.commit_consumer_state(mode) {
        // Nothing stored since the last commit, or no coordinator now: the
        // next commit carries the same offsets.
        tracing::debug!(error = %e, "offsets not committed");
    }
}

/// How often finished records' commit points reach the consumer's offset
/// store, and how often the store is committed.
const STORE_INTERVAL: Duration = Duration::from_millis(100);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a stopping worker waits for its partitions to be revoked once
/// it has left the group.
const LEAVE_PATIENCE: Duration = Duration::from_secs(5);

/// How long a stopping worker waits for the last traffic and for the
/// producers' flush, each.
const STOP_STEP_PATIENCE: Duration = Duration::from_secs(5);

/// How long a stopping worker waits for its final commit: a little over a
/// broker's own commit timeout (`offsets.commit.timeout.ms`, 5 s), so a
/// slow broker's answer is still taken. With leaving the group after it
/// (`LEAVE_PATIENCE`), and the traffic's steps side by side, the steps
/// that wait on the broker take 11 s at most: within the command's
/// backstop (`worker.shutdown_grace` + 15 s) even with the broker gone,
/// the consumers' close aside (librdkafka bounds that itself).
const FINAL_COMMIT_PATIENCE: Duration = Duration::from_secs(6);

impl Subscription {
    /// Leaves the group and waits (at most [`LEAVE_PATIENCE`]) until the
    /// partitions are revoked, before the consumer closes. librdkafka (2.12)
    /// can wait for ever in a close that serves a revocation: the unassign
    /// it then asks of the group is never answered once the group has
    /// terminated. Letting go here, while the group still runs, leaves the
    /// close nothing to revoke in the usual case. Not always: a group in the
    /// middle of a rebalance applies the unsubscribe only once the rebalance
    /// is over (a member still joining holds nothing yet), and the close then
    /// serves those rebalances ([`WorkerContext::rebalance`] covers the group
    /// having terminated by then). The final commit came just before: the
    /// revocations here commit nothing (see [`WorkerContext::closing`]), and
    /// records read meanwhile are dropped unhandled, for the next owner.
    async fn leave(&self) {
        self.consumer
            .context()
            .closing
            .store(true, Ordering::Release);
        // A consumer whose session expired (its broker gone or failing) is
        // no member any more, and its group may be stuck waiting for a
        // coordinator: the unsubscribe and assignment calls below wait on
        // the group without a bound (with them, a full clean_stops run went
        // past its backstop with nothing logged after the drain; those
        // calls blocking the runtime's threads are the likely cause). Its
        // close leaves; an assignment it still holds is revoked there.
        // `joined` itself asks the group too (librdkafka serves the member
        // id through the group's queue), so it can wait the same way.
        if !joined(&self.consumer) {
            return;
        }
        self.consumer.unsubscribe();
        let released = async {
            while self.consumer.assignment().is_ok_and(|a| a.count() > 0) {
                // Revocations are served while the consumer is read.
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), self.consumer.recv()).await;
            }
        };
        if tokio::time::timeout(LEAVE_PATIENCE, released)
            .await
            .is_err()
        {
            tracing::warn!("partitions not revoked before closing");
        }
    }

    /// Marks a record handled; its commit point is stored with the next batch.
    fn finish(&self, ticket: &Ticket) {
        self.ledger.finish(ticket);
    }

    /// Stores the commit points that moved, every [`STORE_INTERVAL`], and
    /// commits what was stored every [`COMMIT_INTERVAL`], until `stop`.
    async fn store_periodically(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(STORE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_commit = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    store(&**self.consumer, &self.ledger.unstored());
                    // Every interval, moved or not: a commit that failed
                    // (a rebalance, the broker away) is made again with the
                    // same offsets; one with nothing new ends locally.
                    if last_commit.elapsed() >= COMMIT_INTERVAL {
                        commit(&**self.consumer, CommitMode::Async);
                        last_commit = tokio::time::Instant::now();
                    }
                }
            }
        }
    }

    /// Commits every partition's commit point before the consumer closes,
    /// waiting [`FINAL_COMMIT_PATIENCE`] at most. A commit refused because the
    /// group is rebalancing as this worker stops is not tried again: waiting
    /// for the rebalance would hold the stop for seconds, and the next owner
    /// reads those records again (at least once). One that is not answered
    /// in time (no coordinator: the broker gone or failing) is left to finish
    /// on a thread of its own, which holds the consumer until then, so the
    /// stop goes on.
    async fn commit_final(&self) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, offset) in self.ledger.committable() {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        let partitions = tpl.count();
        if partitions == 0 {
            return;
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        let consumer = self.consumer.clone();
        let commit = move || {
            let result = consumer.commit(&tpl, CommitMode::Sync);
            // The handle goes before the answer: a consumer answered in time
            // is closed by the worker, not by this thread later.
            drop(consumer);
            let _ = done.send(result);
        };
        if let Err(e) = std::thread::Builder::new()
            .name("final-commit".into())
            .spawn(commit)
        {
            tracing::warn!(error = %e, "no thread for the final commit; the last records may be redelivered");
            return;
        }
        match tokio::time::timeout(FINAL_COMMIT_PATIENCE, committed).await {
            Ok(Ok(Ok(()))) => tracing::info!(partitions, "final offsets committed"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "final commit failed; the last records may be redelivered")
            }
            Ok(Err(_)) => tracing::warn!(
                "final commit ended without an answer; the last records may be redelivered"
            ),
            Err(_) => tracing::warn!(
                patience = ?FINAL_COMMIT_PATIENCE,
                "final commit not answered in time; the last records may be redelivered, \
                 and leaving the group waits on it (the group expires this member after \
                 session.timeout.ms otherwise)"
            ),
        }
    }
}

/// Whether `consumer` is a member of its group now: librdkafka holds a
/// member id for it (none before the first join, nor after its session
/// expired, until it rejoins).
fn joined(consumer: &RecordConsumer) -> bool {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle of `consumer`, borrowed for this call.
    // rd_kafka_memberid returns NULL or a NUL-terminated string librdkafka
    // allocated for the caller, read here and freed with rd_kafka_mem_free.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(rk);
        if id.is_null() {
            return false;
        }
        let joined = *id != 0;
        rdkafka::bindings::rd_kafka_mem_free(rk, id.cast());
        joined
    }
}

/// What every record's task needs; cloned into each.
#[derive(Clone)]
struct Pipeline {
    index: IndexHandle,
    /// The secrets each integration's templates see.
    secrets: SecretPolicy,
    dispatcher: Arc<Dispatcher>,
    /// Handles made once, not looked up per event.
    consumed: metrics::Counter,
    unmatched: metrics::Counter,
    /// `worker.max_event_bytes`.
    max_event_bytes: usize,
    /// `[templates]`: an event's render budget.
    templates: TemplateLimits,
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
        let mut recorder = Recorder::new(Tally::default(), settings.metrics.integration_label);
        if settings.traffic.publish {
            recorder = recorder.with_traffic(Arc::default());
        }
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

    /// Runs until `shutdown` is cancelled, then drains and commits. A
    /// consumer that fails for good ([`WorkerError::Fatal`]) cancels
    /// `shutdown` itself (the process has nothing left to run for), drains
    /// the same way and returns that error.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let running = self.wire(&shutdown).await?;
        let consumed = running.consume(&self.settings, &shutdown).await;
        running
            .drain(
                self.settings.worker.shutdown_grace,
                !self.settings.kafka.instance_id.is_empty()
                    || self
                        .settings
                        .kafka
                        .consumer
                        .contains_key("group.instance.id"),
            )
            .await;
        consumed
    }

    /// Topics made, consumers subscribed, the pipeline built and the
    /// background tasks started: everything [`Running::consume`] needs.
    async fn wire(&self, shutdown: &CancellationToken) -> Result<Running, WorkerError> {
        let s = &self.settings;
        let k = &s.kafka;
        let retry_topics = s.retry.topics();
        if k.create_topics {
            let mut topics = vec![k.dead_letter_topic.as_str(), k.responses_topic.as_str()];
            topics.extend(retry_topics.iter().map(String::as_str));
            crate::runtime::kafka::ensure_topics(k, &topics).await?;
            if s.traffic.publish {
                crate::runtime::kafka::ensure_topic_specs(
                    k,
                    &crate::runtime::kafka::traffic_topics(k),
                )
                .await?;
            }
        }
        let throttle = Arc::new(Throttle::new(s.limits.clone()));
        let sleeping = Arc::new(SleepingHosts::new(s.sleeping, MonotonicClock::default()));

        let share = Arc::new(Share {
            throttle: throttle.clone(),
            owned: Default::default(),
            total: Default::default(),
            updating: Default::default(),
        });
        // Until the first assignment this worker owns nothing: the least share.
        throttle.set_share(0, 0);
        let events = subscription(crate::runtime::kafka::consumer_config(k), &share, EVENTS)?;
        let partitions = count_partitions(&events.consumer, std::slice::from_ref(&k.events_topic))?;
        share.set(&share.total, EVENTS, partitions);
        events.consumer.subscribe(&[&k.events_topic])?;
        let retries = if retry_topics.is_empty() {
            None
        } else {
            let mut config = crate::runtime::kafka::consumer_config(k);
            config.set("group.id", format!("{}.retry", k.group_id));
            let retries = subscription(config, &share, RETRIES)?;
            share.set(
                &share.total,
                RETRIES,
                count_partitions(&retries.consumer, &retry_topics)?,
            );
            let topics: Vec<&str> = retry_topics.iter().map(String::as_str).collect();
            retries.consumer.subscribe(&topics)?;
            Some(retries)
        };

        let pipeline = Pipeline {
            index: self.index.clone(),
            secrets: match s.integrations.source {
                IntegrationSource::File => SecretPolicy::unscoped(&s.secrets),
                IntegrationSource::Kafka => SecretPolicy::scoped(&s.secrets, &s.secret_scopes),
            },
            dispatcher: Arc::new(Dispatcher::new(
                s,
                self.recorder.clone(),
                throttle.clone(),
                sleeping.clone(),
            )?),
            consumed: metrics::counter!(EVENTS_CONSUMED),
            unmatched: metrics::counter!(EVENTS_UNMATCHED),
            max_event_bytes: s.worker.max_event_bytes.get(),
            templates: s.templates,
        };
        let tasks = TaskTracker::new();
        tasks.spawn(prune_periodically(throttle, sleeping, shutdown.clone()));
        let mut counted = vec![(events.clone(), vec![k.events_topic.clone()], EVENTS)];
        if let Some(r) = &retries {
            counted.push((r.clone(), retry_topics.clone(), RETRIES));
        }
        tasks.spawn(refresh_partition_counts(counted, share, shutdown.clone()));
        // Stops after the drain; the final commit covers what is left.
        let storing = CancellationToken::new();
        let stores: Vec<_> = std::iter::once(&events)
            .chain(&retries)
            .map(|s| tokio::spawn(s.clone().store_periodically(storing.clone())))
            .collect();
        // Publishes until the deliveries have drained, then once more.
        let traffic_stop = CancellationToken::new();
        let traffic = self.recorder.traffic().cloned().map(|book| {
            tokio::spawn(book.run(
                pipeline.dispatcher.producer().clone(),
                (k.stats_topic.clone(), k.log_topic.clone()),
                pipeline.secrets.clone(),
                s.traffic.flush_interval,
                traffic_stop.clone(),
            ))
        });
        let ledgers = std::iter::once(&events)
            .chain(&retries)
            .map(|s| s.ledger.clone())
            .collect::<Vec<_>>();
        let stall_after = s.worker.stall_after;
        self.readiness.watch(move || {
            ledgers
                .iter()
                .flat_map(|l| l.stalled(stall_after))
                .map(|(topic, partition, offset, still)| {
                    format!(
                        "{topic}/{partition} at offset {offset} for {}s",
                        still.as_secs()
                    )
                })
                .collect()
        });
        tasks.spawn(report_stalls(self.readiness.clone(), shutdown.clone()));
        self.readiness.set_ready();
        tracing::info!(topic = %k.events_topic, group = %k.group_id, partitions, "worker consuming");
        Ok(Running {
            events,
            retries,
            pipeline,
            tasks,
            storing,
            stores,
            traffic_stop,
            traffic,
        })
    }
}

/// A wired worker: its subscriptions, its pipeline and its tasks.
struct Running {
    events: Subscription,
    retries: Option<Subscription>,
    pipeline: Pipeline,
    /// Every record's work, and the periodic tasks.
    tasks: TaskTracker,
    /// Stops the offset-store tasks, once the work has drained.
    storing: CancellationToken,
    stores: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the traffic publisher, once the work has drained.
    traffic_stop: CancellationToken,
    traffic: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The consume loops of the events and the retries, until `shutdown`,
    /// which a consumer's fatal error cancels.
    async fn consume(&self, s: &Settings, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let stop_all_on_fatal = |consumed: Result<(), WorkerError>| {
            if consumed.is_err() {
                shutdown.cancel();
            }
            consumed
        };
        let events_loop = consume(
            &self.events,
            &self.pipeline,
            &self.tasks,
            s.worker.max_inflight_events.get(),
            shutdown,
            accept_event,
        )
        .map(stop_all_on_fatal);
        match &self.retries {
            Some(r) => {
                let retry_loop = consume(
                    r,
                    &self.pipeline,
                    &self.tasks,
                    s.retry.max_waiting.get(),
                    shutdown,
                    accept_retry,
                )
                .map(stop_all_on_fatal);
                let (events, retries) = tokio::join!(events_loop, retry_loop);
                events.and(retries)
            }
            None => events_loop.await,
        }
    }

    /// Lets the work in flight finish within `grace`, then commits what was
    /// handled, publishes the last traffic and flushes the producers.
    async fn drain(self, grace: Duration, static_member: bool) {
        self.tasks.close();
        let events = &self.events;
        tracing::info!(in_flight = events.ledger.in_flight(), ?grace, "draining");
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                unfinished = events.ledger.in_flight(),
                "shutdown grace ran out; unfinished events will be redelivered"
            );
        }
        self.storing.cancel();
        // Joined, so no task still holds a consumer once `run` returns (its
        // close would then talk to a broker the caller may have stopped);
        // only a final commit left unanswered keeps one, on its thread.
        join_all(self.stores).await;
        // The offsets (commit, then leave) and the traffic (the last counts,
        // then the producers) side by side: each waits on the broker.
        let offsets = async {
            let retries = async {
                if let Some(r) = &self.retries {
                    r.commit_final().await;
                }
            };
            tokio::join!(events.commit_final(), retries);
            // A static member (`kafka.instance_id`) keeps its partitions while
            // it restarts, so it does not leave; its close may then still
            // serve a revocation (see Subscription::leave).
            if !static_member {
                let retries = async {
                    if let Some(r) = &self.retries {
                        r.leave().await;
                    }
                };
                tokio::join!(events.leave(), retries);
            }
        };
        let traffic_stop = self.traffic_stop;
        let traffic = self.traffic;
        let dispatcher = self.pipeline.dispatcher.clone();
        let last_traffic = async move {
            traffic_stop.cancel();
            if let Some(mut t) = traffic {
                if tokio::time::timeout(STOP_STEP_PATIENCE, &mut t)
                    .await
                    .is_err()
                {
                    t.abort();
                    tracing::warn!(
                        patience = ?STOP_STEP_PATIENCE,
                        "last traffic not published in time; the api's history misses it"
                    );
                }
            }
            // Fire-and-forget response events still queued get out too.
            let _ = tokio::task::spawn_blocking(move || dispatcher.flush(STOP_STEP_PATIENCE)).await;
        };
        tokio::join!(offsets, last_traffic);
    }
}

fn subscription(
    config: rdkafka::ClientConfig,
    share: &Arc<Share>,
    which: usize,
) -> Result<Subscription, KafkaError> {
    let ledger = Arc::new(OffsetLedger::default());
    let consumer: RecordConsumer = config.create_with_context(WorkerContext {
        ledger: ledger.clone(),
        share: share.clone(),
        consumer: which,
        closing: AtomicBool::new(false),
    })?;
    Ok(Subscription {
        consumer: Arc::new(ClosingConsumer(consumer)),
        ledger,
    })
}

/// Partitions of `topics` together, as the brokers know them now.
fn count_partitions(consumer: &RecordConsumer, topics: &[String]) -> Result<usize, KafkaError> {
    let mut n = 0;
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        n += metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
    }
    Ok(n)
}

/// How often the topics' partition counts are read again, so a topic that
/// gains partitions changes every worker's share.
const PARTITION_COUNT_INTERVAL: Duration = Duration::from_secs(60);

/// Reads the partition counts of each consumer's topics every
/// [`PARTITION_COUNT_INTERVAL`] until `shutdown`, updating the share.
async fn refresh_partition_counts(
    subscriptions: Vec<(Subscription, Vec<String>, usize)>,
    share: Arc<Share>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PARTITION_COUNT_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (subscription, topics, which) in &subscriptions {
            let consumer = subscription.consumer.clone();
            let topics = topics.clone();
            let counted =
                tokio::task::spawn_blocking(move || count_partitions(&consumer, &topics)).await;
            match counted {
                Ok(Ok(n)) => share.set(&share.total, *which, n),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "partition counts not read; share unchanged")
                }
                Err(e) => tracing::warn!(error = %e, "partition count task failed"),
            }
        }
    }
}

/// Keeps the stalled-partitions gauge current and logs each stall.
async fn report_stalls(readiness: Readiness, shutdown: CancellationToken) {
    let gauge = metrics::gauge!(PARTITIONS_STALLED);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let stalled = readiness.stalled();
                gauge.set(stalled.len() as f64);
                if !stalled.is_empty() {
                    tracing::error!(partitions = %stalled.join(", "), "commit points stalled");
                }
            }
        }
    }
}

/// Limiter keys and host ratings of destinations no longer sent to.
async fn prune_periodically(
    throttle: Arc<Throttle>,
    sleeping: Arc<SleepingHosts<MonotonicClock>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                throttle.prune();
                sleeping.prune();
            }
        }
    }
}

/// What a consumed record needs done.
enum Work {
    /// Nothing: no integration fires.
    Done,
    Deliver(DeviceEvent, Vec<Match>),
    Retry(Box<RetryRecord>),
    DeadLetter(Box<DeadLetter>, Option<Vec<u8>>),
}

/// Permits the intake takes at once (see [`consume`]).
const PERMIT_BATCH: usize = 32;

/// The intake loop of one subscription: a permit, a record, a task.
async fn consume(
    subscription: &Subscription,
    pipeline: &Pipeline,
    tasks: &TaskTracker,
    max_inflight: usize,
    shutdown: &CancellationToken,
    accept: fn(&Pipeline, &BorrowedMessage<'_>, &Origin) -> Work,
) -> Result<(), WorkerError> {
    let permits = Arc::new(Semaphore::new(max_inflight));
    // Permits for records that waited for their due time (retries), taken
    // when they are due: as many again as the intake's.
    let resumed = Arc::new(Semaphore::new(max_inflight));
    // Permits are taken a batch at a time and handed out one per record: a
    // loop woken by every finished record costs a wake-up (often a futex
    // call) per record at the limit; by a batch of them, one per batch.
    // A small share of the limit, so that waiting for a batch never waits
    // on the slowest records.
    let batch = (max_inflight / 32).clamp(1, PERMIT_BATCH) as u32;
    let mut taken: Option<OwnedSemaphorePermit> = None;
    loop {
        // Take the permit first: at the limit, stop pulling records.
        let spent = match &taken {
            Some(t) => t.num_permits() == 0,
            None => true,
        };
        if spent {
            taken = Some(tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                p = permits.clone().acquire_many_owned(batch) => p.expect("the semaphore is never closed"),
            });
        }
        let permit = taken
            .as_mut()
            .and_then(|t| t.split(1))
            .expect("a batch holds at least one permit");
        let message = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            m = subscription.consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                if let Some((code, reason)) = subscription.consumer.client().fatal_error() {
                    tracing::error!(error = %e, %reason, "consumer failed for good; the worker stops");
                    return Err(WorkerError::Fatal { code, reason });
                }
                tracing::warn!(error = %e, "consume failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
        };
        let origin = Origin {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let ticket = subscription
            .ledger
            .begin(&origin.topic, origin.partition, origin.offset);
        // A bug that panics on some record must not end the intake loop:
        // the record is dead-lettered and the partition goes on.
        let work =
            std::panic::catch_unwind(AssertUnwindSafe(|| accept(pipeline, &message, &origin)))
                .unwrap_or_else(|panic| {
                    Work::DeadLetter(
                        Box::new(panicked(
                            &origin,
                            message.payload().unwrap_or_default(),
                            &*panic,
                        )),
                        message.key().map(<[u8]>::to_vec),
                    )
                });
        drop(message);
        if let Work::Done = work {
            subscription.finish(&ticket);
            continue;
        }
        // A retry not yet due pauses its partition until it is: only this
        // record waits, in memory, and the consumer goes on polling (so it
        // is never evicted for a long delay, and the records behind it are
        // not read early). On pause librdkafka drops what it fetched ahead
        // and fetches again from the next record on resume.
        let due_in = match &work {
            Work::Retry(r) => time_until(r.due_at_ms),
            _ => None,
        };
        if let Some(wait) = due_in {
            set_paused(&subscription.consumer, &origin, true);
            subscription
                .ledger
                .waiting_until(&ticket, std::time::Instant::now() + wait);
        }
        let (pipeline, subscription, shutdown) =
            (pipeline.clone(), subscription.clone(), shutdown.clone());
        let resumed = resumed.clone();
        tasks.spawn(async move {
            let mut permit = Some(permit);
            if let Some(wait) = due_in {
                // The paused partition bounds what waits (one record per
                // partition), so the wait holds no intake permit: the loop
                // never stops taking records of other partitions for it.
                drop(permit.take());
                let due = tokio::select! {
                    _ = shutdown.cancelled() => false,
                    _ = tokio::time::sleep(wait) => true,
                };
                // Resumed even when the partition was revoked meanwhile:
                // librdkafka may keep a partition's pause across a
                // reassignment to this worker, and then nothing else would
                // resume it.
                set_paused(&subscription.consumer, &origin, false);
                // Shutdown, or the partition was revoked meanwhile: its next
                // owner reads the record again, so it is not handled here
                // (that would deliver it twice).
                if !due || !subscription.ledger.is_current(&ticket) {
                    return;
                }
                // Handled under a permit of its own kind, so retries being
                // handled stay bounded without waiting on the intake loop,
                // which may hold the intake's permits while every partition
                // is paused.
                permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = resumed.acquire_owned() => Some(p.expect("the semaphore is never closed")),
                };
            }
            let intake = Intake::new(permit.expect("held, or taken above"));
            let handled = AssertUnwindSafe(pipeline.handle(&origin, &work, &intake, &shutdown))
                .catch_unwind()
                .await;
            let settled = match handled {
                Ok(settled) => settled,
                Err(panic) => match panic_letter(&origin, work, &*panic) {
                    Some((letter, key)) => {
                        pipeline
                            .dispatcher
                            .write_dead_letter(&key, letter, &shutdown)
                            .await
                    }
                    None => Settled::Done,
                },
            };
            if settled == Settled::Done {
                subscription.finish(&ticket);
            }
            drop(intake);
        });
    }
}

/// How long until `due_at_ms` (Unix milliseconds), if it is in the future.
fn time_until(due_at_ms: i64) -> Option<Duration> {
    let wait = due_at_ms - Utc::now().timestamp_millis();
    (wait > 0).then(|| Duration::from_millis(wait as u64))
}

/// Pauses or resumes fetching the partition `origin` came from. A partition
/// revoked meanwhile is not this consumer's to resume any more; that error
/// is expected.
fn set_paused(consumer: &RecordConsumer, origin: &Origin, paused: bool) {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition(&origin.topic, origin.partition);
    let result = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, topic = %origin.topic, partition = origin.partition, paused, "pause state not changed");
    }
}

/// Decodes and resolves one event record; cheap, so it runs in the loop.
fn accept_event(p: &Pipeline, m: &BorrowedMessage<'_>, origin: &Origin) -> Work {
    p.consumed.increment(1);
    let payload = m.payload().unwrap_or_default();
    if payload.len() > p.max_event_bytes {
        let invalid = InvalidEvent {
            reason: InvalidReason::RecordTooLarge,
            message: format!(
                "the record is {} bytes, over worker.max_event_bytes ({})",
                payload.len(),
                p.max_event_bytes
            ),
        };
        metrics::counter!(EVENTS_INVALID, "reason" => invalid.reason.as_label()).increment(1);
        tracing::warn!(reason = %invalid.reason, error = %invalid, partition = origin.partition, offset = origin.offset, "invalid event; dead-lettering");
        return Work::DeadLetter(
            Box::new(DeadLetter::invalid_event(&invalid, origin, payload)),
            m.key().map(<[u8]>::to_vec),
        );
    }
    let published = m
        .timestamp()
        .to_millis()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    match DeviceEvent::decode(payload, origin, published) {
        Err(invalid) => {
            metrics::counter!(EVENTS_INVALID, "reason" => invalid.reason.as_label()).increment(1);
            tracing::warn!(reason = %invalid.reason, error = %invalid, partition = origin.partition, offset = origin.offset, "invalid event; dead-lettering");
            Work::DeadLetter(
                Box::new(DeadLetter::invalid_event(&invalid, origin, payload)),
                m.key().map(<[u8]>::to_vec),
            )
        }
        Ok(event) => {
            let matches = p.index.load().resolve(&event);
            if matches.is_empty() {
                p.unmatched.increment(1);
                Work::Done
            } else {
                Work::Deliver(event, matches)
            }
        }
    }
}

/// The dead letter of a record whose handling panicked.
fn panicked(origin: &Origin, payload: &[u8], panic: &(dyn std::any::Any + Send)) -> DeadLetter {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    metrics::counter!(EVENTS_FAILED, "reason" => InvalidReason::Panicked.as_label()).increment(1);
    let message = crate::policy::dead_letter::cap(message);
    tracing::error!(topic = %origin.topic, partition = origin.partition, offset = origin.offset, panic = %message, "handling a record panicked; dead-lettering it");
    let invalid = InvalidEvent {
        reason: InvalidReason::Panicked,
        message: format!("handling the record panicked: {message}"),
    };
    DeadLetter::invalid_event(&invalid, origin, payload)
}

/// Decodes one retry record; a record that does not decode is dead-lettered.
fn accept_retry(_p: &Pipeline, m: &BorrowedMessage<'_>, origin: &Origin) -> Work {
    let payload = m.payload().unwrap_or_default();
    match serde_json::from_slice::<RetryRecord>(payload) {
        Ok(r) => Work::Retry(Box::new(r)),
        Err(e) => {
            tracing::error!(error = %e, topic = %origin.topic, "undecodable retry record; dead-lettering");
            let invalid = InvalidEvent {
                reason: InvalidReason::BadField,
                message: format!("undecodable retry record: {e}"),
            };
            Work::DeadLetter(
                Box::new(DeadLetter::invalid_event(&invalid, origin, payload)),
                m.key().map(<[u8]>::to_vec),
            )
        }
    }
}

impl Pipeline {
    async fn handle(
        &self,
        origin: &Origin,
        work: &Work,
        intake: &Intake,
        shutdown: &CancellationToken,
    ) -> Settled {
        match work {
            Work::Done => Settled::Done,
            Work::Deliver(event, matches) => {
                // One template context per set of visible secrets: usually
                // one for the whole event, a few when tenants differ.
                let mut contexts: Vec<EventContext> = Vec::with_capacity(1);
                let mut which = Vec::with_capacity(matches.len());
                let whole_event = matches.iter().any(|m| m.integration.uses_whole_event);
                for m in matches {
                    let secrets = self.secrets.for_integration(&m.integration);
                    let n = match contexts.iter().position(|c| c.shares_secrets(secrets)) {
                        Some(n) => n,
                        None => {
                            let ctx = EventContext::new(
                                event.clone(),
                                secrets.clone(),
                                SecretMode::Reveal,
                            )
                            .with_limits(&self.templates);
                            contexts.push(if whole_event {
                                ctx
                            } else {
                                ctx.without_whole_event()
                            });
                            contexts.len() - 1
                        }
                    };
                    which.push(n);
                }
                let attempt = |(matched, n): (Match, usize)| {
                    let a = Attempt {
                        matched,
                        number: 1,
                        history: Vec::new(),
                        origin: origin.clone(),
                    };
                    self.dispatcher.attempt(&contexts[n], a, intake, shutdown)
                };
                let mut pairs = matches.iter().cloned().zip(which);
                if pairs.len() == 1 {
                    // Most events fire one integration: no join.
                    return attempt(pairs.next().expect("one match")).await;
                }
                let settled = join_all(pairs.map(attempt)).await;
                if settled.contains(&Settled::Abandoned) {
                    Settled::Abandoned
                } else {
                    Settled::Done
                }
            }
            // Boxed, as are the dead letters below: every record's task is
            // as large as the largest of these futures, and events are most.
            Work::Retry(record) => {
                Box::pin(self.retry(record.as_ref().clone(), intake, shutdown)).await
            }
            Work::DeadLetter(letter, key) => {
                let key = key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Box::pin(
                    self.dispatcher
                        .write_dead_letter(&key, letter.as_ref().clone(), shutdown),
                )
                .await
            }
        }
    }

    /// Waits for the record's due time, then makes its attempt with the
    /// integration as currently configured.
    async fn retry(
        &self,
        r: RetryRecord,
        intake: &Intake,
        shutdown: &CancellationToken,
    ) -> Settled {
        let wait = r.due_at_ms - Utc::now().timestamp_millis();
        if wait > 0 {
            tokio::select! {
                // Not committed: the next owner of the partition waits instead.
                _ = shutdown.cancelled() => return Settled::Abandoned,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
        let index = self.index.load();
        let Some(integration) = index.get(&r.integration).cloned() else {
            metrics::counter!(RETRIES_DROPPED, "reason" => RetryDropped::Deleted.as_label())
                .increment(1);
            tracing::info!(integration = %r.integration, "retry dropped: the integration no longer exists");
            return Settled::Done;
        };
        if integration.disabled {
            metrics::counter!(RETRIES_DROPPED, "reason" => RetryDropped::Disabled.as_label())
                .increment(1);
            tracing::info!(integration = %r.integration, "retry dropped: the integration is disabled");
            return Settled::Done;
        }
        // The first attempt's `published_at` for an event that had none
        // (it took the record's time then), so the retry sends the same body.
        let first_seen = r
            .published_at
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let event = match DeviceEvent::decode(r.event.as_bytes(), &r.origin, first_seen) {
            Ok(e) => e,
            Err(e) => {
                metrics::counter!(RETRIES_DROPPED, "reason" => RetryDropped::Invalid.as_label())
                    .increment(1);
                tracing::error!(error = %e, "retry record carries an invalid event; dropped");
                return Settled::Done;
            }
        };
        // Sent only while the integration still executes on this event: not
        // after its product was separated from it or taken off its list,
        // its owner or device changed, or its prefix no longer matches.
        if let Err(miss) = crate::pipeline::resolve::check(&integration, &event) {
            let reason = if index.was_separated(&integration.id, event.product_id) {
                RetryDropped::Separated
            } else {
                RetryDropped::OutOfScope
            };
            metrics::counter!(RETRIES_DROPPED, "reason" => reason.as_label()).increment(1);
            tracing::info!(integration = %r.integration, reason = %miss, "retry dropped: the integration no longer executes on this event");
            return Settled::Done;
        }
        let secrets = self.secrets.for_integration(&integration).clone();
        let mut ctx =
            EventContext::new(event, secrets, SecretMode::Reveal).with_limits(&self.templates);
        if !integration.uses_whole_event {
            ctx = ctx.without_whole_event();
        }
        let a = Attempt {
            matched: Match {
                integration,
                product: r.product,
            },
            number: r.attempt,
            history: r.history,
            origin: r.origin,
        };
        self.dispatcher.attempt(&ctx, a, intake, shutdown).await
    }
}

/// Handling `work` panicked: the dead letter (and its key) that takes its
/// record, with the panic's message; `None` when nothing is left to write.
fn panic_letter(
    origin: &Origin,
    work: Work,
    panic: &(dyn std::any::Any + Send),
) -> Option<(DeadLetter, String)> {
    let (letter, key) = match work {
        Work::Done => return None,
        Work::Deliver(event, _) => (
            panicked(origin, event.raw.as_bytes(), panic),
            event.device_id.clone(),
        ),
        Work::Retry(r) => {
            let mut letter = panicked(&r.origin, r.event.as_bytes(), panic);
            letter.integration = Some(r.integration.clone());
            letter.history = r.history;
            (letter, String::new())
        }
        // Writing the dead letter itself panicked: there is nothing
        // safer left to write.
        Work::DeadLetter(letter, _) => {
            metrics::counter!(RECORDS_DROPPED, "reason" => Dropped::Panicked.as_label())
                .increment(1);
            tracing::error!(reason = %letter.reason, topic = %origin.topic, partition = origin.partition, offset = origin.offset, "writing a dead letter panicked; record dropped");
            return None;
        }
    };
    Some((letter, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::throttle::LimitSettings;

    fn share() -> Share {
        let limits = LimitSettings {
            rate: 100.0,
            burst: 10,
            max_wait: Duration::from_secs(1),
            max_deferrals: 1,
            max_waiting: std::num::NonZeroUsize::MIN,
            hosts: Default::default(),
        };
        Share {
            throttle: Arc::new(Throttle::new(limits)),
            owned: Default::default(),
            total: Default::default(),
            updating: Default::default(),
        }
    }

    /// What a caught panic leaves: the record whole in a dead letter with
    /// reason `panic` and the panic's message; a retry's integration and
    /// history kept; nothing when writing a dead letter itself panicked.
    #[test]
    fn a_panic_dead_letters_the_record_it_was_handling() {
        let origin = Origin {
            topic: "device-events".into(),
            partition: 3,
            offset: 42,
        };
        let raw = r#"{"name":"temp","data":"1","coreid":"e00fce68aaaaaaaaaaaaaaaa"}"#;
        let event = DeviceEvent::decode(raw.as_bytes(), &origin, Utc::now()).unwrap();
        let panic: Box<dyn std::any::Any + Send> = Box::new(String::from("index out of bounds"));
        let (letter, key) =
            panic_letter(&origin, Work::Deliver(event, Vec::new()), &*panic).expect("a letter");
        assert_eq!(letter.reason, "panic");
        assert_eq!(letter.payload.as_deref(), Some(raw));
        assert!(
            letter.error.contains("index out of bounds"),
            "{}",
            letter.error
        );
        assert_eq!((letter.partition, letter.offset), (3, 42));
        assert_eq!(key, "e00fce68aaaaaaaaaaaaaaaa");

        let retry = RetryRecord {
            event: raw.into(),
            origin: origin.clone(),
            integration: "i1".into(),
            product: None,
            attempt: 2,
            due_at_ms: 0,
            published_at: None,
            history: vec![crate::policy::retry::AttemptLog {
                attempt: 1,
                at: "2026-12-03T00:00:00.000Z".into(),
                outcome: "error".into(),
            }],
        };
        let panic: Box<dyn std::any::Any + Send> = Box::new("boom");
        let (letter, _) =
            panic_letter(&origin, Work::Retry(Box::new(retry)), &*panic).expect("a letter");
        assert_eq!(letter.integration.as_deref(), Some("i1"));
        assert_eq!(letter.history.len(), 1);
        assert!(letter.error.contains("boom"));

        let letter = DeadLetter::invalid_event(
            &InvalidEvent {
                reason: InvalidReason::NotJson,
                message: "x".into(),
            },
            &origin,
            b"x",
        );
        assert!(panic_letter(&origin, Work::DeadLetter(Box::new(letter), None), &*panic).is_none());
    }

    #[test]
    fn the_share_counts_event_and_retry_partitions_together() {
        let s = share();
        s.throttle.set_share(0, 0);
        s.set(&s.total, EVENTS, 6);
        s.set(&s.total, RETRIES, 12);
        assert_eq!(
            s.throttle.share(),
            1e-3,
            "nothing owned before the first assignment"
        );
        s.set(&s.owned, EVENTS, 2);
        s.set(&s.owned, RETRIES, 4);
        assert!((s.throttle.share() - 6.0 / 18.0).abs() < 1e-9);
        // A worker left with retry partitions only still has its part.
        s.set(&s.owned, EVENTS, 0);
        assert!((s.throttle.share() - 4.0 / 18.0).abs() < 1e-9);
        // The events topic gains partitions: every share shrinks.
        s.set(&s.total, EVENTS, 12);
        assert!((s.throttle.share() - 4.0 / 24.0).abs() < 1e-9);
    }
}
