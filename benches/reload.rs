//! Reload: 100k integration records (JSON) → validated, compiled index, the
//! work a config reload does before the atomic swap.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::integration::Integration;
use hookd::resolve::Index;
use serde_json::json;

fn bench_reload(c: &mut Criterion) {
    let records: Vec<String> = (0..100_000u32)
        .map(|i| {
            json!({"id": format!("r{i}"), "product_id": 1000 + i, "event": "temp", "url": "https://example.com/hook",
                   "json": {"v": "{{{v}}}", "device": "{{{PARTICLE_DEVICE_ID}}}"}, "headers": {"X-Key": "{{{API_KEY}}}"}})
            .to_string()
        })
        .collect();
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("index_100k_integrations", |b| {
        b.iter(|| {
            Index::build(
                records
                    .iter()
                    .map(|r| Integration::from_json(r.as_bytes()).unwrap()),
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_reload);
criterion_main!(benches);
