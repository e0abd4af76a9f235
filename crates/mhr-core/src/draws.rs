//! The random numbers of a training forward (routing noise, logits dropout, the host model's dropout) as a
//! function of the seed, the draw's place in the forward and the example's row, so that a batch split over
//! data-parallel peers draws for each example what one device with the whole batch draws.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

/// Serialises seeding and drawing: Burn's backends keep one random generator per process, which peers
/// running as threads share.
static BACKEND_RNG: Mutex<()> = Mutex::new(());

/// A 64-bit mix of a seed and a counter (SplitMix64's finaliser): every derived seed of the project.
pub fn mix(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The draws of one forward pass over rows `rows` of a batch of `batch_rows`: draw `k` after
/// [`Self::restart`]`(seed)` is made from `mix(seed, k)` for the whole batch, and this forward keeps its
/// rows. Clones share the count, so the contexts a model derives for its parts keep one sequence.
#[derive(Debug, Clone)]
pub struct Draws {
    rows: Range<usize>,
    batch_rows: usize,
    state: Arc<Mutex<(u64, u64)>>,
}

impl Draws {
    /// Draws from `seed` for rows `rows` of a batch of `batch_rows` rows.
    ///
    /// # Panics
    /// When `rows` does not lie in `0..batch_rows`.
    pub fn new(seed: u64, rows: Range<usize>, batch_rows: usize) -> Self {
        assert!(
            rows.start <= rows.end && rows.end <= batch_rows,
            "rows {rows:?} outside a batch of {batch_rows}"
        );
        Self {
            rows,
            batch_rows,
            state: Arc::new(Mutex::new((seed, 0))),
        }
    }

    /// Draws for a whole batch of `rows` rows.
    pub fn whole(seed: u64, rows: usize) -> Self {
        Self::new(seed, 0..rows, rows)
    }

    /// Starts the sequence again from `seed` (a recomputed segment repeats its draws).
    pub fn restart(&self, seed: u64) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (seed, 0);
    }

    /// The next draw, of this forward's `shape` (its first dimension: the rows) in `dtype`.
    ///
    /// # Panics
    /// When `shape[0]` is not the number of this forward's rows.
    pub fn random<B: Backend, const D: usize>(
        &self,
        shape: [usize; D],
        distribution: Distribution,
        device: &B::Device,
        dtype: DType,
    ) -> Tensor<B, D> {
        assert_eq!(
            shape[0],
            self.rows.len(),
            "a draw of {shape:?} in a forward over rows {:?}",
            self.rows
        );
        let seed = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.1 += 1;
            mix(state.0, state.1 - 1)
        };
        let mut whole = shape;
        whole[0] = self.batch_rows;
        let drawn = {
            let _backend = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(device, seed);
            Tensor::<B, D>::random(whole, distribution, (device, dtype))
        };
        if self.rows.len() == self.batch_rows {
            drawn
        } else {
            drawn.narrow(0, self.rows.start, self.rows.len())
        }
    }
}

/// The next random tensor of `shape`: from `draws` when the forward has them, else from the backend's
/// generator as it stands (tests, and forwards whose draws need not be reproducible per example).
pub fn random<B: Backend, const D: usize>(
    draws: Option<&Draws>,
    shape: [usize; D],
    distribution: Distribution,
    device: &B::Device,
    dtype: DType,
) -> Tensor<B, D> {
    match draws {
        Some(draws) => draws.random(shape, distribution, device, dtype),
        None => Tensor::random(shape, distribution, (device, dtype)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    fn values(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn a_peer_draws_its_rows_of_the_whole_batch() {
        let device = Default::default();
        let whole = Draws::whole(5, 5);
        let peer = Draws::new(5, 2..4, 5);
        for _ in 0..3 {
            let all = values(whole.random([5, 3], Distribution::Default, &device, DType::F32));
            let mine = values(peer.random([2, 3], Distribution::Default, &device, DType::F32));
            assert_eq!(mine, all[6..12].to_vec());
        }
    }

    #[test]
    fn draws_differ_in_sequence_and_repeat_after_restart() {
        let device = Default::default();
        let draws = Draws::whole(9, 2);
        let draw = || values(draws.random([2, 4], Distribution::Default, &device, DType::F32));
        let (first, second) = (draw(), draw());
        assert_ne!(first, second);
        draws.restart(9);
        assert_eq!(draw(), first);
        // Another thread drawing from the backend's generator in between changes nothing.
        std::thread::scope(|s| {
            s.spawn(|| Tensor::<B, 1>::random([7], Distribution::Default, &device));
        });
        assert_eq!(draw(), second);
    }
}
