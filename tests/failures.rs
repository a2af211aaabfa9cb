//! A receiver that answers 500, closes connections, or never answers: every
//! attempt is counted as an error, the worker keeps flowing, and events
//! after the receiver recovers are delivered.

mod common;

use std::time::Duration;

use common::{
    create_topics, produce, settings, start_worker, temp_events, wait_until, Broker, Mode, Receiver,
};
use serde_json::json;

fn batch(from: usize, n: usize) -> Vec<(String, String)> {
    temp_events(from, n, 7, Some("f"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_counted_and_the_worker_keeps_flowing() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    s.delivery.timeout = Duration::from_millis(500);
    // Counted attempt by attempt here: no retries, and a host that never
    // falls asleep (both have tests of their own).
    s.retry.delays.clear();
    s.sleeping.trip_errors = 1e9;
    create_topics(&broker, &s, 2).await;
    let worker = start_worker(
        &s,
        vec![json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")})],
    );
    let tally = worker.tally.clone();
    let counts = || tally.get("h", Some(5));

    // Each phase: the receiver misbehaves one way; 30 events all end as errors.
    let phases = [
        Mode::Status(500),
        Mode::Close,
        Mode::Hang,
        Mode::Status(404),
    ];
    for (i, mode) in phases.into_iter().enumerate() {
        receiver.set_mode(mode);
        produce(&broker, &s.kafka.events_topic, &batch(i * 30, 30)).await;
        let want = (i as u64 + 1) * 30;
        wait_until(
            &format!("errors under {mode:?}"),
            Duration::from_secs(60),
            || counts().error >= want,
        )
        .await;
        assert_eq!(counts().error, want, "{mode:?}");
        assert_eq!(counts().success, 0);
    }
    assert!(
        receiver.arrived() >= 60,
        "the 500 and 404 phases reached the receiver"
    );

    // Recovered: the next events are delivered.
    receiver.set_mode(Mode::Status(200));
    produce(&broker, &s.kafka.events_topic, &batch(1000, 30)).await;
    wait_until("successes after recovery", Duration::from_secs(60), || {
        counts().success >= 30
    })
    .await;
    assert_eq!(
        counts(),
        hookd::model::outcome::Counts {
            success: 30,
            error: 120,
            skipped: 0
        }
    );

    worker.stop().await;
}
