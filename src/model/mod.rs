//! The shared model every stage speaks: what an event is and what its
//! templates see of it ([`variables`]), what an integration is, the request
//! it sends and what came of it ([`request`], [`outcome`]), which secrets a
//! tenant may use and how they are hidden.
//! It depends on nothing of hookd's but [`crate::template`].

pub mod event;
pub mod integration;
pub mod outcome;
pub mod request;
pub(crate) mod secret_scopes;
pub(crate) mod secrets;
pub mod variables;
