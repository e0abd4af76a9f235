use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::sigmoid;

use crate::config::{Normalization, RoutingConfig};
use crate::draws::{Draws, random};
use crate::error::CoreError;

/// Added to the per-head sum, as in peft and mttl.
const NORM_EPS: f64 = 1e-12;
/// Bound of the uniform initialisation of routing logits (σ(Z) ≈ 0.5: routing starts near uniform).
const LOGIT_INIT_BOUND: f64 = 1e-3;

/// Whether routing weights are sampled (training) or deterministic (evaluation).
///
/// Kept explicit rather than inferred from the backend, so that gradients can be taken through the
/// deterministic path (the fixtures do) and sampling can be switched off in training (mttl's T0 runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// `σ(Z)`, no noise.
    Deterministic,
    /// A relaxed-Bernoulli sample when the router's config enables it, else `σ(Z)`.
    Sampled,
}

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

    /// Mixing weights `[batch, h, S]` for each example's task, their noise (if any) from the backend's
    /// generator.
    pub fn mixing_weights(&self, task_ids: Tensor<B, 1, Int>, mode: RoutingMode) -> Tensor<B, 3> {
        self.drawn_mixing_weights(task_ids, mode, None)
    }

    /// [`Self::mixing_weights`] with the noise from a forward's [`Draws`] (a training step's).
    pub fn drawn_mixing_weights(
        &self,
        task_ids: Tensor<B, 1, Int>,
        mode: RoutingMode,
        draws: Option<&Draws>,
    ) -> Tensor<B, 3> {
        let sampled = mode == RoutingMode::Sampled;
        let shape = [task_ids.dims()[0], self.n_heads, self.n_skills];
        let device = task_ids.device();
        let dtype = self.module_logits.val().dtype();
        let noise = (sampled && self.config.relaxed_bernoulli)
            .then(|| random(draws, shape, Distribution::Default, &device, dtype));
        let keep = (sampled && self.config.logits_dropout > 0.0).then(|| {
            random(
                draws,
                shape,
                Distribution::Bernoulli(1.0 - self.config.logits_dropout),
                &device,
                dtype,
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

    /// Routing row `task` set to `row` (`h·S` logits, e.g. a task adapted elsewhere); `task == n_tasks` appends it.
    pub fn with_task_row(self, task: usize, row: &[f32]) -> Result<Self, CoreError> {
        let [n_tasks, width] = self.module_logits.dims();
        if row.len() != width || task > n_tasks {
            return Err(CoreError::Config(format!(
                "routing row {task} of {} logits for a router of {n_tasks} tasks × {width} logits",
                row.len()
            )));
        }
        let device = self.module_logits.device();
        let row = Tensor::<B, 2>::from_data(TensorData::new(row.to_vec(), [1, width]), &device);
        let logits = self.module_logits.val();
        let logits = if task == n_tasks {
            Tensor::cat(vec![logits, row], 0)
        } else {
            logits.slice_assign([task..task + 1, 0..width], row)
        };
        // A new leaf, as in `add_tasks`.
        let logits = Tensor::from_data(logits.into_data(), &device);
        Ok(Self::from_logits(
            logits,
            self.n_heads,
            self.n_skills,
            self.config,
        ))
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::ndarray::NdArrayDevice;
    use burn::backend::{Autodiff, NdArray};

    use super::*;

    type B = NdArray;
    const DEV: NdArrayDevice = NdArrayDevice::Cpu;

    fn f32s<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn assert_abs_close(actual: &[f32], expected: &[f32], atol: f32, what: &str) {
        assert_eq!(actual.len(), expected.len(), "{what}: length");
        let d = actual
            .iter()
            .zip(expected)
            .map(|(a, e)| (a - e).abs())
            .fold(0.0, f32::max);
        assert!(d <= atol, "{what}: max abs diff {d:e} > {atol:e}");
    }

    #[test]
    fn relaxed_bernoulli_matches_its_analytical_statistics() {
        let logits = [-2.0f32, -0.5, 0.0, 1.5];
        let config = RoutingConfig {
            normalization: Normalization::SqrtCorrection,
            ..RoutingConfig::default()
        };
        let router = PolyRouter::<B>::from_logits(Tensor::from_data([logits], &DEV), 1, 4, config);
        // With h = 1 and the sqrt correction w = z·√(1/4) = z/2, so z is observed directly.
        let n = 20_000;
        let ids = Tensor::<B, 1, Int>::zeros([n], &DEV);
        <B as burn::tensor::backend::Backend>::seed(&DEV, 7);
        let z: Vec<f32> = f32s(router.mixing_weights(ids, RoutingMode::Sampled) * 2.0);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        for (k, &l) in logits.iter().enumerate() {
            let samples: Vec<f64> = (0..n).map(|i| z[i * 4 + k] as f64).collect();
            let mean = samples.iter().sum::<f64>() / n as f64;
            let above = samples.iter().filter(|&&v| v > 0.5).count() as f64 / n as f64;
            // E[σ(Z + L)], L ~ Logistic(0, 1), by the midpoint rule on [-40, 40].
            let steps = 400_000;
            let dx = 80.0 / steps as f64;
            let expected_mean: f64 = (0..steps)
                .map(|i| {
                    let t = -40.0 + (i as f64 + 0.5) * dx;
                    sigmoid(l as f64 + t) * sigmoid(t) * (1.0 - sigmoid(t)) * dx
                })
                .sum();
            // Standard error of a mean of values in (0, 1) with n = 20k is below 0.0036; allow 4 σ.
            assert!(
                (mean - expected_mean).abs() < 0.015,
                "logit {l}: mean {mean} vs {expected_mean}"
            );
            assert!(
                (above - sigmoid(l as f64)).abs() < 0.015,
                "logit {l}: P(z>½) {above} vs {}",
                sigmoid(l as f64)
            );
        }
    }

    #[test]
    fn injected_noise_gives_the_binary_concrete_formula() {
        let config = RoutingConfig {
            temperature: 0.5,
            ..RoutingConfig::default()
        };
        let router = PolyRouter::<B>::from_logits(Tensor::from_data([[0.3f32, -1.2]], &DEV), 1, 2, config);
        let u = [0.25f32, 0.9];
        let w = f32s(
            router.mixing_weights_with_noise(Tensor::from_data([0i64], &DEV), Tensor::from_data([[u]], &DEV)),
        );
        let z: Vec<f64> = [0.3f64, -1.2]
            .iter()
            .zip(u)
            .map(|(l, u)| 1.0 / (1.0 + (-(l + (u as f64).ln() - (1.0 - u as f64).ln()) / 0.5).exp()))
            .collect();
        let total = z[0] + z[1];
        assert_abs_close(
            &w,
            &[(z[0] / total) as f32, (z[1] / total) as f32],
            1e-6,
            "noised weights",
        );
    }

    #[test]
    fn sampled_routing_passes_gradients_to_the_logits() {
        type A = Autodiff<NdArray>;
        let router = PolyRouter::<A>::from_logits(
            Tensor::from_data([[0.1f32, -0.2, 0.3], [0.5, 0.0, -0.4]], &DEV),
            1,
            3,
            RoutingConfig::default(),
        );
        let w = router.mixing_weights(Tensor::from_data([0i64, 1, 1], &DEV), RoutingMode::Sampled);
        let loss = (w * Tensor::<A, 3>::from_data([[[1.0f32, 2.0, 3.0]]], &DEV)).sum();
        let grads = loss.backward();
        let g = router.module_logits.grad(&grads).expect("logits get a gradient");
        let g: Vec<f32> = g.into_data().to_vec().unwrap();
        assert!(
            g.iter().all(|v| v.is_finite()) && g.iter().any(|v| v.abs() > 1e-6),
            "{g:?}"
        );
    }

    #[test]
    fn logits_dropout_zeroes_skills_before_normalising() {
        let logits = [0.4f32, -1.0, 2.0, 0.0];
        let config = RoutingConfig {
            relaxed_bernoulli: false,
            logits_dropout: 0.25,
            ..RoutingConfig::default()
        };
        let router = PolyRouter::<B>::from_logits(Tensor::from_data([logits], &DEV), 1, 4, config);
        let keep = [1.0f32, 0.0, 1.0, 1.0];
        let w = f32s(router.mixing_weights_with_dropout(
            Tensor::from_data([0i64], &DEV),
            None,
            Tensor::from_data([[keep]], &DEV),
        ));
        let z: Vec<f64> = logits
            .iter()
            .zip(keep)
            .map(|(&l, k)| k as f64 / (1.0 + (-l as f64).exp()))
            .collect();
        let total: f64 = z.iter().sum();
        let expected: Vec<f32> = z.iter().map(|v| (v / total) as f32).collect();
        assert_abs_close(&w, &expected, 1e-6, "dropped-out weights");
        assert_eq!(w[1], 0.0);

        // Sampled mode drops each weight with probability p; evaluation never drops.
        let n = 4_000;
        let ids = Tensor::<B, 1, Int>::zeros([n], &DEV);
        <B as burn::tensor::backend::Backend>::seed(&DEV, 11);
        let sampled = f32s(router.mixing_weights(ids.clone(), RoutingMode::Sampled));
        let dropped = sampled.iter().filter(|&&v| v == 0.0).count() as f64 / sampled.len() as f64;
        // Standard error of a proportion near 0.25 over 16k cells is 0.0034; allow 4 σ.
        assert!((dropped - 0.25).abs() < 0.014, "dropped fraction {dropped}");
        let eval = f32s(router.mixing_weights(ids, RoutingMode::Deterministic));
        assert!(eval.iter().all(|&v| v > 0.0));
    }

    #[test]
    fn unknown_tasks_fall_back_to_the_uniform_average() {
        let config = RoutingConfig {
            unknown_task_fallback: true,
            ..RoutingConfig::default()
        };
        let router =
            PolyRouter::<B>::from_logits(Tensor::from_data([[3.0f32, -3.0, 1.0]], &DEV), 1, 3, config);
        let w =
            f32s(router.mixing_weights(Tensor::from_data([0i64, 1, 5], &DEV), RoutingMode::Deterministic));
        assert!((w[0] - w[1]).abs() > 0.1, "known task is not uniform");
        for row in [1, 2] {
            assert_abs_close(
                &w[row * 3..row * 3 + 3],
                &[1.0 / 3.0; 3],
                1e-6,
                "unknown task row",
            );
        }
    }

    #[test]
    fn a_task_row_replaces_or_appends_one_row() {
        let router = PolyRouter::<B>::from_logits(
            Tensor::from_data([[1.0f32, 2.0], [3.0, 4.0]], &DEV),
            1,
            2,
            RoutingConfig::default(),
        );
        let replaced = router.clone().with_task_row(0, &[5.0, 6.0]).unwrap();
        assert_eq!(f32s(replaced.module_logits.val()), [5.0, 6.0, 3.0, 4.0]);
        let appended = replaced.with_task_row(2, &[7.0, 8.0]).unwrap();
        assert_eq!(appended.n_tasks(), 3);
        assert_eq!(f32s(appended.module_logits.val()), [5.0, 6.0, 3.0, 4.0, 7.0, 8.0]);
        assert!(router.clone().with_task_row(3, &[0.0, 0.0]).is_err(), "a gap");
        assert!(router.with_task_row(0, &[0.0]).is_err(), "a short row");
    }
}
