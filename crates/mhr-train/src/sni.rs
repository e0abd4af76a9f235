//! Super-NaturalInstructions tasks through a tokenizer into training examples, and the scores of greedy
//! generations against their references: the pieces that the smoke preset and the `mhr` command line share.

use std::path::Path;
use std::sync::Arc;

use burn::prelude::*;
use mhr_core::{RoutingContext, RoutingMode};
use mhr_data::{
    ByteTokenizer, EncodedExample, Encoder, Example, HfTokenizer, SniDir, SniOptions, SniPromptFormat, Task,
    TaskIndex, TaskList, TextTokenizer,
};
use mhr_models::{GenerationConfig, T5ForConditionalGeneration};

use crate::batch::seq2seq_batch;
use crate::error::TrainError;
use crate::metrics::{exact_match, rouge_l};

/// The tokenizer of a model whose embedding has `vocab_size` rows: the tokenizer.json at `path`, or ByT5-style byte
/// tokens (`None`). One that produces ids the embedding lacks is refused, naming it.
pub fn load_tokenizer(path: Option<&Path>, vocab_size: usize) -> Result<Arc<dyn TextTokenizer>, TrainError> {
    let (tokenizer, shown): (Arc<dyn TextTokenizer>, _) = match path {
        Some(path) => (
            Arc::new(HfTokenizer::from_file(path).map_err(TrainError::from)?),
            path.display().to_string(),
        ),
        None => (Arc::new(ByteTokenizer), "byte".to_string()),
    };
    if tokenizer.vocab_size() > vocab_size {
        return Err(TrainError::Config(format!(
            "tokenizer {shown} produces {} ids but the model's vocab_size is {vocab_size}",
            tokenizer.vocab_size()
        )));
    }
    Ok(tokenizer)
}

/// The English tasks of `list` in mttl's prompt format, at most `max_instances` instances each (file
/// order), read lazily one file per item. Every listed file must exist (checked before any is read).
pub fn load_tasks(
    sni: &SniDir,
    list: &TaskList,
    max_instances: usize,
) -> Result<impl Iterator<Item = Result<Task, TrainError>>, TrainError> {
    let options = SniOptions {
        max_instances: Some(max_instances),
        english_only: true,
        format: SniPromptFormat::Mttl,
    };
    Ok(sni
        .load(list, options)
        .map_err(TrainError::from)?
        .map(|t| t.map_err(TrainError::from)))
}

/// Tokenises `examples` (source and first target) for routing row `task_id`.
pub fn encode_all(
    encoder: &Encoder,
    examples: &[Example],
    task_id: usize,
) -> Result<Vec<EncodedExample>, TrainError> {
    examples
        .iter()
        .map(|e| encoder.encode(e, task_id).map_err(TrainError::from))
        .collect()
}

/// Tokenises every example of `tasks` for its task's routing row in `index` (row 0 for a task the index does
/// not name): the training set of a multi-task run.
pub fn encode_tasks(
    encoder: &Encoder,
    tasks: &[Task],
    index: &TaskIndex,
) -> Result<Vec<EncodedExample>, TrainError> {
    let mut encoded = Vec::new();
    for task in tasks {
        let id = index.id(&task.name).unwrap_or_default();
        encoded.extend(encode_all(encoder, &task.examples, id)?);
    }
    Ok(encoded)
}

/// Mean scores of generations against every reference of each example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationScores {
    pub rouge_l: f64,
    pub exact_match: f64,
}

impl GenerationScores {
    /// Rouge-L and SNI's exact match of `predictions[i]` against `examples[i]`'s references, averaged.
    pub fn of(predictions: &[String], examples: &[Example]) -> Self {
        let n = predictions.len().max(1) as f64;
        let pairs = || predictions.iter().zip(examples);
        Self {
            rouge_l: pairs().map(|(p, e)| rouge_l(p, &e.targets)).sum::<f64>() / n,
            exact_match: pairs().map(|(p, e)| exact_match(p, &e.targets)).sum::<f64>() / n,
        }
    }
}

/// Greedy generations (deterministic routing by `task_id`) of `examples`, in batches of `batch_size`,
/// decoded by the encoder's tokenizer.
pub fn greedy_texts<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    encoder: &Encoder,
    examples: &[Example],
    task_id: usize,
    max_new_tokens: usize,
    batch_size: usize,
) -> Result<Vec<String>, TrainError> {
    let mut texts = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let encoded = encode_all(encoder, chunk, task_id)?;
        let (batch, _) = seq2seq_batch(model, &encoded)?;
        let ctx = RoutingContext::new(batch.task_ids, RoutingMode::Deterministic);
        let generated = model.generate(
            batch.input_ids,
            batch.attention_mask,
            &ctx,
            &GenerationConfig::greedy(max_new_tokens),
        )?;
        let [b, t] = generated.dims();
        let ids: Vec<i64> = generated.into_data().iter::<i64>().collect();
        for row in 0..b {
            // Skip the decoder start token; the tokenizer drops pad and eos.
            let tokens: Vec<u32> = ids[row * t + 1..(row + 1) * t]
                .iter()
                .map(|&i| i as u32)
                .collect();
            texts.push(encoder.tokenizer().decode(&tokens).map_err(TrainError::from)?);
        }
    }
    Ok(texts)
}

/// [`greedy_texts`] scored by [`GenerationScores::of`].
pub fn score_generations<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    encoder: &Encoder,
    examples: &[Example],
    task_id: usize,
    max_new_tokens: usize,
    batch_size: usize,
) -> Result<GenerationScores, TrainError> {
    let texts = greedy_texts(model, encoder, examples, task_id, max_new_tokens, batch_size)?;
    Ok(GenerationScores::of(&texts, examples))
}
