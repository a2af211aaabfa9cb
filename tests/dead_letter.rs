//! Malformed events go to the dead-letter topic with their reason, and later
//! events on the same partition are still delivered; records too large for
//! the worker or for the broker never stall a partition.

mod common;

use std::time::Duration;

use common::{create_topics, produce, settings, start_worker, wait_until, Broker, Receiver};
use hookd::policy::dead_letter::DeadLetter;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dead_lettered_and_the_partition_flows_on() {
    let metrics = hookd::runtime::telemetry::metrics_handle();
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let s = settings(&broker);
    // One partition: every record below is behind the bad ones.
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")})],
    );
    let tally = worker.tally.clone();

    let good = |i: usize| {
        json!({"name": "temp", "data": i.to_string(), "coreid": "dev", "productID": 5, "id": format!("g-{i}")}).to_string()
    };
    let bad = [
        ("not_json", "{\"name\": \"temp\", ".to_owned()),
        (
            "missing_name",
            json!({"data": "1", "coreid": "dev", "productID": 5}).to_string(),
        ),
        (
            "name_too_long",
            json!({"name": "t".repeat(65), "coreid": "dev", "productID": 5}).to_string(),
        ),
        (
            "data_too_large",
            json!({"name": "temp", "data": "x".repeat(16385), "coreid": "dev", "productID": 5})
                .to_string(),
        ),
        (
            "bad_field",
            json!({"name": "temp", "coreid": "dev", "productID": "five"}).to_string(),
        ),
    ];
    let mut records = Vec::new();
    for (i, (_, payload)) in bad.iter().enumerate() {
        records.push(("dev".to_owned(), good(i)));
        records.push(("dev".to_owned(), payload.clone()));
    }
    records.push(("dev".to_owned(), good(99)));
    produce(&broker, &s.kafka.events_topic, &records).await;

    wait_until("the good events", Duration::from_secs(60), || {
        tally.get("h", Some(5)).success >= 6
    })
    .await;
    let letters = broker
        .read_all(
            &s.kafka.dead_letter_topic,
            bad.len(),
            Duration::from_secs(30),
        )
        .await;
    worker.stop().await;

    assert_eq!(tally.get("h", Some(5)).success, 6);
    let mut bodies: Vec<String> = receiver.seen().into_iter().map(|s| s.body).collect();
    bodies.sort();
    assert!(
        bodies.iter().any(|b| b.contains("data=99")),
        "the event after all the bad ones arrived"
    );
    assert_eq!(letters.len(), bad.len());
    // Dead letters are written concurrently, so in no particular order.
    let mut reasons: Vec<String> = Vec::new();
    for (key, value) in &letters {
        let letter: DeadLetter = serde_json::from_slice(value).unwrap();
        let (_, payload) = bad
            .iter()
            .find(|(r, _)| *r == letter.reason)
            .unwrap_or_else(|| panic!("unexpected {letter:?}"));
        reasons.push(letter.reason.to_string());
        assert!(!letter.error.is_empty());
        assert_eq!(
            letter.payload.as_deref(),
            Some(payload.as_str()),
            "the original record is kept"
        );
        assert_eq!(letter.topic, s.kafka.events_topic);
        assert_eq!(key.as_deref(), Some(&b"dev"[..]), "keyed like the original");
    }
    reasons.sort();
    let mut want: Vec<&str> = bad.iter().map(|(r, _)| *r).collect();
    want.sort();
    assert_eq!(reasons, want, "each bad record dead-lettered once");
    let text = metrics.render();
    assert!(
        text.contains("hookd_events_invalid_total{reason=\"not_json\"} 1"),
        "{text}"
    );
}

/// Records that cannot be written as they are never hold a partition: an
/// event record over `worker.max_event_bytes` is dead-lettered whole at
/// decode (`record_too_large`); a failed delivery whose retry record is over
/// the broker's size limit (here the producer's `message.max.bytes`) is
/// dead-lettered instead (`produce_failed`), that dead letter too is over the
/// limit and is written shrunk, and the events behind both are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_too_large_are_dead_lettered_bounded_and_the_partition_flows_on() {
    let broker = Broker::start();
    let healthy = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.set_mode(common::Mode::Status(503));
    let mut s = settings(&broker);
    s.worker.max_event_bytes = std::num::NonZero::new(40_000).unwrap();
    s.kafka
        .producer
        .insert("message.max.bytes".into(), "60000".into());
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "h", "product_id": 5, "event": "temp", "url": healthy.url("/in")}),
            json!({"id": "fails", "product_id": 6, "event": "temp", "url": failing.url("/in")}),
        ],
    );
    let tally = worker.tally.clone();
    let good = |i: usize| {
        json!({"name": "temp", "data": i.to_string(), "coreid": "dev", "productID": 5, "id": format!("g-{i}")}).to_string()
    };
    // Over the worker's 40 000 bytes: refused at decode.
    let oversized = json!({"name": "temp", "data": "1", "coreid": "dev", "productID": 5, "pad": "x".repeat(45_000)})
        .to_string();
    // 32 000 bytes as a record (its quotes escaped once), twice that inside
    // a retry record or a dead letter: over the producer's 60 000.
    let quotes =
        json!({"name": "temp", "data": "\"".repeat(16_000), "coreid": "dev", "productID": 6})
            .to_string();
    assert!(quotes.len() < 40_000);
    let records = vec![
        ("dev".to_owned(), good(0)),
        ("dev".to_owned(), oversized.clone()),
        ("dev".to_owned(), good(1)),
        ("dev".to_owned(), quotes.clone()),
        ("dev".to_owned(), good(2)),
    ];
    produce(&broker, &s.kafka.events_topic, &records).await;

    wait_until("the good events", Duration::from_secs(60), || {
        tally.get("h", Some(5)).success >= 3
    })
    .await;
    let letters = broker
        .read_all(&s.kafka.dead_letter_topic, 2, Duration::from_secs(30))
        .await;
    worker.stop().await;
    assert_eq!(letters.len(), 2, "one dead letter each");
    let letters: Vec<DeadLetter> = letters
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect();
    let too_large = letters
        .iter()
        .find(|l| l.reason == "record_too_large")
        .unwrap_or_else(|| panic!("{letters:?}"));
    assert_eq!(too_large.payload.as_deref(), Some(oversized.as_str()));
    assert!(
        too_large.error.contains("worker.max_event_bytes"),
        "{}",
        too_large.error
    );
    let unproducible = letters
        .iter()
        .find(|l| l.reason == "produce_failed")
        .unwrap_or_else(|| panic!("{letters:?}"));
    assert_eq!(unproducible.integration.as_deref(), Some("fails"));
    assert_eq!(unproducible.payload_truncated_from, Some(quotes.len()));
    let kept = unproducible.payload.as_deref().unwrap_or_default();
    assert!(
        kept.len() <= 16 * 1024 && quotes.starts_with(kept),
        "the start of the event, cut: {} bytes",
        kept.len()
    );
    assert!(unproducible.history.is_empty(), "dropped to fit");
    assert_eq!(failing.count(), 1, "the one attempt made");
}
