//! `hookd render --integration FILE --event FILE`: a dry run. Prints, as one
//! JSON object, the request the integration would send for the event
//! (secrets masked), or why it would not fire. The file may be a Particle
//! export as it is, without hookd's `id` and scope: it is then tried as an
//! integration of the event's product, or of its owner's sandbox when it
//! names a `deviceID` or the event has no product (an event without a
//! `userid` is then taken as that sandbox's owner's).

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::model::event::{DeviceEvent, Origin};
use crate::model::integration::Integration;
use crate::model::variables::{EventContext, SecretMode};
use crate::pipeline::render::render;
use crate::pipeline::resolve::check;
use crate::runtime::config::Settings;

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// One integration record (JSON).
    #[arg(long)]
    pub integration: PathBuf,
    /// One device event (JSON, as on the events topic).
    #[arg(long)]
    pub event: PathBuf,
    /// Settings whose `[secrets]` the templates may use (shown masked).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

pub fn run(args: RenderArgs) -> anyhow::Result<Value> {
    let settings = Settings::load(args.config.as_deref())?;
    let raw =
        std::fs::read(&args.event).with_context(|| format!("reading {}", args.event.display()))?;
    let origin = Origin {
        topic: "render".into(),
        partition: 0,
        offset: 0,
    };
    let event = DeviceEvent::decode(&raw, &origin, chrono::Utc::now())
        .with_context(|| format!("invalid event {}", args.event.display()))?;
    let raw = std::fs::read(&args.integration)
        .with_context(|| format!("reading {}", args.integration.display()))?;
    let invalid = || format!("invalid integration {}", args.integration.display());
    let mut record: Value = serde_json::from_slice(&raw).with_context(invalid)?;
    let mut event = event;
    if let Value::Object(fields) = &mut record {
        if let Some(owner) = placed_for(fields, &event) {
            // A bare event of nobody's: the sandbox's owner published it.
            let mut raw: Value = serde_json::from_str(&event.raw)?;
            raw["userid"] = owner.into();
            event = DeviceEvent::decode(raw.to_string().as_bytes(), &origin, chrono::Utc::now())
                .with_context(|| format!("invalid event {}", args.event.display()))?;
        }
    }
    let integration =
        Integration::from_value_with(record, &settings.templates).with_context(invalid)?;
    Ok(dry_run(&integration, event, &settings))
}

/// A record without hookd's `id` or scope (a Particle export) given them:
/// the event's product, or its owner's sandbox. Returns the owner to give an
/// event that has none.
fn placed_for(fields: &mut serde_json::Map<String, Value>, event: &DeviceEvent) -> Option<String> {
    fields.entry("id").or_insert_with(|| "render".into());
    let scoped = ["owner", "product_id", "org", "products"]
        .iter()
        .any(|f| fields.contains_key(*f));
    if scoped {
        return None;
    }
    let for_device = fields.contains_key("deviceID") || fields.contains_key("deviceid");
    match (event.product_id, &event.user_id) {
        (Some(p), _) if !for_device => {
            fields.insert("product_id".into(), p.into());
            None
        }
        (_, Some(owner)) => {
            fields.insert("owner".into(), owner.as_str().into());
            None
        }
        (_, None) => {
            fields.insert("owner".into(), "render".into());
            Some("render".into())
        }
    }
}

/// The answer for one integration and one event.
pub(crate) fn dry_run(integration: &Integration, event: DeviceEvent, settings: &Settings) -> Value {
    if let Err(miss) = check(integration, &event) {
        return json!({"fires": false, "reason": miss.to_string()});
    }
    let ctx = EventContext::new(
        event,
        std::sync::Arc::new(settings.secrets.0.clone()),
        SecretMode::Mask,
    )
    .with_limits(&settings.templates);
    match render(integration, &ctx) {
        Ok(request) => json!({"fires": true, "request": request.to_json()}),
        Err(e) => json!({"fires": true, "error": e.to_string()}),
    }
}
