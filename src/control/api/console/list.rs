//! A place's integrations: one line each with today's (UTC) and the kept
//! days' traffic, where it executes and whether it is enabled.
//!
//! In: a signed-in session at an org's, a product's or the sandbox's page.
//! Out: the list as the REST `list` answers the session's caller, product
//! ids named after the org's catalog.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use maud::html;
use serde_json::Value;

use super::layout::{counts, page, product_list, PageResult};
use super::request::{product_names, session_at};
use crate::control::api::app::Api;
use crate::control::api::extract::PlacePath;
use crate::control::api::integrations;

pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
) -> PageResult {
    let (s, here) = session_at(&api, &headers, &path)?;
    let Json(listed) = integrations::list(State(api.clone()), here.at.clone()).await;
    let names = product_names(&api, &here.at).await;
    let items = listed.integrations;
    let days = items
        .first()
        .and_then(|i| i["traffic"].as_object())
        .and_then(|t| t.keys().find(|k| k.starts_with("last_")).cloned())
        .unwrap_or_else(|| "last_30_days".into());
    let content = html! {
        p { a href={ (here.base) "/integrations/new" } { "Create an integration" } }
        @if items.is_empty() { p { "No integrations yet." } } @else {
            table {
                caption { "Integrations, with today's (UTC) and the kept days' attempts" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Event" } th scope="col" { "Executes on" }
                    th scope="col" { "Today ok" } th scope="col" { "Today error" } th scope="col" { "Today skipped" }
                    th scope="col" { (days.replace('_', " ")) " ok/error/skipped" } th scope="col" { "Status" }
                } }
                tbody {
                    @for i in &items {
                        @let id = i["id"].as_str().unwrap_or_default();
                        tr {
                            td { a href={ (here.base) "/integrations/" (id) } { (i["name"].as_str().unwrap_or(id)) } }
                            td { (i["event"].as_str().unwrap_or_default()) }
                            td {
                                @if i["shared"] == true {
                                    "shared: " (product_list(&i["products"], &names))
                                } @else if let Some(p) = i["product_id"].as_u64() {
                                    (product_list(&Value::from(vec![p]), &names))
                                } @else { "sandbox" }
                            }
                            (counts(&i["traffic"]["today"]))
                            td { (format!("{}/{}/{}", i["traffic"][&days]["success"], i["traffic"][&days]["error"], i["traffic"][&days]["skipped"])) }
                            td { @if i["disabled"] == true { "disabled" } @else { "enabled" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("{} → Integrations", here.title), Some(&s), content).into_response())
}
