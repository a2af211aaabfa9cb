//! The commands behind `main.rs`, one file each.

pub mod api;
pub mod demo;
pub mod integrations;
pub mod publish;
pub mod render;
pub(crate) mod simulate;
pub mod worker;
