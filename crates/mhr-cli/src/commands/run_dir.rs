//! The run folder that `mhr train` and `mhr adapt` write and `adapt`, `eval` and `export` read back.
//!
//! ```text
//! RUN/config.toml      the resolved pre-training settings (absolute paths)    — `mhr train`
//! RUN/adapt.toml       the few-shot settings and the pre-training run used      — `mhr adapt`
//! RUN/tasks.json       task name ↔ routing-row id
//! RUN/metrics.jsonl    one line per logged step
//! RUN/checkpoints/     model + optimiser state (the source of truth, and what --resume continues)
//! RUN/adapter/         the final adapters as a peft folder (absent for full-ft)
//! ```
//!
//! A run's model is rebuilt from its settings (base checkpoint, method, sizes; for an adapted run the
//! pre-trained run's model prepared for adaptation) and its latest checkpoint's weights put into it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::peft::{TASKS_FILE, TargetModules};
use mhr_core::{Method, TaskMap};
use mhr_data::{
    Encoder, EncoderConfig, FewShotSplit, SniDir, SniPromptFormat, SniTask, SniTestSet, T0Dataset, T0Dir,
    TextTokenizer, sni_few_shot,
};
use mhr_models::{CONFIG_FILE, ModelError, Precision, T5Config, T5ForConditionalGeneration, has_weights};
use mhr_train::TrainConfig;
use mhr_train::methods::AdapterSizes;
use mhr_train::pipeline::{StageData, StageSeeds, adaptation_model, pretraining_model, train_stage_on};
use mhr_train::sni::load_tokenizer;
use mhr_train::trainer::{RunDir, RunOptions, load_latest};
use serde::{Deserialize, Serialize};

pub type Model<B> = T5ForConditionalGeneration<B>;

pub const TRAIN_CONFIG: &str = "config.toml";
pub const ADAPT_CONFIG: &str = "adapt.toml";
/// The final adapters of a run, as a peft folder.
pub const ADAPTER_DIR: &str = "adapter";
/// `tokenizer = "byte"`: ByT5-style byte tokens, for models that ship no `tokenizer.json`.
pub const BYTE_TOKENIZER: &str = "byte";

/// `config.toml` of `mhr train`: multi-task pre-training of one method on SNI tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// A method of the table (`lora`, `ia3`, `private`, `poly`, `mhr`, `full-ft`, …); `-z` / `-mu`
    /// variants pre-train as their base method.
    pub method: String,
    /// HF T5 folder: config.json + model.safetensors (or its sharded index).
    pub model: PathBuf,
    /// A tokenizer.json, or `byte`; default: the model folder's tokenizer.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// A Super-NaturalInstructions folder (`tasks/*.json`).
    pub sni: PathBuf,
    /// Task list file (one name per line) of the training tasks.
    pub train_tasks: PathBuf,
    /// Task list file of held-out tasks: they get routing rows (untouched in pre-training) for `mhr adapt`;
    /// SNI task names, or T0 held-out dataset names (`rte`, `copa`, …) for `mhr adapt --t0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_tasks: Option<PathBuf>,
    /// Instances kept per task, in file order.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    #[serde(default = "default_max_source_len")]
    pub max_source_len: usize,
    #[serde(default = "default_max_target_len")]
    pub max_target_len: usize,
    /// Adapted linear layers, by HF module name (peft's `target_modules`); (IA)^3 has fixed sites.
    #[serde(default = "default_targets")]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub adapter: AdapterSizes,
    /// The base weights' precision: `f32`, or `bf16` (adapters stay f32; flex or cuda).
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub train: TrainConfig,
}

fn default_max_instances() -> usize {
    164
}
fn default_max_source_len() -> usize {
    512
}
fn default_max_target_len() -> usize {
    128
}
fn default_targets() -> Vec<String> {
    ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
        .map(String::from)
        .to_vec()
}

/// `adapt.toml` of `mhr adapt`: few-shot adaptation of a pre-trained run to one held-out task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptSettings {
    /// The pre-training run (absolute path).
    pub pretrained: PathBuf,
    /// The adaptation variant: the pre-trained method, or its `-z` / `-mu` variant.
    pub method: String,
    /// An SNI task of the pre-training run's folder, or with `t0` a T0 held-out dataset (`rte`, `copa`, …).
    pub task: String,
    /// A T0 evaluation folder (absolute path): the task is multiple choice, trained with the T-Few loss and
    /// scored by rank classification. Absent (as in adaptations written before it existed): SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t0: Option<PathBuf>,
    /// Training examples drawn by `seed` (after the test set is taken out).
    pub k: usize,
    pub seed: u64,
    /// SNI only: the first `test_instances` instances of the task file are its test set, never trained on.
    pub test_instances: usize,
    /// The base weights' precision; absent: the pre-training run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    pub train: TrainConfig,
}

/// Reads a TOML file into `T`, naming the file (and the line, or the unknown key) on error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))
}

/// Writes `value` as TOML, atomically.
pub fn write_toml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = toml::to_string_pretty(value).with_context(|| format!("cannot write {}", path.display()))?;
    mhr_core::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Parses a method name, naming where it came from.
pub fn parse_method(name: &str, origin: &Path) -> Result<Method> {
    name.parse::<Method>()
        .map_err(|e| anyhow::anyhow!("{}: method: {e}", origin.display()))
}

/// Checks a model folder on the host: config.json parses and the weights file exists.
pub fn check_model_dir(dir: &Path) -> Result<T5Config> {
    if !dir.is_dir() {
        bail!("model {}: not a directory", dir.display());
    }
    let config = T5Config::load(dir.join(CONFIG_FILE)).with_context(|| format!("model {}", dir.display()))?;
    if !has_weights(dir) {
        bail!(
            "{}",
            ModelError::NoWeights {
                dir: dir.to_path_buf()
            }
        );
    }
    Ok(config)
}

impl TrainSettings {
    pub fn method(&self, origin: &Path) -> Result<Method> {
        parse_method(&self.method, origin)
    }

    /// The tokenizer of `tokenizer` (or the model's), checked against the model's vocabulary.
    pub fn tokenizer(&self, model: &T5Config) -> Result<Arc<dyn TextTokenizer>> {
        let path = match self.tokenizer.as_deref() {
            Some(BYTE_TOKENIZER) => None,
            Some(path) => Some(PathBuf::from(path)),
            None => {
                let path = self.model.join("tokenizer.json");
                if !path.is_file() {
                    bail!(
                        "{}: not found; set `tokenizer` (--tokenizer) to a tokenizer.json or to `{BYTE_TOKENIZER}`",
                        path.display()
                    );
                }
                Some(path)
            }
        };
        Ok(load_tokenizer(path.as_deref(), model.vocab_size)?)
    }

    /// The encoder of the run's prompts (mttl's SNI format) and lengths.
    pub fn encoder(&self, model: &T5Config) -> Result<Encoder> {
        self.encoder_with_suffix(model, SniPromptFormat::Mttl.source_suffix())
    }

    /// The run's tokenizer and lengths; an over-long source keeps `suffix` at its end (`None`: cut the end).
    fn encoder_with_suffix(&self, model: &T5Config, suffix: Option<&str>) -> Result<Encoder> {
        let config = EncoderConfig {
            max_source_len: self.max_source_len,
            max_target_len: self.max_target_len,
            source_suffix: suffix.map(String::from),
        };
        Ok(Encoder::new(self.tokenizer(model)?, config)?)
    }

    pub fn targets(&self) -> TargetModules {
        TargetModules::Names(self.target_modules.clone())
    }

    /// The random streams of the pre-training: all from the run's seed.
    pub fn stage_seeds(&self) -> StageSeeds {
        StageSeeds::pretraining(self.train.seed)
    }

    /// The base model with the method's pre-training adapters (initialised from the run's seed).
    pub fn skeleton<B: Backend>(
        &self,
        method: Method,
        n_tasks: usize,
        device: &B::Device,
    ) -> Result<Model<B>> {
        let model = Model::<B>::load_as(&self.model, self.precision, device)
            .with_context(|| format!("model {}", self.model.display()))?;
        Ok(pretraining_model(
            model,
            method,
            &self.adapter,
            &self.targets(),
            n_tasks,
            self.stage_seeds(),
        )?)
    }
}

impl AdaptSettings {
    /// The base's precision: the adaptation's own, else the pre-training run's.
    pub fn precision_over(&self, pretraining: &TrainSettings) -> Precision {
        self.precision.unwrap_or(pretraining.precision)
    }

    /// The routing row of the adapted task among the pre-training run's tasks. A method that does not route by
    /// task uses row 0 for a task the run does not list.
    pub fn task_id(&self, pretrained: &Run, method: Method) -> Result<usize> {
        match pretrained.tasks.id(&self.task) {
            Ok(id) => Ok(id),
            Err(_) if !method.is_routed() => Ok(0),
            Err(_) => bail!(
                "--task {}: not among the {} tasks of {} (a routed method needs the task's routing row: list it in \
                 held_out_tasks when training)",
                self.task,
                pretrained.tasks.len(),
                pretrained.dir.join(TASKS_FILE).display()
            ),
        }
    }

    /// The random streams of the adaptation of the task with routing row `task_id`.
    pub fn stage_seeds(&self, task_id: usize) -> StageSeeds {
        StageSeeds::adaptation(self.seed, task_id)
    }

    /// The T0 dataset named by `task` when the adaptation is on T0 data (`None` for SNI).
    pub fn t0_dataset(&self) -> Result<Option<(T0Dir, T0Dataset)>> {
        let Some(dir) = &self.t0 else {
            return Ok(None);
        };
        let Some(dataset) = T0Dataset::from_name(&self.task) else {
            let known: Vec<&str> = T0Dataset::ALL.iter().map(|d| d.name()).collect();
            bail!(
                "--task {}: not a T0 held-out dataset (known: {})",
                self.task,
                known.join(", ")
            );
        };
        if !dir.is_dir() {
            bail!("--t0 {}: not a directory", dir.display());
        }
        let dir = T0Dir::open(dir)?;
        Ok(Some((dir, dataset)))
    }

    /// The encoder of the task's examples: the run's (mttl's SNI prompt format) for SNI, the run's lengths
    /// with plain truncation for T0's promptsource prompts.
    pub fn encoder(&self, pretrained: &TrainSettings, model: &T5Config) -> Result<Encoder> {
        match self.t0 {
            Some(_) => pretrained.encoder_with_suffix(model, None),
            None => pretrained.encoder(model),
        }
    }

    /// The few-shot split of `task`. SNI: loaded with room for the test set and `2k` more instances. T0:
    /// T-Few's protocol (`T0Dir::few_shot`) without validation rows; its test set is the evaluation rows
    /// not drawn for training.
    pub fn split(&self, pretrained: &TrainSettings) -> Result<FewShotSplit> {
        if let Some((dir, dataset)) = self.t0_dataset()? {
            return Ok(dir.few_shot(dataset, self.k, 0, self.seed)?);
        }
        let sni = SniDir::open(&pretrained.sni)?;
        let max = pretrained.max_instances.max(self.test_instances + 2 * self.k);
        let task = SniTask::read(&sni.task_path(&self.task), Some(max))?.to_task(&SniPromptFormat::Mttl);
        Ok(sni_few_shot(
            &task,
            SniTestSet::First(self.test_instances),
            self.k,
            self.seed,
        )?)
    }
}

/// What a run folder holds: pre-training, or the adaptation of a pre-training run.
#[derive(Debug, Clone)]
pub enum RunKind {
    Pretrain,
    Adapt(Box<AdaptSettings>, Box<Run>),
}

/// A run folder, read back.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    /// The pre-training settings (of the pre-trained run, for an adapted one).
    pub settings: TrainSettings,
    /// The method whose adapters the run's model carries.
    pub method: Method,
    pub tasks: TaskMap,
    pub kind: RunKind,
}

impl Run {
    /// Whether `dir` looks like a run folder (its config is there), without reading it.
    pub fn is_run(dir: &Path) -> bool {
        dir.join(TRAIN_CONFIG).is_file() || dir.join(ADAPT_CONFIG).is_file()
    }

    /// Opens a run folder written by `mhr train` or `mhr adapt`.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("--run {}: not a directory", dir.display());
        }
        let tasks_path = dir.join(TASKS_FILE);
        let adapt_path = dir.join(ADAPT_CONFIG);
        let train_path = dir.join(TRAIN_CONFIG);
        if adapt_path.is_file() {
            let adapt: AdaptSettings = read_toml(&adapt_path)?;
            let method = parse_method(&adapt.method, &adapt_path)?;
            let pretrained =
                Run::open(&adapt.pretrained).with_context(|| format!("{}", adapt_path.display()))?;
            Ok(Self {
                dir: dir.to_path_buf(),
                settings: pretrained.settings.clone(),
                method,
                tasks: pretrained.tasks.clone(),
                kind: RunKind::Adapt(Box::new(adapt), Box::new(pretrained)),
            })
        } else if train_path.is_file() {
            let settings: TrainSettings = read_toml(&train_path)?;
            let method = settings.method(&train_path)?;
            let tasks = TaskMap::load(&tasks_path)?;
            Ok(Self {
                dir: dir.to_path_buf(),
                settings,
                method,
                tasks,
                kind: RunKind::Pretrain,
            })
        } else {
            bail!(
                "--run {}: not an mhr run (no {TRAIN_CONFIG} or {ADAPT_CONFIG})",
                dir.display()
            );
        }
    }

    /// The run with its base in `precision` wherever it is loaded (its pre-training run's too): to evaluate it in
    /// another precision than it was trained in.
    pub fn in_precision(mut self, precision: Precision) -> Self {
        self.settings.precision = precision;
        if let RunKind::Adapt(adapt, pretrained) = &mut self.kind {
            adapt.precision = Some(precision);
            **pretrained = pretrained.as_ref().clone().in_precision(precision);
        }
        self
    }

    /// The steps the run is configured for.
    pub fn total_steps(&self) -> usize {
        match &self.kind {
            RunKind::Pretrain => self.settings.train.steps,
            RunKind::Adapt(adapt, _) => adapt.train.steps,
        }
    }

    /// The run's model structure, before its own checkpoint is loaded: the pre-training skeleton, or the
    /// pre-trained model (with its final weights) prepared for adaptation.
    pub fn skeleton<B: Backend>(&self, device: &B::Device) -> Result<Model<B>> {
        match &self.kind {
            RunKind::Pretrain => self.settings.skeleton(self.method, self.tasks.len(), device),
            RunKind::Adapt(adapt, pretrained) => {
                let seeds = adapt.stage_seeds(adapt.task_id(pretrained, self.method)?);
                let precision = adapt.precision_over(&pretrained.settings);
                let model = pretrained.load_model::<B>(device)?.with_precision(precision)?;
                Ok(adaptation_model(
                    model,
                    self.method,
                    &self.settings.adapter,
                    seeds,
                )?)
            }
        }
    }

    /// The run's trained model: its skeleton with the weights of its final checkpoint. A run that stopped
    /// before its last step is refused.
    pub fn load_model<B: Backend>(&self, device: &B::Device) -> Result<Model<B>> {
        let skeleton = self.skeleton::<B>(device)?;
        let Some((model, step)) = load_latest(&RunDir::new(&self.dir), skeleton, device)? else {
            bail!("{}: the run has no checkpoint", self.dir.display());
        };
        if step < self.total_steps() {
            bail!(
                "{}: the run stopped at step {step} of {}; finish it with --resume first",
                self.dir.display(),
                self.total_steps()
            );
        }
        Ok(model)
    }
}

/// Trains `model` on `data` (data-parallel when `devices` names several) with its checkpoints and metrics
/// in the run folder `dir`; `Some` model once all `config.steps` are done, `None` when `stop_after` ended it
/// early. Ctrl-C checkpoints the steps done and stops with a hint to resume (a second one exits at once).
#[allow(clippy::too_many_arguments)]
pub fn train_in_run<B: AutodiffBackend>(
    model: Model<B>,
    data: StageData<'_>,
    config: &TrainConfig,
    seeds: StageSeeds,
    dir: &Path,
    stop_after: Option<usize>,
    label: &str,
    devices: &[B::Device],
) -> Result<Option<Model<B>>> {
    let interrupt = mhr_train::interrupt::sigint_flag()?;
    let run = RunDir::new(dir);
    let options = RunOptions {
        dir: Some(&run),
        stop_after,
        label,
        interrupt: Some(&interrupt),
    };
    let (model, outcome) = train_stage_on(model, data, config, seeds, &options, devices)?;
    if outcome.interrupted {
        bail!(
            "interrupted after step {} of {}; its checkpoint is written, continue with --resume",
            outcome.steps,
            config.steps
        );
    }
    Ok((outcome.steps == config.steps).then_some(model))
}

/// Resolves a path to an absolute one (so that a run's config works from any directory).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("{}", path.display()))
}
