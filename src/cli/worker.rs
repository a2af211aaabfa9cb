//! `hookd worker --config FILE`: the dispatch worker with its health and
//! metrics endpoints, stopped by SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::config_log::follower::ConfigLog;
use crate::control::source::FileSource;
use crate::pipeline::consume::Worker;
use crate::pipeline::resolve::{Index, IndexHandle};
use crate::runtime::config::{IntegrationSource, Settings};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// TOML settings laid over config/default.toml (then HOOKD_* env over both).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    crate::runtime::telemetry::init_tracing(&settings.log.filter);
    let metrics = crate::runtime::telemetry::metrics_handle();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    tokio::spawn(exit_if_stuck(
        shutdown.clone(),
        settings.worker.shutdown_grace + STOP_MARGIN,
    ));

    let listener = TcpListener::bind(settings.metrics.listen)
        .await
        .with_context(|| format!("binding metrics.listen {}", settings.metrics.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let index = IndexHandle::new(Index::default());
    let worker = Worker::new(settings.clone(), index.clone());
    let endpoints_stop = CancellationToken::new();
    let endpoints = tokio::spawn(crate::runtime::health::serve(
        listener,
        metrics,
        worker.readiness(),
        endpoints_stop.clone(),
    ));
    // /readyz stays 503 until the integrations are loaded: consuming before
    // would resolve events against an empty index.
    let mut config_log = None;
    match settings.integrations.source {
        IntegrationSource::File => {
            let path = &settings.integrations.path;
            let mut source = FileSource::with_limits(settings.templates);
            let loaded = source
                .load(path)
                .with_context(|| format!("loading integrations from {}", path.display()))?;
            tracing::info!(integrations = loaded.len(), "integrations loaded");
            index.swap(loaded);
            tokio::spawn(reload_on_sighup(
                path.clone(),
                source,
                index.clone(),
                shutdown.clone(),
            ));
        }
        IntegrationSource::Kafka => {
            let log = ConfigLog::start(
                &settings.kafka,
                Some(index.clone()),
                settings.templates,
                shutdown.clone(),
            )
            .await
            .context("starting the config log")?;
            tokio::select! {
                _ = log.caught_up() => {}
                _ = shutdown.cancelled() => {}
            }
            config_log = Some(log);
        }
    }

    // On the runtime's threads, not this one: records finishing wake the
    // intake loop, and a wake-up within the runtime's pool is cheaper than
    // unparking the thread blocked in `main`.
    // A worker whose consumer fails for good cancels `shutdown` itself, so
    // the rest stops with it and the error is the process's exit.
    let result = tokio::spawn(worker.run(shutdown.clone()))
        .await
        .expect("the worker does not panic");
    endpoints_stop.cancel();
    let _ = endpoints.await;
    // Its reader closed before the process goes, not by the runtime's
    // teardown.
    if let Some(log) = config_log {
        log.stopped().await;
    }
    result?;
    tracing::info!("worker stopped");
    Ok(())
}

/// SIGHUP reloads the integrations file or directory and swaps the index as
/// a whole while events flow (compiling only the records that changed); an
/// invalid file is refused with the reason and the previous integrations
/// keep running.
async fn reload_on_sighup(
    path: PathBuf,
    source: FileSource,
    index: IndexHandle,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let source = Arc::new(Mutex::new(source));
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => {}
            }
            let started = std::time::Instant::now();
            // Parsing and compiling many integrations is CPU work: keep it
            // off the runtime's threads so deliveries keep flowing.
            let load = crate::runtime::background::run("reload", {
                let (path, source) = (path.clone(), source.clone());
                move || {
                    let mut source = source.lock().expect("the reload lock is never poisoned");
                    source.load(&path).map(|new| (new, source.last_compiled))
                }
            });
            let Some(loaded) = load.await else { continue };
            match loaded {
                Ok((new, compiled)) => {
                    let count = new.len();
                    index.swap(new);
                    tracing::info!(
                        integrations = count,
                        compiled,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "integrations reloaded"
                    );
                }
                Err(e) => {
                    metrics::counter!(crate::runtime::telemetry::CONFIG_INVALID, "source" => "file")
                        .increment(1);
                    tracing::error!(error = %e, "reload refused; the previous integrations keep running");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, source, index, shutdown);
}

/// Time a stop may take beyond `worker.shutdown_grace`: the final commit
/// and leaving the groups beside the last traffic and the producers' flush
/// (each step bounded in the worker, 11 s at most together), and the
/// consumers' close.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(15);

/// Once `token` is cancelled, gives the stop `limit`; past it (a consumer's
/// close waiting on a coordinator that is gone, say) the
/// process exits 1 with a message. What was not committed is redelivered by
/// the partitions' next owners, as after a crash; a stop never hangs. A
/// thread of its own, so a runtime thread blocked in a Kafka call cannot
/// hold it up.
async fn exit_if_stuck(token: CancellationToken, limit: std::time::Duration) {
    token.cancelled().await;
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(
            ?limit,
            "stop did not finish in time (the broker is unreachable?); exiting: \
             uncommitted events will be redelivered"
        );
        std::process::exit(1);
    });
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub(crate) async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}
