//! Malformed events go to the dead-letter topic with their reason, and later
//! events on the same partition are still delivered.

mod common;

use std::time::Duration;

use common::{create_topics, produce, settings, start_worker, wait_until, Broker, Receiver};
use hookd::dead_letter::DeadLetter;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dead_lettered_and_the_partition_flows_on() {
    let metrics = hookd::telemetry::metrics_handle();
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
        reasons.push(letter.reason.clone());
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
