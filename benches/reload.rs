//! Reload: 100k integration records (JSON) → validated, compiled index, the
//! work a config reload does before the atomic swap; and one change on the
//! config log with 100k integrations live: apply the record, rebuild the
//! index (no recompiling), which is what a worker does per batch; and the
//! file source's reload (SIGHUP): the same records read from one file, in
//! full and with one record changed since the last load.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hookd::model::integration::Integration;
use hookd::pipeline::resolve::Index;
use hookd::template::{TemplateCache, TemplateLimits};
use serde_json::json;

/// The allocator of the `hookd` binary, so figures are what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // Compiled as a config does: in a template cache, so the records'
    // repeated templates are compiled once.
    group.bench_function("index_100k_integrations", |b| {
        b.iter(|| {
            let cache = TemplateCache::default();
            let limits = TemplateLimits::default();
            Index::build(
                records.iter().map(|r| {
                    Integration::from_json_in(r.as_bytes(), &limits, Some(&cache)).unwrap()
                }),
            )
            .unwrap()
        })
    });
    // What a SIGHUP of the file source does: the same records as one file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("integrations.json");
    std::fs::write(&file, format!("[{}]", records.join(","))).unwrap();
    group.bench_function("file_100k_integrations", |b| {
        b.iter(|| hookd::control::source::load_index(&file).unwrap())
    });
    // A single edit: the same file with one record changed, reloaded by a
    // source that loaded the file before (as the worker's does); the two
    // files alternate, so every load compiles the one record that differs.
    let mut edited = records.clone();
    edited[7] = edited[7].replace("https://example.com/hook", "https://example.com/edited");
    let other = dir.path().join("integrations-edited.json");
    std::fs::write(&other, format!("[{}]", edited.join(","))).unwrap();
    let mut source = hookd::control::source::FileSource::default();
    source.load(&file).unwrap();
    let mut flip = false;
    group.bench_function("file_100k_one_record_changed", |b| {
        b.iter(|| {
            flip = !flip;
            let index = source.load(if flip { &other } else { &file }).unwrap();
            assert_eq!(source.last_compiled, 1);
            index
        })
    });
    group.finish();

    let mut state = hookd::control::config_log::state::ConfigState::default();
    let records: Vec<String> = (0..100_000u32)
        .map(|i| {
            json!({"id": format!("r{i}"), "version": 1, "owner": format!("user{i}"), "event": "temp",
                   "url": "https://example.com/hook", "json": {"v": "{{{v}}}"}})
            .to_string()
        })
        .collect();
    for (i, r) in records.iter().enumerate() {
        state
            .apply(&format!("integration/r{i}"), Some(r.as_bytes()))
            .unwrap();
    }
    let mut version = 1u64;
    let mut group = c.benchmark_group("config_log");
    group.sample_size(10);
    group.bench_function("one_change_with_100k_live", |b| {
        b.iter(|| {
            version += 1;
            let edit = json!({"id": "r7", "version": version, "owner": "user7", "event": "temp",
                              "url": format!("https://example.com/v{version}")})
            .to_string();
            state
                .apply("integration/r7", Some(edit.as_bytes()))
                .unwrap();
            state.index()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_reload);
criterion_main!(benches);
