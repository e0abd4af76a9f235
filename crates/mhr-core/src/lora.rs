use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::LoraConfig;

/// One low-rank update `scale · (x A) B` with `A: [d_in, r]`, `B: [r, d_out]` (Burn's `[in, out]` layout;
/// peft stores the transposes).
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_a: Param<Tensor<B, 2>>,
    pub lora_b: Param<Tensor<B, 2>>,
    pub scale: f64,
}

impl<B: Backend> Lora<B> {
    pub fn new(config: &LoraConfig, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let r = config.rank;
        let a_bound = config.init.a_bound(d_in, 1);
        let a = Tensor::random([d_in, r], Distribution::Uniform(-a_bound, a_bound), device);
        let b = if config.init_b_zero {
            Tensor::zeros([r, d_out], device)
        } else {
            let bound = config.init.b_bound(r);
            Tensor::random([r, d_out], Distribution::Uniform(-bound, bound), device)
        };
        Self::from_tensors(a, b, config.scale())
    }

    pub fn from_tensors(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64) -> Self {
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale,
        }
    }

    pub fn rank(&self) -> usize {
        self.lora_a.dims()[1]
    }

    /// `scale · (x A) B` for `x: [n, d_in]`.
    ///
    /// The scale multiplies the rank-`r` intermediate `x A` (`r` columns, not `d_out`) and is skipped when it is 1
    /// (`alpha = r`); for power-of-two scales this is exact.
    pub fn delta(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let u = x.matmul(self.lora_a.val());
        let u = if self.scale == 1.0 { u } else { u * self.scale };
        u.matmul(self.lora_b.val())
    }

    /// The dense update `scale · A B: [d_in, d_out]`, for merging.
    pub fn dense_update(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }
}
