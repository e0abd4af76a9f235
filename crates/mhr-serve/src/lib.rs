//! Serving routed adapters: one T5, one skill inventory, any number of tasks.
//!
//! A task of a Poly / MHR model is a routing row, and the routed layers mix skills per example, so requests
//! for different tasks join one batch and one forward pass. The parts, from the wire inward:
//! - [`api`]: the JSON requests and responses, and the error that names the offending field;
//! - [`inputs::Inputs`]: text → checked token ids and routing rows (tokenizer, task names, [`Limits`]);
//! - [`engine::Engine`]: the model, running one padded batch of mixed tasks (generation or scoring);
//! - [`scheduler`]: the bounded queue, and the worker that gathers requests of any tasks into batches;
//! - [`registry`]: tasks registered while serving (a `-z` adaptation is one routing row per layer, any other
//!   adaptation an adapter of the task's own on the shared base weights);
//! - [`http`]: the axum routes, `/metrics` and graceful shutdown.
//!
//! `mhr generate --inputs` and `mhr score --inputs` run the same [`Inputs`] and [`Engine`] offline.

pub mod api;
pub mod engine;
pub mod error;
pub mod http;
pub mod inputs;
pub mod metrics;
pub mod registry;
pub mod scheduler;

pub use engine::{Decoding, Engine, Route};
pub use error::{RequestError, ServeError};
pub use inputs::{Inputs, Limits};
pub use scheduler::{BatchPolicy, Scheduler, Worker, queue};
