//! End-to-end load benchmark: `cargo bench --bench e2e [-- --events N --rate R --soak-secs S --no-reload --preload-100k]`.
//!
//! One machine, one command: a fresh tansu broker (scripts/install-tansu),
//! N pre-produced events (~300-byte data, keys over 10k devices, 3 products,
//! an org integration shared by two of them and a product integration on the
//! third), the real `hookd worker` binary, and a hyper receiver on loopback
//! answering 200. Reports, in one run:
//! - throughput (webhooks/s) draining the backlog, worker CPU seconds per 10k
//!   webhooks, peak RSS;
//! - latency from production to receipt at a steady rate (p50/p99/max);
//! - a reload of 100k integrations under that load (SIGHUP), then a single
//!   edit of one of them: time to apply each, p99 latency before, during
//!   each and after (`--no-reload`: the same
//!   windows with nothing reloaded; `--preload-100k`: the worker starts with
//!   the 100k integrations);
//! - the limit: a bare hyper client sending the same requests at the same
//!   concurrency to the same receiver, and the ratio hookd / limit;
//! - CPU per webhook of the worker, the receiver and the broker, per request
//!   of the bare client, and the Kafka floor (bare librdkafka clients
//!   consuming the events and producing two response-sized records per
//!   event), which give the ratio's ceiling on a CPU-bound machine;
//! - with --soak-secs, RSS sampled every 10 s at steady load.
//!
//! `E2E_HOOKD=<path>` runs another `hookd` binary as the worker (to compare
//! builds); `E2E_PERF=<file>` records a CPU profile of the worker's drain.

// The tests' helpers; not their `Receiver`, which keeps every request (the
// one here only counts and times them).
#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_port, wait_until_every};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

/// The `hookd` binary's allocator for the receiver and the bare client too,
/// so both sides of the ratio run on the same one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEVICES: usize = 10_000;
const CONCURRENCY: usize = 256;
/// How often a wait polls: what the bench times when a wait ends (the
/// reload seen, the drain done) is off by up to this much.
const POLL: Duration = Duration::from_millis(20);

struct Args {
    events: usize,
    rate: u64,
    latency_secs: u64,
    soak_secs: u64,
    /// The control for the reload figures: the same windows, no reload.
    no_reload: bool,
    /// The worker starts with the 100k integrations; no reload.
    preload: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 200_000,
        rate: 0,
        latency_secs: 30,
        soak_secs: 0,
        no_reload: false,
        preload: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        argv.iter()
            .position(|x| x == name)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    if let Some(v) = value("--events") {
        a.events = v as usize;
    }
    if let Some(v) = value("--rate") {
        a.rate = v;
    }
    if let Some(v) = value("--latency-secs") {
        a.latency_secs = v;
    }
    if let Some(v) = value("--soak-secs") {
        a.soak_secs = v;
    }
    a.no_reload = argv.iter().any(|x| x == "--no-reload");
    a.preload = argv.iter().any(|x| x == "--preload-100k");
    a
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Requests received; latencies (µs) of those carrying `x-produced-at`.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    first_last: Mutex<Option<(Instant, Instant)>>,
}

async fn receiver(received: Arc<Received>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let produced = req
                            .headers()
                            .get("x-produced-at")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                        let _ = req.into_body().collect().await;
                        let now = Instant::now();
                        received.count.fetch_add(1, Ordering::Relaxed);
                        if let Some(p) = produced {
                            received
                                .latencies
                                .lock()
                                .unwrap()
                                .push(now_us().saturating_sub(p));
                        }
                        let mut fl = received.first_last.lock().unwrap();
                        *fl = Some(fl.map_or((now, now), |(f, _)| (f, now)));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), svc)
                    .await;
            });
        }
    });
    addr
}

fn start_tansu(root: &Path) -> (Child, u16) {
    let out = Command::new(root.join("scripts/install-tansu"))
        .output()
        .expect("scripts/install-tansu");
    assert!(
        out.status.success(),
        "installing tansu: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tansu = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tansu did not listen on {port}");
}

fn event(n: u64, produced_at: u64) -> (String, String) {
    let device = n as usize % DEVICES;
    let product = 1 + (device % 3) as u32;
    let data = json!({"t": 21.5 + (n % 10) as f64, "h": 40 + n % 50, "battery": n % 100, "seq": n, "ts": produced_at,
                      "fw": "3.1.0", "lat": 52.1234, "lon": 4.3123, "status": "ok", "readings": [1.5, 2.25, 3.125, 4.0625, 5.5],
                      "note": "x".repeat(96)})
    .to_string();
    let coreid = format!("{device:024x}");
    let e = json!({"name": "temperature", "data": data, "published_at": "2024-05-13T10:55:40.306Z", "coreid": coreid,
                   "userid": "", "productID": product, "version": 3, "id": format!("bench-{n}")});
    (coreid, e.to_string())
}

fn integrations(receiver: SocketAddr) -> Vec<serde_json::Value> {
    vec![
        json!({"id": "org-12", "org": "acme", "products": [1, 2], "event": "temp", "url": format!("http://{receiver}/org/{{{{{{PRODUCT_ID}}}}}}"),
               "json": {"device": "{{{PARTICLE_DEVICE_ID}}}", "t": "{{{t}}}", "h": "{{{h}}}", "battery": "{{{battery}}}", "seq": "{{{seq}}}"},
               "headers": {"X-Produced-At": "{{{ts}}}"}}),
        json!({"id": "prod-3", "product_id": 3, "event": "temp", "url": format!("http://{receiver}/p3"),
               "form": {"device": "{{{PARTICLE_DEVICE_ID}}}", "t": "{{{t}}}"}, "headers": {"X-Produced-At": "{{{ts}}}"}}),
    ]
}

async fn produce(producer: &FutureProducer, topic: &str, from: u64, n: u64, rate: u64) {
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in from..from + n {
        if rate > 0 {
            let due = started + Duration::from_secs_f64((i - from) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let (key, payload) = event(i, now_us());
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err(_) => {
                    for f in pending.drain(..) {
                        f.await.unwrap().unwrap();
                    }
                }
            }
        }
        if pending.len() > 20_000 {
            for f in pending.drain(..) {
                f.await.unwrap().unwrap();
            }
        }
    }
    for f in pending {
        f.await.unwrap().unwrap();
    }
}

/// (CPU seconds, RSS kB, peak RSS kB) of a process.
fn proc_stats(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    let cpu = (fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0))
        / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kb("VmRSS:"), kb("VmHWM:"))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Writes the bench's integrations and 100k more to `staged`. Done before
/// the latency phase: this process is also the receiver and the producer,
/// and building the file here during the window would delay the events it
/// measures.
/// Writes the 100k-integration file to `staged`, and to `edited` the same
/// with one record changed (the single edit reloaded after it).
fn stage_100k(receiver: SocketAddr, staged: &Path, edited: &Path) {
    let mut big = integrations(receiver);
    for i in 0..100_000u32 {
        big.push(json!({"id": format!("r{i}"), "product_id": 1000 + i, "event": "temp", "url": "https://example.com/hook", "json": {"v": "{{{v}}}"}}));
    }
    std::fs::write(staged, serde_json::to_string(&big).unwrap()).unwrap();
    big[7]["url"] = json!("https://example.com/edited");
    std::fs::write(edited, serde_json::to_string(&big).unwrap()).unwrap();
}

/// Moves the staged file over the worker's, sends SIGHUP and waits until
/// the worker logs its `nth` reload (from 1); returns the time it reports.
async fn reload(
    staged: &Path,
    integrations_path: &Path,
    pid: u32,
    log_path: &Path,
    nth: usize,
) -> u64 {
    let reloads = || {
        std::fs::read_to_string(log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("integrations reloaded"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    std::fs::rename(staged, integrations_path).unwrap();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    wait_until_every("the reload", Duration::from_secs(120), POLL, || {
        reloads().len() >= nth
    })
    .await;
    let reload_ms: u64 = reloads()
        .get(nth - 1)
        .and_then(|l| {
            l.split("elapsed_ms")
                .nth(1)?
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    reload_ms
}

/// CPU µs per record of a bare consumer reading the `n` events and of a bare
/// producer (the worker's response-event settings) writing `2n` records of a
/// response event's size: the Kafka work of a webhook without the webhook.
async fn kafka_floor(brokers: &str, n: usize) -> (f64, f64) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::Message;
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        let me = std::process::id();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "e2e-kafka-floor")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        consumer.subscribe(&["device-events"]).unwrap();
        // The group join is not the per-record cost: wait for the first.
        let first = std::iter::repeat_with(|| consumer.poll(Duration::from_millis(100)))
            .flatten()
            .next()
            .unwrap();
        let mut bytes = first.unwrap().payload().map_or(0, <[u8]>::len);
        let cpu0 = proc_stats(me).0;
        let mut read = 1;
        while read < n {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                bytes += m.unwrap().payload().map_or(0, <[u8]>::len);
                read += 1;
            }
        }
        let consume_us = (proc_stats(me).0 - cpu0) * 1e6 / (n - 1) as f64;
        assert!(bytes > 0);
        drop(consumer);

        // Exactly the worker's response-event producer: its config function
        // on the default settings, pointed at this broker.
        let mut kafka = hookd::runtime::config::Settings::load_from(None, vec![])
            .expect("default settings")
            .kafka;
        kafka.brokers = brokers.clone();
        let producer: ThreadedProducer<DefaultProducerContext> =
            hookd::runtime::kafka::producer_config(&kafka)
                .set("delivery.report.only.error", "true")
                .create()
                .unwrap();
        let payload = json!({"name": "hook-sent/temperature", "data": "undefined",
            "published_at": "2024-05-13T10:55:40.306Z", "coreid": "particle-internal",
            "userid": "", "ttl": 60, "public": false, "productID": 1})
        .to_string();
        let cpu0 = proc_stats(me).0;
        for i in 0..2 * n {
            let key = format!("{:024x}", i % DEVICES);
            let mut record = BaseRecord::<str, str>::to("hookd.responses")
                .key(&key)
                .payload(&payload);
            while let Err((_, back)) = producer.send(record) {
                // Queue full: let librdkafka drain it.
                std::thread::sleep(Duration::from_millis(1));
                record = back;
            }
        }
        producer.flush(Duration::from_secs(60)).unwrap();
        let produce_us = (proc_stats(me).0 - cpu0) * 1e6 / (2 * n) as f64;
        (consume_us, produce_us)
    })
    .await
    .unwrap()
}

/// The same requests hookd sends, from a bare hyper client at the same
/// concurrency: the HTTP limit of this machine for this receiver.
/// What the bare client run measured.
struct Limit {
    /// Requests per second.
    rate: f64,
    /// CPU µs per request of this process (the client and the receiver),
    /// over the sending only.
    send_us: f64,
    /// CPU µs per request of preparing it beforehand: decode, resolve and
    /// render, one thread, no Kafka and no HTTP. The least of hookd's own
    /// work a webhook needs.
    prepare_us: f64,
}

/// A bare hyper client sending `n` requests, rendered beforehand.
async fn bare_client_limit(receiver: SocketAddr, n: usize) -> Limit {
    use hookd::model::variables::{EventContext, SecretMode};
    use hookd::pipeline::render::render;
    let index = hookd::pipeline::resolve::Index::build(
        integrations(receiver)
            .into_iter()
            .map(|v| hookd::model::integration::Integration::from_value(v).unwrap()),
    )
    .unwrap();
    let origin = hookd::model::event::Origin {
        topic: "device-events".into(),
        partition: 0,
        offset: 0,
    };
    let payloads: Vec<String> = (0..n as u64).map(|i| event(i, now_us()).1).collect();
    let prepare = |payload: &String| {
        let e = hookd::model::event::DeviceEvent::decode(
            payload.as_bytes(),
            &origin,
            chrono::Utc::now(),
        )
        .unwrap();
        let m = index.resolve(&e).pop().unwrap();
        let ctx = EventContext::new(e, Arc::default(), SecretMode::Reveal);
        render(&m.integration, &ctx).unwrap()
    };
    let requests: Vec<_> = payloads.iter().map(prepare).collect();
    // Measured on a second pass, each request dropped as made: the first
    // pays for the pages of 100k kept requests, which hookd does not.
    let cpu0 = proc_stats(std::process::id()).0;
    let bytes: usize = payloads.iter().map(|p| prepare(p).body.len()).sum();
    let prepare_us = (proc_stats(std::process::id()).0 - cpu0) * 1e6 / n as f64;
    assert!(bytes > 0);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY)
        .build_http();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicU64::new(0));
    let cpu0 = proc_stats(std::process::id()).0;
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, requests, next) = (client.clone(), requests.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(r) = requests.get(i) else { return };
                    let mut b = hyper::Request::builder()
                        .method(r.method.as_str())
                        .uri(&r.url);
                    for (k, v) in &r.headers {
                        b = b.header(k, v);
                    }
                    let resp = client
                        .request(b.body(Full::new(r.body.clone())).unwrap())
                        .await
                        .unwrap();
                    let _ = resp.into_body().collect().await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    Limit {
        rate: n as f64 / started.elapsed().as_secs_f64(),
        send_us: (proc_stats(std::process::id()).0 - cpu0) * 1e6 / n as f64,
        prepare_us,
    }
}

fn main() {
    let args = args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args, root));
}

async fn run(args: Args, root: PathBuf) {
    let (mut tansu, port) = start_tansu(&root);
    let brokers = format!("127.0.0.1:{port}");
    let received = Arc::new(Received::default());
    let receiver_addr = receiver(received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let integrations_path = dir.path().join("integrations.json");
    let edited = dir.path().join("integrations-edited.json");
    if args.preload {
        // The worker starts with the 100k integrations the reload would
        // bring: the state after a reload, without one.
        stage_100k(receiver_addr, &integrations_path, &edited);
    } else {
        std::fs::write(
            &integrations_path,
            serde_json::to_string(&integrations(receiver_addr)).unwrap(),
        )
        .unwrap();
    }

    let mut admin_config = ClientConfig::new();
    admin_config.set("bootstrap.servers", &brokers);
    let admin: AdminClient<DefaultClientContext> = admin_config.create().unwrap();
    let topics = [
        ("device-events", 6),
        ("hookd.dead-letter", 1),
        ("hookd.responses", 3),
        ("hookd.retry.30s", 1),
        ("hookd.retry.60s", 1),
        // The worker publishes its traffic for the api, as in production.
        ("hookd.stats", 1),
        ("hookd.log", 1),
    ];
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "1000")
        .create()
        .unwrap();

    let n = args.events as u64;
    eprintln!("producing {n} events…");
    produce(&producer, "device-events", 0, n, 0).await;

    let config = dir.path().join("hookd.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ncreate_topics = false\n[kafka.consumer]\n\"fetch.wait.max.ms\" = \"100\"\n\
             [integrations]\nsource = \"file\"\npath = \"{}\"\n[worker]\nmax_inflight_events = 1024\nmax_inflight_deliveries = {CONCURRENCY}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[limits]\nrate = 0.0\n[outbound]\nallow_networks = [\"127.0.0.0/8\"]\n",
            integrations_path.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("worker.log");
    // E2E_HOOKD=<binary>: another build of the worker (an earlier commit's,
    // to compare two builds run after run on the same machine).
    let binary = std::env::var_os("E2E_HOOKD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hookd")));
    let mut worker = Command::new(binary)
        .args(["worker", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = worker.id();

    // Throughput: drain the backlog.
    wait_until_every("the first webhook", Duration::from_secs(60), POLL, || {
        received.count.load(Ordering::Relaxed) > 0
    })
    .await;
    let (cpu0, _, _) = proc_stats(pid);
    let me = std::process::id();
    let (receiver_cpu0, _, _) = proc_stats(me);
    let (tansu_cpu0, _, _) = proc_stats(tansu.id());
    // E2E_PERF=<file>: profile the worker while it drains the backlog.
    let perf = std::env::var("E2E_PERF").ok().map(|out| {
        Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "-g",
                "-o",
                &out,
                "-p",
                &pid.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf")
    });
    wait_until_every("the backlog", Duration::from_secs(1800), POLL, || {
        received.count.load(Ordering::Relaxed) >= n
    })
    .await;
    let (cpu1, _, peak_after_drain) = proc_stats(pid);
    let (receiver_cpu1, _, _) = proc_stats(me);
    let (tansu_cpu1, _, _) = proc_stats(tansu.id());
    if let Some(mut perf) = perf {
        Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status()
            .unwrap();
        let _ = perf.wait();
    }
    let (first, last) = received.first_last.lock().unwrap().unwrap();
    let drain = last.duration_since(first).as_secs_f64();
    let throughput = n as f64 / drain;
    let cpu_per_10k = (cpu1 - cpu0) / (n as f64 / 10_000.0);
    let tansu_per_10k = (tansu_cpu1 - tansu_cpu0) / (n as f64 / 10_000.0);
    let receiver_us = (receiver_cpu1 - receiver_cpu0) * 1e6 / n as f64;

    // Latency at a steady rate, then a 100k-integration reload under it.
    // A quarter of the drain rate by default: at half, this process
    // producing the events and receiving the webhooks on the same cores as
    // the worker and the broker leaves too little, and a backlog builds
    // through the phase (BENCHMARKS.md, "Reload under load").
    let rate = if args.rate > 0 {
        args.rate
    } else {
        ((throughput * 0.25) as u64).max(100)
    };
    let staged = dir.path().join("integrations-100k.json");
    let reloading = !(args.no_reload || args.preload);
    if reloading {
        stage_100k(receiver_addr, &staged, &edited);
    }
    received.latencies.lock().unwrap().clear();
    let steady = n + args.latency_secs * rate;
    let half = args.latency_secs / 2;
    let producing = {
        let producer = producer.clone();
        tokio::spawn(async move {
            produce(
                &producer,
                "device-events",
                n,
                args.latency_secs * rate,
                rate,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(half)).await;
    let before: Vec<u64> = received.latencies.lock().unwrap().clone();
    let mark = received.latencies.lock().unwrap().len();
    let hup_at = Instant::now();
    let reload_ms = if reloading {
        reload(&staged, &integrations_path, pid, &log_path, 1).await
    } else {
        // The control: the same window with nothing reloaded.
        tokio::time::sleep(Duration::from_secs(3)).await;
        0
    };
    let reload_wall = hup_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during: Vec<u64> = received.latencies.lock().unwrap()[mark..].to_vec();
    // Then a single edit of that file (one record changed), and a second
    // to let it show.
    let edit_mark = mark + during.len();
    let edit_ms = if reloading {
        reload(&edited, &integrations_path, pid, &log_path, 2).await
    } else {
        0
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during_edit: Vec<u64> = received.latencies.lock().unwrap()[edit_mark..].to_vec();
    producing.await.unwrap();
    wait_until_every("the steady phase", Duration::from_secs(120), POLL, || {
        received.count.load(Ordering::Relaxed) >= steady
    })
    .await;
    let mut all = received.latencies.lock().unwrap().clone();
    let mut after = all[edit_mark + during_edit.len()..].to_vec();
    after.sort_unstable();
    all.sort_unstable();
    let mut before = before;
    before.sort_unstable();
    let mut during = during;
    during.sort_unstable();
    let mut during_edit = during_edit;
    during_edit.sort_unstable();

    // Soak: RSS at steady load.
    let mut soak = Vec::new();
    if args.soak_secs > 0 {
        let producer2 = producer.clone();
        let total = args.soak_secs * rate;
        let soaking =
            tokio::spawn(
                async move { produce(&producer2, "device-events", steady, total, rate).await },
            );
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(args.soak_secs) {
            soak.push((started.elapsed().as_secs(), proc_stats(pid).1));
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        soaking.await.unwrap();
    }
    let (_, _, peak) = proc_stats(pid);
    let _ = worker.kill();
    let _ = worker.wait();

    // The limit, same receiver, same concurrency, same requests.
    let limit_n = (n as usize).min(100_000);
    let Limit {
        rate: limit,
        send_us: limit_us,
        prepare_us,
    } = bare_client_limit(receiver_addr, limit_n).await;
    // What any dispatcher on Kafka pays per webhook before it sends
    // anything: the event consumed and the two response events produced.
    let (consume_us, produce_us) = kafka_floor(&brokers, n as usize).await;
    let worker_us = cpu_per_10k * 100.0;
    let tansu_us = tansu_per_10k * 100.0;
    let floor_us = consume_us + 2.0 * produce_us;
    let _ = tansu.kill();
    let _ = tansu.wait();

    println!("\n## e2e ({} events, concurrency {CONCURRENCY})\n", n);
    println!("| figure | value |\n|---|---|");
    println!("| hookd webhooks/s (draining the backlog) | {throughput:.0} |");
    println!(
        "| bare hyper client requests/s (same requests, concurrency, receiver) | {limit:.0} |"
    );
    println!("| ratio hookd / limit | {:.2} |", throughput / limit);
    println!("| worker CPU seconds per 10k webhooks | {cpu_per_10k:.2} |");
    println!(
        "| CPU µs per webhook: worker / receiver / broker | {worker_us:.1} / {receiver_us:.1} / {tansu_us:.1} |"
    );
    println!("| CPU µs per request: bare client + receiver | {limit_us:.1} |");
    println!(
        "| Kafka floor, bare librdkafka clients: µs per event consumed / per record produced / per webhook (1 + 2) | {consume_us:.1} / {produce_us:.1} / {floor_us:.1} |"
    );
    println!(
        "| ratio ceiling on this CPU: (bare client + receiver) / (that + Kafka floor + broker) | {:.2} |",
        limit_us / (limit_us + floor_us + tansu_us)
    );
    println!("| CPU µs per request: decode + resolve + render, one thread | {prepare_us:.1} |");
    println!(
        "| ratio ceiling with that work too: (bare client + receiver) / (that + floor + broker + decode/resolve/render) | {:.2} |",
        limit_us / (limit_us + floor_us + tansu_us + prepare_us)
    );
    println!("| broker (tansu, same machine) CPU seconds per 10k webhooks | {tansu_per_10k:.2} |");
    println!(
        "| worker peak RSS after the drain | {} MiB |",
        peak_after_drain / 1024
    );
    println!(
        "| latency at {rate}/s: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    let during_what = if args.preload {
        "the same window, 100k integrations from the start, no reload"
    } else if args.no_reload {
        "the same window, no reload (control)"
    } else {
        println!(
            "| 100k-integration reload: applied in (worker) / seen (wall) | {reload_ms} ms / {} ms |",
            reload_wall.as_millis()
        );
        println!("| then a single edit (one record changed): applied in (worker) | {edit_ms} ms |");
        "the reload"
    };
    println!(
        "| p99 latency before / during {during_what} / during the edit / after | {:.1} / {:.1} / {:.1} / {:.1} ms |",
        percentile(&before, 0.99),
        percentile(&during, 0.99),
        percentile(&during_edit, 0.99),
        percentile(&after, 0.99)
    );
    println!("| worker peak RSS (whole run) | {} MiB |", peak / 1024);
    if !soak.is_empty() {
        let samples: Vec<String> = soak
            .iter()
            .map(|(t, kb)| format!("{t}s:{}MiB", kb / 1024))
            .collect();
        println!("| RSS during soak | {} |", samples.join(" "));
    }
}
