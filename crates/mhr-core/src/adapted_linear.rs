use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;

use crate::config::AdapterConfig;
use crate::dtype::to_dtype;
use crate::error::CoreError;
use crate::ia3::{Ia3, RoutedIa3};
use crate::lora::Lora;
use crate::routed::RoutedLora;
use crate::router::RoutingMode;
use crate::routing::RoutingContext;
use crate::sharing::{SharedRouters, SiteRouter};

/// The adapter kinds an [`AdaptedLinear`] can carry.
#[derive(Module, Debug)]
pub enum Adapter<B: Backend> {
    Lora(Lora<B>),
    Ia3(Ia3<B>),
    RoutedLora(RoutedLora<B>),
    RoutedIa3(RoutedIa3<B>),
}

impl<B: Backend> Adapter<B> {
    /// A freshly initialised adapter for a `d_in → d_out` layer; the config is validated against the widths.
    pub fn new(
        config: &AdapterConfig,
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Result<Self, CoreError> {
        config.validate(d_in, d_out)?;
        Ok(match config {
            AdapterConfig::Lora(c) => Adapter::Lora(Lora::new(c, d_in, d_out, device)),
            AdapterConfig::Ia3(c) => Adapter::Ia3(Ia3::new(
                if c.feedforward { d_in } else { d_out },
                c.feedforward,
                device,
            )),
            AdapterConfig::RoutedLora(c) => Adapter::RoutedLora(RoutedLora::new(c, d_in, d_out, device)),
            AdapterConfig::RoutedIa3(c) => Adapter::RoutedIa3(RoutedIa3::new(
                c,
                if c.feedforward { d_in } else { d_out },
                device,
            )),
        })
    }
}

impl<B: Backend> Adapter<B> {
    /// The dtype of the adapter's weights, in which it computes.
    pub fn dtype(&self) -> DType {
        match self {
            Adapter::Lora(lora) => lora.lora_a.val().dtype(),
            Adapter::Ia3(ia3) => ia3.ia3_l.val().dtype(),
            Adapter::RoutedLora(routed) => routed.poly_lora_a.val().dtype(),
            Adapter::RoutedIa3(routed) => routed.poly_ia3_l.val().dtype(),
        }
    }

    /// Where a routed adapter's router is; `None` for unrouted ones.
    pub fn router(&self) -> Option<&SiteRouter<B>> {
        match self {
            Adapter::RoutedLora(r) => Some(&r.router),
            Adapter::RoutedIa3(r) => Some(&r.router),
            Adapter::Lora(_) | Adapter::Ia3(_) => None,
        }
    }

    pub fn router_mut(&mut self) -> Option<&mut SiteRouter<B>> {
        match self {
            Adapter::RoutedLora(r) => Some(&mut r.router),
            Adapter::RoutedIa3(r) => Some(&mut r.router),
            Adapter::Lora(_) | Adapter::Ia3(_) => None,
        }
    }

    /// A copy that owns its router: a router shared by its group becomes a per-layer copy of it (peft's
    /// layout, for export); the outputs are unchanged.
    pub fn per_layer_copy(&self, shared: &SharedRouters<B>) -> Result<Self, CoreError> {
        let mut copy = self.clone();
        if let Some(slot) = copy.router_mut() {
            *slot = SiteRouter::Own(shared.per_layer_router(slot)?);
        }
        Ok(copy)
    }
}

/// What has been folded into the base weight by [`AdaptedLinear::merge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// A task-independent adapter (LoRA, (IA)^3).
    Shared,
    /// A routed adapter, for this task only.
    Task(usize),
}

/// A frozen linear layer `y = x W (+ b)` with `W: [d_in, d_out]` plus an optional adapter.
///
/// Mixed batches of several tasks are the normal case: each example is routed by its own task id.
#[derive(Module, Debug)]
pub struct AdaptedLinear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub adapter: Option<Adapter<B>>,
    #[module(skip)]
    merged: Option<Merged>,
}

impl<B: Backend> AdaptedLinear<B> {
    /// A frozen base layer from `W: [d_in, d_out]`; train it by unfreezing (see [`crate::TrainableSet`]).
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        let frozen = |p: Param<Tensor<B, 2>>| p.set_require_grad(false);
        Self {
            weight: frozen(Param::from_tensor(weight)),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapter: None,
            merged: None,
        }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Attaches a fresh adapter of the given kind, replacing any other.
    pub fn with_adapter(self, config: &AdapterConfig) -> Result<Self, CoreError> {
        let adapter = Adapter::new(config, self.d_in(), self.d_out(), &self.weight.device())?;
        Ok(self.set_adapter(Some(adapter)))
    }

    /// Moves the site's own router into its group of `shared` when its routing config names a shared
    /// granularity (see [`SharedRouters::join`]); other sites are returned unchanged.
    pub fn share_router(mut self, path: &str, shared: &mut SharedRouters<B>) -> Result<Self, CoreError> {
        let Some(SiteRouter::Own(router)) = self.adapter.as_ref().and_then(Adapter::router) else {
            return Ok(self);
        };
        if !router.config.granularity.is_shared() {
            return Ok(self);
        }
        let group = shared.join(path, router)?;
        if let Some(slot) = self.adapter.as_mut().and_then(Adapter::router_mut) {
            *slot = SiteRouter::Shared(group);
        }
        Ok(self)
    }

    pub fn set_adapter(mut self, adapter: Option<Adapter<B>>) -> Self {
        self.adapter = adapter;
        self.merged = None;
        self
    }

    pub fn merged(&self) -> Option<Merged> {
        self.merged
    }

    fn base(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, d_in] = x.dims();
        let y = x.reshape([b * n, d_in]).matmul(self.weight.val());
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze_dim(0),
            None => y,
        };
        y.reshape([b, n, self.d_out()])
    }

    /// `x: [batch, n, d_in] → [batch, n, d_out]`, in `x`'s dtype.
    ///
    /// The adapter computes in its own dtype: on a bf16 base an f32 adapter sees `x` cast to f32, and its
    /// result is cast back after the sum (peft's `result = (result + lora(x.to(A.dtype))).to(result_dtype)`).
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &RoutingContext<B>) -> Tensor<B, 3> {
        let adapter = match (&self.adapter, self.merged) {
            (Some(adapter), None) => adapter,
            _ => return self.base(x),
        };
        let (outer, inner) = (x.dtype(), adapter.dtype());
        let within = |y: Tensor<B, 3>| to_dtype(y, inner);
        let y = match adapter {
            Adapter::Lora(lora) => {
                let [b, n, d_in] = x.dims();
                let delta =
                    lora.delta(within(x.clone()).reshape([b * n, d_in]))
                        .reshape([b, n, self.d_out()]);
                within(self.base(x)) + delta
            }
            Adapter::Ia3(ia3) => {
                let l = ia3.ia3_l.val().unsqueeze::<3>();
                if ia3.feedforward {
                    self.base(to_dtype(within(x) * l, outer))
                } else {
                    within(self.base(x)) * l
                }
            }
            Adapter::RoutedLora(routed) => within(self.base(x.clone())) + routed.delta(within(x), ctx),
            Adapter::RoutedIa3(routed) => {
                let l = routed.scaling(x.dims()[0], ctx);
                if routed.feedforward {
                    self.base(to_dtype(within(x) * l, outer))
                } else {
                    within(self.base(x)) * l
                }
            }
        };
        to_dtype(y, outer)
    }

    /// The base weight with the adapter folded in, for `task` when the adapter is routed.
    fn folded_weight(
        &self,
        adapter: &Adapter<B>,
        task: Option<usize>,
        sign: f64,
    ) -> Result<Tensor<B, 2>, CoreError> {
        let w = self.weight.val();
        // The update in the weight's dtype (peft's `delta_weight.to(weight.dtype)` on a bf16 base).
        let dtype = w.dtype();
        let (d_in, d_out) = (self.d_in(), self.d_out());
        let own_router = |router: &'_ SiteRouter<B>| {
            router.own().cloned().ok_or_else(|| {
                CoreError::Config(
                    "cannot merge a site whose router is shared by its group: merge a per-layer copy \
                     (Adapter::per_layer_copy)"
                        .into(),
                )
            })
        };
        let task_of = |routed_tasks: usize| match task {
            Some(t) if t < routed_tasks => Ok(t),
            Some(t) => Err(CoreError::Config(format!(
                "cannot merge task {t}: the router has {routed_tasks} tasks"
            ))),
            None => Err(CoreError::Config(
                "merging a routed adapter needs a task id".into(),
            )),
        };
        let scale_rows_or_cols = |l: Tensor<B, 1>, feedforward: bool| {
            let l = to_dtype(if sign < 0.0 { l.recip() } else { l }, dtype);
            if feedforward {
                w.clone() * l.reshape([d_in, 1])
            } else {
                w.clone() * l.reshape([1, d_out])
            }
        };
        Ok(match adapter {
            Adapter::Lora(lora) => w.clone() + to_dtype(lora.dense_update() * sign, dtype),
            Adapter::RoutedLora(routed) => {
                let router = own_router(&routed.router)?;
                let t = task_of(router.n_tasks())?;
                w.clone() + to_dtype(routed.dense_update(&router, t) * sign, dtype)
            }
            Adapter::Ia3(ia3) => scale_rows_or_cols(ia3.ia3_l.val(), ia3.feedforward),
            Adapter::RoutedIa3(routed) => {
                let router = own_router(&routed.router)?;
                let t = task_of(router.n_tasks())?;
                let device = w.device();
                let ids = Tensor::<B, 1, Int>::from_data([t as i64], &device);
                let weights = router.mixing_weights(ids, RoutingMode::Deterministic);
                let width = if routed.feedforward { d_in } else { d_out };
                scale_rows_or_cols(routed.mix(weights).reshape([width]), routed.feedforward)
            }
        })
    }

    /// Folds the adapter into the base weight (for `task`, when routed) so inference costs one matmul.
    /// The merged layer serves that task only; [`Self::unmerge`] restores the original weight.
    pub fn merge(mut self, task: Option<usize>) -> Result<Self, CoreError> {
        if self.merged.is_some() {
            return Err(CoreError::Config("the adapter is already merged".into()));
        }
        let Some(adapter) = &self.adapter else {
            return Err(CoreError::Config("no adapter to merge".into()));
        };
        let w = self.folded_weight(adapter, task, 1.0)?;
        let merged = match (adapter, task) {
            (Adapter::RoutedLora(_) | Adapter::RoutedIa3(_), Some(t)) => Merged::Task(t),
            _ => Merged::Shared,
        };
        self.weight = Param::from_tensor(w.detach()).set_require_grad(false);
        self.merged = Some(merged);
        Ok(self)
    }

    /// Undoes [`Self::merge`] (up to float rounding).
    pub fn unmerge(mut self) -> Result<Self, CoreError> {
        let (Some(adapter), Some(merged)) = (&self.adapter, self.merged) else {
            return Err(CoreError::Config("the adapter is not merged".into()));
        };
        let task = match merged {
            Merged::Shared => None,
            Merged::Task(t) => Some(t),
        };
        let w = self.folded_weight(adapter, task, -1.0)?;
        self.weight = Param::from_tensor(w.detach()).set_require_grad(false);
        self.merged = None;
        Ok(self)
    }
}
