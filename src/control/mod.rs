//! The control side: where integrations come from and where traffic is
//! shown. The [`config_log`] (`hookd.config`, followed live by every reader
//! and written by the [`api`]), integrations from files ([`source`]), and the
//! api's traffic `history`, aggregated from what workers publish
//! ([`crate::pipeline::traffic`]).

pub mod api;
pub mod config_log;
pub(crate) mod history;
pub mod source;
