//! The training loop shared by every stage (pre-training, few-shot adaptation, base-model training).
//!
//! Written with Burn's optimiser API rather than burn-train's `Learner`: the paper's two learning rates
//! (adapters vs routing logits) need two optimisers over a split of the gradients, PyTorch-style global-norm
//! clipping needs all gradients at once, and exact resume needs per-step seeds; the Learner expresses
//! none of these in 0.21.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::{AdapterHost, RoutingMode};
use mhr_models::T5ForConditionalGeneration;
use serde::Serialize;

use crate::TrainConfig;
use crate::checkpoint::{Checkpoint, Checkpointer};
use crate::data::{StepShape, mix};
use crate::error::TrainError;
use crate::objective::{MicroLoss, Objective};
use crate::optim::{OptimConfig, StageOptimizer, TwoSpeedRecord};
use crate::parallel::{Peer, run_peers, sum_step};

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: usize,
    /// `(step, loss)` at every logged step.
    pub losses: Vec<(usize, f64)>,
    pub tokens_per_s: f64,
    /// The run stopped early because [`RunOptions::interrupt`] was raised; `steps` are done and, with a
    /// run directory, checkpointed, so a resume continues exactly.
    pub interrupted: bool,
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
    /// Checked between optimiser steps: once true, the run checkpoints the steps done and returns with
    /// [`TrainOutcome::interrupted`] (set by [`crate::interrupt::sigint_flag`] on Ctrl-C, or by a test).
    pub interrupt: Option<&'a AtomicBool>,
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

    /// Appends one JSON line to `metrics.jsonl`, in one write (a formatted `writeln!` on a file writes
    /// piece by piece, so a kill could tear the line).
    pub fn log(&self, line: &serde_json::Value) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(TrainError::io(&path))?;
        f.write_all(format!("{line}\n").as_bytes())
            .map_err(TrainError::io(path))
    }

    /// Drops metric lines after `step` (a resumed run writes them again), and any line that is not JSON
    /// (the torn tail of a killed run).
    fn truncate_metrics(&self, step: usize) -> Result<(), TrainError> {
        let path = self.metrics_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v.get("step")
                        .and_then(|s| s.as_u64())
                        .is_none_or(|s| s as usize <= step)
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        mhr_core::io::write_atomic(&path, kept.as_bytes()).map_err(TrainError::from)
    }
}

type Model<B> = T5ForConditionalGeneration<B>;
type Optim<B> = StageOptimizer<B, Model<B>>;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::default()
}

fn save_checkpoint<B: AutodiffBackend>(
    run: &RunDir,
    step: usize,
    model: &Model<B>,
    optim: &Optim<B>,
) -> Result<(), TrainError> {
    let rec = |source| TrainError::Record {
        what: format!("step {step}"),
        source,
    };
    let model_bytes = Recorder::<B>::record(&recorder(), model.clone().into_record(), ()).map_err(rec)?;
    let optim_bytes = match optim {
        StageOptimizer::AdamW(o) => Recorder::<B>::record(&recorder(), o.to_record(), ()),
        StageOptimizer::Adafactor(o) => Recorder::<B>::record(&recorder(), o.to_record(), ()),
    }
    .map_err(rec)?;
    run.checkpoints().save(
        step,
        &[("model.mpk", &model_bytes), ("optim.mpk", &optim_bytes)],
        serde_json::json!({ "step": step, "optimizer": optim.kind().name() }),
    )
}

/// The model and optimiser for a run: restored from the latest checkpoint of `run` when there is one, or
/// the one before it when that is corrupt (the optimiser is built after the model is restored, since
/// parameter ids come from the record); returns the step to start at.
pub fn resume<B: AutodiffBackend>(
    run: Option<&RunDir>,
    model: Model<B>,
    config: &OptimConfig,
    device: &B::Device,
) -> Result<(Model<B>, Optim<B>, usize), TrainError> {
    let checkpoint = match run {
        Some(run) => run.checkpoints().load_latest_good()?,
        None => None,
    };
    let Some(checkpoint) = checkpoint else {
        let optim = StageOptimizer::new(config.clone(), &model);
        return Ok((model, optim, 0));
    };
    // Checkpoints from before the optimiser choice existed were all AdamW.
    let saved = checkpoint
        .state
        .get("optimizer")
        .and_then(|v| v.as_str())
        .unwrap_or("adamw");
    if saved != config.optimizer.name() {
        return Err(TrainError::Config(format!(
            "optimizer = \"{}\" but the checkpoint of step {} was written by {saved}; resume with the same optimizer",
            config.optimizer.name(),
            checkpoint.step
        )));
    }
    let rec = |source| TrainError::Record {
        what: format!("optimiser state of step {}", checkpoint.step),
        source,
    };
    let model = model_from(&checkpoint, model, device)?;
    let optim_bytes = checkpoint.file("optim.mpk")?.to_vec();
    let optim = match StageOptimizer::new(config.clone(), &model) {
        StageOptimizer::AdamW(o) => {
            let record: TwoSpeedRecord<B, Model<B>, _> =
                Recorder::<B>::load(&recorder(), optim_bytes, device).map_err(rec)?;
            StageOptimizer::AdamW(o.load_record(record))
        }
        StageOptimizer::Adafactor(o) => {
            let record: TwoSpeedRecord<B, Model<B>, _> =
                Recorder::<B>::load(&recorder(), optim_bytes, device).map_err(rec)?;
            StageOptimizer::Adafactor(o.load_record(record))
        }
    };
    Ok((model, optim, checkpoint.step))
}

fn model_from<B: Backend>(
    checkpoint: &Checkpoint,
    model: Model<B>,
    device: &B::Device,
) -> Result<Model<B>, TrainError> {
    let bytes = checkpoint.file("model.mpk")?.to_vec();
    let record = Recorder::<B>::load(&recorder(), bytes, device).map_err(|source| TrainError::Record {
        what: format!("model of step {}", checkpoint.step),
        source,
    })?;
    // Records hold f32: a bf16 base goes back to bf16 (its values are bf16 numbers, so exactly).
    let precision = model.precision();
    Ok(model.load_record(record).with_precision(precision)?)
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

/// Trains `model` (with `require_grad` already set by the method's [`mhr_core::TrainableSet`]) for
/// `config.steps` optimiser steps on `objective`: a [`crate::data::StepData`] (token loss) converts into one,
/// or pass [`Objective::TFew`]. With a run directory, metrics go to `metrics.jsonl` (with T-Few's three
/// terms), checkpoints are written every `checkpoint_every` steps, at the end and on interrupt, and an
/// existing checkpoint is resumed from.
///
/// `config.dropout_rate` sets T5's dropout for the stage only: the model comes back with its own.
pub fn train<'a, B: AutodiffBackend>(
    model: Model<B>,
    objective: impl Into<Objective<'a>>,
    config: &TrainConfig,
    options: &RunOptions,
) -> Result<(Model<B>, TrainOutcome), TrainError>
where
    Model<B>: AutodiffModule<B>,
{
    train_on(model, objective, config, options, &[])
}

/// [`train`] data-parallel over `devices`, one peer (a thread) per entry; a device named twice runs two
/// peers on it (CPU peers). The peers split each micro-batch's rows and sum their gradients through Burn's
/// collective operations ([`burn_collective`]), so the run (losses, clipping, checkpoints, resume)
/// equals one device with the whole batch up to the order of float sums; rank 0 writes the run directory.
/// An interrupt takes effect once the step under way is done. No device, or one: [`train`] on the
/// model's device, or that one.
pub fn train_on<'a, B: AutodiffBackend>(
    model: Model<B>,
    objective: impl Into<Objective<'a>>,
    config: &TrainConfig,
    options: &RunOptions,
    devices: &[B::Device],
) -> Result<(Model<B>, TrainOutcome), TrainError>
where
    Model<B>: AutodiffModule<B>,
{
    let objective = objective.into();
    let own_rate = model.config().dropout_rate;
    let model = match config.dropout_rate {
        Some(rate) => model.with_dropout_rate(rate)?,
        None => model,
    };
    let (model, outcome) = match devices {
        [] => {
            let device = model.device();
            train_steps(model, objective, config, options, &Peer::alone(&device))?
        }
        [device] => train_steps(
            model.fork(device),
            objective,
            config,
            options,
            &Peer::alone(device),
        )?,
        _ => {
            if StepShape::of(config).batch_size < devices.len() {
                return Err(TrainError::Config(format!(
                    "batch_size = {} cannot be split over {} data-parallel peers: give each at least one example",
                    config.batch_size,
                    devices.len()
                )));
            }
            let models: Vec<_> = devices
                .iter()
                .map(|device| std::sync::Mutex::new(Some(model.clone().fork(device))))
                .collect();
            drop(model);
            run_peers::<B::InnerBackend, _, _>(devices, |peer| {
                let model = models[peer.share.rank]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or_else(|| TrainError::Config("a data-parallel peer started twice".into()))?;
                train_steps(model, objective, config, options, &peer)
            })?
        }
    };
    match config.dropout_rate {
        Some(_) => Ok((model.with_dropout_rate(own_rate)?, outcome)),
        None => Ok((model, outcome)),
    }
}

fn train_steps<B: AutodiffBackend>(
    model: Model<B>,
    objective: Objective<'_>,
    config: &TrainConfig,
    options: &RunOptions,
    peer: &Peer<B::InnerBackend>,
) -> Result<(Model<B>, TrainOutcome), TrainError>
where
    Model<B>: AutodiffModule<B>,
{
    if objective.shape() != StepShape::of(config) {
        return Err(TrainError::Config(format!(
            "the data's steps are {:?}, but batch_size = {} and grad_accumulation = {}: build the sampler from \
             the stage's TrainConfig",
            objective.shape(),
            config.batch_size,
            config.grad_accumulation
        )));
    }
    let share = peer.share;
    let alone = share.count == 1;
    // Every peer resumes from the run directory; only rank 0 writes to it.
    let (run, label) = (options.dir, if share.writes() { options.label } else { "" });
    let writes = run.filter(|_| share.writes());
    let end = options.stop_after.map_or(config.steps, |s| s.min(config.steps));
    let device = model.device();
    if let Some(run) = writes {
        std::fs::create_dir_all(&run.path).map_err(TrainError::io(&run.path))?;
    }
    let (mut model, mut optim, start) = resume(run, model, &config.optim, &device)?;
    if let Some(run) = writes {
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
    let mut last_saved = (start > 0).then_some(start);
    let mut steps_done = end;
    let mut interrupted = false;
    let raised = || options.interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
    for step in start..end {
        if alone && raised() {
            if let Some(run) = writes
                && last_saved != Some(step)
            {
                save_checkpoint(run, step, &model, &optim)?;
            }
            progress.interrupted(step);
            (steps_done, interrupted) = (step, true);
            break;
        }
        // Per-step seed: the routing noise and dropout of a step do not depend on where the run was resumed.
        let step_seed = mix(config.seed, step as u64);
        let mut accumulator = GradientsAccumulator::<Model<B>>::new();
        let (mut step_loss, mut step_tokens) = (0.0, 0usize);
        // The objective's named loss terms, summed over the micro-batches like `step_loss`.
        let mut step_terms = BTreeMap::<&str, f64>::new();
        let micro_batches = config.grad_accumulation.max(1) as f64;
        for micro in 0..config.grad_accumulation.max(1) {
            // The micro-batch's draws, and each checkpointed segment's, from the step's seed and the micro-batch.
            let micro_seed = mix(step_seed, micro as u64);
            let batch = objective.micro_batch(
                &model,
                step,
                micro,
                config.label_smoothing,
                mode,
                share,
                micro_seed,
            )?;
            step_tokens += batch.tokens;
            let scale = |loss: Tensor<B, 1>| match batch.share_of_loss {
                Some(share) => loss * share / micro_batches,
                None => loss / micro_batches,
            };
            let (micro_loss, grads) = if config.checkpoint_activations {
                let seeds = |segment| mix(micro_seed, segment as u64);
                let (loss, terms, grads) = model.checkpointed_gradients(
                    batch.input_ids.clone(),
                    batch.attention_mask.clone(),
                    batch.labels.clone(),
                    &batch.ctx,
                    seeds,
                    |out| {
                        let micro_loss = batch.loss(out)?;
                        Ok::<_, TrainError>((scale(micro_loss.loss), micro_loss.terms))
                    },
                )?;
                (MicroLoss { loss, terms }, Some(grads))
            } else {
                let out = model.forward(
                    batch.input_ids.clone(),
                    batch.attention_mask.clone(),
                    batch.labels.clone(),
                    &batch.ctx,
                )?;
                let micro_loss = batch.loss(out)?;
                let loss = scale(micro_loss.loss);
                (MicroLoss { loss, ..micro_loss }, None)
            };
            let value: f64 = micro_loss.loss.clone().into_scalar().elem();
            if alone && !value.is_finite() {
                return Err(TrainError::NonFiniteLoss { step, loss: value });
            }
            step_loss += value;
            for (name, term) in micro_loss.terms {
                *step_terms.entry(name).or_default() += term.into_scalar().elem::<f64>() / micro_batches;
            }
            let grads =
                grads.unwrap_or_else(|| GradientsParams::from_grads(micro_loss.loss.backward(), &model));
            accumulator.accumulate(&model, grads);
        }
        // Peers sum their gradients, losses, token counts and interrupt flags; alone, this is the identity.
        let values: Vec<f64> = [step_loss, step_tokens as f64]
            .into_iter()
            .chain(step_terms.values().copied())
            .chain([f64::from(u8::from(!alone && raised()))])
            .collect();
        let (grads, sums) = sum_step(peer, &model, accumulator.grads(), &values)?;
        step_loss = sums[0];
        tokens += sums[1] as usize;
        for (term, sum) in step_terms.values_mut().zip(&sums[2..]) {
            *term = *sum;
        }
        if !alone && !step_loss.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step,
                loss: step_loss,
            });
        }
        let stop_now = sums.last().is_some_and(|&flags| flags > 0.0);
        let (updated, grad_norm) = optim.step(config.schedule.factor(step, config.steps), model, grads);
        model = updated;
        let done = step + 1;
        progress.update(
            done,
            step_loss,
            tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9),
        );
        if done.is_multiple_of(config.log_every.max(1)) || done == end {
            losses.push((done, step_loss));
            if let Some(run) = writes {
                let mut line = serde_json::json!({
                    "stage": label, "step": done, "loss": step_loss, "grad_norm": grad_norm,
                    "lr_factor": config.schedule.factor(step, config.steps),
                });
                if let Some(fields) = line.as_object_mut() {
                    fields.extend(
                        step_terms
                            .iter()
                            .map(|(k, v)| (k.to_string(), serde_json::json!(v))),
                    );
                }
                run.log(&line)?;
            }
        }
        if let Some(run) = writes {
            let periodic = config.checkpoint_every > 0 && done.is_multiple_of(config.checkpoint_every);
            if periodic || done == end || stop_now {
                save_checkpoint(run, done, &model, &optim)?;
                last_saved = Some(done);
            }
        }
        if stop_now && done < end {
            progress.interrupted(done);
            (steps_done, interrupted) = (done, true);
            break;
        }
    }
    progress.finish();
    let tokens_per_s = tokens as f64 / clock.elapsed().as_secs_f64().max(1e-9);
    Ok((
        model,
        TrainOutcome {
            steps: steps_done,
            losses,
            tokens_per_s,
            interrupted,
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

    fn interrupted(&self, step: usize) {
        let message = format!("{}: interrupted after step {step}/{}", self.label, self.total);
        match &self.bar {
            Some(bar) => bar.println(message),
            None if self.label.is_empty() => {}
            None => eprintln!("{message}"),
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
    let bytes = serde_json::to_vec_pretty(value).map_err(TrainError::from)?;
    mhr_core::io::write_atomic(path, &bytes).map_err(TrainError::from)
}
