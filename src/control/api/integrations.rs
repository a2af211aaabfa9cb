//! Integrations of a place (the caller's sandbox, a product, an org): list,
//! get, create, edit, delete, and a product separated from an org
//! integration.
//!
//! In: the caller admitted at the path's place ([`At`], [`ProductAt`]) and
//! a JSON object body (Particle's older field names taken too). Out: the
//! integration as [`detail`](super::views::detail) shows it (201 when
//! made), a list of [`summary`] lines, or 204; records written to the
//! config log under `integration/<id>` ([`Api::write`]). An org
//! integration seen under one of its products is the org's to change: the
//! product may only separate from it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::app::{made_from, visible, Api};
use super::auth::Place;
use super::error::ApiError;
use super::extract::{At, ItemId, ProductAt};
use super::views::{config_of, summary, IntegrationDetail, IntegrationSummary, PLACEMENT_FIELDS};
use crate::control::config_log::state::Key;
use crate::model::integration::{Integration, IntegrationSpec, Scope};

type Reply = Result<Json<IntegrationDetail>, ApiError>;

/// `{"integrations": […]}`, a [`summary`] of each, by id.
#[derive(Serialize)]
pub(super) struct Listed {
    pub(super) integrations: Vec<IntegrationSummary>,
}

pub(super) async fn list(State(api): State<Arc<Api>>, at: At) -> Json<Listed> {
    let state = api.log.state();
    let mut items: Vec<&Arc<Integration>> = state
        .integrations()
        .filter(|i| visible(&state, at.place(), i))
        .collect();
    items.sort_by(|a, b| a.id.cmp(&b.id));
    let integrations = items
        .into_iter()
        .map(|i| summary(i, at.place(), &api.history))
        .collect();
    Json(Listed { integrations })
}

pub(super) async fn get(State(api): State<Arc<Api>>, at: At, ItemId(id): ItemId) -> Reply {
    let i = api.find(at.place(), &id)?;
    Ok(Json(api.show(&i, at.place())))
}

pub(super) async fn create(
    State(api): State<Arc<Api>>,
    at: Result<At, ApiError>,
    body: Bytes,
) -> Result<(StatusCode, Json<IntegrationDetail>), ApiError> {
    let at = at?;
    let is_org = matches!(at.place(), Place::Org(_));
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
    let record = placed(config, at.place(), &id, 1, products);
    checked(&api, &record)?;
    api.write(&Key::Integration(id.clone()), Some(&record))
        .await?;
    let i = api.find(at.place(), &id)?;
    Ok((StatusCode::CREATED, Json(api.show(&i, at.place()))))
}

pub(super) async fn edit(
    State(api): State<Arc<Api>>,
    at: Result<At, ApiError>,
    ItemId(id): ItemId,
    body: Bytes,
) -> Reply {
    let at = at?;
    let current = api.find(at.place(), &id)?;
    refuse_shared(&current, at.place(), "edit")?;
    let is_org = matches!(at.place(), Place::Org(_));
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
    let record = placed(
        merged,
        at.place(),
        &current.id,
        current.version + 1,
        products,
    );
    checked(&api, &record)?;
    api.write(&Key::Integration(current.id.to_string()), Some(&record))
        .await?;
    let i = api.find(at.place(), &current.id)?;
    Ok(Json(api.show(&i, at.place())))
}

pub(super) async fn delete(
    State(api): State<Arc<Api>>,
    at: At,
    ItemId(id): ItemId,
) -> Result<StatusCode, ApiError> {
    let current = api.find(at.place(), &id)?;
    refuse_shared(&current, at.place(), "delete")?;
    api.write(&Key::Integration(current.id.to_string()), None)
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
pub(super) async fn separate(
    State(api): State<Arc<Api>>,
    caller: Result<ProductAt, ApiError>,
    ItemId(id): ItemId,
    body: Bytes,
) -> Result<(StatusCode, Json<IntegrationDetail>), ApiError> {
    let (at, p) = caller?.into_parts();
    // The org integration of the product's org, with its products.
    let (shared, products) = {
        let state = api.log.state();
        let product_org = state.product(p).map(|x| x.org.clone());
        state
            .integration(&id)
            .and_then(|i| match &i.scope {
                Scope::Org { org, products } if Some(org) == product_org.as_ref() => {
                    Some((i.clone(), products.clone()))
                }
                _ => None,
            })
            .ok_or_else(|| ApiError::not_found(format!("integration {id:?}")))?
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
    let record = placed(config, at.place(), &new_id, 1, None);
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
    api.write(&Key::Integration(id.clone()), Some(&org_record))
        .await?;
    // Restated under its own key, so the log stays right once compaction
    // drops the separation record; applying it changes nothing.
    if let Err(err) = api
        .write(&Key::Integration(new_id.clone()), Some(&record))
        .await
    {
        tracing::warn!(error = %err.error, integration = %new_id, "restating a separated integration failed; it stands until the org integration is edited again");
    }
    let i = api.find(at.place(), &new_id)?;
    Ok((StatusCode::CREATED, Json(api.show(&i, at.place()))))
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
pub(super) fn new_id() -> String {
    format!("{:024x}", rand::random::<u128>() >> 32)
}

/// The record for `config` placed at `place` with `id` and `version`.
fn placed(
    mut config: Map<String, Value>,
    place: &Place,
    id: &str,
    version: u64,
    products: Option<Value>,
) -> Value {
    config.insert("id".into(), id.into());
    config.insert("version".into(), version.into());
    match place {
        Place::Sandbox(owner) => {
            config.insert("owner".into(), owner.as_str().into());
        }
        Place::Product(p) => {
            config.insert("product_id".into(), (*p).into());
        }
        Place::Org(org) => {
            config.insert("org".into(), org.as_str().into());
            config.insert("products".into(), products.unwrap_or(Value::Null));
        }
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
