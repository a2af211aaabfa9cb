//! `hookd demo`: the whole system in one process. An embedded broker
//! (librdkafka's mock cluster); the api, with demo tokens; the product
//! catalog and the sample integrations of `config/integrations` (an org
//! integration shared by two products, a product integration, a sandbox
//! integration) written to the config log; a worker following that log; a
//! local receiver standing in for the users' endpoints; and simulated
//! devices. Live counts are printed every few seconds until Ctrl-C, and the
//! api answers `hookd integrations` meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::Router;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::simulate::Fleet;
use crate::control::api::client::ApiClient;
use crate::control::config_log::follower::ConfigLog;
use crate::control::config_log::state::Key;
use crate::model::integration::Integration;
use crate::pipeline::consume::Worker;
use crate::pipeline::resolve::{Index, IndexHandle};
use crate::pipeline::tally::Tally;
use crate::runtime::config::Settings;

/// The samples, embedded so the demo runs from any directory.
const SAMPLES: [(&str, &str); 3] = [
    (
        "org-telemetry.json",
        include_str!("../../config/integrations/org-telemetry.json"),
    ),
    (
        "product-status.json",
        include_str!("../../config/integrations/product-status.json"),
    ),
    (
        "sandbox-motion.json",
        include_str!("../../config/integrations/sandbox-motion.json"),
    ),
];

/// The samples' destination, replaced by the demo receiver's address.
const SAMPLE_ORIGIN: &str = "http://localhost:8788";

const PRODUCTS: [u32; 3] = [1001, 1002, 1003];
const ORG: &str = "acme";
const USER: &str = "demo-user";
/// Demo tokens (printed; a real deployment configures its own).
const TOKENS: [(&str, Option<&str>, Option<&str>); 3] = [
    ("demo-operator-token", None, None),
    ("demo-acme-org-token", Some(ORG), None),
    ("demo-user-sandbox-token", None, Some(USER)),
];

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated events per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Seconds between two printouts.
    #[arg(long, default_value_t = 3)]
    pub every: u64,
    /// Where the api listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8480")]
    pub api_listen: SocketAddr,
}

/// Requests the demo receiver got, by path.
type Received = Arc<Mutex<BTreeMap<String, u64>>>;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut settings = Settings::load(None)?;
    crate::runtime::telemetry::init_tracing("error");
    let cluster = MockCluster::new(1).context("starting the embedded broker")?;
    let k = &mut settings.kafka;
    k.brokers = cluster.bootstrap_servers();
    cluster.create_topic(&k.events_topic, 3, 1)?;
    cluster.create_topic(&k.dead_letter_topic, 1, 1)?;
    cluster.create_topic(&k.responses_topic, 1, 1)?;
    cluster.create_topic(&k.config_topic, 1, 1)?;
    cluster.create_topic(&k.stats_topic, 1, 1)?;
    cluster.create_topic(&k.log_topic, 1, 1)?;
    for topic in settings.retry.topics() {
        cluster.create_topic(&topic, 1, 1)?;
    }
    let k = &mut settings.kafka;
    // The mock cluster does not answer CreateTopics; they exist now.
    k.create_topics = false;
    settings
        .secrets
        .insert("DEMO_API_KEY".into(), "demo-secret-key".into());
    settings
        .secret_scopes
        .insert("DEMO_API_KEY".into(), vec![format!("org:{ORG}")]);
    // The demo receiver is on loopback, which deliveries may not reach by default.
    settings.outbound.allow_networks = vec!["127.0.0.1/32".parse()?];
    settings.traffic.flush_interval = Duration::from_secs(1);
    settings.api.listen = args.api_listen;
    settings.api.tokens = TOKENS
        .iter()
        .map(|(token, org, user)| crate::runtime::config::TokenSettings {
            token: (*token).into(),
            org: org.map(Into::into),
            user: user.map(Into::into),
            operator: org.is_none() && user.is_none(),
        })
        .collect();

    let shutdown = CancellationToken::new();
    tokio::spawn(crate::cli::worker::cancel_on_signal(shutdown.clone()));
    let received: Received = Received::default();
    let receiver = start_receiver(received.clone(), shutdown.clone()).await?;
    let api = crate::control::api::server::start(&settings, shutdown.clone())
        .await
        .context("starting the api")?;
    let api_url = format!("http://{}", api.addr);
    let samples = seed(&settings, &api_url, &format!("http://{receiver}")).await?;

    println!("hookd demo: embedded broker at {}", settings.kafka.brokers);
    println!("  receiver (stands in for your endpoints): http://{receiver}");
    for i in &samples {
        println!("  integration {:<16} {}", i.id, i.name);
    }
    println!(
        "  console: {api_url}/ — sign in with the org's token {} (or a user's: {})",
        TOKENS[1].0, TOKENS[2].0
    );
    println!("  api: {api_url}/v1 — try, while the demo runs:");
    println!(
        "    HOOKCTL_API={api_url} HOOKCTL_TOKEN={} hookd integrations --org {ORG} list",
        TOKENS[1].0
    );
    println!("    HOOKCTL_API={api_url} HOOKCTL_TOKEN={} hookd integrations --org {ORG} history org-telemetry", TOKENS[1].0);
    println!(
        "    curl -H 'Authorization: Bearer {}' {api_url}/v1/integrations",
        TOKENS[2].0
    );
    println!(
        "  simulated devices publish {} events/s over products {PRODUCTS:?};",
        args.rate
    );
    println!(
        "  one record in 250 is malformed and goes to {}; Ctrl-C stops\n",
        settings.kafka.dead_letter_topic
    );

    let index = IndexHandle::new(Index::default());
    let log = ConfigLog::start(
        &settings.kafka,
        Some(index.clone()),
        settings.templates,
        shutdown.clone(),
    )
    .await?;
    log.caught_up().await;
    let worker = Worker::new(settings.clone(), index);
    let tally = worker.tally();
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let producer: FutureProducer =
        crate::runtime::kafka::producer_config(&settings.kafka).create()?;
    let devices = tokio::spawn(simulate(
        producer,
        settings.kafka.events_topic.clone(),
        args.rate,
        shutdown.clone(),
    ));

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(args.every.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => print_counts(started, &tally, &received),
        }
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            shutdown.cancel();
        }
    }
    // Every client stops before the embedded broker does (it goes when
    // this function returns): the devices' producer, the worker, the api
    // and the worker's config log reader.
    let produced = devices.await.unwrap_or(0);
    // A worker failing for good cancels `shutdown` itself; its error is
    // returned once the others have stopped too.
    let worker = worker_task.await.context("worker task");
    let _ = api.task.await;
    log.stopped().await;
    worker??;
    print_counts(started, &tally, &received);
    println!("demo stopped after {produced} events");
    Ok(())
}

/// The catalog through the api (as an operator would), and the samples
/// imported straight into the config log at version 1 (as a migration from
/// exported Particle webhooks would); waits until the api shows them.
async fn seed(settings: &Settings, api: &str, receiver: &str) -> anyhow::Result<Vec<Integration>> {
    let operator = ApiClient::new(api, TOKENS[0].0);
    operator
        .call(
            hyper::Method::PUT,
            &format!("/v1/orgs/{ORG}"),
            Some(&serde_json::json!({"name": "Acme Demo", "plan": "enterprise"})),
        )
        .await?;
    for p in PRODUCTS {
        operator
            .call(
                hyper::Method::PUT,
                &format!("/v1/orgs/{ORG}/products/{p}"),
                Some(&serde_json::json!({"name": format!("Demo product {p}")})),
            )
            .await?;
    }
    let producer: FutureProducer =
        crate::runtime::kafka::producer_config(&settings.kafka).create()?;
    let mut samples = Vec::new();
    for (file, text) in SAMPLES {
        let mut spec: crate::model::integration::IntegrationSpec =
            serde_json::from_str(text).with_context(|| format!("sample {file}"))?;
        spec.url = spec.url.map(|u| u.replace(SAMPLE_ORIGIN, receiver));
        spec.version = 1;
        let record = serde_json::to_vec(&spec)?;
        let key = Key::Integration(spec.id.clone()).to_string();
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&settings.kafka.config_topic)
                    .key(&key)
                    .payload(&record),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        samples.push(Integration::try_from(spec).with_context(|| format!("sample {file}"))?);
    }
    let user = operator.with_token(TOKENS[2].0);
    for _ in 0..100 {
        if user
            .call(hyper::Method::GET, "/v1/integrations/sandbox-motion", None)
            .await
            .is_ok()
        {
            return Ok(samples);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the api did not show the sample integrations")
}

async fn start_receiver(
    received: Received,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(receive).with_state(received);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(addr)
}

async fn receive(State(received): State<Received>, req: Request) -> &'static str {
    let path = req.uri().path().to_owned();
    *received
        .lock()
        .expect("receiver lock is never poisoned")
        .entry(path)
        .or_default() += 1;
    "ok"
}

/// Simulated devices: a quarter claimed by the demo user; one record in 250
/// is malformed, to show the dead-letter path.
async fn simulate(
    producer: FutureProducer,
    topic: String,
    rate: u32,
    shutdown: CancellationToken,
) -> u64 {
    let fleet = Fleet::new(40, &PRODUCTS, &[USER], 4);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return n,
            _ = tick.tick() => {}
        }
        let (key, payload) = if n % 250 == 249 {
            (
                "broken".to_owned(),
                "{\"name\": \"temperature\", \"data\": ".to_owned(),
            )
        } else {
            fleet.event(n, &mut rng)
        };
        let record = FutureRecord::<str, str>::to(&topic)
            .key(&key)
            .payload(&payload);
        if let Err((e, _)) = producer.send_result(record) {
            tracing::warn!(error = %e, "demo producer queue full");
        }
        n += 1;
    }
}

fn print_counts(started: Instant, tally: &Tally, received: &Received) {
    let received = received
        .lock()
        .expect("receiver lock is never poisoned")
        .clone();
    let total: u64 = received.values().sum();
    println!(
        "after {:>4}s: receiver got {total} requests {received:?}",
        started.elapsed().as_secs()
    );
    println!(
        "  {:<16} {:>8} {:>8} {:>8} {:>8}",
        "integration", "product", "success", "error", "skipped"
    );
    for ((id, product), c) in tally.snapshot() {
        let product = product.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "  {:<16} {:>8} {:>8} {:>8} {:>8}",
            id, product, c.success, c.error, c.skipped
        );
    }
    println!();
}
