use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::RoutedLoraConfig;
use crate::lora::Lora;
use crate::router::PolyRouter;
use crate::router::RoutingMode;
use crate::routing::RoutingContext;
use crate::sharing::SiteRouter;

/// A skill inventory `A: [h, S, d_in/h, r]`, `B: [h, S, r, d_out/h]` with its router (peft's layout).
///
/// Head `q` mixes block `q` of the input rows of `A` and block `q` of the output columns of `B` with the
/// same weights `w[t, q, :]`; `h = 1` is Poly. `A` and `B` are averaged separately, then multiplied.
#[derive(Module, Debug)]
pub struct RoutedLora<B: Backend> {
    pub poly_lora_a: Param<Tensor<B, 4>>,
    pub poly_lora_b: Param<Tensor<B, 4>>,
    pub router: SiteRouter<B>,
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
            router: SiteRouter::Own(router),
            scale,
        }
    }

    /// `[h, S, d_in/h, r]`
    pub fn dims(&self) -> [usize; 4] {
        self.poly_lora_a.dims()
    }

    /// Per-example mixed adapters `A_t: [b, d_in, r]` and `B_t: [b, r, d_out]` for weights `w: [b, h, S]`.
    ///
    /// One matmul each, batched over the heads: `w[:, q, :] · A[q]` is head `q`'s block of every `A_t`, laid out
    /// `[h, b, …]`; a row gather puts the blocks in their final places (head `q`'s rows of `A_t`, its columns of
    /// `B_t`). A block-diagonal weight matrix would give the final layout directly, at `h` times the multiply-adds.
    pub fn mix(&self, weights: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [h, s, din_h, r] = self.poly_lora_a.dims();
        let dout_h = self.poly_lora_b.dims()[3];
        let bsz = weights.dims()[0];
        if h == 1 {
            let w = weights.reshape([bsz, s]);
            let a = w.clone().matmul(self.poly_lora_a.val().reshape([s, din_h * r]));
            let b = w.matmul(self.poly_lora_b.val().reshape([s, r * dout_h]));
            return (a.reshape([bsz, din_h, r]), b.reshape([bsz, r, dout_h]));
        }
        let w = weights.swap_dims(0, 1);
        let a = w
            .clone()
            .matmul(self.poly_lora_a.val().reshape([h, s, din_h * r]));
        let b = w.matmul(self.poly_lora_b.val().reshape([h, s, r * dout_h]));
        let device = a.device();
        // Row (q, e) of `a` is head q's rows of A_e: in example-major order it is A_e's q-th block.
        let a_rows = gather_index((0..bsz).flat_map(|e| (0..h).map(move |q| q * bsz + e)), &device);
        let a = a.reshape([h * bsz, din_h * r]).select(0, a_rows);
        // Row (q, e, k) of `b` is row k of B_e restricted to head q's columns: B_e's row k is (q, e, k) over q.
        let b_rows = gather_index(
            (0..bsz).flat_map(|e| (0..r).flat_map(move |k| (0..h).map(move |q| (q * bsz + e) * r + k))),
            &device,
        );
        let b = b.reshape([h * bsz * r, dout_h]).select(0, b_rows);
        (a.reshape([bsz, h * din_h, r]), b.reshape([bsz, r, h * dout_h]))
    }

    /// `scale · (x A_t) B_t` for `x: [b, n, d_in]`, each example with its own task's adapter.
    ///
    /// The scale is applied to the rank-`r` intermediate (`r` columns instead of `d_out`); for the usual
    /// power-of-two scales (`1/r`) this is exact.
    pub fn delta(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        let batch = x.dims()[0];
        let (a, b) = ctx.mixed_adapters(self.poly_lora_a.id, batch, || {
            let ids = ctx.ids_for_batch(batch);
            self.mix(
                ctx.router(&self.router)
                    .drawn_mixing_weights(ids, ctx.mode(), ctx.draws()),
            )
        });
        let u = x.matmul(a);
        let u = if self.scale == 1.0 { u } else { u * self.scale };
        u.matmul(b)
    }

    /// The dense update `scale · A_t B_t: [d_in, d_out]` of one task under deterministic routing by `router`
    /// (the site's own or its group's).
    pub fn dense_update(&self, router: &PolyRouter<B>, task: usize) -> Tensor<B, 2> {
        let device = self.poly_lora_a.device();
        let ids = Tensor::<B, 1, Int>::from_data([task as i64], &device);
        let (a, b) = self.mix(router.mixing_weights(ids, RoutingMode::Deterministic));
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

/// The row indices `rows` as an index tensor for `select`.
fn gather_index<B: Backend>(rows: impl Iterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let rows: Vec<i64> = rows.map(|i| i as i64).collect();
    let n = rows.len();
    Tensor::from_data(TensorData::new(rows, [n]), device)
}
