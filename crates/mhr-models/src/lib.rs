//! T5 in Burn that loads HuggingFace checkpoints and reproduces transformers' numbers, with an adapter site
//! on every linear layer of its blocks for `mhr-core`'s LoRA, (IA)^3 and routed (Poly / MHR) adapters.
//!
//! - [`T5ForConditionalGeneration::load`] reads `config.json` + `model.safetensors` (or sharded safetensors,
//!   or a single or sharded `pytorch_model.bin` when there are no safetensors) with HF's parameter names;
//!   T5 v1.0 (relu, tied head scaled by `d_model^-0.5`) and v1.1 / LM-adapt / T0 (gated-gelu, untied head)
//!   are told apart by the config as transformers does.
//! - [`T5ForConditionalGeneration::load_as`] keeps the base in bf16 ([`Precision`]), adapters in f32.
//! - [`T5ForConditionalGeneration::forward`] gives logits, the loss and the per-example label log-likelihood
//!   (rank classification); [`T5ForConditionalGeneration::generate`] does greedy or beam search with a
//!   key/value cache.
//! - Adapter sites keep their HF module paths (`decoder.block.1.layer.1.EncDecAttention.k`), so peft adapter
//!   folders load by name ([`T5ForConditionalGeneration::load_peft_adapter`]); task ids reach every site
//!   through the `RoutingContext` of each call.
//!
//! Generic over the Burn backend; every failure is a [`ModelError`] naming the file, key or input at fault.

mod config;
mod error;
mod generation;
#[cfg(feature = "hub")]
pub mod hub;
mod loader;
mod precision;
mod pytorch;
pub mod t5;

pub use config::{Activation, FeedForwardKind, T5Config, check_dropout_rate};
pub use error::ModelError;
pub use generation::GenerationConfig;
pub use loader::{
    CONFIG_FILE, PYTORCH_WEIGHTS_FILE, PYTORCH_WEIGHTS_INDEX_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE,
    has_weights,
};
pub use precision::Precision;
pub use t5::{EncoderOutput, Seq2SeqLmOutput, T5ForConditionalGeneration, relative_position_bucket};
