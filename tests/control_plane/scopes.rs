//! Tenants kept apart: no token reaches another scope's records, and a
//! tenant never gets another tenant's secret, through the api or past it.

use std::time::Duration;

use crate::common::*;
use hyper::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_another_scope() {
    let ControlPlane {
        broker: _broker,
        api,
        acme,
        ..
    } = ControlPlane::start().await;
    let secret_url = "https://acme.example.com/private-hook";
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
        for tail in ["", "/history", "/log", "/preview"] {
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
            for tail in ["", "/history", "/log", "/preview"] {
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
        for tail in ["", "/history", "/log", "/preview"] {
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
    // The older webhooks routes over the same integrations.
    for (token, status) in [(BOB, 404), (ACME, 403), (OTHER, 403)] {
        cases.push((token, Method::GET, format!("/v1/webhooks/{u}"), status));
        cases.push((token, Method::DELETE, format!("/v1/webhooks/{u}"), status));
    }
    for (token, status) in [(OTHER, 404), (BOB, 403), (ALICE, 403)] {
        cases.push((token, Method::GET, "/v1/products/1/webhooks".into(), status));
        for id in [o, p] {
            cases.push((
                token,
                Method::GET,
                format!("/v1/products/1/webhooks/{id}"),
                status,
            ));
            cases.push((
                token,
                Method::DELETE,
                format!("/v1/products/1/webhooks/{id}"),
                status,
            ));
        }
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
async fn a_tenant_never_gets_another_tenants_secret() {
    let ControlPlane {
        broker,
        s,
        receiver,
        api,
        acme: _,
    } = ControlPlane::start_with(1, |s| {
        s.secrets
            .insert("ACME_KEY".into(), "acme-only-secret-77".into());
        s.secret_scopes
            .insert("ACME_KEY".into(), vec!["org:acme".into()]);
    })
    .await;
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

/// What a request is refused for comes in one order, whoever asks: a body
/// over the limit (413) before the token, a bad query (400) before the
/// token, the token (401) before the path's product, a product that is not
/// a number (404) before access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_in_one_order() {
    let ControlPlane {
        broker: _broker,
        api,
        acme,
        ..
    } = ControlPlane::start().await;
    let hook = acme
        .call(
            Method::POST,
            "/v1/orgs/acme/integrations",
            Some(&json!({"event": "t", "url": "https://acme.example.com/h", "products": [1]})),
        )
        .await
        .unwrap();
    let id = hook["id"].as_str().unwrap();
    let big = json!({"event": "t", "url": "https://x.example.com/", "name": "x".repeat(3 << 20)});
    let nobody = api.as_token("");
    for (path, method) in [
        ("/v1/orgs/acme/integrations".to_owned(), Method::POST),
        (format!("/v1/orgs/acme/integrations/{id}"), Method::PUT),
        ("/v1/products/1/integrations".to_owned(), Method::POST),
        (
            format!("/v1/products/1/integrations/{id}/separate"),
            Method::POST,
        ),
        ("/v1/webhooks".to_owned(), Method::POST),
        ("/v1/orgs/acme".to_owned(), Method::PUT),
    ] {
        for client in [&nobody, &api.as_token(OTHER), &acme] {
            let (status, _) = client.raw(method.clone(), &path, Some(&big)).await.unwrap();
            assert_eq!(status, 413, "{method} {path}");
        }
    }
    let (status, answer) = nobody
        .raw(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{id}/history?days=abc"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{answer}");
    for path in [
        "/v1/products/abc/integrations".to_owned(),
        format!("/v1/products/abc/integrations/{id}/preview"),
    ] {
        let (status, answer) = nobody.raw(Method::GET, &path, None).await.unwrap();
        assert_eq!(status, 401, "{path}: {answer}");
        let (status, answer) = acme.raw(Method::GET, &path, None).await.unwrap();
        assert_eq!(status, 404, "{path}: {answer}");
        assert_eq!(answer["error"], "product \"abc\" not found", "{path}");
    }
    // Product 0 and 05: numbers, so access decides (0 is no product; 05 is 5,
    // which no org has).
    for path in [
        "/v1/products/0/integrations",
        "/v1/products/05/integrations",
    ] {
        let (status, answer) = acme.raw(Method::GET, path, None).await.unwrap();
        assert_eq!(status, 404, "{path}: {answer}");
    }
    // %31 is 1: acme's own product.
    let (status, answer) = acme
        .raw(Method::GET, "/v1/products/%31/integrations", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["integrations"][0]["id"], id, "{answer}");
    // The catalog: the operator keeps it (403 before the product's 404).
    let (status, answer) = acme
        .raw(
            Method::PUT,
            "/v1/orgs/acme/products/abc",
            Some(&json!({"name": "n"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{answer}");
}

/// A request answered with its body unread (refused as too large, or
/// refused before it was read) is answered with `Connection: close`: the
/// server drops the connection with the rest of the body unread, and a
/// client reusing it for its next request would fail there. A request whose
/// body was read keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_large_body_closes_its_connection() {
    let ControlPlane {
        broker: _broker,
        api,
        acme,
        ..
    } = ControlPlane::start().await;
    let base = acme.base().trim_start_matches("http://").to_owned();
    let big = vec![b'x'; 3 << 20];
    let small = br#"{"event": "t", "url": "https://acme.example.com/h", "products": [1]}"#;
    for (method, path, token, body, status, closes) in [
        (
            "POST",
            "/v1/orgs/acme/integrations",
            OPERATOR,
            &big[..],
            "413",
            true,
        ),
        ("POST", "/v1/nowhere", OPERATOR, &big[..], "404", true),
        (
            "DELETE",
            "/v1/orgs/acme/integrations/x",
            "",
            &big[..],
            "401",
            true,
        ),
        (
            "POST",
            "/v1/orgs/acme/integrations",
            OPERATOR,
            &small[..],
            "201",
            false,
        ),
    ] {
        let answer = answer_head(&base, method, path, token, body).await;
        assert!(
            answer.starts_with(&format!("http/1.1 {status}")),
            "{method} {path}: {answer}"
        );
        assert_eq!(
            answer.contains("\r\nconnection: close\r\n"),
            closes,
            "{method} {path}: {answer}"
        );
    }
    // And through the client, a refusal then a request, again and again.
    let big = json!({"event": "t", "url": "https://x.example.com/", "products": [1], "name": "x".repeat(3 << 20)});
    for _ in 0..10 {
        let (status, _) = acme
            .raw(Method::POST, "/v1/orgs/acme/integrations", Some(&big))
            .await
            .unwrap();
        assert_eq!(status, 413);
        let (status, answer) = acme
            .raw(Method::GET, "/v1/orgs/acme/integrations", None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
    }
    api.stop().await;
}

/// The head of the answer to one request sent over a connection of its
/// own, lowercased; the body is sent whole unless the server stops reading.
async fn answer_head(base: &str, method: &str, path: &str, token: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base).await.unwrap();
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("authorization: Bearer {token}\r\n")
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {base}\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may stop reading part way: the answer is read either way.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Up to the end of the head (a kept connection does not end).
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
        + "\r\n"
}
