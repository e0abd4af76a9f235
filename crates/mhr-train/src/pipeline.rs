//! The experiment of the paper as stages that `mhr train`, `mhr adapt`, `mhr eval` and every preset of `cargo xtask
//! reproduce` share: a method's adapters put on a frozen base and pre-trained on many tasks, then per held-out
//! task and seed prepared for few-shot adaptation and trained again, then scored. What a stage seeds, builds and
//! samples is decided here once; the entry points only choose their data, settings and seeds.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::peft::TargetModules;
use mhr_core::{AdapterHost, Method};
use mhr_data::{EncodedChoices, EncodedExample, Encoder, Example};
use mhr_models::T5ForConditionalGeneration;
use rand::rngs::StdRng;

use crate::config::TrainConfig;
use crate::data::{Generated, ShuffledEpochs, mix};
use crate::error::TrainError;
use crate::eval::{exact_match_teacher_forced, fraction, rank_classification};
use crate::methods::{AdapterSizes, attach_pretraining, prepare_adaptation};
use crate::objective::Objective;
use crate::sni::score_generations;
use crate::trainer::{RunOptions, TrainOutcome, train_on};

type Model<B> = T5ForConditionalGeneration<B>;

/// The random streams of one training stage. Each has its own seed, so that one of them (say, the batch order)
/// can change without moving the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSeeds {
    /// Seeds the backend before the stage draws new adapter weights.
    pub init: u64,
    /// The loop's per-step draws (relaxed-Bernoulli routing noise): the stage's [`TrainConfig::seed`].
    pub steps: u64,
    /// The sampler's draws: the order of a fixed example list, or the examples a stream generates.
    pub batches: u64,
}

impl StageSeeds {
    /// Multi-task pre-training under `seed`: mttl's one seed, for every stream.
    pub fn pretraining(seed: u64) -> Self {
        Self {
            init: seed,
            steps: seed,
            batches: seed,
        }
    }

    /// Few-shot adaptation of task `task_id` under `seed`: new weights and routing noise from `seed`, the batch
    /// order from `mix(seed, task_id)`, so that the tasks adapted under one seed see independent orders.
    pub fn adaptation(seed: u64, task_id: usize) -> Self {
        Self {
            init: seed,
            steps: seed,
            batches: mix(seed, task_id as u64),
        }
    }
}

/// A stage's examples, and with them its loss.
#[derive(Clone, Copy)]
pub enum StageData<'a> {
    /// A fixed list in shuffled epochs, under the token loss.
    Tokens(&'a [EncodedExample]),
    /// Multiple-choice examples in shuffled epochs, under the T-Few loss (T0 few-shot adaptation).
    Choices(&'a [EncodedChoices]),
    /// Examples generated afresh for every micro-batch (an unbounded stream), under the token loss.
    Stream(&'a (dyn Fn(&mut StdRng) -> EncodedExample + Sync)),
}

/// `base` with `method`'s pre-training adapters (routing rows for `n_tasks` tasks, weights drawn from
/// `seeds.init`) and the method's pre-training parameters unfrozen.
pub fn pretraining_model<B: Backend>(
    base: Model<B>,
    method: Method,
    sizes: &AdapterSizes,
    targets: &TargetModules,
    n_tasks: usize,
    seeds: StageSeeds,
) -> Result<Model<B>, TrainError> {
    B::seed(&base.device(), seeds.init);
    attach_pretraining(base, method, sizes, targets, n_tasks)
}

/// A pre-trained model prepared for few-shot adaptation with `method` (new weights, where the method draws any,
/// from `seeds.init`) and the method's adaptation parameters unfrozen.
pub fn adaptation_model<B: Backend>(
    pretrained: Model<B>,
    method: Method,
    sizes: &AdapterSizes,
    seeds: StageSeeds,
) -> Result<Model<B>, TrainError> {
    B::seed(&pretrained.device(), seeds.init);
    prepare_adaptation(pretrained, method, sizes)
}

/// Trains `model` on `data` for `config`'s steps, every random draw from `seeds` (`config.seed` is replaced by
/// `seeds.steps`).
pub fn train_stage<B: AutodiffBackend>(
    model: Model<B>,
    data: StageData<'_>,
    config: &TrainConfig,
    seeds: StageSeeds,
    options: &RunOptions,
) -> Result<(Model<B>, TrainOutcome), TrainError> {
    train_stage_on(model, data, config, seeds, options, &[])
}

/// [`train_stage`] data-parallel over `devices` ([`train_on`]).
pub fn train_stage_on<B: AutodiffBackend>(
    model: Model<B>,
    data: StageData<'_>,
    config: &TrainConfig,
    seeds: StageSeeds,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<(Model<B>, TrainOutcome), TrainError> {
    let config = TrainConfig {
        seed: seeds.steps,
        ..config.clone()
    };
    match data {
        StageData::Tokens(examples) => {
            let sampler = ShuffledEpochs::new(examples, &config, seeds.batches);
            train_on(model, &sampler, &config, options, devices)
        }
        StageData::Choices(examples) => {
            let sampler = ShuffledEpochs::new(examples, &config, seeds.batches);
            train_on(model, Objective::TFew(&sampler), &config, options, devices)
        }
        StageData::Stream(generate) => {
            let sampler = Generated::new(&config, seeds.batches, generate);
            train_on(model, &sampler, &config, options, devices)
        }
    }
}

/// A task's test set and how it is scored.
#[derive(Clone, Copy)]
pub enum TestSet<'a> {
    /// Rouge-L of greedy generations (routed by `task_id`) against all references (SNI).
    Generations {
        encoder: &'a Encoder,
        examples: &'a [Example],
        task_id: usize,
        max_new_tokens: usize,
    },
    /// Rank-classification accuracy over every answer choice (T0).
    Choices(&'a [EncodedChoices]),
    /// Whole-target exact match under teacher forcing (the synthetic suite).
    Targets(&'a [EncodedExample]),
}

/// A test set's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// The metric's name in results files: `rouge_l`, `accuracy` or `exact_match`.
    pub metric: &'static str,
    pub value: f64,
}

/// Scores `model` on `test`, `batch_size` examples per forward pass.
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    test: TestSet<'_>,
    batch_size: usize,
) -> Result<Score, TrainError> {
    Ok(match test {
        TestSet::Generations {
            encoder,
            examples,
            task_id,
            max_new_tokens,
        } => Score {
            metric: "rouge_l",
            value: score_generations(model, encoder, examples, task_id, max_new_tokens, batch_size)?.rouge_l,
        },
        TestSet::Choices(examples) => Score {
            metric: "accuracy",
            value: rank_classification(model, examples, batch_size)?.accuracy,
        },
        TestSet::Targets(examples) => Score {
            metric: "exact_match",
            value: fraction(&exact_match_teacher_forced(model, examples, batch_size)?),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptation_orders_each_task_apart_and_shares_the_rest() {
        let (a, b) = (StageSeeds::adaptation(42, 3), StageSeeds::adaptation(42, 4));
        assert_eq!((a.init, a.steps), (42, 42));
        assert_eq!((b.init, b.steps), (42, 42));
        assert_eq!(a.batches, mix(42, 3));
        assert_ne!(a.batches, b.batches);
        assert_eq!(
            StageSeeds::pretraining(7),
            StageSeeds {
                init: 7,
                steps: 7,
                batches: 7
            }
        );
    }
}
