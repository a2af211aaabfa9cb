//! The api as Particle's tools and curl examples call it, without the tools
//! themselves (tests/particle_tools.rs drives those): edits change only the
//! fields they carry (`null` removes one, aliases too), the creation date
//! is hookd's, tokens in the query string or a form body (a header wins),
//! form bodies with qs's list forms, the older webhooks API under the same
//! tenant rules (another user's webhook is not found), and errors with `ok`
//! and `error_description`.

mod common;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

/// One HTTP/1.1 request on a fresh connection: the status and JSON body.
async fn http(base: &str, request: String) -> (u16, Value) {
    let addr = base.trim_start_matches("http://").to_owned();
    tokio::task::spawn_blocking(move || {
        let (status, _, body) =
            http_exchange(&addr, &request.replace("{host}", &addr)).expect("the api answers");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

fn get(path: &str, header: Option<&str>) -> String {
    let auth = header
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {{host}}\r\n{auth}Connection: close\r\n\r\n")
}

fn form_post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {{host}}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn particles_api_calls_keep_hookds_rules() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let base = api.client.base().to_owned();
    let acme = api.as_token(ACME);
    let alice = api.as_token(ALICE);
    let bob = api.as_token(BOB);

    // Partial edits: what is given changes, the rest stays; null removes.
    let made = alice
        .call(
            Method::POST,
            "/v1/integrations",
            Some(&json!({"event": "t", "url": "https://example.com/a", "deviceid": "E00FCE68AAAAAAAAAAAAAAAA",
                         "headers": {"X-A": "1"}, "created_at": "not a date"})),
        )
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/integrations/{id}");
    let created_at = made["created_at"].as_str().unwrap().to_owned();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&created_at).is_ok(),
        "{created_at}"
    );
    let edited = alice
        .call(
            Method::PUT,
            &path,
            Some(&json!({"url": "https://example.com/b", "created_at": "2000-01-01T00:00:00Z"})),
        )
        .await
        .unwrap();
    let c = &edited["config"];
    assert_eq!(
        (&c["event"], &c["url"], &c["deviceID"]),
        (
            &json!("t"),
            &json!("https://example.com/b"),
            &json!("E00FCE68AAAAAAAAAAAAAAAA")
        )
    );
    assert_eq!(c["headers"], json!({"X-A": "1"}));
    assert_eq!(edited["created_at"], created_at, "the creation date stays");
    let edited = alice
        .call(
            Method::PUT,
            &path,
            Some(&json!({"headers": null, "deviceId": null})),
        )
        .await
        .unwrap();
    let c = &edited["config"];
    assert!(
        c.get("headers").is_none() && c.get("deviceID").is_none(),
        "{c}"
    );
    // Placement stays the path's; a required field cannot be removed.
    for (body, field) in [
        (json!({"owner": "bob"}), "owner"),
        (json!({"id": null}), "id"),
        (json!({"event": null}), "event"),
        (json!({"event": "a", "eventName": "b"}), "eventName"),
    ] {
        let (status, answer) = alice.raw(Method::PUT, &path, Some(&body)).await.unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert_eq!(answer["error"], answer["error_description"]);
    }

    // The older webhooks API: the same integrations, the same owners.
    let (status, listed) = alice.raw(Method::GET, "/v1/webhooks", None).await.unwrap();
    assert_eq!(status, 200);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["id"] == id.as_str() && h["integration_type"] == "Webhook"));
    let (status, _) = bob
        .raw(Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404, "another user's webhook is not found");
    let (status, _) = bob
        .raw(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = acme.raw(Method::GET, "/v1/webhooks", None).await.unwrap();
    assert_eq!(status, 403, "an org token has no sandbox");
    let (status, hooks) = bob.raw(Method::GET, "/v1/webhooks", None).await.unwrap();
    assert_eq!((status, hooks), (200, json!([])));

    // Tokens: the query string, a form body; a header wins over both.
    let (status, answer) = http(
        &base,
        get(&format!("/v1/integrations?access_token={ALICE}"), None),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["integrations"][0]["id"], id.as_str());
    let (status, answer) = http(
        &base,
        get(&format!("/v1/integrations?access_token={ALICE}"), Some(BOB)),
    )
    .await;
    assert_eq!(
        (status, answer["integrations"].as_array().map(Vec::len)),
        (200, Some(0)),
        "bob's header wins"
    );
    let (status, answer) = http(&base, get("/v1/integrations?access_token=nope", None)).await;
    assert_eq!(status, 401);
    assert!(answer["error_description"].is_string(), "{answer}");

    // A form body on an org route, qs's list forms and nested fields.
    let body = format!(
        "access_token={ACME}&event=form&url=https%3A%2F%2Fexample.com%2Ff&products%5B0%5D=1&products%5B1%5D=2\
         &json%5Bitems%5D%5B0%5D%5Bk%5D=a&noDefaults=true"
    );
    let (status, created) = http(&base, form_post("/v1/orgs/acme/integrations", &body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["products"], json!([1, 2]));
    assert_eq!(created["config"]["json"], json!({"items": [{"k": "a"}]}));
    assert_eq!(created["config"]["noDefaults"], true);
    // A form without a token is refused as any request without one.
    let (status, _) = http(
        &base,
        form_post(
            "/v1/orgs/acme/integrations",
            "event=x&url=https%3A%2F%2Fe.example%2F",
        ),
    )
    .await;
    assert_eq!(status, 401);
    // Another org's token in a form body is refused there.
    let (status, _) = http(
        &base,
        form_post(
            "/v1/orgs/acme/integrations",
            &format!(
                "access_token={OTHER}&event=x&url=https%3A%2F%2Fe.example%2F&products%5B%5D=1"
            ),
        ),
    )
    .await;
    assert_eq!(status, 403);

    // A Particle export's own id is left behind on create; never on edit.
    let (status, answer) = alice
        .raw(
            Method::PUT,
            &path,
            Some(&json!({"id": "5f8e4a2b9c1d3e7f60a1b2c3"})),
        )
        .await
        .unwrap();
    assert_eq!((status, &answer["field"]), (400, &json!("id")));
    api.stop().await;
}
