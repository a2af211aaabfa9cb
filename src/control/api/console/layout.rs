//! What every console page is made of: the page around its content, the
//! answer when there is no page (to sign-in, or the api's refusal as a
//! page), redirects, and the small pieces several pages show.

use std::collections::HashMap;

use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::control::api::auth::Principal;
use crate::control::api::error::ApiError;
use crate::control::api::sessions::Session;
use crate::model::outcome::Counts;

/// A page for a signed-in person, or why there is none.
pub(super) enum Failure {
    /// Not signed in: to the sign-in page.
    SignIn,
    /// The api's refusal, shown as a page with its status.
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::SignIn => redirect("/sign-in"),
            Failure::Api(e) => {
                let title = match e.status {
                    StatusCode::NOT_FOUND => "Not found",
                    StatusCode::FORBIDDEN => "Not allowed",
                    _ => "Error",
                };
                let body = page(
                    title,
                    None,
                    html! { p.error role="alert" { (e.error) } p { a href="/" { "Home" } } },
                );
                (e.status, body).into_response()
            }
        }
    }
}

pub(super) type PageResult = Result<Response, Failure>;

/// A page that is not there, or not the caller's: the same answer.
pub(super) fn not_found() -> Failure {
    Failure::Api(ApiError::not_found("page"))
}

pub(super) fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#00313c;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1rem 1.2rem;max-width:72rem}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccd;padding:.25rem .5rem;text-align:left}\
.banner{background:#fff6d6;border:1px solid #e0c060;padding:.6rem;margin:.6rem 0}\
.error{color:#a40000;font-weight:600}label{display:block;margin-top:.6rem;font-weight:600}\
input[type=text],textarea,select{width:100%;max-width:40rem;box-sizing:border-box;font-family:monospace}\
textarea{min-height:5rem}.ok{color:#126b12}.chart{margin:.4rem 0}\
button{margin-top:.8rem;padding:.35rem .9rem}pre{background:#f4f5f7;padding:.6rem;overflow:auto}\
nav.tabs a{margin-right:1rem}fieldset{max-width:42rem;margin-top:1rem}";

pub(super) fn page(title: &str, signed_in: Option<&Session>, content: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · hookd" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    header {
                        a href="/" { strong { "hookd" } }
                        @if let Some(s) = signed_in {
                            span { (who(&s.who)) }
                            form method="post" action="/sign-out" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main {
                        h1 { (title) }
                        (content)
                    }
                }
            }
        }
        .into_string(),
    )
}

fn who(p: &Principal) -> String {
    match p {
        Principal::Org(o) => format!("organization {o}"),
        Principal::User(u) => format!("user {u}"),
        Principal::Operator => "operator".into(),
    }
}

pub(super) fn csrf_input(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// Success, error and skipped counts as table cells.
pub(super) fn counts(c: &Counts) -> Markup {
    html! {
        td { (c.success) } td { (c.error) } td { (c.skipped) }
    }
}

/// Product ids as `name (id)` where the name is known.
pub(super) fn product_list(ids: &[u32], names: &HashMap<u64, String>) -> String {
    ids.iter()
        .map(|&p| match names.get(&u64::from(p)) {
            Some(n) => format!("{n} ({p})"),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
