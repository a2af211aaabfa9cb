//! Decode stage: one events-topic record → `DeviceEvent`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::model::event::{DeviceEvent, Origin};
use serde_json::json;

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_decode(c: &mut Criterion) {
    // ~300 bytes of data, as the load benchmark's devices send.
    let data = json!({"t": 21.5, "h": 40, "battery": 87, "seq": 1234, "fw": "3.1.0", "lat": 52.1234, "lon": 4.3123,
                      "status": "ok", "readings": [1.5, 2.25, 3.125, 4.0625, 5.5, 6.75, 7.875], "note": "x".repeat(120)})
    .to_string();
    let record = json!({"name": "temperature/basement", "data": data, "published_at": "2024-05-13T10:55:40.306Z",
                        "coreid": "e00fce68aaaaaaaaaaaaaaaa", "userid": "5977", "productID": 30301, "version": 3,
                        "ttl": 60, "public": false})
    .to_string();
    let origin = Origin {
        topic: "device-events".into(),
        partition: 0,
        offset: 1,
    };
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(record.len() as u64));
    group.bench_function("particle_event", |b| {
        b.iter(|| {
            DeviceEvent::decode(record.as_bytes(), &origin, chrono::DateTime::UNIX_EPOCH).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
