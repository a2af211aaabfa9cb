//! The web console, served by `hookd api` under `/` (the REST API stays
//! under `/v1`): server-rendered HTML from the binary alone, no script.
//!
//! In: a person's browser. Sign-in takes an api token through a form and
//! keeps it server-side behind a session cookie (HttpOnly, SameSite=Strict);
//! every form carries the session's CSRF token. Out: pages made from the
//! REST handlers' own answers, called with the session's token, so the
//! tenant rules are exactly the api's (another org's page is its 404).
//! Pages: a scope's integrations (org, product, sandbox), create (every
//! Particle field, or a whole Particle JSON), view (shared banner, 30-day
//! charts in aggregate and per product, delivery log, test, enable/disable,
//! request preview), edit, and separate on a product's page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::{Map, Value};

use super::auth::Principal;
use super::error::ApiError;
use super::handlers as h;
use super::server::Api;

const SESSION_COOKIE: &str = "hookd_session";
const SIGN_IN_COOKIE: &str = "hookd_sign_in";
/// Sessions last this long from sign-in.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many sessions at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// At most this many sessions of one token's scope: one scope signing in
/// over and over ends its own oldest sessions, never another's.
const MAX_SESSIONS_PER_SCOPE: usize = 32;

/// Signed-in sessions, kept in the api process (a restart signs everyone
/// out).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

#[derive(Clone)]
struct Session {
    token: String,
    who: Principal,
    csrf: String,
    started: Instant,
}

impl Sessions {
    fn start(&self, token: String, who: Principal) -> (String, Session) {
        let mut all = self.0.lock().expect("sessions lock is never poisoned");
        all.retain(|_, s| s.started.elapsed() < SESSION_TTL);
        let mut mine: Vec<(Instant, String)> = all
            .iter()
            .filter(|(_, s)| s.who == who)
            .map(|(k, s)| (s.started, k.clone()))
            .collect();
        mine.sort();
        while mine.len() >= MAX_SESSIONS_PER_SCOPE {
            let (_, oldest) = mine.remove(0);
            all.remove(&oldest);
        }
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        let id = random_hex();
        let session = Session {
            token,
            who,
            csrf: random_hex(),
            started: Instant::now(),
        };
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let all = self.0.lock().expect("sessions lock is never poisoned");
        all.get(id)
            .filter(|s| s.started.elapsed() < SESSION_TTL)
            .cloned()
    }

    fn end(&self, id: &str) {
        self.0
            .lock()
            .expect("sessions lock is never poisoned")
            .remove(id);
    }
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The console's routes, beside the api's.
pub fn routes() -> Router<Arc<Api>> {
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
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut r = next.run(request).await;
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        axum::http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

/// A page for a signed-in person, or why there is none.
enum Failure {
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

type PageResult = Result<Response, Failure>;

fn redirect(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            LOCATION,
            HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

/// The value of cookie `name`; none when the request carries it twice (a
/// cookie planted for a narrower path would come first).
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned());
    let first = found.next();
    match found.next() {
        Some(_) => None,
        None => first,
    }
}

/// A cookie's name: `__Host-` prefixed when cookies are `Secure`.
fn cookie_name(api: &Api, name: &str) -> String {
    if api.secure_cookies {
        format!("__Host-{name}")
    } else {
        name.to_owned()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`, `Secure`
/// when configured.
fn set_cookie(api: &Api, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict",
        cookie_name(api, name)
    );
    if api.secure_cookies {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).expect("cookie values are hex")
}

/// The signed-in session of a request.
fn session(api: &Api, headers: &HeaderMap) -> Result<(String, Session), Failure> {
    let id = cookie(headers, &cookie_name(api, SESSION_COOKIE)).ok_or(Failure::SignIn)?;
    let s = api.console.get(&id).ok_or(Failure::SignIn)?;
    Ok((id, s))
}

/// The session of a request for a page at `params`, which must be a place
/// the session's token may use: any other is "not found", as if it did not
/// exist (the api's 403 for another org's path is a 404 here).
fn session_at(
    api: &Api,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Session, Failure> {
    let (_, s) = session(api, headers)?;
    let place = if let Some(org) = params.get("org") {
        super::auth::Place::Org(org.clone())
    } else if let Some(p) = params.get("product") {
        super::auth::Place::Product(p.parse().map_err(|_| not_found())?)
    } else {
        super::auth::Place::Sandbox
    };
    super::auth::authorize(&s.who, &place, &api.log.state()).map_err(|_| not_found())?;
    Ok(s)
}

fn not_found() -> Failure {
    Failure::Api(ApiError::not_found("page"))
}

/// Headers carrying the session's token, for the REST handlers.
fn bearer(s: &Session) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", s.token)) {
        headers.insert(AUTHORIZATION, v);
    }
    headers
}

/// A form body's fields, in order (a multi-select gives one per choice).
fn fields(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The session of a form post whose CSRF token is the session's.
fn posted(
    api: &Api,
    headers: &HeaderMap,
    params: Option<&HashMap<String, String>>,
    fields: &[(String, String)],
) -> Result<Session, Failure> {
    let (_, s) = session(api, headers)?;
    let given = field(fields, "csrf").unwrap_or_default();
    if !same(given, &s.csrf) {
        return Err(Failure::Api(ApiError::forbidden(
            "the form's CSRF token is missing or wrong; reload the page and try again",
        )));
    }
    match params {
        Some(params) => session_at(api, headers, params),
        None => Ok(s),
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

// ---------------------------------------------------------------- places

/// Where a page is: the path's scope, as the REST handlers read it.
struct Place {
    params: HashMap<String, String>,
    /// The console path of the scope (`/orgs/acme`, `/products/1`, ``).
    base: String,
    title: String,
}

impl Place {
    fn of(params: &HashMap<String, String>) -> Place {
        let segment =
            |s: &str| -> String { form_urlencoded::byte_serialize(s.as_bytes()).collect() };
        let (base, title) = if let Some(org) = params.get("org") {
            (
                format!("/orgs/{}", segment(org)),
                format!("Organization {org}"),
            )
        } else if let Some(p) = params.get("product") {
            (format!("/products/{}", segment(p)), format!("Product {p}"))
        } else {
            (String::new(), "Sandbox".to_owned())
        };
        Place {
            params: params.clone(),
            base,
            title,
        }
    }

    fn is_org(&self) -> bool {
        self.params.contains_key("org")
    }

    fn product(&self) -> Option<&str> {
        self.params.get("product").map(String::as_str)
    }
}

// ---------------------------------------------------------------- layout

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

fn page(title: &str, signed_in: Option<&Session>, content: Markup) -> Html<String> {
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

fn csrf_input(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

// ---------------------------------------------------------------- sign-in

async fn home(State(api): State<Arc<Api>>, headers: HeaderMap) -> PageResult {
    let (_, s) = session(&api, &headers)?;
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

async fn sign_in_form(State(api): State<Arc<Api>>) -> Response {
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

async fn sign_in(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> Response {
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
    let (id, _) = api.console.start(token, who);
    let mut r = redirect("/");
    let headers = r.headers_mut();
    headers.append(SET_COOKIE, set_cookie(&api, SESSION_COOKIE, &id, None));
    headers.append(SET_COOKIE, set_cookie(&api, SIGN_IN_COOKIE, "", Some(0)));
    r
}

async fn sign_out(State(api): State<Arc<Api>>, headers: HeaderMap, body: Bytes) -> PageResult {
    let f = fields(&body);
    posted(&api, &headers, None, &f)?;
    if let Some(id) = cookie(&headers, &cookie_name(&api, SESSION_COOKIE)) {
        api.console.end(&id);
    }
    let mut r = redirect("/sign-in");
    r.headers_mut()
        .append(SET_COOKIE, set_cookie(&api, SESSION_COOKIE, "", Some(0)));
    Ok(r)
}

// ---------------------------------------------------------------- lists

/// Product names of an org, by id (empty when the caller cannot list them).
async fn product_names(api: &Arc<Api>, s: &Session, org: Option<&str>) -> HashMap<u64, String> {
    let Some(org) = org else {
        return HashMap::new();
    };
    let params = HashMap::from([("org".to_owned(), org.to_owned())]);
    match h::list_products(State(api.clone()), bearer(s), Path(params)).await {
        Ok(Json(v)) => v["products"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// The org a page's products belong to: the path's, or the product's.
async fn org_of(api: &Arc<Api>, s: &Session, place: &Place) -> Option<String> {
    if let Some(org) = place.params.get("org") {
        return Some(org.clone());
    }
    let p = place.product()?;
    match &s.who {
        Principal::Org(o) => Some(o.clone()),
        _ => {
            let state = api.log.state();
            state.product(p.parse().ok()?).map(|x| x.org.clone())
        }
    }
}

fn counts(v: &Value) -> Markup {
    html! {
        td { (v["success"]) } td { (v["error"]) } td { (v["skipped"]) }
    }
}

fn product_list(ids: &Value, names: &HashMap<u64, String>) -> String {
    ids.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|p| match names.get(&p) {
            Some(n) => format!("{n} ({p})"),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
) -> PageResult {
    let s = session_at(&api, &headers, &params)?;
    let place = Place::of(&params);
    let Json(answer) = h::list(State(api.clone()), bearer(&s), Path(params.clone())).await?;
    let names = product_names(&api, &s, org_of(&api, &s, &place).await.as_deref()).await;
    let items = answer["integrations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let days = items
        .first()
        .and_then(|i| i["traffic"].as_object())
        .and_then(|t| t.keys().find(|k| k.starts_with("last_")).cloned())
        .unwrap_or_else(|| "last_30_days".into());
    let content = html! {
        p { a href={ (place.base) "/integrations/new" } { "Create an integration" } }
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
                            td { a href={ (place.base) "/integrations/" (id) } { (i["name"].as_str().unwrap_or(id)) } }
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
    Ok(page(
        &format!("{} → Integrations", place.title),
        Some(&s),
        content,
    )
    .into_response())
}

// ---------------------------------------------------------------- forms

/// The create/edit form's fields, as the person left them.
#[derive(Default)]
struct FormValues(Map<String, Value>);

impl FormValues {
    fn text(&self, name: &str) -> String {
        match self.0.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        }
    }

    fn checked(&self, name: &str, default: bool) -> bool {
        self.0.get(name).and_then(Value::as_bool).unwrap_or(default)
    }

    fn products(&self) -> Vec<u64> {
        self.0
            .get("products")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    }
}

/// Fields that hold JSON (objects), entered as JSON text.
const JSON_FIELDS: &[&str] = &["query", "headers"];
/// Fields that are plain text.
const TEXT_FIELDS: &[&str] = &[
    "name",
    "event",
    "url",
    "requestType",
    "responseTopic",
    "errorResponseTopic",
    "deviceID",
    "signingSecret",
];
/// Boolean fields: (name, default). Only a value other than the default is
/// written, so saving a form never adds fields that change nothing.
const BOOLEAN_FIELDS: &[(&str, bool)] = &[
    ("noDefaults", false),
    ("rejectUnauthorized", true),
    ("disabled", false),
    ("unchunked", false),
    ("dataUrlResponseEvent", false),
];
/// Fields the form does not edit: kept as they are on save.
const KEPT_FIELDS: &[&str] = &["integration_type", "template", "created_at", "mydevices"];

/// How the body is given: a JSON object, JSON as a template string, a web
/// form (a JSON object of fields) or a custom body.
fn body_kind_of(v: &Map<String, Value>) -> &'static str {
    match v.get("_body_kind").and_then(Value::as_str) {
        Some("json") => "json",
        Some("json_text") => "json_text",
        Some("form") => "form",
        Some("body") => "body",
        _ => match (v.get("json"), v.get("form"), v.get("body")) {
            (Some(Value::String(_)), _, _) => "json_text",
            (Some(_), _, _) => "json",
            (_, Some(_), _) => "form",
            (_, _, Some(_)) => "body",
            _ => "json",
        },
    }
}

/// How `responseTemplate` is given: a template string or JSON of templates.
fn template_kind_of(v: &Map<String, Value>) -> &'static str {
    match v.get("_template_kind").and_then(Value::as_str) {
        Some("json") => "json",
        Some(_) => "text",
        None => match v.get("responseTemplate") {
            Some(Value::Object(_) | Value::Array(_)) => "json",
            _ => "text",
        },
    }
}

/// The config a posted form stands for, or the field at fault.
fn config_from_form(
    f: &[(String, String)],
    place: &Place,
) -> Result<Map<String, Value>, (String, String)> {
    let mut c = Map::new();
    for name in TEXT_FIELDS {
        if let Some(v) = field(f, name).map(str::trim).filter(|v| !v.is_empty()) {
            c.insert((*name).into(), v.into());
        }
    }
    for name in JSON_FIELDS {
        if let Some(v) = field(f, name).map(str::trim).filter(|v| !v.is_empty()) {
            let parsed: Value = serde_json::from_str(v)
                .map_err(|e| (name.to_string(), format!("not JSON: {e}")))?;
            c.insert((*name).into(), parsed);
        }
    }
    let body = field(f, "body_text").unwrap_or_default().trim();
    if !body.is_empty() {
        match field(f, "body_kind").unwrap_or("json") {
            "json" => {
                let v: Value = serde_json::from_str(body).map_err(|e| {
                    (
                        "json".to_owned(),
                        format!("not JSON: {e} (choose \"JSON template\" for JSON that only becomes valid once rendered)"),
                    )
                })?;
                c.insert("json".into(), v);
            }
            "json_text" => {
                c.insert("json".into(), body.into());
            }
            "form" => {
                let v: Value = serde_json::from_str(body)
                    .map_err(|e| ("form".to_owned(), format!("not a JSON object: {e}")))?;
                c.insert("form".into(), v);
            }
            _ => {
                c.insert("body".into(), body.into());
            }
        }
    }
    let template = field(f, "responseTemplate").unwrap_or_default().trim();
    if !template.is_empty() {
        let v = match field(f, "template_kind") {
            Some("json") => serde_json::from_str::<Value>(template)
                .map_err(|e| ("responseTemplate".to_owned(), format!("not JSON: {e}")))?,
            _ => template.into(),
        };
        c.insert("responseTemplate".into(), v);
    }
    let user = field(f, "auth_username").unwrap_or_default();
    let pass = field(f, "auth_password").unwrap_or_default();
    if !user.is_empty() || !pass.is_empty() {
        c.insert(
            "auth".into(),
            serde_json::json!({"username": user, "password": pass}),
        );
    }
    for (name, default) in BOOLEAN_FIELDS {
        let checked = field(f, name).is_some();
        if checked != *default {
            c.insert((*name).into(), checked.into());
        }
    }
    if place.is_org() {
        c.insert("products".into(), posted_products(f).into());
    }
    Ok(c)
}

fn posted_products(f: &[(String, String)]) -> Vec<Value> {
    f.iter()
        .filter(|(k, _)| k == "products")
        .filter_map(|(_, v)| v.parse::<u64>().ok().map(Value::from))
        .collect()
}

/// What a person posted, shown again as they left it beside an error.
fn echo(f: &[(String, String)]) -> FormValues {
    let mut m = Map::new();
    for name in TEXT_FIELDS.iter().chain(JSON_FIELDS) {
        if let Some(v) = field(f, name) {
            m.insert((*name).into(), v.into());
        }
    }
    let kind = field(f, "body_kind").unwrap_or("json");
    m.insert("_body_kind".into(), kind.into());
    let body_key = match kind {
        "form" => "form",
        "body" => "body",
        _ => "json",
    };
    m.insert(
        body_key.into(),
        field(f, "body_text").unwrap_or_default().into(),
    );
    m.insert(
        "_template_kind".into(),
        field(f, "template_kind").unwrap_or("text").into(),
    );
    m.insert(
        "responseTemplate".into(),
        field(f, "responseTemplate").unwrap_or_default().into(),
    );
    m.insert(
        "auth".into(),
        serde_json::json!({"username": field(f, "auth_username").unwrap_or_default(),
                           "password": field(f, "auth_password").unwrap_or_default()}),
    );
    for (name, _) in BOOLEAN_FIELDS {
        m.insert((*name).into(), field(f, name).is_some().into());
    }
    m.insert("products".into(), posted_products(f).into());
    FormValues(m)
}

/// The form's values from a config (an integration's, or a posted one).
fn values_of(config: &Map<String, Value>) -> FormValues {
    FormValues(config.clone())
}

struct FormSpec<'a> {
    action: String,
    /// The version an edit form was made from (a stale save is a conflict).
    version: Option<u64>,
    submit: &'a str,
    error: Option<(String, String)>,
    /// Org pages: the org's products to choose from.
    products: Option<&'a HashMap<u64, String>>,
    sandbox: bool,
}

fn error_for(spec: &FormSpec, name: &str) -> Markup {
    html! {
        @if let Some((field, message)) = &spec.error {
            @if field == name || field.starts_with(&format!("{name}.")) || field.starts_with(&format!("{name}[")) {
                p.error role="alert" id={ "error-" (name) } { (message) }
            }
        }
    }
}

fn integration_form(s: &Session, v: &FormValues, spec: &FormSpec) -> Markup {
    let text = |name: &str, label: &str, hint: &str| {
        html! {
            label for=(name) { (label) }
            input type="text" id=(name) name=(name) value=(v.text(name)) aria-describedby={ "hint-" (name) };
            @if !hint.is_empty() { small id={ "hint-" (name) } { (hint) } }
            (error_for(spec, name))
        }
    };
    let body_kind = body_kind_of(&v.0);
    let template_kind = template_kind_of(&v.0);
    let body_text = match body_kind {
        "form" => v.text("form"),
        "body" => v.text("body"),
        _ => v.text("json"),
    };
    let template = match v.0.get("responseTemplate") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
        None => String::new(),
    };
    let auth = v.0.get("auth").cloned().unwrap_or(Value::Null);
    let method = v.text("requestType");
    let method = if method.is_empty() {
        "POST".to_owned()
    } else {
        method.to_uppercase()
    };
    html! {
        form method="post" action=(spec.action) {
            (csrf_input(s))
            @if let Some(version) = spec.version {
                input type="hidden" name="version" value=(version);
            }
            @if let Some((field, message)) = &spec.error {
                p.error role="alert" { (field) ": " (message) }
            }
            (text("name", "Name", "shown in lists; default: the event and part of the URL"))
            (text("event", "Event name", "a case-sensitive prefix of the event names that trigger it"))
            (text("url", "URL", "templates allowed, e.g. https://example.com/{{{PARTICLE_DEVICE_ID}}}"))
            label for="requestType" { "Request type" }
            select id="requestType" name="requestType" {
                @for m in ["POST", "GET", "PUT", "DELETE"] {
                    option value=(m) selected[m == method] { (m) }
                }
            }
            (error_for(spec, "requestType"))
            @if let Some(products) = spec.products {
                label for="products" { "Product(s) where the integration will execute" }
                select id="products" name="products" multiple size=(products.len().clamp(2, 8)) {
                    @for (id, name) in sorted(products) {
                        option value=(id) selected[v.products().contains(&id)] { (name) " (" (id) ")" }
                    }
                }
                small { "Choose each product; there is no “all products”." }
                (error_for(spec, "products"))
            }
            fieldset {
                legend { "Request format" }
                @for (kind, label) in [("json", "JSON"), ("json_text", "JSON template (valid JSON once rendered)"), ("form", "Web form"), ("body", "Custom body")] {
                    label {
                        input type="radio" name="body_kind" value=(kind) checked[kind == body_kind];
                        " " (label)
                    }
                }
                label for="body_text" { "Body (JSON for JSON and web form; any text for a custom body)" }
                textarea id="body_text" name="body_text" { (body_text) }
                (error_for(spec, "json")) (error_for(spec, "form")) (error_for(spec, "body"))
            }
            label for="query" { "Query parameters (JSON object)" }
            textarea id="query" name="query" { (v.text("query")) }
            (error_for(spec, "query"))
            label for="headers" { "HTTP headers (JSON object)" }
            textarea id="headers" name="headers" { (v.text("headers")) }
            (error_for(spec, "headers"))
            fieldset {
                legend { "HTTP basic auth" }
                label for="auth_username" { "Username" }
                input type="text" id="auth_username" name="auth_username" value=(auth["username"].as_str().unwrap_or_default());
                label for="auth_password" { "Password" }
                input type="password" id="auth_password" name="auth_password" autocomplete="off" value=(auth["password"].as_str().unwrap_or_default());
                (error_for(spec, "auth"))
            }
            (text("responseTopic", "Response topic", "default: {{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}"))
            (text("errorResponseTopic", "Error response topic", "default: hook-error/{{PARTICLE_EVENT_NAME}}"))
            fieldset {
                legend { "Response template" }
                @for (kind, label) in [("text", "A template"), ("json", "JSON of templates")] {
                    label {
                        input type="radio" name="template_kind" value=(kind) checked[kind == template_kind];
                        " " (label)
                    }
                }
                label for="responseTemplate" { "Template" }
                textarea id="responseTemplate" name="responseTemplate" { (template) }
            }
            (error_for(spec, "responseTemplate"))
            @if spec.sandbox {
                (text("deviceID", "Device", "fire for this device only (24 hex digits)"))
            }
            label { input type="checkbox" name="noDefaults" value="true" checked[v.checked("noDefaults", false)]; " No defaults (leave out event, data, coreid, published_at)" }
            label { input type="checkbox" name="rejectUnauthorized" value="true" checked[v.checked("rejectUnauthorized", true)]; " Enforce SSL (verify certificates)" }
            label { input type="checkbox" name="disabled" value="true" checked[v.checked("disabled", false)]; " Disabled" }
            label { input type="checkbox" name="unchunked" value="true" checked[v.checked("unchunked", false)]; " Unchunked (the response as one event of up to 100 KB)" }
            label { input type="checkbox" name="dataUrlResponseEvent" value="true" checked[v.checked("dataUrlResponseEvent", false)]; " Encode the response as a data URL" }
            (text("signingSecret", "Signing secret", "the name of a configured secret to sign requests with (Standard Webhooks)"))
            button type="submit" { (spec.submit) }
        }
    }
}

fn sorted(products: &HashMap<u64, String>) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = products.iter().map(|(k, n)| (*k, n.clone())).collect();
    v.sort();
    v
}

fn custom_template_form(s: &Session, place: &Place, text: &str, error: Option<&str>) -> Markup {
    html! {
        h2 id="custom-template" { "Custom template" }
        p { "A whole integration as Particle's console exports it (JSON)." }
        form method="post" action={ (place.base) "/integrations/template" } {
            (csrf_input(s))
            label for="template" { "Integration JSON" }
            textarea id="template" name="template" rows="14" { (text) }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            button type="submit" { "Create from template" }
        }
    }
}

async fn new(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
) -> PageResult {
    let s = session_at(&api, &headers, &params)?;
    let place = Place::of(&params);
    // The list answers only where the caller may be: a foreign place is refused here.
    let _allowed = h::list(State(api.clone()), bearer(&s), Path(params.clone())).await?;
    create_page(&api, &s, &place, &FormValues::default(), None, None).await
}

async fn create_page(
    api: &Arc<Api>,
    s: &Session,
    place: &Place,
    values: &FormValues,
    error: Option<(String, String)>,
    template: Option<(&str, &str)>,
) -> PageResult {
    let names = if place.is_org() {
        Some(product_names(api, s, place.params.get("org").map(String::as_str)).await)
    } else {
        None
    };
    let spec = FormSpec {
        version: None,
        action: format!("{}/integrations", place.base),
        submit: "Create",
        error,
        products: names.as_ref(),
        sandbox: place.base.is_empty(),
    };
    let status = if spec.error.is_some() || template.is_some_and(|t| !t.1.is_empty()) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        nav.tabs { a href="#builder" { "Webhook builder" } a href="#custom-template" { "Custom template" } }
        h2 id="builder" { "Webhook builder" }
        (integration_form(s, values, &spec))
        (custom_template_form(s, place, template.map_or("", |t| t.0), template.map(|t| t.1).filter(|e| !e.is_empty())))
    };
    Ok((
        status,
        page(
            &format!("{} → New integration", place.title),
            Some(s),
            content,
        ),
    )
        .into_response())
}

async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let s = posted(&api, &headers, Some(&params), &f)?;
    let place = Place::of(&params);
    let config = match config_from_form(&f, &place) {
        Ok(c) => c,
        Err(e) => {
            let values = echo(&f);
            return create_page(&api, &s, &place, &values, Some(e), None).await;
        }
    };
    let json = Bytes::from(Value::Object(config.clone()).to_string());
    match h::create(State(api.clone()), bearer(&s), Path(params.clone()), json).await {
        Ok((_, Json(created))) => Ok(redirect(&format!(
            "{}/integrations/{}",
            place.base,
            created["id"].as_str().unwrap_or_default()
        ))),
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            let field = e.field.clone().unwrap_or_else(|| "config".into());
            create_page(
                &api,
                &s,
                &place,
                &values_of(&config),
                Some((field, e.error)),
                None,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// What a person typed, to show again beside an error.
async fn create_from_template(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let s = posted(&api, &headers, Some(&params), &f)?;
    let place = Place::of(&params);
    let text = field(&f, "template").unwrap_or_default().to_owned();
    match h::create(
        State(api.clone()),
        bearer(&s),
        Path(params.clone()),
        Bytes::from(text.clone()),
    )
    .await
    {
        Ok((_, Json(created))) => Ok(redirect(&format!(
            "{}/integrations/{}",
            place.base,
            created["id"].as_str().unwrap_or_default()
        ))),
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            create_page(
                &api,
                &s,
                &place,
                &FormValues::default(),
                None,
                Some((&text, &e.error)),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- view

/// A stacked bar chart of daily success (blue), error (red) and skipped
/// (grey), with the same numbers in a table.
fn chart(caption: &str, days: &Value) -> Markup {
    let days: Vec<&Value> = days
        .as_array()
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    let n = |d: &Value, k: &str| d[k].as_u64().unwrap_or(0);
    let max = days
        .iter()
        .map(|d| n(d, "success") + n(d, "error") + n(d, "skipped"))
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h) = (12u64, 100u64);
    let width = w * days.len() as u64;
    // (x, top, height, color, tooltip): each day's kinds stacked upwards.
    let mut bars = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let mut y = h;
        for (key, color) in [
            ("success", "#1f6fd1"),
            ("error", "#c62828"),
            ("skipped", "#9e9e9e"),
        ] {
            let height = n(d, key) * h / max;
            if height > 0 {
                y -= height;
                let tip = format!(
                    "{} {key}: {}",
                    d["date"].as_str().unwrap_or_default(),
                    n(d, key)
                );
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
                    @for d in &days {
                        tr { th scope="row" { (d["date"].as_str().unwrap_or_default()) } (counts(d)) }
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

async fn view(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
) -> PageResult {
    let s = session_at(&api, &headers, &params)?;
    view_page(&api, &s, &params, None).await
}

async fn view_page(
    api: &Arc<Api>,
    s: &Session,
    params: &HashMap<String, String>,
    tested: Option<Value>,
) -> PageResult {
    let place = Place::of(params);
    let Json(i) = h::get(State(api.clone()), bearer(s), Path(params.clone())).await?;
    let id = i["id"].as_str().unwrap_or_default().to_owned();
    let Json(log) = h::log(State(api.clone()), bearer(s), Path(params.clone())).await?;
    let Json(preview) = h::preview(State(api.clone()), bearer(s), Path(params.clone())).await?;
    let names = product_names(api, s, org_of(api, s, &place).await.as_deref()).await;
    let here = format!("{}/integrations/{id}", place.base);
    let shared = i["shared"] == true;
    // A shared integration is edited (and enabled or disabled) at its
    // org's address, by the org or the operator; a product's page links
    // there.
    let owner_path = match (shared, i["org"].as_str(), &s.who) {
        (false, _, _) => Some(here.clone()),
        (true, Some(org), Principal::Org(mine)) if mine == org => Some(org_path(org, &id)),
        (true, Some(org), Principal::Operator) => Some(org_path(org, &id)),
        _ => None,
    };
    let mut config = i["config"].clone();
    if config["auth"]["password"].is_string() {
        config["auth"]["password"] = "••••••".into();
    }
    let content = html! {
        @if shared {
            div.banner role="note" {
                "This integration is shared: it executes on "
                (product_list(&i["products"], &names))
                @if place.product().is_some() {
                    ". Editing it here changes it for every one of them; to change it for this product only, separate it."
                } @else { "." }
            }
        }
        p {
            @if let Some(owner) = &owner_path { a href={ (owner) "/edit" } { "Edit" } " · " }
            @if shared { @if let Some(p) = place.product() {
                a href={ "/products/" (p) "/integrations/" (id) "/separate" } { "Separate integration" } " · "
            } }
            a href={ (place.base) "/integrations" } { "All integrations" }
        }
        table {
            tbody {
                tr { th scope="row" { "Event" } td { (i["event"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "URL" } td { (i["url"].as_str().unwrap_or_default()) } }
                tr { th scope="row" { "Status" } td { @if i["disabled"] == true { "disabled" } @else { "enabled" } } }
                tr { th scope="row" { "Today" } td { "ok " (i["traffic"]["today"]["success"]) ", error " (i["traffic"]["today"]["error"]) ", skipped " (i["traffic"]["today"]["skipped"]) } }
            }
        }
        @if let Some(owner) = &owner_path {
            form method="post" action={ (owner) "/toggle" } {
                (csrf_input(s))
                input type="hidden" name="disabled" value=(if i["disabled"] == true { "false" } else { "true" });
                button type="submit" { @if i["disabled"] == true { "Enable" } @else { "Disable" } }
            }
        }
        form method="post" action={ (here) "/test" } {
            (csrf_input(s))
            button type="submit" { "Test" }
        }
        @if let Some(t) = &tested {
            div role="status" id="test-outcome" {
                h2 { "Test: " span class=(if t["outcome"] == "success" { "ok" } else { "error" }) { (t["outcome"].as_str().unwrap_or("error")) } }
                pre { (serde_json::to_string_pretty(t).unwrap_or_default()) }
            }
        }
        h2 { "History, last " (i["history"]["days"]) " days" }
        (chart("All products", &i["history"]["aggregate"]))
        @for p in i["history"]["per_product"].as_array().into_iter().flatten() {
            h3 {
                @if let Some(link) = p["link"].as_str() {
                    @let pid = p["product"].as_u64().unwrap_or(0);
                    a href={ "/products/" (pid) "/integrations" } data-api=(link) { (p["name"].as_str().unwrap_or_default()) " (" (pid) ")" }
                } @else { "Product " (p["product"]) }
            }
            (chart(&format!("Product {}", p["product"]), &p["days"]))
        }
        h2 { "Delivery log" }
        (delivery_log(&log))
        h2 { "Request preview" }
        p { "What this integration would send for a sample event (secrets masked; nothing is sent)." }
        pre { (serde_json::to_string_pretty(&preview).unwrap_or_default()) }
        h2 { "Config" }
        pre { (serde_json::to_string_pretty(&config).unwrap_or_default()) }
    };
    let title = format!("{} → {}", place.title, i["name"].as_str().unwrap_or(&id));
    Ok(page(&title, Some(s), content).into_response())
}

/// The console address of org `org`'s integration `id`.
fn org_path(org: &str, id: &str) -> String {
    let org: String = form_urlencoded::byte_serialize(org.as_bytes()).collect();
    format!("/orgs/{org}/integrations/{id}")
}

async fn test(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let s = posted(&api, &headers, Some(&params), &f)?;
    let outcome = match h::test(State(api.clone()), bearer(&s), Path(params.clone())).await {
        Ok(Json(v)) => v,
        Err(e) => serde_json::json!({"outcome": "error", "error": e.error}),
    };
    view_page(&api, &s, &params, Some(outcome)).await
}

async fn toggle(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let f = fields(&body);
    let s = posted(&api, &headers, Some(&params), &f)?;
    // The state asked for, not a flip: a repeated post changes nothing.
    let wanted = field(&f, "disabled") == Some("true");
    let change =
        serde_json::json!({"disabled": if wanted { Value::Bool(true) } else { Value::Null }});
    let _edited = h::edit(
        State(api.clone()),
        bearer(&s),
        Path(params.clone()),
        Bytes::from(change.to_string()),
    )
    .await?;
    let place = Place::of(&params);
    Ok(redirect(&format!(
        "{}/integrations/{}",
        place.base, params["id"]
    )))
}

// ---------------------------------------------------------------- edit

async fn edit_form(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
) -> PageResult {
    let s = session_at(&api, &headers, &params)?;
    let Json(i) = h::get(State(api.clone()), bearer(&s), Path(params.clone())).await?;
    let mut config = i["config"].as_object().cloned().unwrap_or_default();
    if let Some(p) = i.get("products") {
        config.insert("products".into(), p.clone());
    }
    edit_page(&api, &s, &params, &i, &FormValues(config), None).await
}

async fn edit_page(
    api: &Arc<Api>,
    s: &Session,
    params: &HashMap<String, String>,
    i: &Value,
    values: &FormValues,
    error: Option<(String, String)>,
) -> PageResult {
    let place = Place::of(params);
    let id = params["id"].clone();
    let names = product_names(api, s, org_of(api, s, &place).await.as_deref()).await;
    let spec = FormSpec {
        version: i["version"].as_u64(),
        action: format!("{}/integrations/{id}/edit", place.base),
        submit: "Save",
        error,
        products: place.is_org().then_some(&names),
        sandbox: place.base.is_empty(),
    };
    let status = if spec.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        @if i["shared"] == true {
            div.banner role="note" {
                "Saving changes this integration for every product it executes on: "
                (product_list(&i["products"], &names)) "."
            }
        }
        (integration_form(s, values, &spec))
    };
    let title = format!(
        "{} → Edit {}",
        place.title,
        i["name"].as_str().unwrap_or(&id)
    );
    Ok((status, page(&title, Some(s), content)).into_response())
}

/// A posted form about one integration: the session (its CSRF token
/// checked), the integration as the api shows it, and the form's fields.
async fn posted_form(
    api: &Arc<Api>,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    body: &Bytes,
) -> Result<(Session, Value, Vec<(String, String)>), Failure> {
    let f = fields(body);
    let s = posted(api, headers, Some(params), &f)?;
    let Json(i) = h::get(State(api.clone()), bearer(&s), Path(params.clone())).await?;
    Ok((s, i, f))
}

async fn edit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let (s, i, f) = posted_form(&api, &headers, &params, &body).await?;
    let place = Place::of(&params);
    let mut config = match config_from_form(&f, &place) {
        Ok(c) => c,
        Err(e) => return edit_page(&api, &s, &params, &i, &echo(&f), Some(e)).await,
    };
    // The form holds the whole config: what it leaves out is removed.
    for (k, _) in i["config"].as_object().into_iter().flatten() {
        if !KEPT_FIELDS.contains(&k.as_str()) {
            config.entry(k.clone()).or_insert(Value::Null);
        }
    }
    // The version the form was made from: a change saved meanwhile by
    // someone else is a conflict, not silently undone.
    let version = field(&f, "version")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(i["version"].clone(), Value::from);
    config.insert("version".into(), version);
    match h::edit(
        State(api.clone()),
        bearer(&s),
        Path(params.clone()),
        Bytes::from(Value::Object(config.clone()).to_string()),
    )
    .await
    {
        Ok(_) => Ok(redirect(&format!(
            "{}/integrations/{}",
            place.base, params["id"]
        ))),
        Err(e) if e.status == StatusCode::BAD_REQUEST || e.status == StatusCode::CONFLICT => {
            let field = e.field.clone().unwrap_or_else(|| "config".into());
            config.retain(|_, v| !v.is_null());
            edit_page(
                &api,
                &s,
                &params,
                &i,
                &FormValues(config),
                Some((field, e.error)),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------- separate

async fn separate_form(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
) -> PageResult {
    let s = session_at(&api, &headers, &params)?;
    let Json(i) = h::get(State(api.clone()), bearer(&s), Path(params.clone())).await?;
    // Only a shared integration has a product to separate.
    if i["shared"] != true {
        return Err(not_found());
    }
    let config = i["config"].as_object().cloned().unwrap_or_default();
    separate_page(&api, &s, &params, &i, &FormValues(config), None).await
}

async fn separate_page(
    api: &Arc<Api>,
    s: &Session,
    params: &HashMap<String, String>,
    i: &Value,
    values: &FormValues,
    error: Option<(String, String)>,
) -> PageResult {
    let p = params["product"].clone();
    let id = params["id"].clone();
    let names = product_names(api, s, org_of(api, s, &Place::of(params)).await.as_deref()).await;
    let spec = FormSpec {
        version: None,
        action: format!("/products/{p}/integrations/{id}/separate"),
        submit: "Separate",
        error,
        products: None,
        sandbox: false,
    };
    let status = if spec.error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let content = html! {
        div.banner role="note" {
            "Product " (p) " leaves the shared integration (which keeps executing on "
            (product_list(&i["products"], &names))
            " without it) and gets its own integration with this config. Change at least one field."
        }
        (integration_form(s, values, &spec))
    };
    Ok((
        status,
        page(
            &format!("Product {p} → Separate integration"),
            Some(s),
            content,
        ),
    )
        .into_response())
}

async fn separate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Path<HashMap<String, String>>,
    body: Bytes,
) -> PageResult {
    let (s, i, f) = posted_form(&api, &headers, &params, &body).await?;
    let place = Place::of(&params);
    let mut config = match config_from_form(&f, &place) {
        Ok(c) => c,
        Err(e) => return separate_page(&api, &s, &params, &i, &echo(&f), Some(e)).await,
    };
    // Fields the form does not show come from the shared config.
    for (k, v) in i["config"].as_object().into_iter().flatten() {
        if KEPT_FIELDS.contains(&k.as_str()) && k != "created_at" {
            config.entry(k.clone()).or_insert(v.clone());
        }
    }
    match h::separate(
        State(api.clone()),
        bearer(&s),
        Path(params.clone()),
        Bytes::from(Value::Object(config.clone()).to_string()),
    )
    .await
    {
        Ok((_, Json(own))) => Ok(redirect(&format!(
            "/products/{}/integrations/{}",
            params["product"],
            own["id"].as_str().unwrap_or_default()
        ))),
        Err(e) if e.status == StatusCode::BAD_REQUEST => {
            let field = e.field.clone().unwrap_or_else(|| "config".into());
            separate_page(
                &api,
                &s,
                &params,
                &i,
                &FormValues(config),
                Some((field, e.error)),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_become_configs_and_bad_json_names_its_field() {
        let org = Place::of(&HashMap::from([("org".to_owned(), "acme".to_owned())]));
        let f: Vec<(String, String)> = [
            ("event", "temp"),
            ("url", "https://example.com/x"),
            ("requestType", "PUT"),
            ("body_kind", "json"),
            ("body_text", r#"{"t": "{{{t}}}"}"#),
            ("headers", r#"{"X-A": "1"}"#),
            ("products", "1"),
            ("products", "2"),
            ("rejectUnauthorized", "true"),
            ("auth_username", "u"),
            ("auth_password", "p"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = config_from_form(&f, &org).unwrap();
        assert_eq!(
            Value::Object(c),
            serde_json::json!({"event": "temp", "url": "https://example.com/x", "requestType": "PUT",
                "headers": {"X-A": "1"}, "json": {"t": "{{{t}}}"}, "auth": {"username": "u", "password": "p"},
                "products": [1, 2]})
        );
        let bad = vec![("headers".to_owned(), "{nope".to_owned())];
        assert_eq!(config_from_form(&bad, &org).unwrap_err().0, "headers");
        // JSON that is not JSON yet: refused as JSON, kept as a template
        // string when asked; a response template stays the type chosen.
        let body = |kind: &str| -> Vec<(String, String)> {
            [
                ("body_kind", kind),
                ("body_text", r#"{"t": {{{t}}}}"#),
                ("template_kind", "text"),
                ("responseTemplate", r#"{"a": 1}"#),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        assert_eq!(config_from_form(&body("json"), &org).unwrap_err().0, "json");
        let c = config_from_form(&body("json_text"), &org).unwrap();
        assert_eq!(c["json"], r#"{"t": {{{t}}}}"#);
        assert_eq!(c["responseTemplate"], r#"{"a": 1}"#);
        // What was posted comes back in the form's own shape.
        let again = echo(&body("json_text"));
        assert_eq!(body_kind_of(&again.0), "json_text");
        assert_eq!(again.text("json"), r#"{"t": {{{t}}}}"#);
        assert_eq!(template_kind_of(&again.0), "text");
    }

    #[test]
    fn csrf_tokens_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }
}
