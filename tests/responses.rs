//! What devices are told, on a broker with real receivers: a Particle
//! export with every documented field loads through the api unchanged and
//! its JSON `responseTemplate` answers; `unchunked` publishes a 3 KB JSON
//! response as one event; `dataUrlResponseEvent` publishes a binary response
//! as a data URL carrying its bytes and media type, in 512-byte chunks.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::*;
use hyper::Method;
use serde_json::{json, Value};

const DEVICE: &str = "e00fce68aaaaaaaaaaaaaaaa";

/// The shared Particle export to `url`, its responses on `a/<device>`.
fn particle_export(url: &str) -> Value {
    let mut e = common::particle_export(url);
    e["responseTopic"] = json!("a/{{{PARTICLE_DEVICE_ID}}}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchunked_data_url_and_json_templates_reach_the_responses_topic() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;

    let geo = Receiver::start().await;
    geo.set_mode(Mode::Body(
        br#"{"results": [{"location": {"lat": 51.5, "lng": -0.12}}]}"#,
        "application/json",
    ));
    let large = Receiver::start().await;
    let three_kb: &'static str = Box::leak(
        json!({"items": (0..64).map(|n| format!("item-{n:04}-{}", "z".repeat(36))).collect::<Vec<_>>()})
            .to_string()
            .into_boxed_str(),
    );
    assert!(three_kb.len() > 3000, "{}", three_kb.len());
    large.set_mode(Mode::Body(three_kb.as_bytes(), "application/json"));
    let binary = Receiver::start().await;
    let bytes: &'static [u8] = Box::leak(
        (0..=255u8)
            .cycle()
            .take(1000)
            .collect::<Vec<u8>>()
            .into_boxed_slice(),
    );
    binary.set_mode(Mode::Body(bytes, "image/png"));

    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    // The export loads through the api as it is.
    let created = acme
        .call(
            Method::POST,
            "/v1/products/1/integrations",
            Some(&particle_export(&geo.url("/geo"))),
        )
        .await
        .expect("the export loads unchanged");
    assert_eq!(created["product_id"], 1, "{created}");
    let view = acme
        .call(
            Method::GET,
            &format!(
                "/v1/products/1/integrations/{}",
                created["id"].as_str().unwrap()
            ),
            None,
        )
        .await
        .unwrap();
    for field in [
        "template",
        "integration_type",
        "created_at",
        "responseTemplate",
        "unchunked",
    ] {
        assert!(view["config"].get(field).is_some(), "{field} kept: {view}");
    }
    for (topic, url, extra) in [
        ("b", large.url("/large"), json!({"unchunked": true})),
        (
            "c",
            binary.url("/bin"),
            json!({"dataUrlResponseEvent": true}),
        ),
    ] {
        let mut hook = json!({"event": "temp", "url": url, "responseTopic": topic});
        hook.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        acme.call(Method::POST, "/v1/products/1/integrations", Some(&hook))
            .await
            .unwrap();
    }

    let worker = start_log_worker(&s).await;
    let event = json!({"name": "temp", "data": "{\"t\": 21.5}", "coreid": DEVICE, "productID": 1,
                       "published_at": "2024-05-13T10:55:40.306Z"})
    .to_string();
    produce(&broker, &s.kafka.events_topic, &[(DEVICE.into(), event)]).await;

    // 3 hook-sent, 1 templated, 1 unchunked, the data URL in chunks.
    let url_len = "data:image/png;base64,".len() + 1000_usize.div_ceil(3) * 4;
    let chunks = url_len.div_ceil(512);
    let records = broker
        .read_all(
            &s.kafka.responses_topic,
            5 + chunks,
            Duration::from_secs(60),
        )
        .await;
    worker.stop().await;
    api.stop().await;
    let events: Vec<Value> = records
        .iter()
        .map(|(key, v)| {
            assert_eq!(key.as_deref(), Some(DEVICE.as_bytes()));
            serde_json::from_slice(v).unwrap()
        })
        .collect();
    let named = |prefix: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["name"].as_str().unwrap().starts_with(prefix))
            .collect()
    };
    assert_eq!(named("hook-sent/temp").len(), 3, "{events:?}");
    for e in &events {
        assert_eq!(e["coreid"], "particle-internal", "{e}");
    }

    // The JSON template renders to JSON text.
    let templated = named("a/");
    assert_eq!(templated.len(), 1, "{events:?}");
    assert_eq!(templated[0]["name"], format!("a/{DEVICE}/0"));
    let answer: Value = serde_json::from_str(templated[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({"lat": "51.5", "device": DEVICE}));
    // The request carried every request field of the export.
    let sent = &geo.seen()[0];
    assert_eq!(sent.method, "PUT");
    assert_eq!(sent.target, "/geo?src=temp");
    assert_eq!(sent.headers["x-device"], DEVICE);
    assert_eq!(
        sent.headers["authorization"],
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("user:pass")
        )
    );
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!((&body["t"], &body["n"]), (&json!("21.5"), &json!(3)));

    // Unchunked: the whole 3 KB in one event.
    let whole = named("b/");
    assert_eq!(whole.len(), 1, "{events:?}");
    assert_eq!(whole[0]["name"], "b/0");
    assert_eq!(whole[0]["data"], three_kb);

    // A data URL, 512-byte chunks in order, decoding to the bytes sent.
    let mut parts = named("c/");
    assert_eq!(parts.len(), chunks, "{events:?}");
    let index = |e: &Value| -> usize { e["name"].as_str().unwrap()["c/".len()..].parse().unwrap() };
    parts.sort_by_key(|e| index(e));
    let mut url = String::new();
    for (n, p) in parts.iter().enumerate() {
        assert_eq!(index(p), n);
        let data = p["data"].as_str().unwrap();
        if n + 1 < chunks {
            assert_eq!(data.len(), 512, "every chunk but the last is 512 bytes");
        }
        url.push_str(data);
    }
    let b64 = url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("{url}"));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        bytes
    );
}
