//! Particle's own tools against hookd's api, unchanged: the JavaScript SDK
//! (`particle-api-js`) creates, lists, edits (partially) and deletes
//! sandbox, product and org integrations and uses the older webhooks API;
//! the `particle` CLI creates, lists and deletes webhooks from a profile
//! pointing at hookd. Each result is read back through hookd's own api;
//! another org's token gets nothing. Ignored in a plain `cargo test`: it
//! needs the npm packages, which `scripts/particle` installs and runs it
//! with (PARTICLE_TOOLS names their folder).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hyper::Method;
use serde_json::{json, Value};

const RECEIVER: &str = "https://example.com/in";

fn tools() -> PathBuf {
    PathBuf::from(
        std::env::var("PARTICLE_TOOLS")
            .expect("PARTICLE_TOOLS: the folder scripts/particle installed the npm packages in"),
    )
}

/// Runs `tests/particle/sdk.js` with `args`; its steps.
async fn sdk(api: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/particle/sdk.js");
    let mut command = Command::new("node");
    command
        .arg(script)
        .args(args)
        .env("NODE_PATH", tools().join("node_modules"))
        .env("HOOKD_API", api)
        .env("ORG_TOKEN", ACME)
        .env("USER_TOKEN", ALICE)
        .env("FOREIGN_TOKEN", OTHER)
        .env("RECEIVER", RECEIVER);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run node");
    assert!(
        out.status.success(),
        "sdk.js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sdk.js printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `particle <args>` with a profile whose API is `api` and token `token`.
async fn particle(home: &Path, api: &str, token: &str, args: &[&str]) -> (bool, String) {
    let dir = home.join(".particle");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("particle.config.json"),
        json!({"apiUrl": api, "access_token": token}).to_string(),
    )
    .unwrap();
    let mut command = Command::new(tools().join("node_modules/.bin/particle"));
    command
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("PARTICLE_DISABLE_UPDATE", "1");
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run particle");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok<'a>(steps: &'a Value, name: &str) -> &'a Value {
    let s = &steps[name];
    assert_eq!(s["ok"], true, "{name}: {s}");
    &s["body"]
}

fn refused(steps: &Value, name: &str) -> u64 {
    let s = &steps[name];
    assert_eq!(s["ok"], false, "{name} should be refused: {s}");
    s["status"].as_u64().unwrap_or_default()
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Particle's SDK and CLI from npm: run scripts/particle"]
async fn particles_sdk_and_cli_manage_integrations_in_hookd() {
    let broker = Broker::start();
    let s = with_api(settings(&broker));
    create_topics(&broker, &s, 1).await;
    let api = start_api(&s).await;
    catalog(&api.client).await;
    let base = api.client.base().to_owned();
    let acme = api.as_token(ACME);
    let alice = api.as_token(ALICE);
    let config_of = |v: Value| v["config"].clone();

    let steps = sdk(&base, &[]).await;
    let id = |key: &str| {
        steps["ids"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {steps}"))
            .to_owned()
    };

    // Org: created with its products, edited partially (the URL only).
    ok(&steps, "create_org");
    // Listed as Particle lists them: a bare array.
    assert!(ok(&steps, "list_org")
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == id("org").as_str() && i["integration_type"] == "Webhook"));
    ok(&steps, "edit_org");
    let org = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{}", id("org")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(org["products"], json!([1, 2]), "{org}");
    assert_eq!(org["version"], 2, "{org}");
    let c = config_of(org);
    assert_eq!(
        (&c["event"], &c["url"]),
        (&json!("sdk-org"), &json!(format!("{RECEIVER}/org-edited")))
    );

    // Product: the event edited, everything else kept.
    ok(&steps, "create_product");
    assert!(ids(ok(&steps, "list_product")).contains(&id("product").as_str()));
    ok(&steps, "edit_product");
    let c = config_of(
        acme.call(
            Method::GET,
            &format!("/v1/products/1/integrations/{}", id("product")),
            None,
        )
        .await
        .unwrap(),
    );
    assert_eq!(c["event"], "sdk-product-2");
    assert_eq!(c["url"], format!("{RECEIVER}/product"));
    assert_eq!(c["noDefaults"], true);
    assert_eq!(c["json"], json!({"v": "{{{PARTICLE_EVENT_VALUE}}}"}));
    assert_eq!(c["integration_type"], "Webhook");

    // Sandbox: the SDK's `deviceid` taken; a header added, the rest kept.
    ok(&steps, "create_sandbox");
    assert!(ids(ok(&steps, "list_sandbox")).contains(&id("sandbox").as_str()));
    ok(&steps, "edit_sandbox");
    let c = config_of(
        alice
            .call(
                Method::GET,
                &format!("/v1/integrations/{}", id("sandbox")),
                None,
            )
            .await
            .unwrap(),
    );
    assert_eq!(c["deviceID"], "e00fce68aaaaaaaaaaaaaaaa");
    assert_eq!(c["headers"], json!({"X-From": "sdk"}));
    assert_eq!(c["url"], format!("{RECEIVER}/sandbox"));

    // Another org's token: refused, and nothing changed.
    assert_eq!(refused(&steps, "foreign_list"), 403);
    assert!(matches!(refused(&steps, "foreign_edit"), 403 | 404));
    let org = acme
        .call(
            Method::GET,
            &format!("/v1/orgs/acme/integrations/{}", id("org")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(org["version"], 2, "the foreign edit changed nothing: {org}");

    // The webhooks API: the SDK's legacy payload mapped field by field.
    assert_eq!(ok(&steps, "create_webhook")["ok"], true);
    let c = config_of(
        alice
            .call(
                Method::GET,
                &format!("/v1/integrations/{}", id("webhook")),
                None,
            )
            .await
            .unwrap(),
    );
    assert_eq!(
        (&c["event"], &c["url"], &c["requestType"], &c["deviceID"]),
        (
            &json!("sdk-webhook"),
            &json!(format!("{RECEIVER}/webhook")),
            &json!("PUT"),
            &json!("e00fce68bbbbbbbbbbbbbbbb")
        )
    );
    assert_eq!(
        (&c["rejectUnauthorized"], &c["noDefaults"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(c["headers"], json!({"X-Hook": "yes"}));
    assert_eq!(c["json"], json!({"d": "{{{PARTICLE_EVENT_VALUE}}}"}));
    assert_eq!(
        (&c["responseTopic"], &c["errorResponseTopic"]),
        (&json!("sdk-response"), &json!("sdk-error"))
    );
    assert_eq!(ok(&steps, "create_product_webhook")["ok"], true);
    acme.call(
        Method::GET,
        &format!("/v1/products/2/integrations/{}", id("product_webhook")),
        None,
    )
    .await
    .expect("the product webhook is product 2's");
    let listed = ok(&steps, "list_webhooks");
    assert!(ids(listed).contains(&id("webhook").as_str()), "{listed}");
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["created_at"].is_string() && h["integration_type"] == "Webhook"));
    assert!(ids(ok(&steps, "list_product_webhooks")).contains(&id("product_webhook").as_str()));

    // The token in the query string and in a form body; none at all.
    assert!(ids(&ok(&steps, "query_token")["integrations"]).contains(&id("sandbox").as_str()));
    let form = ok(&steps, "form_create");
    assert_eq!(form["product_id"], 3, "{form}");
    let c = &form["config"];
    assert_eq!(
        (&c["requestType"], &c["query"], &c["noDefaults"]),
        (&json!("GET"), &json!({"k": "v"}), &json!(true))
    );
    let none = &steps["no_token"];
    assert_eq!(none["status"], 401, "{none}");
    assert!(none["body"]["error_description"].is_string(), "{none}");

    // The CLI, from a profile pointing at hookd.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("hook.json"),
        json!({"eventName": "cli-hook", "url": format!("{RECEIVER}/cli"), "requestType": "POST",
               "json": {"t": "{{{t}}}"}, "mydevices": true})
        .to_string(),
    )
    .unwrap();
    let (created, out) = particle(
        home.path(),
        &base,
        ALICE,
        &["webhook", "create", "hook.json"],
    )
    .await;
    assert!(created, "{out}");
    let cli_id = out
        .split("Successfully created webhook with ID ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in: {out}"))
        .to_owned();
    let c = config_of(
        alice
            .call(Method::GET, &format!("/v1/integrations/{cli_id}"), None)
            .await
            .unwrap(),
    );
    assert_eq!(
        (&c["event"], &c["json"]),
        (&json!("cli-hook"), &json!({"t": "{{{t}}}"}))
    );
    let (listed, out) = particle(home.path(), &base, ALICE, &["webhook", "list"]).await;
    assert!(listed, "{out}");
    assert!(
        out.contains(&format!("Hook ID {cli_id} is watching for \"cli-hook\"")),
        "{out}"
    );
    assert!(!out.contains("created at undefined"), "{out}");
    // Another org's token cannot delete it; its owner can.
    let (_, out) = particle(home.path(), &base, OTHER, &["webhook", "delete", &cli_id]).await;
    assert!(!out.contains("Successfully deleted"), "{out}");
    alice
        .call(Method::GET, &format!("/v1/integrations/{cli_id}"), None)
        .await
        .expect("still there");
    let (deleted, out) = particle(home.path(), &base, ALICE, &["webhook", "delete", &cli_id]).await;
    assert!(
        deleted && out.contains("Successfully deleted webhook!"),
        "{out}"
    );
    assert!(alice
        .call(Method::GET, &format!("/v1/integrations/{cli_id}"), None)
        .await
        .is_err());

    // The SDK's deletes, each gone from hookd afterwards.
    let ids_arg = steps["ids"].to_string();
    let deleted = sdk(&base, &["delete", &ids_arg]).await;
    assert!(matches!(refused(&deleted, "foreign_delete"), 403 | 404));
    for name in [
        "delete_org",
        "delete_product",
        "delete_sandbox",
        "delete_webhook",
        "delete_product_webhook",
    ] {
        ok(&deleted, name);
    }
    for (client, path) in [
        (&acme, format!("/v1/orgs/acme/integrations/{}", id("org"))),
        (
            &acme,
            format!("/v1/products/1/integrations/{}", id("product")),
        ),
        (&alice, format!("/v1/integrations/{}", id("sandbox"))),
        (&alice, format!("/v1/integrations/{}", id("webhook"))),
        (
            &acme,
            format!("/v1/products/2/integrations/{}", id("product_webhook")),
        ),
    ] {
        assert!(
            client.call(Method::GET, &path, None).await.is_err(),
            "{path} still there"
        );
    }
    api.stop().await;
}
