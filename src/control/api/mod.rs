//! `hookd api`: the control plane's REST API under `/v1`, and the web
//! console under `/`.
//!
//! In: HTTP requests with a bearer token (`auth`; Particle's tools may
//! also send it as `access_token`, and form bodies: `particle`), read by
//! typed extractors: the caller admitted at the place of the path
//! (`extract`). Out: integrations of a place (`integrations`), their
//! traffic (`traffic`: history from the workers' stats and log topics, a
//! test send, a preview) and the product catalog and orgs (`catalog`),
//! read from this process's own view of the config log and written to it
//! read-your-writes (`app`), as JSON (`views`); errors as
//! `{"ok","error","error_description","field"}` (`error`); Particle's
//! older webhooks API over the same integrations (`particle`); the
//! `console`'s pages made from the same handlers. [`server`] wires it
//! together and starts it; [`client`] calls it.

mod app;
mod auth;
mod catalog;
pub mod client;
mod console;
mod error;
mod extract;
mod integrations;
mod particle;
pub mod server;
mod sessions;
mod traffic;
mod views;
