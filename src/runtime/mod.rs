//! The plumbing every process shares: typed settings ([`config`]), Kafka
//! clients and topics ([`kafka`]), metrics and tracing ([`telemetry`]), the
//! worker's HTTP endpoints (`health`) and low-priority threads
//! (`background`).

pub(crate) mod background;
pub mod config;
pub(crate) mod health;
pub mod kafka;
pub mod telemetry;
