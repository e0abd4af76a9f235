use burn::nn::Dropout;
use burn::prelude::*;
use mhr_core::RoutingContext;

use crate::config::{FeedForwardKind, T5Config};
use crate::error::ModelError;
use crate::generation::LayerCache;
use crate::loader::WeightSource;
use crate::t5::attention::T5Attention;
use crate::t5::ff::T5LayerFF;
use crate::t5::layer_norm::T5LayerNorm;
use crate::t5::{DrawnDropout, SiteFn};

/// HF's `layer.0`: `x + dropout(SelfAttention(layer_norm(x)))`.
#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    /// HF's `SelfAttention`.
    pub attention: T5Attention<B>,
    pub layer_norm: T5LayerNorm<B>,
    pub dropout: Dropout,
}

/// HF's `layer.1` of a decoder block: `x + dropout(EncDecAttention(layer_norm(x), encoder output))`.
#[derive(Module, Debug)]
pub struct T5LayerCrossAttention<B: Backend> {
    /// HF's `EncDecAttention`.
    pub attention: T5Attention<B>,
    pub layer_norm: T5LayerNorm<B>,
    pub dropout: Dropout,
}

/// What a decoder block attends to besides itself: the encoder output, its -1e9 padding mask
/// `[b, heads, t, s]` (`None` when nothing is padded), and the layer's key/value cache.
pub(crate) struct CrossInput<'a, B: Backend> {
    pub encoder_hidden: &'a Tensor<B, 3>,
    pub bias: Option<&'a Tensor<B, 4>>,
    pub cache: &'a mut LayerCache<B>,
}

/// One encoder or decoder layer: self-attention, cross-attention (decoder only), feed-forward.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    pub self_attention: T5LayerSelfAttention<B>,
    pub cross_attention: Option<T5LayerCrossAttention<B>>,
    /// HF's `layer.1` (encoder) or `layer.2` (decoder).
    pub ff: T5LayerFF<B>,
}

impl<B: Backend> T5Block<B> {
    /// `path` is e.g. `decoder.block.3`; the first block of a stack owns the relative position bias.
    pub(crate) fn build<S: WeightSource<B>>(
        src: &mut S,
        path: &str,
        config: &T5Config,
        kind: FeedForwardKind,
        is_decoder: bool,
        has_bias: bool,
    ) -> Result<Self, ModelError> {
        let (d, eps) = (config.d_model, config.layer_norm_epsilon);
        let self_attention = T5LayerSelfAttention {
            attention: T5Attention::build(
                src,
                &format!("{path}.layer.0.SelfAttention"),
                config,
                has_bias.then_some(!is_decoder),
            )?,
            layer_norm: T5LayerNorm::build(src, &format!("{path}.layer.0.layer_norm"), d, eps)?,
            dropout: config.dropout(),
        };
        let cross_attention = if is_decoder {
            Some(T5LayerCrossAttention {
                attention: T5Attention::build(src, &format!("{path}.layer.1.EncDecAttention"), config, None)?,
                layer_norm: T5LayerNorm::build(src, &format!("{path}.layer.1.layer_norm"), d, eps)?,
                dropout: config.dropout(),
            })
        } else {
            None
        };
        let ff = T5LayerFF::build(src, &Self::ff_path(path, is_decoder), config, kind)?;
        Ok(Self {
            self_attention,
            cross_attention,
            ff,
        })
    }

    /// The layer norms (and the relative position bias of a first block) under their HF names; `path` as in
    /// [`Self::build`].
    pub(crate) fn named_norms_and_biases(&self, path: &str) -> Vec<(String, TensorData)> {
        let norm = |layer: String, norm: &T5LayerNorm<B>| {
            (
                format!("{layer}.layer_norm.weight"),
                norm.weight.val().into_data(),
            )
        };
        let mut tensors = vec![norm(format!("{path}.layer.0"), &self.self_attention.layer_norm)];
        if let Some(bias) = &self.self_attention.attention.relative_attention_bias {
            tensors.push((
                format!("{path}.layer.0.SelfAttention.relative_attention_bias.weight"),
                bias.weight.val().into_data(),
            ));
        }
        if let Some(cross) = &self.cross_attention {
            tensors.push(norm(format!("{path}.layer.1"), &cross.layer_norm));
        }
        let is_decoder = self.cross_attention.is_some();
        tensors.push(norm(Self::ff_path(path, is_decoder), &self.ff.layer_norm));
        tensors
    }

    fn ff_path(path: &str, is_decoder: bool) -> String {
        format!("{path}.layer.{}", if is_decoder { 2 } else { 1 })
    }

    /// `x: [b, t, d_model]`; `self_bias` is `[1 or b, heads, t, t_k]` (`None`: nothing to add). Decoder blocks get `cross`, whose
    /// cache receives this step's self-attention keys and values (and the cross-attention ones, once).
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        self_bias: Option<&Tensor<B, 4>>,
        cross: Option<CrossInput<'_, B>>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        let normed = self.self_attention.layer_norm.forward(x.clone());
        let attention = &self.self_attention.attention;
        let (mut k, mut v) = attention.project_kv(normed.clone(), ctx);
        let mut cross = cross;
        if let Some(cross) = cross.as_mut() {
            (k, v) = cross.cache.append_self_attention(k, v);
        }
        let attended = attention.attend_biased(normed, k, v, self_bias, ctx);
        let mut x = x + self.self_attention.dropout.apply(attended, ctx);
        if let (Some(layer), Some(cross)) = (&self.cross_attention, cross) {
            let normed = layer.layer_norm.forward(x.clone());
            let (k, v) = cross
                .cache
                .cross_attention(|| layer.attention.project_kv(cross.encoder_hidden.clone(), ctx));
            let attended = layer.attention.attend_biased(normed, k, v, cross.bias, ctx);
            x = x + layer.dropout.apply(attended, ctx);
        }
        self.ff.forward(x, ctx)
    }

    pub(crate) fn map_sites<E>(self, path: &str, f: &mut SiteFn<'_, B, E>) -> Result<Self, E> {
        let is_decoder = self.cross_attention.is_some();
        let self_attention = T5LayerSelfAttention {
            attention: self
                .self_attention
                .attention
                .map_sites(&format!("{path}.layer.0.SelfAttention"), f)?,
            ..self.self_attention
        };
        let cross_attention = match self.cross_attention {
            Some(layer) => Some(T5LayerCrossAttention {
                attention: layer
                    .attention
                    .map_sites(&format!("{path}.layer.1.EncDecAttention"), f)?,
                ..layer
            }),
            None => None,
        };
        let ff = self.ff.map_sites(&Self::ff_path(path, is_decoder), f)?;
        Ok(Self {
            self_attention,
            cross_attention,
            ff,
        })
    }

    /// Every dropout site of the block at `dropout`'s rate.
    pub(crate) fn set_dropout(&mut self, dropout: &Dropout) {
        self.self_attention.dropout = dropout.clone();
        self.self_attention.attention.dropout = dropout.clone();
        if let Some(layer) = self.cross_attention.as_mut() {
            layer.dropout = dropout.clone();
            layer.attention.dropout = dropout.clone();
        }
        self.ff.set_dropout(dropout);
    }
}
