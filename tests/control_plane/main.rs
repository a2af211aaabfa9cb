//! The control plane end to end: the api, its CLI client and the workers
//! that follow its config log, on one broker per test, each built by
//! [`common::ControlPlane`].

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod config_log;
mod scopes;
mod traffic;
mod validation;
