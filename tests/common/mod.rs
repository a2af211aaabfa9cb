//! Shared by the integration tests: a broker (the embedded mock cluster, or a
//! real one named by `E2E_BROKERS`), worker settings on unique topics, and a
//! real HTTP receiver on loopback whose behaviour a test can change; the
//! control-plane tests start from `ControlPlane`. benches/e2e.rs includes it
//! too, for `free_port` and `wait_until_every`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hookd::control::api::client::{ApiClient, ClientError};
use hookd::runtime::config::Settings;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The broker a test runs against. `E2E_BROKERS` set: that real broker
/// (scripts/e2e starts tansu and sets it); unset: an embedded mock cluster
/// of this test's own.
pub struct Broker {
    mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    bootstrap: String,
}

/// A panicking test must fail, not hang: the panic unwinds the test's
/// future, dropping the mock cluster while the worker it served still runs,
/// and closing that worker's consumer (when the runtime drops its task)
/// then waits for a broker that is gone, so the test never ends and its
/// captured panic message is never shown. Installed by every helper that
/// starts a broker or receiver: after a panic on a test's own thread (named
/// after the test; not a runtime worker's, where a task's panic is the
/// task's result, nor a helper thread's), the message goes straight to
/// stderr and the process exits with failure if that thread has not ended
/// [`PANIC_EXIT_AFTER`] later. A test that ends (failed) lets the binary go
/// on to its next test.
pub fn fail_fast_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("").to_owned();
            if name.is_empty() || name == "main" || name.starts_with("tokio-runtime-worker") {
                return;
            }
            let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watched = THREAD_END.try_with(|end| {
                let mut end = end.borrow_mut();
                if end.is_some() {
                    return false;
                }
                *end = Some(ThreadEnd(ended.clone()));
                true
            });
            if watched != Ok(true) {
                return;
            }
            let message = format!("test thread '{name}' panicked: {info}\n");
            std::thread::spawn(move || {
                use std::io::Write;
                std::thread::sleep(PANIC_EXIT_AFTER);
                if ended.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let mut err = std::io::stderr();
                let _ = err.write_all(message.as_bytes());
                let _ = err.write_all(b"the test did not end after the panic; exiting\n");
                std::process::exit(101);
            });
        }));
    });
}

/// Set when the thread that holds it ends (its thread-locals dropped).
struct ThreadEnd(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

thread_local! {
    /// The end of a test thread that panicked, watched by the panic hook.
    static THREAD_END: std::cell::RefCell<Option<ThreadEnd>> = const { std::cell::RefCell::new(None) };
}

/// How long a test binary may take to end after a test's panic.
pub const PANIC_EXIT_AFTER: Duration = Duration::from_secs(30);

impl Drop for Broker {
    /// A test that panics leaves the mock cluster running: the worker it
    /// served is still running, and its consumer's close (when the runtime
    /// drops the worker's task) would otherwise wait for a broker that is gone.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(mock) = self.mock.take() {
                Box::leak(Box::new(mock));
            }
        }
    }
}

impl Broker {
    pub fn start() -> Broker {
        fail_fast_on_panic();
        match std::env::var("E2E_BROKERS") {
            Ok(b) if !b.is_empty() => Broker {
                mock: None,
                bootstrap: b,
            },
            _ => {
                let mock = MockCluster::new(1).expect("mock cluster");
                let bootstrap = mock.bootstrap_servers();
                Broker {
                    mock: Some(mock),
                    bootstrap,
                }
            }
        }
    }

    /// The real broker at `bootstrap`, whatever `E2E_BROKERS` says.
    pub fn at(bootstrap: &str) -> Broker {
        fail_fast_on_panic();
        Broker {
            mock: None,
            bootstrap: bootstrap.to_owned(),
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn is_real(&self) -> bool {
        self.mock.is_none()
    }

    /// The embedded mock cluster (none on a real broker), to make its
    /// requests fail.
    pub fn mock(&self) -> Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        match &self.mock {
            Some(m) => m.create_topic(name, partitions, 1).expect("create topic"),
            None => {
                let admin: AdminClient<DefaultClientContext> =
                    self.client().create().expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let res = admin
                    .create_topics(
                        [&topic],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await
                    .expect("create topics");
                for r in res {
                    r.expect("topic created");
                }
            }
        }
    }

    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c
    }

    /// `client()` for a consumer.
    pub fn consumer_client(&self) -> ClientConfig {
        let mut c = self.client();
        if self.is_real() {
            // tansu's fetch waits needlessly otherwise (README, "Brokers").
            c.set("fetch.wait.max.ms", "10");
        }
        c
    }

    pub fn producer(&self) -> FutureProducer {
        let mut c = self.client();
        c.set("linger.ms", "5");
        if self.is_real() {
            // tansu 0.6.0 answers a fetch from an offset inside a record batch
            // with the *next* batch, skipping the rest of that one; a consumer
            // resuming from a committed offset mid-batch would never see those
            // records. Apache Kafka does not do this. One record per batch keeps
            // every committed offset at a batch boundary.
            c.set("batch.num.messages", "1");
        }
        c.create().expect("producer")
    }

    /// Reads `topic` from the beginning until `expect` records arrived or
    /// `deadline` passed. Partitions are assigned directly: no group join.
    pub async fn read_all(
        &self,
        topic: &str,
        expect: usize,
        deadline: Duration,
    ) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        let consumer: StreamConsumer = self
            .consumer_client()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + deadline;
        while out.len() < expect {
            match tokio::time::timeout_at(end, consumer.recv()).await {
                Ok(Ok(m)) => out.push((
                    m.key().map(<[u8]>::to_vec),
                    m.payload().unwrap_or_default().to_vec(),
                )),
                Ok(Err(e)) => panic!("reading {topic}: {e}"),
                Err(_) => break,
            }
        }
        out
    }
}

/// A loopback port nothing listens on now, for a process started later.
/// Taken below Linux's ephemeral range (32768-60999): a port the kernel
/// handed out could be handed out again, as the local port of one of the
/// many outgoing connections a test makes, before the process binds it.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// A name no other test (or earlier run against the same real broker) uses.
pub fn unique(base: &str) -> String {
    format!("{base}-{:016x}", rand::random::<u64>())
}

/// Worker settings on fresh topics of `broker`; the test creates the topics.
pub fn settings(broker: &Broker) -> Settings {
    let mut s = Settings::load_from(None, vec![]).expect("default settings");
    s.kafka.brokers = broker.bootstrap().to_owned();
    s.kafka.events_topic = unique("events");
    s.kafka.dead_letter_topic = unique("dead-letter");
    s.kafka.responses_topic = unique("responses");
    s.kafka.config_topic = unique("config");
    s.kafka.stats_topic = unique("stats");
    s.kafka.log_topic = unique("log");
    s.traffic.flush_interval = Duration::from_millis(200);
    // In-process workers get their integrations from the test itself, as
    // the operator's own file would give them (every secret visible);
    // `start_log_worker` switches to the config log.
    s.integrations.source = hookd::runtime::config::IntegrationSource::File;
    s.retry.topic_prefix = unique("retry");
    s.retry.delays = vec![Duration::from_secs(1), Duration::from_secs(2)];
    // Tests send many requests to one loopback receiver.
    s.limits.rate = 0.0;
    s.kafka.group_id = unique("hookd");
    s.kafka.create_topics = false;
    if broker.is_real() {
        // tansu's fetch waits needlessly otherwise (README, "Brokers").
        s.kafka
            .consumer
            .insert("fetch.wait.max.ms".into(), "10".into());
        // The worker's own records (retries, dead letters) one per batch too:
        // see `Broker::producer` for the tansu fetch bug this avoids.
        s.kafka
            .producer
            .insert("batch.num.messages".into(), "1".into());
    }
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
    // The receivers are on loopback, which deliveries may not reach by default.
    s.outbound.allow_networks = vec!["127.0.0.0/8".parse().unwrap()];
    s.worker.shutdown_grace = Duration::from_secs(10);
    s
}

/// Creates the worker's topics: events (`partitions`), dead letters,
/// responses and retries.
pub async fn create_topics(broker: &Broker, s: &Settings, partitions: i32) {
    broker.create_topic(&s.kafka.events_topic, partitions).await;
    broker.create_topic(&s.kafka.dead_letter_topic, 1).await;
    broker.create_topic(&s.kafka.responses_topic, 1).await;
    broker.create_topic(&s.kafka.config_topic, 1).await;
    broker.create_topic(&s.kafka.stats_topic, 2).await;
    broker.create_topic(&s.kafka.log_topic, 2).await;
    for topic in s.retry.topics() {
        broker.create_topic(&topic, 2).await;
    }
}

/// The `[kafka]`, `[retry]`, `[limits]` and `[outbound]` sections of a config
/// file for the worker binary, matching `s`.
pub fn config_sections(s: &Settings) -> toml::Table {
    // librdkafka properties: keys with dots in them, each one key.
    let properties = |m: &BTreeMap<String, String>| -> toml::Table {
        m.iter()
            .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
            .collect()
    };
    let delays: Vec<toml::Value> = s
        .retry
        .delays
        .iter()
        .map(|d| toml::Value::String(format!("{}ms", d.as_millis())))
        .collect();
    toml::toml! {
        [kafka]
        brokers = (s.kafka.brokers.as_str())
        group_id = (s.kafka.group_id.as_str())
        events_topic = (s.kafka.events_topic.as_str())
        dead_letter_topic = (s.kafka.dead_letter_topic.as_str())
        responses_topic = (s.kafka.responses_topic.as_str())
        create_topics = (s.kafka.create_topics)
        config_topic = (s.kafka.config_topic.as_str())
        stats_topic = (s.kafka.stats_topic.as_str())
        log_topic = (s.kafka.log_topic.as_str())
        client = (properties(&s.kafka.client))
        consumer = (properties(&s.kafka.consumer))
        producer = (properties(&s.kafka.producer))

        [retry]
        topic_prefix = (s.retry.topic_prefix.as_str())
        delays = (toml::Value::Array(delays))

        [limits]
        rate = (toml::Value::Float(s.limits.rate))
        burst = (toml::Value::Integer(i64::from(s.limits.burst)))

        [outbound]
        allow_networks = ["127.0.0.0/8"]
    }
}

/// `extra` over `base`: a table in both is merged key by key (recursively);
/// any other value of `extra` replaces `base`'s.
pub fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match value {
            toml::Value::Table(over) => match base.get_mut(&key) {
                Some(toml::Value::Table(under)) => merge(under, over),
                _ => {
                    base.insert(key, toml::Value::Table(over));
                }
            },
            value => {
                base.insert(key, value);
            }
        }
    }
}

/// Writes `config` to `path` as a TOML file.
pub fn write_toml(path: &std::path::Path, config: &toml::Table) {
    let text = toml::to_string(config).expect("config as TOML");
    std::fs::write(path, text).unwrap();
}

/// Writes a config file for the worker binary to `path`: the sections of
/// `s` (`config_sections`) with `extra` merged over them.
pub fn write_config_file(path: &std::path::Path, s: &Settings, extra: toml::Table) {
    let mut config = config_sections(s);
    merge(&mut config, extra);
    write_toml(path, &config);
}

/// Events `from..from + n` named `temp` on product 5, as `(device, event)`
/// records over `devices` devices (the number as `data`), with the id
/// `{id_prefix}-{number}` when a prefix is given.
pub fn temp_events(
    from: usize,
    n: usize,
    devices: usize,
    id_prefix: Option<&str>,
) -> Vec<(String, String)> {
    (from..from + n)
        .map(|i| {
            let device = format!("{:024x}", i % devices);
            let mut event =
                serde_json::json!({"name": "temp", "data": i.to_string(), "coreid": device, "productID": 5});
            if let Some(prefix) = id_prefix {
                event["id"] = format!("{prefix}-{i}").into();
            }
            (device, event.to_string())
        })
        .collect()
}

/// Starts the `hookd worker` binary on `config`, its log to `stderr`.
pub fn spawn_worker_binary(
    config: &std::path::Path,
    stderr: std::process::Stdio,
) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["worker", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start hookd worker")
}

/// Produces `(key, payload)` records and waits for every acknowledgement.
pub async fn produce(broker: &Broker, topic: &str, records: &[(String, String)]) {
    let producer = broker.producer();
    // A record the broker refused (tansu answers a busy moment with an
    // unknown error now and then) is sent again, a few times at most.
    let mut todo: Vec<&(String, String)> = records.iter().collect();
    for round in 0.. {
        let mut pending = Vec::with_capacity(todo.len());
        let mut failed = Vec::new();
        for record in todo {
            let (key, payload) = record;
            loop {
                match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                    Ok(f) => {
                        pending.push((f, record));
                        break;
                    }
                    Err(_) => {
                        for (f, r) in pending.drain(..) {
                            if f.await.expect("delivery future").is_err() {
                                failed.push(r);
                            }
                        }
                    }
                }
            }
        }
        for (f, r) in pending {
            if f.await.expect("delivery future").is_err() {
                failed.push(r);
            }
        }
        if failed.is_empty() {
            break;
        }
        assert!(
            round < 5,
            "{} records not produced after 5 tries",
            failed.len()
        );
        todo = failed;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rdkafka::producer::Producer::flush(&producer, Timeout::After(Duration::from_secs(10)))
        .expect("flush");
}

/// One request as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    pub version: String,
    /// The status answered.
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Status(u16),
    /// Answer 200 after this long.
    Delay(Duration),
    /// Close the connection without answering.
    Close,
    /// Read the request and never answer.
    Hang,
    /// 200 with a body of this many bytes.
    Big(usize),
    /// 200 with this body and `Content-Type`.
    Body(&'static [u8], &'static str),
}

/// A real HTTP/1.1 + HTTP/2 server on 127.0.0.1, recording every request
/// (svix's TestReceiver, in spirit).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: Arc<Mutex<Mode>>,
    /// Requests that arrived (including ones never answered).
    arrived: Arc<std::sync::atomic::AtomicUsize>,
    /// TCP connections accepted.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on("127.0.0.1").await
    }

    /// A receiver on loopback address `ip` (127.0.0.0/8: a host name of its
    /// own for per-host rules).
    pub async fn start_on(ip: &str) -> Receiver {
        fail_fast_on_panic();
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Status(200))),
            arrived: Arc::default(),
            connections: Arc::default(),
        };
        let this = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                this.connections
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if *this.mode.lock().unwrap() == Mode::Close {
                    drop(socket);
                    continue;
                }
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let this = this.clone();
                        async move { this.answer(req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), svc)
                        .await;
                });
            }
        });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Idempotency keys of requests answered 2xx.
    pub fn delivered(&self) -> std::collections::BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| (200..300).contains(&s.status))
            .filter_map(|s| s.headers.get("idempotency-key").cloned())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// An `Err` makes hyper drop the connection without a response.
    async fn answer(
        &self,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
        let at = std::time::Instant::now();
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.arrived
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Close => return Err(std::io::Error::other("closing without an answer")),
            Mode::Hang => std::future::pending::<()>().await,
            Mode::Delay(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        let seen = Seen {
            method: parts.method.to_string(),
            target: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        v.to_str().unwrap_or("<binary>").to_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            version: format!("{:?}", parts.version),
            status: 0,
            at,
        };
        let (status, body, kind) = match mode {
            Mode::Status(s) => (s, Bytes::from_static(b"ok"), "text/plain"),
            Mode::Big(n) => (200, Bytes::from(vec![b'x'; n]), "text/plain"),
            Mode::Body(body, kind) => (200, Bytes::from_static(body), kind),
            _ => (200, Bytes::from_static(b"ok"), "text/plain"),
        };
        self.seen.lock().unwrap().push(Seen { status, ..seen });
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(body))
            .unwrap())
    }
}

/// Waits until `done` holds, polling every 50 ms; panics with `what` after
/// `limit` (a deadline so a broken test fails instead of hanging, not a
/// performance assertion).
pub async fn wait_until(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    wait_until_every(what, limit, Duration::from_millis(50), done).await;
}

/// `wait_until`, polling every `every` (benches/e2e.rs times what it waits
/// for, so it polls more often).
pub async fn wait_until_every(
    what: &str,
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) {
    let end = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A worker running in this process.
pub struct RunningWorker {
    pub tally: hookd::pipeline::tally::Tally,
    shutdown: tokio_util::sync::CancellationToken,
    run: tokio::task::JoinHandle<Result<(), hookd::pipeline::consume::WorkerError>>,
}

/// Starts a worker with `integrations` (JSON records).
/// How long a test waits for a worker to stop.
pub const STOP_PATIENCE: Duration = Duration::from_secs(60);

pub fn start_worker(s: &Settings, integrations: Vec<serde_json::Value>) -> RunningWorker {
    // Shown with --nocapture; RUST_LOG overrides.
    hookd::runtime::telemetry::init_tracing("warn");
    let integrations = integrations
        .into_iter()
        .map(|v| hookd::model::integration::Integration::from_value(v).expect("valid integration"));
    let index = hookd::pipeline::resolve::Index::build(integrations).expect("distinct ids");
    let worker = hookd::pipeline::consume::Worker::new(
        s.clone(),
        hookd::pipeline::resolve::IndexHandle::new(index),
    );
    let tally = worker.tally();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    RunningWorker {
        tally,
        shutdown,
        run,
    }
}

impl RunningWorker {
    /// Graceful stop; panics if the worker failed or has not stopped after
    /// [`STOP_PATIENCE`] (its grace in these tests is seconds).
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_PATIENCE, self.run)
            .await
            .expect("the worker stops")
            .expect("worker task")
            .expect("worker ran");
    }

    /// Whether the worker's stop has begun (asked for, or its own).
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// What the worker returned, once it ended by itself (within `limit`).
    pub async fn ended(self, limit: Duration) -> Result<(), hookd::pipeline::consume::WorkerError> {
        tokio::time::timeout(limit, self.run)
            .await
            .expect("the worker ends")
            .expect("worker task")
    }
}

/// Tokens of the control-plane tests: two orgs, two users, the operator.
pub const ACME: &str = "acme-token-0123456789";
pub const OTHER: &str = "other-token-0123456789";
pub const ALICE: &str = "alice-token-0123456789";
pub const BOB: &str = "bob-token-0123456789ab";
pub const OPERATOR: &str = "operator-token-012345";

/// `s` with the api on a free port and the test tokens.
pub fn with_api(mut s: Settings) -> Settings {
    use hookd::runtime::config::TokenSettings;
    s.api.listen = "127.0.0.1:0".parse().unwrap();
    let token =
        |token: &str, org: Option<&str>, user: Option<&str>, operator: bool| TokenSettings {
            token: token.into(),
            org: org.map(Into::into),
            user: user.map(Into::into),
            operator,
        };
    s.api.tokens = vec![
        token(ACME, Some("acme"), None, false),
        token(OTHER, Some("other"), None, false),
        token(ALICE, None, Some("alice"), false),
        token(BOB, None, Some("bob"), false),
        token(OPERATOR, None, None, true),
    ];
    s
}

/// An api running in this process.
pub struct RunningApi {
    pub client: hookd::control::api::client::ApiClient,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub async fn start_api(s: &Settings) -> RunningApi {
    hookd::runtime::telemetry::init_tracing("warn");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = hookd::control::api::server::start(s, shutdown.clone())
        .await
        .expect("api starts");
    RunningApi {
        client: hookd::control::api::client::ApiClient::new(
            format!("http://{}", running.addr),
            OPERATOR,
        ),
        shutdown,
        task: running.task,
    }
}

impl RunningApi {
    pub fn as_token(&self, token: &str) -> hookd::control::api::client::ApiClient {
        self.client.with_token(token)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_PATIENCE, self.task)
            .await
            .expect("the api stops")
            .expect("api task");
    }
}

/// Starts a worker that takes its integrations from the config log, once
/// the log is replayed (as `hookd worker` does).
pub async fn start_log_worker(s: &Settings) -> RunningWorker {
    hookd::runtime::telemetry::init_tracing("warn");
    let _ = hookd::runtime::telemetry::metrics_handle();
    let index =
        hookd::pipeline::resolve::IndexHandle::new(hookd::pipeline::resolve::Index::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let log = hookd::control::config_log::follower::ConfigLog::start(
        &s.kafka,
        Some(index.clone()),
        s.templates,
        shutdown.clone(),
    )
    .await
    .expect("config log");
    log.caught_up().await;
    let mut s = s.clone();
    s.integrations.source = hookd::runtime::config::IntegrationSource::Kafka;
    let worker = hookd::pipeline::consume::Worker::new(s, index);
    let tally = worker.tally();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    RunningWorker {
        tally,
        shutdown,
        run,
    }
}

/// Orgs acme (enterprise) and other (basic); products 1, 2, 3 of acme and 9
/// of other.
pub async fn catalog(operator: &ApiClient) {
    for (org, plan) in [("acme", "enterprise"), ("other", "basic")] {
        operator
            .call(
                Method::PUT,
                &format!("/v1/orgs/{org}"),
                Some(&json!({"name": org, "plan": plan})),
            )
            .await
            .expect("org saved");
    }
    for (p, org) in [(1, "acme"), (2, "acme"), (3, "acme"), (9, "other")] {
        operator
            .call(
                Method::PUT,
                &format!("/v1/orgs/{org}/products/{p}"),
                Some(&json!({"name": format!("Product {p}")})),
            )
            .await
            .expect("product saved");
    }
}

/// What the control-plane tests start from: a broker of the test's own with
/// the worker's topics, a receiver, and an api with the test tokens and the
/// `catalog`; `acme` is the api as org acme. Bind `broker` (as `_broker` if
/// unused) for the whole test: an embedded broker stops when it is dropped.
pub struct ControlPlane {
    pub broker: Broker,
    /// The api's settings; workers started from them (`start_log_worker`)
    /// follow its config log.
    pub s: Settings,
    pub receiver: Receiver,
    pub api: RunningApi,
    pub acme: ApiClient,
}

impl ControlPlane {
    /// On the test settings, one events partition.
    pub async fn start() -> ControlPlane {
        ControlPlane::start_with(1, |_| {}).await
    }

    /// With `partitions` events partitions, the settings changed by `tune`
    /// before the topics are created and the api starts.
    pub async fn start_with(partitions: i32, tune: impl FnOnce(&mut Settings)) -> ControlPlane {
        let broker = Broker::start();
        let mut s = with_api(settings(&broker));
        tune(&mut s);
        create_topics(&broker, &s, partitions).await;
        let receiver = Receiver::start().await;
        let api = start_api(&s).await;
        catalog(&api.client).await;
        let acme = api.as_token(ACME);
        ControlPlane {
            broker,
            s,
            receiver,
            api,
            acme,
        }
    }
}

/// A `temp/x` event of `product` carrying `data`, as (key, payload); the
/// device id follows from both.
pub fn event(product: u32, data: &str) -> (String, String) {
    let device = format!(
        "{:024x}",
        u64::from(product) * 1000 + (data.len() as u64 % 7)
    );
    let e = json!({"name": "temp/x", "data": data, "published_at": "2024-05-13T10:55:40.306Z",
                   "coreid": device, "userid": "", "productID": product});
    (device, e.to_string())
}

/// Which paths each event's data reached.
pub fn routes(receiver: &Receiver) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in receiver.seen() {
        let data = form_urlencoded::parse(s.body.as_bytes())
            .find(|(k, _)| k == "data")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.entry(data).or_default().push(s.target.clone());
    }
    out
}

/// The status, message and field of a request the api must refuse.
pub async fn refused(
    client: &ApiClient,
    method: Method,
    path: &str,
    body: Value,
) -> (u16, String, Option<String>) {
    match client.call(method, path, Some(&body)).await {
        Err(ClientError::Api {
            status,
            message,
            body,
        }) => (
            status,
            message,
            body.get("field").and_then(Value::as_str).map(str::to_owned),
        ),
        other => panic!("{path} {body}: expected a refusal, got {other:?}"),
    }
}

/// One plain HTTP/1.x exchange on a fresh connection to `addr` (`host:port`):
/// the status, the head and the body; `None` if nothing answers.
pub fn http_exchange(addr: &str, request: &str) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some((status, head.to_owned(), body.to_owned()))
}

/// `GET path` over HTTP/1.0 on loopback `port`: the status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    http_exchange(&format!("127.0.0.1:{port}"), &request).map(|(s, _, body)| (s, body))
}

/// `hookd integrations <args>` (the real binary) against the api at `api`
/// with `token`: whether it succeeded, its stdout and its stderr.
pub async fn integrations_cli(api: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hookd"));
    command
        .arg("integrations")
        .args(args)
        .env("HOOKCTL_API", api)
        .env("HOOKCTL_TOKEN", token);
    // The api answers from this process's runtime: wait off its threads.
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Particle webhook as Particle's console exports it, every documented
/// field set (none of hookd's own: no scope), sending to `url`.
pub fn particle_export(url: &str) -> Value {
    json!({
        "id": "5f8e4a2b9c1d3e7f60a1b2c3",
        "template": "webhook",
        "integration_type": "Webhook",
        "created_at": "2024-05-13T10:55:40.306Z",
        "mydevices": true,
        "name": "Everything",
        "event": "temp",
        "url": url,
        "requestType": "PUT",
        "json": {"t": "{{{t}}}", "n": 3},
        "query": {"src": "{{{PARTICLE_EVENT_NAME}}}"},
        "headers": {"X-Device": "{{{PARTICLE_DEVICE_ID}}}"},
        "auth": {"username": "user", "password": "pass"},
        "noDefaults": false,
        "rejectUnauthorized": true,
        "responseTopic": "{{{PARTICLE_DEVICE_ID}}}/hook-response/{{{PARTICLE_EVENT_NAME}}}",
        "errorResponseTopic": "hook-error/{{{PARTICLE_EVENT_NAME}}}",
        "responseTemplate": {"lat": "{{{results.0.location.lat}}}", "device": "{{{PARTICLE_DEVICE_ID}}}"},
        "unchunked": false,
        "dataUrlResponseEvent": false,
        "disabled": false
    })
}
