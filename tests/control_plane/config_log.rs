//! Workers following the config log the api writes: they follow a create,
//! an edit, a separation and a delete while events flow, each change
//! splitting a product's events once; a record injected straight into the
//! topic is refused by every reader; and a retry pending when its product is
//! separated is dropped and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use hyper::Method;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

/// Publishes events of `products` in order, one after another, until
/// stopped; returns each product's data in publish order.
struct Live {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<u32, Vec<String>>>,
}

fn live(broker: &Broker, topic: &str, tag: &'static str, products: &'static [u32]) -> Live {
    let producer = broker.producer();
    let topic = topic.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut sent: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut n = 0;
        while !flag.load(Ordering::SeqCst) {
            for p in products {
                let data = format!("{tag}-{p}-{n}");
                let (key, payload) = event(*p, &data);
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produced");
                sent.entry(*p).or_default().push(data);
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sent
    });
    Live { stop, task }
}

impl Live {
    async fn stop(self) -> BTreeMap<u32, Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// Every event of `sent` reached exactly one place: `before` for a prefix of
/// them and `after` for the rest (`None`: nowhere). One partition resolves
/// events in order, so a change splits them once and never interleaves.
fn split(
    sent: &[String],
    seen: &BTreeMap<String, Vec<String>>,
    before: Option<&str>,
    after: Option<&str>,
) {
    let places: Vec<Option<&str>> = sent
        .iter()
        .map(|d| match seen.get(d).map(Vec::as_slice) {
            None | Some([]) => None,
            Some([one]) => Some(one.as_str()),
            Some(many) => panic!("{d} was delivered {} times: {many:?}", many.len()),
        })
        .collect();
    let cut = places
        .iter()
        .position(|p| *p != before)
        .unwrap_or(places.len());
    assert!(
        places[cut..].iter().all(|p| *p == after),
        "events were not split once from {before:?} to {after:?}: {places:?}"
    );
    assert!(!sent.is_empty());
}

async fn probe(broker: &Broker, topic: &str, receiver: &Receiver, product: u32, path: &str) {
    for n in 0.. {
        let data = format!("probe-{product}-{path}-{n}");
        produce(broker, topic, &[event(product, &data)]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if routes(receiver)
            .get(&data)
            .is_some_and(|p| p.iter().any(|x| x == path))
        {
            return;
        }
        assert!(n < 100, "the change never reached the worker");
    }
}

/// Waits until the receiver has had nothing new for 500 ms: deliveries run
/// concurrently, so a probe can arrive before events resolved ahead of it.
async fn settle(receiver: &Receiver) {
    loop {
        let before = receiver.count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if receiver.count() == before {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_follow_create_edit_separate_delete_while_events_flow() {
    let ControlPlane {
        broker,
        s,
        receiver,
        api,
        acme,
    } = ControlPlane::start().await;
    let worker = start_log_worker(&s).await;
    let topic = &s.kafka.events_topic;

    // Create: A and B fire, C does not.
    let shared = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "temp", "url": receiver.url("/v1"), "products": [1, 2]})),
        )
        .await
        .unwrap();
    let id = shared["id"].as_str().unwrap().to_owned();
    assert_eq!(shared["shared"], true);
    assert_eq!(shared["executes_on"], 2);
    probe(&broker, topic, &receiver, 1, "/v1").await;
    settle(&receiver).await;
    let first: Vec<_> = (0..20)
        .flat_map(|n| [1, 2, 3].map(|p| event(p, &format!("first-{p}-{n}"))))
        .collect();
    produce(&broker, topic, &first).await;
    probe(&broker, topic, &receiver, 2, "/v1").await;
    settle(&receiver).await;
    let seen = routes(&receiver);
    for n in 0..20 {
        assert_eq!(seen[&format!("first-1-{n}")], ["/v1"]);
        assert_eq!(seen[&format!("first-2-{n}")], ["/v1"]);
        assert!(
            !seen.contains_key(&format!("first-3-{n}")),
            "C's events never fire"
        );
    }

    // Edit the URL while events flow: both products move at one point.
    let flowing = live(&broker, topic, "edit", &[1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let edited = acme
        .call(
            Method::PUT,
            &format!("/v1/orgs/acme/integrations/{id}"),
            Some(&json!({"event": "temp", "url": receiver.url("/v2"), "products": [1, 2], "version": 1})),
        )
        .await
        .unwrap();
    assert_eq!(edited["version"], 2);
    probe(&broker, topic, &receiver, 2, "/v2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = flowing.stop().await;
    probe(&broker, topic, &receiver, 1, "/v2").await;
    settle(&receiver).await;
    let seen = routes(&receiver);
    split(&sent[&1], &seen, Some("/v1"), Some("/v2"));
    split(&sent[&2], &seen, Some("/v1"), Some("/v2"));
    split(&sent[&3], &seen, None, None);

    // Separate B: B's events move to B's own integration, A's stay shared.
    let flowing = live(&broker, topic, "separate", &[1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let own = acme
        .call(
            Method::POST,
            &format!("/v1/products/2/integrations/{id}/separate"),
            Some(&json!({"event": "temp", "url": receiver.url("/b-own"), "name": "B's own"})),
        )
        .await
        .unwrap();
    assert_eq!(own["scope"], "product");
    assert_eq!(own["product_id"], 2);
    probe(&broker, topic, &receiver, 2, "/b-own").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = flowing.stop().await;
    probe(&broker, topic, &receiver, 1, "/v2").await;
    settle(&receiver).await;
    let seen = routes(&receiver);
    split(&sent[&1], &seen, Some("/v2"), Some("/v2"));
    split(&sent[&2], &seen, Some("/v2"), Some("/b-own"));
    let shared_now = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(shared_now["products"], json!([1]));
    let b_list = acme
        .call(Method::GET, "/v1/products/2/integrations", None)
        .await
        .unwrap();
    let b_ids: Vec<&str> = b_list["integrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        b_ids,
        [own["id"].as_str().unwrap()],
        "B no longer lists the shared one"
    );

    // Delete both: nothing fires any more.
    let flowing = live(&broker, topic, "delete", &[1, 2]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    acme.call(
        Method::DELETE,
        &format!("/v1/orgs/acme/integrations/{id}"),
        None,
    )
    .await
    .unwrap();
    let own_id = own["id"].as_str().unwrap();
    acme.call(
        Method::DELETE,
        &format!("/v1/products/2/integrations/{own_id}"),
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = flowing.stop().await;
    // A sentinel behind every published event: once it arrives, they were
    // all resolved (one partition, in order).
    acme.call(
        Method::POST,
        "/v1/products/3/integrations",
        Some(&json!({"event": "temp", "url": receiver.url("/sentinel")})),
    )
    .await
    .unwrap();
    probe(&broker, topic, &receiver, 3, "/sentinel").await;
    settle(&receiver).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = routes(&receiver);
    split(&sent[&1], &seen, Some("/v2"), None);
    split(&sent[&2], &seen, Some("/b-own"), None);
    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_injected_invalid_record_is_refused_by_workers_and_api_alike() {
    let ControlPlane {
        broker,
        s,
        receiver,
        api,
        acme,
    } = ControlPlane::start().await;
    let shared = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "temp", "url": receiver.url("/ok"), "products": [1]})),
        )
        .await
        .unwrap();
    let id = shared["id"].as_str().unwrap().to_owned();
    let worker = start_log_worker(&s).await;
    probe(&broker, &s.kafka.events_topic, &receiver, 1, "/ok").await;

    // Straight into the topic, past the api: an invalid method, version 2.
    let key = format!("integration/{id}");
    let bad = json!({"id": id, "version": 2, "org": "acme", "products": [1], "event": "temp",
                     "url": receiver.url("/bad"), "requestType": "PATCH"});
    produce(
        &broker,
        &s.kafka.config_topic,
        &[(key.clone(), bad.to_string())],
    )
    .await;

    // A fresh reader (a worker starting now) replays and refuses it too.
    let index =
        hookd::pipeline::resolve::IndexHandle::new(hookd::pipeline::resolve::Index::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let fresh = hookd::control::config_log::follower::ConfigLog::start(
        &s.kafka,
        Some(index.clone()),
        s.templates,
        stop.clone(),
    )
    .await
    .unwrap();
    fresh.caught_up().await;
    wait_until(
        "the fresh reader passed the bad record",
        Duration::from_secs(10),
        || fresh.state().integration(&id).is_some(),
    )
    .await;
    assert_eq!(fresh.state().integration(&id).unwrap().version, 1);
    assert_eq!(index.load().get(&id).unwrap().version, 1);
    let view = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(view["version"], 1);
    // The running worker still delivers with the previous version.
    produce(&broker, &s.kafka.events_topic, &[event(1, "after-bad")]).await;
    wait_until(
        "the event after the bad record",
        Duration::from_secs(20),
        || routes(&receiver).contains_key("after-bad"),
    )
    .await;
    assert_eq!(routes(&receiver)["after-bad"], ["/ok"]);
    assert!(receiver.seen().iter().all(|x| x.method == "POST"));
    // The api restated the previous version, so compaction keeps it.
    let records = broker
        .read_all(&s.kafka.config_topic, 100, Duration::from_secs(3))
        .await;
    let last = records
        .iter()
        .rev()
        .find(|(k, _)| k.as_deref() == Some(key.as_bytes()))
        .unwrap();
    let last: Value = serde_json::from_slice(&last.1).unwrap();
    assert_eq!(
        (last["version"].as_u64(), last["url"].as_str()),
        (Some(1), Some(receiver.url("/ok").as_str()))
    );
    stop.cancel();
    worker.stop().await;
    api.stop().await;
}

/// A retry goes only where its integration still executes: product 2 is
/// separated from an org integration while product 2's failed delivery
/// waits for its retry; the retry never reaches the org integration's URL
/// (nor its secrets), and its drop is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_pending_when_its_product_is_separated_is_dropped_and_counted() {
    let metrics = hookd::runtime::telemetry::metrics_handle();
    let ControlPlane {
        broker,
        s,
        receiver,
        api,
        acme,
    } = ControlPlane::start_with(1, |s| {
        s.retry.delays = vec![Duration::from_secs(4), Duration::from_secs(8)];
    })
    .await;
    let worker = start_log_worker(&s).await;
    let shared = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "temp", "url": receiver.url("/org"), "products": [1, 2]})),
        )
        .await
        .unwrap();
    let id = shared["id"].as_str().unwrap().to_owned();
    // Config reaches the worker through the log: wait until it fires.
    let topic = &s.kafka.events_topic;
    probe(&broker, topic, &receiver, 1, "/org").await;
    settle(&receiver).await;
    // Only product 2's event fails, so no retry of another holds it up.
    receiver.set_mode(Mode::Status(503));
    produce(&broker, topic, &[event(2, "pending")]).await;
    wait_until("product 2's first attempt", Duration::from_secs(30), || {
        routes(&receiver).contains_key("pending")
    })
    .await;
    acme.call(
        Method::POST,
        &format!("/v1/products/2/integrations/{id}/separate"),
        Some(&json!({"event": "temp", "url": receiver.url("/own"), "name": "2's own"})),
    )
    .await
    .unwrap();
    receiver.set_mode(Mode::Status(200));
    let dropped = "hookd_retries_dropped_total{reason=\"separated\"}";
    wait_until(
        "the retry dropped and counted",
        Duration::from_secs(30),
        || metrics.render().contains(dropped),
    )
    .await;
    assert_eq!(
        routes(&receiver)["pending"],
        ["/org"],
        "only the first attempt reached the org integration"
    );
    worker.stop().await;
    api.stop().await;
}
