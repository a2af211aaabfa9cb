//! The api's rules: every validation rule answers with its message, and of
//! two concurrent edits on one version exactly one wins.

use crate::common::*;
use hyper::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_answers_with_its_message() {
    let ControlPlane {
        broker: _broker,
        api,
        acme,
        ..
    } = ControlPlane::start().await;
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
    let ControlPlane {
        broker: _broker,
        api,
        acme,
        ..
    } = ControlPlane::start().await;
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
