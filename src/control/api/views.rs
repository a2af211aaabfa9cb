//! JSON views of integrations, products and traffic, as the API returns them.
//!
//! An integration is shown with its scope, whether it is shared (an org
//! integration), how many products it executes on, its traffic today (UTC)
//! and over the kept days — summed over its products, or for one product
//! when listed under that product — and, when viewed alone, its config and
//! daily history in aggregate and per product.

use chrono::NaiveDate;
use serde_json::{json, Map, Value};

use super::auth::Place;
use crate::control::config_log::state::ConfigState;
use crate::control::history::{today, History, Products};
use crate::model::integration::{Integration, IntegrationSpec, Scope};
use crate::model::outcome::Counts;

/// Fields of a record that say where it executes and which version it is:
/// set by the path and the api, never part of the config a user edits.
pub const PLACEMENT_FIELDS: &[&str] = &["id", "version", "owner", "product_id", "org", "products"];

/// The integration's config as a user edits it: the record without its
/// placement fields.
pub fn config_of(spec: &IntegrationSpec) -> Map<String, Value> {
    let mut value = serde_json::to_value(spec).expect("a spec serializes");
    let map = value.as_object_mut().expect("a spec is an object");
    for f in PLACEMENT_FIELDS {
        map.remove(*f);
    }
    std::mem::take(map)
}

pub fn counts(c: Counts) -> Value {
    json!({"success": c.success, "error": c.error, "skipped": c.skipped})
}

/// Whose traffic of `i` is shown under `place`: a shared integration
/// listed under one product shows that product's traffic.
pub fn products_shown(i: &Integration, place: &Place) -> Products {
    match (place, &i.scope) {
        (Place::Product(p), Scope::Org { .. }) => Products::One(*p),
        _ => Products::All,
    }
}

/// One line of a list.
pub fn summary(i: &Integration, place: &Place, history: &History) -> Value {
    let filter = products_shown(i, place);
    let mut v = json!({
        "id": &*i.id,
        "name": i.name,
        "version": i.version,
        // Particle's tools keep only the items of this type.
        "integration_type": "Webhook",
        "event": i.trigger.as_str(),
        "url": i.spec.url,
        "requestType": i.request.method.as_str(),
        "disabled": i.disabled,
        "traffic": {
            "today": counts(history.total(&i.id, filter, today())),
            format!("last_{}_days", history.days()): counts(history.total(&i.id, filter, history.window_start())),
        },
    });
    let m = v.as_object_mut().expect("an object");
    if let Some(at) = &i.spec.created_at {
        m.insert("created_at".into(), at.as_str().into());
    }
    if let Some(d) = &i.device_id {
        m.insert("deviceID".into(), d.as_str().into());
    }
    match &i.scope {
        Scope::Sandbox { owner } => {
            m.insert("scope".into(), "sandbox".into());
            m.insert("owner".into(), owner.as_str().into());
            m.insert("shared".into(), false.into());
        }
        Scope::Product { product } => {
            m.insert("scope".into(), "product".into());
            m.insert("product_id".into(), (*product).into());
            m.insert("shared".into(), false.into());
        }
        Scope::Org { org, products } => {
            m.insert("scope".into(), "organization".into());
            m.insert("org".into(), org.as_str().into());
            m.insert("shared".into(), true.into());
            m.insert("products".into(), products.ids().into());
            m.insert("executes_on".into(), products.ids().len().into());
            if let Place::Product(_) = place {
                m.insert("org_integration".into(), (*i.id).into());
            }
        }
    }
    v
}

/// One integration alone: its summary, config and history.
pub fn detail(
    i: &Integration,
    place: &Place,
    history: &History,
    state: &ConfigState,
    days: u32,
) -> Value {
    let mut v = summary(i, place, history);
    let m = v.as_object_mut().expect("an object");
    m.insert("config".into(), Value::Object(config_of(&i.spec)));
    m.insert(
        "history".into(),
        history_view(i, place, history, state, days),
    );
    v
}

/// Daily counts over the last `days` days (zeros included, oldest first),
/// in aggregate and per product.
pub fn history_view(
    i: &Integration,
    place: &Place,
    history: &History,
    state: &ConfigState,
    days: u32,
) -> Value {
    let last = today();
    let first = last - chrono::Days::new(u64::from(days.max(1)) - 1);
    let daily = history.daily(&i.id);
    let series = |want: Products| -> Vec<Value> {
        let mut day = first;
        let mut out = Vec::new();
        while day <= last {
            let c = daily
                .iter()
                .filter(|(d, p, _)| *d == day && want.admits(*p))
                .fold(Counts::default(), |mut acc, (_, _, c)| {
                    acc += *c;
                    acc
                });
            out.push(day_counts(day, c));
            day = day.succ_opt().expect("not the end of time");
        }
        out
    };
    let products: Vec<u32> = match (&i.scope, place) {
        (Scope::Org { .. }, Place::Product(p)) => vec![*p],
        (Scope::Org { products, .. }, _) => products.ids().to_vec(),
        (Scope::Product { product }, _) => vec![*product],
        // Sandbox traffic counts under whatever product the device had.
        (Scope::Sandbox { .. }, _) => {
            let mut ps: Vec<u32> = daily.iter().filter_map(|(_, p, _)| *p).collect();
            ps.sort_unstable();
            ps.dedup();
            ps
        }
    };
    let per_product: Vec<Value> = products
        .iter()
        .map(|p| {
            // A sandbox's devices may belong to any organization's products:
            // their owner sees the ids the traffic came under, never the
            // names or organizations behind them.
            let found = match i.scope {
                Scope::Sandbox { .. } => None,
                _ => state.product(*p),
            };
            let (name, link) = match found {
                Some(found) => (
                    Value::from(found.name.as_str()),
                    Value::from(format!("/v1/orgs/{}/products/{p}", found.org)),
                ),
                None => (Value::Null, Value::Null),
            };
            json!({"product": p, "name": name, "link": link, "days": series(Products::One(*p))})
        })
        .collect();
    json!({
        "days": days,
        "aggregate": series(products_shown(i, place)),
        "per_product": per_product,
    })
}

fn day_counts(day: NaiveDate, c: Counts) -> Value {
    json!({"date": day.to_string(), "success": c.success, "error": c.error, "skipped": c.skipped})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::traffic::{minute_of, StatsDelta};

    /// Every day of every series, with traffic on several past days: each
    /// day shows that day's counts, per product and summed, not another
    /// day's.
    #[test]
    fn every_day_of_every_series_shows_its_own_counts() {
        let i = Integration::from_value(json!({"id": "o", "org": "acme", "products": [1, 2],
            "event": "temp", "url": "https://example.com/in"}))
        .unwrap();
        let h = History::new(std::num::NonZeroU32::new(30).unwrap());
        let now = minute_of(chrono::Utc::now());
        // (days ago, product, successes)
        let traffic = [(0, 1, 5), (0, 2, 3), (2, 1, 4), (10, 2, 7), (29, 1, 1)];
        for (ago, product, success) in traffic {
            h.add_delta(&StatsDelta {
                integration: "o".into(),
                product: Some(product),
                minute: now - chrono::Days::new(ago),
                success,
                error: 0,
                skipped: 0,
            });
        }
        let expect = |product: Option<u32>, day: NaiveDate| -> u64 {
            traffic
                .iter()
                .filter(|(ago, p, _)| {
                    today() - chrono::Days::new(*ago) == day
                        && product.is_none_or(|want| want == *p)
                })
                .map(|(_, _, s)| *s)
                .sum()
        };
        let state = ConfigState::default();
        let check = |series: &Value, product: Option<u32>| {
            let days = series.as_array().unwrap();
            assert_eq!(days.len(), 30);
            for d in days {
                let day: NaiveDate = d["date"].as_str().unwrap().parse().unwrap();
                assert_eq!(d["success"], expect(product, day), "{product:?} on {day}");
            }
        };
        let org = history_view(&i, &Place::Org("acme".into()), &h, &state, 30);
        check(&org["aggregate"], None);
        for p in &org["per_product"].as_array().unwrap()[..] {
            check(&p["days"], Some(p["product"].as_u64().unwrap() as u32));
        }
        // Viewed under product 2, the shared integration's aggregate is
        // product 2's.
        let under = history_view(&i, &Place::Product(2), &h, &state, 30);
        check(&under["aggregate"], Some(2));
        check(&under["per_product"][0]["days"], Some(2));
    }
}
