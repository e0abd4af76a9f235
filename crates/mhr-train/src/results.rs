//! The rows of `results.json`, written by `mhr eval` and the presets alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::{MeanStd, mean_std};

/// One measurement: a method's score on one task, at one k and seed (DESIGN.md's CLI contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub method: String,
    pub task: String,
    pub k: usize,
    pub seed: u64,
    pub metric: String,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub preset: String,
    pub rows: Vec<ResultRow>,
    /// What a preset measures besides its rows (the synthetic preset: its base model and stage 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<serde_json::Value>,
}

impl Results {
    /// Mean over tasks per seed, then mean ± std over seeds, per (method, k).
    pub fn summary(&self) -> BTreeMap<(String, usize), MeanStd> {
        let mut per_seed: BTreeMap<(String, usize, u64), Vec<f64>> = BTreeMap::new();
        for r in &self.rows {
            per_seed
                .entry((r.method.clone(), r.k, r.seed))
                .or_default()
                .push(r.value);
        }
        let mut by_method: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
        for ((method, k, _), values) in per_seed {
            let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
            by_method.entry((method, k)).or_default().push(mean);
        }
        by_method
            .into_iter()
            .map(|(key, means)| (key, mean_std(&means)))
            .collect()
    }
}
