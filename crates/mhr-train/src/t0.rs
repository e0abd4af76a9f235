//! T0 held-out datasets through a tokenizer into multiple-choice examples: the few-shot training data
//! of the T-Few objective ([`crate::objective::Objective::TFew`] over a
//! [`crate::data::ShuffledEpochs`]) and the rows that [`crate::eval::rank_classification`] scores.

use mhr_data::{EncodedChoices, Encoder, Example};

use crate::error::TrainError;

/// Tokenises multiple-choice `examples` (source and every answer choice, with the gold index) for routing
/// row `task_id`; an example without answer choices is an error naming it.
pub fn encode_choices(
    encoder: &Encoder,
    examples: &[Example],
    task_id: usize,
) -> Result<Vec<EncodedChoices>, TrainError> {
    examples
        .iter()
        .map(|e| encoder.encode_choices(e, task_id).map_err(TrainError::from))
        .collect()
}
