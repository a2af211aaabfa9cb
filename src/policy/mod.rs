//! The delivery policy the pipeline consults for each attempt: hosts put to
//! [`sleeping`], the per-destination [`throttle`], the `retry` schedule,
//! the [`dead_letter`] record, `responses` published back as events, the
//! `outbound` guard off private networks, and request `sign`ing; the
//! [`clock`] their rules read time from (a manual one in tests).

pub mod clock;
pub mod dead_letter;
pub(crate) mod outbound;
pub(crate) mod responses;
pub(crate) mod retry;
pub(crate) mod sign;
pub mod sleeping;
pub mod throttle;
