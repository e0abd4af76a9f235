//! Multi-Head Routing on a Burn model that is not T5: a two-layer MLP regressor with an `AdaptedLinear` per
//! layer. Four tasks share one inventory of LoRA skills per layer and each learns its routing; the adapters
//! are trained a few steps, saved as a peft folder and loaded back onto the base model.
//!
//! ```sh
//! cargo run -p mhr-core --example mhr_on_mlp [-- OUT_DIR]
//! ```
//!
//! It exits with an error unless training lowers the loss and the reloaded folder reproduces the trained
//! model's outputs; `tests/example.rs` runs it with the tests.

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::relu;
use mhr_core::peft::{PeftAdapter, TargetModules};
use mhr_core::{
    AdaptedLinear, AdapterConfig, AdapterHost, Method, RoutedLoraConfig, RoutingContext, RoutingMode,
    SharedRouters, Stage, TaskMap,
};

type Train = Autodiff<NdArray>;

const D_IN: usize = 16;
const HIDDEN: usize = 32;
const D_OUT: usize = 8;
const TASKS: usize = 4;
const EXAMPLES: usize = 256;
const STEPS: usize = 60;

/// The model: plain Burn, with adapter sites where adapters may go.
#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    fc1: AdaptedLinear<B>,
    fc2: AdaptedLinear<B>,
    /// Routers shared by groups of sites (empty with per-layer routing, as here).
    shared_routers: SharedRouters<B>,
}

impl<B: Backend> Mlp<B> {
    /// Frozen random base weights.
    fn new(device: &B::Device) -> Self {
        let layer = |d_in: usize, d_out: usize| {
            let std = (1.0 / d_in as f64).sqrt();
            AdaptedLinear::new(
                Tensor::random([d_in, d_out], Distribution::Normal(0.0, std), device),
                Some(Tensor::zeros([d_out], device)),
            )
        };
        Self {
            fc1: layer(D_IN, HIDDEN),
            fc2: layer(HIDDEN, D_OUT),
            shared_routers: SharedRouters::default(),
        }
    }

    /// # Shapes
    /// `x: [batch, D_IN]` → `[batch, D_OUT]`; `ctx` holds one task id per row.
    fn forward(&self, x: Tensor<B, 2>, ctx: &RoutingContext<B>) -> Tensor<B, 2> {
        let ctx = ctx.clone().with_shared_routers(&self.shared_routers);
        let hidden = relu(self.fc1.forward(x.unsqueeze_dim(1), &ctx));
        self.fc2.forward(hidden, &ctx).squeeze_dim(1)
    }
}

/// All an adapter host has to say: where its sites are, by name, and where its shared routers live.
impl<B: Backend> AdapterHost<B> for Mlp<B> {
    fn map_each_site<E>(
        self,
        mut f: impl FnMut(&str, AdaptedLinear<B>) -> Result<AdaptedLinear<B>, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            fc1: f("fc1", self.fc1)?,
            fc2: f("fc2", self.fc2)?,
            shared_routers: self.shared_routers,
        })
    }

    fn shared_routers(&self) -> &SharedRouters<B> {
        &self.shared_routers
    }

    fn with_shared_routers(self, shared_routers: SharedRouters<B>) -> Self {
        Self {
            shared_routers,
            ..self
        }
    }
}

/// Inputs, task ids and targets: each task maps inputs through its own random linear teacher.
fn task_data<B: Backend>(device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 1, Int>, Tensor<B, 2>) {
    let x = Tensor::<B, 2>::random([EXAMPLES, D_IN], Distribution::Normal(0.0, 1.0), device);
    let ids: Vec<i64> = (0..EXAMPLES).map(|i| (i % TASKS) as i64).collect();
    let task_ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [EXAMPLES]), device);
    let teachers = Tensor::<B, 3>::random([TASKS, D_IN, D_OUT], Distribution::Normal(0.0, 0.25), device);
    let y = x
        .clone()
        .unsqueeze_dim::<3>(1)
        .matmul(teachers.select(0, task_ids.clone()))
        .squeeze_dim(1);
    (x, task_ids, y)
}

fn mse<B: Backend>(
    model: &Mlp<B>,
    x: &Tensor<B, 2>,
    ids: &Tensor<B, 1, Int>,
    y: &Tensor<B, 2>,
    mode: RoutingMode,
) -> Tensor<B, 1> {
    let ctx = RoutingContext::new(ids.clone(), mode);
    (model.forward(x.clone(), &ctx) - y.clone())
        .powf_scalar(2.0)
        .mean()
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).map(PathBuf::from);
    let scratch = tempfile::tempdir()?;
    let out = out.unwrap_or_else(|| scratch.path().join("mhr-mlp-adapter"));
    let device = Default::default();
    Train::seed(&device, 0);
    let base = Mlp::<Train>::new(&device);
    let (x, ids, y) = task_data::<Train>(&device);

    // MHR: rank 2, 4 skills, 4 heads (they divide both widths of each layer), one routing row per task.
    let mhr = AdapterConfig::RoutedLora(RoutedLoraConfig::new(2, 4, 4, TASKS));
    let targets = TargetModules::Names(vec!["fc1".into(), "fc2".into()]);
    let model = base.clone().with_adapters(&targets, &mhr)?;
    let mut model = Method::Mhr.trainable(Stage::Pretrain).apply(model);

    let before: f32 = mse(&model, &x, &ids, &y, RoutingMode::Deterministic).into_scalar();
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    for _ in 0..STEPS {
        let loss = mse(&model, &x, &ids, &y, RoutingMode::Sampled);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    let after: f32 = mse(&model, &x, &ids, &y, RoutingMode::Deterministic).into_scalar();
    println!("mean squared error: {before:.4} before, {after:.4} after {STEPS} steps");
    if after >= 0.9 * before {
        return Err(format!("training did not lower the loss ({before} → {after})").into());
    }

    let mut adapter = PeftAdapter::from_adapters(&model.per_layer_adapters()?, None)?;
    adapter.tasks = Some(TaskMap::new((0..TASKS).map(|t| format!("task{t}")).collect())?);
    adapter.save(&out)?;
    println!("peft folder: {}", out.display());

    let reloaded = base.load_peft_adapter(&out)?;
    let ctx = RoutingContext::new(ids.clone(), RoutingMode::Deterministic);
    let diff: f32 = (model.forward(x.clone(), &ctx) - reloaded.forward(x, &ctx))
        .abs()
        .max()
        .into_scalar();
    println!("reloaded outputs differ by at most {diff:e}");
    if diff > 1e-5 {
        return Err(format!("the reloaded adapter's outputs differ by {diff}").into());
    }
    Ok(())
}
