//! What the api's handlers share: the process's view of the config log and
//! its writer, the traffic history, the tokens, the test sender, the
//! console's sessions; and the reads and writes every resource makes.
//!
//! An integration is found only within the place of the path ([`visible`]),
//! so a record of another scope answers 404 exactly like a missing one. A
//! write is checked against the current state first (400/409 with the field
//! at fault), then written to the config log, and answered once the log's
//! own decision came back (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::auth::{Place, Tokens};
use super::error::ApiError;
use super::sessions::Sessions;
use super::views::{detail, IntegrationDetail};
use crate::control::config_log::follower::ConfigLog;
use crate::control::config_log::state::{ConfigState, Key};
use crate::control::config_log::writer::ConfigWriter;
use crate::control::history::History;
use crate::model::integration::{Integration, Scope};
use crate::model::secret_scopes::SecretPolicy;
use crate::pipeline::deliver::Deliverer;
use crate::policy::throttle::{LimitSettings, Throttle};

/// What every handler shares.
pub(super) struct Api {
    pub(super) log: Arc<ConfigLog>,
    pub(super) writer: ConfigWriter,
    pub(super) history: Arc<History>,
    pub(super) tokens: Tokens,
    /// For `test` sends: the workers' delivery client and outbound policy.
    pub(super) deliverer: Deliverer,
    pub(super) secrets: SecretPolicy,
    /// `api.max_integrations_per_tenant`.
    pub(super) max_per_tenant: usize,
    /// `test` calls per scope (`api.test_calls_per_minute`), keyed by the
    /// caller's scope.
    pub(super) test_calls: Throttle,
    /// The web console's signed-in sessions.
    pub(super) console: Sessions,
    /// `api.secure_cookies`.
    pub(super) secure_cookies: bool,
}

impl Api {
    /// The integration `id` as seen from `place`: the sandbox's own, the
    /// org's own, or a product's own and the org integrations shared with it.
    pub(super) fn find(&self, place: &Place, id: &str) -> Result<Arc<Integration>, ApiError> {
        let state = self.log.state();
        let found = state.integration(id).filter(|i| visible(&state, place, i));
        found
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("integration {id:?}")))
    }

    /// Checks a record against the current state, writes it and waits for
    /// the log's decision.
    pub(super) async fn write(&self, key: &Key, value: Option<&Value>) -> Result<(), ApiError> {
        let key = key.to_string();
        let bytes = value.map(|v| serde_json::to_vec(v).expect("JSON serializes"));
        self.log.state().validate(&key, bytes.as_deref())?;
        self.writer.write(&key, bytes.as_deref()).await?;
        Ok(())
    }

    /// `i` alone as `place` shows it, with its history over the kept days.
    pub(super) fn show(&self, i: &Integration, place: &Place) -> IntegrationDetail {
        detail(
            i,
            place,
            &self.history,
            &self.log.state(),
            self.history.days(),
        )
    }
}

/// Whether `i` belongs to `place`: the sandbox's own, the org's own, or a
/// product's own and the org integrations shared with it.
pub(super) fn visible(state: &ConfigState, place: &Place, i: &Integration) -> bool {
    match (place, &i.scope) {
        (Place::Sandbox(me), Scope::Sandbox { owner }) => me == owner,
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
pub(super) fn made_from(
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

/// A limiter of `per_minute` calls per key, all of them at once at most.
pub(super) fn test_call_limit(per_minute: u32) -> Throttle {
    Throttle::new(LimitSettings {
        rate: f64::from(per_minute) / 60.0,
        burst: per_minute,
        max_wait: Duration::ZERO,
        max_deferrals: 0,
        max_waiting: std::num::NonZeroUsize::MIN,
        hosts: Default::default(),
    })
}
