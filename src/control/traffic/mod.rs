//! Traffic history across a fleet: each worker's [`book`] publishes counts
//! and delivery samples; the api's [`history`] aggregates them.

pub mod book;
pub(crate) mod history;
