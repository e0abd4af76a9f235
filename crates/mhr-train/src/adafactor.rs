//! Adafactor (Shazeer & Stern 2018) as HuggingFace `transformers.optimization.Adafactor` runs it in the
//! paper's T0 stages (T-Few / mttl build it with `relative_step=False`, `warmup_init=False`, `beta1=None`
//! and an external linear schedule; PAPER.md §2.4). Burn 0.21 has no Adafactor.
//!
//! Per parameter `p` with gradient `g`, at its step `t` (1-based) and scheduled learning rate `lr`:
//! - `β₂ₜ = 1 − t^decay_rate` (decay_rate −0.8), `u = g² + ε₁` (ε₁ = 1e−30);
//! - ≥2-D parameters keep factored second moments over the last two dimensions:
//!   `R ← β₂ₜ·R + (1 − β₂ₜ)·mean_cols(u)`, `C ← β₂ₜ·C + (1 − β₂ₜ)·mean_rows(u)`, and
//!   `v̂ = (R / mean(R)) ⊗ C`; 1-D parameters keep the full `V ← β₂ₜ·V + (1 − β₂ₜ)·u` as `v̂`;
//! - `U = g / √v̂`, clipped to `U / max(1, RMS(U) / d)` (d = 1.0);
//! - `α = lr · max(ε₂, RMS(p))` with `scale_parameter` (ε₂ = 1e−3), else `α = lr`;
//! - `p ← p − α·wd·p − α·U`.
//!
//! Everything stays on the device: the RMS clamps are `[1]` tensors broadcast over the parameter, so a
//! step costs no host synchronisation.

use burn::optim::SimpleOptimizer;
use burn::prelude::*;
use burn::record::Record;

/// HF's defaults for the settings the paper's runs leave untouched.
pub const DECAY_RATE: f64 = -0.8;
pub const EPS_SQUARED_GRAD: f64 = 1e-30;
pub const EPS_PARAM_SCALE: f64 = 1e-3;
pub const CLIP_THRESHOLD: f64 = 1.0;

/// The Adafactor rule for one parameter group.
#[derive(Debug, Clone)]
pub struct Adafactor {
    /// Scale the learning rate by the parameter's RMS (HF default true; false in the Poly/MHR T0 configs).
    pub scale_parameter: bool,
    pub weight_decay: f64,
}

/// Second-moment state of one parameter.
#[derive(Record, Clone)]
pub struct AdafactorState<B: Backend, const D: usize> {
    /// Updates taken so far.
    pub step: usize,
    /// The full second moment of a 1-D parameter, or the row factor `[.., r, 1]` of a factored one.
    pub exp_avg_sq: Tensor<B, D>,
    /// The column factor `[.., 1, c]` of a factored (≥2-D) parameter.
    pub exp_avg_sq_col: Option<Tensor<B, D>>,
}

/// `β·previous + (1 − β)·new`, where a missing previous value counts as zeros (HF initialises with zeros).
fn ema<B: Backend, const D: usize>(
    previous: Option<Tensor<B, D>>,
    new: Tensor<B, D>,
    beta: f64,
) -> Tensor<B, D> {
    let new = new.mul_scalar(1.0 - beta);
    match previous {
        Some(p) => p.mul_scalar(beta) + new,
        None => new,
    }
}

/// Root mean square of all entries, as a `[1]` tensor.
fn rms<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    t.square().mean().sqrt()
}

impl<B: Backend> SimpleOptimizer<B> for Adafactor {
    type State<const D: usize> = AdafactorState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: f64,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let step = state.as_ref().map_or(0, |s| s.step) + 1;
        let beta2t = 1.0 - (step as f64).powf(DECAY_RATE);
        let squared = grad.clone().square().add_scalar(EPS_SQUARED_GRAD);
        let (row_prev, col_prev) = match state {
            Some(s) => (Some(s.exp_avg_sq), s.exp_avg_sq_col),
            None => (None, None),
        };
        let (update, exp_avg_sq, exp_avg_sq_col) = if D >= 2 {
            let row = ema(row_prev, squared.clone().mean_dim(D - 1), beta2t);
            let col = ema(col_prev, squared.mean_dim(D - 2), beta2t);
            let row_factor = (row.clone() / row.clone().mean_dim(D - 2)).sqrt().recip();
            let col_factor = col.clone().sqrt().recip();
            (row_factor * col_factor * grad, row, Some(col))
        } else {
            let full = ema(row_prev, squared, beta2t);
            (full.clone().sqrt().recip() * grad, full, None)
        };
        let clip = rms(update.clone()).div_scalar(CLIP_THRESHOLD).clamp_min(1.0);
        let update = update / clip.unsqueeze::<D>();
        // α = lr·max(ε₂, RMS(p)) with scale_parameter (a [1, …] tensor), else the scalar lr.
        let param_scale = self
            .scale_parameter
            .then(|| rms(tensor.clone()).clamp_min(EPS_PARAM_SCALE).unsqueeze::<D>());
        let times_alpha = |t: Tensor<B, D>| match &param_scale {
            Some(scale) => (t * scale.clone()).mul_scalar(lr),
            None => t.mul_scalar(lr),
        };
        let decayed = if self.weight_decay == 0.0 {
            tensor
        } else {
            tensor.clone() - times_alpha(tensor).mul_scalar(self.weight_decay)
        };
        let state = AdafactorState {
            step,
            exp_avg_sq,
            exp_avg_sq_col,
        };
        (decayed - times_alpha(update), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        AdafactorState {
            step: state.step,
            exp_avg_sq: state.exp_avg_sq.to_device(device),
            exp_avg_sq_col: state.exp_avg_sq_col.map(|c| c.to_device(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    /// HF's Adafactor for one `[r, c]` parameter, written out loop by loop in f64 from the formulas of
    /// `transformers.optimization.Adafactor.step` (relative_step off, beta1 None).
    struct Reference {
        p: Vec<Vec<f64>>,
        row: Vec<f64>,
        col: Vec<f64>,
        step: i32,
        scale_parameter: bool,
        weight_decay: f64,
    }

    impl Reference {
        // Index loops on purpose: they spell out the per-row / per-column formulas.
        #[allow(clippy::needless_range_loop)]
        fn step(&mut self, lr: f64, g: &[Vec<f64>]) {
            let (r, c) = (self.p.len(), self.p[0].len());
            self.step += 1;
            let beta2t = 1.0 - (self.step as f64).powf(-0.8);
            let rms =
                |m: &[Vec<f64>]| (m.iter().flatten().map(|x| x * x).sum::<f64>() / (r * c) as f64).sqrt();
            let lr = if self.scale_parameter {
                lr * rms(&self.p).max(1e-3)
            } else {
                lr
            };
            let u: Vec<Vec<f64>> = g
                .iter()
                .map(|row| row.iter().map(|x| x * x + 1e-30).collect())
                .collect();
            for i in 0..r {
                let mean = u[i].iter().sum::<f64>() / c as f64;
                self.row[i] = beta2t * self.row[i] + (1.0 - beta2t) * mean;
            }
            for j in 0..c {
                let mean = (0..r).map(|i| u[i][j]).sum::<f64>() / r as f64;
                self.col[j] = beta2t * self.col[j] + (1.0 - beta2t) * mean;
            }
            let row_mean = self.row.iter().sum::<f64>() / r as f64;
            let mut update: Vec<Vec<f64>> = (0..r)
                .map(|i| {
                    (0..c)
                        .map(|j| g[i][j] / ((self.row[i] / row_mean).sqrt() * self.col[j].sqrt()))
                        .collect()
                })
                .collect();
            let clip = (rms(&update) / 1.0).max(1.0);
            update.iter_mut().flatten().for_each(|x| *x /= clip);
            for i in 0..r {
                for j in 0..c {
                    let p = self.p[i][j];
                    self.p[i][j] = p - self.weight_decay * lr * p - lr * update[i][j];
                }
            }
        }
    }

    fn grads(step: usize) -> Vec<Vec<f64>> {
        (0..2)
            .map(|i| {
                (0..3)
                    .map(|j| ((i * 3 + j + step) as f64 * 0.7).sin() * 0.5)
                    .collect()
            })
            .collect()
    }

    fn tensor(m: &[Vec<f64>]) -> Tensor<NdArray, 2> {
        let flat: Vec<f32> = m.iter().flatten().map(|&x| x as f32).collect();
        Tensor::<NdArray, 1>::from_floats(flat.as_slice(), &Default::default()).reshape([m.len(), m[0].len()])
    }

    #[test]
    fn first_step_by_hand() {
        // 1-D parameter p = [1, -2], g = [0.3, -0.4], lr 0.01, no scaling. Step 1: β₂ₜ = 0, so
        // V = g² (+1e-30), U = g/|g| = [1, -1], RMS(U) = 1 (no clipping): p − 0.01·U = [0.99, -1.99].
        // With scale_parameter: α = 0.01·RMS(p) = 0.01·√2.5 = 0.0158114 → [0.984189, -1.984189].
        let dev = Default::default();
        let p = Tensor::<NdArray, 1>::from_floats([1.0, -2.0], &dev);
        let g = Tensor::<NdArray, 1>::from_floats([0.3, -0.4], &dev);
        for (scale, expected) in [(false, [0.99, -1.99]), (true, [0.984_189, -1.984_189])] {
            let rule = Adafactor {
                scale_parameter: scale,
                weight_decay: 0.0,
            };
            let (p, state) = SimpleOptimizer::<NdArray>::step(&rule, 0.01, p.clone(), g.clone(), None);
            let got: Vec<f32> = p.into_data().to_vec().unwrap();
            assert!(
                (got[0] - expected[0]).abs() < 1e-6 && (got[1] - expected[1]).abs() < 1e-6,
                "{got:?}"
            );
            assert_eq!(state.unwrap().step, 1);
        }
        // Factored 2×2, g = [[1, 0], [0, 2]]: u = g²; R = [0.5, 2], C = [0.5, 2], mean(R) = 1.25,
        // v̂ = (R/1.25) ⊗ C = [[0.2, 0.8], [0.8, 3.2]]; U = g/√v̂ = [[2.23607, 0], [0, 1.11803]],
        // RMS(U) = √((5 + 1.25)/4) = 1.25 → U/1.25 = [[1.78885, 0], [0, 0.894427]]; lr 0.1 from p = 0.
        let rule = Adafactor {
            scale_parameter: false,
            weight_decay: 0.0,
        };
        let g = Tensor::<NdArray, 2>::from_floats([[1.0, 0.0], [0.0, 2.0]], &dev);
        let (p, _) = SimpleOptimizer::<NdArray>::step(&rule, 0.1, Tensor::zeros([2, 2], &dev), g, None);
        let got: Vec<f32> = p.into_data().to_vec().unwrap();
        for (a, b) in got.iter().zip([-0.178_885, 0.0, 0.0, -0.089_442_7]) {
            assert!((a - b).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn matches_the_reference_over_several_steps() {
        for (scale_parameter, weight_decay) in [(false, 0.0), (true, 0.0), (true, 0.1)] {
            let p0 = vec![vec![0.5, -1.0, 0.25], vec![2.0, 0.0, -0.75]];
            let mut reference = Reference {
                p: p0.clone(),
                row: vec![0.0; 2],
                col: vec![0.0; 3],
                step: 0,
                scale_parameter,
                weight_decay,
            };
            let rule = Adafactor {
                scale_parameter,
                weight_decay,
            };
            let (mut p, mut state) = (tensor(&p0), None);
            for step in 0..5 {
                let lr = 0.03 * (step + 1) as f64;
                reference.step(lr, &grads(step));
                (p, state) = SimpleOptimizer::<NdArray>::step(&rule, lr, p, tensor(&grads(step)), state);
            }
            let got: Vec<f32> = p.into_data().to_vec().unwrap();
            for (a, b) in got.iter().zip(reference.p.iter().flatten()) {
                assert!(
                    (*a as f64 - b).abs() < 2e-6,
                    "scale {scale_parameter} wd {weight_decay}: {a} vs {b}"
                );
            }
            assert_eq!(state.unwrap().step, 5);
        }
    }
}
