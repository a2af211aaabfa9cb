//! JSON views of integrations, products and traffic, as the API returns them.
//!
//! An integration is shown with its scope, whether it is shared (an org
//! integration), how many products it executes on, its traffic today (UTC)
//! and over the kept days — summed over its products, or for one product
//! when listed under that product — and, when viewed alone, its config and
//! daily history in aggregate and per product.

use chrono::NaiveDate;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

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

/// Whose traffic of `i` is shown under `place`: a shared integration
/// listed under one product shows that product's traffic.
pub fn products_shown(i: &Integration, place: &Place) -> Products {
    match (place, &i.scope) {
        (Place::Product(p), Scope::Org { .. }) => Products::One(*p),
        _ => Products::All,
    }
}

/// One line of a list: an integration, where it executes and its traffic.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationSummary {
    pub id: String,
    pub name: String,
    pub version: u64,
    /// Always `Webhook`: Particle's tools keep only the items of this type.
    pub integration_type: &'static str,
    pub event: String,
    #[serialize_always]
    pub url: Option<String>,
    #[serde(rename = "requestType")]
    pub request_type: &'static str,
    pub disabled: bool,
    pub traffic: Traffic,
    pub created_at: Option<String>,
    #[serde(rename = "deviceID")]
    pub device_id: Option<String>,
    /// An organization's integration, executing on a list of products.
    pub shared: bool,
    #[serde(flatten)]
    pub placement: Placement,
}

/// Where an integration executes, as `scope` and the fields that go with it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum Placement {
    Sandbox {
        owner: String,
    },
    Product {
        product_id: u32,
    },
    Organization {
        org: String,
        products: Vec<u32>,
        executes_on: usize,
        /// Listed under one of its products: the org integration's id (the
        /// product's own, after a separation, has another).
        org_integration: Option<String>,
    },
}

impl IntegrationSummary {
    /// The products an org integration executes on (none for the others).
    pub fn products(&self) -> &[u32] {
        match &self.placement {
            Placement::Organization { products, .. } => products,
            _ => &[],
        }
    }

    /// The org of an org integration.
    pub fn org(&self) -> Option<&str> {
        match &self.placement {
            Placement::Organization { org, .. } => Some(org),
            _ => None,
        }
    }

    /// The product of a product's own integration.
    pub fn product_id(&self) -> Option<u32> {
        match self.placement {
            Placement::Product { product_id } => Some(product_id),
            _ => None,
        }
    }
}

/// Traffic today (UTC) and over the kept days, as
/// `{"today": …, "last_N_days": …}`.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    pub today: Counts,
    /// N, the kept days.
    pub days: u32,
    pub last_days: Counts,
}

impl Serialize for Traffic {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("today", &self.today)?;
        map.serialize_entry(&format!("last_{}_days", self.days), &self.last_days)?;
        map.end()
    }
}

/// One integration alone: its summary, its config and its history.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationDetail {
    #[serde(flatten)]
    pub summary: IntegrationSummary,
    /// As the user edits it (see [`config_of`]): the record's own JSON.
    pub config: Map<String, Value>,
    pub history: HistoryView,
}

/// Daily counts over the last `days` days (zeros included, oldest first),
/// in aggregate and per product.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    pub days: u32,
    pub aggregate: Vec<DayCounts>,
    pub per_product: Vec<ProductHistory>,
}

/// One product's days; its name and catalog link when the caller may see
/// them (null otherwise).
#[derive(Debug, Clone, Serialize)]
pub struct ProductHistory {
    pub product: u32,
    pub name: Option<String>,
    pub link: Option<String>,
    pub days: Vec<DayCounts>,
}

/// One day's counts: `{"date": "YYYY-MM-DD", "success", "error", "skipped"}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DayCounts {
    #[serde(serialize_with = "iso_date")]
    pub date: NaiveDate,
    #[serde(flatten)]
    pub counts: Counts,
}

fn iso_date<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(date)
}

/// One line of a list.
pub fn summary(i: &Integration, place: &Place, history: &History) -> IntegrationSummary {
    let filter = products_shown(i, place);
    let placement = match &i.scope {
        Scope::Sandbox { owner } => Placement::Sandbox {
            owner: owner.clone(),
        },
        Scope::Product { product } => Placement::Product {
            product_id: *product,
        },
        Scope::Org { org, products } => Placement::Organization {
            org: org.clone(),
            products: products.ids().to_vec(),
            executes_on: products.ids().len(),
            org_integration: matches!(place, Place::Product(_)).then(|| i.id.to_string()),
        },
    };
    IntegrationSummary {
        id: i.id.to_string(),
        name: i.name.clone(),
        version: i.version,
        integration_type: "Webhook",
        event: i.trigger.as_str().to_owned(),
        url: i.spec.url.clone(),
        request_type: i.request.method.as_str(),
        disabled: i.disabled,
        traffic: Traffic {
            today: history.total(&i.id, filter, today()),
            days: history.days(),
            last_days: history.total(&i.id, filter, history.window_start()),
        },
        created_at: i.spec.created_at.clone(),
        device_id: i.device_id.clone(),
        shared: matches!(i.scope, Scope::Org { .. }),
        placement,
    }
}

/// One integration alone: its summary, config and history.
pub fn detail(
    i: &Integration,
    place: &Place,
    history: &History,
    state: &ConfigState,
    days: u32,
) -> IntegrationDetail {
    IntegrationDetail {
        summary: summary(i, place, history),
        config: config_of(&i.spec),
        history: history_view(i, place, history, state, days),
    }
}

/// Daily counts over the last `days` days (zeros included, oldest first),
/// in aggregate and per product.
pub fn history_view(
    i: &Integration,
    place: &Place,
    history: &History,
    state: &ConfigState,
    days: u32,
) -> HistoryView {
    let last = today();
    let first = last - chrono::Days::new(u64::from(days.max(1)) - 1);
    let daily = history.daily(&i.id);
    let series = |want: Products| -> Vec<DayCounts> {
        let mut day = first;
        let mut out = Vec::new();
        while day <= last {
            let counts = daily
                .iter()
                .filter(|(d, p, _)| *d == day && want.admits(*p))
                .fold(Counts::default(), |mut acc, (_, _, c)| {
                    acc += *c;
                    acc
                });
            out.push(DayCounts { date: day, counts });
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
    let per_product = products
        .iter()
        .map(|p| {
            // A sandbox's devices may belong to any organization's products:
            // their owner sees the ids the traffic came under, never the
            // names or organizations behind them.
            let found = match i.scope {
                Scope::Sandbox { .. } => None,
                _ => state.product(*p),
            };
            ProductHistory {
                product: *p,
                name: found.map(|f| f.name.clone()),
                link: found.map(|f| format!("/v1/orgs/{}/products/{p}", f.org)),
                days: series(Products::One(*p)),
            }
        })
        .collect();
    HistoryView {
        days,
        aggregate: series(products_shown(i, place)),
        per_product,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::traffic::{minute_of, StatsDelta};
    use serde_json::json;

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
        // As the api answers it: the JSON.
        let view = |place| serde_json::to_value(history_view(&i, &place, &h, &state, 30)).unwrap();
        let org = view(Place::Org("acme".into()));
        check(&org["aggregate"], None);
        for p in &org["per_product"].as_array().unwrap()[..] {
            check(&p["days"], Some(p["product"].as_u64().unwrap() as u32));
        }
        // Viewed under product 2, the shared integration's aggregate is
        // product 2's.
        let under = view(Place::Product(2));
        check(&under["aggregate"], Some(2));
        check(&under["per_product"][0]["days"], Some(2));
    }
}
