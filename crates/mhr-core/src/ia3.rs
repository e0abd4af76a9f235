use burn::module::Param;
use burn::prelude::*;

use crate::config::RoutedIa3Config;
use crate::router::PolyRouter;
use crate::routing::RoutingContext;
use crate::sharing::SiteRouter;

/// (IA)^3: a vector `l` that scales the layer output (`[d_out]`), or its input (`[d_in]`) for
/// feed-forward down-projections (peft's `feedforward_modules`). Initialised to ones: the identity.
#[derive(Module, Debug)]
pub struct Ia3<B: Backend> {
    pub ia3_l: Param<Tensor<B, 1>>,
    pub feedforward: bool,
}

impl<B: Backend> Ia3<B> {
    pub fn new(width: usize, feedforward: bool, device: &B::Device) -> Self {
        Self::from_tensor(Tensor::ones([width], device), feedforward)
    }

    pub fn from_tensor(l: Tensor<B, 1>, feedforward: bool) -> Self {
        Self {
            ia3_l: Param::from_tensor(l),
            feedforward,
        }
    }
}

/// Poly-(IA)^3 / MHR-(IA)^3: per-skill scaling vectors `[h, S, width/h]`, mixed per head with the
/// routing weights. Dropped from mttl's camera-ready code and absent from peft.
#[derive(Module, Debug)]
pub struct RoutedIa3<B: Backend> {
    pub poly_ia3_l: Param<Tensor<B, 3>>,
    pub router: SiteRouter<B>,
    pub feedforward: bool,
}

impl<B: Backend> RoutedIa3<B> {
    pub fn new(config: &RoutedIa3Config, width: usize, device: &B::Device) -> Self {
        let (h, s) = (config.n_heads, config.n_skills);
        let vectors = Tensor::ones([h, s, width / h], device);
        let router = PolyRouter::new(config.n_tasks, h, s, config.routing.clone(), device);
        Self {
            poly_ia3_l: Param::from_tensor(vectors),
            router: SiteRouter::Own(router),
            feedforward: config.feedforward,
        }
    }

    /// Per-example scaling vectors `[b, 1, width]` for a batch of `b` rows.
    pub fn scaling(&self, batch: usize, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        let weights =
            ctx.router(&self.router)
                .drawn_mixing_weights(ctx.ids_for_batch(batch), ctx.mode(), ctx.draws());
        self.mix(weights)
    }

    /// Mixed vectors `[b, 1, width]` for weights `[b, h, S]`.
    pub fn mix(&self, weights: Tensor<B, 3>) -> Tensor<B, 3> {
        let [h, _, w_h] = self.poly_ia3_l.dims();
        let b = weights.dims()[0];
        weights
            .swap_dims(0, 1)
            .matmul(self.poly_ia3_l.val())
            .swap_dims(0, 1)
            .reshape([b, 1, h * w_h])
    }
}
