//! hookd: a webhook dispatch engine for IoT device events.
//!
//! ```text
//!  device-events ─► consume ─► resolve ─► dispatch ───────────────────────────────────► tally ─► traffic
//!  hookd.retry.* ─►  (offsets)            render ─► sleeping? ─► throttle ─► deliver
//!                       │                           (policy)      (policy)   (outbound, sign)
//!                       │         failures ─► hookd.retry.<delay> (retry) or hookd.dead-letter
//!                       │         every attempt ─► hookd.responses (responses)
//!                       └─ undecodable ─► hookd.dead-letter (dead_letter)
//! ```
//!
//! # Layout
//!
//! Each folder uses only those below it in this list, and no two files
//! import each other.
//!
//! - [`cli`]: the commands behind `main.rs` (`worker`, `api`, `demo`, …).
//! - [`control`]: the config log, the REST API and console, the api's
//!   traffic history, integrations from files.
//! - [`pipeline`]: the worker's stages in order: consume, offsets, resolve,
//!   render, dispatch, deliver, tally, and the traffic book it publishes.
//! - [`runtime`]: settings (every part's, the policy's included), Kafka
//!   clients, telemetry, health endpoints, background threads.
//! - [`policy`]: what each delivery attempt consults: sleeping hosts,
//!   throttle, retry, dead letter, responses, outbound guard, signing, and
//!   the clock their rules read.
//! - [`model`]: events and their template variables, integrations, the
//!   request sent and its outcome, secrets.
//! - [`template`]: mustache templates, a closed and bounded language.
//!
//! The behaviour, field by field, is in `docs/behaviour.md`; the
//! architecture in `docs/architecture.md`.

pub mod cli;
pub mod control;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod runtime;
pub mod template;
