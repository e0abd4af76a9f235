use burn::module::Param;
use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;
use mhr_core::{AdaptedLinear, RoutingContext, to_dtype};

use crate::config::T5Config;
use crate::error::ModelError;
use crate::loader::{Init, WeightSource};
use crate::t5::{DrawnDropout, SiteFn};

/// T5's bucket of a relative position `key - query`, exactly as transformers'
/// `T5Attention._relative_position_bucket` computes it (including its float32 logarithm).
///
/// Half the buckets hold exact distances below `num_buckets / 2` (after halving for the two directions
/// when `bidirectional`); the rest grow logarithmically up to `max_distance`, beyond which all share the
/// last bucket. The decoder is causal: positive (future) offsets all fall in bucket 0.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
    // `as` saturates (and maps NaN to 0), so degenerate configs give a valid bucket instead of a panic.
    let large = max_exact.saturating_add((log_ratio / log_range * (num_buckets - max_exact) as f32) as i64);
    (bucket + large.min(num_buckets - 1).max(0)) as usize
}

/// The learned relative position bias of the first layer of a stack, shared by all its layers.
#[derive(Module, Debug)]
pub struct RelativePositionBias<B: Backend> {
    /// `[num_buckets, num_heads]`
    pub weight: Param<Tensor<B, 2>>,
    pub bidirectional: bool,
    pub max_distance: usize,
}

impl<B: Backend> RelativePositionBias<B> {
    /// `[1, heads, q_len, k_len]` for queries at positions `q_start..q_start + q_len` and keys at `0..k_len`.
    pub fn forward(&self, q_start: usize, q_len: usize, k_len: usize) -> Tensor<B, 4> {
        let [num_buckets, heads] = self.weight.dims();
        // The bucket depends on `key - query` only: one logarithm per offset, not per pair.
        let first = -((q_start + q_len) as i64 - 1);
        let by_offset: Vec<i64> = (first..k_len as i64 - q_start as i64)
            .map(|rel| {
                relative_position_bucket(rel, self.bidirectional, num_buckets, self.max_distance) as i64
            })
            .collect();
        let buckets: Vec<i64> = (q_start..q_start + q_len)
            .flat_map(|q| (0..k_len).map(move |k| k as i64 - q as i64 - first))
            .map(|i| by_offset[i as usize])
            .collect();
        let device = self.weight.device();
        let buckets = Tensor::<B, 1, Int>::from_data(TensorData::new(buckets, [q_len * k_len]), &device);
        self.weight
            .val()
            .select(0, buckets)
            .reshape([q_len, k_len, heads])
            .permute([2, 0, 1])
            .unsqueeze()
    }
}

/// Multi-head attention without the `1/sqrt(d)` scaling (T5 folds it into the initialisation).
/// Every projection is an adapter site.
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: AdaptedLinear<B>,
    pub k: AdaptedLinear<B>,
    pub v: AdaptedLinear<B>,
    pub o: AdaptedLinear<B>,
    pub relative_attention_bias: Option<RelativePositionBias<B>>,
    pub num_heads: usize,
    /// On the attention weights, after the softmax.
    pub dropout: Dropout,
}

impl<B: Backend> T5Attention<B> {
    /// `path` is the HF module path (`encoder.block.0.layer.0.SelfAttention`); the bias is built for the
    /// first layer of a stack only, bidirectional in the encoder and causal in the decoder.
    pub(crate) fn build<S: WeightSource<B>>(
        src: &mut S,
        path: &str,
        config: &T5Config,
        bias: Option<bool>,
    ) -> Result<Self, ModelError> {
        let (d, inner, f) = (config.d_model, config.inner_dim(), config.initializer_factor);
        let std = |fan: usize| f * (fan as f64).powf(-0.5);
        let relative_attention_bias = match bias {
            Some(bidirectional) => Some(RelativePositionBias {
                weight: frozen(src.tensor(
                    &format!("{path}.relative_attention_bias.weight"),
                    [config.relative_attention_num_buckets, config.num_heads],
                    Init::Normal { std: std(d) },
                )?),
                bidirectional,
                max_distance: config.relative_attention_max_distance,
            }),
            None => None,
        };
        let mut linear = |name: &str, d_in: usize, d_out: usize, std: f64| {
            src.linear(&format!("{path}.{name}.weight"), d_in, d_out, std)
                .map(|w| AdaptedLinear::new(w, None))
        };
        Ok(Self {
            q: linear("q", d, inner, std(d * config.d_kv))?,
            k: linear("k", d, inner, std(d))?,
            v: linear("v", d, inner, std(d))?,
            o: linear("o", inner, d, std(inner))?,
            relative_attention_bias,
            num_heads: config.num_heads,
            dropout: config.dropout(),
        })
    }

    /// `[b, t, heads · d_kv]` → `[b, heads, t, d_kv]`, contiguous (see [`swap_row_blocks`]).
    fn split_heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, t, inner] = x.dims();
        let h = self.num_heads;
        swap_row_blocks(x.reshape([b, t * h, inner / h]), t, h).reshape([b, h, t, inner / h])
    }

    /// `[b, heads, t, d_kv]` → `[b, t, heads · d_kv]`
    fn merge_heads(x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, h, t, d] = x.dims();
        swap_row_blocks(x.reshape([b, h * t, d]), h, t).reshape([b, t, h * d])
    }

    /// Keys and values `[b, heads, t, d_kv]` of `x: [b, t, d_model]`.
    pub fn project_kv(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            self.split_heads(self.k.forward(x.clone(), ctx)),
            self.split_heads(self.v.forward(x, ctx)),
        )
    }

    /// Attention of `x: [b, t_q, d_model]` over keys and values `[b, heads, t_k, d_kv]`, with an additive
    /// `bias` broadcastable to `[b, heads, t_q, t_k]` (position bias plus -1e9 masks).
    pub fn attend(
        &self,
        x: Tensor<B, 3>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Tensor<B, 4>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        self.attend_biased(x, k, v, Some(&bias), ctx)
    }

    /// [`Self::attend`] with an optional bias: `None` adds nothing (no position bias, nothing masked).
    pub(crate) fn attend_biased(
        &self,
        x: Tensor<B, 3>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Option<&Tensor<B, 4>>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let q = self.split_heads(self.q.forward(x, ctx));
        let scores = q.matmul(k.swap_dims(2, 3));
        let scores = match bias {
            Some(bias) => add_bias(scores, bias),
            None => scores,
        };
        // The softmax in f32, its result in the scores' dtype (transformers' `softmax(scores.float())`).
        let dtype = scores.dtype();
        let weights = self
            .dropout
            .apply(to_dtype(softmax(to_dtype(scores, DType::F32), 3), dtype), ctx);
        let out = Self::merge_heads(weights.matmul(v));
        debug_assert_eq!(out.dims(), [b, t, self.o.d_in()]);
        self.o.forward(out, ctx)
    }

    pub(crate) fn map_sites<E>(self, path: &str, f: &mut SiteFn<'_, B, E>) -> Result<Self, E> {
        Ok(Self {
            q: f(&format!("{path}.q"), self.q)?,
            k: f(&format!("{path}.k"), self.k)?,
            v: f(&format!("{path}.v"), self.v)?,
            o: f(&format!("{path}.o"), self.o)?,
            ..self
        })
    }
}

/// `scores + bias` for scores `[b, h, t, k]` and a bias of the same shape or `[1, h, t, k]` (shared by the batch).
///
/// The shared case is added as `[b, h·t·k] + [1, h·t·k]`: the same sum, but a shape whose broadcast the CPU
/// backends run as a vectorised row loop, where a 4-d broadcast falls back to a per-element strided walk
/// (an order of magnitude slower). Other shapes are added as given.
pub(crate) fn add_bias<B: Backend>(scores: Tensor<B, 4>, bias: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, k] = scores.dims();
    if b > 1 && bias.dims() == [1, h, t, k] {
        let n = h * t * k;
        (scores.reshape([b, n]) + bias.clone().reshape([1, n])).reshape([b, h, t, k])
    } else {
        scores + bias.clone()
    }
}

/// Rows `[b, x·y, d]` in `(x, y)` order → the same rows in `(y, x)` order, i.e. dims 1 and 2 of
/// `[b, x, y, d]` swapped and made contiguous: splitting and merging attention heads.
///
/// Done as a row gather (`select`) rather than `swap_dims` + `reshape`: the CPU backends copy a 4-d
/// permutation one element at a time through a strided index (several ns per element, and it happens once
/// per head split in the backward pass), while `select` copies whole `d`-wide rows and its backward is a
/// row scatter. The values are moved, never changed.
pub(crate) fn swap_row_blocks<B: Backend>(rows: Tensor<B, 3>, x: usize, y: usize) -> Tensor<B, 3> {
    let [b, n, d] = rows.dims();
    debug_assert_eq!(n, x * y);
    if x == 1 || y == 1 {
        return rows;
    }
    let index: Vec<i64> = (0..b)
        .flat_map(|e| (0..y).flat_map(move |j| (0..x).map(move |i| ((e * x + i) * y + j) as i64)))
        .collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [b * n]), &rows.device());
    rows.reshape([b * n, d]).select(0, index).reshape([b, n, d])
}

/// A `[b, 1, 1, k]` padding bias spread to `[b, heads, t, k]` by copying rows, so that adding it to scores
/// is a same-shape add (see [`add_bias`]).
pub(crate) fn spread_mask<B: Backend>(mask_bias: &Tensor<B, 4>, heads: usize, t: usize) -> Tensor<B, 4> {
    mask_bias.clone().repeat_dim(2, t).repeat_dim(1, heads)
}

/// Base-model parameters are frozen on creation, as [`AdaptedLinear`] freezes its weight; unfreeze them with
/// `mhr_core::TrainableSet` for full fine-tuning.
pub(crate) fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(false)
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as bucket;

    /// Worked by hand from transformers' formula with 32 buckets and max distance 128 (T5's defaults).
    /// Bidirectional: 16 buckets per direction, exact below 8; beyond, `8 + floor(ln(n/8) / ln(16) · 8)`.
    #[test]
    fn bidirectional_buckets_match_transformers() {
        let b = |rel| bucket(rel, true, 32, 128);
        assert_eq!([b(0), b(-1), b(-7), b(1), b(7)], [0, 1, 7, 17, 23]);
        // n = 8: ln 1 = 0 → 8; n = 12: ln 1.5 / ln 16 · 8 = 1.17 → 9; n = 16: 0.25 · 8 = 2 → 10.
        assert_eq!([b(-8), b(-12), b(-16)], [8, 9, 10]);
        // n = 32: 0.5 · 8 = 4 → 12; n = 64: 0.75 · 8 = 6 → 14; n = 127: 7.67 → 15; n ≥ 128 capped at 15.
        assert_eq!([b(-32), b(-64), b(-127), b(-128), b(-1000)], [12, 14, 15, 15, 15]);
        // Positive offsets (keys after the query) are shifted by 16.
        assert_eq!([b(8), b(32), b(1000)], [24, 28, 31]);
    }

    /// Causal: 32 buckets, exact below 16, then `16 + floor(ln(n/16) / ln(8) · 16)`; future keys → 0.
    #[test]
    fn causal_buckets_match_transformers() {
        let b = |rel| bucket(rel, false, 32, 128);
        assert_eq!([b(0), b(3), b(100), b(-1), b(-15)], [0, 0, 0, 1, 15]);
        // n = 16 → 16; n = 32: ln 2 / ln 8 · 16 = 5.33 → 21; n = 64: 10.67 → 26; n = 127: 15.9 → 31; capped.
        assert_eq!([b(-16), b(-32), b(-64), b(-127), b(-500)], [16, 21, 26, 31, 31]);
    }

    /// The fixtures' settings (8 buckets, max distance 20): 4 per direction, exact below 2, then
    /// `2 + floor(ln(n/2) / ln 10 · 2)`: n = 3 → 2, n = 6 → 2 + floor(0.95) = 2, n = 7 → 3 (1.09), n = 20 → 3.
    #[test]
    fn small_fixture_buckets() {
        let b = |rel| bucket(rel, true, 8, 20);
        assert_eq!(
            [b(0), b(-1), b(-2), b(-3), b(-6), b(-7), b(-20)],
            [0, 1, 2, 2, 2, 3, 3]
        );
        assert_eq!([b(1), b(2), b(10)], [5, 6, 7]);
        let c = |rel| bucket(rel, false, 8, 20);
        // Causal: exact below 4, then 4 + floor(ln(n/4) / ln 5 · 4): n = 4 → 4, n = 5 → 4 + 0.55 → 4,
        // n = 8 → 4 + 1.72 → 5, n = 10 → 6 (2.28), n = 19 → 7 (3.87), n = 20 → 8 capped at 7.
        assert_eq!(
            [c(-3), c(-4), c(-5), c(-8), c(-10), c(-19), c(-20)],
            [3, 4, 4, 5, 6, 7, 7]
        );
    }
}
