use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::sigmoid;

use crate::config::{Normalization, RoutingConfig};
use crate::routing::RoutingMode;

/// Added to the per-head sum, as in peft and mttl.
const NORM_EPS: f64 = 1e-12;
/// Bound of the uniform initialisation of routing logits (σ(Z) ≈ 0.5: routing starts near uniform).
const LOGIT_INIT_BOUND: f64 = 1e-3;

/// Per-layer task-to-skill routing: logits `Z: [n_tasks, h·S]`, one row per task.
#[derive(Module, Debug)]
pub struct PolyRouter<B: Backend> {
    pub module_logits: Param<Tensor<B, 2>>,
    pub n_heads: usize,
    pub n_skills: usize,
    #[module(skip)]
    pub config: RoutingConfig,
}

impl<B: Backend> PolyRouter<B> {
    pub fn new(
        n_tasks: usize,
        n_heads: usize,
        n_skills: usize,
        config: RoutingConfig,
        device: &B::Device,
    ) -> Self {
        let logits = Self::fresh_rows(n_tasks, n_heads * n_skills, device);
        Self::from_logits(logits, n_heads, n_skills, config)
    }

    pub fn from_logits(logits: Tensor<B, 2>, n_heads: usize, n_skills: usize, config: RoutingConfig) -> Self {
        Self {
            module_logits: Param::from_tensor(logits),
            n_heads,
            n_skills,
            config,
        }
    }

    fn fresh_rows(n: usize, width: usize, device: &B::Device) -> Tensor<B, 2> {
        Tensor::random(
            [n, width],
            Distribution::Uniform(-LOGIT_INIT_BOUND, LOGIT_INIT_BOUND),
            device,
        )
    }

    pub fn n_tasks(&self) -> usize {
        self.module_logits.dims()[0]
    }

    /// Mixing weights `[batch, h, S]` for each example's task.
    pub fn mixing_weights(&self, task_ids: Tensor<B, 1, Int>, mode: RoutingMode) -> Tensor<B, 3> {
        let sampled = mode == RoutingMode::Sampled;
        let shape = [task_ids.dims()[0], self.n_heads, self.n_skills];
        let device = task_ids.device();
        let noise = (sampled && self.config.relaxed_bernoulli)
            .then(|| Tensor::random(shape, Distribution::Default, &device));
        let keep = (sampled && self.config.logits_dropout > 0.0).then(|| {
            Tensor::random(
                shape,
                Distribution::Bernoulli(1.0 - self.config.logits_dropout),
                &device,
            )
        });
        self.weights_from(task_ids, noise, keep)
    }

    /// Training-mode weights from given uniform noise `u: [batch, h, S]` in (0, 1): the test hook that lets
    /// a relaxed-Bernoulli sample be compared exactly with another implementation fed the same `u`.
    pub fn mixing_weights_with_noise(
        &self,
        task_ids: Tensor<B, 1, Int>,
        uniform: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.weights_from(task_ids, Some(uniform), None)
    }

    /// Training-mode weights with a given dropout mask `keep: [batch, h, S]` of 0/1 (1 keeps the weight) on
    /// top of given uniform noise (or none: the sigmoid), the test hook for logits dropout.
    pub fn mixing_weights_with_dropout(
        &self,
        task_ids: Tensor<B, 1, Int>,
        uniform: Option<Tensor<B, 3>>,
        keep: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        self.weights_from(task_ids, uniform, Some(keep))
    }

    fn weights_from(
        &self,
        task_ids: Tensor<B, 1, Int>,
        uniform: Option<Tensor<B, 3>>,
        keep: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let b = task_ids.dims()[0];
        let (h, s) = (self.n_heads, self.n_skills);
        let n_tasks = self.n_tasks() as i64;
        let unknown = self
            .config
            .unknown_task_fallback
            .then(|| task_ids.clone().greater_equal_elem(n_tasks));
        let rows = match &unknown {
            Some(_) => task_ids.clamp_max(n_tasks - 1),
            None => task_ids,
        };
        let logits = self.module_logits.val().select(0, rows).reshape([b, h, s]);
        let mut z = match uniform {
            None => sigmoid(logits),
            Some(u) => {
                // Binary concrete: σ((Z + ln u − ln(1 − u)) / τ), u clamped away from 0 and 1 as torch does.
                let eps = f32::EPSILON as f64;
                let u = u.clamp(eps, 1.0 - eps);
                let noise = u.clone().log() - u.neg().log1p();
                sigmoid((logits + noise) / self.config.temperature)
            }
        };
        if self.config.straight_through {
            let soft = z.clone();
            z = soft.clone().detach().round() - soft.clone().detach() + soft;
        }
        if let Some(keep) = keep {
            // Inverted dropout as torch's: survivors scaled by 1 / (1 − p), which normalising then cancels.
            z = z * keep / (1.0 - self.config.logits_dropout);
        }
        if let Some(unknown) = unknown {
            // An unknown task sees every skill at σ(0) = ½, i.e. the uniform average after normalising.
            let mask = unknown.reshape([b, 1, 1]).expand([b, h, s]);
            z = z.mask_fill(mask, 0.5);
        }
        match self.config.normalization {
            Normalization::SumToOne => {
                let total = z.clone().sum_dim(2) + NORM_EPS;
                z / total
            }
            Normalization::SqrtCorrection => z * ((h as f64).sqrt() / (s as f64).sqrt()),
        }
    }

    /// Appends `n` fresh rows (U(±1e-3), i.e. near-uniform routing) for new tasks; existing rows are kept.
    pub fn add_tasks(self, n: usize) -> Self {
        let device = self.module_logits.device();
        let width = self.n_heads * self.n_skills;
        let logits = Tensor::cat(
            vec![self.module_logits.val(), Self::fresh_rows(n, width, &device)],
            0,
        );
        // A new leaf: autodiff backends refuse to make the output of an operation a parameter.
        let logits = Tensor::from_data(logits.into_data(), &device);
        Self::from_logits(logits, self.n_heads, self.n_skills, self.config)
    }

    /// mttl's `resize_module_logits(n)`: replaces all rows by `n` fresh ones (few-shot adaptation of a new task).
    pub fn reset_tasks(self, n: usize) -> Self {
        let device = self.module_logits.device();
        let logits = Self::fresh_rows(n, self.n_heads * self.n_skills, &device);
        Self::from_logits(logits, self.n_heads, self.n_skills, self.config)
    }
}
