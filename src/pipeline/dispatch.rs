//! Dispatch: one attempt of one delivery under the delivery policy.
//!
//! In: an [`Attempt`] (integration, event, attempt number, history) and the
//! event's template context. Out: the attempt settled: sent and recorded
//! (success or error), skipped because its host is asleep, or deferred by its
//! host's rate limit; response events published; a failure handed to its
//! retry topic or, past the schedule, to the dead-letter topic. Returns
//! [`Settled::Abandoned`] only when shutdown interrupted a hand-off to Kafka,
//! in which case the caller must not commit the event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, ThreadedProducer};
use rdkafka::util::Timeout;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::model::event::Origin;
use crate::model::outcome::{Outcome, OutcomeKind};
use crate::model::request::RenderFailure;
use crate::model::variables::EventContext;
use crate::pipeline::deliver::Deliverer;
use crate::pipeline::render::{render, url_host};
use crate::pipeline::resolve::Match;
use crate::pipeline::tally::Recorder;
use crate::policy::clock::MonotonicClock;
use crate::policy::dead_letter::{DeadLetter, DeliveryFailure, Dropped};
use crate::policy::responses::{
    error_event, error_message, hook_sent, response_chunks, ResponseEvent, ResponseReports,
    SLEEPING_MESSAGE,
};
use crate::policy::retry::{AttemptLog, AttemptOutcome, Next, RetryRecord, RetrySettings};
use crate::policy::sign::Signer;
use crate::policy::sleeping::SleepingHosts;
use crate::policy::throttle::{Decision, Throttle};
use crate::runtime::config::Settings;
use crate::runtime::telemetry::{
    DEFERRED, DELIVERIES_DEAD_LETTERED, INFLIGHT_DELIVERIES, RECORDS_DROPPED, RETRIES_SCHEDULED,
    THROTTLE_WAIT,
};

/// The intake permit of the record an attempt belongs to. Released as soon
/// as one of its deliveries starts waiting for a rate-limited host, so the
/// worker's intake (`worker.max_inflight_events`) counts only records being
/// worked on, never ones parked in a host's queue.
pub struct Intake(Mutex<Option<OwnedSemaphorePermit>>);

impl Intake {
    pub fn new(permit: OwnedSemaphorePermit) -> Intake {
        Intake(Mutex::new(Some(permit)))
    }

    fn release(&self) {
        let permit = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(permit);
    }
}

/// One attempt of one delivery.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub matched: Match,
    /// 1 for the first attempt.
    pub number: u32,
    pub history: Vec<AttemptLog>,
    /// Where the event was first read; carried into retries so the event id
    /// (and idempotency key) never changes.
    pub origin: Origin,
}

/// How an attempt ended, for the offset bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Delivered, skipped, deferred, retried or dead-lettered: done here.
    Done,
    /// Shutdown interrupted the hand-off to Kafka; do not commit.
    Abandoned,
}

/// Everything an attempt needs, shared by every delivery of a worker.
pub struct Dispatcher {
    deliverer: Deliverer,
    recorder: Recorder,
    /// Requests in flight across the worker.
    deliveries: Arc<Semaphore>,
    throttle: Arc<Throttle>,
    /// Places for deliveries waiting for their hosts' quotas
    /// (`limits.max_waiting`).
    waiting: Arc<Semaphore>,
    sleeping: Arc<SleepingHosts<MonotonicClock>>,
    /// Retries and dead letters: awaited.
    producer: FutureProducer,
    /// Response events: fire and forget.
    responder: ThreadedProducer<ResponseReports>,
    retry: RetrySettings,
    responses_topic: String,
    dead_letter_topic: String,
    meters: Meters,
}

/// The unlabelled series every attempt touches, looked up once.
struct Meters {
    throttle_wait: metrics::Histogram,
    inflight: metrics::Gauge,
}

/// From the metrics recorder installed at the time.
impl Default for Meters {
    fn default() -> Meters {
        Meters {
            throttle_wait: metrics::histogram!(THROTTLE_WAIT),
            inflight: metrics::gauge!(INFLIGHT_DELIVERIES),
        }
    }
}

impl Dispatcher {
    /// A worker's dispatcher, sharing its rate limits and host ratings and
    /// counting with its recorder; its Kafka producers made from `s.kafka`.
    pub fn new(
        s: &Settings,
        recorder: Recorder,
        throttle: Arc<Throttle>,
        sleeping: Arc<SleepingHosts<MonotonicClock>>,
    ) -> Result<Dispatcher, KafkaError> {
        let k = &s.kafka;
        Ok(Dispatcher {
            deliverer: Deliverer::new(&s.delivery, &s.outbound),
            recorder,
            deliveries: Arc::new(Semaphore::new(s.worker.max_inflight_deliveries.get())),
            throttle,
            waiting: Arc::new(Semaphore::new(s.limits.max_waiting.get())),
            sleeping,
            producer: crate::runtime::kafka::producer_config(k).create()?,
            // Reports only for failures: a report per record is an
            // allocation and a callback per webhook for nothing.
            responder: crate::runtime::kafka::producer_config(k)
                .set("delivery.report.only.error", "true")
                .create_with_context(ResponseReports)?,
            retry: s.retry.clone(),
            responses_topic: k.responses_topic.clone(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            meters: Meters::default(),
        })
    }

    /// The producer retries and dead letters go through, for other records
    /// the worker writes (its traffic).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Sends what the producers still hold, both at once, for at most
    /// `timeout`: fire-and-forget response events included. Blocks the
    /// thread.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        std::thread::scope(|s| {
            s.spawn(|| {
                let _ = self.responder.flush(timeout);
            });
            let _ = self.producer.flush(timeout);
        });
    }

    pub async fn attempt(
        &self,
        ctx: &EventContext,
        a: Attempt,
        intake: &Intake,
        shutdown: &CancellationToken,
    ) -> Settled {
        let i = a.matched.integration.clone();
        let mut request = match render(&i, ctx) {
            Ok(r) => r,
            Err(e) => {
                self.recorder
                    .record_kind(&a.matched, OutcomeKind::Error, Duration::ZERO);
                // Capped: a render error may quote what was rendered.
                let message =
                    crate::policy::dead_letter::cap(&format!("error rendering the request: {e}"));
                self.sample_failure(ctx, &a, &message);
                self.respond(ctx, error_event(&i, ctx, message));
                if let RenderFailure::EventBudget { .. } = e {
                    // Other integrations of the event spent its budget; the
                    // retry renders with one of its own.
                    let failed = AttemptOutcome::Failed(e.to_string());
                    return Box::pin(self.after_failure(ctx, a, failed, None, shutdown)).await;
                }
                // Otherwise deterministic: retrying would fail the same way.
                return Box::pin(self.dead_letter(
                    ctx,
                    a,
                    DeliveryFailure::RenderFailed,
                    e.to_string(),
                    shutdown,
                ))
                .await;
            }
        };
        let host = url_host(&request.url).to_owned();

        if !self.sleeping.admit(&i.tenant, &host) {
            self.recorder
                .record_kind(&a.matched, OutcomeKind::Skipped, Duration::ZERO);
            self.sample_failure(ctx, &a, SLEEPING_MESSAGE);
            self.respond(ctx, error_event(&i, ctx, SLEEPING_MESSAGE.into()));
            let skipped = AttemptOutcome::Skipped;
            return Box::pin(self.after_failure(ctx, a, skipped, None, shutdown)).await;
        }

        // What bounds this delivery in memory until it is sent: the intake
        // permit, or, once it has waited, its place among the deliveries
        // waiting for their hosts.
        let (a, held) = match self.throttle.reserve(&host, Duration::ZERO) {
            // Most deliveries: a host without a limit, or under it.
            Decision::Go => {
                self.meters.throttle_wait.record(0.0);
                (a, None)
            }
            Decision::Wait(_) | Decision::Defer(_) => {
                match Box::pin(self.wait_for_host(ctx, a, &host, intake, shutdown)).await {
                    Ok(waited) => waited,
                    Err(deferred) => return deferred,
                }
            }
        };

        if let Err(e) = Signer::sign_for(&i, ctx, &mut request) {
            self.recorder
                .record_kind(&a.matched, OutcomeKind::Error, Duration::ZERO);
            // Capped: the error quotes the tenant's own `signingSecret` name.
            let message =
                crate::policy::dead_letter::cap(&format!("error signing the request: {e}"));
            self.sample_failure(ctx, &a, &message);
            self.respond(ctx, error_event(&i, ctx, message));
            // Deterministic until the operator changes the secret.
            let failure = DeliveryFailure::SigningFailed;
            return Box::pin(self.dead_letter(ctx, a, failure, e.to_string(), shutdown)).await;
        }

        self.respond(ctx, hook_sent(ctx));
        let outcome: Outcome = {
            let _permit = self
                .deliveries
                .acquire()
                .await
                .expect("the semaphore is never closed");
            self.meters.inflight.increment(1.0);
            // Boxed, like the failure paths' futures below: hyper's request
            // future is ~3 KiB, and every task holding an attempt would
            // otherwise be that much larger, copied whole when it is
            // spawned.
            let outcome = Box::pin(self.deliverer.send(&request, i.reject_unauthorized)).await;
            self.meters.inflight.decrement(1.0);
            outcome
        };
        drop(held);
        self.sleeping
            .observe(&i.tenant, &host, outcome.is_success());
        self.recorder.record(&a.matched, &outcome);
        if let Some(book) = self.recorder.traffic() {
            book.sample(&i, a.matched.product, ctx.event(), &outcome);
        }
        match &outcome.result {
            Ok(_) => {
                match response_chunks(&i, ctx, &outcome.body, outcome.content_type.as_ref()) {
                    Ok(events) => {
                        for e in events {
                            self.respond(ctx, e);
                        }
                    }
                    Err(e) => self.respond(
                        ctx,
                        error_event(&i, ctx, format!("error rendering the response: {e}")),
                    ),
                }
                Settled::Done
            }
            Err(e) => {
                self.respond(ctx, error_event(&i, ctx, error_message(e, &host)));
                // A connection error may name a host built from a secret.
                let label = ctx.mask(e.to_string().into()).into_owned();
                tracing::debug!(integration = %i.id, event = %ctx.event().id, attempt = a.number, error = %label, "webhook failed");
                let failed = AttemptOutcome::Failed(label);
                Box::pin(self.after_failure(ctx, a, failed, outcome.retry_after, shutdown)).await
            }
        }
    }

    /// An attempt over its host's quota: it takes a place among the
    /// deliveries waiting for their hosts and waits in the host's queue,
    /// giving back the worker's intake, and comes back with the place (kept
    /// until its request is sent, so records out of the intake stay bounded
    /// by `limits.max_waiting`); or it is deferred (`Err`), when no place is
    /// left or the whole queue's wait is over `limits.max_wait`.
    async fn wait_for_host(
        &self,
        ctx: &EventContext,
        a: Attempt,
        host: &str,
        intake: &Intake,
        shutdown: &CancellationToken,
    ) -> Result<(Attempt, Option<OwnedSemaphorePermit>), Settled> {
        let place = self.waiting.clone().try_acquire_owned().ok();
        let max_wait = match (&place, self.retry.delays.is_empty()) {
            // No place left: only an immediate slot will do.
            (None, _) => Duration::ZERO,
            // Without retry topics there is nowhere to defer to.
            (Some(_), true) => Duration::MAX,
            (Some(_), false) => self.throttle.max_wait(),
        };
        match self.throttle.reserve(host, max_wait) {
            // The slot came free meanwhile; the intake permit bounds it.
            Decision::Go => {
                self.meters.throttle_wait.record(0.0);
                Ok((a, None))
            }
            Decision::Wait(d) => {
                // The consumer goes on taking events for every other host
                // meanwhile.
                intake.release();
                tokio::time::sleep(d).await;
                self.meters.throttle_wait.record(d.as_secs_f64());
                Ok((a, place))
            }
            Decision::Defer(d) => {
                drop(place);
                Err(self.defer(ctx, a, host, d, shutdown).await)
            }
        }
    }

    /// Keeps an attempt that ended before its request was sent for the
    /// delivery log.
    fn sample_failure(&self, ctx: &EventContext, a: &Attempt, message: &str) {
        if let Some(book) = self.recorder.traffic() {
            let m = &a.matched;
            book.sample_failure(&m.integration, m.product, ctx.event(), message.to_owned());
        }
    }

    /// A failed or skipped attempt: the next retry, or the dead-letter topic.
    async fn after_failure(
        &self,
        ctx: &EventContext,
        mut a: Attempt,
        outcome: AttemptOutcome,
        retry_after: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Settled {
        let now = chrono::Utc::now();
        a.history.push(AttemptLog {
            attempt: a.number,
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            outcome: outcome.clone(),
        });
        match self
            .retry
            .after_failure(a.number, retry_after, now.timestamp_millis())
        {
            Next::Retry { topic, due_at_ms } => {
                metrics::counter!(RETRIES_SCHEDULED).increment(1);
                let number = a.number + 1;
                self.schedule(ctx, a, number, &topic, due_at_ms, shutdown)
                    .await
            }
            Next::DeadLetter => {
                let error = outcome.as_str().to_owned();
                self.dead_letter(ctx, a, DeliveryFailure::RetriesExhausted, error, shutdown)
                    .await
            }
        }
    }

    /// The host's limit would hold this attempt too long: it waits in the
    /// retry topic instead, keeping its attempt number, unless it was
    /// deferred `limits.max_deferrals` times already: then it is
    /// dead-lettered (`rate_limited`).
    async fn defer(
        &self,
        ctx: &EventContext,
        mut a: Attempt,
        host: &str,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> Settled {
        let deferrals = a
            .history
            .iter()
            .filter(|h| h.outcome == AttemptOutcome::Deferred)
            .count();
        let max = self.throttle.settings().max_deferrals as usize;
        // Without retry topics there is nowhere to defer to.
        if deferrals >= max || self.retry.delays.is_empty() {
            let error = format!(
                "deferred {deferrals} times by the rate limit of {host} (limits.max_deferrals)"
            );
            self.sample_failure(ctx, &a, &error);
            return self
                .dead_letter(ctx, a, DeliveryFailure::RateLimited, error, shutdown)
                .await;
        }
        metrics::counter!(DEFERRED).increment(1);
        a.history.push(AttemptLog {
            attempt: a.number,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            outcome: AttemptOutcome::Deferred,
        });
        // In the topic of a delay at least as long as the wait, so it never
        // holds up records behind it there (see `RetrySettings::step_for`).
        // Due no later than its topic's delay: a longer wait (a limit at the
        // least share, just after a revocation) would pause that topic's
        // partition for as long. Deferred again then if still limited.
        let step = self.retry.step_for(wait);
        let wait = wait.min(self.retry.delays[step]);
        let due = chrono::Utc::now().timestamp_millis() + wait.as_millis() as i64;
        let number = a.number;
        let topic = self.retry.topic(step);
        self.schedule(ctx, a, number, &topic, due, shutdown).await
    }

    async fn schedule(
        &self,
        ctx: &EventContext,
        a: Attempt,
        number: u32,
        topic: &str,
        due_at_ms: i64,
        shutdown: &CancellationToken,
    ) -> Settled {
        let record = RetryRecord {
            event: ctx.event().raw.clone(),
            origin: a.origin,
            integration: a.matched.integration.id.to_string(),
            product: a.matched.product,
            attempt: number,
            due_at_ms,
            history: a.history,
            published_at: Some(ctx.event().published_at.clone()),
        };
        let key = &ctx.event().device_id;
        match self.send(topic, key, &record.to_json(), shutdown).await {
            Ok(()) => Settled::Done,
            Err(SendError::Abandoned) => Settled::Abandoned,
            // The retry can never be written (too large for the broker, or
            // refused for good): the delivery is dead-lettered instead, in
            // a form that always fits.
            Err(SendError::Permanent(e)) => {
                let reason = DeliveryFailure::ProduceFailed;
                metrics::counter!(DELIVERIES_DEAD_LETTERED, "reason" => reason.as_label())
                    .increment(1);
                let letter = DeadLetter::delivery(
                    reason,
                    format!("the retry record could not be produced to {topic}: {e}"),
                    &record.event,
                    &record.origin,
                    &record.integration,
                    record.history,
                );
                self.write_dead_letter(key, letter, shutdown).await
            }
        }
    }

    async fn dead_letter(
        &self,
        ctx: &EventContext,
        a: Attempt,
        reason: DeliveryFailure,
        error: String,
        shutdown: &CancellationToken,
    ) -> Settled {
        metrics::counter!(DELIVERIES_DEAD_LETTERED, "reason" => reason.as_label()).increment(1);
        // Masked before it reaches the log and the dead letter: a render
        // error may quote what was rendered.
        let error = crate::policy::dead_letter::cap(&ctx.mask(error.into()));
        tracing::warn!(integration = %a.matched.integration.id, event = %ctx.event().id, reason = reason.as_label(), error = %error, "delivery dead-lettered");
        let letter = DeadLetter::delivery(
            reason,
            error,
            &ctx.event().raw,
            &a.origin,
            &a.matched.integration.id,
            a.history,
        );
        self.write_dead_letter(&ctx.event().device_id, letter, shutdown)
            .await
    }

    /// Writes `letter` to the dead-letter topic. A letter the broker refuses
    /// for good is written again cut to [`SHRUNK_PAYLOAD_BYTES`] without its
    /// history; one refused even so is dropped and counted, never retried
    /// forever (which would hold its partition's commit point).
    pub async fn write_dead_letter(
        &self,
        key: &str,
        letter: DeadLetter,
        shutdown: &CancellationToken,
    ) -> Settled {
        let topic = &self.dead_letter_topic;
        let e = match self.send(topic, key, &letter.to_json(), shutdown).await {
            Ok(()) => return Settled::Done,
            Err(SendError::Abandoned) => return Settled::Abandoned,
            Err(SendError::Permanent(e)) => e,
        };
        tracing::warn!(error = %e, reason = %letter.reason, "dead letter refused by the broker; writing it shrunk");
        let shrunk = letter.shrunk(SHRUNK_PAYLOAD_BYTES);
        match self.send(topic, key, &shrunk.to_json(), shutdown).await {
            Ok(()) => Settled::Done,
            Err(SendError::Abandoned) => Settled::Abandoned,
            Err(SendError::Permanent(e)) => {
                metrics::counter!(RECORDS_DROPPED, "reason" => Dropped::Unproducible.as_label())
                    .increment(1);
                tracing::error!(error = %e, reason = %shrunk.reason, topic = %shrunk.topic, partition = shrunk.partition, offset = shrunk.offset, "dead letter cannot be produced even shrunk; dropped");
                Settled::Done
            }
        }
    }

    /// Response events are handed to their own producer without waiting
    /// for the broker's acknowledgement: they never hold a delivery or an
    /// event's commit, and cost no task or channel per record (librdkafka's
    /// delivery report logs a failure, [`ResponseReports`]).
    fn respond(&self, ctx: &EventContext, event: ResponseEvent) {
        let payload = event.to_json(ctx);
        let record = BaseRecord::<str, [u8]>::to(&self.responses_topic)
            .key(&ctx.event().device_id)
            .payload(&payload);
        if let Err((e, _)) = self.responder.send(record) {
            tracing::warn!(error = %e, topic = %self.responses_topic, "response event not queued");
        }
    }

    /// Produces and waits for the broker's acknowledgement. Errors of the
    /// record itself (over the broker's size limit, malformed) are returned
    /// at once, for the caller to write something smaller or drop it; every
    /// other error (a broker down, a full queue, a refused topic) is retried
    /// with a growing pause until the record is written or shutdown.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        shutdown: &CancellationToken,
    ) -> Result<(), SendError> {
        let mut pause = Duration::from_millis(100);
        loop {
            let record = FutureRecord::<str, [u8]>::to(topic)
                .key(key)
                .payload(payload);
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
            {
                Ok(_) => return Ok(()),
                Err((e, _)) if is_permanent(&e) => {
                    tracing::error!(error = %e, topic, bytes = payload.len(), "record refused by the broker for good");
                    return Err(SendError::Permanent(e));
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, topic, retry_in = ?pause, "cannot produce; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(SendError::Abandoned),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_PRODUCE_PAUSE);
                }
            }
        }
    }
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Shutdown came first; the record's event must not be committed.
    #[error("shutdown interrupted the write")]
    Abandoned,
    /// The broker refuses this record for good.
    #[error("{0}")]
    Permanent(KafkaError),
}

/// The longest pause between two tries of a transient produce error.
const MAX_PRODUCE_PAUSE: Duration = Duration::from_secs(30);

/// Bytes of payload a dead letter keeps when the whole one was refused.
const SHRUNK_PAYLOAD_BYTES: usize = 16 * 1024;

/// Produce errors that the same record will meet again however often it is
/// tried.
fn is_permanent(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    // Only what is wrong with the record itself. A refused topic or a
    // missing ACL is the operator's to fix: retried (and the partition
    // reported stalled meanwhile), never a reason to drop records.
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::BadMessage
                | C::InvalidRecord
                | C::MessageBatchTooLarge
        )
    )
}
