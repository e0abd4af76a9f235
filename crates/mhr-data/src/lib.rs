//! Task data for multi-task adapter routing: Super-NaturalInstructions, the T0 training mixture (P3) and
//! T0-style multiple-choice tasks, promptsource templates, tokenisation, few-shot splits by seed, multi-task mixtures and Burn
//! batchers. It knows nothing of models or backends beyond building Int tensors.
//!
//! The flow is `Task` → few-shot split or mixture → [`Encoder`] → [`Seq2SeqBatcher`] /
//! [`ChoiceBatcher`] (or [`BatchData`] for backend-free `i64` data):
//!
//! ```no_run
//! # fn main() -> Result<(), mhr_data::DataError> {
//! use std::sync::Arc;
//! use mhr_data::*;
//! let sni = SniDir::open("data/sni")?;
//! let options = SniOptions { max_instances: Some(164), ..SniOptions::default() };
//! let tokenizer = Arc::new(HfTokenizer::from_file("tokenizer.json".as_ref())?);
//! let config = EncoderConfig { source_suffix: options.format.source_suffix().map(String::from), ..Default::default() };
//! let encoder = Encoder::new(tokenizer, config)?;
//! for task in sni.load(&sni.split("test")?, options)? {
//!     let task = task?;
//!     let split = sni_few_shot(&task, SniTestSet::First(SNI_TEST_INSTANCES), SNI_K, SNI_SEEDS[0])?;
//!     let encoded: Vec<_> = split.train.iter().map(|e| encoder.encode(e, 0)).collect::<Result<_, _>>()?;
//!     let batch = BatchData::collate(&encoded, encoder.tokenizer().pad_id());
//!     # let _ = batch;
//! }
//! # Ok(()) }
//! ```
//!
//! # Determinism
//! Task ids come from a [`TaskIndex`] (sorted names, or list order). Every random choice (few-shot
//! draws, mixtures, T0 template draws, promptsource's `choice` filter) uses `rand`'s `StdRng` seeded by
//! `seed_from_u64`: the same seed gives the same data to every method, run after run, but the draws are
//! not bit-equal to those of Python's `random` or numpy in the reference code.
//!
//! # Memory on large inputs
//! SNI task files are parsed as a stream from a 64 KiB buffered reader, one task per iterator step
//! ([`SniTasks`]); instances past `max_instances` are parsed and dropped without being stored. Memory
//! is therefore bounded by the largest single task *as kept* (definition, demonstrations, at most
//! `max_instances` instances), not by the file or the corpus: reading a synthetic 1,000,000-instance
//! (167 MiB) task file with a cap of 100 raised the peak resident set by 0.1 MiB (measured by
//! `tests/large_input.rs`, which asserts < 16 MiB). Without a cap, one task's instances are held (SNI
//! files have at most 6,500). T0-style evaluation files are read whole (a few thousand rows at most).
//!
//! # Errors
//! Nothing here panics on bad data: malformed or truncated JSON, missing fields, empty tasks, unknown
//! templates and tasks listed but absent are all [`DataError`]s naming the file (and line or field).

mod batch;
mod encode;
mod error;
mod fewshot;
mod jsonl;
mod mixture;
mod p3;
mod sni;
mod stats;
pub mod synthetic;
mod t0;
mod task;
mod template;
mod tokenizer;

pub use batch::{BatchData, ChoiceBatch, ChoiceBatchData, ChoiceBatcher, Seq2SeqBatch, Seq2SeqBatcher};
pub use encode::{EncodedChoices, EncodedExample, Encoder, EncoderConfig};
pub use error::{DataError, Result};
pub use fewshot::{
    FewShotSplit, SNI_K, SNI_SEEDS, SNI_TEST_INSTANCES, SniTestSet, draw_indices, sni_few_shot, split_pool,
};
pub use mixture::{MixingStrategy, Mixture, MixtureItem};
pub use p3::{
    P3_MANIFEST, P3Dir, P3Mixture, P3Options, P3Subset, T0_CAP_PER_DATASET, T0_VALIDATION_PER_SUBSET,
};
pub use sni::{
    MTTL_SOURCE_SUFFIX, SniDemonstration, SniDir, SniInstance, SniOptions, SniPromptFormat, SniReference,
    SniReferences, SniTask, SniTasks,
};
pub use stats::{TaskStats, sni_stats, t0_stats};
pub use t0::{T0_SEEDS, T0Dataset, T0Dir, T0Row, render_rows};
pub use task::{AnswerChoices, Example, Task, TaskIndex, TaskKind, TaskList, TaskMetadata};
pub use template::{Rendered, Template, TemplateIssue, TemplateSet};
pub use tokenizer::{ByteTokenizer, HfTokenizer, TextTokenizer, truncate_ids};
