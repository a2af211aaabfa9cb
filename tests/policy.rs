//! Delivery policy end to end: a receiver that goes down and comes back
//! (errors, then skipped, then retries deliver; every event delivered or
//! dead-lettered), response events, Standard Webhooks signatures checked by an
//! independent implementation, and no head-of-line blocking behind a slow,
//! rate-limited destination.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use common::{create_topics, produce, settings, start_worker, wait_until, Broker, Mode, Receiver};
use hookd::model::request::idempotency_key;
use hookd::policy::dead_letter::DeadLetter;
use hookd::policy::throttle::HostLimit;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn events(prefix: &str, n: usize, product: u32) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let device = format!("{:024x}", i % 5);
            let e = json!({"name": "temp", "data": i.to_string(), "coreid": device, "productID": product, "id": format!("{prefix}-{i}")});
            (device, e.to_string())
        })
        .collect()
}

fn keys(prefix: &str, n: usize, integration: &str) -> BTreeSet<String> {
    (0..n)
        .map(|i| idempotency_key(&format!("{prefix}-{i}"), integration))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_goes_down_and_comes_back() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(503));
    let mut s = settings(&broker);
    s.sleeping.trip_errors = 5.0;
    s.sleeping.half_life = Duration::from_secs(2);
    s.sleeping.quiet = Duration::from_millis(500);
    s.sleeping.probe_every = Duration::from_millis(100);
    s.retry.delays = vec![Duration::from_secs(2), Duration::from_secs(4)];
    create_topics(&broker, &s, 2).await;
    let worker = start_worker(
        &s,
        vec![json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")})],
    );
    const N: usize = 40;
    produce(&broker, &s.kafka.events_topic, &events("d", N, 5)).await;

    let tally = worker.tally.clone();
    let counts = || tally.get("h", Some(5));
    wait_until("errors, then skipped", Duration::from_secs(60), || {
        counts().error >= 5 && counts().skipped >= 1
    })
    .await;
    receiver.set_mode(Mode::Status(200));
    let all = keys("d", N, "h");
    // Every event ends delivered or dead-lettered.
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut dead: BTreeSet<String> = BTreeSet::new();
    loop {
        let delivered = receiver.delivered();
        if delivered.len() + dead.len() >= N || tokio::time::Instant::now() > end {
            break;
        }
        let read = broker
            .read_all(&s.kafka.dead_letter_topic, N, Duration::from_secs(2))
            .await;
        dead = read
            .iter()
            .map(|(_, v)| {
                let l: DeadLetter = serde_json::from_slice(v).unwrap();
                assert_eq!(l.reason, "retries_exhausted");
                assert_eq!(l.history.len(), 3, "three attempts recorded: {l:?}");
                assert_eq!(l.integration.as_deref(), Some("h"));
                let e: Value = serde_json::from_str(l.payload.as_deref().unwrap()).unwrap();
                idempotency_key(e["id"].as_str().unwrap(), "h")
            })
            .collect();
    }
    worker.stop().await;
    let delivered = receiver.delivered();
    assert!(
        delivered.is_disjoint(&dead),
        "no event both delivered and dead-lettered"
    );
    let ended: BTreeSet<String> = delivered.union(&dead).cloned().collect();
    assert_eq!(ended, all, "consumed = delivered + dead-lettered, exactly");
    assert!(
        !delivered.is_empty(),
        "retries delivered once the receiver was back"
    );
    let c = counts();
    assert!(c.success as usize >= delivered.len());
    assert!(c.skipped >= 1 && c.error >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_events_for_devices() {
    let broker = Broker::start();
    let ok = Receiver::start().await;
    ok.set_mode(Mode::Big(1100));
    let missing = Receiver::start().await;
    missing.set_mode(Mode::Status(404));
    let mut s = settings(&broker);
    s.retry.delays.clear();
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "ok", "product_id": 5, "event": "temp", "url": ok.url("/ok")}),
            json!({"id": "nf", "product_id": 5, "event": "temp", "url": missing.url("/nf"), "errorResponseTopic": "{{{PARTICLE_DEVICE_ID}}}/failed"}),
        ],
    );
    let device = "e00fce68aaaaaaaaaaaaaaaa";
    let event = json!({"name": "temp", "data": "1", "coreid": device, "productID": 5}).to_string();
    produce(&broker, &s.kafka.events_topic, &[(device.into(), event)]).await;
    // 2 hook-sent + 3 chunks + 1 error.
    let records = broker
        .read_all(&s.kafka.responses_topic, 6, Duration::from_secs(60))
        .await;
    worker.stop().await;
    let mut got: Vec<(String, String, String)> = records
        .iter()
        .map(|(key, v)| {
            assert_eq!(key.as_deref(), Some(device.as_bytes()));
            let e: Value = serde_json::from_slice(v).unwrap();
            assert_eq!(e["productID"], 5);
            (
                e["name"].as_str().unwrap().to_owned(),
                e["coreid"].as_str().unwrap().to_owned(),
                e["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let x = |n: usize| "x".repeat(n);
    let r = |n: usize| format!("{device}/hook-response/temp/{n}");
    let mut want = vec![
        (
            "hook-sent/temp".to_owned(),
            "particle-internal".to_owned(),
            "undefined".to_owned(),
        ),
        (
            "hook-sent/temp".to_owned(),
            "particle-internal".to_owned(),
            "undefined".to_owned(),
        ),
        (r(0), "particle-internal".to_owned(), x(512)),
        (r(1), "particle-internal".to_owned(), x(512)),
        (r(2), "particle-internal".to_owned(), x(76)),
        (
            format!("{device}/failed/0"),
            "particle-internal".to_owned(),
            "error status 404 from 127.0.0.1".to_owned(),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
}

/// HMAC-SHA256 written out from RFC 2104 over `sha2`, independent of the
/// `hmac` crate hookd signs with.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let inner_hash = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner_hash.iter().copied())
        .collect();
    Sha256::digest(&outer).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_independently() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    let key = b"0123456789abcdef0123456789abcdef";
    let b64 = base64::engine::general_purpose::STANDARD;
    s.secrets
        .insert("SIGNING_KEY".into(), format!("whsec_{}", b64.encode(key)));
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "signed", "product_id": 5, "event": "temp", "url": receiver.url("/in"), "signingSecret": "SIGNING_KEY"}),
        ],
    );
    produce(&broker, &s.kafka.events_topic, &events("s", 3, 5)).await;
    wait_until("three signed requests", Duration::from_secs(60), || {
        receiver.count() >= 3
    })
    .await;
    worker.stop().await;
    for seen in receiver.seen() {
        let id = &seen.headers["webhook-id"];
        assert_eq!(id, &seen.headers["idempotency-key"]);
        let ts: i64 = seen.headers["webhook-timestamp"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 300);
        let expected = hmac_sha256(key, format!("{id}.{ts}.{}", seen.body).as_bytes());
        assert_eq!(
            seen.headers["webhook-signature"],
            format!("v1,{}", b64.encode(expected))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rate_limited_destination_does_not_hold_up_the_others() {
    let metrics = hookd::runtime::telemetry::metrics_handle();
    let broker = Broker::start();
    let slow = Receiver::start().await;
    slow.set_mode(Mode::Delay(Duration::from_secs(5)));
    let healthy = Receiver::start().await;
    let mut s = settings(&broker);
    // Few events in flight, so blocking behind the slow host would show at once.
    s.worker.max_inflight_events = std::num::NonZero::new(16).unwrap();
    s.limits.max_wait = Duration::from_millis(500);
    s.limits.hosts.insert(
        "localhost".into(),
        HostLimit {
            rate: 1.0,
            burst: 1,
        },
    );
    create_topics(&broker, &s, 2).await;
    let slow_url = format!("http://localhost:{}/slow", slow.addr.port());
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "slow", "product_id": 1, "event": "temp", "url": slow_url}),
            json!({"id": "fast", "product_id": 2, "event": "temp", "url": healthy.url("/fast")}),
        ],
    );
    // Baseline: the healthy destination alone.
    produce(&broker, &s.kafka.events_topic, &events("a", 200, 2)).await;
    wait_until("the baseline", Duration::from_secs(60), || {
        healthy.delivered().len() >= 200
    })
    .await;
    // Then 50 events for the slow destination first, 200 healthy behind them.
    let mut mixed = events("slow", 50, 1);
    mixed.extend(events("b", 200, 2));
    produce(&broker, &s.kafka.events_topic, &mixed).await;
    wait_until("the healthy events", Duration::from_secs(60), || {
        healthy.delivered().len() >= 400
    })
    .await;
    let slow_arrived = slow.arrived();
    worker.stop().await;
    // Had the healthy events waited behind the slow ones (1 per second, each
    // answered after 5 s), at least 50 slow requests would have arrived first.
    assert!(
        slow_arrived < 25,
        "only {slow_arrived} slow requests went before all 200 healthy ones were delivered"
    );
    assert_eq!(
        healthy.delivered(),
        keys("a", 200, "fast")
            .union(&keys("b", 200, "fast"))
            .cloned()
            .collect()
    );
    let text = metrics.render();
    assert!(
        text.contains("hookd_deliveries_deferred_total"),
        "deferrals happened:\n{text}"
    );
}

/// Head of line: thousands of events for a host limited to a low rate,
/// interleaved with a few hundred for another host, on one worker. The
/// limited host's deliveries wait in its own queue (a long `max_wait`, so
/// they wait rather than defer), not on the worker's intake: the other
/// host's events are all delivered while the limited host has received only
/// a small part of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_limited_to_a_low_rate_never_holds_the_intake_for_others() {
    let broker = Broker::start();
    let limited = Receiver::start().await;
    let other = Receiver::start().await;
    let mut s = settings(&broker);
    // A small intake, so records parked behind the limit would fill it at once.
    s.worker.max_inflight_events = std::num::NonZero::new(64).unwrap();
    s.limits.max_wait = Duration::from_secs(600);
    s.limits.hosts.insert(
        "localhost".into(),
        HostLimit {
            rate: 50.0,
            burst: 1,
        },
    );
    create_topics(&broker, &s, 2).await;
    let limited_url = format!("http://localhost:{}/limited", limited.addr.port());
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "limited", "product_id": 1, "event": "temp", "url": limited_url}),
            json!({"id": "other", "product_id": 2, "event": "temp", "url": other.url("/other")}),
        ],
    );
    // Ten limited events before each other one: 3000 and 300.
    let a = events("a", 3000, 1);
    let b = events("b", 300, 2);
    let mut mixed = Vec::with_capacity(a.len() + b.len());
    for (i, e) in a.into_iter().enumerate() {
        mixed.push(e);
        if i % 10 == 9 {
            mixed.push(b[i / 10].clone());
        }
    }
    produce(&broker, &s.kafka.events_topic, &mixed).await;
    wait_until(
        "every event of the other host",
        Duration::from_secs(120),
        || other.delivered().len() >= 300,
    )
    .await;
    let limited_so_far = limited.arrived();
    // At 50 per second the limited host takes a minute for its 3000; had the
    // other host's events waited behind them in the intake, nearly all of
    // the limited ones would have gone first.
    assert!(
        limited_so_far < 1500,
        "{limited_so_far} of 3000 limited requests went before the other host's 300"
    );
    assert_eq!(other.delivered(), keys("b", 300, "other"));
    // The limited host still drains, at its rate.
    wait_until(
        "the limited host drains on",
        Duration::from_secs(60),
        || limited.arrived() >= limited_so_far + 100,
    )
    .await;
    worker.stop().await;
}

/// A retry waiting for its due time holds up nothing: with one retry permit
/// (`retry.max_waiting = 1`), a retry due in 20 s is read first, and one due
/// in 1 s after it on another topic is still attempted when due, long before
/// the first. (Holding the permit for the wait, as a task sleeping per
/// record did, made the second wait the first's 20 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_for_its_due_time_holds_up_no_other() {
    let broker = Broker::start();
    let a = Receiver::start().await;
    a.set_mode(Mode::Status(503));
    let b = Receiver::start().await;
    b.set_mode(Mode::Status(503));
    let mut s = settings(&broker);
    s.retry.delays = vec![Duration::from_secs(1), Duration::from_secs(20)];
    s.retry.max_waiting = std::num::NonZero::new(1).unwrap();
    create_topics(&broker, &s, 2).await;
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "a", "product_id": 1, "event": "temp", "url": a.url("/a")}),
            json!({"id": "b", "product_id": 2, "event": "temp", "url": b.url("/b")}),
        ],
    );
    produce(&broker, &s.kafka.events_topic, &events("a", 1, 1)).await;
    // The first attempt and the 1 s retry fail: a 20 s retry is scheduled.
    wait_until("a's first retry", Duration::from_secs(60), || {
        a.count() >= 2
    })
    .await;
    // Time for the retry consumer to read that 20 s retry first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&broker, &s.kafka.events_topic, &events("b", 1, 2)).await;
    wait_until("b's first attempt", Duration::from_secs(30), || {
        b.count() >= 1
    })
    .await;
    b.set_mode(Mode::Status(200));
    wait_until("b's retry, due 1 s later", Duration::from_secs(15), || {
        b.count() >= 2
    })
    .await;
    assert_eq!(a.count(), 2, "a's 20 s retry is still waiting");
    worker.stop().await;
}

/// A retried request is the first one again: an event without
/// `published_at` takes its record's time on the first attempt, and the
/// retry renders that same time, so the bodies are byte for byte equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_same_body_as_the_first_attempt() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Status(503));
    let s = settings(&broker);
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![json!({"id": "h", "product_id": 5, "event": "temp", "url": receiver.url("/in")})],
    );
    // `events` carry no published_at.
    produce(&broker, &s.kafka.events_topic, &events("p", 1, 5)).await;
    wait_until("the first attempt", Duration::from_secs(30), || {
        receiver.count() >= 1
    })
    .await;
    receiver.set_mode(Mode::Status(200));
    wait_until("the retry", Duration::from_secs(30), || {
        receiver.count() >= 2
    })
    .await;
    worker.stop().await;
    let seen = receiver.seen();
    assert_eq!(
        seen[0].headers["idempotency-key"],
        seen[1].headers["idempotency-key"]
    );
    assert!(seen[0].body.contains("published_at="), "{}", seen[0].body);
    assert_eq!(seen[0].body, seen[1].body, "the same request, retried");
}

/// A request that cannot be signed (its `signingSecret` names no configured
/// secret, or a key too short) is never sent: it is counted as an error,
/// told to the device as an error event, and dead-lettered at once as
/// `signing_failed` with the reason and not a byte of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsignable_request_is_dead_lettered_as_signing_failed() {
    let broker = Broker::start();
    let receiver = Receiver::start().await;
    let mut s = settings(&broker);
    // Decodes to 12 bytes: under the 16 a key needs.
    s.secrets
        .insert("SHORT_KEY".into(), "whsec_c2hvcnRzZWNyZXQh".into());
    create_topics(&broker, &s, 1).await;
    let worker = start_worker(
        &s,
        vec![
            json!({"id": "unknown", "product_id": 5, "event": "temp", "url": receiver.url("/a"), "signingSecret": "NO_SUCH_KEY"}),
            json!({"id": "short", "product_id": 5, "event": "temp", "url": receiver.url("/b"), "signingSecret": "SHORT_KEY"}),
        ],
    );
    produce(&broker, &s.kafka.events_topic, &events("u", 2, 5)).await;
    let read = broker
        .read_all(&s.kafka.dead_letter_topic, 4, Duration::from_secs(60))
        .await;
    let responses = broker
        .read_all(&s.kafka.responses_topic, 4, Duration::from_secs(30))
        .await;
    let tally = worker.tally.clone();
    worker.stop().await;
    assert_eq!(read.len(), 4, "two events × two integrations dead-lettered");
    for (_, v) in &read {
        let l: DeadLetter = serde_json::from_slice(v).unwrap();
        assert_eq!(l.reason, "signing_failed", "{l:?}");
        assert_eq!(l.history.len(), 0, "dead-lettered at once: {l:?}");
        let expected = match l.integration.as_deref() {
            Some("unknown") => "NO_SUCH_KEY",
            Some("short") => "12 bytes",
            other => panic!("unexpected integration {other:?}"),
        };
        assert!(l.error.contains(expected), "{l:?}");
        assert!(!l.error.contains("c2hvcnRzZWNyZXQh"), "{l:?}");
    }
    let errors: Vec<Value> = responses
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .filter(|e: &Value| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("hook-error/"))
        })
        .collect();
    assert_eq!(
        errors.len(),
        4,
        "one error event per failed delivery: {errors:?}"
    );
    assert!(errors.iter().all(|e| e["data"]
        .as_str()
        .unwrap()
        .contains("error signing the request")));
    assert_eq!(receiver.count(), 0, "nothing unsigned was sent");
    assert_eq!(tally.get("unknown", Some(5)).error, 2);
    assert_eq!(tally.get("short", Some(5)).error, 2);
}
