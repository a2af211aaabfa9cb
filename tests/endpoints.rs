//! The worker binary's own endpoints: `/healthz`, `/readyz` and `/metrics`,
//! with the integration label switched off for large fleets.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    create_topics, free_port, http_get, produce, settings, spawn_worker_binary, wait_until, Broker,
    Receiver,
};
use serde_json::json;

/// The real worker binary on `config`.
fn spawn_worker(config: &std::path::Path) -> std::process::Child {
    spawn_worker_binary(config, Stdio::null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_without_integration_label() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let s = settings(&broker);
    // On a real broker the worker creates its dead-letter topic itself (the
    // mock cluster does not answer CreateTopics in time); the events topic is
    // always the test's.
    let create = broker.is_real();
    if create {
        broker.create_topic(&s.kafka.events_topic, 1).await;
    } else {
        create_topics(&broker, &s, 1).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let hook = json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")});
    std::fs::write(dir.path().join("h.json"), hook.to_string()).unwrap();
    let port = free_port();
    let mut s = s.clone();
    s.kafka.create_topics = create;
    let config = dir.path().join("hookd.toml");
    common::write_config_file(
        &config,
        &s,
        toml::toml! {
            [integrations]
            source = "file"
            path = (dir.path().display().to_string())

            [metrics]
            listen = (format!("127.0.0.1:{port}"))
            integration_label = false
        },
    );
    let mut worker = spawn_worker(&config);

    wait_until("/readyz", Duration::from_secs(30), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    let event = json!({"name": "temp", "data": "1", "coreid": "d", "productID": 5}).to_string();
    produce(&broker, &s.kafka.events_topic, &[("d".into(), event)]).await;
    wait_until("the webhook", Duration::from_secs(60), || {
        receiver.count() == 1
    })
    .await;
    let series = "hookd_webhook_attempts_total{product=\"5\",outcome=\"success\"} 1";
    wait_until("the success series", Duration::from_secs(10), || {
        http_get(port, "/metrics").is_some_and(|(_, body)| body.contains(series))
    })
    .await;
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        !metrics.contains("integration=\""),
        "label dropped by config:\n{metrics}"
    );
    for name in [
        "hookd_events_consumed_total 1",
        "hookd_webhook_duration_seconds_count{outcome=\"success\"} 1",
        "hookd_inflight_deliveries 0",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    if create {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = broker.client().create().unwrap();
        let md = c
            .fetch_metadata(Some(&s.kafka.dead_letter_topic), Duration::from_secs(10))
            .unwrap();
        let topic = &md.topics()[0];
        assert!(
            topic.error().is_none()
                && topic.partitions().len() == s.kafka.topic_partitions as usize,
            "dead-letter topic created by the worker"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_until_the_config_log_is_replayed() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let s = settings(&broker);
    create_topics(&broker, &s, 1).await;
    // A log to replay: many records, the integration that matters last.
    let mut records: Vec<(String, String)> = (0..1000)
        .map(|n| {
            let hook = json!({"id": format!("h{n}"), "version": 1, "product_id": 1000 + n,
                              "event": "temp", "url": receiver.url("/other")});
            (format!("integration/h{n}"), hook.to_string())
        })
        .collect();
    let last = json!({"id": "last", "version": 1, "product_id": 5, "event": "temp", "url": receiver.url("/last")});
    records.push(("integration/last".into(), last.to_string()));
    produce(&broker, &s.kafka.config_topic, &records).await;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("hookd.toml");
    common::write_config_file(
        &config,
        &s,
        toml::toml! {
            [metrics]
            listen = (format!("127.0.0.1:{port}"))
            integration_label = true
        },
    );
    let mut worker = spawn_worker(&config);
    wait_until("/readyz", Duration::from_secs(30), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    // Ready means replayed: the last record is already in the index.
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("hookd_config_records_applied_total 1001"),
        "{metrics}"
    );
    let event = json!({"name": "temp", "data": "1", "coreid": "d", "productID": 5}).to_string();
    produce(&broker, &s.kafka.events_topic, &[("d".into(), event)]).await;
    wait_until("the webhook", Duration::from_secs(60), || {
        receiver.count() == 1
    })
    .await;
    assert_eq!(receiver.seen()[0].target, "/last");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// A record whose delivery never ends holds its partition's commit point:
/// with `worker.stall_after = 1s`, `/healthz` answers 503 naming the
/// partition while a destination hangs, and 200 again once the delivery
/// timed out and the commit point moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_stalled_partition() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(common::Mode::Hang);
    let s = settings(&broker);
    create_topics(&broker, &s, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")});
    std::fs::write(dir.path().join("h.json"), hook.to_string()).unwrap();
    let port = free_port();
    let config = dir.path().join("hookd.toml");
    common::write_config_file(
        &config,
        &s,
        toml::toml! {
            [integrations]
            source = "file"
            path = (dir.path().display().to_string())

            [metrics]
            listen = (format!("127.0.0.1:{port}"))

            [worker]
            stall_after = "1s"

            [delivery]
            timeout = "6s"
        },
    );
    let mut worker = spawn_worker(&config);
    wait_until("/readyz", Duration::from_secs(30), || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    let event = json!({"name": "temp", "data": "1", "coreid": "d", "productID": 5}).to_string();
    produce(&broker, &s.kafka.events_topic, &[("d".into(), event)]).await;
    let stalled = format!("stalled: {}/0 at offset 0", s.kafka.events_topic);
    wait_until(
        "/healthz names the stalled partition",
        Duration::from_secs(30),
        || {
            http_get(port, "/healthz")
                .is_some_and(|(status, body)| status == 503 && body.contains(&stalled))
        },
    )
    .await;
    assert_eq!(
        http_get(port, "/livez").map(|(s, _)| s),
        Some(200),
        "alive all the same"
    );
    wait_until("the gauge", Duration::from_secs(10), || {
        http_get(port, "/metrics")
            .is_some_and(|(_, body)| body.contains("hookd_partitions_stalled 1"))
    })
    .await;
    // The hung request times out, the failure goes to the retry topic, the
    // commit point moves: healthy again.
    wait_until("/healthz healthy again", Duration::from_secs(30), || {
        http_get(port, "/healthz").is_some_and(|(status, _)| status == 200)
    })
    .await;
    worker.kill().unwrap();
    worker.wait().unwrap();
}
