//! Render stage: integration + event → request, for the default body, a
//! 10-field JSON template and a form template.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookd::event::{DeviceEvent, Origin};
use hookd::integration::Integration;
use hookd::render::{render, EventContext, SecretMode};
use serde_json::json;

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event() -> DeviceEvent {
    let data = json!({"t": 21.5, "h": 40, "battery": 87, "seq": 1234, "fw": "3.1.0", "lat": 52.1, "lon": 4.3}).to_string();
    let raw = json!({"name": "temperature/basement", "data": data, "published_at": "2024-05-13T10:55:40.306Z",
                     "coreid": "e00fce68aaaaaaaaaaaaaaaa", "userid": "5977", "productID": 30301, "version": 3}).to_string();
    let origin = Origin {
        topic: "device-events".into(),
        partition: 0,
        offset: 1,
    };
    DeviceEvent::decode(raw.as_bytes(), &origin, chrono::DateTime::UNIX_EPOCH).unwrap()
}

fn integrations() -> Vec<(&'static str, Integration)> {
    let base = |extra: serde_json::Value| {
        let mut v = json!({"id": "i", "product_id": 30301, "event": "temp", "url": "https://example.com/in"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        Integration::from_value(v).unwrap()
    };
    let fields: serde_json::Map<String, serde_json::Value> =
        ["t", "h", "battery", "seq", "fw", "lat", "lon"]
            .iter()
            .map(|k| (k.to_string(), json!(format!("{{{{{{{k}}}}}}}"))))
            .chain([
                ("device".to_string(), json!("{{{PARTICLE_DEVICE_ID}}}")),
                ("event".to_string(), json!("{{{PARTICLE_EVENT_NAME}}}")),
                ("at".to_string(), json!("{{{PARTICLE_PUBLISHED_AT}}}")),
            ])
            .collect();
    vec![
        ("default_body", base(json!({}))),
        ("json_10_fields", base(json!({"json": fields}))),
        (
            "form",
            base(
                json!({"form": {"device": "{{{PARTICLE_DEVICE_ID}}}", "t": "{{{t}}}", "h": "{{{h}}}"}}),
            ),
        ),
    ]
}

fn bench_render(c: &mut Criterion) {
    let event = event();
    let secrets = Arc::new(BTreeMap::new());
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    for (name, integration) in integrations() {
        group.bench_with_input(BenchmarkId::from_parameter(name), &integration, |b, i| {
            b.iter(|| {
                // A fresh context per iteration: in the worker it is built once
                // per event, so this is the cost of an event with one
                // integration (as the worker makes it: without the whole-event
                // variables unless a template names them).
                let mut ctx = EventContext::new(event.clone(), secrets.clone(), SecretMode::Reveal);
                if !i.uses_whole_event {
                    ctx = ctx.without_whole_event();
                }
                render(i, &ctx).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_render);
criterion_main!(benches);
