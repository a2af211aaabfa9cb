//! The worker's pipeline, one stage a module, in the order an event meets
//! them:
//!
//! 1. [`consume`]: the [`consume::Worker`] reads the events and retry topics
//!    with backpressure and stops gracefully;
//! 2. `offsets`: at-least-once commit points per partition;
//! 3. [`resolve`]: the index from product and owner to integrations;
//! 4. [`render`]: integration + event → the request to send;
//! 5. `dispatch`: one attempt under the delivery policy ([`crate::policy`]);
//! 6. [`deliver`]: the pooled HTTP client → an outcome;
//! 7. [`tally`]: outcomes → metrics and per-(integration, product) counts,
//!    and the [`traffic`] book publishing them per minute with delivery
//!    samples for the api's history.

pub mod consume;
pub mod deliver;
pub(crate) mod dispatch;
pub(crate) mod offsets;
pub mod render;
pub mod resolve;
pub mod tally;
pub mod traffic;
