//! Telemetry: metric names, their descriptions, the Prometheus recorder and
//! the tracing subscriber.
//!
//! Label cardinality is bounded: `integration` (one per configured
//! integration, and droppable by config), `product` (one per product),
//! `outcome` (`success`, `error`, `skipped`) and `reason` (the closed set of
//! [`crate::model::event::InvalidReason`]). URLs and hosts are never labels.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Records consumed from the events topic, valid or not.
pub(crate) const EVENTS_CONSUMED: &str = "hookd_events_consumed_total";
/// Records refused by decode, by `reason`; each went to the dead-letter topic.
pub(crate) const EVENTS_INVALID: &str = "hookd_events_invalid_total";
/// Valid events that fired no integration.
pub(crate) const EVENTS_UNMATCHED: &str = "hookd_events_unmatched_total";
/// Delivery attempts by `integration`, `product`, `outcome`.
pub(crate) const WEBHOOK_ATTEMPTS: &str = "hookd_webhook_attempts_total";
/// Time from sending a request to its outcome, by `outcome`.
pub(crate) const WEBHOOK_DURATION: &str = "hookd_webhook_duration_seconds";
/// Requests in flight now.
pub(crate) const INFLIGHT_DELIVERIES: &str = "hookd_inflight_deliveries";
/// Time deliveries waited for their host's rate limit.
pub(crate) const THROTTLE_WAIT: &str = "hookd_throttle_wait_seconds";
/// Deliveries handed to the retry topic because their host's limit would
/// have held them longer than `limits.max_wait`.
pub(crate) const DEFERRED: &str = "hookd_deliveries_deferred_total";
/// Failed or skipped attempts scheduled for a retry.
pub(crate) const RETRIES_SCHEDULED: &str = "hookd_retries_scheduled_total";
/// Deliveries given up on, by `reason` (`retries_exhausted`, `render_failed`).
pub(crate) const DELIVERIES_DEAD_LETTERED: &str = "hookd_deliveries_dead_lettered_total";
/// Records hookd had to write and could not, dropped, by `reason`
/// (`unproducible`: refused by the broker even shrunk).
pub(crate) const RECORDS_DROPPED: &str = "hookd_records_dropped_total";
/// Events whose handling failed in an unexpected way, by `reason` (`panic`);
/// each was dead-lettered and its partition went on.
pub(crate) const EVENTS_FAILED: &str = "hookd_events_failed_total";
/// Partitions whose commit point has not moved for `worker.stall_after`
/// while records of them are in flight.
pub(crate) const PARTITIONS_STALLED: &str = "hookd_partitions_stalled";
/// Retries not attempted because their integration no longer applies, by
/// `reason` (`deleted`, `disabled`, `separated`: the event's product was
/// separated from the org integration, `out_of_scope`: no longer executing
/// on the event's product, owner or device otherwise; `invalid`).
pub(crate) const RETRIES_DROPPED: &str = "hookd_retries_dropped_total";
/// Config-log records applied (created, updated, deleted or restated).
pub(crate) const CONFIG_APPLIED: &str = "hookd_config_records_applied_total";
/// Integration records refused at load, by source.
pub(crate) const CONFIG_INVALID: &str = "hookd_config_records_invalid_total";

/// Installs the process-wide Prometheus recorder once and returns its handle;
/// later calls (tests starting several workers) get the same handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(WEBHOOK_DURATION.to_owned()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
                    ],
                )
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        Unit::Count,
        "Records consumed from the events topic."
    );
    describe_counter!(
        EVENTS_INVALID,
        Unit::Count,
        "Records refused as events, by reason; each was dead-lettered."
    );
    describe_counter!(
        EVENTS_UNMATCHED,
        Unit::Count,
        "Valid events that fired no integration."
    );
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        Unit::Count,
        "Webhook attempts by integration, product and outcome."
    );
    describe_histogram!(
        WEBHOOK_DURATION,
        Unit::Seconds,
        "Webhook request duration by outcome."
    );
    describe_gauge!(
        INFLIGHT_DELIVERIES,
        Unit::Count,
        "Webhook requests in flight."
    );
    describe_counter!(
        RECORDS_DROPPED,
        Unit::Count,
        "Records that could not be produced even shrunk, dropped, by reason."
    );
    describe_counter!(
        EVENTS_FAILED,
        Unit::Count,
        "Events whose handling failed unexpectedly (reason=panic); each was dead-lettered."
    );
    describe_gauge!(
        PARTITIONS_STALLED,
        Unit::Count,
        "Partitions whose commit point has not moved for worker.stall_after with work in flight."
    );
    describe_counter!(
        RETRIES_DROPPED,
        Unit::Count,
        "Retries dropped because their integration was deleted, disabled or no longer executes on the event, by reason."
    );
    describe_counter!(CONFIG_APPLIED, Unit::Count, "Config-log records applied.");
    describe_counter!(
        CONFIG_INVALID,
        Unit::Count,
        "Integration records refused at load."
    );
}

/// Structured logs to stderr, filtered by `filter` (RUST_LOG syntax, which
/// the `RUST_LOG` variable overrides when set).
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
