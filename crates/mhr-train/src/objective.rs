//! What a stage minimises, on which data. The loop in [`crate::trainer`] is the same for every objective:
//! only the forward pass and the loss of a micro-batch differ.

use burn::prelude::*;
use mhr_core::{AdapterHost, Draws, RoutingContext, RoutingMode};
use mhr_data::{BatchData, ChoiceBatchData};
use mhr_models::{Seq2SeqLmOutput, T5ForConditionalGeneration};

use crate::batch::pad_id;
use crate::data::{ChoiceStepData, StepData, StepShape};
use crate::error::TrainError;
use crate::losses::{label_smoothed_nll, tfew_loss};
use crate::parallel::Share;

/// A stage's data and loss.
#[derive(Clone, Copy)]
pub enum Objective<'a> {
    /// One target per example: the model's mean token cross entropy, or fairseq's label-smoothed NLL
    /// when `TrainConfig::label_smoothing` > 0 (pre-training, SNI few-shot).
    Tokens(&'a dyn StepData),
    /// Multiple-choice examples under T-Few's L_LM + L_MC + L_UL ([`tfew_loss`], PAPER.md §2.5): the T0
    /// few-shot stage. `label_smoothing` does not apply.
    TFew(&'a dyn ChoiceStepData),
}

/// Token data converts as it did before objectives existed, so `train(model, &sampler, …)` keeps working.
impl<'a, T: StepData> From<&'a T> for Objective<'a> {
    fn from(data: &'a T) -> Self {
        Self::Tokens(data)
    }
}

/// One micro-batch's loss and what it is made of.
pub(crate) struct MicroLoss<B: Backend> {
    pub loss: Tensor<B, 1>,
    /// Named parts of `loss`, logged beside it in `metrics.jsonl` (T-Few's three terms; none for tokens).
    pub terms: Vec<(&'static str, Tensor<B, 1>)>,
}

/// A micro-batch ready for the model: teacher-forced inputs and routing, and what its loss needs besides the
/// model's output.
pub(crate) struct MicroBatch<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
    pub labels: Tensor<B, 2, Int>,
    pub ctx: RoutingContext<B>,
    /// Real (non-pad) source + target tokens, for throughput.
    pub tokens: usize,
    /// This peer's share of the micro-batch's loss (its target tokens, or examples, over the whole
    /// micro-batch's); `None` for the whole micro-batch.
    pub share_of_loss: Option<f64>,
    loss: LossKind,
}

enum LossKind {
    Tokens {
        label_smoothing: f64,
    },
    TFew {
        num_choices: Vec<usize>,
        gold: Vec<usize>,
    },
}

impl Objective<'_> {
    /// The shape of the data's steps.
    pub(crate) fn shape(&self) -> StepShape {
        match self {
            Self::Tokens(data) => data.shape(),
            Self::TFew(data) => data.shape(),
        }
    }

    /// `share`'s rows of micro-batch `micro` of `step` under `mode` routing, drawing its random numbers
    /// from `draw_seed` ([`Draws`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn micro_batch<B: Backend>(
        &self,
        model: &T5ForConditionalGeneration<B>,
        step: usize,
        micro: usize,
        label_smoothing: f64,
        mode: RoutingMode,
        share: Share,
        draw_seed: u64,
    ) -> Result<MicroBatch<B>, TrainError> {
        match self {
            Self::Tokens(data) => {
                let whole = BatchData::collate(&data.examples(step, micro), pad_id(model)?);
                let rows = share.rows(whole.batch_size);
                let part = whole.rows(rows.clone());
                // The whole micro-batch's loss is a mean over its target tokens (over its examples with
                // label smoothing): a peer's mean counts for its share of them.
                let share_of_loss = (share.count > 1).then(|| {
                    if label_smoothing > 0.0 {
                        rows.len() as f64 / whole.batch_size as f64
                    } else {
                        part.label_tokens() as f64 / whole.label_tokens().max(1) as f64
                    }
                });
                let batch = part.to_tensors::<B>(&model.device());
                Ok(MicroBatch {
                    input_ids: batch.input_ids,
                    attention_mask: batch.attention_mask,
                    labels: batch.labels,
                    ctx: RoutingContext::new(batch.task_ids, mode).with_draws(Draws::new(
                        draw_seed,
                        rows,
                        whole.batch_size,
                    )),
                    tokens: part.tokens(),
                    share_of_loss,
                    loss: LossKind::Tokens { label_smoothing },
                })
            }
            Self::TFew(_) if share.count > 1 => Err(TrainError::Config(
                "the T-Few objective (multiple-choice few-shot training) runs on one device: pass one device"
                    .into(),
            )),
            Self::TFew(data) => {
                let data = ChoiceBatchData::collate(&data.choices(step, micro), pad_id(model)?);
                let tokens = data.pairs.tokens();
                let rows = data.pairs.batch_size;
                let batch = data.to_tensors::<B>(&model.device());
                let pairs = batch.pairs;
                Ok(MicroBatch {
                    input_ids: pairs.input_ids,
                    attention_mask: pairs.attention_mask,
                    labels: pairs.labels,
                    ctx: RoutingContext::new(pairs.task_ids, mode).with_draws(Draws::whole(draw_seed, rows)),
                    tokens,
                    share_of_loss: None,
                    loss: LossKind::TFew {
                        num_choices: batch.num_choices,
                        gold: batch.gold,
                    },
                })
            }
        }
    }
}

impl<B: Backend> MicroBatch<B> {
    /// The objective's loss of the model's output on this micro-batch: the mean token cross entropy, or
    /// fairseq's label-smoothed NLL when `label_smoothing` > 0; T-Few's L_LM + L_MC + L_UL for choices.
    pub(crate) fn loss(&self, out: Seq2SeqLmOutput<B>) -> Result<MicroLoss<B>, TrainError> {
        match &self.loss {
            LossKind::Tokens { label_smoothing } if *label_smoothing > 0.0 => Ok(MicroLoss {
                loss: label_smoothed_nll(out.logits, self.labels.clone(), *label_smoothing),
                terms: Vec::new(),
            }),
            LossKind::Tokens { .. } => Ok(MicroLoss {
                loss: out.loss,
                terms: Vec::new(),
            }),
            LossKind::TFew { num_choices, gold } => {
                let loss = tfew_loss(out.logits, self.labels.clone(), num_choices, gold)?;
                Ok(MicroLoss {
                    loss: loss.total,
                    terms: vec![
                        ("lm", loss.lm),
                        ("mc", loss.mc),
                        ("unlikelihood", loss.unlikelihood),
                    ],
                })
            }
        }
    }
}
