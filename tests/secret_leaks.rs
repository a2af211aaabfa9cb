//! No secret value leaves in anything a device or a person sees. Two
//! secrets granted to org acme (one with `$ / " + =`, changed by every
//! encoding; one usable as a hostname) go through every failure path of the
//! real worker binary following the config log: a render error in every field
//! (url, query, form, body, json object and text, header name and value, auth
//! username and password, responseTopic, responseTemplate,
//! errorResponseTopic), deliveries answered 500 or aimed at a host built from
//! a secret (retried, then dead-lettered), and destinations echoing the secret
//! raw, JSON-escaped, URL-encoded, in base64 and as Basic credentials (as text,
//! JSON, through a responseTemplate, as a data URL). Every output channel is
//! then searched for the values as a person could read them back (as is,
//! percent-, form- or JSON-decoded, in any case, inside base64 at any offset):
//! the worker's debug log and `/metrics`, the dead-letter, responses, stats
//! and delivery-log topics, and the api's `test` and `log` answers; and each
//! shows that its path ran (`[[SENSITIVE]]` where a value was masked).

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use bytes::Bytes;
use common::*;
use hookd::policy::dead_letter::DeadLetter;
use hookd::runtime::config::Settings;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Method;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Changed by form-, percent- and JSON-encoding alike.
const SECRET: &str = r#"Sup3r$ecret/Va"lue+42=ok"#;
/// Valid in a hostname, so a URL can be built on it.
const HOST_SECRET: &str = "HostKey7Secret";
const S: &str = "{{{LEAKY_KEY}}}";
const H: &str = "{{{HOST_KEY}}}";
/// `templates.max_output_bytes`: ten secrets (240 bytes) are over it, ten
/// `[[SENSITIVE]]` (130) are not, so a field fails to render when sent and
/// still shows, masked.
const MAX_OUTPUT: usize = 200;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` as a person could read it: as is, percent-, form- or JSON-decoded.
fn readings(text: &str) -> [(&'static str, String); 5] {
    let unescaped = text
        .replace("\\\"", "\"")
        .replace("\\/", "/")
        .replace("\\\\", "\\");
    [
        ("as is", text.to_owned()),
        ("percent-decoded", percent_decode(text)),
        ("form-decoded", percent_decode(&text.replace('+', " "))),
        ("JSON-unescaped", unescaped.clone()),
        (
            "JSON-unescaped and percent-decoded",
            percent_decode(&unescaped),
        ),
    ]
}

/// What every run of base64 characters (standard or URL-safe) in `text`
/// decodes to, from each of the four alignments it may start at: a value
/// inside base64 at any offset decodes whole from one of them.
fn base64_decodings(text: &str) -> Vec<String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_');
    let mut out = Vec::new();
    for run in text.split(|c: char| !is_b64(c)).filter(|r| r.len() >= 16) {
        let run = run.replace('-', "+").replace('_', "/");
        for skip in 0..4 {
            let part = &run[skip..];
            let part = &part[..part.len() - usize::from(part.len() % 4 == 1)];
            if let Ok(bytes) = lenient.decode(part) {
                out.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    out
}

/// Where either secret can be read back out of `text`, with the context.
fn findings(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (how, reading) in readings(text) {
        look(&mut found, how, &reading);
    }
    for decoded in base64_decodings(text) {
        for (how, reading) in readings(&decoded) {
            look(&mut found, &format!("base64-decoded, {how}"), &reading);
        }
    }
    found
}

fn look(found: &mut Vec<String>, how: &str, reading: &str) {
    let lower = reading.to_ascii_lowercase();
    for secret in [SECRET, HOST_SECRET] {
        if let Some(at) = lower.find(&secret.to_ascii_lowercase()) {
            // The same bytes as `lower`: ASCII case changes only.
            let from = reading[..at]
                .char_indices()
                .rev()
                .nth(60)
                .map_or(0, |(i, _)| i);
            let shown: String = reading[from..].chars().take(150).collect();
            found.push(format!("{how}: …{shown}…"));
        }
    }
}

/// A destination echoing the secret back the ways destinations do (raw,
/// JSON-escaped, URL-encoded, base64, Basic credentials) with the
/// `Authorization` header it got. `/fail…` answers 500 with text, `/json…`
/// 200 with a JSON object, any other path 200 with text.
#[derive(Clone, Default)]
struct Echo {
    /// (path and query, Authorization, body) of every request.
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl Echo {
    async fn start() -> (Echo, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let echo = Echo::default();
        let this = echo.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), svc)
                        .await;
                });
            }
        });
        (echo, base)
    }

    fn seen(&self) -> Vec<(String, String, String)> {
        self.seen.lock().unwrap().clone()
    }

    async fn answer(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let echo = json!({
            "raw": SECRET,
            "b64": STANDARD.encode(SECRET),
            "b64url": URL_SAFE.encode(SECRET),
            "basic": STANDARD.encode(format!("u:{SECRET}")),
            "url": form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>(),
            "auth": auth.as_str(),
            "host": HOST_SECRET,
            "target": target.as_str(),
        });
        self.seen.lock().unwrap().push((
            target.clone(),
            auth,
            String::from_utf8_lossy(&body).into_owned(),
        ));
        let (status, kind, text) = if target.starts_with("/json") {
            (200u16, "application/json", echo.to_string())
        } else {
            let text = echo
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ");
            let status = if target.starts_with("/fail") {
                500
            } else {
                200
            };
            (status, "text/plain", text)
        };
        hyper::Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    }
}

/// The integrations by label, laid over `{"event": "leak", "url":
/// <echo>/ok/<label>, "products": [1, 2]}`: `render-…` fail to render
/// (dead-lettered at once), `deliver-…` fail to deliver (retried, then
/// dead-lettered), `respond-…` are delivered but their response event fails
/// to render, `echo-…` are delivered and echoed.
fn integrations(echo: &str) -> Vec<(&'static str, Value)> {
    let big = S.repeat(10);
    let big = big.as_str();
    let mut bad_name = serde_json::Map::new();
    bad_name.insert(format!("{S}/"), "v".into());
    vec![
        ("render-url", json!({"url": format!("{echo}/ok/{big}")})),
        (
            "render-url-parse",
            json!({"url": format!("http://[{S}]/x")}),
        ),
        ("render-query", json!({"query": {"q": big}})),
        ("render-form", json!({"form": {"f": big}})),
        ("render-body", json!({"body": big})),
        ("render-json", json!({"json": {"k": big}})),
        (
            "render-json-text",
            json!({"json": format!("{{\"k\": {S} }}")}),
        ),
        ("render-header-name", json!({"headers": bad_name})),
        (
            "render-header-value",
            json!({"headers": {"X-K": format!("{S}\n")}}),
        ),
        ("render-header-big", json!({"headers": {"X-K": big}})),
        (
            "render-auth-user",
            json!({"auth": {"username": big, "password": "p"}}),
        ),
        (
            "render-auth-pass",
            json!({"auth": {"username": "u", "password": big}}),
        ),
        (
            "deliver-500",
            json!({"url": format!("{echo}/fail/{S}?k={S}"), "headers": {"X-Key": S},
                   "errorResponseTopic": format!("{S}/failed")}),
        ),
        (
            "deliver-error-topic",
            json!({"url": format!("{echo}/fail/e"), "errorResponseTopic": big}),
        ),
        (
            "deliver-host",
            json!({"url": format!("http://{H}.invalid/x")}),
        ),
        ("respond-topic", json!({"responseTopic": big})),
        (
            "respond-template",
            json!({"url": format!("{echo}/json/t"), "responseTemplate": big}),
        ),
        (
            "echo-text",
            json!({"json": {"k": S, "h": H}, "responseTopic": format!("{S}/resp")}),
        ),
        (
            "echo-path",
            json!({"url": format!("{echo}/ok/{S}/x?q={S}")}),
        ),
        (
            "echo-auth",
            json!({"auth": {"username": "u", "password": S}, "dataUrlResponseEvent": true, "unchunked": true}),
        ),
        (
            "echo-template",
            json!({"url": format!("{echo}/json/e?k={S}"), "headers": {"Authorization": format!("Bearer {S}")},
                   "responseTemplate": "got {{{raw}}} {{{b64}}} {{{url}}} {{{auth}}}"}),
        ),
    ]
}

/// The worker binary's config: the test's topics, the config log as its
/// source, debug logging, and the secrets granted to org acme.
fn write_config(dir: &Path, s: &Settings, port: u16) -> PathBuf {
    let path = dir.join("hookd.toml");
    common::write_config_file(
        &path,
        s,
        toml::toml! {
            [integrations]
            source = "kafka"

            [metrics]
            listen = (format!("127.0.0.1:{port}"))

            [log]
            filter = "debug,rdkafka=warn"

            [traffic]
            flush_interval = "200ms"

            [sleeping]
            trip_errors = 1000000000.0

            [delivery]
            timeout = "5s"
            connect_timeout = "2s"

            [templates]
            max_output_bytes = (MAX_OUTPUT)

            [secrets]
            LEAKY_KEY = (SECRET)
            HOST_KEY = (HOST_SECRET)

            [secret_scopes]
            LEAKY_KEY = ["org:acme"]
            HOST_KEY = ["org:acme"]
        },
    );
    path
}

/// The worker binary, killed if the test ends before stopping it.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn records_text(records: &[(Option<Vec<u8>>, Vec<u8>)]) -> String {
    records
        .iter()
        .map(|(k, v)| {
            let key = String::from_utf8_lossy(k.as_deref().unwrap_or_default());
            format!("{key} {}\n", String::from_utf8_lossy(v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_leaks_through_any_failure_path_or_output_channel() {
    // The search finds what it looks for, and nothing in innocent text.
    for planted in [
        format!("x{SECRET}y"),
        format!(
            "k={}",
            form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()
        ),
        json!({"v": SECRET}).to_string(),
        format!("Basic {}", STANDARD.encode(format!("user:{SECRET}"))),
        format!("data:;base64,{}", URL_SAFE.encode(format!("ab{SECRET}"))),
        format!("from {}.invalid", HOST_SECRET.to_uppercase()),
    ] {
        assert!(
            !findings(&planted).is_empty(),
            "the search misses {planted}"
        );
    }
    assert!(findings("[[SENSITIVE]] U3VwM3IkZWNyZXQv innocent").is_empty());

    let broker = Broker::start();
    let mut s = with_api(settings(&broker));
    s.secrets.insert("LEAKY_KEY".into(), SECRET.into());
    s.secrets.insert("HOST_KEY".into(), HOST_SECRET.into());
    for name in ["LEAKY_KEY", "HOST_KEY"] {
        s.secret_scopes.insert(name.into(), vec!["org:acme".into()]);
    }
    s.templates.max_output_bytes = std::num::NonZero::new(MAX_OUTPUT).unwrap();
    s.delivery.timeout = Duration::from_secs(5);
    s.delivery.connect_timeout = Duration::from_secs(2);
    s.api.test_calls_per_minute = std::num::NonZero::new(100).unwrap();
    create_topics(&broker, &s, 1).await;
    let (echo, base) = Echo::start().await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let acme = api.as_token(ACME);
    let mut ids: Vec<(&'static str, String)> = Vec::new();
    for (label, extra) in integrations(&base) {
        let mut hook = json!({"name": label, "event": "leak", "url": format!("{base}/ok/{label}"), "products": [1, 2]});
        let fields = extra.as_object().unwrap().clone();
        hook.as_object_mut().unwrap().extend(fields);
        let created = acme
            .call(Method::POST, "/v1/orgs/acme/integrations", Some(&hook))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        ids.push((label, created["id"].as_str().unwrap().to_owned()));
    }
    let label_of = |id: &str| ids.iter().find(|(_, i)| i == id).map(|(l, _)| *l);

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config(dir.path(), &s, port);
    let log_path = dir.path().join("worker.log");
    let out = std::fs::File::create(&log_path).unwrap();
    let mut worker = Worker(
        Command::new(env!("CARGO_BIN_EXE_hookd"))
            .args(["worker", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("HOOKD_LOG__FILTER")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start hookd worker"),
    );
    let worker_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let log_tail = || {
        let log = worker_log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    wait_until("/readyz", Duration::from_secs(60), || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    })
    .await;

    let events: Vec<(String, String)> = [1u32, 2]
        .iter()
        .map(|p| {
            let device = format!("{p:024x}");
            let e = json!({"name": "leak", "data": "x", "coreid": device, "productID": p, "id": format!("leak-{p}")});
            (device, e.to_string())
        })
        .collect();
    produce(&broker, &s.kafka.events_topic, &events).await;

    // Every render-… and deliver-… integration dead-letters both events.
    let dead: Vec<&str> = ids
        .iter()
        .map(|(l, _)| *l)
        .filter(|l| l.starts_with("render-") || l.starts_with("deliver-"))
        .collect();
    let letters = broker
        .read_all(
            &s.kafka.dead_letter_topic,
            2 * dead.len(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        letters.len(),
        2 * dead.len(),
        "dead letters; worker log:\n{}",
        log_tail()
    );
    let mut per_label: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, value) in &letters {
        let letter: DeadLetter = serde_json::from_slice(value).unwrap();
        let label = label_of(letter.integration.as_deref().unwrap_or_default())
            .unwrap_or_else(|| panic!("{letter:?}"));
        let reason = if label.starts_with("render-") {
            "render_failed"
        } else {
            "retries_exhausted"
        };
        assert_eq!(letter.reason, reason, "{label}: {letter:?}");
        *per_label.entry(label).or_default() += 1;
    }
    for label in &dead {
        assert_eq!(per_label.get(label), Some(&2), "{label}: {per_label:?}");
    }
    // The respond-… and echo-… ones were delivered, the secret in them.
    wait_until("the echoed deliveries", Duration::from_secs(60), || {
        echo.seen()
            .iter()
            .filter(|(t, _, _)| !t.starts_with("/fail"))
            .count()
            >= 12
    })
    .await;
    let seen = echo.seen();
    let basic = format!("Basic {}", STANDARD.encode(format!("u:{SECRET}")));
    assert!(
        seen.iter().any(|(_, auth, _)| *auth == basic),
        "the password was sent: {seen:?}"
    );
    let escaped = serde_json::to_string(SECRET).unwrap();
    assert!(
        seen.iter().any(|(_, _, body)| body.contains(&escaped)),
        "the body carried it"
    );
    assert!(
        seen.iter().any(|(_, _, body)| body.contains(HOST_SECRET)),
        "and the other one"
    );

    let dead_lettered = "hookd_deliveries_dead_lettered_total";
    wait_until("the dead-letter series", Duration::from_secs(10), || {
        http_get(port, "/metrics").is_some_and(|(_, body)| body.contains(dead_lettered))
    })
    .await;
    let (_, metrics) = http_get(port, "/metrics").unwrap();

    // The api's test of every integration, while the worker runs.
    let mut tests = String::new();
    for (label, id) in &ids {
        let path = format!("/v1/orgs/acme/integrations/{id}/test");
        let (status, answer) = acme.raw(Method::POST, &path, None).await.unwrap();
        assert_eq!(status, 200, "{label}: {answer}");
        assert!(answer.get("outcome").is_some(), "{label}: {answer}");
        tests.push_str(&format!("{label}: {answer}\n"));
    }

    // A drained, stopped worker has flushed its last traffic records.
    let term = Command::new("kill")
        .args(["-TERM", &worker.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let exit = worker.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}; log:\n{}", log_tail());

    // The delivery log of every integration, once the api has read it.
    let mut logs = String::new();
    for (label, id) in &ids {
        let path = format!("/v1/orgs/acme/integrations/{id}/log");
        let end = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = acme.call(Method::GET, &path, None).await.unwrap();
            let count = |kind: &str| answer[kind].as_array().map_or(0, Vec::len);
            if count("successes") + count("errors") > 0 {
                logs.push_str(&format!("{label}: {answer}\n"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "{label}: nothing in the delivery log"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        logs.lines()
            .any(|l| l.starts_with("deliver-500: ") && l.contains("[[SENSITIVE]]")),
        "deliver-500's request shows the secret masked:\n{logs}"
    );

    // Everything each topic holds: read until nothing more comes.
    let k = &s.kafka;
    let rest = Duration::from_secs(5);
    let responses = broker.read_all(&k.responses_topic, usize::MAX, rest).await;
    let log_topic = broker.read_all(&k.log_topic, usize::MAX, rest).await;
    let stats = broker.read_all(&k.stats_topic, usize::MAX, rest).await;
    let letters = broker
        .read_all(&k.dead_letter_topic, usize::MAX, rest)
        .await;
    api.stop().await;

    // Every path ran and showed what it masked. Response events as
    // "<name> <data>":
    let events: Vec<String> = responses
        .iter()
        .map(|(_, v)| {
            let e: Value = serde_json::from_slice(v).unwrap();
            format!(
                "{} {}",
                e["name"].as_str().unwrap(),
                e["data"].as_str().unwrap()
            )
        })
        .collect();
    for shown in [
        "[[SENSITIVE]]/resp/0 ",                   // responseTopic
        "[[SENSITIVE]]/failed/0 error status 500", // errorResponseTopic
        " from [[SENSITIVE]].invalid",             // a host built from a secret
        " error rendering the request: ",
        " error rendering the response: ",
        " raw=[[SENSITIVE]] ", // an echo
        " data:text/plain;base64,",
        " got [[SENSITIVE]] ", // responseTemplate over an echo
    ] {
        assert!(
            events.iter().any(|e| e.contains(shown)),
            "{shown:?} in {events:#?}"
        );
    }
    assert!(
        !log_topic.is_empty() && !stats.is_empty(),
        "traffic published"
    );
    let stderr = worker_log();
    for line in ["delivery dead-lettered", "webhook failed"] {
        assert!(
            stderr.contains(line),
            "{line:?} logged (debug on):\n{}",
            log_tail()
        );
    }

    let channels = [
        ("worker log", stderr),
        ("worker /metrics", metrics),
        ("dead-letter topic", records_text(&letters)),
        ("responses topic", records_text(&responses)),
        ("delivery-log topic", records_text(&log_topic)),
        ("stats topic", records_text(&stats)),
        ("api test answers", tests),
        ("api log answers", logs),
    ];
    let mut leaks = Vec::new();
    for (channel, text) in &channels {
        assert!(!text.trim().is_empty(), "{channel} is empty");
        let found = findings(text);
        let more = found.len().saturating_sub(10);
        leaks.extend(
            found
                .into_iter()
                .take(10)
                .map(|f| format!("{channel}: {f}")),
        );
        if more > 0 {
            leaks.push(format!("{channel}: … and {more} more"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
