use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use mhr_data::EncodedChoices;

use crate::batch::TokenizedExample;

/// Which examples each training step sees. Deterministic in `(step, micro-batch)`, so a resumed run
/// sees exactly the batches an uninterrupted one would.
pub trait StepData {
    fn examples(&self, step: usize, micro: usize) -> Vec<TokenizedExample>;
}

/// [`StepData`] for multiple-choice examples (every answer choice and the gold index), the data of the
/// T-Few objective; deterministic in `(step, micro-batch)` likewise.
pub trait ChoiceStepData {
    fn choices(&self, step: usize, micro: usize) -> Vec<EncodedChoices>;
}

/// Examples generated afresh for every step from a seeded generator (an unbounded data stream).
pub struct Generated<F: Fn(&mut StdRng) -> TokenizedExample> {
    pub batch_size: usize,
    pub seed: u64,
    pub generate: F,
}

impl<F: Fn(&mut StdRng) -> TokenizedExample> StepData for Generated<F> {
    fn examples(&self, step: usize, micro: usize) -> Vec<TokenizedExample> {
        let mut rng = StdRng::seed_from_u64(mix(mix(self.seed, step as u64), micro as u64));
        (0..self.batch_size).map(|_| (self.generate)(&mut rng)).collect()
    }
}

/// Epochs over a fixed example list, each in a seeded random order (drawn from the example pool without
/// replacement, reshuffled every epoch): token examples ([`StepData`]) or multiple-choice ones
/// ([`ChoiceStepData`]).
pub struct ShuffledEpochs<'a, T = TokenizedExample> {
    examples: &'a [T],
    batch_size: usize,
    micro_batches: usize,
    seed: u64,
}

impl<'a, T: Clone> ShuffledEpochs<'a, T> {
    pub fn new(examples: &'a [T], batch_size: usize, micro_batches: usize, seed: u64) -> Self {
        Self {
            examples,
            batch_size: batch_size.max(1),
            micro_batches: micro_batches.max(1),
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
        let start = (step * self.micro_batches + micro) * self.batch_size;
        let mut cached: Option<(usize, Vec<usize>)> = None;
        (start..start + self.batch_size)
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

impl StepData for ShuffledEpochs<'_, TokenizedExample> {
    fn examples(&self, step: usize, micro: usize) -> Vec<TokenizedExample> {
        self.batch(step, micro)
    }
}

impl ChoiceStepData for ShuffledEpochs<'_, EncodedChoices> {
    fn choices(&self, step: usize, micro: usize) -> Vec<EncodedChoices> {
        self.batch(step, micro)
    }
}

/// A 64-bit mix of a seed and a counter (SplitMix64's finaliser), for per-step seeds.
pub fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_cover_every_example_once_and_are_deterministic() {
        let examples: Vec<TokenizedExample> = (0..10)
            .map(|i| TokenizedExample {
                input_ids: vec![i],
                labels: vec![1],
                task_id: 0,
            })
            .collect();
        let data = ShuffledEpochs::new(&examples, 5, 1, 3);
        let mut seen: Vec<i64> = (0..2)
            .flat_map(|s| data.examples(s, 0))
            .map(|e| e.input_ids[0])
            .collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let again = ShuffledEpochs::new(&examples, 5, 1, 3);
        assert_eq!(data.examples(7, 0), again.examples(7, 0));
        assert_ne!(
            data.examples(0, 0),
            ShuffledEpochs::new(&examples, 5, 1, 4).examples(0, 0),
            "another seed, another order"
        );
    }
}
