//! A place's integrations: one line each with today's (UTC) and the kept
//! days' traffic, where it executes and whether it is enabled.
//!
//! In: a signed-in session at an org's, a product's or the sandbox's page.
//! Out: the list as the REST `list` answers the session's caller, product
//! ids named after the org's catalog.

use std::sync::Arc;

use super::layout::{counts, page, product_list, PageResult};
use super::request::{product_names, session_at};
use crate::control::api::app::Api;
use crate::control::api::extract::PlacePath;
use crate::control::api::integrations;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use maud::html;

pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(path): Path<PlacePath>,
) -> PageResult {
    let (s, here) = session_at(&api, &headers, &path)?;
    let Json(listed) = integrations::list(State(api.clone()), here.at.clone()).await;
    let names = product_names(&api, &here.at).await;
    let items = listed.integrations;
    let days = api.history.days();
    let content = html! {
        p { a href={ (here.base) "/integrations/new" } { "Create an integration" } }
        @if items.is_empty() { p { "No integrations yet." } } @else {
            table {
                caption { "Integrations, with today's (UTC) and the kept days' attempts" }
                thead { tr {
                    th scope="col" { "Name" } th scope="col" { "Event" } th scope="col" { "Executes on" }
                    th scope="col" { "Today ok" } th scope="col" { "Today error" } th scope="col" { "Today skipped" }
                    th scope="col" { "last " (days) " days ok/error/skipped" } th scope="col" { "Status" }
                } }
                tbody {
                    @for i in &items {
                        @let kept = &i.traffic.last_days;
                        tr {
                            td { a href={ (here.base) "/integrations/" (i.id) } { (i.name) } }
                            td { (i.event) }
                            td {
                                @if i.shared {
                                    "shared: " (product_list(i.products(), &names))
                                } @else if let Some(p) = i.product_id() {
                                    (product_list(&[p], &names))
                                } @else { "sandbox" }
                            }
                            (counts(&i.traffic.today))
                            td { (format!("{}/{}/{}", kept.success, kept.error, kept.skipped)) }
                            td { @if i.disabled { "disabled" } @else { "enabled" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&format!("{} → Integrations", here.title), Some(&s), content).into_response())
}
