//! Evaluation of a (possibly adapted) model: whole-sequence exact match and rank classification.

use burn::prelude::*;
use mhr_core::{RoutingContext, RoutingMode};
use mhr_models::T5ForConditionalGeneration;

use crate::batch::{IGNORE_INDEX, TokenizedExample, TrainBatch};
use crate::error::TrainError;

/// For each example, whether the model reproduces its whole target (eos included).
///
/// Scored under teacher forcing: a row counts when the argmax at every label position is the label. This
/// is exactly the verdict of greedy decoding (greedy emits the target iff each step's argmax, given the
/// correct prefix, is the next target token) at the cost of one forward pass instead of one per token.
pub fn exact_match_teacher_forced<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    examples: &[TokenizedExample],
    batch_size: usize,
) -> Result<Vec<bool>, TrainError> {
    let device = crate::trainer::device_of(model);
    let pad = model.config().pad_token_id;
    let mut verdicts = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = TrainBatch::<B>::from_examples(chunk, pad, &device);
        let ctx = RoutingContext::new(batch.task_ids, RoutingMode::Deterministic);
        let out = model.forward(batch.input_ids, batch.attention_mask, batch.labels.clone(), &ctx)?;
        let [b, t, _] = out.logits.dims();
        let predicted: Vec<i64> = out
            .logits
            .argmax(2)
            .reshape([b * t])
            .into_data()
            .iter::<i64>()
            .collect();
        let labels: Vec<i64> = batch.labels.into_data().iter::<i64>().collect();
        for row in 0..b {
            let range = row * t..(row + 1) * t;
            verdicts.push(
                predicted[range.clone()]
                    .iter()
                    .zip(&labels[range])
                    .all(|(p, l)| *l == IGNORE_INDEX || p == l),
            );
        }
    }
    Ok(verdicts)
}

/// Mean of 0/1 verdicts.
pub fn fraction(verdicts: &[bool]) -> f64 {
    if verdicts.is_empty() {
        0.0
    } else {
        verdicts.iter().filter(|&&v| v).count() as f64 / verdicts.len() as f64
    }
}
