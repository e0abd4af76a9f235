//! The T5 encoder–decoder, with HF's module structure so every parameter and adapter site keeps its
//! HF name (`decoder.block.1.layer.1.EncDecAttention.k`).

mod attention;
mod block;
mod checkpointing;
mod ff;
mod layer_norm;
mod model;
mod stack;

pub use attention::{RelativePositionBias, T5Attention, relative_position_bucket};
pub use block::{T5Block, T5LayerCrossAttention, T5LayerSelfAttention};
pub use ff::{T5DenseActDense, T5DenseGatedActDense, T5DenseReluDense, T5LayerFF};
pub use layer_norm::T5LayerNorm;
pub use model::{EncoderOutput, Seq2SeqLmOutput, T5ForConditionalGeneration};
pub use stack::T5Stack;

/// What [`T5ForConditionalGeneration::map_sites`] applies to each adapter site: HF module path and layer in,
/// layer (or an error) out.
pub(crate) type SiteFn<'a, B, E> =
    dyn FnMut(&str, mhr_core::AdaptedLinear<B>) -> Result<mhr_core::AdaptedLinear<B>, E> + 'a;

pub(crate) use model::host_ints;

/// Burn's [`burn::nn::Dropout`] with its mask taken from the forward's [`mhr_core::Draws`] when the
/// context has them (a training step's), so each example's mask is the same whichever peer computes it.
pub(crate) trait DrawnDropout {
    fn apply<B: burn::prelude::Backend, const D: usize>(
        &self,
        x: burn::prelude::Tensor<B, D>,
        ctx: &mhr_core::RoutingContext<B>,
    ) -> burn::prelude::Tensor<B, D>;
}

impl DrawnDropout for burn::nn::Dropout {
    fn apply<B: burn::prelude::Backend, const D: usize>(
        &self,
        x: burn::prelude::Tensor<B, D>,
        ctx: &mhr_core::RoutingContext<B>,
    ) -> burn::prelude::Tensor<B, D> {
        let Some(draws) = ctx.draws() else {
            return self.forward(x);
        };
        if !B::ad_enabled(&x.device()) || self.prob == 0.0 {
            return x;
        }
        // Burn's arithmetic, to the rounding.
        let keep = 1.0 - self.prob;
        let mask = draws.random(
            x.dims(),
            burn::tensor::Distribution::Bernoulli(keep),
            &x.device(),
            x.dtype(),
        );
        x * mask * (1.0 / keep)
    }
}
