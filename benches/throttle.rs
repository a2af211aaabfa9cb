//! The limiter decision per request, over 1k destination hosts.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::policy::throttle::{LimitSettings, Throttle};

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_throttle(c: &mut Criterion) {
    let throttle = Throttle::new(LimitSettings {
        rate: 1e9,
        burst: 1_000_000,
        max_wait: Duration::from_secs(1),
        max_deferrals: 10,
        max_waiting: std::num::NonZeroUsize::new(10_000).unwrap(),
        hosts: BTreeMap::new(),
    });
    let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}.example.com")).collect();
    let mut group = c.benchmark_group("throttle");
    group.throughput(Throughput::Elements(1));
    let mut n = 0usize;
    group.bench_function("reserve_1k_hosts", |b| {
        b.iter(|| {
            n = (n + 1) % hosts.len();
            throttle.reserve(&hosts[n], Duration::from_secs(1))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_throttle);
criterion_main!(benches);
