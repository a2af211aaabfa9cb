//! The real binary against a broker: a worker killed abruptly mid-stream and
//! restarted delivers every event at least once, duplicates carrying the same
//! idempotency key; a worker stopped by SIGTERM drains, commits and exits 0,
//! so its successor redelivers nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::{
    create_topics, produce, settings, spawn_worker_binary, temp_events, wait_until, Broker, Mode,
    Receiver,
};
use hookd::model::request::idempotency_key;
use hookd::runtime::config::Settings;
use serde_json::json;

fn write_config(dir: &Path, s: &Settings, receiver: &Receiver) -> std::path::PathBuf {
    write_config_with(dir, s, receiver, toml::Table::new())
}

fn write_config_with(
    dir: &Path,
    s: &Settings,
    receiver: &Receiver,
    extra: toml::Table,
) -> std::path::PathBuf {
    let integrations = dir.join("integrations");
    std::fs::create_dir_all(&integrations).unwrap();
    let hook = json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in"), "json": {"v": "{{{PARTICLE_EVENT_VALUE}}}"}});
    std::fs::write(integrations.join("h.json"), hook.to_string()).unwrap();
    let mut s = s.clone();
    // A killed member leaves the group only when its session times out:
    // keep that short so the restarted worker gets the partitions soon.
    s.kafka
        .client
        .insert("session.timeout.ms".into(), "6000".into());
    s.kafka
        .client
        .insert("heartbeat.interval.ms".into(), "500".into());
    let mut config = toml::toml! {
        [integrations]
        source = "file"
        path = (integrations.display().to_string())

        [worker]
        max_inflight_events = 8
        shutdown_grace = "10s"

        [metrics]
        listen = "127.0.0.1:0"

        [log]
        filter = "info,rdkafka=warn"
    };
    common::merge(&mut config, extra);
    let path = dir.join("hookd.toml");
    common::write_config_file(&path, &s, config);
    path
}

fn spawn_worker(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    spawn_worker_binary(config, log.into())
}

fn events(n: usize) -> Vec<(String, String)> {
    temp_events(0, n, 11, Some("c"))
}

/// Requests by idempotency key.
fn by_key(receiver: &Receiver) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in receiver.seen() {
        map.entry(s.headers["idempotency-key"].clone())
            .or_default()
            .push(s.body);
    }
    map
}

/// A worker binary stopped by `stop` once `stop_after` of `n` events were
/// delivered, then a second one started on the same group. Returns the
/// requests by idempotency key once every event arrived, and the log.
async fn stop_and_restart(
    n: usize,
    delay_ms: u64,
    stop_after: usize,
    stop: impl FnOnce(&mut Child, &Path),
) -> (BTreeMap<String, Vec<String>>, String) {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Delay(Duration::from_millis(delay_ms)));
    let s = settings(&broker);
    create_topics(&broker, &s, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s, &receiver);
    let log = dir.path().join("worker.log");
    let want: BTreeSet<String> = (0..n)
        .map(|i| idempotency_key(&format!("c-{i}"), "h"))
        .collect();

    let mut first = spawn_worker(&config, &log);
    produce(&broker, &s.kafka.events_topic, &events(n)).await;
    wait_until("the first deliveries", Duration::from_secs(120), || {
        receiver.count() >= stop_after
    })
    .await;
    stop(&mut first, &log);
    let at_stop = receiver.count();
    assert!(
        at_stop < n,
        "stopped mid-stream ({at_stop} of {n} delivered)"
    );

    let mut second = spawn_worker(&config, &log);
    let done = wait_until_all(&receiver, &want).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    if let Err(missing) = done {
        panic!("{missing} events never delivered; worker log:\n{log}");
    }
    let seen = by_key(&receiver);
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "every event delivered, nothing else"
    );
    (seen, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing() {
    let (seen, _) = stop_and_restart(2000, 5, 300, |worker, _| {
        worker.kill().expect("SIGKILL"); // no drain, no final commit
        worker.wait().unwrap();
    })
    .await;
    for (key, bodies) in &seen {
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "duplicates of {key} are the same request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero() {
    let (seen, log) = stop_and_restart(600, 20, 100, |worker, log| {
        let status = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = worker.wait().unwrap();
        assert!(
            exit.success(),
            "exit status {exit:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
    })
    .await;
    let dups: Vec<_> = seen
        .iter()
        .filter(|(_, b)| b.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(
        dups.is_empty(),
        "a drained worker commits what it finished; redelivered: {dups:?}"
    );
    assert!(log.contains("final offsets committed"), "{log}");
}

/// Waits (up to a deadline that only guards against hanging) until every
/// wanted key arrived; `Err(missing count)` otherwise.
async fn wait_until_all(receiver: &Receiver, want: &BTreeSet<String>) -> Result<(), usize> {
    let end = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let seen = by_key(receiver);
        let missing = want.iter().filter(|k| !seen.contains_key(*k)).count();
        if missing == 0 {
            // Let stragglers of the restarted worker settle before comparing.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        if tokio::time::Instant::now() > end {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_pending_in_a_killed_worker_are_delivered_after_restart() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(500));
    let mut s = settings(&broker);
    s.retry.delays = vec![Duration::from_secs(2), Duration::from_secs(4)];
    create_topics(&broker, &s, 2).await;
    let dir = tempfile::tempdir().unwrap();
    // A host that never falls asleep: this test is about the retries.
    let config = write_config_with(
        dir.path(),
        &s,
        &receiver,
        toml::toml! {
            [sleeping]
            trip_errors = 1000000000.0
        },
    );
    let log = dir.path().join("worker.log");
    const N: usize = 20;
    let want: BTreeSet<String> = (0..N)
        .map(|i| idempotency_key(&format!("c-{i}"), "h"))
        .collect();

    let mut first = spawn_worker(&config, &log);
    produce(&broker, &s.kafka.events_topic, &events(N)).await;
    wait_until(
        "every first attempt failed",
        Duration::from_secs(60),
        || receiver.arrived() >= N,
    )
    .await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    assert!(receiver.delivered().is_empty());
    receiver.set_mode(Mode::Status(200));

    let mut second = spawn_worker(&config, &log);
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    while receiver.delivered() != want && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    let delivered = receiver.delivered();
    assert_eq!(
        delivered,
        want,
        "{} of {N} delivered; log:\n{}",
        delivered.len(),
        std::fs::read_to_string(&log).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_integrations_and_refuses_invalid_ones() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let s = settings(&broker);
    create_topics(&broker, &s, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &s, &receiver);
    let file = dir.path().join("integrations").join("h.json");
    let log = dir.path().join("worker.log");
    let mut worker = spawn_worker(&config, &log);
    let hup = |w: &Child| {
        assert!(Command::new("kill")
            .args(["-HUP", &w.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    let targets = |r: &Receiver| r.seen().into_iter().map(|s| s.target).collect::<Vec<_>>();

    produce(&broker, &s.kafka.events_topic, &events(1)).await;
    wait_until("the first webhook", Duration::from_secs(60), || {
        receiver.count() == 1
    })
    .await;

    let edited =
        json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/edited")});
    std::fs::write(&file, edited.to_string()).unwrap();
    hup(&worker);
    wait_until("the reload", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("integrations reloaded")
    })
    .await;
    produce(
        &broker,
        &s.kafka.events_topic,
        &[(
            "d".into(),
            json!({"name": "temp", "coreid": "d", "productID": 5, "id": "x1"}).to_string(),
        )],
    )
    .await;
    wait_until("the edited webhook", Duration::from_secs(30), || {
        receiver.count() == 2
    })
    .await;

    std::fs::write(
        &file,
        r#"{"id": "h", "product_id": 5, "event": "temp", "url": "ftp://nowhere"}"#,
    )
    .unwrap();
    hup(&worker);
    wait_until("the refusal", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("reload refused")
    })
    .await;
    produce(
        &broker,
        &s.kafka.events_topic,
        &[(
            "d".into(),
            json!({"name": "temp", "coreid": "d", "productID": 5, "id": "x2"}).to_string(),
        )],
    )
    .await;
    wait_until(
        "a webhook after the refusal",
        Duration::from_secs(30),
        || receiver.count() == 3,
    )
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(targets(&receiver), ["/in", "/edited", "/edited"]);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("must start with http:// or https://"),
        "the refusal names the reason:\n{log}"
    );
}
