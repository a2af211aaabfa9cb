//! The control side: where integrations come from and where traffic is
//! shown. The [`config_log`] (`hookd.config`, followed live by every reader
//! and written by the [`api`]), integrations from files ([`source`]), and
//! per-minute [`traffic`] published by workers and aggregated for the api.

pub mod api;
pub mod config_log;
pub mod source;
pub mod traffic;
