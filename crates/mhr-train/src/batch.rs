//! Token batches of the training and evaluation loops: mhr-data's padded batches on the model's device.

use burn::prelude::*;
use mhr_core::AdapterHost;
use mhr_data::{BatchData, EncodedExample, Seq2SeqBatch};
use mhr_models::T5ForConditionalGeneration;

use crate::error::TrainError;

/// The model's pad id, as the token id that batches pad sources with.
pub(crate) fn pad_id<B: Backend>(model: &T5ForConditionalGeneration<B>) -> Result<u32, TrainError> {
    let pad = model.config().pad_token_id;
    u32::try_from(pad).map_err(|_| TrainError::Config(format!("pad_token_id {pad} is not a token id")))
}

/// `examples` padded into one batch on the model's device, with its real (non-pad) token count.
pub(crate) fn seq2seq_batch<B: Backend>(
    model: &T5ForConditionalGeneration<B>,
    examples: &[EncodedExample],
) -> Result<(Seq2SeqBatch<B>, usize), TrainError> {
    let data = BatchData::collate(examples, pad_id(model)?);
    Ok((data.to_tensors(&model.device()), data.tokens()))
}
