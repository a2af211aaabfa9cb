//! The api process: its view of the config log, the writer, the traffic
//! history, the routes, and the repair of refused records.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::app::{test_call_limit, Api};
use super::auth::Tokens;
use super::{catalog, console, integrations, particle, traffic};
use crate::control::config_log::follower::{ConfigLog, ConfigLogError};
use crate::control::config_log::writer::ConfigWriter;
use crate::control::history::History;
use crate::model::secret_scopes::SecretPolicy;
use crate::pipeline::deliver::Deliverer;
use crate::runtime::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    #[error("{0}")]
    ConfigLog(#[from] ConfigLogError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("binding api.listen {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

fn router(api: Arc<Api>) -> Router {
    use catalog as c;
    use integrations as i;
    use particle as p;
    use traffic as t;
    let integration_routes = |base: &str| {
        Router::new()
            .route(base, get(i::list).post(i::create))
            .route(
                &format!("{base}/{{id}}"),
                get(i::get).put(i::edit).delete(i::delete),
            )
            .route(&format!("{base}/{{id}}/test"), post(t::test))
            .route(&format!("{base}/{{id}}/preview"), get(t::preview))
            .route(&format!("{base}/{{id}}/history"), get(t::history))
            .route(&format!("{base}/{{id}}/log"), get(t::log))
    };
    Router::new()
        .merge(integration_routes("/v1/integrations"))
        .merge(integration_routes("/v1/products/{product}/integrations"))
        .merge(integration_routes("/v1/orgs/{org}/integrations"))
        .route(
            "/v1/products/{product}/integrations/{id}/separate",
            post(i::separate),
        )
        // The older webhooks API of Particle's SDK and CLI, over the same
        // integrations.
        .route(
            "/v1/webhooks",
            get(p::list_webhooks).post(p::create_webhook),
        )
        .route("/v1/webhooks/{id}", get(i::get).delete(p::delete_webhook))
        .route(
            "/v1/products/{product}/webhooks",
            get(p::list_webhooks).post(p::create_webhook),
        )
        .route(
            "/v1/products/{product}/webhooks/{id}",
            get(i::get).delete(p::delete_webhook),
        )
        .route("/v1/orgs/{org}", get(c::get_org).put(c::put_org))
        .route("/v1/orgs/{org}/products", get(c::list_products))
        .route(
            "/v1/orgs/{org}/products/{id}",
            get(c::get_product)
                .put(c::put_product)
                .delete(c::delete_product),
        )
        .merge(console::routes())
        .with_state(api)
        .layer(axum::middleware::from_fn(p::particle_clients))
        .layer(axum::middleware::from_fn(close_if_body_unread))
}

/// A request answered with its body left unread (refused as too large, or
/// before it was read: a 401, a 404, a 405) makes the server close the
/// connection after the answer; saying so (`Connection: close`) keeps a
/// client from sending its next request down that connection as it closes.
async fn close_if_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::body::HttpBody;
    let has_body = !request.body().is_end_stream();
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|inner| {
        axum::body::Body::new(ReadToEnd {
            inner,
            read: read.clone(),
        })
    });
    let mut response = next.run(request).await;
    if has_body && !read.load(std::sync::atomic::Ordering::Acquire) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that notes when it was read to its end.
struct ReadToEnd {
    inner: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl axum::body::HttpBody for ReadToEnd {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A running api: where it listens and its task.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Replays the config log, then serves until `shutdown`.
pub async fn start(
    settings: &Settings,
    shutdown: CancellationToken,
) -> Result<RunningApi, ApiStartError> {
    let k = &settings.kafka;
    if k.create_topics {
        crate::runtime::kafka::ensure_topic_specs(k, &crate::runtime::kafka::traffic_topics(k))
            .await?;
    }
    let log = ConfigLog::start(k, None, settings.templates, shutdown.clone()).await?;
    let history = Arc::new(History::new(settings.api.history_days));
    let following = history.clone().follow(k, shutdown.clone()).await?;
    let producer: FutureProducer = crate::runtime::kafka::producer_config(k).create()?;
    let repairing = tokio::spawn(repair(log.clone(), producer.clone(), shutdown.clone()));
    let log_stopped = log.clone();
    tokio::select! {
        _ = log.caught_up() => {}
        _ = shutdown.cancelled() => {}
    }
    let api = Arc::new(Api {
        writer: ConfigWriter::new(producer, log.clone(), settings.api.apply_timeout),
        log,
        history,
        tokens: Tokens::new(&settings.api.tokens),
        deliverer: Deliverer::new(&settings.delivery, &settings.outbound),
        secrets: SecretPolicy::scoped(&settings.secrets, &settings.secret_scopes),
        max_per_tenant: settings.api.max_integrations_per_tenant.get(),
        test_calls: test_call_limit(settings.api.test_calls_per_minute.get()),
        console: Default::default(),
        secure_cookies: settings.api.secure_cookies,
    });
    let addr = settings.api.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| ApiStartError::Bind { addr, error })?;
    let addr = listener
        .local_addr()
        .map_err(|error| ApiStartError::Bind { addr, error })?;
    tracing::info!(%addr, "api serving /v1");
    // The task ends once every Kafka client of the api is closed: the
    // server's (the writer's producer goes with the router), the repair's,
    // the history's and the config log's readers.
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router(api))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "api server failed");
        }
        let _ = repairing.await;
        let _ = following.await;
        log_stopped.stopped().await;
    });
    Ok(RunningApi { addr, task })
}

/// After a refused record, restates the current record of its key, so that
/// compaction (which keeps only a key's last record) keeps the truth.
async fn repair(log: Arc<ConfigLog>, producer: FutureProducer, shutdown: CancellationToken) {
    let mut refused = log.refused_keys();
    loop {
        let key = tokio::select! {
            _ = shutdown.cancelled() => return,
            k = refused.recv() => match k {
                Ok(k) => k,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "refused config records not restated");
                    continue;
                }
                Err(_) => return,
            },
        };
        let value = log.state().restatement(&key);
        let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(log.topic()).key(&key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        match producer
            .send(
                record,
                rdkafka::util::Timeout::After(std::time::Duration::from_secs(10)),
            )
            .await
        {
            Ok(_) => tracing::info!(key, "restated the current record after a refused one"),
            Err((e, _)) => {
                tracing::warn!(key, error = %e, "cannot restate a refused config record")
            }
        }
    }
}
