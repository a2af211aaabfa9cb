//! The `hookd` binary as users run it: `render`, `--help`, config errors,
//! `publish` and `demo`.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

fn hookd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hookd")
}

fn write(dir: &std::path::Path, name: &str, v: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

fn event() -> Value {
    json!({"name": "temperature/basement", "data": "{\"t\": 21.5}", "published_at": "2016-04-16T13:37:08.728Z",
           "coreid": "e00fce68aaaaaaaaaaaaaaaa", "userid": "u1", "productID": 30301, "version": 3})
}

#[test]
fn render_prints_the_request_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let integration = write(
        dir.path(),
        "i.json",
        &json!({
        "id": "i", "product_id": 30301, "event": "temp", "url": "https://example.com/t/{{{PARTICLE_DEVICE_ID}}}",
        "query": {"k": "{{{API_KEY}}}"}, "json": {"t": "{{{t}}}"}, "headers": {"X-Key": "{{{API_KEY}}}"}}),
    );
    let event = write(dir.path(), "e.json", &event());
    let config = dir.path().join("c.toml");
    common::write_toml(
        &config,
        &toml::toml! {
            [secrets]
            API_KEY = "hunter2"
        },
    );
    let out = hookd(&[
        "render",
        "--integration",
        &integration,
        "--event",
        &event,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["fires"], true);
    let request = &answer["request"];
    assert_eq!(request["method"], "POST");
    assert_eq!(
        request["url"],
        "https://example.com/t/e00fce68aaaaaaaaaaaaaaaa?k=%5B%5BSENSITIVE%5D%5D"
    );
    assert_eq!(request["headers"]["X-Key"], "[[SENSITIVE]]");
    assert_eq!(request["headers"]["Content-Type"], "application/json");
    assert!(request["headers"]["User-Agent"]
        .as_str()
        .unwrap()
        .starts_with("hookd/"));
    let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"t": "21.5", "event": "temperature/basement", "data": "{\"t\": 21.5}",
                            "published_at": "2016-04-16T13:37:08.728Z", "coreid": "e00fce68aaaaaaaaaaaaaaaa"})
    );
}

#[test]
fn render_says_why_an_integration_would_not_fire() {
    let dir = tempfile::tempdir().unwrap();
    let integration = write(
        dir.path(),
        "i.json",
        &json!({"id": "i", "org": "acme", "products": [1, 2], "event": "temp", "url": "https://example.com/"}),
    );
    let event = write(dir.path(), "e.json", &event());
    let out = hookd(&["render", "--integration", &integration, "--event", &event]);
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer,
        json!({"fires": false, "reason": "the event's product Some(30301) is not the integration's product(s) [1, 2]"})
    );
}

#[test]
fn render_refuses_an_invalid_integration_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let integration = write(
        dir.path(),
        "i.json",
        &json!({"id": "i", "product_id": 1, "event": "temp", "url": "https://e/", "json": {}, "body": "x"}),
    );
    let event = write(dir.path(), "e.json", &event());
    let out = hookd(&["render", "--integration", &integration, "--event", &event]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("json/body: json and body are mutually exclusive; give only one body"),
        "{stderr}"
    );
}

/// The shared Particle export, with a templated URL, a second query
/// parameter and `unchunked` set.
fn particle_export() -> Value {
    let mut e = common::particle_export("https://example.com/in/{{{PARTICLE_DEVICE_ID}}}");
    e["query"]["v"] = json!(2);
    e["unchunked"] = json!(true);
    e
}

/// A Particle export loads and renders as it is: no scope needed for a dry
/// run; the request carries every request field.
#[test]
fn render_takes_a_particle_export_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let integration = write(dir.path(), "export.json", &particle_export());
    let event = write(dir.path(), "e.json", &event());
    let out = hookd(&["render", "--integration", &integration, "--event", &event]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["fires"], true, "{answer}");
    let request = &answer["request"];
    assert_eq!(request["method"], "PUT");
    assert_eq!(
        request["url"],
        "https://example.com/in/e00fce68aaaaaaaaaaaaaaaa?src=temperature%2Fbasement&v=2"
    );
    assert_eq!(request["headers"]["X-Device"], "e00fce68aaaaaaaaaaaaaaaa");
    assert_eq!(
        request["headers"]["Authorization"],
        format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "user:pass")
        )
    );
    let body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["t"], "21.5");
    assert_eq!(body["n"], 3);
    assert_eq!(body["coreid"], "e00fce68aaaaaaaaaaaaaaaa");

    // The older field names of Particle's CLI and SDK load too.
    let mut older = particle_export();
    let fields = older.as_object_mut().unwrap();
    fields.remove("event");
    fields.insert("eventName".into(), "temp".into());
    let older = write(dir.path(), "older.json", &older);
    let out = hookd(&["render", "--integration", &older, "--event", &event]);
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["fires"], true, "{answer}");

    // A sandbox export (one device) and a bare event of no product and no
    // user: tried as that sandbox's.
    let mut sandbox = particle_export();
    sandbox["deviceid"] = json!("E00FCE68AAAAAAAAAAAAAAAA");
    let sandbox = write(dir.path(), "sandbox.json", &sandbox);
    let bare = write(
        dir.path(),
        "bare.json",
        &json!({"name": "temp", "data": "{\"t\": 1}", "coreid": "e00fce68aaaaaaaaaaaaaaaa"}),
    );
    for e in [&event, &bare] {
        let out = hookd(&["render", "--integration", &sandbox, "--event", e]);
        let answer: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(answer["fires"], true, "{answer}");
    }

    // A field Particle does not have is refused, named.
    let mut typo = particle_export();
    typo["requesttype"] = json!("GET");
    let typo = write(dir.path(), "typo.json", &typo);
    let out = hookd(&["render", "--integration", &typo, "--event", &event]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("requesttype"), "{err}");
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["worker", "--help"],
        vec!["render", "--help"],
        vec!["publish", "--help"],
        vec!["demo", "--help"],
    ] {
        let out = hookd(&args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: hookd"),
            "{args:?}"
        );
    }
}

#[test]
fn worker_refuses_bad_config_naming_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    common::write_toml(
        &config,
        &toml::toml! {
            [worker]
            max_inflight_events = "many"
        },
    );
    let out = hookd(&["worker", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("worker.max_inflight_events") && stderr.contains("\"many\""),
        "{stderr}"
    );

    common::write_toml(
        &config,
        &toml::toml! {
            [delivery]
            timeot = "5s"
        },
    );
    let out = hookd(&["worker", "--config", config.to_str().unwrap()]);
    assert!(String::from_utf8(out.stderr).unwrap().contains("timeot"));

    let out = Command::new(env!("CARGO_BIN_EXE_hookd"))
        .args(["worker"])
        .env("HOOKD_WORKER__MAX_INFLIGHT_EVENTS", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("worker.max_inflight_events: must be at least 1, got 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_produces_simulated_and_file_events() {
    let broker = common::Broker::start();
    let s = common::settings(&broker);
    broker.create_topic(&s.kafka.events_topic, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    common::write_toml(
        &config,
        &toml::toml! {
            [kafka]
            brokers = (s.kafka.brokers.as_str())
            events_topic = (s.kafka.events_topic.as_str())
        },
    );
    let lines = dir.path().join("events.jsonl");
    std::fs::write(
        &lines,
        format!("{}\n\n{}\n", event(), json!({"name": "x", "coreid": "d"})),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let lines = lines.to_str().unwrap().to_owned();
    let (sim, file) = tokio::task::spawn_blocking(move || {
        (
            hookd(&[
                "publish",
                "--config",
                &config,
                "--simulate",
                "20",
                "--count",
                "50",
                "--products",
                "7,8",
            ]),
            hookd(&["publish", "--config", &config, "--file", &lines]),
        )
    })
    .await
    .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert!(String::from_utf8_lossy(&sim.stderr).contains("published 50 events"));
    assert!(String::from_utf8_lossy(&file.stderr).contains("published 2 events"));
    let records = broker
        .read_all(&s.kafka.events_topic, 52, Duration::from_secs(30))
        .await;
    assert_eq!(records.len(), 52);
    let products: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|(_, v)| {
            serde_json::from_slice::<Value>(v)
                .ok()?
                .get("productID")?
                .as_u64()
        })
        .collect();
    assert_eq!(products, [7, 8, 30301].into_iter().collect());
    assert!(records.iter().all(|(k, _)| k.is_some()), "keyed by device");
}

#[test]
fn demo_delivers_webhooks_to_its_receiver() {
    let out = hookd(&[
        "demo",
        "--seconds",
        "8",
        "--every",
        "2",
        "--rate",
        "100",
        "--api-listen",
        "127.0.0.1:0",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rfind(|l| l.contains("receiver got"))
        .expect("a printout");
    let got: u64 = last
        .split("receiver got ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(got > 0, "{stdout}");
    for id in ["org-telemetry", "product-status", "sandbox-motion"] {
        assert!(stdout.contains(id), "{id} in\n{stdout}");
    }
    assert!(
        stdout.contains("/org/1001") && stdout.contains("/org/1002"),
        "the org integration fired on both products\n{stdout}"
    );
    // Every client stopped before the embedded broker: no client was left
    // talking to a broker that is gone.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("AllBrokersDown") && !stderr.contains("Connection refused"),
        "{stderr}"
    );
}
