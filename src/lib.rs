//! hookd: a webhook dispatch engine for IoT device events.
//!
//! ```text
//!  device-events ─► consume ─► resolve ─► dispatch ───────────────────────────────────► tally
//!  hookd.retry.* ─►  (offsets)            render ─► sleeping? ─► throttle ─► deliver
//!                       │                           (policy)      (policy)   (outbound, sign)
//!                       │         failures ─► hookd.retry.<delay> (retry) or hookd.dead-letter
//!                       │         every attempt ─► hookd.responses (responses)
//!                       └─ undecodable ─► hookd.dead-letter (dead_letter)
//! ```
//!
//! # Layout
//!
//! Dependencies point down this list, never up: the pipeline and the
//! control side use the policy, the model and the runtime; the model uses
//! only templates.
//!
//! - [`cli`]: the commands behind `main.rs` (`worker`, `api`, `demo`, …).
//! - [`pipeline`]: the worker's stages in order: consume, offsets, resolve,
//!   render, dispatch, deliver, tally.
//! - [`control`]: the config log, the REST API and console, traffic
//!   history, integrations from files.
//! - [`policy`]: what each delivery attempt consults: sleeping hosts,
//!   throttle, retry, dead letter, responses, outbound guard, signing.
//! - [`model`]: events, integrations, secrets.
//! - [`template`]: mustache templates, a closed and bounded language.
//! - [`runtime`]: settings, Kafka clients, telemetry, health endpoints,
//!   background threads, the clock.

pub mod cli;
pub mod control;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod runtime;
pub mod template;
