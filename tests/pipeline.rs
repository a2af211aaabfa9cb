//! End to end on a broker: 10,000 events over 3 products into 4 integrations
//! (an org integration shared by two products, a product integration, a
//! sandbox integration, one that must not fire); every expected request
//! arrives at a real receiver exactly as rendered, and the per-product counts
//! equal what the receiver saw.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create_topics, produce, settings, wait_until, Broker, Receiver};
use hookd::model::integration::Integration;
use hookd::model::request::{idempotency_key, USER_AGENT};
use hookd::pipeline::consume::Worker;
use hookd::pipeline::resolve::{Index, IndexHandle};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 10_000;

fn integrations(r: &Receiver) -> Vec<Integration> {
    [
        json!({"id": "org-12", "org": "acme", "products": [1, 2], "event": "temp", "url": r.url("/org/{{{PRODUCT_ID}}}"),
               "json": {"device": "{{{PARTICLE_DEVICE_ID}}}", "v": "{{{v}}}"}, "headers": {"X-Key": "{{{API_KEY}}}"}}),
        json!({"id": "prod-3", "product_id": 3, "event": "temp", "url": r.url("/p3"), "requestType": "PUT",
               "form": {"d": "{{{PARTICLE_DEVICE_ID}}}"}}),
        json!({"id": "sb-u1", "owner": "u1", "event": "temp", "url": r.url("/sb"), "requestType": "GET",
               "query": {"n": "{{{n}}}"}, "noDefaults": true}),
        json!({"id": "never", "product_id": 3, "event": "temp", "url": r.url("/never"), "disabled": true}),
    ]
    .into_iter()
    .map(|v| Integration::from_value(v).unwrap())
    .collect()
}

struct Sent {
    id: String,
    name: String,
    data: String,
    device: String,
    product: u32,
    user: &'static str,
    published_at: String,
}

fn events() -> Vec<Sent> {
    (0..EVENTS)
        .map(|i| {
            let device_no = i % 300;
            Sent {
                id: format!("ev-{i}"),
                // One event in ten fires nothing: no integration has this prefix.
                name: if i % 10 == 9 {
                    "status".into()
                } else {
                    format!("temp/{}", i % 7)
                },
                data: json!({"v": i, "n": i}).to_string(),
                device: format!("{:024x}", 0xabc000 + device_no),
                product: 1 + (device_no % 3) as u32,
                user: match device_no % 5 {
                    0 => "u1",
                    1 => "u9",
                    _ => "",
                },
                published_at: format!(
                    "2024-05-13T10:{:02}:{:02}.{:03}Z",
                    i / 3600 % 60,
                    i / 60 % 60,
                    i % 1000
                ),
            }
        })
        .collect()
}

/// What the receiver must see, keyed by idempotency key: (integration,
/// product, method, target, body as JSON or text).
fn expected(events: &[Sent]) -> BTreeMap<String, (&'static str, u32, &'static str, String, Value)> {
    let mut out = BTreeMap::new();
    for e in events.iter().filter(|e| e.name.starts_with("temp")) {
        let defaults = [
            ("event", &e.name),
            ("data", &e.data),
            ("published_at", &e.published_at),
            ("coreid", &e.device),
        ];
        if e.product <= 2 {
            let mut body = json!({"device": e.device, "v": e.id.trim_start_matches("ev-")});
            for (k, v) in defaults {
                body[k] = json!(v);
            }
            out.insert(
                idempotency_key(&e.id, "org-12"),
                (
                    "org-12",
                    e.product,
                    "POST",
                    format!("/org/{}", e.product),
                    body,
                ),
            );
        } else {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("d", &e.device);
            for (k, v) in defaults {
                form.append_pair(k, v);
            }
            out.insert(
                idempotency_key(&e.id, "prod-3"),
                (
                    "prod-3",
                    e.product,
                    "PUT",
                    "/p3".into(),
                    Value::String(form.finish()),
                ),
            );
        }
        if e.user == "u1" {
            let n = e.id.trim_start_matches("ev-");
            out.insert(
                idempotency_key(&e.id, "sb-u1"),
                (
                    "sb-u1",
                    e.product,
                    "GET",
                    format!("/sb?n={n}"),
                    Value::String(String::new()),
                ),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_reach_every_integration_exactly_as_rendered() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    s.secrets.insert("API_KEY".into(), "k-123".into());
    create_topics(&broker, &s, 3).await;

    let sent = events();
    let records: Vec<(String, String)> = sent
        .iter()
        .map(|e| {
            let mut v = json!({"name": e.name, "data": e.data, "published_at": e.published_at, "coreid": e.device,
                               "userid": e.user, "productID": e.product, "version": 3, "ttl": 60, "public": false, "id": e.id});
            if e.product == 3 && e.user.is_empty() {
                v["ttl"] = json!("60"); // seen on the wire
            }
            (e.device.clone(), v.to_string())
        })
        .collect();
    let want = expected(&sent);

    let metrics = hookd::runtime::telemetry::metrics_handle();
    let worker = Worker::new(
        s.clone(),
        IndexHandle::new(Index::build(integrations(&receiver)).unwrap()),
    );
    let tally = worker.tally();
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(worker.run(shutdown.clone()));
    produce(&broker, &s.kafka.events_topic, &records).await;

    wait_until("every webhook", Duration::from_secs(240), || {
        receiver.count() >= want.len()
    })
    .await;
    shutdown.cancel();
    run.await.unwrap().unwrap();

    let seen = receiver.seen();
    assert_eq!(seen.len(), want.len(), "no request twice, none missing");
    let mut per_product: BTreeMap<u32, u64> = BTreeMap::new();
    for s in &seen {
        let key = s
            .headers
            .get("idempotency-key")
            .expect("idempotency header");
        let (integration, product, method, target, body) = want
            .get(key)
            .unwrap_or_else(|| panic!("unexpected request {s:?}"));
        assert_eq!(&s.method, method, "{integration}");
        assert_eq!(&s.target, target, "{integration}");
        assert_eq!(s.headers["user-agent"], USER_AGENT);
        match *integration {
            "org-12" => {
                assert_eq!(s.headers["content-type"], "application/json");
                assert_eq!(s.headers["x-key"], "k-123");
                assert_eq!(&serde_json::from_str::<Value>(&s.body).unwrap(), body);
            }
            "prod-3" => {
                assert_eq!(
                    s.headers["content-type"],
                    "application/x-www-form-urlencoded"
                );
                assert_eq!(&Value::String(s.body.clone()), body);
            }
            "sb-u1" => assert!(s.body.is_empty() && !s.headers.contains_key("content-type")),
            other => panic!("{other} must not fire"),
        }
        *per_product.entry(*product).or_default() += 1;
    }
    for p in [1, 2, 3] {
        let counts = tally.product_total(p);
        assert_eq!(
            counts.success, per_product[&p],
            "product {p} counter vs receiver"
        );
        assert_eq!((counts.error, counts.skipped), (0, 0));
    }
    assert_eq!(tally.get("never", Some(3)).total(), 0);
    let org1 = tally.get("org-12", Some(1)).success;
    let text = metrics.render();
    let series = format!("hookd_webhook_attempts_total{{integration=\"org-12\",product=\"1\",outcome=\"success\"}} {org1}");
    assert!(text.contains(&series), "{series} not in\n{text}");
    assert!(
        text.contains(&format!("hookd_events_consumed_total {EVENTS}")),
        "{text}"
    );
}
