//! One integration's page: shared banner, 30-day charts in aggregate and
//! per product, delivery log, request preview and config (the password
//! masked); and its test and enable/disable buttons.
//!
//! In: a signed-in session at the integration's place. Out: the page made
//! from the REST `get`, `log` and `preview` answers to the session's caller
//! (and `test`'s, after a test); a toggle saves `disabled` through `edit`.
//! A shared integration is edited and toggled at its org's address.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use maud::{html, Markup};
use serde_json::Value;

use super::layout::{counts, csrf_input, page, product_list, redirect, PageResult};
use super::request::{field, fields, posted_at, product_names, session_at, shown, Here};
use crate::control::api::app::Api;
use crate::control::api::auth::Principal;
use crate::control::api::extract::{ItemId, PlacePath};
use crate::control::api::sessions::Session;
use crate::control::api::views::DayCounts;
use crate::control::api::{integrations, traffic};

/// A stacked bar chart of daily success (blue), error (red) and skipped
/// (grey), with the same numbers in a table.
fn chart(caption: &str, days: &[DayCounts]) -> Markup {
    let max = days
        .iter()
        .map(|d| d.counts.total())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h) = (12u64, 100u64);
    let width = w * days.len() as u64;
    // (x, top, height, color, tooltip): each day's kinds stacked upwards.
    let mut bars = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let mut y = h;
        for (key, n, color) in [
            ("success", d.counts.success, "#1f6fd1"),
            ("error", d.counts.error, "#c62828"),
            ("skipped", d.counts.skipped, "#9e9e9e"),
        ] {
            let height = n * h / max;
            if height > 0 {
                y -= height;
                let tip = format!("{} {key}: {n}", d.date);
                bars.push((i as u64 * w, y, height, color, tip));
            }
        }
    }
    html! {
        figure.chart {
            svg role="img" aria-label=(caption) width=(width) height=(h) viewBox={ "0 0 " (width) " " (h) } {
                rect x="0" y="0" width=(width) height=(h) fill="#f4f5f7" {}
                @for (x, y, height, color, tip) in &bars {
                    rect x=(x) y=(y) width=(w - 2) height=(height) fill=(color) { title { (tip) } }
                }
            }
            figcaption { (caption) " (blue: success, red: error, grey: skipped)" }
        }
        details {
            summary { "Numbers: " (caption) }
            table {
                thead { tr { th scope="col" { "Day" } th scope="col" { "Success" } th scope="col" { "Error" } th scope="col" { "Skipped" } } }
                tbody {
                    @for d in days {
                        tr { th scope="row" { (d.date) } (counts(&d.counts)) }
                    }
                }
            }
        }
    }
}

fn delivery_log(log: &Value) -> Markup {
    html! {
        @for (kind, title) in [("successes", "Last successes"), ("errors", "Last errors")] {
            h3 { (title) }
            @let entries = log[kind].as_array().cloned().unwrap_or_default();
            @if entries.is_empty() { p { "None." } }
            @for e in entries.iter().rev() {
                details {
                    summary {
                        (e["at"].as_str().unwrap_or_default()) " · product " (e["product"]) " · "
                        @if let Some(status) = e["response"]["status"].as_u64() { "status " (status) }
                        @else { (e["error"].as_str().unwrap_or_default()) }
                    }
                    h4 { "Event" } pre { (serde_json::to_string_pretty(&e["event"]).unwrap_or_default()) }
                    h4 { "Request" } pre { (serde_json::to_string_pretty(&e["request"]).unwrap_or_default()) }
                    @if !e["response"].is_null() { h4 { "Response" } pre { (serde_json::to_string_pretty(&e["response"]).unwrap_or_default()) } }
                    @if let Some(err) = e["error"].as_str() { h4 { "Error" } pre { (err) } }
                }
            }
        }
    }
}

pub(super) async fn view(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    ItemId(id): ItemId,
) -> PageResult {
    let (s, here) = session_at(&api, &headers, &path)?;
    view_page(&api, &s, &here, &id, None).await
}

/// The page of integration `id`, with a test's outcome when there was one.
async fn view_page(
    api: &Arc<Api>,
    s: &Session,
    here: &Here,
    id: &str,
    tested: Option<Value>,
) -> PageResult {
    let i = shown(api, &here.at, id).await?;
    let Json(log) =
        traffic::log(State(api.clone()), here.at.clone(), ItemId(id.to_owned())).await?;
    let log = serde_json::to_value(log).expect("a delivery log serializes");
    let Json(preview) =
        traffic::preview(State(api.clone()), here.at.clone(), ItemId(id.to_owned())).await?;
    let id = i.summary.id.clone();
    let names = product_names(api, &here.at).await;
    let page_path = format!("{}/integrations/{id}", here.base);
    let shared = i.summary.shared;
    // A shared integration is edited (and enabled or disabled) at its
    // org's address, by the org or the operator; a product's page links
    // there.
    let owner_path = match (shared, i.summary.org(), &s.who) {
        (false, _, _) => Some(page_path.clone()),
        (true, Some(org), Principal::Org(mine)) if mine == org => Some(org_path(org, &id)),
        (true, Some(org), Principal::Operator) => Some(org_path(org, &id)),
        _ => None,
    };
    let mut config = Value::Object(i.config.clone());
    if config["auth"]["password"].is_string() {
        config["auth"]["password"] = "••••••".into();
    }
    let today = i.summary.traffic.today;
    let content = html! {
        @if shared {
            div.banner role="note" {
                "This integration is shared: it executes on "
                (product_list(i.summary.products(), &names))
                @if here.product.is_some() {
                    ". Editing it here changes it for every one of them; to change it for this product only, separate it."
                } @else { "." }
            }
        }
        p {
            @if let Some(owner) = &owner_path { a href={ (owner) "/edit" } { "Edit" } " · " }
            @if shared { @if let Some(p) = &here.product {
                a href={ "/products/" (p) "/integrations/" (id) "/separate" } { "Separate integration" } " · "
            } }
            a href={ (here.base) "/integrations" } { "All integrations" }
        }
        table {
            tbody {
                tr { th scope="row" { "Event" } td { (i.summary.event) } }
                tr { th scope="row" { "URL" } td { (i.summary.url.as_deref().unwrap_or_default()) } }
                tr { th scope="row" { "Status" } td { @if i.summary.disabled { "disabled" } @else { "enabled" } } }
                tr { th scope="row" { "Today" } td { "ok " (today.success) ", error " (today.error) ", skipped " (today.skipped) } }
            }
        }
        @if let Some(owner) = &owner_path {
            form method="post" action={ (owner) "/toggle" } {
                (csrf_input(s))
                input type="hidden" name="disabled" value=(if i.summary.disabled { "false" } else { "true" });
                button type="submit" { @if i.summary.disabled { "Enable" } @else { "Disable" } }
            }
        }
        form method="post" action={ (page_path) "/test" } {
            (csrf_input(s))
            button type="submit" { "Test" }
        }
        @if let Some(t) = &tested {
            div role="status" id="test-outcome" {
                h2 { "Test: " span class=(if t["outcome"] == "success" { "ok" } else { "error" }) { (t["outcome"].as_str().unwrap_or("error")) } }
                pre { (serde_json::to_string_pretty(t).unwrap_or_default()) }
            }
        }
        h2 { "History, last " (i.history.days) " days" }
        (chart("All products", &i.history.aggregate))
        @for p in &i.history.per_product {
            h3 {
                @if let Some(link) = &p.link {
                    a href={ "/products/" (p.product) "/integrations" } data-api=(link) { (p.name.as_deref().unwrap_or_default()) " (" (p.product) ")" }
                } @else { "Product " (p.product) }
            }
            (chart(&format!("Product {}", p.product), &p.days))
        }
        h2 { "Delivery log" }
        (delivery_log(&log))
        h2 { "Request preview" }
        p { "What this integration would send for a sample event (secrets masked; nothing is sent)." }
        pre { (serde_json::to_string_pretty(&preview).unwrap_or_default()) }
        h2 { "Config" }
        pre { (serde_json::to_string_pretty(&config).unwrap_or_default()) }
    };
    let title = format!("{} → {}", here.title, i.summary.name);
    Ok(page(&title, Some(s), content).into_response())
}

/// The console address of org `org`'s integration `id`.
fn org_path(org: &str, id: &str) -> String {
    let org: String = form_urlencoded::byte_serialize(org.as_bytes()).collect();
    format!("/orgs/{org}/integrations/{id}")
}

/// `POST …/integrations/{id}/test`: the page again, with the outcome.
pub(super) async fn test(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    ItemId(id): ItemId,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let (s, here) = posted_at(&api, &headers, &path, &f)?;
    let tested = traffic::test(State(api.clone()), here.at.clone(), ItemId(id.clone())).await;
    let outcome = match tested {
        Ok(Json(t)) => serde_json::to_value(t).expect("a test's outcome serializes"),
        Err(e) => serde_json::json!({"outcome": "error", "error": e.error}),
    };
    view_page(&api, &s, &here, &id, Some(outcome)).await
}

/// `POST …/integrations/{id}/toggle`: enabled or disabled, back to its page.
pub(super) async fn toggle(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
    ItemId(id): ItemId,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let (_, here) = posted_at(&api, &headers, &path, &f)?;
    // The state asked for, not a flip: a repeated post changes nothing.
    let wanted = field(&f, "disabled") == Some("true");
    let change =
        serde_json::json!({"disabled": if wanted { Value::Bool(true) } else { Value::Null }});
    let _edited = integrations::edit(
        State(api.clone()),
        Ok(here.at.clone()),
        ItemId(id.clone()),
        Bytes::from(change.to_string()),
    )
    .await?;
    Ok(redirect(&format!("{}/integrations/{id}", here.base)))
}
