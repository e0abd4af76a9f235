//! AdamW with two learning rates (adapters, routing logits) and PyTorch-style global-norm clipping.
//!
//! Burn 0.21 has no parameter groups and clips per tensor, so the routing gradients are split off into a
//! second optimizer, and clipping scales every gradient by one factor from their joint norm, as
//! `torch.nn.utils.clip_grad_norm_` does (mttl clips at 1.0 for T0 and 0.1 for SNI).

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Record;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Optimiser settings of one training stage; a missing field takes its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate of the adapters (and of the base weights under full fine-tuning).
    pub lr: f64,
    /// Peak learning rate of the routing logits (the paper's "two-speed" learning rate).
    pub routing_lr: f64,
    pub weight_decay: f64,
    /// mttl never sets decay on its logits group, so under AdamW it gets torch's default 0.01.
    pub routing_weight_decay: f64,
    /// Global gradient-norm clipping threshold; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub epsilon: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            routing_lr: 0.1,
            weight_decay: 0.01,
            routing_weight_decay: 0.01,
            max_grad_norm: 0.1,
            epsilon: 1e-8,
        }
    }
}

/// The ids of parameters whose field is `module_logits`.
struct RoutingIds {
    path: Vec<String>,
    ids: HashSet<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for RoutingIds {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.path.last().is_some_and(|f| f == "module_logits") {
            self.ids.insert(param.id);
        }
    }
}

/// Sum of squared gradient entries over a module's parameters.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += g.powf_scalar(2.0).sum().into_scalar().elem::<f64>();
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
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, total: 0.0 };
    module.visit(&mut v);
    v.total.sqrt()
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

/// AdamW for everything but the routing logits, and a second AdamW for the logits at their own rate.
pub struct TwoSpeedAdamW<B: AutodiffBackend, M: AutodiffModule<B>> {
    main: OptimizerAdaptor<AdamW, M, B>,
    routing: OptimizerAdaptor<AdamW, M, B>,
    routing_ids: HashSet<ParamId>,
    config: OptimConfig,
}

/// Both optimisers' state, for checkpoints.
#[derive(Record)]
pub struct TwoSpeedRecord<B: AutodiffBackend, M: AutodiffModule<B>> {
    pub main: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
    pub routing: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TwoSpeedAdamW<B, M> {
    pub fn new(config: OptimConfig, module: &M) -> Self {
        let adamw = |wd: f64| {
            AdamWConfig::new()
                .with_epsilon(config.epsilon as f32)
                .with_weight_decay(wd as f32)
                .init::<B, M>()
        };
        let mut ids = RoutingIds {
            path: Vec::new(),
            ids: HashSet::new(),
        };
        module.visit(&mut ids);
        Self {
            main: adamw(config.weight_decay),
            routing: adamw(config.routing_weight_decay),
            routing_ids: ids.ids,
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

    pub fn to_record(&self) -> TwoSpeedRecord<B, M> {
        TwoSpeedRecord {
            main: self.main.to_record(),
            routing: self.routing.to_record(),
        }
    }

    pub fn load_record(mut self, record: TwoSpeedRecord<B, M>) -> Self {
        self.main = self.main.load_record(record.main);
        self.routing = self.routing.load_record(record.routing);
        self
    }
}
