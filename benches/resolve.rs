//! Resolve stage: event → matching integrations, with 100k integrations
//! spread over 1k, 100k and 1M products. The event's own product always has
//! the same three integrations, so the figures show whether lookup grows with
//! *other* products' integrations (it must not).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookd::model::event::{DeviceEvent, Origin};
use hookd::model::integration::Integration;
use hookd::pipeline::resolve::Index;
use serde_json::json;

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INTEGRATIONS: u32 = 100_000;
const TARGET: u32 = 1;

fn index(products: u32) -> Index {
    let mut all = vec![
        Integration::from_value(json!({"id": "t-product", "product_id": TARGET, "event": "temp", "url": "https://example.com/p"})).unwrap(),
        Integration::from_value(json!({"id": "t-org", "org": "acme", "products": [TARGET, 2], "event": "temp", "url": "https://example.com/o"})).unwrap(),
        Integration::from_value(json!({"id": "t-other", "product_id": TARGET, "event": "humidity", "url": "https://example.com/h"})).unwrap(),
    ];
    // The rest over the other products (ids 2..=products), round-robin.
    let others = products.saturating_sub(1).max(1);
    for n in 0..INTEGRATIONS - 3 {
        let product = 2 + n % others;
        all.push(Integration::from_value(json!({"id": format!("i{n}"), "product_id": product, "event": "temp", "url": "https://example.com/x"})).unwrap());
    }
    Index::build(all).unwrap()
}

fn bench_resolve(c: &mut Criterion) {
    let raw = json!({"name": "temperature", "data": "1", "coreid": "e00fce68aaaaaaaaaaaaaaaa", "userid": "", "productID": TARGET}).to_string();
    let origin = Origin {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    };
    let event = DeviceEvent::decode(raw.as_bytes(), &origin, chrono::DateTime::UNIX_EPOCH).unwrap();
    let mut group = c.benchmark_group("resolve");
    group.throughput(Throughput::Elements(1));
    for products in [1_000u32, 100_000, 1_000_000] {
        let index = index(products);
        let mut out = Vec::new();
        group.bench_with_input(
            BenchmarkId::new("products", products),
            &index,
            |b, index| {
                b.iter(|| {
                    index.resolve_into(&event, &mut out);
                    assert_eq!(out.len(), 2);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_resolve);
criterion_main!(benches);
