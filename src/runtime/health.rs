//! The worker's own HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (503 naming any partition whose commit point is stuck), `/livez` (the
//! process answers) and `/readyz` (integrations loaded and consuming).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::pipeline::consume::Readiness;

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
