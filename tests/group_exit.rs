//! Workers of one group stopped while the group rebalances (one leaves as
//! another joins, the next stops before the rebalance is over) exit cleanly,
//! round after round, and the events they leave behind are delivered by the
//! group's next members: a stop at any moment of the group's life loses
//! nothing and takes no process down with it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    create_topics, produce, settings, start_worker, temp_events, wait_until, Broker, Receiver,
};
use serde_json::json;

fn batch(from: usize, n: usize) -> Vec<(String, String)> {
    temp_events(from, n, 11, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stopped_mid_rebalance_exit_cleanly_and_lose_nothing() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    s.worker.shutdown_grace = Duration::from_secs(2);
    // A member stopped while it joins is waited for until its session ends:
    // a short session keeps the rounds short (below a real Kafka's
    // group.min.session.timeout.ms, 6 s: this test is for the mock cluster).
    s.kafka
        .consumer
        .insert("session.timeout.ms".into(), "3000".into());
    s.kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "300".into());
    create_topics(&broker, &s, 4).await;
    let hook =
        vec![json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")})];

    const ROUNDS: usize = 7;
    const PER_ROUND: usize = 20;
    let delivered = || -> BTreeSet<String> {
        receiver
            .seen()
            .iter()
            .filter_map(|x| {
                form_urlencoded::parse(x.body.as_bytes())
                    .find(|(k, _)| k == "data")
                    .map(|(_, v)| v.into_owned())
            })
            .collect()
    };
    let produced = |rounds: usize| -> BTreeSet<String> {
        (0..rounds * PER_ROUND).map(|i| i.to_string()).collect()
    };
    // One member stays from round to round and owns the partitions when the
    // round starts; two join, the old one leaves, and one of the new ones
    // stops a moment later, while the group is still handing it partitions.
    let mut old = start_worker(&s, hook.clone());
    for round in 0..ROUNDS {
        produce(
            &broker,
            &s.kafka.events_topic,
            &batch(round * PER_ROUND, PER_ROUND),
        )
        .await;
        wait_until("the old member delivers", Duration::from_secs(60), || {
            delivered().is_superset(&produced(round + 1))
        })
        .await;
        let short = start_worker(&s, hook.clone());
        let next = start_worker(&s, hook.clone());
        tokio::time::sleep(Duration::from_millis(500 * (round as u64 % 7))).await;
        old.stop().await;
        tokio::time::sleep(Duration::from_millis(200 * (round as u64 % 5))).await;
        short.stop().await;
        old = next;
    }
    old.stop().await;

    // What the stopped members left is delivered by the next one.
    let last = start_worker(&s, hook);
    let want = produced(ROUNDS);
    wait_until("every event delivered", Duration::from_secs(60), || {
        delivered() == want
    })
    .await;
    last.stop().await;
}

/// A static member fenced by another with the same `group.instance.id`
/// (here the broker says so on a heartbeat) cannot consume again: the worker
/// stops by itself with an error naming the cause, instead of retrying a
/// dead consumer for ever while it reports itself ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_static_member_stops_with_an_error() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = Broker::start();
    let Some(mock) = broker.mock() else {
        return; // the fence is made by the mock cluster
    };
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    s.kafka.instance_id = "worker-a".into();
    s.worker.shutdown_grace = Duration::from_secs(2);
    s.kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "300".into());
    create_topics(&broker, &s, 2).await;
    let worker = start_worker(
        &s,
        vec![json!({"id": "h", "event": "temp", "url": receiver.url("/h"), "product_id": 5})],
    );
    produce(&broker, &s.kafka.events_topic, &batch(0, 10)).await;
    wait_until(
        "the first events delivered",
        Duration::from_secs(60),
        || receiver.count() >= 10,
    )
    .await;
    mock.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    // It stops by itself: nothing here asks it to.
    wait_until(
        "the fenced worker stopping",
        Duration::from_secs(30),
        || worker.stopping(),
    )
    .await;
    let error = worker
        .ended(Duration::from_secs(30))
        .await
        .expect_err("a fenced worker ends with an error")
        .to_string();
    assert!(error.contains("kafka.instance_id"), "{error}");
}
