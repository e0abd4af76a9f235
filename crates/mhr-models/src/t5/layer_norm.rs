use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use mhr_core::to_dtype;

use crate::error::ModelError;
use crate::loader::{Init, WeightSource};
use crate::t5::attention::frozen;

/// T5's RMS norm: `w · x / sqrt(mean(x²) + eps)`, no mean subtraction and no bias.
///
/// Burn's `RmsNorm` would do, but its eps default (1e-5) differs from T5's and its field is named
/// `gamma`; this keeps HF's `weight` and the config's `layer_norm_epsilon` explicit.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    /// `[d_model]`
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> T5LayerNorm<B> {
    pub(crate) fn build<S: WeightSource<B>>(
        src: &mut S,
        path: &str,
        d_model: usize,
        eps: f64,
    ) -> Result<Self, ModelError> {
        let weight = src.tensor(&format!("{path}.weight"), [d_model], Init::Ones)?;
        Ok(Self {
            weight: frozen(weight),
            eps,
        })
    }

    /// `[b, t, d] → [b, t, d]`, normalised in f32 and returned in the weight's dtype (transformers').
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let weight = self.weight.val();
        let x = to_dtype(x, DType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        let normed = x * (variance + self.eps).sqrt().recip();
        to_dtype(normed, weight.dtype()) * weight.unsqueeze()
    }
}
