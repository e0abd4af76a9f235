use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use mhr_data::{EncodedChoices, EncodedExample};

use crate::config::TrainConfig;

/// Per-step and per-micro-batch seeds derive through the one mixing rule of mhr-core.
pub use mhr_core::mix;

/// The shape of a step's data: examples per micro-batch and micro-batches per optimiser step. Samplers take
/// it from the stage's [`TrainConfig`], and the trainer refuses data of another shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    pub batch_size: usize,
    pub micro_batches: usize,
}

impl StepShape {
    pub fn of(config: &TrainConfig) -> Self {
        Self {
            batch_size: config.batch_size.max(1),
            micro_batches: config.grad_accumulation.max(1),
        }
    }
}

/// Which examples each training step sees. Deterministic in `(step, micro-batch)`, so a resumed run
/// sees exactly the batches an uninterrupted one would (and data-parallel peers, which share it, the same
/// micro-batches).
pub trait StepData: Sync {
    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample>;
    fn shape(&self) -> StepShape;
}

/// [`StepData`] for multiple-choice examples (every answer choice and the gold index), the data of the
/// T-Few objective; deterministic in `(step, micro-batch)` likewise.
pub trait ChoiceStepData: Sync {
    fn choices(&self, step: usize, micro: usize) -> Vec<EncodedChoices>;
    fn shape(&self) -> StepShape;
}

/// Examples generated afresh for every micro-batch from a seeded generator (an unbounded data stream).
pub struct Generated<F: Fn(&mut StdRng) -> EncodedExample> {
    shape: StepShape,
    seed: u64,
    generate: F,
}

impl<F: Fn(&mut StdRng) -> EncodedExample> Generated<F> {
    /// Batches of `config`'s shape, drawn by `generate` from a generator seeded by `seed`, step and micro-batch.
    pub fn new(config: &TrainConfig, seed: u64, generate: F) -> Self {
        Self {
            shape: StepShape::of(config),
            seed,
            generate,
        }
    }
}

impl<F: Fn(&mut StdRng) -> EncodedExample + Sync> StepData for Generated<F> {
    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
        let mut rng = StdRng::seed_from_u64(mix(mix(self.seed, step as u64), micro as u64));
        (0..self.shape.batch_size)
            .map(|_| (self.generate)(&mut rng))
            .collect()
    }

    fn shape(&self) -> StepShape {
        self.shape
    }
}

/// Epochs over a fixed example list, each in a seeded random order (drawn from the example pool without
/// replacement, reshuffled every epoch): token examples ([`StepData`]) or multiple-choice ones
/// ([`ChoiceStepData`]).
pub struct ShuffledEpochs<'a, T = EncodedExample> {
    examples: &'a [T],
    shape: StepShape,
    seed: u64,
}

impl<'a, T: Clone> ShuffledEpochs<'a, T> {
    /// Batches of `config`'s shape, in orders drawn from `seed`.
    pub fn new(examples: &'a [T], config: &TrainConfig, seed: u64) -> Self {
        Self {
            examples,
            shape: StepShape::of(config),
            seed,
        }
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(self.seed, epoch as u64)));
        order
    }

    /// The examples of micro-batch `micro` of `step`: positions `(step · micro_batches + micro) · batch_size …`
    /// of the concatenated epochs.
    fn batch(&self, step: usize, micro: usize) -> Vec<T> {
        let n = self.examples.len();
        if n == 0 {
            return Vec::new();
        }
        let StepShape {
            batch_size,
            micro_batches,
        } = self.shape;
        let start = (step * micro_batches + micro) * batch_size;
        let mut cached: Option<(usize, Vec<usize>)> = None;
        (start..start + batch_size)
            .map(|i| {
                let epoch = i / n;
                if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    cached = Some((epoch, self.order(epoch)));
                }
                let order = cached.as_ref().map(|(_, o)| o.as_slice()).unwrap_or_default();
                self.examples[order[i % n]].clone()
            })
            .collect()
    }
}

impl StepData for ShuffledEpochs<'_, EncodedExample> {
    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
        self.batch(step, micro)
    }

    fn shape(&self) -> StepShape {
        self.shape
    }
}

impl ChoiceStepData for ShuffledEpochs<'_, EncodedChoices> {
    fn choices(&self, step: usize, micro: usize) -> Vec<EncodedChoices> {
        self.batch(step, micro)
    }

    fn shape(&self) -> StepShape {
        self.shape
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once_and_are_deterministic() {
        let examples: Vec<EncodedExample> = (0..10)
            .map(|i| EncodedExample {
                input_ids: vec![i],
                labels: vec![1],
                task_id: 0,
            })
            .collect();
        let config = |batch_size, grad_accumulation| TrainConfig {
            batch_size,
            grad_accumulation,
            ..TrainConfig::default()
        };
        let data = ShuffledEpochs::new(&examples, &config(5, 1), 3);
        let mut seen: Vec<u32> = (0..2)
            .flat_map(|s| data.examples(s, 0))
            .map(|e| e.input_ids[0])
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let again = ShuffledEpochs::new(&examples, &config(5, 1), 3);
        assert_eq!(data.examples(7, 0), again.examples(7, 0));
        assert_ne!(
            data.examples(0, 0),
            ShuffledEpochs::new(&examples, &config(5, 1), 4).examples(0, 0),
            "another seed, another order"
        );
        // Micro-batches of a step continue the epoch: 2 × 5 examples per step cover an epoch of 10 exactly.
        let accumulated = ShuffledEpochs::new(&examples, &config(5, 2), 3);
        let mut step: Vec<u32> = (0..2)
            .flat_map(|m| accumulated.examples(0, m))
            .map(|e| e.input_ids[0])
            .collect();
        step.sort();
        assert_eq!(step, (0..10).collect::<Vec<_>>());
    }
}
