//! Signing in and out, and the home page that leads to the caller's own
//! integrations.
//!
//! In: an api token typed into the sign-in form (its CSRF token doubled in
//! a cookie, there being no session yet). Out: a new session and its
//! cookie, or the form again with 401 for an unknown token; signing out
//! ends the session.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{page, redirect, Failure, PageResult};
use super::request::{
    cookie, cookie_name, field, fields, posted, same, session, set_cookie, SESSION_COOKIE,
    SIGN_IN_COOKIE,
};
use crate::control::api::app::Api;
use crate::control::api::auth::Principal;
use crate::control::api::error::ApiError;
use crate::control::api::sessions::random_hex;

pub(super) async fn home(State(api): State<Arc<Api>>, headers: HeaderMap) -> PageResult {
    let s = session(&api, &headers)?;
    Ok(match &s.who {
        Principal::Org(o) => redirect(&format!("/orgs/{o}/integrations")),
        Principal::User(_) => redirect("/integrations"),
        Principal::Operator => page(
            "Operator",
            Some(&s),
            html! { p { "Open an organization's integrations at /orgs/<org>/integrations." } },
        )
        .into_response(),
    })
}

pub(super) async fn sign_in_form(State(api): State<Arc<Api>>) -> Response {
    sign_in_page(&api, None)
}

fn sign_in_page(api: &Api, error: Option<&str>) -> Response {
    // The form's own CSRF token, doubled in a cookie (there is no session yet).
    let token = random_hex();
    let body = page(
        "Sign in",
        None,
        html! {
            form method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(token);
                label for="token" { "API token" }
                input type="password" id="token" name="token" autocomplete="off" required;
                @if let Some(e) = error { p.error role="alert" { (e) } }
                button type="submit" { "Sign in" }
            }
        },
    );
    let mut r = body.into_response();
    r.headers_mut()
        .append(SET_COOKIE, set_cookie(api, SIGN_IN_COOKIE, &token, None));
    r
}

pub(super) async fn sign_in(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let f = fields(&body);
    let given = field(&f, "csrf").unwrap_or_default();
    let expected = cookie(&headers, &cookie_name(&api, SIGN_IN_COOKIE)).unwrap_or_default();
    if expected.is_empty() || !same(given, &expected) {
        return Failure::Api(ApiError::forbidden(
            "the form's CSRF token is missing or wrong; reload the page and try again",
        ))
        .into_response();
    }
    let token = field(&f, "token").unwrap_or_default().trim().to_owned();
    let mut probe = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        probe.insert(AUTHORIZATION, v);
    }
    let who = match api.tokens.principal(&probe) {
        Ok(who) => who,
        Err(_) => {
            let mut r = sign_in_page(&api, Some("unknown token"));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    };
    // A new session for every sign-in: a planted one is never taken over.
    if let Some(old) = cookie(&headers, &cookie_name(&api, SESSION_COOKIE)) {
        api.console.end(&old);
    }
    let id = api.console.start(who);
    let mut r = redirect("/");
    let headers = r.headers_mut();
    headers.append(SET_COOKIE, set_cookie(&api, SESSION_COOKIE, &id, None));
    headers.append(SET_COOKIE, set_cookie(&api, SIGN_IN_COOKIE, "", Some(0)));
    r
}

pub(super) async fn sign_out(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    posted(&api, &headers, &f)?;
    if let Some(id) = cookie(&headers, &cookie_name(&api, SESSION_COOKIE)) {
        api.console.end(&id);
    }
    let mut r = redirect("/sign-in");
    r.headers_mut()
        .append(SET_COOKIE, set_cookie(&api, SESSION_COOKIE, "", Some(0)));
    Ok(r)
}
