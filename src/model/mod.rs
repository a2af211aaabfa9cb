//! The shared model every stage speaks: what an event is, what an
//! integration is, which secrets a tenant may use and how they are hidden.
//! It depends on nothing of hookd's but [`crate::template`].

pub mod event;
pub mod integration;
pub mod outcome;
pub(crate) mod secret_scopes;
pub(crate) mod secrets;
