//! hookd: a webhook dispatch engine for IoT device events.
//!
//! ```text
//!  device-events ─► consume ─► resolve ─► dispatch ───────────────────────────────────► record
//!  hookd.retry.* ─►  (worker,   (resolve,   render ─► sleeping? ─► throttle ─► deliver    (record,
//!                     offsets,    Index)    (render,  (sleeping)   (throttle)  (deliver,   telemetry)
//!                     event)                template)                          outbound,
//!                       │                                                       sign)
//!                       │         failures ─► hookd.retry.<delay> (retry) or hookd.dead-letter
//!                       │         every attempt ─► hookd.responses (responses)
//!                       └─ undecodable ─► hookd.dead-letter (dead_letter)
//! ```
//!
//! # Layout
//!
//! - [`event`]: decode and validate one record into a [`event::DeviceEvent`].
//! - [`integration`]: an integration record validated and compiled.
//! - [`template`]: mustache templates, a closed and bounded language.
//! - [`resolve`]: the [`resolve::Index`] from product and owner to
//!   integrations, and the live [`resolve::IndexHandle`] swapped as a whole.
//! - [`render`]: integration + event → [`render::RenderedRequest`].
//! - [`deliver`]: the pooled HTTP client → [`deliver::Outcome`]; [`outbound`]
//!   keeps it off private networks.
//! - [`dispatch`]: one attempt under the delivery policy: [`sleeping`] hosts
//!   skipped, [`throttle`] per host, [`sign`]ed, sent, then [`responses`] and
//!   [`retry`] or dead letter.
//! - [`secrets`]: which secrets each tenant's templates may use.
//! - [`record`]: outcomes → metrics and the per-(integration, product) tally;
//!   [`traffic`]: per-minute counts and delivery samples published for the
//!   api, and their aggregation into history there.
//! - [`offsets`]: at-least-once commit points per partition.
//! - [`worker`]: the consume loop tying the stages together, with
//!   backpressure and graceful shutdown.
//! - [`kafka`]: client configuration and topic creation.
//! - [`dead_letter`]: the record written for what cannot be delivered.
//! - [`source`]: integrations from a file or directory; [`config_log`]: from
//!   the `hookd.config` topic, followed live, and written read-your-writes.
//! - [`config`]: typed settings from defaults, file and environment.
//! - [`telemetry`]: metric names, Prometheus, tracing; [`health`] serves them.
//! - [`background`]: index rebuilds on a low-priority thread.
//! - [`clock`]: the time seam for rules tested with a manual clock.
//! - [`simulate`]: simulated devices, for `publish --simulate` and the demo.
//! - [`api`]: the control plane's REST API (`hookd api`).
//! - [`cli`]: the commands behind `main.rs`.

pub mod api;
pub mod background;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_log;
pub mod dead_letter;
pub mod deliver;
pub mod dispatch;
pub mod event;
pub mod health;
pub mod integration;
pub mod kafka;
pub mod offsets;
pub mod outbound;
pub mod record;
pub mod render;
pub mod resolve;
pub mod responses;
pub mod retry;
pub mod secrets;
pub mod sign;
pub mod simulate;
pub mod sleeping;
pub mod source;
pub mod telemetry;
pub mod template;
pub mod throttle;
pub mod traffic;
pub mod worker;
