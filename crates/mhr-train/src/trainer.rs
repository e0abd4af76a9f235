//! The training loop shared by every stage (pre-training, few-shot adaptation, base-model training).
//!
//! Written with Burn's optimiser API rather than burn-train's `Learner`: the paper's two learning rates
//! (adapters vs routing logits) need two optimisers over a split of the gradients, PyTorch-style global-norm
//! clipping needs all gradients at once, and exact resume needs per-step seeds; the Learner expresses
//! none of these in 0.21.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::{RoutingContext, RoutingMode};
use mhr_models::T5ForConditionalGeneration;
use serde::{Deserialize, Serialize};

use crate::batch::TrainBatch;
use crate::checkpoint::{Checkpoint, Checkpointer};
use crate::data::{StepData, mix};
use crate::error::TrainError;
use crate::losses::label_smoothed_nll;
use crate::optim::{OptimConfig, TwoSpeedAdamW, TwoSpeedRecord};
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
    pub seed: u64,
    /// 0: the model's mean token cross entropy; ε > 0: fairseq's label-smoothed NLL (SNI runs, ε = 0.1).
    pub label_smoothing: f64,
    /// Sample relaxed-Bernoulli routing (when the routers enable it) instead of σ(Z).
    pub sampled_routing: bool,
    pub log_every: usize,
    /// 0: a checkpoint only at the end (when the run has a directory).
    pub checkpoint_every: usize,
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
            log_every: 100,
            checkpoint_every: 0,
        }
    }
}

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: usize,
    /// `(step, loss)` at every logged step.
    pub losses: Vec<(usize, f64)>,
    pub tokens_per_s: f64,
}

/// Where a stage runs and how far.
#[derive(Debug, Clone, Default)]
pub struct RunOptions<'a> {
    /// Metrics, checkpoints and resume; `None` trains in memory only.
    pub dir: Option<&'a RunDir>,
    /// Stop (after checkpointing) once this many steps are done, as if interrupted; the schedule still
    /// spans `config.steps`, so resuming later continues exactly.
    pub stop_after: Option<usize>,
    /// Name in progress output and metrics.
    pub label: &'a str,
}

/// A run directory: `config.json`, `metrics.jsonl`, `checkpoints/`.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn checkpoints(&self) -> Checkpointer {
        Checkpointer::new(self.path.join("checkpoints"), 2)
    }

    fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }

    /// Appends one JSON line to `metrics.jsonl`.
    pub fn log(&self, line: &serde_json::Value) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))?;
        writeln!(f, "{line}").map_err(|e| TrainError::Io(format!("{}: {e}", path.display())))
    }

    /// Drops metric lines after `step` (a resumed run writes them again).
    fn truncate_metrics(&self, step: usize) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_none_or(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        mhr_core::io::write_atomic(&path, kept.as_bytes()).map_err(TrainError::from)
    }
}

type Model<B> = T5ForConditionalGeneration<B>;
type Optim<B> = TwoSpeedAdamW<B, Model<B>>;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

fn save_checkpoint<B: AutodiffBackend>(
    run: &RunDir,
    step: usize,
    model: &Model<B>,
    optim: &TwoSpeedAdamW<B, Model<B>>,
) -> Result<(), TrainError> {
    let rec = |e: burn::record::RecorderError| TrainError::Checkpoint(e.to_string());
    let model_bytes = Recorder::<B>::record(&recorder(), model.clone().into_record(), ()).map_err(rec)?;
    let optim_bytes = Recorder::<B>::record(&recorder(), optim.to_record(), ()).map_err(rec)?;
    run.checkpoints().save(
        step,
        &[("model.mpk", &model_bytes), ("optim.mpk", &optim_bytes)],
        serde_json::json!({ "step": step }),
    )
}

/// The model and optimiser for a run: restored from the latest checkpoint of `run` when there is one (the
/// optimiser is built after the model is restored, since parameter ids come from the record); returns the
/// step to start at.
pub fn resume<B: AutodiffBackend>(
    run: Option<&RunDir>,
    model: Model<B>,
    config: &OptimConfig,
    device: &B::Device,
) -> Result<(Model<B>, Optim<B>, usize), TrainError> {
    let checkpoint = match run {
        Some(run) => run.checkpoints().load_latest()?,
        None => None,
    };
    let Some(checkpoint) = checkpoint else {
        let optim = TwoSpeedAdamW::new(config.clone(), &model);
        return Ok((model, optim, 0));
    };
    let rec = |e: burn::record::RecorderError| TrainError::Checkpoint(e.to_string());
    let model = model_from(&checkpoint, model, device)?;
    let optim_record: TwoSpeedRecord<B, Model<B>> =
        Recorder::<B>::load(&recorder(), checkpoint.file("optim.mpk")?.to_vec(), device).map_err(rec)?;
    let optim = TwoSpeedAdamW::new(config.clone(), &model).load_record(optim_record);
    Ok((model, optim, checkpoint.step))
}

fn model_from<B: Backend>(
    checkpoint: &Checkpoint,
    model: Model<B>,
    device: &B::Device,
) -> Result<Model<B>, TrainError> {
    let bytes = checkpoint.file("model.mpk")?.to_vec();
    let record =
        Recorder::<B>::load(&recorder(), bytes, device).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    Ok(model.load_record(record))
}

/// The weights of `run`'s latest checkpoint put into `model` (which must have the structure it was saved
/// with), and that checkpoint's step; `None` when the run has no checkpoint.
pub fn load_latest<B: Backend>(
    run: &RunDir,
    model: Model<B>,
    device: &B::Device,
) -> Result<Option<(Model<B>, usize)>, TrainError> {
    match run.checkpoints().load_latest()? {
        Some(checkpoint) => Ok(Some((model_from(&checkpoint, model, device)?, checkpoint.step))),
        None => Ok(None),
    }
}

/// A model's device (its first parameter's).
pub fn device_of<B: Backend, M: Module<B>>(model: &M) -> B::Device {
    model.devices().into_iter().next().unwrap_or_default()
}

/// Trains `model` (with `require_grad` already set by the method's [`mhr_core::TrainableSet`]) for
/// `config.steps` optimiser steps. With a run directory, metrics go to `metrics.jsonl`, checkpoints are
/// written every `checkpoint_every` steps and at the end, and an existing checkpoint is resumed from.
pub fn train<B: AutodiffBackend>(
    model: Model<B>,
    data: &dyn StepData,
    config: &TrainConfig,
    options: &RunOptions,
) -> Result<(Model<B>, TrainOutcome), TrainError>
where
    Model<B>: AutodiffModule<B>,
{
    let (run, label) = (options.dir, options.label);
    let end = options.stop_after.map_or(config.steps, |s| s.min(config.steps));
    let device = device_of(&model);
    let pad = model.config().pad_token_id;
    if let Some(run) = run {
        std::fs::create_dir_all(&run.path)
            .map_err(|e| TrainError::Io(format!("{}: {e}", run.path.display())))?;
    }
    let (mut model, mut optim, start) = resume(run, model, &config.optim, &device)?;
    if let Some(run) = run {
        run.truncate_metrics(start)?;
    }
    let mode = if config.sampled_routing {
        RoutingMode::Sampled
    } else {
        RoutingMode::Deterministic
    };
    let progress = Progress::new(label, config.steps, start);
    let mut losses = Vec::new();
    let (mut tokens, clock) = (0usize, Instant::now());
    for step in start..end {
        // Per-step seed: the routing noise of a step does not depend on where the run was resumed.
        B::seed(&device, mix(config.seed, step as u64));
        let mut accumulator = GradientsAccumulator::<Model<B>>::new();
        let mut step_loss = 0.0;
        for micro in 0..config.grad_accumulation.max(1) {
            let examples = data.examples(step, micro);
            let batch = TrainBatch::<B>::from_examples(&examples, pad, &device);
            tokens += batch.tokens;
            let ctx = RoutingContext::new(batch.task_ids, mode);
            let out = model.forward(batch.input_ids, batch.attention_mask, batch.labels.clone(), &ctx)?;
            let loss = if config.label_smoothing > 0.0 {
                label_smoothed_nll(out.logits, batch.labels, config.label_smoothing)
            } else {
                out.loss
            };
            let loss = loss / config.grad_accumulation.max(1) as f64;
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss { step, loss: value });
            }
            step_loss += value;
            accumulator.accumulate(&model, GradientsParams::from_grads(loss.backward(), &model));
        }
        let (updated, grad_norm) = optim.step(
            config.schedule.factor(step, config.steps),
            model,
            accumulator.grads(),
        );
        model = updated;
        let done = step + 1;
        progress.update(
            done,
            step_loss,
            tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        );
        if done.is_multiple_of(config.log_every.max(1)) || done == end {
            losses.push((done, step_loss));
            if let Some(run) = run {
                run.log(&serde_json::json!({
                    "stage": label, "step": done, "loss": step_loss, "grad_norm": grad_norm,
                    "lr_factor": config.schedule.factor(step, config.steps),
                }))?;
            }
        }
        if let Some(run) = run {
            let periodic = config.checkpoint_every > 0 && done.is_multiple_of(config.checkpoint_every);
            if periodic || done == end {
                save_checkpoint(run, done, &model, &optim)?;
            }
        }
    }
    progress.finish();
    let tokens_per_s = tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9);
    Ok((
        model,
        TrainOutcome {
            steps: end,
            losses,
            tokens_per_s,
        },
    ))
}

/// A progress bar on a terminal, plain log lines otherwise (CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: usize,
}

impl Progress {
    fn new(label: &str, total: usize, start: usize) -> Self {
        let bar = (!label.is_empty() && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({eta})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.set_position(start as u64);
            bar
        });
        Self {
            bar,
            label: label.to_string(),
            total,
        }
    }

    fn update(&self, step: usize, loss: f64, tokens_per_s: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4} · {tokens_per_s:.0} tok/s"));
            }
            None if self.label.is_empty() => {}
            None => {
                let every = (self.total / 10).max(1);
                if step.is_multiple_of(every) || step == self.total {
                    eprintln!(
                        "{}: step {step}/{} loss {loss:.4} ({tokens_per_s:.0} tok/s)",
                        self.label, self.total
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| TrainError::Io(e.to_string()))?;
    mhr_core::io::write_atomic(path, &bytes).map_err(TrainError::from)
}
