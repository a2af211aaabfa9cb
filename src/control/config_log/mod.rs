//! The config log (`hookd.config`): integration and product records, written
//! by the api and replayed then followed by every reader.

pub mod follower;
pub mod state;
pub(crate) mod writer;
