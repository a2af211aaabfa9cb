//! Tally: count every delivery's outcome per integration and per product.
//!
//! In: a [`Match`] and its [`Outcome`]. Out: Prometheus series
//! (`hookd_webhook_attempts_total`, `hookd_webhook_duration_seconds`) and an
//! in-process [`Tally`] of success / error / skipped per (integration,
//! product), which the demo prints; with a [`TrafficBook`], the per-minute
//! counts the worker publishes for the api's history.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::model::outcome::{CountKey, Counts, Outcome, OutcomeKind};
use crate::pipeline::resolve::Match;
use crate::pipeline::traffic::TrafficBook;
use crate::runtime::telemetry::{WEBHOOK_ATTEMPTS, WEBHOOK_DURATION};

/// The counts of one (integration, product), with its Prometheus counters
/// made once (a labelled counter looked up by name per attempt costs a key
/// built, hashed and compared).
#[derive(Debug, Default)]
struct Entry {
    counts: Counts,
    /// Success, error, skipped.
    attempts: Option<[metrics::Counter; 3]>,
}

/// Whether an attempt also goes to `hookd_webhook_attempts_total`, and with
/// which labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    /// The tally only (the demo's, tests').
    None,
    /// Labelled by product and outcome.
    PerProduct,
    /// Also by integration (`metrics.integration_label`).
    PerIntegration,
}

/// In-process counters, on a sharded map: every delivery counts here, so
/// concurrent deliveries of different integrations must not queue on one
/// lock.
#[derive(Debug, Default, Clone)]
pub struct Tally(Arc<DashMap<CountKey, Entry>>);

impl Tally {
    pub fn add(&self, integration: &Arc<str>, product: Option<u32>, kind: OutcomeKind) {
        self.add_to(integration, product, kind, Series::None);
    }

    /// Adds one and increments the entry's Prometheus counter of `series`,
    /// made on the entry's first attempt.
    fn add_to(
        &self,
        integration: &Arc<str>,
        product: Option<u32>,
        kind: OutcomeKind,
        series: Series,
    ) {
        let mut entry = self.0.entry((integration.clone(), product)).or_default();
        entry.counts.add(kind);
        let per_integration = match series {
            Series::None => return,
            Series::PerProduct => false,
            Series::PerIntegration => true,
        };
        let counters = entry
            .attempts
            .get_or_insert_with(|| attempt_counters(integration, product, per_integration));
        counters[kind as usize].increment(1);
    }

    /// A copy of every entry, sorted by integration then product.
    pub fn snapshot(&self) -> Vec<(CountKey, Counts)> {
        let mut rows: Vec<_> = self
            .0
            .iter()
            .map(|e| (e.key().clone(), e.value().counts))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Sum over every integration for one product.
    pub fn product_total(&self, product: u32) -> Counts {
        self.0.iter().filter(|e| e.key().1 == Some(product)).fold(
            Counts::default(),
            |mut acc, e| {
                acc += e.value().counts;
                acc
            },
        )
    }

    pub fn get(&self, integration: &str, product: Option<u32>) -> Counts {
        self.0
            .get(&(Arc::from(integration), product))
            .map(|e| e.counts)
            .unwrap_or_default()
    }
}

/// Records outcomes to metrics and the tally.
#[derive(Debug, Clone)]
pub struct Recorder {
    tally: Tally,
    /// Counts and samples for the api's history, when published.
    traffic: Option<Arc<TrafficBook>>,
    /// Config `metrics.integration_label`: off for fleets with very many
    /// integrations, where one series per integration costs too much.
    integration_label: bool,
    /// `hookd_webhook_duration_seconds` per outcome, made on first use
    /// (from the metrics recorder installed by then).
    durations: Arc<OnceLock<[metrics::Histogram; 3]>>,
}

/// `hookd_webhook_attempts_total` of one (integration, product), per outcome.
fn attempt_counters(
    integration: &str,
    product: Option<u32>,
    integration_label: bool,
) -> [metrics::Counter; 3] {
    let product = product.map(|p| p.to_string()).unwrap_or_default();
    OutcomeKind::ALL.map(|kind| {
        if integration_label {
            metrics::counter!(WEBHOOK_ATTEMPTS, "integration" => integration.to_owned(), "product" => product.clone(), "outcome" => kind.as_label())
        } else {
            metrics::counter!(WEBHOOK_ATTEMPTS, "product" => product.clone(), "outcome" => kind.as_label())
        }
    })
}

impl Recorder {
    pub fn new(tally: Tally, integration_label: bool) -> Recorder {
        Recorder {
            tally,
            traffic: None,
            integration_label,
            durations: Arc::default(),
        }
    }

    /// Also counts into `book`, for publishing.
    pub fn with_traffic(mut self, book: Arc<TrafficBook>) -> Recorder {
        self.traffic = Some(book);
        self
    }

    pub fn traffic(&self) -> Option<&Arc<TrafficBook>> {
        self.traffic.as_ref()
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    pub fn record(&self, m: &Match, outcome: &Outcome) {
        let kind = if outcome.is_success() {
            OutcomeKind::Success
        } else {
            OutcomeKind::Error
        };
        self.record_kind(m, kind, outcome.elapsed);
    }

    /// Counts an attempt of `kind` that took `elapsed` (zero for skipped).
    pub fn record_kind(&self, m: &Match, kind: OutcomeKind, elapsed: std::time::Duration) {
        let series = if self.integration_label {
            Series::PerIntegration
        } else {
            Series::PerProduct
        };
        self.tally
            .add_to(&m.integration.id, m.product, kind, series);
        if let Some(book) = &self.traffic {
            book.count(&m.integration.id, m.product, kind);
        }
        let durations = self.durations.get_or_init(|| {
            OutcomeKind::ALL
                .map(|kind| metrics::histogram!(WEBHOOK_DURATION, "outcome" => kind.as_label()))
        });
        durations[kind as usize].record(elapsed.as_secs_f64());
    }
}
