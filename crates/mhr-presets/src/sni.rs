//! The Super-NaturalInstructions presets: every method of the table pre-trained on SNI training tasks (mttl's
//! prompt format, label-smoothed loss), adapted few-shot to held-out SNI tasks, and scored by Rouge-L of greedy
//! generations against all references.
//!
//! - `smoke` (CI, a minute or two): a tiny random T5 (v1.1 layout) on ByT5-style byte tokens and a few steps.
//!   Its numbers only show that every path runs and produces finite scores.
//! - `sni-small`: `google/t5-small-lm-adapt` (or any T5 folder) on the shipped SNI subset, three seeds.
//! - `paper-sni`: T5-XL-LM-adapt with the paper's SNI hyper-parameters (PAPER.md §2.3–2.4), for GPU machines.

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::Method;
use mhr_core::peft::TargetModules;
use mhr_data::{
    Encoder, EncoderConfig, Example, SniDir, SniPromptFormat, SniTestSet, Task, TaskIndex, TaskList,
    sni_few_shot,
};
use mhr_models::{Precision, T5Config, T5ForConditionalGeneration};
use serde::{Deserialize, Serialize};

use mhr_train::TrainConfig;
use mhr_train::TrainError;
use mhr_train::methods::AdapterSizes;
use mhr_train::optim::OptimConfig;
use mhr_train::pipeline::{
    StageData, StageSeeds, TestSet, adaptation_model, evaluate, pretraining_model, train_stage_on,
};
use mhr_train::results::{ResultRow, Results};
use mhr_train::schedule::Schedule;
use mhr_train::sni::{encode_all, encode_tasks, load_tokenizer};
use mhr_train::trainer::{RunOptions, write_json};

use crate::report::write_results;

type Model<B> = T5ForConditionalGeneration<B>;

/// Everything a preset fixes; `--settings FILE.json` overrides any field of the chosen preset (nested fields one by
/// one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniSettings {
    /// Written as `preset` in results.json.
    pub preset: String,
    /// A T5 folder (config.json, weights) to adapt; `None`: a tiny random T5 built in-process (smoke).
    pub model: Option<PathBuf>,
    /// The model's tokenizer.json; `None`: ByT5-style byte tokens (the random model's vocabulary).
    pub tokenizer: Option<PathBuf>,
    /// A Super-NaturalInstructions folder (`tasks/`, `subset/{train,eval}_tasks.txt`).
    pub sni: PathBuf,
    pub train_tasks: usize,
    pub eval_tasks: usize,
    pub instances_per_task: usize,
    pub k: usize,
    pub n_test: usize,
    pub max_source_len: usize,
    pub max_target_len: usize,
    /// Each seed repeats pre-training, adaptation and evaluation (mttl's SNI seeds are 13, 42, 58).
    pub seeds: Vec<u64>,
    pub methods: Vec<String>,
    /// Adapted linear layers (peft `target_modules` names).
    pub targets: Vec<String>,
    pub adapter: AdapterSizes,
    /// Multi-task pre-training; its random streams come from each seed (`seed` is not read).
    pub pretraining: TrainConfig,
    /// Few-shot adaptation of each held-out task, at most k examples per step.
    pub adaptation: TrainConfig,
    /// Peak learning rate of the whole model for `full-ft`, in both stages (`optim.lr` is the adapters').
    pub full_ft_lr: f64,
    /// The base weights' precision: `f32`, or `bf16` with f32 adapters (flex or cuda); paper-sni takes bf16 on cuda, as the paper.
    #[serde(default)]
    pub precision: Precision,
}

impl Default for SniSettings {
    fn default() -> Self {
        Self::smoke()
    }
}

/// A stage of mttl's SNI recipe: AdamW, 6 % linear warm-up then decay to 0, label smoothing 0.1, logits at lr
/// 0.1, twenty log lines.
fn stage(steps: usize, lr: f64, max_grad_norm: f64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        grad_accumulation: 1,
        optim: OptimConfig {
            lr,
            routing_lr: 0.1,
            max_grad_norm,
            ..OptimConfig::default()
        },
        schedule: Schedule::Linear {
            warmup_fraction: 0.06,
            floor: 0.0,
        },
        label_smoothing: 0.1,
        sampled_routing: true,
        log_every: (steps / 20).max(1),
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

impl SniSettings {
    pub fn smoke() -> Self {
        Self {
            preset: "smoke".into(),
            model: None,
            tokenizer: None,
            sni: PathBuf::from("../shared/data/sni"),
            train_tasks: 6,
            eval_tasks: 2,
            instances_per_task: 164,
            k: 8,
            n_test: 4,
            max_source_len: 96,
            max_target_len: 16,
            seeds: vec![13],
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            targets: ALL_LINEAR.map(String::from).to_vec(),
            adapter: AdapterSizes::new(4, 4, 4),
            pretraining: stage(12, 1e-2, 1.0),
            adaptation: stage(4, 1e-2, 1.0),
            full_ft_lr: 1e-2,
            precision: Precision::F32,
        }
    }

    /// `google/t5-small-lm-adapt` on every task of the shipped subset: ≤ 1000 instances per training task and
    /// the paper's split of each held-out task (test = first 100, k = 32 of the rest), mttl's seeds; the
    /// paper's SNI adapter (q, k, v, o; S = 8) at rank 8 for the small model.
    pub fn sni_small(model: PathBuf, tokenizer: Option<PathBuf>) -> Self {
        Self {
            preset: "sni-small".into(),
            model: Some(model),
            tokenizer,
            train_tasks: usize::MAX,
            eval_tasks: usize::MAX,
            instances_per_task: 1000,
            k: 32,
            n_test: 100,
            max_source_len: 512,
            max_target_len: 64,
            seeds: vec![13, 42, 58],
            targets: ATTENTION.map(String::from).to_vec(),
            adapter: AdapterSizes::new(8, 8, 8),
            pretraining: stage(2000, 1e-3, 0.1),
            adaptation: stage(300, 1e-3, 0.1),
            full_ft_lr: 5e-5,
            ..Self::smoke()
        }
    }

    /// PAPER.md §2.3–2.4: T5-XL-LM-adapt, q/k/v/o at rank 16, S = 8, 25,000 pre-training steps and 1,000 few-shot
    /// steps at batch 8, input 1024 / output 128 tokens. Give the full SNI checkout (756 / 119 task lists) as
    /// `sni` with the lists as `subset/{train,eval}_tasks.txt`. The MHR head count of the SNI runs is not
    /// documented; 8 is used.
    pub fn paper_sni(model: PathBuf, tokenizer: Option<PathBuf>) -> Self {
        let small = Self::sni_small(model, tokenizer);
        Self {
            preset: "paper-sni".into(),
            instances_per_task: 1000,
            max_source_len: 1024,
            max_target_len: 128,
            adapter: AdapterSizes::new(16, 8, 8),
            pretraining: stage(25_000, 1e-3, 0.1),
            adaptation: stage(1000, 1e-3, 0.1),
            ..small
        }
    }

    /// `config` for `method`: full fine-tuning trains the whole model at `full_ft_lr`.
    fn for_method(&self, config: &TrainConfig, method: Method) -> TrainConfig {
        let mut config = config.clone();
        if method == Method::FullFinetune {
            config.optim.lr = self.full_ft_lr;
        }
        config
    }
}

/// The method table, in table order.
pub const METHODS: [&str; 10] = [
    "lora", "ia3", "private", "poly", "poly-z", "poly-mu", "mhr", "mhr-z", "mhr-mu", "full-ft",
];
/// Every linear layer of a T5 block (mttl's T0 placement).
const ALL_LINEAR: [&str; 7] = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];
/// The attention projections (mttl's SNI placement, `ni/poly_lora.json`).
const ATTENTION: [&str; 4] = ["q", "k", "v", "o"];

fn random_model_config() -> T5Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 259, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
        "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0,
        "pad_token_id": 0, "eos_token_id": 1, "dropout_rate": 0.0
    }))
    .expect("a valid literal config")
}

fn load_tasks(sni: &SniDir, list: &Path, n: usize, max: usize) -> Result<Vec<Task>, TrainError> {
    let list = TaskList::read(list).map_err(TrainError::from)?;
    mhr_train::sni::load_tasks(sni, &list, max)?.take(n).collect()
}

/// The preset's base model for `seed`: a clone of the loaded checkpoint, or a random T5 drawn from `seed`.
fn base_model<B: Backend>(
    loaded: Option<&Model<B>>,
    seed: u64,
    precision: Precision,
    device: &B::Device,
) -> Result<Model<B>, TrainError> {
    Ok(match loaded {
        Some(model) => model.clone(),
        None => {
            B::seed(device, seed);
            Model::<B>::new_as(&random_model_config(), precision, device)?
        }
    })
}

/// Runs the preset on backend `B`, writing `results.{json,md}` under `out`.
pub fn run<B: AutodiffBackend>(
    settings: &SniSettings,
    out: &Path,
    devices: &[B::Device],
) -> Result<Results, TrainError>
where
    Model<B>: AutodiffModule<B, InnerModule = Model<B::InnerBackend>>,
{
    let device = crate::home::<B>(devices)?;
    let methods: Vec<Method> = settings
        .methods
        .iter()
        .map(|m| m.parse::<Method>().map_err(TrainError::Config))
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    write_json(&out.join("settings.json"), settings)?;
    let sni = SniDir::open(&settings.sni).map_err(TrainError::from)?;
    let subset = settings.sni.join("subset");
    let train_tasks = load_tasks(
        &sni,
        &subset.join("train_tasks.txt"),
        settings.train_tasks,
        settings.instances_per_task,
    )?;
    let eval_tasks = load_tasks(
        &sni,
        &subset.join("eval_tasks.txt"),
        settings.eval_tasks,
        settings.instances_per_task,
    )?;
    // mttl's SNI task ids: the sorted union, so held-out tasks have routing rows that pre-training never touches.
    let index = TaskIndex::sorted(train_tasks.iter().chain(&eval_tasks).map(|t| t.name.clone()));
    let targets = TargetModules::Names(settings.targets.clone());
    let loaded = settings
        .model
        .as_ref()
        .map(|dir| Model::<B>::load_as(dir, settings.precision, device))
        .transpose()?;
    let vocab_size = loaded
        .as_ref()
        .map_or_else(|| random_model_config().vocab_size, |m| m.config().vocab_size);
    let tokenizer = load_tokenizer(settings.tokenizer.as_deref(), vocab_size)?;
    let encoder = Encoder::new(
        tokenizer,
        EncoderConfig {
            max_source_len: settings.max_source_len,
            max_target_len: settings.max_target_len,
            source_suffix: SniPromptFormat::Mttl.source_suffix().map(String::from),
        },
    )
    .map_err(TrainError::from)?;
    let train_set = encode_tasks(&encoder, &train_tasks, &index)?;
    let sizes = &settings.adapter;
    let mut rows = Vec::new();
    for &seed in &settings.seeds {
        for &method in &methods {
            let base = base_model(loaded.as_ref(), seed, settings.precision, device)?;
            let seeds = StageSeeds::pretraining(seed);
            let model = pretraining_model(base, method, sizes, &targets, index.len(), seeds)?;
            let label = format!("{method} pre-training, seed {seed}");
            let (pretrained, _) = train_stage_on(
                model,
                StageData::Tokens(&train_set),
                &settings.for_method(&settings.pretraining, method),
                seeds,
                &RunOptions {
                    label: &label,
                    ..Default::default()
                },
                devices,
            )?;
            for task in &eval_tasks {
                let id = index.id(&task.name).unwrap_or_default();
                let split =
                    sni_few_shot(task, SniTestSet::First(100), settings.k, seed).map_err(TrainError::from)?;
                let few = encode_all(&encoder, &split.train, id)?;
                let seeds = StageSeeds::adaptation(seed, id);
                let model = adaptation_model(pretrained.clone(), method, sizes, seeds)?;
                let mut config = settings.for_method(&settings.adaptation, method);
                config.batch_size = config.batch_size.min(few.len().max(1));
                let (adapted, _) = train_stage_on(
                    model,
                    StageData::Tokens(&few),
                    &config,
                    seeds,
                    &RunOptions::default(),
                    devices,
                )?;
                let test: Vec<Example> = split.test.iter().take(settings.n_test).cloned().collect();
                let test_set = TestSet::Generations {
                    encoder: &encoder,
                    examples: &test,
                    task_id: id,
                    max_new_tokens: settings.max_target_len,
                };
                let score = evaluate(&adapted.valid(), test_set, test.len().min(32))?;
                rows.push(ResultRow {
                    method: method.name().into(),
                    task: task.name.clone(),
                    k: settings.k,
                    seed,
                    metric: score.metric.into(),
                    value: score.value,
                });
            }
            eprintln!("{}: {method}, seed {seed} done", settings.preset);
        }
    }
    let results = Results {
        preset: settings.preset.clone(),
        rows,
        diagnostics: None,
    };
    let note = match settings.model {
        None => "A tiny random T5 after a few steps: these numbers only show that every path runs.",
        Some(_) => {
            "The paper's SuperNI numbers were not retrieved (PAPER.md §3.3): no published column to compare with."
        }
    };
    let md = write_results(out, &results, &METHODS, &[], note)?;
    println!("{md}");
    Ok(results)
}
