//! AdamW or Adafactor with two learning rates (adapters, routing logits) and PyTorch-style global-norm
//! clipping.
//!
//! Burn 0.21 has no parameter groups and clips per tensor, so the routing gradients are split off into a
//! second optimizer, and clipping scales every gradient by one factor from their joint norm, as
//! `torch.nn.utils.clip_grad_norm_` does (mttl clips at 1.0 for T0 and 0.1 for SNI).

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, SimpleOptimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::ParamGroup;
use serde::{Deserialize, Serialize};

use crate::adafactor::Adafactor;

/// Which update rule a stage uses (PAPER.md §2.4: AdamW for SNI, Adafactor for T0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    AdamW,
    Adafactor,
}

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Adafactor => "adafactor",
        }
    }
}

/// Optimiser settings of one training stage; a missing field takes its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Peak learning rate of the adapters (and of the base weights under full fine-tuning).
    pub lr: f64,
    /// Peak learning rate of the routing logits (the paper's "two-speed" learning rate).
    pub routing_lr: f64,
    pub weight_decay: f64,
    /// mttl never sets decay on its logits group, so under AdamW it gets torch's default 0.01.
    pub routing_weight_decay: f64,
    /// Global gradient-norm clipping threshold; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// AdamW's ε (Adafactor uses HF's fixed (1e−30, 1e−3)).
    pub epsilon: f64,
    /// Adafactor only: scale the learning rate by each parameter's RMS. HF defaults to true, the paper's
    /// Poly/MHR T0 configs set false (LoRA keeps true), so a config must say which.
    #[serde(default)]
    pub scale_parameter: bool,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            optimizer: OptimizerKind::AdamW,
            lr: 1e-3,
            routing_lr: 0.1,
            weight_decay: 0.01,
            routing_weight_decay: 0.01,
            max_grad_norm: 0.1,
            epsilon: 1e-8,
            scale_parameter: false,
        }
    }
}

/// Each parameter's sum of squared gradient entries, kept on the device.
struct SquaredSums<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredSums<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sums.push(g.powf_scalar(2.0).sum());
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// The global L2 norm of all gradients of `module`.
///
/// The per-parameter sums are read back in one transfer (a GPU synchronises once per step, not once per
/// parameter) and added in f64 in parameter order.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredSums::<B> {
        grads,
        sums: Vec::new(),
    };
    module.visit(&mut v);
    if v.sums.is_empty() {
        return 0.0;
    }
    let sums = Tensor::cat(v.sums, 0).into_data();
    sums.iter::<f64>().sum::<f64>().sqrt()
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm(module, grads);
    if max_norm > 0.0 && norm > max_norm {
        // torch: clip_coef = max_norm / (total_norm + 1e-6)
        let mut s = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        module.visit(&mut s);
    }
    norm
}

/// One update rule for everything but the routing logits, and a second one for the logits at their own
/// rate and weight decay.
pub struct TwoSpeed<B: AutodiffBackend, M: AutodiffModule<B>, O: SimpleOptimizer<B::InnerBackend>> {
    main: OptimizerAdaptor<O, M, B>,
    routing: OptimizerAdaptor<O, M, B>,
    routing_ids: HashSet<ParamId>,
    config: OptimConfig,
}

pub type TwoSpeedAdamW<B, M> = TwoSpeed<B, M, AdamW>;
pub type TwoSpeedAdafactor<B, M> = TwoSpeed<B, M, Adafactor>;

/// Both optimisers' state, for checkpoints.
#[derive(Record)]
pub struct TwoSpeedRecord<B: AutodiffBackend, M: AutodiffModule<B>, O: SimpleOptimizer<B::InnerBackend>> {
    pub main: <OptimizerAdaptor<O, M, B> as Optimizer<M, B>>::Record,
    pub routing: <OptimizerAdaptor<O, M, B> as Optimizer<M, B>>::Record,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TwoSpeedAdamW<B, M> {
    /// AdamW with `config`'s ε and weight decays (its `optimizer` field is not consulted).
    pub fn new(config: OptimConfig, module: &M) -> Self {
        let adamw = |wd: f64| {
            AdamWConfig::new()
                .with_epsilon(config.epsilon as f32)
                .with_weight_decay(wd as f32)
                .build()
        };
        Self::from_rules(
            adamw(config.weight_decay),
            adamw(config.routing_weight_decay),
            config,
            module,
        )
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TwoSpeedAdafactor<B, M> {
    /// Adafactor with `config`'s `scale_parameter` and weight decays (its `optimizer` field is not consulted).
    pub fn new(config: OptimConfig, module: &M) -> Self {
        let adafactor = |weight_decay: f64| Adafactor {
            scale_parameter: config.scale_parameter,
            weight_decay,
        };
        Self::from_rules(
            adafactor(config.weight_decay),
            adafactor(config.routing_weight_decay),
            config,
            module,
        )
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>, O: SimpleOptimizer<B::InnerBackend>> TwoSpeed<B, M, O> {
    fn from_rules(main: O, routing: O, config: OptimConfig, module: &M) -> Self {
        let routing_ids = ParamGroup::of_params(module)
            .into_iter()
            .filter(|(_, group)| *group == ParamGroup::Routing)
            .map(|(id, _)| id)
            .collect();
        Self {
            main: OptimizerAdaptor::from(main),
            routing: OptimizerAdaptor::from(routing),
            routing_ids,
            config,
        }
    }

    /// One update with the learning rates scaled by `lr_factor` (the schedule); returns the module and the
    /// gradient norm before clipping.
    pub fn step(&mut self, lr_factor: f64, module: M, mut grads: GradientsParams) -> (M, f64) {
        let norm = clip_grad_norm(&module, &mut grads, self.config.max_grad_norm);
        let mut routing_grads = GradientsParams::new();
        for &id in &self.routing_ids {
            if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
                routing_grads.register(id, g);
            }
        }
        let module = self.main.step(self.config.lr * lr_factor, module, grads);
        let module = if routing_grads.is_empty() {
            module
        } else {
            self.routing
                .step(self.config.routing_lr * lr_factor, module, routing_grads)
        };
        (module, norm)
    }

    pub fn to_record(&self) -> TwoSpeedRecord<B, M, O> {
        TwoSpeedRecord {
            main: self.main.to_record(),
            routing: self.routing.to_record(),
        }
    }

    pub fn load_record(mut self, record: TwoSpeedRecord<B, M, O>) -> Self {
        self.main = self.main.load_record(record.main);
        self.routing = self.routing.load_record(record.routing);
        self
    }
}

/// The optimiser a run's [`OptimConfig::optimizer`] selects.
pub enum StageOptimizer<B: AutodiffBackend, M: AutodiffModule<B>> {
    AdamW(TwoSpeedAdamW<B, M>),
    Adafactor(TwoSpeedAdafactor<B, M>),
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> StageOptimizer<B, M> {
    pub fn new(config: OptimConfig, module: &M) -> Self {
        match config.optimizer {
            OptimizerKind::AdamW => Self::AdamW(TwoSpeedAdamW::new(config, module)),
            OptimizerKind::Adafactor => Self::Adafactor(TwoSpeedAdafactor::new(config, module)),
        }
    }

    /// See [`TwoSpeed::step`].
    pub fn step(&mut self, lr_factor: f64, module: M, grads: GradientsParams) -> (M, f64) {
        match self {
            Self::AdamW(o) => o.step(lr_factor, module, grads),
            Self::Adafactor(o) => o.step(lr_factor, module, grads),
        }
    }

    pub fn kind(&self) -> OptimizerKind {
        match self {
            Self::AdamW(_) => OptimizerKind::AdamW,
            Self::Adafactor(_) => OptimizerKind::Adafactor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;

    type A = Autodiff<NdArray>;

    /// One adapter weight and one routing-logit tensor, named as the routers name theirs.
    #[derive(Module, Debug)]
    struct Toy<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        module_logits: Param<Tensor<B, 2>>,
    }

    #[test]
    fn adafactor_gives_the_routing_logits_their_own_rate() {
        // 1×1 parameters, loss w − 3z: at step 1 Adafactor's v̂ = g², so U = sign(g) (RMS 1, unclipped) and
        // each parameter moves by exactly its learning rate times the schedule factor, against its gradient.
        let dev = Default::default();
        let toy = Toy::<A> {
            weight: Param::from_tensor(Tensor::from_floats([[1.0]], &dev)),
            module_logits: Param::from_tensor(Tensor::from_floats([[2.0]], &dev)),
        };
        let config = OptimConfig {
            optimizer: OptimizerKind::Adafactor,
            lr: 0.01,
            routing_lr: 0.1,
            weight_decay: 0.0,
            routing_weight_decay: 0.0,
            max_grad_norm: 0.0,
            ..OptimConfig::default()
        };
        let mut optim = StageOptimizer::new(config, &toy);
        assert_eq!(optim.kind(), OptimizerKind::Adafactor);
        let loss = toy.weight.val().sum() - toy.module_logits.val().sum() * 3.0;
        let grads = GradientsParams::from_grads(loss.backward(), &toy);
        let (toy, norm) = optim.step(0.5, toy, grads);
        assert!(
            (norm - 10f64.sqrt()).abs() < 1e-6,
            "global norm of (1, −3): {norm}"
        );
        let w: f32 = toy.weight.val().into_scalar();
        let z: f32 = toy.module_logits.val().into_scalar();
        assert!((w - (1.0 - 0.005)).abs() < 1e-7, "{w}");
        assert!((z - (2.0 + 0.05)).abs() < 1e-7, "{z}");
    }
}
