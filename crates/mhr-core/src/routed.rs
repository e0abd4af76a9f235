use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::RoutedLoraConfig;
use crate::lora::Lora;
use crate::router::PolyRouter;
use crate::routing::{RoutingContext, RoutingMode};

/// A skill inventory `A: [h, S, d_in/h, r]`, `B: [h, S, r, d_out/h]` with its router (peft's layout).
///
/// Head `q` mixes block `q` of the input rows of `A` and block `q` of the output columns of `B` with the
/// same weights `w[t, q, :]`; `h = 1` is Poly. `A` and `B` are averaged separately, then multiplied.
#[derive(Module, Debug)]
pub struct RoutedLora<B: Backend> {
    pub poly_lora_a: Param<Tensor<B, 4>>,
    pub poly_lora_b: Param<Tensor<B, 4>>,
    pub router: PolyRouter<B>,
    pub scale: f64,
}

impl<B: Backend> RoutedLora<B> {
    /// Call [`crate::AdapterConfig::validate`] first: `d_in` and `d_out` must divide by `n_heads`.
    pub fn new(config: &RoutedLoraConfig, d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let (h, s, r) = (config.n_heads, config.n_skills, config.rank);
        let a_bound = config.init.a_bound(d_in, h);
        let a = Tensor::random(
            [h, s, d_in / h, r],
            Distribution::Uniform(-a_bound, a_bound),
            device,
        );
        let b = if config.init_b_zero {
            Tensor::zeros([h, s, r, d_out / h], device)
        } else {
            let bound = config.init.b_bound(r);
            Tensor::random([h, s, r, d_out / h], Distribution::Uniform(-bound, bound), device)
        };
        let router = PolyRouter::new(config.n_tasks, h, s, config.routing.clone(), device);
        Self::from_parts(a, b, router, config.scale())
    }

    pub fn from_parts(a: Tensor<B, 4>, b: Tensor<B, 4>, router: PolyRouter<B>, scale: f64) -> Self {
        Self {
            poly_lora_a: Param::from_tensor(a),
            poly_lora_b: Param::from_tensor(b),
            router,
            scale,
        }
    }

    /// `[h, S, d_in/h, r]`
    pub fn dims(&self) -> [usize; 4] {
        self.poly_lora_a.dims()
    }

    /// Per-example mixed adapters `A_t: [b, d_in, r]` and `B_t: [b, r, d_out]` for weights `w: [b, h, S]`,
    /// with one batched matmul per factor over the heads.
    pub fn mix(&self, weights: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [h, s, din_h, r] = self.poly_lora_a.dims();
        let dout_h = self.poly_lora_b.dims()[3];
        let bsz = weights.dims()[0];
        let per_head = weights.swap_dims(0, 1); // [h, b, S]
        let a = per_head
            .clone()
            .matmul(self.poly_lora_a.val().reshape([h, s, din_h * r]))
            .reshape([h, bsz, din_h, r])
            .swap_dims(0, 1)
            .reshape([bsz, h * din_h, r]);
        let b = per_head
            .matmul(self.poly_lora_b.val().reshape([h, s, r * dout_h]))
            .reshape([h, bsz, r, dout_h])
            .permute([1, 2, 0, 3])
            .reshape([bsz, r, h * dout_h]);
        (a, b)
    }

    /// `scale · (x A_t) B_t` for `x: [b, n, d_in]`, each example with its own task's adapter.
    pub fn delta(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        let ids = ctx.ids_for_batch(x.dims()[0]);
        let (a, b) = self.mix(self.router.mixing_weights(ids, ctx.mode()));
        x.matmul(a).matmul(b) * self.scale
    }

    /// The dense update `scale · A_t B_t: [d_in, d_out]` of one task under deterministic routing.
    pub fn dense_update(&self, task: usize) -> Tensor<B, 2> {
        let device = self.poly_lora_a.device();
        let ids = Tensor::<B, 1, Int>::from_data([task as i64], &device);
        let (a, b) = self.mix(self.router.mixing_weights(ids, RoutingMode::Deterministic));
        let [_, d_in, r] = a.dims();
        let d_out = b.dims()[2];
        a.reshape([d_in, r]).matmul(b.reshape([r, d_out])) * self.scale
    }

    /// `-μ`: the uniform average of the skills as one plain LoRA (routing dropped). Its output equals the
    /// routed output under uniform weights `1/S`.
    pub fn average_skills(&self) -> Lora<B> {
        let [h, _, din_h, r] = self.poly_lora_a.dims();
        let dout_h = self.poly_lora_b.dims()[3];
        let a = self.poly_lora_a.val().mean_dim(1).reshape([h * din_h, r]);
        let b = self
            .poly_lora_b
            .val()
            .mean_dim(1)
            .reshape([h, r, dout_h])
            .swap_dims(0, 1)
            .reshape([r, h * dout_h]);
        Lora::from_tensors(a.detach(), b.detach(), self.scale)
    }
}
