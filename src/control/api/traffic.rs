//! Traffic of one integration: its daily history, its delivery log, a test
//! send, and the request it would send.
//!
//! In: the caller admitted at the path's place ([`At`]) and the
//! integration's id; `?days=` for the history. Out: JSON, secrets masked:
//! the history as [`history_view`] shows it, the newest successes and
//! errors ([`DeliveryLog`]), a test's outcome ([`Tested`]), the preview
//! ([`Preview`]). A shared integration seen under one of its products shows
//! that product's traffic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::app::Api;
use super::auth::Place;
use super::error::ApiError;
use super::extract::{At, ItemId};
use super::integrations::new_id;
use super::views::{history_view, products_shown, HistoryView};
use crate::model::event::{DeviceEvent, Origin};
use crate::model::integration::{Integration, Scope};
use crate::model::outcome::OutcomeKind;
use crate::model::variables::{EventContext, SecretMode};
use crate::pipeline::render::render;
use crate::pipeline::traffic::{mask, shown_body, LogEntry};
use crate::policy::sign::Signer;
use crate::policy::throttle::Decision;

#[derive(Debug, Deserialize)]
pub(super) struct DaysQuery {
    days: Option<u32>,
}

/// `GET …/:id/history`: daily counts over the last `days` days (all the
/// kept days unless asked).
pub(super) async fn history(
    State(api): State<Arc<Api>>,
    // The path and the query are read before the caller is checked, as
    // they always were: one axum cannot read is its 400, whoever asks.
    ItemId(id): ItemId,
    Query(q): Query<DaysQuery>,
    at: At,
) -> Result<Json<HistoryView>, ApiError> {
    let i = api.find(at.place(), &id)?;
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
        at.place(),
        &api.history,
        &api.log.state(),
        days,
    )))
}

/// `{"successes": […], "errors": […]}`: the newest of each, oldest first.
#[derive(Serialize)]
pub(super) struct DeliveryLog {
    successes: VecDeque<LogEntry>,
    errors: VecDeque<LogEntry>,
}

/// `GET …/:id/log`: the delivery log.
pub(super) async fn log(
    State(api): State<Arc<Api>>,
    at: At,
    ItemId(id): ItemId,
) -> Result<Json<DeliveryLog>, ApiError> {
    let i = api.find(at.place(), &id)?;
    let recent = api.history.recent(&i.id, products_shown(&i, at.place()));
    Ok(Json(DeliveryLog {
        successes: recent.successes,
        errors: recent.errors,
    }))
}

/// A test's outcome: `success` or `error`, the request (secrets masked;
/// null when it does not render), and the response with the time it took,
/// or the error.
#[serde_with::skip_serializing_none]
#[derive(Serialize)]
pub(super) struct Tested {
    outcome: OutcomeKind,
    #[serialize_always]
    request: Option<Value>,
    response: Option<TestResponse>,
    error: Option<String>,
    elapsed_ms: Option<u64>,
}

#[derive(Serialize)]
struct TestResponse {
    status: u16,
    body: String,
}

impl Tested {
    /// Nothing was sent, for `error`.
    fn unsent(request: Option<Value>, error: String) -> Tested {
        Tested {
            outcome: OutcomeKind::Error,
            request,
            response: None,
            error: Some(error),
            elapsed_ms: None,
        }
    }
}

/// `POST …/:id/test`: one sample event through render, signing and the
/// delivery client now; the outcome and the response (secrets masked).
pub(super) async fn test(
    State(api): State<Arc<Api>>,
    at: At,
    ItemId(id): ItemId,
) -> Result<Json<Tested>, ApiError> {
    let i = api.find(at.place(), &id)?;
    // Each call sends a real request: bounded per caller.
    if let Decision::Defer(wait) = api.test_calls.reserve(&at.who().key(), Duration::ZERO) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many test calls (api.test_calls_per_minute); try again in {}s",
                wait.as_secs().max(1)
            ),
        ));
    }
    let event = sample_event(&i, at.place())?;
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
            let error = ctx.mask(err.to_string().into()).into_owned();
            return Ok(Json(Tested::unsent(shown, error)));
        }
    };
    // Signing fails with the reason (a missing or unusable key), never a
    // byte of the key.
    if let Err(error) = Signer::sign_for(&i, &ctx, &mut request) {
        return Ok(Json(Tested::unsent(shown, error.to_string())));
    }
    let outcome = api.deliverer.send(&request, i.reject_unauthorized).await;
    // Masked with the integration's own secrets only: masking another
    // tenant's would confirm a guess echoed back.
    let visible = api.secrets.for_integration(&i);
    let elapsed_ms = Some(outcome.elapsed.as_millis() as u64);
    let answered = if outcome.is_success() {
        OutcomeKind::Success
    } else {
        OutcomeKind::Error
    };
    Ok(Json(match &outcome.result {
        Ok(status) => Tested {
            outcome: answered,
            request: shown,
            response: Some(TestResponse {
                status: *status,
                body: shown_body(&outcome.body, visible),
            }),
            error: None,
            elapsed_ms,
        },
        Err(err) => Tested {
            outcome: OutcomeKind::Error,
            request: shown,
            response: None,
            error: Some(mask(&err.to_string(), visible)),
            elapsed_ms,
        },
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

/// A preview: the sample event and the request for it (secrets masked), or
/// why it does not render.
#[serde_with::skip_serializing_none]
#[derive(Serialize)]
pub(super) struct Preview {
    event: Value,
    request: Option<Value>,
    error: Option<String>,
}

/// `GET …/:id/preview`: the request the integration would send for the
/// sample event (the dry run of `hookd render`), secrets masked; nothing
/// is sent.
pub(super) async fn preview(
    State(api): State<Arc<Api>>,
    at: At,
    ItemId(id): ItemId,
) -> Result<Json<Preview>, ApiError> {
    let i = api.find(at.place(), &id)?;
    let event = sample_event(&i, at.place())?;
    let shown_event: Value = serde_json::from_str(&event.raw).unwrap_or(Value::Null);
    let limits = *api.log.state().limits();
    let ctx = EventContext::new(
        event,
        api.secrets.for_integration(&i).clone(),
        SecretMode::Mask,
    )
    .with_limits(&limits);
    let (request, error) = match render(&i, &ctx) {
        Ok(r) => (Some(r.to_json()), None),
        Err(err) => (None, Some(err.to_string())),
    };
    Ok(Json(Preview {
        event: shown_event,
        request,
        error,
    }))
}
