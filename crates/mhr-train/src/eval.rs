//! Evaluation of a (possibly adapted) model: whole-sequence exact match and rank classification.

use burn::prelude::*;
use mhr_core::{AdapterHost, IGNORE_INDEX, RoutingContext, RoutingMode};
use mhr_data::{ChoiceBatchData, EncodedChoices, EncodedExample};
use mhr_models::T5ForConditionalGeneration;

use crate::batch::{pad_id, seq2seq_batch};
use crate::error::TrainError;
use crate::metrics::{accuracy, rank_choices};

/// For each example, whether the model reproduces its whole target (eos included).
///
/// Scored under teacher forcing: a row counts when the argmax at every label position is the label. This
/// is exactly the verdict of greedy decoding (greedy emits the target iff each step's argmax, given the
/// correct prefix, is the next target token) at the cost of one forward pass instead of one per token.
pub fn exact_match_teacher_forced<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    examples: &[EncodedExample],
    batch_size: usize,
) -> Result<Vec<bool>, TrainError> {
    let mut verdicts = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let (batch, _) = seq2seq_batch(model, chunk)?;
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

/// Mean token cross entropy of `examples` under deterministic routing (σ(Z)), weighted by each batch's
/// label tokens: the validation loss of a pre-training mixture.
pub fn mean_token_loss<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    examples: &[EncodedExample],
    batch_size: usize,
) -> Result<f64, TrainError> {
    let (mut total, mut tokens) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let n = chunk.iter().map(|e| e.labels.len()).sum::<usize>();
        if n == 0 {
            continue;
        }
        let (batch, _) = seq2seq_batch(model, chunk)?;
        let ctx = RoutingContext::new(batch.task_ids, RoutingMode::Deterministic);
        let out = model.forward(batch.input_ids, batch.attention_mask, batch.labels, &ctx)?;
        total += out.loss.into_scalar().elem::<f64>() * n as f64;
        tokens += n;
    }
    if tokens == 0 {
        return Err(TrainError::Config(
            "validation loss: no label tokens to score".into(),
        ));
    }
    Ok(total / tokens as f64)
}

/// Rank classification of multiple-choice examples.
#[derive(Debug, Clone, PartialEq)]
pub struct RankClassification {
    /// Per example, each choice's mean token log-likelihood (higher is better).
    pub scores: Vec<Vec<f64>>,
    /// Per example, each choice's summed token log-likelihood (`label_loglik_sum`).
    pub logliks: Vec<Vec<f64>>,
    /// Per example, the best-scoring choice.
    pub predictions: Vec<usize>,
    /// Fraction of predictions equal to the gold choice.
    pub accuracy: f64,
}

/// Scores every choice of every example under teacher forcing and picks the best, as T-Few / mttl do
/// (PAPER.md §2.6): the score is the summed label log-likelihood (`label_loglik_sum`) divided by the
/// choice's token count (`length_norm = 1`), so long choices are not penalised for their length.
/// `batch_size` counts examples; each contributes one row per choice. Routing is deterministic (σ(Z)).
pub fn rank_classification<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    examples: &[EncodedChoices],
    batch_size: usize,
) -> Result<RankClassification, TrainError> {
    if let Some(i) = examples
        .iter()
        .position(|e| e.choices.is_empty() || e.gold >= e.choices.len())
    {
        return Err(TrainError::Config(format!(
            "rank classification: example {i} has {} choices and gold index {}",
            examples[i].choices.len(),
            examples[i].gold
        )));
    }
    let device = model.device();
    let pad = pad_id(model)?;
    let mut scores = Vec::with_capacity(examples.len());
    let mut logliks = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let data = ChoiceBatchData::collate(chunk, pad);
        let batch = data.to_tensors::<B>(&device);
        let pairs = batch.pairs;
        let ctx = RoutingContext::new(pairs.task_ids, RoutingMode::Deterministic);
        let out = model.forward(pairs.input_ids, pairs.attention_mask, pairs.labels, &ctx)?;
        let sums: Vec<f64> = out.label_loglik_sum.into_data().iter::<f64>().collect();
        let t = data.pairs.target_len;
        let lengths = data
            .pairs
            .labels
            .chunks(t)
            .map(|row| row.iter().filter(|&&l| l != IGNORE_INDEX).count());
        let mut row_scores = sums.iter().zip(lengths).map(|(sum, n)| sum / n as f64);
        let mut row_sums = sums.iter().copied();
        for &n in &data.num_choices {
            scores.push(row_scores.by_ref().take(n).collect::<Vec<f64>>());
            logliks.push(row_sums.by_ref().take(n).collect::<Vec<f64>>());
        }
    }
    let predictions = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            rank_choices(s).ok_or_else(|| {
                TrainError::NonFiniteScores(format!("every choice score of example {i} is NaN"))
            })
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let gold: Vec<usize> = examples.iter().map(|e| e.gold).collect();
    Ok(RankClassification {
        accuracy: accuracy(&predictions, &gold),
        scores,
        logliks,
        predictions,
    })
}
