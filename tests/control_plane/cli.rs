//! `hookd integrations …`, the CLI client, against a running api: create,
//! list, get, edit, separate, test, history, log and delete, and its
//! failures with the api's message.

use crate::common::*;
use serde_json::{json, Value};

/// Runs `hookd integrations …` against `api` with `token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_client_manages_integrations() {
    let ControlPlane {
        broker: _broker,
        receiver,
        api,
        ..
    } = ControlPlane::start().await;
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
