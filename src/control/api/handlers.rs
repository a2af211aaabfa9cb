//! The API's handlers: integrations of a place (the caller's sandbox, a
//! product, an org), separation, test sends, history, delivery log and the
//! product catalog.
//!
//! Every handler first resolves the caller and the place of its path
//! ([`Api::enter`]); an integration is found only within that place, so a
//! record of another scope answers 404 exactly like a missing one. Writes are
//! checked against the current state first (400/409 with the field at
//! fault), then written to the config log, and answered once the log's own
//! decision came back (read-your-writes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{authorize, Place, Principal};
use super::error::ApiError;
use super::server::Api;
use super::views::{config_of, detail, history_view, summary, PLACEMENT_FIELDS};
use crate::control::config_log::state::{ConfigState, Org, Plan, Product};
use crate::control::traffic::book::mask;
use crate::model::event::{DeviceEvent, Origin};
use crate::model::integration::{Integration, IntegrationSpec, InvalidIntegration, Scope};
use crate::pipeline::render::{render, EventContext, SecretMode};
use crate::policy::throttle::Decision;

type Params = Path<HashMap<String, String>>;
type Reply = Result<Json<Value>, ApiError>;

impl From<InvalidIntegration> for ApiError {
    fn from(e: InvalidIntegration) -> ApiError {
        ApiError::invalid(&e.field, e.to_string())
    }
}

/// The caller and the place their path names.
struct Entered {
    who: Principal,
    place: Place,
}

impl Entered {
    /// The org of an `/v1/orgs/:org/…` path.
    fn org(&self) -> &str {
        match &self.place {
            Place::Org(org) => org,
            _ => unreachable!("the route has an org"),
        }
    }

    /// As [`Entered::org`], for the operator only; `keeps` says what the
    /// operator keeps, for the 403.
    fn operator_org(&self, keeps: &str) -> Result<&str, ApiError> {
        if self.who != Principal::Operator {
            return Err(ApiError::forbidden(keeps));
        }
        Ok(self.org())
    }
}

impl Api {
    fn enter(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
    ) -> Result<Entered, ApiError> {
        let who = self.tokens.principal(headers)?;
        let place = if let Some(p) = params.get("product") {
            let id = p
                .parse::<u32>()
                .map_err(|_| ApiError::not_found(format!("product {p:?}")))?;
            Place::Product(id)
        } else if let Some(org) = params.get("org") {
            Place::Org(org.clone())
        } else {
            Place::Sandbox
        };
        authorize(&who, &place, &self.log.state())?;
        Ok(Entered { who, place })
    }

    /// The integration `id` as seen from `place`: the sandbox's own, the
    /// org's own, or a product's own and the org integrations shared with it.
    fn find(&self, e: &Entered, id: &str) -> Result<Arc<Integration>, ApiError> {
        let state = self.log.state();
        let found = state.integration(id).filter(|i| visible(&state, e, i));
        found
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("integration {id:?}")))
    }

    /// Checks a record against the current state, writes it and waits for
    /// the log's decision.
    async fn write(&self, key: &str, value: Option<&Value>) -> Result<(), ApiError> {
        let bytes = value.map(|v| serde_json::to_vec(v).expect("JSON serializes"));
        self.log.state().validate(key, bytes.as_deref())?;
        self.writer.write(key, bytes.as_deref()).await?;
        Ok(())
    }

    fn show(&self, i: &Integration, place: &Place) -> Value {
        detail(
            i,
            place,
            &self.history,
            &self.log.state(),
            self.history.days(),
        )
    }
}

/// Whether `i` belongs to the place of `e`'s path: the caller's own
/// sandbox, the org's own, or a product's own and the org integrations
/// shared with it.
fn visible(state: &ConfigState, e: &Entered, i: &Integration) -> bool {
    match (&e.place, &i.scope) {
        (Place::Sandbox, Scope::Sandbox { owner }) => {
            matches!(&e.who, Principal::User(u) if u == owner)
        }
        (Place::Org(org), Scope::Org { org: o, .. }) => org == o,
        (Place::Product(p), Scope::Product { product }) => p == product,
        (Place::Product(p), Scope::Org { org, products }) => {
            products.ids().contains(p) && state.product(*p).is_some_and(|x| &x.org == org)
        }
        _ => false,
    }
}

/// An edit made from version `given` (when the caller says) of a record now
/// at `current`: anything else is a concurrent edit that won meanwhile.
fn made_from(
    given: Option<u64>,
    current: u64,
    what: impl FnOnce() -> String,
) -> Result<(), ApiError> {
    match given {
        Some(v) if v != current => Err(ApiError::conflict(format!(
            "the edit was made from version {v}; {} is at version {current}",
            what()
        ))),
        _ => Ok(()),
    }
}

/// A JSON object body; the placement fields are set by the path, never by it.
fn config_body(
    body: &Bytes,
    allow: &[&str],
    creating: bool,
) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid("body", format!("the body is not JSON: {e}")))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    };
    // An export from Particle carries Particle's id (24 hex digits): a new
    // record is placed by the path and named by hookd, so that id is left
    // behind and the export loads unchanged. Any other id, and any id of an
    // edit, is refused below.
    let particle_id = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if creating && map.get("id").is_some_and(particle_id) {
        map.remove("id");
    }
    // The older and the SDK's names of fields, under the names records use.
    for (alias, name) in [
        ("eventName", "event"),
        ("deviceid", "deviceID"),
        ("deviceId", "deviceID"),
    ] {
        if let Some(v) = map.remove(alias) {
            if map
                .get(name)
                .is_some_and(|given| !given.is_null() && *given != v)
            {
                return Err(ApiError::invalid(
                    alias,
                    format!("{alias} is another name of {name}; give only one of them"),
                ));
            }
            // An alias given `null` removes the field, as the name would.
            if !v.is_null() || !map.contains_key(name) {
                map.insert(name.to_owned(), v);
            }
        }
    }
    for f in PLACEMENT_FIELDS {
        if map.contains_key(*f) && !allow.contains(f) {
            return Err(ApiError::invalid(
                f,
                format!("{f} is set by hookd and the request's path, not by the body"),
            ));
        }
    }
    Ok(map)
}

/// `created_at` of an integration made now.
fn now_stamp() -> Value {
    chrono::Utc::now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into()
}

/// A new integration id: 24 hex digits, like Particle's.
fn new_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// The record for `config` placed at `place` with `id` and `version`.
fn placed(
    mut config: Map<String, Value>,
    e: &Entered,
    id: &str,
    version: u64,
    products: Option<Value>,
) -> Value {
    config.insert("id".into(), id.into());
    config.insert("version".into(), version.into());
    match (&e.place, &e.who) {
        (Place::Sandbox, Principal::User(u)) => {
            config.insert("owner".into(), u.as_str().into());
        }
        (Place::Product(p), _) => {
            config.insert("product_id".into(), (*p).into());
        }
        (Place::Org(org), _) => {
            config.insert("org".into(), org.as_str().into());
            config.insert("products".into(), products.unwrap_or(Value::Null));
        }
        (Place::Sandbox, _) => unreachable!("authorize admits only users to the sandbox"),
    }
    Value::Object(config)
}

/// Validates a whole record the way every reader will, plus the catalog
/// and the secrets its scope may use.
fn checked(api: &Api, record: &Value) -> Result<Integration, ApiError> {
    let limits = *api.log.state().limits();
    let i = Integration::from_value_with(record.clone(), &limits)?;
    let state = api.log.state();
    state.check_references(&i)?;
    if state.integration(&i.id).is_none() {
        let owned = state
            .integrations()
            .filter(|other| other.tenant == i.tenant)
            .count();
        if owned >= api.max_per_tenant {
            return Err(ApiError::forbidden(format!(
                "{} already has {owned} integrations, the most allowed (api.max_integrations_per_tenant); delete one first",
                i.tenant
            )));
        }
    }
    drop(state);
    if let Some(name) = api.secrets.forbidden_in(&i) {
        return Err(ApiError::invalid(
            "secrets",
            format!(
                "secret {name} is not granted to {} ([secret_scopes] in the api's config)",
                i.tenant
            ),
        ));
    }
    Ok(i)
}

pub async fn list(State(api): State<Arc<Api>>, headers: HeaderMap, Path(params): Params) -> Reply {
    let e = api.enter(&headers, &params)?;
    let state = api.log.state();
    let mut items: Vec<&Arc<Integration>> = state
        .integrations()
        .filter(|i| visible(&state, &e, i))
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let list: Vec<Value> = items
        .into_iter()
        .map(|i| summary(i, &e.place, &api.history))
        .collect();
    Ok(Json(json!({ "integrations": list })))
}

pub async fn get(State(api): State<Arc<Api>>, headers: HeaderMap, Path(params): Params) -> Reply {
    let e = api.enter(&headers, &params)?;
    let i = api.find(&e, &params["id"])?;
    Ok(Json(api.show(&i, &e.place)))
}

pub async fn create(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = api.enter(&headers, &params)?;
    let is_org = matches!(e.place, Place::Org(_));
    let mut config = config_body(&body, if is_org { &["products"] } else { &[] }, true)?;
    let products = config.remove("products");
    if is_org && products.is_none() {
        return Err(ApiError::invalid(
            "products",
            "products: is required for an organization integration: list the product ids it executes on",
        ));
    }
    // The creation date is hookd's: an export's own is kept when it is a
    // plain RFC 3339 time, anything else is replaced by now.
    let exported = config
        .get("created_at")
        .and_then(Value::as_str)
        .filter(|t| t.len() <= 40 && chrono::DateTime::parse_from_rfc3339(t).is_ok())
        .map(|t| Value::String(t.to_owned()));
    config.insert("created_at".into(), exported.unwrap_or_else(now_stamp));
    let id = new_id();
    let record = placed(config, &e, &id, 1, products);
    checked(&api, &record)?;
    api.write(&format!("integration/{id}"), Some(&record))
        .await?;
    let i = api.find(&e, &id)?;
    Ok((StatusCode::CREATED, Json(api.show(&i, &e.place))))
}

pub async fn edit(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    body: Bytes,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let current = api.find(&e, &params["id"])?;
    refuse_shared(&current, &e.place, "edit")?;
    let is_org = matches!(e.place, Place::Org(_));
    let mut config = config_body(
        &body,
        if is_org {
            &["products", "version"]
        } else {
            &["version"]
        },
        false,
    )?;
    let given = match config.remove("version") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                "version",
                format!("must be the version number edited, got {v}"),
            )
        })?),
    };
    made_from(given, current.version, || {
        format!("integration {:?}", &*current.id)
    })?;
    let products = match (config.remove("products"), &current.scope) {
        (Some(p), _) => Some(p),
        (None, Scope::Org { products, .. }) => Some(products.ids().into()),
        (None, _) => None,
    };
    // An edit changes the fields it carries and keeps the others (as
    // Particle's edits do); `null` removes a field.
    let mut merged = config_of(&current.spec);
    // The creation date stays what it was.
    config.remove("created_at");
    for (field, value) in config {
        if value.is_null() {
            merged.remove(&field);
        } else {
            merged.insert(field, value);
        }
    }
    let record = placed(merged, &e, &current.id, current.version + 1, products);
    checked(&api, &record)?;
    api.write(&format!("integration/{}", current.id), Some(&record))
        .await?;
    let i = api.find(&e, &current.id)?;
    Ok(Json(api.show(&i, &e.place)))
}

pub async fn delete(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Result<StatusCode, ApiError> {
    let e = api.enter(&headers, &params)?;
    let current = api.find(&e, &params["id"])?;
    refuse_shared(&current, &e.place, "delete")?;
    api.write(&format!("integration/{}", current.id), None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An org integration seen under one of its products is the org's to
/// change; the product may only separate from it.
fn refuse_shared(i: &Integration, place: &Place, what: &str) -> Result<(), ApiError> {
    match (&i.scope, place) {
        (Scope::Org { org, .. }, Place::Product(p)) => Err(ApiError::conflict(format!(
            "integration {:?} is shared by org {org:?}; {what} it at /v1/orgs/{org}/integrations/{}, or separate product {p} from it first",
            &*i.id, &*i.id
        ))),
        _ => Ok(()),
    }
}

/// `POST /v1/products/:p/integrations/:id/separate`: product `p` leaves the
/// org integration and gets its own integration with the edited config.
pub async fn separate(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = api.enter(&headers, &params)?;
    let Place::Product(p) = e.place else {
        unreachable!("the route has a product")
    };
    let id = &params["id"];
    let shared = {
        let state = api.log.state();
        let product_org = state.product(p).map(|x| x.org.clone());
        state
            .integration(id)
            .filter(
                |i| matches!(&i.scope, Scope::Org { org, .. } if Some(org) == product_org.as_ref()),
            )
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("integration {id:?}")))?
    };
    let Scope::Org { products, .. } = &shared.scope else {
        unreachable!("filtered to org integrations")
    };
    if !products.ids().contains(&p) {
        return Err(ApiError::invalid(
            "product",
            format!("product {p} is not one of integration {id:?}'s products, so there is nothing to separate"),
        ));
    }
    if products.ids().len() == 1 {
        return Err(ApiError::invalid(
            "product",
            format!("product {p} is the last product of integration {id:?}; edit or delete the integration instead"),
        ));
    }
    let mut config = config_body(&body, &[], true)?;
    // A new integration: made now, whatever the shared one's date.
    config.insert("created_at".into(), now_stamp());
    let new_id = new_id();
    let record = placed(config, &e, &new_id, 1, None);
    let new = checked(&api, &record)?;
    // Compared as they behave: a field at its default value is the same
    // as the field left out, and the creation date is not config.
    let undated = |spec: &IntegrationSpec| {
        let mut c = config_of(spec);
        c.remove("created_at");
        c.retain(|k, v| {
            let default = match k.as_str() {
                "requestType" => v.as_str().is_some_and(|m| m.eq_ignore_ascii_case("POST")),
                "noDefaults" | "disabled" => *v == Value::Bool(false),
                "rejectUnauthorized" => *v == Value::Bool(true),
                "name" => v.as_str().is_some_and(|n| n.trim().is_empty()),
                _ => false,
            };
            !default
        });
        c
    };
    if undated(&new.spec) == undated(&shared.spec) {
        return Err(ApiError::invalid(
            "config",
            "the separated config equals the shared one in every field; change at least one (the name is enough)",
        ));
    }
    let mut org_record = serde_json::to_value(&shared.spec).expect("a spec serializes");
    org_record["version"] = (shared.version + 1).into();
    org_record["products"] = products
        .ids()
        .iter()
        .copied()
        .filter(|x| *x != p)
        .collect::<Vec<_>>()
        .into();
    org_record["separated"] = json!({"product": p, "into": record});
    api.write(&format!("integration/{id}"), Some(&org_record))
        .await?;
    // Restated under its own key, so the log stays right once compaction
    // drops the separation record; applying it changes nothing.
    if let Err(err) = api
        .write(&format!("integration/{new_id}"), Some(&record))
        .await
    {
        tracing::warn!(error = %err.error, integration = %new_id, "restating a separated integration failed; it stands until the org integration is edited again");
    }
    let i = api.find(&e, &new_id)?;
    Ok((StatusCode::CREATED, Json(api.show(&i, &e.place))))
}

#[derive(Debug, Deserialize)]
pub struct DaysQuery {
    days: Option<u32>,
}

pub async fn history(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    Query(q): Query<DaysQuery>,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let i = api.find(&e, &params["id"])?;
    let max = api.history.days();
    let days = q.days.unwrap_or(max);
    if days == 0 || days > max {
        return Err(ApiError::invalid(
            "days",
            format!("must be 1 to {max}, got {days}"),
        ));
    }
    Ok(Json(history_view(
        &i,
        &e.place,
        &api.history,
        &api.log.state(),
        days,
    )))
}

pub async fn log(State(api): State<Arc<Api>>, headers: HeaderMap, Path(params): Params) -> Reply {
    let e = api.enter(&headers, &params)?;
    let i = api.find(&e, &params["id"])?;
    let filter = match (&e.place, &i.scope) {
        (Place::Product(p), Scope::Org { .. }) => Some(Some(*p)),
        _ => None,
    };
    let recent = api.history.recent(&i.id, filter);
    Ok(Json(
        json!({"successes": recent.successes, "errors": recent.errors}),
    ))
}

/// `POST …/:id/test`: one sample event through render, signing and the
/// delivery client now; the outcome and the response (secrets masked).
pub async fn test(State(api): State<Arc<Api>>, headers: HeaderMap, Path(params): Params) -> Reply {
    let e = api.enter(&headers, &params)?;
    let i = api.find(&e, &params["id"])?;
    // Each call sends a real request: bounded per caller.
    if let Decision::Defer(wait) = api.test_calls.reserve(&e.who.key(), Duration::ZERO) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many test calls (api.test_calls_per_minute); try again in {}s",
                wait.as_secs().max(1)
            ),
        ));
    }
    let event = sample_event(&i, &e.place)?;
    let limits = *api.log.state().limits();
    let shown = render(
        &i,
        &EventContext::new(event.clone(), api.secrets.all().clone(), SecretMode::Mask)
            .with_limits(&limits),
    )
    .ok()
    .map(|r| r.to_json());
    let ctx = EventContext::new(
        event.clone(),
        api.secrets.for_integration(&i).clone(),
        SecretMode::Reveal,
    )
    .with_limits(&limits);
    let mut request = match render(&i, &ctx) {
        Ok(r) => r,
        Err(err) => {
            return Ok(Json(
                json!({"outcome": "error", "request": shown, "error": ctx.mask(err.to_string().into())}),
            ))
        }
    };
    // Signing fails with the reason (a missing or unusable key), never a
    // byte of the key.
    if let Err(error) = crate::policy::sign::Signer::sign_for(&i, &ctx, &mut request) {
        return Ok(Json(
            json!({"outcome": "error", "request": shown, "error": error.to_string()}),
        ));
    }
    let outcome = api.deliverer.send(&request, i.reject_unauthorized).await;
    // Masked with the integration's own secrets only: masking another
    // tenant's would confirm a guess echoed back.
    let visible = api.secrets.for_integration(&i);
    Ok(Json(match &outcome.result {
        Ok(status) => json!({
            "outcome": if outcome.is_success() { "success" } else { "error" },
            "request": shown,
            "response": {"status": status, "body": crate::control::traffic::book::shown_body(&outcome.body, visible)},
            "elapsed_ms": outcome.elapsed.as_millis() as u64,
        }),
        Err(err) => json!({
            "outcome": "error",
            "request": shown,
            "error": mask(&err.to_string(), visible),
            "elapsed_ms": outcome.elapsed.as_millis() as u64,
        }),
    }))
}

/// The sample event `test` and `preview` put through an integration: its
/// prefix as the name, on the product it is viewed under (or its first),
/// from its owner for a sandbox.
fn sample_event(i: &Integration, place: &Place) -> Result<DeviceEvent, ApiError> {
    let (product, user) = match (place, &i.scope) {
        (Place::Product(p), _) => (Some(*p), None),
        (_, Scope::Org { products, .. }) => (products.ids().first().copied(), None),
        (_, Scope::Product { product }) => (Some(*product), None),
        (_, Scope::Sandbox { owner }) => (None, Some(owner.clone())),
    };
    let mut event = json!({
        "name": i.trigger.as_str(),
        "data": "test event from hookd",
        "published_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "coreid": i.device_id.clone().unwrap_or_else(|| "000000000000000000000000".into()),
        "userid": user.unwrap_or_default(),
        "id": format!("test-{}", new_id()),
    });
    if let Some(p) = product {
        event["productID"] = p.into();
    }
    let origin = Origin {
        topic: "test".into(),
        partition: 0,
        offset: 0,
    };
    DeviceEvent::decode(event.to_string().as_bytes(), &origin, chrono::Utc::now())
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))
}

/// `GET …/:id/preview`: the request the integration would send for the
/// sample event (the dry run of `hookd render`), secrets masked; nothing
/// is sent.
pub async fn preview(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let i = api.find(&e, &params["id"])?;
    let event = sample_event(&i, &e.place)?;
    let shown_event: Value = serde_json::from_str(&event.raw).unwrap_or(Value::Null);
    let limits = *api.log.state().limits();
    let ctx = EventContext::new(
        event,
        api.secrets.for_integration(&i).clone(),
        SecretMode::Mask,
    )
    .with_limits(&limits);
    Ok(Json(match render(&i, &ctx) {
        Ok(r) => json!({"event": shown_event, "request": r.to_json()}),
        Err(err) => json!({"event": shown_event, "error": err.to_string()}),
    }))
}

pub async fn list_products(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let org = e.org();
    let state = api.log.state();
    let products: Vec<&Product> = state.products().filter(|p| p.org == org).collect();
    Ok(Json(json!({ "products": products })))
}

/// The product id of the path and its catalog record, whichever org has it
/// (each caller decides what another org's product answers).
fn catalog_entry(
    api: &Api,
    params: &HashMap<String, String>,
) -> Result<(u32, Option<Product>), ApiError> {
    let raw = &params["id"];
    let p = raw
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::not_found(format!("product {raw:?}")))?;
    let found = api.log.state().product(p).cloned();
    Ok((p, found))
}

pub async fn get_product(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let org = e.org();
    match catalog_entry(&api, &params)? {
        (_, Some(x)) if x.org == org => Ok(Json(json!(x))),
        // Another org's product is not found either.
        (p, _) => Err(ApiError::not_found(format!("product {p}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductBody {
    name: String,
    /// The version the edit was made from, if the caller checks.
    #[serde(default)]
    version: Option<u64>,
}

/// `PUT /v1/orgs/:org/products/:p`: the operator keeps the catalog.
pub async fn put_product(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    body: Bytes,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let org = e.operator_org("the product catalog is kept by the operator")?;
    let b: ProductBody = serde_json::from_slice(&body).map_err(|err| {
        ApiError::invalid("body", format!("expected {{\"name\": \"...\"}}: {err}"))
    })?;
    let (p, current) = catalog_entry(&api, &params)?;
    if current.as_ref().is_some_and(|x| x.org != org) {
        return Err(ApiError::conflict(format!(
            "product {p} belongs to another org"
        )));
    }
    if api.log.state().org(org).is_none() {
        return Err(ApiError::invalid(
            "org",
            format!("org {org:?} has no record; create it first (PUT /v1/orgs/{org})"),
        ));
    }
    let version = current.as_ref().map_or(0, |c| c.version);
    made_from(b.version, version, || format!("product {p}"))?;
    let record = Product {
        id: p,
        name: b.name,
        org: org.to_owned(),
        version: version + 1,
    };
    api.write(&format!("product/{p}"), Some(&json!(record)))
        .await?;
    let saved = api.log.state().product(p).cloned();
    Ok(Json(json!(saved)))
}

pub async fn get_org(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let org = e.org();
    let found = api.log.state().org(org).cloned();
    found
        .map(|o| Json(json!(o)))
        .ok_or_else(|| ApiError::not_found(format!("org {org:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgBody {
    name: String,
    plan: Plan,
    #[serde(default)]
    version: Option<u64>,
}

/// `PUT /v1/orgs/:org`: the operator keeps orgs and their plans.
pub async fn put_org(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
    body: Bytes,
) -> Reply {
    let e = api.enter(&headers, &params)?;
    let org = e.operator_org("orgs and their plans are kept by the operator")?;
    let b: OrgBody = serde_json::from_slice(&body).map_err(|err| {
        ApiError::invalid(
            "body",
            format!(
                "expected {{\"name\": \"...\", \"plan\": \"free|basic|growth|enterprise\"}}: {err}"
            ),
        )
    })?;
    let version = api.log.state().org(org).map_or(0, |o| o.version);
    made_from(b.version, version, || format!("org {org:?}"))?;
    let record = Org {
        id: org.to_owned(),
        name: b.name,
        plan: b.plan,
        version: version + 1,
    };
    api.write(&format!("org/{org}"), Some(&json!(record)))
        .await?;
    Ok(Json(json!(record)))
}

pub async fn delete_product(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(params): Params,
) -> Result<StatusCode, ApiError> {
    let e = api.enter(&headers, &params)?;
    let org = e.operator_org("the product catalog is kept by the operator")?;
    let (p, current) = catalog_entry(&api, &params)?;
    if !current.is_some_and(|x| x.org == org) {
        return Err(ApiError::not_found(format!("product {p}")));
    }
    if let Some(i) = api.log.state().product_in_use(p) {
        return Err(ApiError::conflict(format!(
            "product {p} still has integration {:?}; delete it or separate the product from it first",
            &*i.id
        )));
    }
    api.write(&format!("product/{p}"), None).await?;
    Ok(StatusCode::NO_CONTENT)
}
