//! The settings of one training stage.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::OptimConfig;
use crate::schedule::Schedule;

/// One stage's settings; a missing field takes its [`Default`] value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches accumulated into one optimiser step.
    pub grad_accumulation: usize,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// The loop's per-step draws (relaxed-Bernoulli routing noise). A stage run by [`crate::pipeline`] takes it
    /// from its [`crate::pipeline::StageSeeds`].
    pub seed: u64,
    /// 0: the model's mean token cross entropy; ε > 0: fairseq's label-smoothed NLL (SNI runs, ε = 0.1).
    /// Token objectives only: the T-Few objective has its own loss.
    pub label_smoothing: f64,
    /// Sample relaxed-Bernoulli routing (when the routers enable it) instead of σ(Z).
    pub sampled_routing: bool,
    /// T5's dropout during this stage, in place of the model's `config.json` `dropout_rate` (mttl trains with the
    /// checkpoint's, 0.1 for LM-adapt and T0); absent: the model's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropout_rate: Option<f64>,
    /// Keep only each T5 block's input between forward and backward and recompute the block in backward
    /// (`T5ForConditionalGeneration::checkpointed_gradients`): activation memory of one block instead of all,
    /// for about one more forward pass. Random draws (dropout, routing noise) then come per block from the
    /// step's seed, so a run with randomness differs from one without checkpointing, as deterministically.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint_activations: bool,
    pub log_every: usize,
    /// 0: a checkpoint only at the end (when the run has a directory).
    pub checkpoint_every: usize,
}

impl TrainConfig {
    /// Reads a stage's settings from a `.toml` or `.json` file; missing keys take their defaults, an unknown
    /// key is an error naming it, with the file.
    pub fn from_path(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let parsed = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| one_line_toml_error(&text, &e).into()),
            Some("json") => serde_json::from_str(&text).map_err(|e| e.into()),
            _ => Err("expected a .toml or .json training config".into()),
        };
        parsed.map_err(|source| TrainError::ConfigFile {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// serde_json's style (`message at line L column C`) for toml's multi-line, source-quoting report.
fn one_line_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} at line {line} column {column}")
        }
        None => message.to_string(),
    }
}

impl Default for TrainConfig {
    /// 1000 steps of 8 examples, the default optimiser and linear schedule, seed 13 (the paper's first SNI
    /// seed), plain cross entropy, sampled routing, a log line every 100 steps.
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 8,
            grad_accumulation: 1,
            optim: OptimConfig::default(),
            schedule: Schedule::default(),
            seed: 13,
            label_smoothing: 0.0,
            sampled_routing: true,
            dropout_rate: None,
            checkpoint_activations: false,
            log_every: 100,
            checkpoint_every: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimizerKind;

    const TOML: &str = r#"
steps = 1000
batch_size = 8
seed = 3
log_every = 50

[optim]
optimizer = "adafactor"
lr = 3e-3
routing_lr = 0.1
weight_decay = 0.0
routing_weight_decay = 0.0
max_grad_norm = 1.0
epsilon = 1e-8

[schedule]
kind = "linear"
warmup_fraction = 0.06
floor = 0.0
"#;

    /// The T0 few-shot stage of PAPER.md §2.4, as the TOML above spells it.
    fn t0_few_shot() -> TrainConfig {
        TrainConfig {
            steps: 1000,
            batch_size: 8,
            grad_accumulation: 1,
            optim: OptimConfig {
                optimizer: OptimizerKind::Adafactor,
                lr: 3e-3,
                routing_lr: 0.1,
                weight_decay: 0.0,
                routing_weight_decay: 0.0,
                max_grad_norm: 1.0,
                epsilon: 1e-8,
                scale_parameter: false,
            },
            schedule: Schedule::Linear {
                warmup_fraction: 0.06,
                floor: 0.0,
            },
            seed: 3,
            label_smoothing: 0.0,
            sampled_routing: true,
            dropout_rate: None,
            checkpoint_activations: false,
            log_every: 50,
            checkpoint_every: 0,
        }
    }

    fn load(dir: &Path, name: &str, text: &str) -> Result<TrainConfig, TrainError> {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TrainConfig::from_path(&path)
    }

    #[test]
    fn loads_toml_and_json_alike() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "t0.toml", TOML).unwrap(), t0_few_shot());
        let json = serde_json::to_string(&t0_few_shot()).unwrap();
        assert_eq!(load(dir.path(), "t0.json", &json).unwrap(), t0_few_shot());
        // AdamW is the default optimiser.
        let adamw = TOML.replace("optimizer = \"adafactor\"\n", "");
        assert_eq!(
            load(dir.path(), "sni.toml", &adamw).unwrap().optim.optimizer,
            OptimizerKind::AdamW
        );
    }

    #[test]
    fn unknown_keys_and_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("top.toml", TOML.replace("seed = 3", "seed = 3\nsede = 4"), "sede"),
            (
                "optim.toml",
                TOML.replace("lr = 3e-3", "lr = 3e-3\nbeta1 = 0.9"),
                "beta1",
            ),
            (
                "sched.toml",
                TOML.replace("floor = 0.0", "floor = 0.0\nwarmup = 6"),
                "warmup",
            ),
            ("kind.toml", TOML.replace("\"adafactor\"", "\"adam\""), "adam"),
            (
                "top.json",
                serde_json::to_string(&t0_few_shot())
                    .unwrap()
                    .replace("\"seed\"", "\"sead\""),
                "sead",
            ),
        ];
        for (name, text, key) in cases {
            let err = load(dir.path(), name, &text).unwrap_err().chain();
            assert!(err.contains(name) && err.contains(key), "{name}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = load(
            dir.path(),
            "optim.toml",
            &TOML.replace("lr = 3e-3", "lr = 3e-3\nbeta1 = 0.9"),
        )
        .unwrap_err()
        .chain();
        assert!(err.ends_with("unknown field `beta1`, expected one of `optimizer`, `lr`, `routing_lr`, \
            `weight_decay`, `routing_weight_decay`, `max_grad_norm`, `epsilon`, `scale_parameter` at line 10 column 1"), "{err}");
        // A missing key takes its default (the CLI's `[train]` table relies on it).
        let missing = load(dir.path(), "missing.toml", &TOML.replace("seed = 3\n", "")).unwrap();
        assert_eq!(missing.seed, TrainConfig::default().seed);
        let err = load(dir.path(), "t0.yaml", TOML).unwrap_err().chain();
        assert!(err.contains("t0.yaml") && err.contains(".toml or .json"), "{err}");
    }
}
