//! Render stage: integration + event → request, for the default body, a
//! 10-field JSON template and a form template; and compiling templates, up to
//! the largest the default `[templates]` limits allow (compile time must grow
//! linearly with size: one template of 16, 32 and 64 KiB, then a whole
//! integration at `max_integration_bytes`).

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hookd::model::event::{DeviceEvent, Origin};
use hookd::model::integration::Integration;
use hookd::model::variables::{EventContext, SecretMode};
use hookd::pipeline::render::render;
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

/// A template of about `bytes` bytes, mixing text, variables and sections
/// three deep: every kind of tag the parser handles.
fn big_template(bytes: usize) -> String {
    let unit = "<p>{{a}} and {{{b.c.0}}}</p>{{#rows}}{{#cells}}{{^x}}{{.}}{{/x}}{{/cells}}{{/rows}}{{! n }}";
    unit.repeat(bytes / unit.len())
}

fn bench_compile(c: &mut Criterion) {
    let limits = hookd::template::TemplateLimits::default();
    let mut group = c.benchmark_group("compile");
    for kib in [16usize, 32, 64] {
        // Distinct per iteration, so the cache of compiled templates (which
        // returns a template still in use) is never what is measured.
        let source = big_template(kib * 1024 - 64);
        group.throughput(Throughput::Bytes(source.len() as u64));
        let mut n = 0u64;
        group.bench_with_input(BenchmarkId::new("template_kib", kib), &source, |b, s| {
            b.iter(|| {
                n += 1;
                let unique = format!("{s}{n}");
                hookd::template::Template::compile_with(&unique, &limits).unwrap()
            })
        });
    }
    // The largest integration the defaults allow: four fields of 64 KiB.
    let field = big_template(limits.max_template_bytes.get() - 64);
    let mut n = 0u64;
    group.throughput(Throughput::Bytes(4 * field.len() as u64));
    group.bench_function("largest_integration", |b| {
        b.iter(|| {
            n += 1;
            let v = json!({"id": "big", "product_id": 1, "event": "temp", "url": "https://example.com/in",
                           "json": {"a": format!("{field}a{n}"), "b": format!("{field}b{n}"), "c": format!("{field}c{n}")},
                           "headers": {"X": format!("{field}x{n}")}});
            Integration::from_value(v).unwrap()
        })
    });
    group.finish();
}

/// The most a device's data can make one render cost: sections nested over
/// a 100-item array (10⁶ repetitions asked) stop at the default
/// `max_render_steps`.
fn bench_budget(c: &mut Criterion) {
    let t =
        hookd::template::Template::compile("{{#a}}{{#a}}{{#a}}{{{i}}},{{/a}}{{/a}}{{/a}}").unwrap();
    let items: Vec<serde_json::Value> = (0..100).map(|i| json!({ "i": i })).collect();
    let data = json!({ "a": items });
    let mut group = c.benchmark_group("render_budget");
    group.bench_function("nested_sections_stopped", |b| {
        b.iter(|| t.render(&data).unwrap_err())
    });
    group.finish();
}

criterion_group!(benches, bench_render, bench_compile, bench_budget);
criterion_main!(benches);
