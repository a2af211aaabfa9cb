//! A hostile tenant against the real api and a worker following the config
//! log: template features outside mustache are refused at the api with the
//! field named, a template that passes but multiplies over device data stops
//! at its render budget and is dead-lettered while every other request goes
//! out and the worker runs on, and the api validates under the `[templates]`
//! limits of its own settings.

mod common;

use std::time::Duration;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

/// An event `name` of a device of `product` carrying `data`: (key, payload).
fn event(product: u32, name: &str, data: &str) -> (String, String) {
    let device = format!(
        "{:024x}",
        u64::from(product) * 1000 + (data.len() as u64 % 7)
    );
    let e = json!({"name": name, "data": data, "published_at": "2024-05-13T10:55:40.306Z",
                   "coreid": device, "userid": "", "productID": product});
    (device, e.to_string())
}

/// A tenant cannot get a template past the api that recurses or calls out
/// (inline partials, partials, helpers: 400 naming the field and the
/// feature), and the template it can write — sections nested over a device
/// array, 60⁴ repetitions for one event — stops at `max_render_steps`: that
/// request is dead-lettered as `render_failed` with the integration's id and
/// never sent, while the sibling integration delivers every event (the
/// poison one included), the events behind it on the partition flow on, and
/// the worker keeps running and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_tenant_cannot_crash_or_stall_the_worker() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    // One partition: the events after the poison one wait behind it.
    create_topics(&broker, &s, 1).await;
    let receiver = Receiver::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let product = "/v1/products/1/integrations";

    // Refused at the api, naming the field and the feature.
    let cases = [
        (
            json!({"json": {"a": r#"{{#*inline "p"}}{{> p}}{{~/inline}}{{> p}}"#}}),
            "json.a",
            "inline partials are not supported",
        ),
        (
            json!({"body": "{{> p}}"}),
            "body",
            "partials are not supported",
        ),
        (
            json!({"url": "https://x.example/{{lookup a b}}"}),
            "url",
            "helpers and arguments are not supported",
        ),
    ];
    for (fields, field, feature) in cases {
        let mut body = json!({"event": "temp", "url": receiver.url("/refused")});
        for (k, v) in fields.as_object().expect("an object") {
            body[k.as_str()] = v.clone();
        }
        let (status, message, got_field) =
            refused(&acme, Method::POST, product, body.clone()).await;
        assert_eq!(status, 400, "{body}: {message}");
        assert_eq!(got_field.as_deref(), Some(field), "{body}: {message}");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{body}: {message}"
        );
        assert!(message.contains(feature), "{body}: {message}");
    }
    let list = acme.call(Method::GET, product, None).await.unwrap();
    assert_eq!(
        list["integrations"],
        json!([]),
        "nothing refused was written"
    );

    // Valid mustache whose cost depends on the device's data, and a normal
    // sibling on the same product that fires for every event.
    let poison = acme
        .call(
            Method::POST,
            product,
            Some(
                &json!({"event": "temp/poison", "url": receiver.url("/poison"),
                         "body": "{{#a}}{{#a}}{{#a}}{{#a}}x{{/a}}{{/a}}{{/a}}{{/a}}"}),
            ),
        )
        .await
        .expect("plain nested sections pass validation");
    let poison = poison["id"].as_str().unwrap().to_owned();
    let normal = acme
        .call(
            Method::POST,
            product,
            Some(&json!({"event": "temp", "url": receiver.url("/normal")})),
        )
        .await
        .unwrap();
    let normal = normal["id"].as_str().unwrap().to_owned();
    let worker = start_log_worker(&s).await;

    // 60⁴ ≈ 13 million repetitions, far over the default 100 000 steps.
    let items: Vec<Value> = (0..60).map(|i| json!({ "i": i })).collect();
    let poison_data = json!({ "a": items }).to_string();
    let poison_event = event(1, "temp/poison", &poison_data);
    let mut records: Vec<(String, String)> = (0..2)
        .map(|n| event(1, "temp/x", &format!("normal-{n}")))
        .collect();
    records.push(poison_event.clone());
    records.extend((2..5).map(|n| event(1, "temp/x", &format!("normal-{n}"))));
    produce(&broker, &s.kafka.events_topic, &records).await;
    let mut expected: Vec<String> = (0..5).map(|n| format!("normal-{n}")).collect();
    expected.push(poison_data.clone());
    wait_until(
        "every event at the normal integration",
        Duration::from_secs(60),
        || {
            let seen = routes(&receiver);
            expected.iter().all(|d| seen.contains_key(d))
        },
    )
    .await;

    // The poison request: dead-lettered, naming the bound it hit.
    let letters = broker
        .read_all(&s.kafka.dead_letter_topic, 1, Duration::from_secs(30))
        .await;
    assert_eq!(letters.len(), 1, "the poison request was dead-lettered");
    let (key, letter) = &letters[0];
    let letter: Value = serde_json::from_slice(letter).expect("a dead letter is JSON");
    assert_eq!(letter["reason"], "render_failed", "{letter}");
    assert_eq!(letter["integration"], poison.as_str(), "{letter}");
    let error = letter["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("body: ") && error.contains("max_render_steps"),
        "{letter}"
    );
    assert_eq!(
        letter["payload"],
        poison_event.1.as_str(),
        "the event is kept as it was read"
    );
    assert_eq!(letter["topic"], s.kafka.events_topic.as_str());
    assert_eq!(key.as_deref(), Some(poison_event.0.as_bytes()));
    wait_until(
        "the poison attempt counted as an error",
        Duration::from_secs(10),
        || worker.tally.get(&poison, Some(1)).error == 1,
    )
    .await;

    // Still running: a later event is delivered.
    produce(
        &broker,
        &s.kafka.events_topic,
        &[event(1, "temp/x", "after-poison")],
    )
    .await;
    wait_until(
        "the event after the poison one",
        Duration::from_secs(30),
        || routes(&receiver).contains_key("after-poison"),
    )
    .await;
    expected.push("after-poison".to_owned());
    let seen = routes(&receiver);
    for data in &expected {
        assert_eq!(seen[data.as_str()], ["/normal"], "{data}");
    }
    assert!(
        receiver
            .seen()
            .iter()
            .all(|x| !x.target.starts_with("/poison")),
        "the poison request was never sent"
    );
    let counts = worker.tally.get(&poison, Some(1));
    assert_eq!((counts.success, counts.error), (0, 1));
    // Counted when the response is back, a moment after the receiver saw it.
    wait_until(
        "the normal integration's successes counted",
        Duration::from_secs(10),
        || worker.tally.get(&normal, Some(1)).success == expected.len() as u64,
    )
    .await;
    let letters = broker
        .read_all(&s.kafka.dead_letter_topic, 2, Duration::from_secs(3))
        .await;
    assert_eq!(
        letters.len(),
        1,
        "only the poison request was dead-lettered"
    );
    worker.stop().await;
    api.stop().await;
}

/// The api validates records under the `[templates]` limits of its own
/// settings, not the defaults: with `max_template_bytes = 1000`, a body of
/// 1001 bytes is refused with 400 naming `body` and the setting, and one of
/// 900 bytes is accepted as it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_validates_under_its_configured_template_limits() {
    let broker = Broker::start();
    let mut s = with_api(settings(&broker));
    s.templates.max_template_bytes = std::num::NonZero::new(1000).unwrap();
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let product = "/v1/products/1/integrations";
    let hook = |bytes: usize| json!({"event": "temp", "url": "https://example.com/in", "body": "x".repeat(bytes)});

    let (status, message, field) = refused(&acme, Method::POST, product, hook(1001)).await;
    assert_eq!((status, field.as_deref()), (400, Some("body")), "{message}");
    assert!(
        message.starts_with("body: ")
            && message.contains("1001 bytes is over the limit of 1000 bytes")
            && message.contains("max_template_bytes"),
        "{message}"
    );

    let created = acme
        .call(Method::POST, product, Some(&hook(900)))
        .await
        .expect("900 bytes fit");
    assert_eq!(
        created["config"]["body"].as_str().map(str::len),
        Some(900),
        "{created}"
    );
    api.stop().await;
}

/// Per-tenant bounds at the api: a tenant at `api.max_integrations_per_tenant`
/// cannot create (or separate into) one more, while another tenant can; and
/// `test`, which sends a real request per call, answers 429 past
/// `api.test_calls_per_minute` for the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_per_tenant_and_test_calls_are_capped() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = with_api(settings(&broker));
    s.api.max_integrations_per_tenant = std::num::NonZero::new(2).unwrap();
    s.api.test_calls_per_minute = std::num::NonZero::new(2).unwrap();
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let hook = json!({"event": "temp", "url": receiver.url("/t")});

    let first = acme
        .call(Method::POST, "/v1/products/1/integrations", Some(&hook))
        .await
        .expect("first");
    acme.call(Method::POST, "/v1/products/1/integrations", Some(&hook))
        .await
        .expect("second");
    let (status, message, _) = refused(
        &acme,
        Method::POST,
        "/v1/products/1/integrations",
        hook.clone(),
    )
    .await;
    assert_eq!(status, 403, "{message}");
    assert!(
        message.contains("product:1 already has 2 integrations")
            && message.contains("api.max_integrations_per_tenant"),
        "{message}"
    );
    // Another tenant (product 2's integrations) is not held by product 1's.
    acme.call(Method::POST, "/v1/products/2/integrations", Some(&hook))
        .await
        .expect("another tenant creates");

    let id = first["id"].as_str().expect("an id").to_owned();
    let test = format!("/v1/products/1/integrations/{id}/test");
    for n in 0..2 {
        let outcome = acme
            .call(Method::POST, &test, None)
            .await
            .unwrap_or_else(|e| panic!("test call {n}: {e}"));
        assert_eq!(outcome["outcome"], "success", "{outcome}");
    }
    let (status, message, _) = refused(&acme, Method::POST, &test, Value::Null).await;
    assert_eq!(status, 429, "{message}");
    assert!(message.contains("api.test_calls_per_minute"), "{message}");
    assert_eq!(receiver.count(), 2, "the refused call sent nothing");
    api.stop().await;
}
