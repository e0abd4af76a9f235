//! The `paper-t0` preset (PAPER.md §2.2–2.6, §3.1): adapters pre-trained on the T0 training mixture (P3,
//! one task per dataset × template), then adapted with T-Few's recipe to each T0 held-out dataset from k
//! examples (32; Winogrande 50, StoryCloze 70, HellaSwag 20) under three seeds, and scored by rank
//! classification accuracy. Pre-training runs once per adapter family (Poly serves Poly, Poly-z and Poly-μ);
//! adaptation and evaluation run per seed, as in the paper.
//!
//! The mixture is a [`P3Dir`] folder (`scripts/export_p3.py` writes one from the Hub); the held-out data
//! is a [`T0Dir`] (the shipped `data/t0eval`, or one with the full validation and training files).

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::peft::TargetModules;
use mhr_core::{Method, RoutingConfig};
use mhr_data::{Encoder, EncoderConfig, P3Dir, P3Options, T0_SEEDS, T0Dataset, T0Dir, TaskIndex};
use mhr_models::{Precision, T5ForConditionalGeneration};
use serde::{Deserialize, Serialize};

use mhr_train::TrainConfig;
use mhr_train::TrainError;
use mhr_train::eval::mean_token_loss;
use mhr_train::methods::AdapterSizes;
use mhr_train::optim::{OptimConfig, OptimizerKind};
use mhr_train::pipeline::{
    StageData, StageSeeds, TestSet, adaptation_model, evaluate, pretraining_model, train_stage_on,
};
use mhr_train::results::{ResultRow, Results};
use mhr_train::schedule::Schedule;
use mhr_train::sni::{encode_tasks, load_tokenizer};
use mhr_train::t0::encode_choices;
use mhr_train::trainer::{RunOptions, write_json};

use crate::report::write_results;

type Model<B> = T5ForConditionalGeneration<B>;

/// Everything the preset fixes; `--settings FILE.json` overrides any field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T0Settings {
    /// Written as `preset` in results.json.
    pub preset: String,
    /// The T5 folder (config.json, weights).
    pub model: PathBuf,
    /// Its tokenizer.json.
    pub tokenizer: PathBuf,
    /// The T0 training mixture ([`P3Dir`] layout).
    pub p3: PathBuf,
    /// The held-out evaluation data ([`T0Dir`] layout).
    pub t0eval: PathBuf,
    /// Held-out datasets to adapt to (`copa`, `rte`, …); empty: every one present in `t0eval`.
    pub datasets: Vec<String>,
    /// Training rows per mixture dataset, shared by its templates (T0: 500,000).
    pub cap_per_dataset: usize,
    /// Rows of every (dataset, template) pair held out for the validation loss (mttl: 100).
    pub validation_per_subset: usize,
    /// One routing row per (dataset, template) pair (`use_t0_templates_as_tasks`), else per dataset.
    pub templates_as_tasks: bool,
    pub max_source_len: usize,
    pub max_target_len: usize,
    /// Few-shot seeds (T-Few: 42, 1024, 0); pre-training uses the first.
    pub seeds: Vec<u64>,
    pub methods: Vec<String>,
    /// Adapted linear layers (peft `target_modules` names).
    pub targets: Vec<String>,
    pub adapter: AdapterSizes,
    /// Multi-task pre-training on the mixture (its random streams come from the first seed; Adafactor's
    /// `scale_parameter` is set per method, see [`T0Settings::for_method`]).
    pub pretraining: TrainConfig,
    /// Few-shot adaptation of each held-out dataset (the learning rate is not carried over from pre-training),
    /// at most k examples per step.
    pub adaptation: TrainConfig,
    /// Evaluation rows scored per dataset (all when larger).
    pub n_test: usize,
    /// Examples per rank-classification batch (each contributes one row per answer choice).
    pub eval_batch: usize,
    /// The base weights' precision: `f32`, or `bf16` with f32 adapters (flex or cuda); bf16 on cuda by default,
    /// as the paper's runs.
    #[serde(default)]
    pub precision: Precision,
}

/// The method table, in table order (PAPER.md §3.1).
pub const METHODS: [&str; 8] = [
    "ia3", "lora", "poly-z", "poly", "poly-mu", "mhr-z", "mhr", "mhr-mu",
];

/// The authors' T0 held-out averages (PAPER.md §3.1, panel A: T5-XL-LM-adapt), as fractions, at T-Few's k
/// (32 for most datasets).
const REFERENCE: [(&str, usize, f64); 6] = [
    ("ia3", 32, 0.624),
    ("lora", 32, 0.660),
    ("poly-z", 32, 0.664),
    ("poly", 32, 0.680),
    ("mhr-z", 32, 0.683),
    ("mhr", 32, 0.691),
];

/// Every linear layer of a T5 block (mttl's T0 placement).
const ALL_LINEAR: [&str; 7] = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];

/// A stage of mttl's T0 recipe: Adafactor without weight decay, batches of 8, 6 % linear warm-up then decay to 0,
/// clip 1.0, logits at lr 0.1, twenty log lines.
fn stage(steps: usize, grad_accumulation: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        grad_accumulation,
        optim: OptimConfig {
            optimizer: OptimizerKind::Adafactor,
            lr,
            routing_lr: 0.1,
            weight_decay: 0.0,
            routing_weight_decay: 0.0,
            max_grad_norm: 1.0,
            ..OptimConfig::default()
        },
        schedule: Schedule::Linear {
            warmup_fraction: 0.06,
            floor: 0.0,
        },
        label_smoothing: 0.0,
        sampled_routing: true,
        log_every: (steps / 20).max(1),
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

impl T0Settings {
    /// PAPER.md §2.3–2.4: T5-XL-LM-adapt, every linear layer at rank 1, S = 8, MHR with 64 heads; Adafactor,
    /// 100,000 pre-training steps at batch 8 × 2 (lr 1e-3, logits 0.1), 1,000 few-shot steps at batch 8
    /// (lr 3e-3), 6 % warm-up then linear decay, clip 1.0, inputs and outputs up to 256 tokens.
    pub fn paper_t0(model: PathBuf, tokenizer: PathBuf, p3: PathBuf) -> Self {
        Self {
            preset: "paper-t0".into(),
            model,
            tokenizer,
            p3,
            t0eval: PathBuf::from("../shared/data/t0eval"),
            datasets: Vec::new(),
            cap_per_dataset: mhr_data::T0_CAP_PER_DATASET,
            validation_per_subset: mhr_data::T0_VALIDATION_PER_SUBSET,
            templates_as_tasks: true,
            max_source_len: 256,
            max_target_len: 256,
            seeds: T0_SEEDS.to_vec(),
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
            targets: ALL_LINEAR.map(String::from).to_vec(),
            adapter: AdapterSizes {
                // The T0 configs turn the relaxed-Bernoulli routing noise off.
                routing: RoutingConfig {
                    relaxed_bernoulli: false,
                    ..RoutingConfig::default()
                },
                ..AdapterSizes::new(1, 8, 64)
            },
            pretraining: stage(100_000, 2, 1e-3),
            adaptation: stage(1000, 1, 3e-3),
            n_test: usize::MAX,
            eval_batch: 16,
            precision: Precision::F32,
        }
    }

    /// `config` for `method`: Adafactor as mttl runs it, whose `scale_parameter` is HF's default (true) for LoRA,
    /// whose config does not set it, and false for the routed methods.
    fn for_method(config: &TrainConfig, method: Method) -> TrainConfig {
        let mut config = config.clone();
        config.optim.scale_parameter = !method.is_routed();
        config
    }

    /// The held-out datasets to adapt to: those named, or every one `dir` holds.
    fn datasets(&self, dir: &T0Dir) -> Result<Vec<T0Dataset>, TrainError> {
        if self.datasets.is_empty() {
            return Ok(dir.available());
        }
        self.datasets
            .iter()
            .map(|name| {
                T0Dataset::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = T0Dataset::ALL.iter().map(|d| d.name()).collect();
                    TrainError::Config(format!(
                        "datasets: unknown T0 held-out dataset `{name}` (known: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect()
    }
}

/// Runs the preset on backend `B`, writing `results.{json,md}` and `pretraining.json` (validation loss per
/// adapter family) under `out`.
pub fn run<B: AutodiffBackend>(
    settings: &T0Settings,
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
    let first_seed = *settings
        .seeds
        .first()
        .ok_or_else(|| TrainError::Config("seeds: at least one seed is needed".into()))?;
    let t0 = T0Dir::open(&settings.t0eval).map_err(TrainError::from)?;
    let datasets = settings.datasets(&t0)?;
    if datasets.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no T0 held-out dataset found (expected e.g. {})",
            settings.t0eval.display(),
            t0.expected_eval_path(T0Dataset::Copa).display()
        )));
    }
    let p3 = P3Dir::open(&settings.p3).map_err(TrainError::from)?;
    std::fs::create_dir_all(out).map_err(TrainError::io(out))?;
    write_json(&out.join("settings.json"), settings)?;

    let base = Model::<B>::load_as(&settings.model, settings.precision, device)?;
    let tokenizer = load_tokenizer(Some(&settings.tokenizer), base.config().vocab_size)?;
    let encoder = Encoder::new(
        tokenizer,
        EncoderConfig {
            max_source_len: settings.max_source_len,
            max_target_len: settings.max_target_len,
            source_suffix: None,
        },
    )
    .map_err(TrainError::from)?;

    // Routing rows: the mixture's tasks, then the held-out datasets (rows pre-training never touches).
    let mixture = p3
        .load(&P3Options {
            cap_per_dataset: settings.cap_per_dataset,
            validation_per_subset: settings.validation_per_subset,
            templates_as_tasks: settings.templates_as_tasks,
            seed: first_seed,
        })
        .map_err(TrainError::from)?;
    let index = TaskIndex::in_order(
        mixture
            .train
            .iter()
            .map(|t| t.name.clone())
            .chain(datasets.iter().map(|d| d.name().to_string())),
    )
    .map_err(TrainError::from)?;
    let train_set = encode_tasks(&encoder, &mixture.train, &index)?;
    let validation_set = encode_tasks(&encoder, &mixture.validation, &index)?;
    drop(mixture);
    eprintln!(
        "{}: {} training and {} validation examples over {} mixture tasks; held-out: {}",
        settings.preset,
        train_set.len(),
        validation_set.len(),
        index.len() - datasets.len(),
        datasets.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
    );

    let sizes = &settings.adapter;
    let targets = TargetModules::Names(settings.targets.clone());
    let mut families: Vec<Method> = methods.iter().map(|m| m.pretraining_method()).collect();
    families.sort_by_key(|m| m.name());
    families.dedup();
    let mut pretrained = Vec::new();
    let mut validation_loss = serde_json::Map::new();
    let seeds = StageSeeds::pretraining(first_seed);
    for family in families {
        let model = pretraining_model(base.clone(), family, sizes, &targets, index.len(), seeds)?;
        let label = format!("{family} pre-training");
        let (model, _) = train_stage_on(
            model,
            StageData::Tokens(&train_set),
            &T0Settings::for_method(&settings.pretraining, family),
            seeds,
            &RunOptions {
                label: &label,
                ..Default::default()
            },
            devices,
        )?;
        let loss = mean_token_loss(&model.valid(), &validation_set, settings.eval_batch)?;
        eprintln!("{}: {family} validation loss {loss:.4}", settings.preset);
        validation_loss.insert(family.name().to_string(), loss.into());
        pretrained.push((family, model));
    }
    write_json(
        &out.join("pretraining.json"),
        &serde_json::json!({"validation_loss": validation_loss, "tasks": index.names()}),
    )?;

    let mut rows = Vec::new();
    for &seed in &settings.seeds {
        for &dataset in &datasets {
            let id = index.id(dataset.name()).unwrap_or_default();
            let k = dataset.few_shot_k();
            let split = t0.few_shot(dataset, k, 0, seed).map_err(TrainError::from)?;
            let few = encode_choices(&encoder, &split.train, id)?;
            let test: Vec<_> = split.test.iter().take(settings.n_test).cloned().collect();
            let test = encode_choices(&encoder, &test, id)?;
            for &method in &methods {
                let start = pretrained
                    .iter()
                    .find(|(family, _)| *family == method.pretraining_method())
                    .map(|(_, m)| m.clone())
                    .ok_or_else(|| TrainError::Config(format!("no pre-trained model for {method}")))?;
                let seeds = StageSeeds::adaptation(seed, id);
                let model = adaptation_model(start, method, sizes, seeds)?;
                let mut config = T0Settings::for_method(&settings.adaptation, method);
                config.batch_size = config.batch_size.min(few.len().max(1));
                let (adapted, _) = train_stage_on(
                    model,
                    StageData::Choices(&few),
                    &config,
                    seeds,
                    &RunOptions::default(),
                    // T-Few's objective trains on one device.
                    &devices[..1],
                )?;
                let score = evaluate(&adapted.valid(), TestSet::Choices(&test), settings.eval_batch)?;
                eprintln!(
                    "{}: seed {seed} {} {method}: accuracy {:.3}",
                    settings.preset,
                    dataset.name(),
                    score.value
                );
                rows.push(ResultRow {
                    method: method.name().into(),
                    task: dataset.name().into(),
                    k,
                    seed,
                    metric: score.metric.into(),
                    value: score.value,
                });
            }
        }
    }
    let results = Results {
        preset: settings.preset.clone(),
        rows,
        diagnostics: None,
    };
    let note = format!(
        "Reference: the authors' accuracy averaged over the 11 T0 held-out datasets and 3 seeds (PAPER.md §3.1, \
         panel A, T5-XL-LM-adapt; their model selection used the test set itself). Ours averages over the \
         datasets present: {}.",
        datasets.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
    );
    let md = write_results(out, &results, &METHODS, &REFERENCE, &note)?;
    println!("{md}");
    Ok(results)
}
