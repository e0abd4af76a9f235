//! `mhr adapt`: few-shot adaptation of a pre-training run to one task (its own routing row, or a single
//! adapter), as the method's variant prescribes: the whole adapter (`poly`, `mhr`), only the routing
//! (`-z`), the average of the skills as one LoRA (`-mu`), a fresh LoRA (`private`), the same adapter
//! (`lora`, `ia3`) or the whole model (`full-ft`). The result is a run folder of its own.
//!
//! The task is an SNI task of the pre-training run's folder (token loss), or with `--t0 DIR` a T0 held-out
//! dataset, trained on its k multiple-choice examples with the T-Few loss (PAPER.md §2.5).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::AdapterHost;
use mhr_core::peft::TASKS_FILE;
use mhr_data::{EncodedChoices, EncodedExample};
use mhr_models::{Precision, check_dropout_rate};
use mhr_train::pipeline::StageData;
use mhr_train::sni::encode_all;
use mhr_train::t0::encode_choices;

use crate::commands::common::catch_panics;
use crate::commands::run_dir::{
    ADAPT_CONFIG, ADAPTER_DIR, AdaptSettings, Run, RunKind, absolute, check_model_dir, parse_method,
    read_toml, train_in_run, write_toml,
};
use crate::device::{BackendTask, DeviceSpec, Devices, ensure_compiled, ensure_precision, with_backend};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pre-training run (a folder of `mhr train`).
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub run: Option<PathBuf>,
    /// The task to adapt to: an SNI task name, or with --t0 a T0 held-out dataset (rte, copa, cb, …);
    /// routed methods need its row: list it in held_out_tasks.
    #[arg(long, required_unless_present = "resume")]
    pub task: Option<String>,
    /// A T0 evaluation folder (e.g. data/t0eval): --task is one of its datasets, trained on k of its rows
    /// with the T-Few loss (the rest are the test set of `mhr eval`, scored by rank classification).
    #[arg(long, value_name = "DIR", conflicts_with = "test_instances")]
    pub t0: Option<PathBuf>,
    /// Number of training examples, drawn by --seed from the instances after the test set.
    #[arg(long, required_unless_present = "resume")]
    pub k: Option<usize>,
    #[arg(long, required_unless_present = "resume")]
    pub seed: Option<u64>,
    /// The variant to adapt with (default: the run's method), e.g. mhr-z or mhr-mu for an mhr run.
    #[arg(long)]
    pub method: Option<String>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Examples per step (default: the run's batch size, at most k).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate of the adapters (default: the run's).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Peak learning rate of the routing logits (default: the run's).
    #[arg(long)]
    pub routing_lr: Option<f64>,
    /// T5's dropout in training (default: the run's, else the model's config.json).
    #[arg(long)]
    pub dropout_rate: Option<f64>,
    /// The base weights' precision, f32 or bf16 (default: the pre-training run's).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Recompute each T5 block in backward instead of keeping its activations (default: the run's setting);
    /// `--checkpoint-activations=false` turns it off.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub checkpoint_activations: Option<bool>,
    /// SNI: the first N instances of the task file are its test set (never trained on).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub test_instances: usize,
    /// The run folder to create (it must not exist, or be empty), or with --resume to continue.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the adaptation in --out from its latest checkpoint, with its own adapt.toml.
    #[arg(long, conflicts_with_all = ["run", "task", "t0", "k", "seed", "method", "batch_size", "lr", "routing_lr",
        "dropout_rate", "precision", "checkpoint_activations"])]
    pub resume: bool,
    /// Stop after this many steps (checkpointed) as if interrupted; --resume continues exactly.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Backend and device: cpu, ndarray, flex, wgpu[:N] or cuda[:N] (as compiled in).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// Data-parallel peers instead of one device: cpu:N (N peers on the CPU) or a GPU list such as
    /// cuda:0,cuda:1; each takes its share of every batch, and the run equals one device with the whole batch.
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    pub devices: Option<Devices>,
}

impl Args {
    /// The settings of a new adaptation of `pretrained`.
    fn settings(&self, pretrained: &Run) -> Result<AdaptSettings> {
        let (Some(task), Some(k), Some(seed)) = (&self.task, self.k, self.seed) else {
            bail!("--task, --k and --seed are required");
        };
        if k == 0 || self.steps == 0 {
            bail!("--k and --steps must be positive");
        }
        let mut train = pretrained.settings.train.clone();
        train.steps = self.steps;
        train.seed = seed;
        train.batch_size = self.batch_size.unwrap_or(train.batch_size).clamp(1, k);
        train.checkpoint_every = 0;
        if let Some(lr) = self.lr {
            train.optim.lr = lr;
        }
        if let Some(lr) = self.routing_lr {
            train.optim.routing_lr = lr;
        }
        if let Some(rate) = self.dropout_rate {
            check_dropout_rate(rate).map_err(|e| anyhow!("--dropout-rate {e}"))?;
            train.dropout_rate = Some(rate);
        }
        if let Some(on) = self.checkpoint_activations {
            train.checkpoint_activations = on;
        }
        Ok(AdaptSettings {
            pretrained: absolute(&pretrained.dir)?,
            method: self
                .method
                .clone()
                .unwrap_or_else(|| pretrained.method.to_string()),
            task: task.clone(),
            t0: self.t0.as_deref().map(absolute).transpose()?,
            k,
            seed,
            test_instances: self.test_instances,
            precision: self.precision,
            train,
        })
    }
}

/// The k training examples of an adaptation, as its objective takes them.
enum AdaptData {
    /// An SNI task: one target each, the token loss.
    Tokens(Vec<EncodedExample>),
    /// A T0 dataset: every answer choice and the gold index, the T-Few loss.
    Choices(Vec<EncodedChoices>),
}

/// The adaptation run (its model is the pre-trained one prepared for the method) and its k examples.
struct AdaptTask {
    run: Run,
    data: AdaptData,
    task_id: usize,
    stop_after: Option<usize>,
    devices: Devices,
}

impl BackendTask for AdaptTask {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<()> {
        let RunKind::Adapt(adapt, _) = &self.run.kind else {
            bail!("{}: not an adaptation run", self.run.dir.display());
        };
        let model = self.run.skeleton::<B>(&device)?;
        let data = match &self.data {
            AdaptData::Tokens(examples) => StageData::Tokens(examples),
            AdaptData::Choices(examples) => StageData::Choices(examples),
        };
        let seeds = adapt.stage_seeds(self.task_id);
        let (dir, stop_after) = (&self.run.dir, self.stop_after);
        let devices = self.devices.of::<B>(&device);
        if let Some(model) = train_in_run(
            model,
            data,
            &adapt.train,
            seeds,
            dir,
            stop_after,
            "adapt",
            &devices,
        )? && let Some(adapter) = model.peft_adapter(&self.run.tasks, self.run.settings.model.to_str())?
        {
            adapter.save(self.run.dir.join(ADAPTER_DIR))?;
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    let devices = args.devices.clone().unwrap_or_else(|| Devices::one(args.device));
    ensure_compiled(devices.spec)?;
    let config_path = args.out.join(ADAPT_CONFIG);
    let adapt = if args.resume {
        if !config_path.is_file() {
            bail!(
                "--resume: {} not found; start the adaptation without --resume",
                config_path.display()
            );
        }
        read_toml::<AdaptSettings>(&config_path)?
    } else {
        if args.out.exists() && std::fs::read_dir(&args.out).map_or(true, |mut d| d.next().is_some()) {
            bail!(
                "--out {}: exists and is not an empty folder; use --resume to continue an adaptation",
                args.out.display()
            );
        }
        let dir = args.run.as_deref().context("--run is required")?;
        args.settings(&Run::open(dir)?)?
    };
    let pretrained = Run::open(&adapt.pretrained)?;
    // The method comes from --method (or the run) on a new adaptation, from adapt.toml on --resume.
    let origin = if args.resume {
        config_path.clone()
    } else {
        PathBuf::from("--method")
    };
    if !matches!(pretrained.kind, RunKind::Pretrain) {
        bail!(
            "--run {}: an adaptation run; adapt a pre-training run (of `mhr train`)",
            pretrained.dir.display()
        );
    }
    let method = parse_method(&adapt.method, &origin)?;
    if method.pretraining_method() != pretrained.method.pretraining_method() {
        bail!(
            "--method {method}: the run pre-trained {}, whose variants are {}",
            pretrained.method,
            variants(pretrained.method)
        );
    }
    // An unknown T0 dataset is named as such before any routing-row check.
    adapt.t0_dataset()?;
    let task_id = adapt.task_id(&pretrained, method)?;
    ensure_precision(devices.spec, adapt.precision_over(&pretrained.settings))?;
    let model_config = check_model_dir(&pretrained.settings.model)?;
    let encoder = adapt.encoder(&pretrained.settings, &model_config)?;
    let split = adapt.split(&pretrained.settings)?;
    let data = match adapt.t0 {
        Some(_) => AdaptData::Choices(encode_choices(&encoder, &split.train, task_id)?),
        None => AdaptData::Tokens(encode_all(&encoder, &split.train, task_id)?),
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    if !args.resume {
        write_toml(&config_path, &adapt)?;
        pretrained.tasks.save(args.out.join(TASKS_FILE))?;
    }
    let run = Run {
        dir: args.out.clone(),
        settings: pretrained.settings.clone(),
        method,
        tasks: pretrained.tasks.clone(),
        kind: RunKind::Adapt(Box::new(adapt), Box::new(pretrained)),
    };
    let spec = devices.spec;
    catch_panics(&format!("adapting on `{spec}`"), || {
        with_backend(
            spec,
            AdaptTask {
                run,
                data,
                task_id,
                stop_after: args.stop_after,
                devices,
            },
        )
    })
}

/// The methods that share `method`'s pre-training.
fn variants(method: mhr_core::Method) -> String {
    let names: Vec<&str> = mhr_core::Method::ALL
        .into_iter()
        .filter(|m| m.pretraining_method() == method.pretraining_method())
        .map(|m| m.name())
        .collect();
    names.join(", ")
}
