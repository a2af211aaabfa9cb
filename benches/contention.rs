//! Contention: the per-delivery shared state every delivery of a worker
//! touches behind a process-wide structure, at 1, 2, 4 and 8 threads.
//!
//! - `tally/add`: the outcome tally ([`Tally::add`]) over 64 integrations ×
//!   4 products;
//! - `book/count`: the traffic book's per-attempt count
//!   ([`TrafficBook::count`]), same keys;
//! - `book/sample`: the traffic book's per-attempt sample
//!   ([`TrafficBook::sample`], and [`TrafficBook::sample_failure`] for one
//!   attempt in 16), the book's other lock;
//! - `recorder/record_kind`: what dispatch calls per attempt to count it
//!   ([`Recorder::record_kind`]: the tally with its Prometheus counter and
//!   the book's count; no metrics recorder is installed here, so the
//!   counters and histogram are no-ops);
//! - `sleeping/admit_observe`: the sleeping-hosts check before the send and
//!   the outcome after it, as dispatch makes them (`admit`, then `observe`
//!   only when admitted), over the same 64 integrations (16 org tenants, 32
//!   hosts); the hosts of 1 integration in 8 fail, so their tenants hold
//!   ratings and those hosts are asleep (skipped) for most of the run.
//!
//! Each thread makes `PER_THREAD` operations per iteration, starting at its
//! own place in the key space (threads walk different keys, as deliveries of
//! different events do); the time is from all threads released at once to
//! the last one done, and the throughput is `threads × PER_THREAD` operations
//! per iteration. The threads are spawned once per sample, not per
//! iteration. On a machine with fewer cores than threads, the higher counts
//! measure a lock holder being preempted as much as contention proper.
//!
//! Only public methods of the structures are used, so the bench measures the
//! same calls whatever they are built on (a mutex'd map or a sharded one).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use hookd::model::event::{DeviceEvent, Origin};
use hookd::model::integration::Integration;
use hookd::model::outcome::{Outcome, OutcomeKind};
use hookd::pipeline::resolve::Match;
use hookd::pipeline::tally::{Recorder, Tally};
use hookd::pipeline::traffic::TrafficBook;
use hookd::policy::clock::MonotonicClock;
use hookd::policy::sleeping::{SleepRule, SleepingHosts};
use serde_json::json;

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INTEGRATIONS: usize = 64;
const PRODUCTS: usize = 4;
/// (integration, product) keys.
const KEYS: usize = INTEGRATIONS * PRODUCTS;
/// Where thread `t` starts in the key space: `t * SPREAD`.
const SPREAD: usize = KEYS / 8;
/// Organisations (sleeping-hosts tenants) the integrations belong to.
const TENANTS: usize = 16;
/// Destination hosts the integrations send to.
const HOSTS: usize = 32;
/// Operations per thread per iteration.
const PER_THREAD: u64 = 1_000;
const THREADS: [usize; 4] = [1, 2, 4, 8];

/// The key of thread `t`'s `i`-th operation.
fn key(t: usize, i: u64) -> usize {
    (t * SPREAD + (i % KEYS as u64) as usize) % KEYS
}

/// One attempt in 16 is an error, the rest succeed.
fn kind(i: u64) -> OutcomeKind {
    if i.is_multiple_of(16) {
        OutcomeKind::Error
    } else {
        OutcomeKind::Success
    }
}

/// Runs `op(thread, i)` for `i` in `0..ops` on each of `threads` threads,
/// released together; the time from the release to the last one done.
fn on_threads<F>(threads: usize, ops: u64, op: &F) -> Duration
where
    F: Fn(usize, u64) + Sync,
{
    let ready = Barrier::new(threads + 1);
    let released = std::thread::scope(|s| {
        for t in 0..threads {
            let ready = &ready;
            s.spawn(move || {
                ready.wait();
                for i in 0..ops {
                    op(t, i);
                }
            });
        }
        ready.wait();
        Instant::now()
        // The scope joins every thread before returning.
    });
    released.elapsed()
}

/// `name/threads=N` for each thread count, in `group`.
fn contended<F>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, op: F)
where
    F: Fn(usize, u64) + Sync,
{
    for threads in THREADS {
        group.throughput(Throughput::Elements(threads as u64 * PER_THREAD));
        group.bench_with_input(
            BenchmarkId::new(name, format!("threads={threads}")),
            &threads,
            |b, &threads| b.iter_custom(|iters| on_threads(threads, iters * PER_THREAD, &op)),
        );
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group
}

/// The 64 integrations: org integrations over the 4 products, 16 orgs.
fn integrations() -> Vec<Arc<Integration>> {
    (0..INTEGRATIONS)
        .map(|n| {
            Arc::new(
                Integration::from_value(json!({
                    "id": format!("i{n}"),
                    "org": format!("org{}", n % TENANTS),
                    "products": [1, 2, 3, 4],
                    "event": "temp",
                    "url": format!("https://h{}.example.com/in", n % HOSTS),
                }))
                .unwrap(),
            )
        })
        .collect()
}

/// Key `k` is integration `k / PRODUCTS` on product `k % PRODUCTS + 1`.
fn matches(integrations: &[Arc<Integration>]) -> Vec<Match> {
    (0..KEYS)
        .map(|k| Match {
            integration: integrations[k / PRODUCTS].clone(),
            product: Some((k % PRODUCTS) as u32 + 1),
        })
        .collect()
}

/// An event of each product (index `product - 1`).
fn events() -> Vec<DeviceEvent> {
    let origin = Origin {
        topic: "device-events".into(),
        partition: 0,
        offset: 1,
    };
    (1..=PRODUCTS)
        .map(|product| {
            let raw =
                json!({"name": "temp", "data": "21.5", "published_at": "2024-05-13T10:55:40.306Z",
                             "coreid": "e00fce68aaaaaaaaaaaaaaaa", "productID": product})
                .to_string();
            DeviceEvent::decode(raw.as_bytes(), &origin, chrono::Utc::now()).unwrap()
        })
        .collect()
}

fn bench_contention(c: &mut Criterion) {
    let integrations = integrations();
    let matches = matches(&integrations);
    let events = events();

    let mut g = group(c, "tally");
    let tally = Tally::default();
    contended(&mut g, "add", |t, i| {
        let m = &matches[key(t, i)];
        tally.add(&m.integration.id, m.product, kind(i));
    });
    g.finish();

    let mut g = group(c, "book");
    let book = TrafficBook::default();
    contended(&mut g, "count", |t, i| {
        let m = &matches[key(t, i)];
        book.count(&m.integration.id, m.product, kind(i));
    });
    let sent = Outcome {
        result: Ok(200),
        body: Bytes::from_static(b"ok"),
        elapsed: Duration::from_millis(20),
        retry_after: None,
        content_type: None,
    };
    contended(&mut g, "sample", |t, i| {
        let k = key(t, i);
        let m = &matches[k];
        let event = &events[k % PRODUCTS];
        if i.is_multiple_of(16) {
            book.sample_failure(&m.integration, m.product, event, "host asleep".to_owned());
        } else {
            book.sample(&m.integration, m.product, event, &sent);
        }
    });
    g.finish();

    let mut g = group(c, "recorder");
    let recorder =
        Recorder::new(Tally::default(), true).with_traffic(Arc::new(TrafficBook::default()));
    contended(&mut g, "record_kind", |t, i| {
        recorder.record_kind(&matches[key(t, i)], kind(i), Duration::from_millis(20));
    });
    g.finish();

    let mut g = group(c, "sleeping");
    let sleeping = SleepingHosts::new(SleepRule::default(), MonotonicClock::default());
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("h{h}.example.com")).collect();
    contended(&mut g, "admit_observe", |t, i| {
        let k = key(t, i);
        let n = k / PRODUCTS;
        let tenant = &matches[k].integration.tenant;
        let host = &hosts[n % HOSTS];
        if sleeping.admit(tenant, host) {
            sleeping.observe(tenant, host, !n.is_multiple_of(8));
        }
    });
    g.finish();
}

criterion_group!(benches, bench_contention);
criterion_main!(benches);
