use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::TensorData;
use mhr_core::RoutingDiagnostics;
use mhr_core::peft::{ModuleWeights, PeftAdapter, PeftKind};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// A peft adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
}

fn shape(t: &TensorData) -> Vec<usize> {
    t.shape.to_vec()
}

pub fn run(args: Args) -> Result<()> {
    let adapter = PeftAdapter::load(&args.adapter)?;
    let kind = match &adapter.config.kind {
        PeftKind::Poly {
            r,
            n_tasks,
            n_skills,
            n_splits,
        } => {
            json!({"type": "POLY", "r": r, "n_tasks": n_tasks, "n_skills": n_skills, "n_splits": n_splits})
        }
        PeftKind::Lora { r, alpha, rslora } => {
            json!({"type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora})
        }
        PeftKind::Ia3 { .. } => json!({"type": "IA3"}),
    };
    println!(
        "{}",
        json!({"adapter": args.adapter, "config": kind, "modules": adapter.modules.len()})
    );
    for (path, weights) in &adapter.modules {
        let line = match weights {
            ModuleWeights::Poly { a, b, logits } => {
                // σ(Z) on the host: inspecting a file needs no backend.
                let p: Vec<f64> = logits
                    .iter::<f32>()
                    .map(|z| 1.0 / (1.0 + (-f64::from(z)).exp()))
                    .collect();
                let d = RoutingDiagnostics::from_probabilities(&p, a.shape[1]);
                json!({"module": path, "A": shape(a), "B": shape(b), "module_logits": shape(logits),
                       "discreteness": d.discreteness, "sparsity": d.sparsity, "usage": d.usage})
            }
            ModuleWeights::Lora { a, b } => json!({"module": path, "A": shape(a), "B": shape(b)}),
            ModuleWeights::Ia3 { l, feedforward } => {
                json!({"module": path, "l": shape(l), "feedforward": feedforward})
            }
        };
        println!("{line}");
    }
    Ok(())
}
