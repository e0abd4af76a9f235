//! Routed low-rank adapters for any Burn model: LoRA, (IA)^3, and skill inventories routed per task
//! by Polytropon (Poly, one head) or Multi-Head Routing (MHR, `h` heads).
//!
//! The math follows peft's `tuners/poly` and the authors' `mttl` (see `docs/adapters.md`):
//! for a frozen `y = x W`, an inventory `A: [h, S, d_in/h, r]`, `B: [h, S, r, d_out/h]` and routing logits
//! `Z: [n_tasks, h·S]`, each example of task `t` gets `y = x W + scale · (x A_t) B_t` where `A_t`, `B_t` are the
//! per-head convex mixtures of the skills. Nothing here knows about T5, data or training loops.

mod adapted_linear;
mod config;
mod diagnostics;
pub mod draws;
mod dtype;
mod error;
mod host;
mod ia3;
pub mod io;
mod lora;
mod method;
pub mod peft;

mod routed;
mod router;
mod routing;
mod sharing;
mod tasks;

pub use adapted_linear::{AdaptedLinear, Adapter, Merged};
pub use config::{
    AdapterConfig, Ia3Config, InitMode, LoraConfig, Normalization, RoutedIa3Config, RoutedLoraConfig,
    RouterGranularity, RoutingConfig,
};
pub use diagnostics::RoutingDiagnostics;
pub use draws::{Draws, mix};
pub use dtype::to_dtype;
pub use error::CoreError;
pub use host::AdapterHost;
pub use ia3::{Ia3, RoutedIa3};
pub use lora::Lora;
pub use method::{GroupMap, Method, NewTaskRouting, ParamGroup, Stage, TrainableSet};
pub use routed::RoutedLora;
pub use router::{PolyRouter, RoutingMode};
pub use routing::RoutingContext;
pub use sharing::{SharedRouters, SiteRouter};
pub use tasks::TaskMap;

/// The label id that losses skip (PyTorch's `ignore_index`, HF's convention): target padding in batches.
pub const IGNORE_INDEX: i64 = -100;
