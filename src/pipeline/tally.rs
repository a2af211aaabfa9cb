//! Record: count every delivery's outcome per integration and per product.
//!
//! In: a [`Match`] and its [`Outcome`]. Out: Prometheus series
//! (`hookd_webhook_attempts_total`, `hookd_webhook_duration_seconds`) and an
//! in-process [`Tally`] of success / error / skipped per (integration,
//! product), which the demo prints and the stats publisher reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::control::traffic::book::TrafficBook;
use crate::model::outcome::{Counts, OutcomeKind};
use crate::pipeline::deliver::Outcome;
use crate::pipeline::resolve::Match;
use crate::runtime::telemetry::{WEBHOOK_ATTEMPTS, WEBHOOK_DURATION};

/// Key of a tally row: integration id and the product the event came from
/// (`None` for sandbox deliveries of non-product devices).
pub type TallyKey = (Arc<str>, Option<u32>);

/// A row of the tally, with its Prometheus counters made once (a labelled
/// counter looked up by name per attempt costs a key built, hashed and
/// compared).
#[derive(Debug, Default)]
struct Row {
    counts: Counts,
    /// Success, error, skipped.
    attempts: Option<[metrics::Counter; 3]>,
}

/// In-process counters. A plain mutex: the critical section is one hash
/// update, far shorter than anything that would justify a sharded map.
#[derive(Debug, Default, Clone)]
pub struct Tally(Arc<Mutex<HashMap<TallyKey, Row>>>);

impl Tally {
    pub fn add(&self, integration: &Arc<str>, product: Option<u32>, kind: OutcomeKind) {
        self.add_counted(integration, product, kind, None);
    }

    /// Adds one and increments the row's Prometheus counter, made on the
    /// row's first attempt (`integration_label`: with the integration id).
    fn add_counted(
        &self,
        integration: &Arc<str>,
        product: Option<u32>,
        kind: OutcomeKind,
        prometheus: Option<bool>,
    ) {
        let mut map = self.0.lock().expect("tally lock is never poisoned");
        let row = map.entry((integration.clone(), product)).or_default();
        row.counts.add(kind);
        if let Some(integration_label) = prometheus {
            let counters = row
                .attempts
                .get_or_insert_with(|| attempt_counters(integration, product, integration_label));
            counters[kind as usize].increment(1);
        }
    }

    /// A copy of every row, sorted by integration then product.
    pub fn snapshot(&self) -> Vec<(TallyKey, Counts)> {
        let map = self.0.lock().expect("tally lock is never poisoned");
        let mut rows: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.counts)).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Sum over every integration for one product.
    pub fn product_total(&self, product: u32) -> Counts {
        let map = self.0.lock().expect("tally lock is never poisoned");
        map.iter().filter(|((_, p), _)| *p == Some(product)).fold(
            Counts::default(),
            |mut acc, (_, row)| {
                acc += row.counts;
                acc
            },
        )
    }

    pub fn get(&self, integration: &str, product: Option<u32>) -> Counts {
        let map = self.0.lock().expect("tally lock is never poisoned");
        map.get(&(Arc::from(integration), product))
            .map(|row| row.counts)
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
        self.tally.add_counted(
            &m.integration.id,
            m.product,
            kind,
            Some(self.integration_label),
        );
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
