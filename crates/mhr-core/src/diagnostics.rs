use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use serde::Serialize;

use crate::router::PolyRouter;

/// Polytropon's diagnostics of a routing matrix, on `p = σ(Z)` viewed as `[n_tasks·h, S]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoutingDiagnostics {
    /// `1 − mean binary entropy(p) / ln 2`: 0 when every `p = ½`, 1 when every `p ∈ {0, 1}`.
    pub discreteness: f64,
    /// Fraction of cells with `round(p) = 1` (skills switched on), as mttl logs it.
    pub sparsity: f64,
    /// Normalised entropy of the per-skill column sums of `p`: 1 when every skill is used equally.
    pub usage: f64,
}

impl RoutingDiagnostics {
    pub fn of<B: Backend>(router: &PolyRouter<B>) -> Self {
        let p: Vec<f64> = sigmoid(router.module_logits.val())
            .into_data()
            .convert::<f64>()
            .to_vec()
            .unwrap_or_default();
        Self::from_probabilities(&p, router.n_skills)
    }

    /// `p` row-major with `n_skills` columns.
    pub fn from_probabilities(p: &[f64], n_skills: usize) -> Self {
        let n = p.len().max(1) as f64;
        let h = |x: f64| {
            if x <= 0.0 || x >= 1.0 {
                0.0
            } else {
                -(x * x.ln() + (1.0 - x) * (1.0 - x).ln())
            }
        };
        let discreteness = 1.0 - p.iter().map(|&x| h(x)).sum::<f64>() / n / std::f64::consts::LN_2;
        let sparsity = p.iter().filter(|&&x| x >= 0.5).count() as f64 / n;
        let mut columns = vec![0.0; n_skills];
        for (i, &x) in p.iter().enumerate() {
            columns[i % n_skills] += x;
        }
        let total: f64 = columns.iter().sum();
        let usage = if n_skills < 2 || total <= 0.0 {
            1.0
        } else {
            let entropy: f64 = columns
                .iter()
                .map(|c| c / total)
                .filter(|&q| q > 0.0)
                .map(|q| -q * q.ln())
                .sum();
            entropy / (n_skills as f64).ln()
        };
        Self {
            discreteness,
            sparsity,
            usage,
        }
    }
}
