//! The worker's own HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (503 naming any partition whose commit point is stuck), `/livez` (the
//! process answers) and `/readyz` (integrations loaded and consuming).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Set once the worker consumes with its integrations loaded; `/readyz`
/// answers from it. `/healthz` asks it for stalled partitions, which the
/// worker describes once it runs ([`Readiness::watch`]).
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    stalled: Arc<OnceLock<Stalled>>,
}

/// Partitions whose commit point is stuck, described for a person.
type Stalled = Box<dyn Fn() -> Vec<String> + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How to find stalled partitions; the first call wins.
    pub fn watch(&self, stalled: impl Fn() -> Vec<String> + Send + Sync + 'static) {
        let _ = self.stalled.set(Box::new(stalled));
    }

    /// Partitions whose commit point has not moved for `worker.stall_after`
    /// with records in flight, described for a person
    /// (`device-events/3 at offset 1509 for 312s`).
    pub fn stalled(&self) -> Vec<String> {
        self.stalled.get().map(|f| f()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct Endpoints {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Histograms keep raw samples until upkeep folds them; without it memory
    // grows between scrapes.
    let upkeep = metrics.clone();
    let upkeep_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_stop.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(health))
        // The process answers: for a liveness probe, which should not
        // restart a worker whose partition waits for a broker to come back.
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoints { metrics, readiness });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn render_metrics(State(e): State<Endpoints>) -> String {
    e.metrics.render()
}

/// 200 while every partition's commit point moves; 503 naming the
/// partitions that are stuck (a record whose work never ends holds back
/// everything after it).
async fn health(State(e): State<Endpoints>) -> (StatusCode, String) {
    let stalled = e.readiness.stalled();
    if stalled.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: {}\n", stalled.join(", ")),
        )
    }
}

async fn ready(State(e): State<Endpoints>) -> (StatusCode, &'static str) {
    if e.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
