//! Multi-task pre-training, few-shot adaptation and evaluation of Poly / MHR adapters (and their baselines).

pub mod adafactor;
pub mod alignment;
mod batch;
pub mod checkpoint;
mod config;
pub mod data;
mod error;
pub mod eval;
pub mod interrupt;
pub mod losses;
pub mod methods;
pub mod metrics;
pub mod objective;
pub mod optim;
mod parallel;
pub mod pipeline;
pub mod results;
pub mod schedule;
pub mod sni;
pub mod t0;
pub mod trainer;

pub use config::TrainConfig;
pub use error::TrainError;
