//! What `mhr score` and `mhr generate` share: the model flags, reading and validating an input batch
//! file, the size guard, writing the output atomically, and the panic guard around backend work.
//!
//! Every input is checked on the host, against the model's `config.json` and the adapter's config,
//! before a backend starts: a bad file is reported with its path, key and offending value, and
//! nothing is written. Panics from deeper layers are caught as a last line of defence only.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::tensor::TensorData;
use mhr_core::io::{SafetensorsFile, write_safetensors};
use mhr_core::peft::{PeftAdapter, PeftKind};
use mhr_core::{AdapterHost, IGNORE_INDEX, RoutingContext, RoutingMode};
use mhr_models::hub::{Hub, ModelFiles};
use mhr_models::{CONFIG_FILE, Precision, T5Config, T5ForConditionalGeneration};

use crate::device::{DeviceSpec, ensure_compiled};

/// `--model`, `--adapter`, `--device` and the size guard, shared by the commands that run a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// HuggingFace T5 checkpoint folder: config.json + model.safetensors (or model.safetensors.index.json
    /// with its shards, or pytorch_model.bin, or pytorch_model.bin.index.json with its shards), or a Hugging Face
    /// Hub repo id such as google/t5-small-lm-adapt (fetched into the HF cache once, then read offline).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// peft adapter folder (adapter_config.json + adapter_model.safetensors) of type POLY, LORA or IA3, or
    /// a finished run folder of `mhr train` / `mhr adapt` (its `adapter/`).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Backend and device: cpu, ndarray, flex, wgpu[:N] or cuda[:N] (as compiled in; see `mhr devices`).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// The base weights' precision: f32, or bf16 (adapters stay f32; flex or cuda).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Refuse inputs whose largest intermediate tensor (attention scores, logits, key/value cache)
    /// would exceed this many GiB.
    #[arg(long, value_name = "GIB", default_value_t = 8.0)]
    pub max_tensor_gib: f64,
}

/// The model folder's config and the adapter (read on the host, before any backend starts).
pub struct Prepared {
    pub model_dir: PathBuf,
    pub precision: Precision,
    pub config: T5Config,
    /// The adapter folder and its contents.
    pub adapter: Option<(PathBuf, PeftAdapter)>,
    /// `Some(n)` when the adapter routes by task (POLY / MHR): task ids are required and below `n`.
    pub n_tasks: Option<usize>,
}

impl ModelArgs {
    /// Checks the device, the model folder's config and the adapter; reads no model weights yet.
    pub fn prepare(&self) -> Result<Prepared> {
        ensure_compiled(self.device)?;
        if !(self.max_tensor_gib.is_finite() && self.max_tensor_gib > 0.0) {
            bail!(
                "--max-tensor-gib must be a positive number, found {}",
                self.max_tensor_gib
            );
        }
        let model_dir = model_files(&self.model)?.dir;
        let config = T5Config::load(model_dir.join(CONFIG_FILE))
            .with_context(|| format!("--model {}", self.model.display()))?;
        let (adapter, n_tasks) = match &self.adapter {
            None => (None, None),
            Some(dir) => {
                if !dir.is_dir() {
                    bail!("--adapter {}: not a directory", dir.display());
                }
                // A finished run of `mhr train` / `mhr adapt` holds its final adapters in `adapter/`.
                let run_adapter = dir.join(crate::commands::run_dir::ADAPTER_DIR);
                let folder = if !dir.join(mhr_core::peft::CONFIG_FILE).exists()
                    && run_adapter.join(mhr_core::peft::CONFIG_FILE).is_file()
                {
                    run_adapter
                } else {
                    dir.clone()
                };
                let adapter =
                    PeftAdapter::load(&folder).with_context(|| format!("--adapter {}", dir.display()))?;
                let n_tasks = match adapter.config.kind {
                    PeftKind::Poly { n_tasks, .. } => Some(n_tasks),
                    PeftKind::Lora { .. } | PeftKind::Ia3 { .. } => None,
                };
                (Some((dir.clone(), adapter)), n_tasks)
            }
        };
        Ok(Prepared {
            model_dir,
            precision: self.precision,
            config,
            adapter,
            n_tasks,
        })
    }

    pub fn max_tensor_bytes(&self) -> u128 {
        (self.max_tensor_gib * (1u64 << 30) as f64) as u128
    }
}

impl Prepared {
    /// Loads the weights on `device` and puts the adapter on them.
    pub fn load_model<B: Backend>(&self, device: &B::Device) -> Result<T5ForConditionalGeneration<B>> {
        let model = self.load_base(device)?;
        Ok(match &self.adapter {
            Some((dir, adapter)) => model
                .with_peft_adapter(adapter, &mhr_core::RoutingConfig::default())
                .with_context(|| format!("--adapter {}", dir.display()))?,
            None => model,
        })
    }

    /// The model without the adapter.
    pub fn load_base<B: Backend>(&self, device: &B::Device) -> Result<T5ForConditionalGeneration<B>> {
        T5ForConditionalGeneration::<B>::load_as(&self.model_dir, self.precision, device)
            .with_context(|| format!("--model {}", self.model_dir.display()))
    }

    /// The serving engine: the model, with the adapter for the served tasks.
    pub fn engine<B: Backend>(&self, device: &B::Device) -> Result<mhr_serve::Engine<B>> {
        let adapter = self.adapter.as_ref();
        mhr_serve::Engine::new(self.load_base(device)?, adapter.map(|(_, a)| a)).with_context(
            || match adapter {
                Some((dir, _)) => format!("--adapter {}", dir.display()),
                None => format!("--model {}", self.model_dir.display()),
            },
        )
    }
}

/// An integer matrix read from the batch file.
#[derive(Debug, Clone)]
pub struct IntMatrix {
    pub values: Vec<i64>,
    pub rows: usize,
    pub cols: usize,
}

impl IntMatrix {
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.values.clone(), [self.rows, self.cols]),
            device,
        )
    }
}

/// The tensors of an input batch file, checked for dtype, rank and agreeing shapes.
#[derive(Debug, Clone)]
pub struct InputBatch {
    pub path: PathBuf,
    pub input_ids: IntMatrix,
    pub attention_mask: IntMatrix,
    pub labels: Option<IntMatrix>,
    pub task_ids: Option<Vec<i64>>,
}

/// Reads an integer tensor of rank `rank`, naming the file and key in every error.
fn read_int(file: &SafetensorsFile, key: &str, rank: usize, layout: &str) -> Result<(Vec<i64>, Vec<usize>)> {
    let path = file.path().display();
    let Some(shape) = file.shape(key) else {
        bail!("{path}: tensor `{key}` is missing (expected an int64 tensor {layout})");
    };
    if shape.len() != rank {
        bail!("{path}: tensor `{key}` has shape {shape:?}, expected {layout}");
    }
    if shape.contains(&0) {
        bail!("{path}: tensor `{key}` has shape {shape:?} with an empty dimension, expected {layout}");
    }
    let data = file.i64(key)?;
    Ok((data.iter::<i64>().collect(), shape))
}

impl InputBatch {
    /// Reads `input_ids`, `attention_mask`, `labels` (when `with_labels`) and `task_ids` (when present).
    pub fn read(path: &Path, with_labels: bool) -> Result<Self> {
        if path.is_dir() {
            bail!(
                "--batch {}: is a directory, expected a safetensors file",
                path.display()
            );
        }
        let file = SafetensorsFile::open(path)?;
        let shown = path.display();
        let (ids, shape) = read_int(&file, "input_ids", 2, "[batch, length]")?;
        let input_ids = IntMatrix {
            values: ids,
            rows: shape[0],
            cols: shape[1],
        };
        let (mask, mask_shape) = read_int(&file, "attention_mask", 2, "[batch, length]")?;
        if mask_shape != shape {
            bail!(
                "{shown}: tensor `attention_mask` has shape {mask_shape:?}, expected {shape:?} (the shape of \
                 `input_ids`)"
            );
        }
        let attention_mask = IntMatrix {
            values: mask,
            rows: shape[0],
            cols: shape[1],
        };
        let b = shape[0];
        let labels = if with_labels {
            let (labels, label_shape) = read_int(&file, "labels", 2, "[batch, target length]")?;
            if label_shape[0] != b {
                bail!(
                    "{shown}: tensor `labels` has shape {label_shape:?}, expected [{b}, target length] (the \
                     batch of `input_ids`)"
                );
            }
            Some(IntMatrix {
                values: labels,
                rows: b,
                cols: label_shape[1],
            })
        } else {
            None
        };
        let task_ids = if file.contains("task_ids") {
            let (ids, task_shape) = read_int(&file, "task_ids", 1, "[batch]")?;
            if task_shape[0] != b {
                bail!(
                    "{shown}: tensor `task_ids` has shape {task_shape:?}, expected [{b}] (one per example)"
                );
            }
            Some(ids)
        } else {
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            input_ids,
            attention_mask,
            labels,
            task_ids,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.input_ids.rows
    }

    /// Checks every value against the model's vocabulary and the adapter's task count.
    pub fn validate(&self, config: &T5Config, n_tasks: Option<usize>) -> Result<()> {
        let shown = self.path.display();
        let vocab = config.vocab_size as i64;
        let at = |m: &IntMatrix, i: usize| format!("[{}, {}]", i / m.cols, i % m.cols);
        let ids = &self.input_ids;
        if let Some((i, id)) = ids
            .values
            .iter()
            .enumerate()
            .find(|(_, v)| !(0..vocab).contains(*v))
        {
            bail!(
                "{shown}: `input_ids` holds token id {id} at {}, outside the vocabulary of {vocab} (vocab_size \
                 in config.json)",
                at(ids, i)
            );
        }
        let mask = &self.attention_mask;
        if let Some((i, v)) = mask.values.iter().enumerate().find(|(_, v)| **v != 0 && **v != 1) {
            bail!(
                "{shown}: `attention_mask` holds {v} at {}, expected 0 or 1",
                at(mask, i)
            );
        }
        if let Some(labels) = &self.labels {
            let bad = |v: &i64| !((0..vocab).contains(v) || *v == IGNORE_INDEX);
            if let Some((i, id)) = labels.values.iter().enumerate().find(|(_, v)| bad(v)) {
                bail!(
                    "{shown}: `labels` holds token id {id} at {}, outside the vocabulary of {vocab} (and not \
                     {IGNORE_INDEX}, the ignored label)",
                    at(labels, i)
                );
            }
        }
        match (n_tasks, &self.task_ids) {
            (Some(_), None) => bail!(
                "{shown}: tensor `task_ids` is missing: the adapter routes by task, so the batch needs an int64 \
                 tensor `task_ids` [{}]",
                self.batch_size()
            ),
            (Some(n), Some(ids)) => {
                if let Some((i, id)) = ids.iter().enumerate().find(|(_, v)| !(0..n as i64).contains(*v)) {
                    bail!(
                        "{shown}: `task_ids` holds task id {id} at [{i}], outside the {n} tasks of the adapter \
                         (n_tasks in adapter_config.json)"
                    );
                }
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Deterministic (evaluation) routing with this batch's task ids, if any.
    pub fn routing<B: Backend>(&self, device: &B::Device) -> RoutingContext<B> {
        match &self.task_ids {
            Some(ids) => RoutingContext::new(
                Tensor::from_data(TensorData::new(ids.clone(), [ids.len()]), device),
                RoutingMode::Deterministic,
            ),
            None => RoutingContext::untasked(),
        }
    }
}

/// Refuses work whose largest tensor would exceed `limit` bytes; `sizes` are (what, f32 elements) with
/// the element counts as factors, multiplied without overflow.
/// `--model`: a model folder, or a Hugging Face Hub repo id fetched into the HF cache (offline: its cached copy).
pub fn model_files(spec: &Path) -> Result<ModelFiles> {
    Hub::from_env()
        .resolve(&spec.to_string_lossy())
        .with_context(|| format!("--model {}", spec.display()))
}

pub fn check_sizes(sizes: &[(&str, &[usize])], limit: u128) -> Result<()> {
    for (what, factors) in sizes {
        let bytes = factors
            .iter()
            .try_fold(4u128, |acc, &f| acc.checked_mul(f as u128))
            .unwrap_or(u128::MAX);
        if bytes > limit {
            bail!(
                "the {what} would take {} GiB, more than --max-tensor-gib {} allows; use a smaller batch or \
                 shorter sequences (or raise the limit)",
                fmt_gib(bytes),
                fmt_gib(limit)
            );
        }
    }
    Ok(())
}

fn fmt_gib(bytes: u128) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1e6 {
        format!("{gib:.3e}")
    } else {
        format!("{gib:.2}")
    }
}

/// Checks that `--out` can be written (its folder exists, it is not a folder) before any work runs.
pub fn check_out_path(out: &Path) -> Result<()> {
    if out.is_dir() {
        bail!("--out {}: is a directory, expected a file path", out.display());
    }
    if out.file_name().is_none() {
        bail!("--out {}: not a file path", out.display());
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist",
            out.display(),
            parent.display()
        );
    }
    Ok(())
}

/// Writes the output tensors atomically (temporary file beside `out`, then rename).
pub fn write_output(out: &Path, tensors: Vec<(String, TensorData)>) -> Result<()> {
    write_safetensors(out, tensors, None).with_context(|| format!("cannot write --out {}", out.display()))
}

/// The message of the last panic caught by [`catch_panics`], recorded by its hook.
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Runs `work`, turning a panic into an error (a last line of defence: inputs are validated before).
/// The default hook's multi-line report is replaced by the one-line error while `work` runs.
pub fn catch_panics<T>(what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let message = panic_text(info.payload());
        let located = match info.location() {
            Some(l) => format!("{message} (at {}:{})", l.file(), l.line()),
            None => message,
        };
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            slot.get_or_insert(located);
        }
    }));
    let result = catch_unwind(AssertUnwindSafe(work));
    std::panic::set_hook(previous);
    let recorded = PANIC_MESSAGE.lock().ok().and_then(|mut slot| slot.take());
    match result {
        Ok(result) => result,
        Err(payload) => {
            let message = recorded.unwrap_or_else(|| panic_text(payload.as_ref()));
            Err(anyhow!("internal error while {what}: {message}"))
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}
