//! Traffic history on a broker: what two workers count adds up per product
//! in the api's views, the delivery log masks secrets, and both survive an
//! api restart.

use std::time::Duration;

use crate::common::*;
use hookd::control::api::client::ApiClient;
use hyper::Method;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

fn product_day(view: &Value, product: u32) -> u64 {
    let p = view["history"]["per_product"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["product"] == product)
        .unwrap_or_else(|| panic!("product {product} in {view}"));
    p["days"].as_array().unwrap().last().unwrap()["success"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_of_two_workers_adds_up_per_product_and_survives_an_api_restart() {
    let ControlPlane {
        broker,
        s,
        receiver,
        api,
        acme,
    } = ControlPlane::start_with(2, |s| {
        s.secrets.insert("API_KEY".into(), "sekret-value-42".into());
        s.secret_scopes
            .insert("API_KEY".into(), vec!["org:acme".into()]);
    })
    .await;
    let shared = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(
                &json!({"event": "temp", "url": receiver.url("/in?k={{{API_KEY}}}"),
                         "headers": {"X-Key": "{{{API_KEY}}}"}, "products": [1, 2]}),
            ),
        )
        .await
        .unwrap();
    let id = shared["id"].as_str().unwrap().to_owned();
    let one = start_log_worker(&s).await;
    let two = start_log_worker(&s).await;

    // Events until both workers have delivered some (the group has split
    // the partitions), from devices spread over both partitions.
    let producer = broker.producer();
    let mut published = 0u64;
    let mut n = 0u32;
    // Generous: librdkafka's mock cluster has once taken over a minute to
    // give the second member its partition.
    let end = tokio::time::Instant::now() + Duration::from_secs(120);
    while one.tally.get(&id, Some(1)).total() + one.tally.get(&id, Some(2)).total() == 0
        || two.tally.get(&id, Some(1)).total() + two.tally.get(&id, Some(2)).total() == 0
    {
        assert!(
            tokio::time::Instant::now() < end,
            "both workers never got work: {:?} {:?}, receiver {}",
            one.tally.snapshot(),
            two.tally.snapshot(),
            receiver.count()
        );
        for p in [1u32, 2, 2] {
            // The device id ends in the product: the receiver can tell.
            // (Spread bits: keys differing in one hex digit can all hash
            // to the same partition under librdkafka's CRC32 partitioner.)
            let spread = u64::from(n % 8 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let device = format!("{spread:016x}{p:08x}");
            let e = json!({"name": "temp", "data": format!("{n}"), "published_at": "2024-05-13T10:55:40.306Z",
                           "coreid": device, "productID": p});
            producer
                .send(
                    FutureRecord::to(&s.kafka.events_topic)
                        .key(&device)
                        .payload(&e.to_string()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            published += 1;
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // At least once: an event in flight when the group rebalanced between
    // the two workers may be delivered twice; none may be missing.
    let distinct = || {
        receiver
            .seen()
            .iter()
            .filter_map(|x| {
                form_urlencoded::parse(x.body.as_bytes())
                    .find(|(k, _)| k == "data")
                    .map(|(_, v)| v.into_owned())
            })
            .collect::<std::collections::HashSet<_>>()
            .len() as u64
    };
    wait_until("every event delivered", Duration::from_secs(30), || {
        distinct() == published
    })
    .await;
    // Then until no redelivery is on its way (they follow the rebalance).
    let mut seen = receiver.count();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if receiver.count() == seen {
            break;
        }
        seen = receiver.count();
    }
    let received = |p: u32| {
        let suffix = format!("{p:04x}");
        receiver
            .seen()
            .iter()
            .filter(|x| {
                form_urlencoded::parse(x.body.as_bytes())
                    .any(|(k, v)| k == "coreid" && v.ends_with(&suffix))
            })
            .count() as u64
    };
    let (a, b) = (received(1), received(2));
    assert_eq!(a + b, receiver.count() as u64);
    let tally = |p: u32| one.tally.get(&id, Some(p)).success + two.tally.get(&id, Some(p)).success;
    // A worker counts a delivery when the response is back, a moment after
    // the receiver has seen the request.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while (tally(1), tally(2)) != (a, b) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        (tally(1), tally(2)),
        (a, b),
        "the workers counted what the receiver saw"
    );
    one.stop().await;
    two.stop().await;

    let check = |api: ApiClient| {
        let id = id.clone();
        async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let list = api
                    .call(Method::GET, "/v1/orgs/acme/integrations", None)
                    .await
                    .unwrap();
                let view = api
                    .call(
                        Method::GET,
                        &format!("/v1/orgs/acme/integrations/{id}"),
                        None,
                    )
                    .await
                    .unwrap();
                let today = &list["integrations"][0]["traffic"]["today"];
                if today["success"] == a + b
                    && product_day(&view, 1) == a
                    && product_day(&view, 2) == b
                {
                    assert_eq!(
                        list["integrations"][0]["traffic"]["last_30_days"]["success"],
                        a + b
                    );
                    assert_eq!(view["history"]["aggregate"].as_array().unwrap().len(), 30);
                    assert_eq!(view["history"]["per_product"][0]["name"], "Product 1");
                    assert_eq!(
                        view["history"]["per_product"][0]["link"],
                        "/v1/orgs/acme/products/1"
                    );
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < end,
                    "history never added up: {list} {view}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    check(api.as_token(ACME)).await;
    // Per product, as the product sees the shared integration.
    let on_b = acme
        .call(Method::GET, "/v1/products/2/integrations", None)
        .await
        .unwrap();
    assert_eq!(on_b["integrations"][0]["org_integration"], id.as_str());
    assert_eq!(on_b["integrations"][0]["traffic"]["today"]["success"], b);
    // The delivery log: the newest 10, secrets masked.
    let log = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}/log"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(log["successes"].as_array().unwrap().len(), 10);
    let text = log.to_string();
    assert!(
        !text.contains("sekret-value-42"),
        "a secret reached the log: {text}"
    );
    assert!(text.contains("[[SENSITIVE]]"));
    assert!(
        receiver.seen()[0].target.contains("sekret-value-42"),
        "the real request carried it"
    );

    api.stop().await;
    let again = start_api(&s).await;
    check(again.as_token(ACME)).await;
    again.stop().await;
}
