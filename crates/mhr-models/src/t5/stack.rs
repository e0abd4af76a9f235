use burn::nn::Dropout;
use burn::prelude::*;
use mhr_core::{RoutingContext, to_dtype};

use crate::config::{FeedForwardKind, T5Config};
use crate::error::ModelError;
use crate::generation::DecoderCache;
use crate::loader::WeightSource;
use crate::t5::attention::{add_bias, spread_mask};
use crate::t5::block::{CrossInput, T5Block};
use crate::t5::layer_norm::T5LayerNorm;
use crate::t5::{DrawnDropout, SiteFn};

/// Added to attention scores that must be ignored; finite, so a fully masked row stays a number.
pub(crate) const MASKED: f32 = -1e9;

/// The encoder or the decoder: dropout on the embedded tokens, blocks, a final RMS norm and dropout again.
/// Embeddings live in the parent model (`shared`).
#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    pub block: Vec<T5Block<B>>,
    pub final_layer_norm: T5LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> T5Stack<B> {
    /// The layer norms and the relative position bias under their HF names (`prefix` as in [`Self::build`]); the
    /// linear layers are the adapter sites'.
    pub(crate) fn named_norms_and_biases(&self, prefix: &str) -> Vec<(String, TensorData)> {
        let mut tensors: Vec<(String, TensorData)> = (self.block.iter().enumerate())
            .flat_map(|(i, block)| block.named_norms_and_biases(&format!("{prefix}.block.{i}")))
            .collect();
        tensors.push((
            format!("{prefix}.final_layer_norm.weight"),
            self.final_layer_norm.weight.val().into_data(),
        ));
        tensors
    }

    /// `prefix` is `encoder` or `decoder`.
    pub(crate) fn build<S: WeightSource<B>>(
        src: &mut S,
        prefix: &str,
        config: &T5Config,
        kind: FeedForwardKind,
        is_decoder: bool,
    ) -> Result<Self, ModelError> {
        let layers = if is_decoder {
            config.decoder_layers()
        } else {
            config.num_layers
        };
        let block = (0..layers)
            .map(|i| {
                T5Block::build(
                    src,
                    &format!("{prefix}.block.{i}"),
                    config,
                    kind,
                    is_decoder,
                    i == 0,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let final_layer_norm = T5LayerNorm::build(
            src,
            &format!("{prefix}.final_layer_norm"),
            config.d_model,
            config.layer_norm_epsilon,
        )?;
        Ok(Self {
            block,
            final_layer_norm,
            dropout: config.dropout(),
        })
    }

    /// Every dropout site of the stack at `dropout`'s rate.
    pub(crate) fn set_dropout(&mut self, dropout: &Dropout) {
        self.dropout = dropout.clone();
        for block in &mut self.block {
            block.set_dropout(dropout);
        }
    }

    /// The first block's relative position bias `[1, heads, q_len, k_len]`, computed once and shared by all
    /// blocks as in transformers; zero when the stack has none.
    fn position_bias(&self, q_start: usize, q_len: usize, k_len: usize) -> Option<Tensor<B, 4>> {
        let bias = self
            .block
            .first()?
            .self_attention
            .attention
            .relative_attention_bias
            .as_ref()?;
        Some(bias.forward(q_start, q_len, k_len))
    }

    fn num_heads(&self) -> usize {
        self.block
            .first()
            .map_or(1, |block| block.self_attention.attention.num_heads)
    }

    /// Encoder: `x: [b, s, d_model]` embedded tokens, `mask_bias: [b, 1, 1, s]` (0 or -1e9 per key), `None`
    /// when no token is padding.
    pub(crate) fn encode(
        &self,
        x: Tensor<B, 3>,
        mask_bias: Option<&Tensor<B, 4>>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        let bias = self.encoder_bias(x.dims()[1], mask_bias);
        let x = self.block.iter().fold(self.start(x, ctx), |x, block| {
            block.forward(x, bias.as_ref(), None, ctx)
        });
        self.finish(x, ctx)
    }

    /// The encoder's self-attention bias, built once for all blocks: `[1, heads, s, s]` without padding, else
    /// `[b, heads, s, s]`, so that every block adds it without a 4-d broadcast.
    pub(crate) fn encoder_bias(&self, s: usize, mask_bias: Option<&Tensor<B, 4>>) -> Option<Tensor<B, 4>> {
        let position = self.position_bias(0, s, s);
        let mask = mask_bias.map(|m| spread_mask(m, self.num_heads(), s));
        match (position, mask) {
            (Some(position), Some(mask)) => Some(add_bias(mask, &position)),
            (position, mask) => position.or(mask),
        }
    }

    /// The dropout on the embedded tokens that enter the stack.
    pub(crate) fn start(&self, embedded: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        self.dropout.apply(embedded, ctx)
    }

    /// The final layer norm and dropout after the last block.
    pub(crate) fn finish(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        self.dropout.apply(self.final_layer_norm.forward(x), ctx)
    }

    /// Decoder over the positions `cache.len()..cache.len() + t` of `x: [b, t, d_model]`, attending causally to
    /// themselves and the cached positions, and to the encoder output (padding masked by `cross_bias`
    /// `[b, 1, 1, s]`, `None` when nothing is padded).
    pub(crate) fn decode(
        &self,
        x: Tensor<B, 3>,
        encoder_hidden: &Tensor<B, 3>,
        cross_bias: Option<&Tensor<B, 4>>,
        cache: &mut DecoderCache<B>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        let (start, t) = (cache.len(), x.dims()[1]);
        let bias = self.decoder_bias(start, t, &x);
        let cross_bias = self.cross_bias(cross_bias, t);
        let layers = cache.layers_mut(self.block.len());
        let x = self
            .block
            .iter()
            .zip(layers)
            .fold(self.start(x, ctx), |x, (block, layer_cache)| {
                let cross = CrossInput {
                    encoder_hidden,
                    bias: cross_bias.as_ref(),
                    cache: layer_cache,
                };
                block.forward(x, bias.as_ref(), Some(cross), ctx)
            });
        cache.advance(t);
        self.finish(x, ctx)
    }

    /// The decoder's self-attention bias for the positions `start..start + t` (of `x`'s dtype and device):
    /// relative positions, and a causal mask when there is more than one.
    pub(crate) fn decoder_bias(&self, start: usize, t: usize, x: &Tensor<B, 3>) -> Option<Tensor<B, 4>> {
        let k_len = start + t;
        // The last query sees every key: a single new position needs no causal mask.
        let causal = (t > 1).then(|| {
            let causal: Vec<f32> = (start..k_len)
                .flat_map(|q| (0..k_len).map(move |k| if k > q { MASKED } else { 0.0 }))
                .collect();
            let causal = Tensor::<B, 4>::from_data(TensorData::new(causal, [1, 1, t, k_len]), &x.device());
            to_dtype(causal, x.dtype())
        });
        match (self.position_bias(start, t, k_len), causal) {
            // `[h, t·k] + [1, t·k]`: a row broadcast (see `add_bias`).
            (Some(position), Some(causal)) => {
                let h = position.dims()[1];
                Some(
                    (position.reshape([h, t * k_len]) + causal.reshape([1, t * k_len]))
                        .reshape([1, h, t, k_len]),
                )
            }
            (position, causal) => position.or(causal),
        }
    }

    /// The encoder padding mask `[b, 1, 1, s]` spread over the heads and `t` queries of cross-attention.
    pub(crate) fn cross_bias(&self, mask_bias: Option<&Tensor<B, 4>>, t: usize) -> Option<Tensor<B, 4>> {
        mask_bias.map(|m| spread_mask(m, self.num_heads(), t))
    }

    pub(crate) fn map_sites<E>(self, prefix: &str, f: &mut SiteFn<'_, B, E>) -> Result<Self, E> {
        let block = self
            .block
            .into_iter()
            .enumerate()
            .map(|(i, block)| block.map_sites(&format!("{prefix}.block.{i}"), f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { block, ..self })
    }
}
