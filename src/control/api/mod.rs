//! `hookd api`: the control plane's REST API under `/v1`.
//!
//! In: HTTP requests with a bearer token ([`auth`]; Particle's tools may
//! also send it as `access_token`, and form bodies: [`particle`]). Out: integrations and
//! products read from this process's own view of the config log and written
//! to it read-your-writes ([`handlers`]), traffic history from the workers'
//! stats and log topics, all as JSON ([`views`]); errors as
//! `{"ok","error","error_description","field"}` ([`error`]); Particle's
//! older webhooks API over the same integrations ([`particle`]). [`server`]
//! wires it together.

pub mod auth;
pub mod client;
pub mod console;
pub mod error;
pub mod handlers;
pub mod particle;
pub mod server;
pub mod views;
