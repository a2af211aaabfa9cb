//! The web console, served by `hookd api` under `/` (the REST API stays
//! under `/v1`): server-rendered HTML from the binary alone, no script.
//!
//! In: a person's browser. Sign-in takes an api token through a form; the
//! session it starts ([`session`]) is kept server-side behind a session
//! cookie (HttpOnly, SameSite=Strict), and every form carries the session's
//! CSRF token. Out: pages made from the REST handlers' own answers, called
//! as the session's caller admitted at the page's place by the api's own
//! extractors ([`request`]), so the tenant rules are exactly the api's
//! (another org's page is its 404). Pages: a scope's integrations
//! ([`list`]: org, product, sandbox), [`create`] (every Particle field, or a
//! whole Particle JSON), [`view`] (shared banner, 30-day charts in
//! aggregate and per product, delivery log, test, enable/disable, request
//! preview), [`edit`], and separate on a product's page; [`form`] is the
//! form they share, [`layout`] what every page is made of.

mod create;
mod edit;
mod form;
mod layout;
mod list;
mod request;
mod sign_in;
mod view;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::app::Api;

/// The console's routes, beside the api's.
pub(super) fn routes() -> Router<Arc<Api>> {
    use create::{create, create_from_template, new};
    use edit::{edit, edit_form, separate, separate_form};
    use list::list;
    use sign_in::{home, sign_in, sign_in_form, sign_out};
    use view::{test, toggle, view};
    let scoped = |base: &str| {
        Router::new()
            .route(&format!("{base}/integrations"), get(list).post(create))
            .route(&format!("{base}/integrations/new"), get(new))
            .route(
                &format!("{base}/integrations/template"),
                post(create_from_template),
            )
            .route(&format!("{base}/integrations/{{id}}"), get(view))
            .route(
                &format!("{base}/integrations/{{id}}/edit"),
                get(edit_form).post(edit),
            )
            .route(&format!("{base}/integrations/{{id}}/test"), post(test))
            .route(&format!("{base}/integrations/{{id}}/toggle"), post(toggle))
    };
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", post(sign_out))
        .merge(scoped(""))
        .merge(scoped("/products/{product}"))
        .merge(scoped("/orgs/{org}"))
        .route(
            "/products/{product}/integrations/{id}/separate",
            get(separate_form).post(separate),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// Pages are never cached (a signed-out browser's Back shows nothing),
/// never framed, and load nothing from elsewhere.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}
