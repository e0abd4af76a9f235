//! The `smoke` preset: every method of the table end to end in a minute or two, for CI.
//!
//! A tiny random T5 (v1.1 layout) on ByT5-style byte tokens, pre-trained briefly on a few shipped
//! Super-NaturalInstructions training tasks (mttl's prompt format, label-smoothed loss), adapted few-shot to a
//! few held-out SNI tasks, and scored by Rouge-L of greedy generations against all references. The numbers
//! only show that every path runs and produces finite scores; they say nothing about the methods' merits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::peft::TargetModules;
use mhr_core::{Method, RoutingConfig};
use mhr_data::{
    ByteTokenizer, Encoder, EncoderConfig, Example, SniDir, SniPromptFormat, SniTestSet, Task, TaskIndex,
    TaskList, sni_few_shot,
};
use mhr_models::{T5Config, T5ForConditionalGeneration};
use serde::{Deserialize, Serialize};

use crate::data::{ShuffledEpochs, mix};
use crate::error::TrainError;
use crate::methods::{AdapterSizes, attach_pretraining, prepare_adaptation};
use crate::optim::OptimConfig;
use crate::reproduce::report::{ResultRow, Results, write_results};
use crate::schedule::Schedule;
use crate::sni::{data_error, encode_all, score_generations};
use crate::trainer::{RunOptions, TrainConfig, train, write_json};

type Model<B> = T5ForConditionalGeneration<B>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmokeSettings {
    /// A Super-NaturalInstructions folder (`tasks/`, `subset/{train,eval}_tasks.txt`).
    pub sni: PathBuf,
    pub train_tasks: usize,
    pub eval_tasks: usize,
    pub instances_per_task: usize,
    pub pre_steps: usize,
    pub ft_steps: usize,
    pub batch: usize,
    pub k: usize,
    pub n_test: usize,
    pub max_source_len: usize,
    pub max_target_len: usize,
    pub seed: u64,
    pub methods: Vec<String>,
}

impl Default for SmokeSettings {
    fn default() -> Self {
        Self {
            sni: PathBuf::from("../shared/data/sni"),
            train_tasks: 6,
            eval_tasks: 2,
            instances_per_task: 164,
            pre_steps: 12,
            ft_steps: 4,
            batch: 8,
            k: 8,
            n_test: 4,
            max_source_len: 96,
            max_target_len: 16,
            seed: 13,
            methods: METHODS.iter().map(|m| m.to_string()).collect(),
        }
    }
}

/// The method table, in table order.
pub const METHODS: [&str; 10] = [
    "lora", "ia3", "private", "poly", "poly-z", "poly-mu", "mhr", "mhr-z", "mhr-mu", "full-ft",
];

fn model_config() -> T5Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 259, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_decoder_layers": 1,
        "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0,
        "pad_token_id": 0, "eos_token_id": 1
    }))
    .expect("a valid literal config")
}

fn load_tasks(sni: &SniDir, list: &Path, n: usize, max: usize) -> Result<Vec<Task>, TrainError> {
    let list = TaskList::read(list).map_err(data_error)?;
    crate::sni::load_tasks(sni, &list, max)?.take(n).collect()
}

fn config(steps: usize, batch: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: batch,
        grad_accumulation: 1,
        optim: OptimConfig {
            lr: 1e-2,
            routing_lr: 0.1,
            max_grad_norm: 1.0,
            ..OptimConfig::default()
        },
        schedule: Schedule::Linear {
            warmup_fraction: 0.06,
            floor: 0.0,
        },
        seed,
        label_smoothing: 0.1,
        sampled_routing: true,
        log_every: 1,
        checkpoint_every: 0,
    }
}

/// Runs the preset on backend `B`, writing `results.{json,md}` under `out`.
pub fn run<B: AutodiffBackend>(
    settings: &SmokeSettings,
    out: &Path,
    device: &B::Device,
) -> Result<Results, TrainError>
where
    Model<B>: AutodiffModule<B, InnerModule = Model<B::InnerBackend>>,
{
    let methods: Vec<Method> = settings
        .methods
        .iter()
        .map(|m| m.parse::<Method>().map_err(TrainError::Config))
        .collect::<Result<_, _>>()?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::Io(format!("{}: {e}", out.display())))?;
    write_json(&out.join("settings.json"), settings)?;
    let sni = SniDir::open(&settings.sni).map_err(data_error)?;
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
    let encoder = Encoder::new(
        Arc::new(ByteTokenizer),
        EncoderConfig {
            max_source_len: settings.max_source_len,
            max_target_len: settings.max_target_len,
            source_suffix: SniPromptFormat::Mttl.source_suffix().map(String::from),
        },
    )
    .map_err(data_error)?;
    let mut train_set = Vec::new();
    for task in &train_tasks {
        let id = index.id(&task.name).unwrap_or_default();
        train_set.extend(encode_all(&encoder, &task.examples, id)?);
    }
    let sizes = AdapterSizes {
        lora_rank: 4,
        lora_alpha: 1.0,
        poly_rank: 4,
        n_skills: 4,
        mhr_heads: 4,
        routing: RoutingConfig::default(),
    };
    let targets = TargetModules::Names(
        ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let mut rows = Vec::new();
    for &method in &methods {
        B::seed(device, settings.seed);
        let model = attach_pretraining(
            Model::<B>::new(&model_config(), device)?,
            method,
            &sizes,
            &targets,
            index.len(),
        )?;
        let sampler = ShuffledEpochs::new(&train_set, settings.batch, 1, settings.seed);
        let label = format!("{method} pre-training");
        let (pretrained, _) = train(
            model,
            &sampler,
            &config(settings.pre_steps, settings.batch, settings.seed),
            &RunOptions {
                label: &label,
                ..Default::default()
            },
        )?;
        for task in &eval_tasks {
            let id = index.id(&task.name).unwrap_or_default();
            let split =
                sni_few_shot(task, SniTestSet::First(100), settings.k, settings.seed).map_err(data_error)?;
            let few = encode_all(&encoder, &split.train, id)?;
            let model = prepare_adaptation(pretrained.clone(), method, &sizes)?;
            let sampler = ShuffledEpochs::new(
                &few,
                settings.batch.min(few.len().max(1)),
                1,
                mix(settings.seed, id as u64),
            );
            let (adapted, _) = train(
                model,
                &sampler,
                &config(settings.ft_steps, settings.batch, settings.seed),
                &RunOptions {
                    label: "",
                    ..Default::default()
                },
            )?;
            let test: Vec<Example> = split.test.iter().take(settings.n_test).cloned().collect();
            let scores = score_generations(
                &adapted.valid(),
                &encoder,
                &test,
                id,
                settings.max_target_len,
                test.len(),
            )?;
            rows.push(ResultRow {
                method: method.name().into(),
                task: task.name.clone(),
                k: settings.k,
                seed: settings.seed,
                metric: "rouge_l".into(),
                value: scores.rouge_l,
            });
        }
        eprintln!("smoke: {method} done");
    }
    let results = Results {
        preset: "smoke".into(),
        rows,
    };
    let note = "A tiny random T5 after a few steps: these numbers only show that every path runs.";
    let md = write_results(out, &results, &METHODS, &[], note)?;
    println!("{md}");
    Ok(results)
}
