//! The control plane on a broker: the api writes the config log, workers
//! follow it while events flow, traffic history adds up across workers and
//! survives an api restart, every validation rule answers with its message,
//! concurrent edits conflict, no token reaches another scope, and a record
//! injected straight into the topic is refused by every reader.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hookd::control::api::client::ApiClient;
use hyper::Method;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};

fn event(product: u32, data: &str) -> (String, String) {
    let device = format!(
        "{:024x}",
        u64::from(product) * 1000 + (data.len() as u64 % 7)
    );
    let e = json!({"name": "temp/x", "data": data, "published_at": "2024-05-13T10:55:40.306Z",
                   "coreid": device, "userid": "", "productID": product});
    (device, e.to_string())
}

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
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let worker = start_log_worker(&s).await;
    let acme = api.as_token(ACME);
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
    let broker = Broker::start();
    let mut s = with_api(settings(&broker));
    s.secrets.insert("API_KEY".into(), "sekret-value-42".into());
    s.secret_scopes
        .insert("API_KEY".into(), vec!["org:acme".into()]);
    create_topics(&broker, &s, 2).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_answers_with_its_message() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let org = "/v1/orgs/acme/integrations";
    let hook = |products: Value| json!({"event": "t", "url": "https://example.com/in", "products": products});

    let cases = [
        (hook(json!([])), "products", "products: must list at least one product; an organization integration executes only on the products it names"),
        (hook(json!(["*"])), "products[0]", "products[0]: wildcard \"*\" is not allowed; list the product ids explicitly"),
        (hook(json!([1, 77])), "products[1]", "products[1]: product 77 is not a product of org \"acme\""),
        (hook(json!([1, 9])), "products[1]", "products[1]: product 9 is not a product of org \"acme\""),
        (json!({"event": "t", "url": "https://example.com/in"}), "products", "products: is required for an organization integration: list the product ids it executes on"),
        (json!({"event": "t", "url": "https://example.com/in", "products": [1], "json": {}, "form": {}}), "json/form", "json/form: json and form are mutually exclusive; give only one body"),
        (json!({"event": "t", "url": "https://example.com/in", "products": [1], "id": "mine"}), "id", "id is set by hookd and the request's path, not by the body"),
        (json!({"event": "t", "url": "https://example.com/in", "products": [1], "requesttype": "GET"}), "requesttype", ""),
        (json!({"event": "", "url": "https://example.com/in", "products": [1]}), "event", "event: must have at least one character"),
    ];
    for (body, field, message) in cases {
        let (status, got, got_field) = refused(&acme, Method::POST, org, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(got_field.as_deref(), Some(field), "{body}: {got}");
        if message.is_empty() {
            assert!(got.contains("unknown field `requesttype`"), "{got}");
        } else {
            assert_eq!(got, message, "{body}");
        }
    }

    let shared = acme
        .call(Method::POST, org, Some(&hook(json!([1, 2]))))
        .await
        .unwrap();
    let id = shared["id"].as_str().unwrap();
    let sep = |p: u32| format!("/v1/products/{p}/integrations/{id}/separate");
    let same = json!({"event": "t", "url": "https://example.com/in"});
    assert_eq!(
        refused(&acme, Method::POST, &sep(2), same.clone()).await,
        (400, "the separated config equals the shared one in every field; change at least one (the name is enough)".into(), Some("config".into()))
    );
    assert_eq!(
        refused(&acme, Method::POST, &sep(3), json!({"event": "t", "url": "https://example.com/in", "name": "x"})).await,
        (400, format!("product 3 is not one of integration \"{id}\"'s products, so there is nothing to separate"), Some("product".into()))
    );
    acme.call(
        Method::POST,
        &sep(2),
        Some(&json!({"event": "t", "url": "https://example.com/in", "name": "mine"})),
    )
    .await
    .unwrap();
    assert_eq!(
        refused(&acme, Method::POST, &sep(1), json!({"event": "t", "url": "https://example.com/in", "name": "x"})).await,
        (400, format!("product 1 is the last product of integration \"{id}\"; edit or delete the integration instead"), Some("product".into()))
    );
    // A stale edit, and the catalog's rules.
    let (status, message, _) = refused(
        &acme,
        Method::PUT,
        &format!("{org}/{id}"),
        json!({"event": "t", "url": "https://example.com/in", "version": 1}),
    )
    .await;
    assert_eq!(
        (status, message.as_str()),
        (
            409,
            format!("the edit was made from version 1; integration \"{id}\" is at version 2")
                .as_str()
        )
    );
    assert_eq!(
        refused(
            &acme,
            Method::PUT,
            "/v1/orgs/acme/products/5",
            json!({"name": "x"})
        )
        .await,
        (
            403,
            "the product catalog is kept by the operator".into(),
            None
        )
    );
    let (status, message, _) = refused(
        &api.client,
        Method::DELETE,
        "/v1/orgs/acme/products/1",
        json!(null),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(message, format!("product 1 still has integration \"{id}\"; delete it or separate the product from it first"));
    assert_eq!(
        refused(
            &api.client,
            Method::PUT,
            "/v1/orgs/acme/products/9",
            json!({"name": "mine now"})
        )
        .await,
        (409, "product 9 belongs to another org".into(), None)
    );
    // Plans: only basic (formerly growth) and enterprise orgs have org integrations.
    api.client
        .call(
            Method::PUT,
            "/v1/orgs/cheap",
            Some(&json!({"name": "Cheap", "plan": "free"})),
        )
        .await
        .unwrap();
    api.client
        .call(
            Method::PUT,
            "/v1/orgs/cheap/products/5",
            Some(&json!({"name": "P5"})),
        )
        .await
        .unwrap();
    assert_eq!(
        refused(&api.client, Method::POST, "/v1/orgs/cheap/integrations", hook(json!([5]))).await,
        (400, "org: org \"cheap\" is on the free plan; organization integrations come with the basic (formerly growth) and enterprise plans".into(), Some("org".into()))
    );
    assert_eq!(
        refused(
            &acme,
            Method::PUT,
            "/v1/orgs/acme",
            json!({"name": "A", "plan": "enterprise"})
        )
        .await,
        (
            403,
            "orgs and their plans are kept by the operator".into(),
            None
        )
    );
    assert_eq!(
        refused(
            &api.client,
            Method::PUT,
            "/v1/orgs/nobody/products/6",
            json!({"name": "x"})
        )
        .await,
        (
            400,
            "org \"nobody\" has no record; create it first (PUT /v1/orgs/nobody)".into(),
            Some("org".into())
        )
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_concurrent_edits_on_one_version_exactly_one_wins() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    for round in 0..5 {
        let shared = acme
            .call(
                Method::POST,
                "/v1/orgs/acme/integrations",
                Some(&json!({"event": "t", "url": "https://example.com/0", "products": [1, 2]})),
            )
            .await
            .unwrap();
        let path = format!(
            "/v1/orgs/acme/integrations/{}",
            shared["id"].as_str().unwrap()
        );
        let edit = |url: &str| json!({"event": "t", "url": url, "version": 1});
        let (ex, ey) = (edit("https://example.com/x"), edit("https://example.com/y"));
        let (x, y) = tokio::join!(
            acme.call(Method::PUT, &path, Some(&ex)),
            acme.call(Method::PUT, &path, Some(&ey)),
        );
        let statuses: Vec<u16> = [&x, &y]
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.status().unwrap(), |_| 200))
            .collect();
        let mut sorted = statuses.clone();
        sorted.sort();
        assert_eq!(sorted, [200, 409], "round {round}: {x:?} {y:?}");
        let winner = if statuses[0] == 200 {
            "https://example.com/x"
        } else {
            "https://example.com/y"
        };
        let now = acme.call(Method::GET, &path, None).await.unwrap();
        assert_eq!(
            (now["url"].as_str(), now["version"].as_u64()),
            (Some(winner), Some(2))
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_another_scope() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let secret_url = "https://acme.example.com/private-hook";
    let acme = api.as_token(ACME);
    let org_hook = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "t", "url": secret_url, "products": [1]})),
        )
        .await
        .unwrap();
    let product_hook = acme
        .call(
            Method::POST,
            "/v1/products/1/integrations",
            Some(&json!({"event": "t", "url": secret_url})),
        )
        .await
        .unwrap();
    let alice = api.as_token(ALICE);
    let sandbox = alice
        .call(
            Method::POST,
            "/v1/integrations",
            Some(&json!({"event": "t", "url": secret_url})),
        )
        .await
        .unwrap();
    let (o, p, u) = (
        org_hook["id"].as_str().unwrap(),
        product_hook["id"].as_str().unwrap(),
        sandbox["id"].as_str().unwrap(),
    );
    let body = json!({"event": "t", "url": "https://evil.example.com/", "name": "stolen"});
    let mut tried = 0;
    // (token, method, path, expected status)
    let mut cases: Vec<(&str, Method, String, u16)> = Vec::new();
    for (token, org_status) in [(OTHER, 403), (BOB, 403), (ALICE, 403)] {
        cases.push((
            token,
            Method::GET,
            "/v1/orgs/acme/integrations".into(),
            org_status,
        ));
        cases.push((
            token,
            Method::POST,
            "/v1/orgs/acme/integrations".into(),
            org_status,
        ));
        cases.push((
            token,
            Method::GET,
            "/v1/orgs/acme/products".into(),
            org_status,
        ));
        cases.push((token, Method::GET, "/v1/orgs/acme".into(), org_status));
        cases.push((token, Method::PUT, "/v1/orgs/acme".into(), org_status));
        cases.push((
            token,
            Method::GET,
            "/v1/orgs/acme/products/1".into(),
            org_status,
        ));
        for tail in ["", "/history", "/log"] {
            cases.push((
                token,
                Method::GET,
                format!("/v1/orgs/acme/integrations/{o}{tail}"),
                org_status,
            ));
        }
        cases.push((
            token,
            Method::PUT,
            format!("/v1/orgs/acme/integrations/{o}"),
            org_status,
        ));
        cases.push((
            token,
            Method::DELETE,
            format!("/v1/orgs/acme/integrations/{o}"),
            org_status,
        ));
        cases.push((
            token,
            Method::POST,
            format!("/v1/orgs/acme/integrations/{o}/test"),
            org_status,
        ));
    }
    for token in [OTHER, BOB, ALICE] {
        let status = if token == OTHER { 404 } else { 403 };
        cases.push((
            token,
            Method::GET,
            "/v1/products/1/integrations".into(),
            status,
        ));
        cases.push((
            token,
            Method::POST,
            "/v1/products/1/integrations".into(),
            status,
        ));
        for id in [o, p] {
            for tail in ["", "/history", "/log"] {
                cases.push((
                    token,
                    Method::GET,
                    format!("/v1/products/1/integrations/{id}{tail}"),
                    status,
                ));
            }
            cases.push((
                token,
                Method::PUT,
                format!("/v1/products/1/integrations/{id}"),
                status,
            ));
            cases.push((
                token,
                Method::DELETE,
                format!("/v1/products/1/integrations/{id}"),
                status,
            ));
            cases.push((
                token,
                Method::POST,
                format!("/v1/products/1/integrations/{id}/test"),
                status,
            ));
        }
        cases.push((
            token,
            Method::POST,
            format!("/v1/products/1/integrations/{o}/separate"),
            status,
        ));
    }
    // Another org's own paths: acme's records are not found there.
    for id in [o, p, u] {
        cases.push((
            OTHER,
            Method::GET,
            format!("/v1/orgs/other/integrations/{id}"),
            404,
        ));
        cases.push((
            OTHER,
            Method::PUT,
            format!("/v1/orgs/other/integrations/{id}"),
            404,
        ));
        cases.push((
            OTHER,
            Method::DELETE,
            format!("/v1/orgs/other/integrations/{id}"),
            404,
        ));
    }
    cases.push((OTHER, Method::GET, "/v1/orgs/other/products/1".into(), 404));
    // Alice's sandbox: another user finds nothing, an org token is refused.
    for (token, status) in [(BOB, 404), (ACME, 403), (OTHER, 403)] {
        for tail in ["", "/history", "/log"] {
            cases.push((
                token,
                Method::GET,
                format!("/v1/integrations/{u}{tail}"),
                status,
            ));
        }
        cases.push((token, Method::PUT, format!("/v1/integrations/{u}"), status));
        cases.push((
            token,
            Method::DELETE,
            format!("/v1/integrations/{u}"),
            status,
        ));
        cases.push((
            token,
            Method::POST,
            format!("/v1/integrations/{u}/test"),
            status,
        ));
    }
    for (token, method, path, status) in cases {
        let (got, answer) = api
            .as_token(token)
            .raw(method.clone(), &path, Some(&body))
            .await
            .unwrap();
        assert_eq!(got, status, "{token} {method} {path}: {answer}");
        let text = answer.to_string();
        assert!(
            !text.contains(secret_url) && !text.contains("acme.example.com"),
            "{path}: {text}"
        );
        tried += 1;
    }
    assert!(tried > 80);
    // Lists never show another scope's records.
    for (token, path) in [
        (BOB, "/v1/integrations"),
        (OTHER, "/v1/orgs/other/integrations"),
    ] {
        let list = api
            .as_token(token)
            .call(Method::GET, path, None)
            .await
            .unwrap();
        assert_eq!(list["integrations"], json!([]), "{path}");
    }
    // No token, an unknown one.
    let (status, _) = api
        .as_token("")
        .raw(Method::GET, "/v1/integrations", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = api
        .as_token("not-a-token-at-all")
        .raw(Method::GET, "/v1/integrations", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    // Org other cannot put acme's product in its integration.
    let (status, message, field) = refused(
        &api.as_token(OTHER),
        Method::POST,
        "/v1/orgs/other/integrations",
        json!({"event": "t", "url": "https://x.example.com/", "products": [1]}),
    )
    .await;
    assert_eq!(
        (status, message.as_str(), field.as_deref()),
        (
            400,
            "products[0]: product 1 is not a product of org \"other\"",
            Some("products[0]")
        )
    );
    // Nothing changed.
    let still = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{o}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (still["url"].as_str(), still["version"].as_u64()),
        (Some(secret_url), Some(1))
    );
    let still = alice
        .call(Method::GET, &format!("/v1/integrations/{u}"), None)
        .await
        .unwrap();
    assert_eq!(still["version"], 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_injected_invalid_record_is_refused_by_workers_and_api_alike() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
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

/// Runs `hookd integrations …` against `api` with `token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_manages_integrations() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let base = api.client.base().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.json");
    std::fs::write(
        &file,
        json!({"event": "temp", "url": receiver.url("/cli")}).to_string(),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (ok, out, err) = integrations_cli(
        &base,
        ACME,
        &[
            "--org",
            "acme",
            "create",
            "--file",
            file,
            "--products",
            "1,2",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["products"], json!([1, 2]));

    let (ok, out, _) = integrations_cli(&base, ACME, &["--org", "acme", "list"]).await;
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("shared (org)") && line.contains(" 2 ") && line.contains("0/0/0"),
        "{line}"
    );

    let (ok, out, _) = integrations_cli(&base, ACME, &["--org", "acme", "get", &id]).await;
    assert!(
        ok && out.contains("** Shared organization integration: executes on 2 product(s) **"),
        "{out}"
    );

    let url2 = receiver.url("/cli2");
    let set = format!("url={url2}");
    let (ok, out, err) = integrations_cli(
        &base,
        ACME,
        &["--org", "acme", "edit", &id, "--set", &set, "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let edited: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (edited["version"].as_u64(), edited["url"].as_str()),
        (Some(2), Some(url2.as_str()))
    );

    let (ok, out, err) = integrations_cli(
        &base,
        ACME,
        &[
            "--product",
            "2",
            "separate",
            &id,
            "--set",
            "name=B's own",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let own: Value = serde_json::from_str(&out).unwrap();
    let own_id = own["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (own["name"].as_str(), own["product_id"].as_u64()),
        (Some("B's own"), Some(2))
    );

    let (ok, out, err) =
        integrations_cli(&base, ACME, &["--product", "2", "test", &own_id, "--json"]).await;
    assert!(ok, "{err}");
    let tested: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tested["outcome"], "success", "{tested}");
    assert_eq!(tested["response"]["status"], 200);
    assert_eq!(receiver.seen().last().unwrap().target, "/cli2");

    let (ok, out, _) = integrations_cli(
        &base,
        ACME,
        &["--org", "acme", "history", &id, "--days", "7", "--json"],
    )
    .await;
    assert!(ok);
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history["aggregate"].as_array().unwrap().len(), 7);
    assert_eq!(history["per_product"][0]["product"], 1);
    let (ok, out, _) =
        integrations_cli(&base, ACME, &["--org", "acme", "log", &id, "--json"]).await;
    assert!(ok);
    let log: Value = serde_json::from_str(&out).unwrap();
    assert!(
        log["successes"].is_array() && log["errors"].is_array(),
        "{log}"
    );

    // Failures: non-zero, with the api's message.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        json!({"event": "temp", "url": receiver.url("/x"), "products": []}).to_string(),
    )
    .unwrap();
    let (ok, _, err) = integrations_cli(
        &base,
        ACME,
        &["--org", "acme", "create", "--file", bad.to_str().unwrap()],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("400: products: must list at least one product"),
        "{err}"
    );
    let (ok, _, err) =
        integrations_cli(&base, "wrong-token-0123456789", &["--org", "acme", "list"]).await;
    assert!(!ok && err.contains("401: unknown token"), "{err}");
    let (ok, _, err) = integrations_cli(&base, OTHER, &["--org", "acme", "get", &id]).await;
    assert!(
        !ok && err.contains("403: this token may not use org \"acme\""),
        "{err}"
    );

    let (ok, out, _) = integrations_cli(&base, ACME, &["--org", "acme", "delete", &id]).await;
    assert!(ok && out.contains(&format!("deleted {id}")), "{out}");
    let (ok, _, err) = integrations_cli(&base, ACME, &["--org", "acme", "get", &id]).await;
    assert!(
        !ok && err.contains(&format!("404: integration \"{id}\" not found")),
        "{err}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_never_gets_another_tenants_secret() {
    let broker = Broker::start();
    let mut s = with_api(settings(&broker));
    s.secrets
        .insert("ACME_KEY".into(), "acme-only-secret-77".into());
    s.secret_scopes
        .insert("ACME_KEY".into(), vec!["org:acme".into()]);
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let hook = |path: &str, products: Value| {
        json!({"event": "temp", "url": receiver.url(&format!("{path}?k={{{{{{ACME_KEY}}}}}}")),
               "headers": {"X-Key": "{{{ACME_KEY}}}"}, "products": products})
    };
    // Through the api: refused, naming the secret.
    let (status, message, field) = refused(
        &api.as_token(OTHER),
        Method::POST,
        "/v1/orgs/other/integrations",
        hook("/leak", json!([9])),
    )
    .await;
    assert_eq!(
        (status, message.as_str(), field.as_deref()),
        (
            400,
            "secret ACME_KEY is not granted to org:other ([secret_scopes] in the api's config)",
            Some("secrets")
        )
    );
    api.as_token(ACME)
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&hook("/acme", json!([1]))),
        )
        .await
        .unwrap();
    // Past the api, straight into the log: the worker renders it without
    // the secret.
    let mut record = hook("/leak", json!([9]));
    record["id"] = "leak".into();
    record["version"] = 1.into();
    record["org"] = "other".into();
    produce(
        &broker,
        &s.kafka.config_topic,
        &[("integration/leak".into(), record.to_string())],
    )
    .await;
    let worker = start_log_worker(&s).await;
    produce(
        &broker,
        &s.kafka.events_topic,
        &[event(9, "to-other"), event(1, "to-acme")],
    )
    .await;
    wait_until("both deliveries", Duration::from_secs(30), || {
        receiver.count() == 2
    })
    .await;
    let seen = receiver.seen();
    let leak = seen.iter().find(|x| x.target.starts_with("/leak")).unwrap();
    assert_eq!(leak.target, "/leak?k=");
    assert_eq!(leak.headers.get("x-key").map(String::as_str), Some(""));
    let acme = seen.iter().find(|x| x.target.starts_with("/acme")).unwrap();
    assert_eq!(
        acme.target, "/acme?k=acme-only-secret-77",
        "the granted tenant gets it"
    );
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
    let broker = Broker::start();
    let mut s = with_api(settings(&broker));
    s.retry.delays = vec![Duration::from_secs(4), Duration::from_secs(8)];
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let worker = start_log_worker(&s).await;
    let acme = api.as_token(ACME);
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
