use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{gelu, relu, sigmoid, silu};
use mhr_core::{AdaptedLinear, RoutingContext, to_dtype};

use crate::config::{Activation, FeedForwardKind, T5Config};
use crate::error::ModelError;
use crate::loader::WeightSource;
use crate::t5::layer_norm::T5LayerNorm;
use crate::t5::{DrawnDropout, SiteFn};

fn activate<B: Backend>(activation: Activation, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match activation {
        Activation::Relu => relu(x),
        Activation::Gelu => gelu(x),
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Silu => silu(x),
    }
}

/// transformers' `gelu_new`, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed as the equal
/// `x·σ(2·√(2/π)·(x + 0.044715·x³))`: Burn's `gelu_approximate` takes a `powf` and a `tanh` (both scalar libm
/// calls per element on the CPU backends, and `tanh`'s backward recomputes it), where `sigmoid` is one fused
/// op with a one-pass backward. This was a quarter of a `gated-gelu` training step.
///
/// In a lower precision it is transformers' own sequence of ops, each computed in f32 (torch's "opmath", its
/// scalars unrounded) and rounded to the tensor's dtype, so that a bf16 run rounds where transformers' does.
fn gelu_tanh<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    /// `2·√(2/π)`
    const C1: f64 = 2.0 * core::f64::consts::FRAC_2_SQRT_PI * core::f64::consts::FRAC_1_SQRT_2;
    const C2: f64 = C1 * 0.044715;
    let dtype = x.dtype();
    if dtype == DType::F32 {
        let inner = x.clone() * (x.clone() * x.clone() * C2 + C1);
        return x * sigmoid(inner);
    }
    let round = |y: Tensor<B, 3>| to_dtype(to_dtype(y, dtype), DType::F32);
    let x = to_dtype(x, DType::F32);
    // torch's `pow(x, 3.0)` rounds `x·x`, then `x·x·x`.
    let cube = round(round(x.clone() * x.clone()) * x.clone());
    let inner = round(x.clone() + round(cube * 0.044715));
    let tanh = round(round(inner * (C1 / 2.0)).tanh());
    to_dtype(x * 0.5 * round(tanh + 1.0), dtype)
}

/// `wo(dropout(act(wi x)))`: T5 v1.0.
#[derive(Module, Debug)]
pub struct T5DenseActDense<B: Backend> {
    pub wi: AdaptedLinear<B>,
    pub wo: AdaptedLinear<B>,
    pub activation: Activation,
    pub dropout: Dropout,
}

/// `wo(dropout(act(wi_0 x) · wi_1 x))`: T5 v1.1, LM-adapt, T0 (gated-gelu).
#[derive(Module, Debug)]
pub struct T5DenseGatedActDense<B: Backend> {
    pub wi_0: AdaptedLinear<B>,
    pub wi_1: AdaptedLinear<B>,
    pub wo: AdaptedLinear<B>,
    pub activation: Activation,
    pub dropout: Dropout,
}

/// HF's `DenseReluDense`, whichever layout the config asks for.
// Built once per layer, so the size gap between variants costs nothing; Burn has no `Module` for `Box`.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum T5DenseReluDense<B: Backend> {
    Act(T5DenseActDense<B>),
    Gated(T5DenseGatedActDense<B>),
}

impl<B: Backend> T5DenseReluDense<B> {
    fn build<S: WeightSource<B>>(
        src: &mut S,
        path: &str,
        config: &T5Config,
        kind: FeedForwardKind,
    ) -> Result<Self, ModelError> {
        let (d, d_ff, f) = (config.d_model, config.d_ff, config.initializer_factor);
        let mut linear = |name: &str, d_in: usize, d_out: usize| {
            let std = f * (d_in as f64).powf(-0.5);
            src.linear(&format!("{path}.{name}.weight"), d_in, d_out, std)
                .map(|w| AdaptedLinear::new(w, None))
        };
        let activation = kind.activation;
        let dropout = config.dropout();
        Ok(if kind.gated {
            Self::Gated(T5DenseGatedActDense {
                wi_0: linear("wi_0", d, d_ff)?,
                wi_1: linear("wi_1", d, d_ff)?,
                wo: linear("wo", d_ff, d)?,
                activation,
                dropout,
            })
        } else {
            Self::Act(T5DenseActDense {
                wi: linear("wi", d, d_ff)?,
                wo: linear("wo", d_ff, d)?,
                activation,
                dropout,
            })
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        match self {
            Self::Act(m) => {
                let hidden = activate(m.activation, m.wi.forward(x, ctx));
                m.wo.forward(m.dropout.apply(hidden, ctx), ctx)
            }
            Self::Gated(m) => {
                let gate = activate(m.activation, m.wi_0.forward(x.clone(), ctx));
                m.wo.forward(m.dropout.apply(gate * m.wi_1.forward(x, ctx), ctx), ctx)
            }
        }
    }

    fn map_sites<E>(self, path: &str, f: &mut SiteFn<'_, B, E>) -> Result<Self, E> {
        Ok(match self {
            Self::Act(m) => Self::Act(T5DenseActDense {
                wi: f(&format!("{path}.wi"), m.wi)?,
                wo: f(&format!("{path}.wo"), m.wo)?,
                ..m
            }),
            Self::Gated(m) => Self::Gated(T5DenseGatedActDense {
                wi_0: f(&format!("{path}.wi_0"), m.wi_0)?,
                wi_1: f(&format!("{path}.wi_1"), m.wi_1)?,
                wo: f(&format!("{path}.wo"), m.wo)?,
                ..m
            }),
        })
    }
}

/// Pre-norm residual FFN: `x + dropout(DenseReluDense(layer_norm(x)))`.
#[derive(Module, Debug)]
pub struct T5LayerFF<B: Backend> {
    pub dense_relu_dense: T5DenseReluDense<B>,
    pub layer_norm: T5LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> T5LayerFF<B> {
    pub(crate) fn build<S: WeightSource<B>>(
        src: &mut S,
        path: &str,
        config: &T5Config,
        kind: FeedForwardKind,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            dense_relu_dense: T5DenseReluDense::build(src, &format!("{path}.DenseReluDense"), config, kind)?,
            layer_norm: T5LayerNorm::build(
                src,
                &format!("{path}.layer_norm"),
                config.d_model,
                config.layer_norm_epsilon,
            )?,
            dropout: config.dropout(),
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        let transformed = self
            .dense_relu_dense
            .forward(self.layer_norm.forward(x.clone()), ctx);
        x + self.dropout.apply(transformed, ctx)
    }

    /// Both dropout sites (hidden layer, output) at `dropout`'s rate.
    pub(crate) fn set_dropout(&mut self, dropout: &Dropout) {
        self.dropout = dropout.clone();
        match &mut self.dense_relu_dense {
            T5DenseReluDense::Act(m) => m.dropout = dropout.clone(),
            T5DenseReluDense::Gated(m) => m.dropout = dropout.clone(),
        }
    }

    pub(crate) fn map_sites<E>(self, path: &str, f: &mut SiteFn<'_, B, E>) -> Result<Self, E> {
        Ok(Self {
            dense_relu_dense: self
                .dense_relu_dense
                .map_sites(&format!("{path}.DenseReluDense"), f)?,
            ..self
        })
    }
}
