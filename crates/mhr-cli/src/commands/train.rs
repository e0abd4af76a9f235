//! `mhr train`: multi-task pre-training of one method on SNI tasks, into a run folder (see
//! [`super::run_dir`]). Settings come from `--config FILE.toml`, overridden by flags; `--resume` continues
//! a run from its latest checkpoint, with the settings it was started with.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::AdapterHost;
use mhr_core::Method;
use mhr_core::TaskMap;
use mhr_core::peft::TASKS_FILE;
use mhr_data::EncodedExample;
use mhr_data::{SniDir, T0Dataset, TaskIndex, TaskList};
use mhr_models::{Precision, check_dropout_rate};
use mhr_train::pipeline::StageData;
use mhr_train::sni::{encode_tasks, load_tasks};

use crate::commands::common::{catch_panics, model_files};
use crate::commands::run_dir::{
    ADAPTER_DIR, TRAIN_CONFIG, TrainSettings, absolute, check_model_dir, read_toml, train_in_run, write_toml,
};
use crate::device::{BackendTask, DeviceSpec, Devices, ensure_compiled, ensure_precision, with_backend};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Settings (TOML; see docs/cli.md). Flags below override its keys.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// The run folder to create (it must not exist, or be empty), or with --resume to continue.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its latest checkpoint, with its own config.toml.
    #[arg(long, conflicts_with_all = ["config", "method", "model", "tokenizer", "sni", "train_tasks",
          "held_out_tasks", "steps", "batch_size", "seed", "lr", "precision", "checkpoint_activations"])]
    pub resume: bool,
    /// `method`: lora, ia3, private, poly, mhr, full-ft (or a -z / -mu variant).
    #[arg(long)]
    pub method: Option<String>,
    /// `model`: HF T5 folder (config.json + weights), or a Hugging Face Hub repo id (fetched into the HF cache).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// `tokenizer`: a tokenizer.json, or `byte`.
    #[arg(long, value_name = "FILE|byte")]
    pub tokenizer: Option<String>,
    /// `sni`: a Super-NaturalInstructions folder.
    #[arg(long, value_name = "DIR")]
    pub sni: Option<PathBuf>,
    /// `train_tasks`: task list file of the training tasks.
    #[arg(long, value_name = "FILE")]
    pub train_tasks: Option<PathBuf>,
    /// `held_out_tasks`: task list file of the tasks kept for `mhr adapt` (SNI tasks, or T0 held-out dataset
    /// names such as rte for `mhr adapt --t0`).
    #[arg(long, value_name = "FILE")]
    pub held_out_tasks: Option<PathBuf>,
    /// `train.steps`.
    #[arg(long)]
    pub steps: Option<usize>,
    /// `train.batch_size`.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// `train.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `train.optim.lr`.
    #[arg(long)]
    pub lr: Option<f64>,
    /// `precision`: f32, or bf16 (base weights in bf16, adapters in f32; flex or cuda).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// `train.checkpoint_activations`: recompute each T5 block in backward instead of keeping its activations.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub checkpoint_activations: Option<bool>,
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
    /// The config file's table with the flags' keys set over it.
    fn settings(&self) -> Result<(TrainSettings, PathBuf)> {
        let (mut table, origin) = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
                (table, path.clone())
            }
            None => (toml::Table::new(), PathBuf::from("the command line")),
        };
        let path = |p: &Path| toml::Value::String(p.display().to_string());
        let top = [
            ("method", self.method.clone().map(toml::Value::String)),
            ("model", self.model.as_deref().map(path)),
            ("tokenizer", self.tokenizer.clone().map(toml::Value::String)),
            ("sni", self.sni.as_deref().map(path)),
            ("train_tasks", self.train_tasks.as_deref().map(path)),
            ("held_out_tasks", self.held_out_tasks.as_deref().map(path)),
            (
                "precision",
                self.precision.map(|p| toml::Value::String(p.to_string())),
            ),
        ];
        for (key, value) in top {
            if let Some(value) = value {
                table.insert(key.into(), value);
            }
        }
        let int = |v: u64| toml::Value::Integer(v as i64);
        let train_keys = [
            ("steps", self.steps.map(|v| int(v as u64))),
            ("batch_size", self.batch_size.map(|v| int(v as u64))),
            ("seed", self.seed.map(int)),
        ];
        for (key, value) in train_keys {
            if let Some(value) = value {
                section(&mut table, "train", &origin)?.insert(key.into(), value);
            }
        }
        if let Some(on) = self.checkpoint_activations {
            section(&mut table, "train", &origin)?
                .insert("checkpoint_activations".into(), toml::Value::Boolean(on));
        }
        if let Some(lr) = self.lr {
            let train = section(&mut table, "train", &origin)?;
            section(train, "optim", &origin)?.insert("lr".into(), toml::Value::Float(lr));
        }
        let settings: TrainSettings = table.try_into().map_err(|e: toml::de::Error| {
            let hint = if e.message().starts_with("missing field") {
                " (set it in --config or by its flag)"
            } else {
                ""
            };
            anyhow::anyhow!("{}: {}{hint}", origin.display(), e.message())
        })?;
        Ok((settings, origin))
    }
}

/// The sub-table `key` of `table`, created when missing.
fn section<'a>(table: &'a mut toml::Table, key: &str, origin: &Path) -> Result<&'a mut toml::Table> {
    match table
        .entry(key)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    {
        toml::Value::Table(t) => Ok(t),
        other => bail!(
            "{}: `{key}` must be a table, found {}",
            origin.display(),
            other.type_str()
        ),
    }
}

/// Makes every path of the settings absolute, so the run's config.toml works from any directory.
fn resolve_paths(settings: &mut TrainSettings) -> Result<()> {
    let files = model_files(&settings.model)?;
    settings.model = absolute(&files.dir)?;
    if settings.tokenizer.is_none() {
        settings.tokenizer = files.tokenizer.map(|t| t.display().to_string());
    }
    settings.sni = absolute(&settings.sni)?;
    settings.train_tasks = absolute(&settings.train_tasks)?;
    if let Some(held_out) = &settings.held_out_tasks {
        settings.held_out_tasks = Some(absolute(held_out)?);
    }
    if let Some(tokenizer) = settings
        .tokenizer
        .as_deref()
        .filter(|t| *t != super::run_dir::BYTE_TOKENIZER)
    {
        settings.tokenizer = Some(absolute(Path::new(tokenizer))?.display().to_string());
    }
    Ok(())
}

/// Everything the backend needs, prepared and checked on the host.
struct TrainTask {
    settings: TrainSettings,
    method: Method,
    tasks: TaskMap,
    examples: Vec<EncodedExample>,
    out: PathBuf,
    stop_after: Option<usize>,
    devices: Devices,
}

impl BackendTask for TrainTask {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<()> {
        let model = self
            .settings
            .skeleton::<B>(self.method, self.tasks.len(), &device)?;
        let devices = self.devices.of::<B>(&device);
        let data = StageData::Tokens(&self.examples);
        let seeds = self.settings.stage_seeds();
        let config = &self.settings.train;
        if let Some(model) = train_in_run(
            model,
            data,
            config,
            seeds,
            &self.out,
            self.stop_after,
            "train",
            &devices,
        )? && let Some(adapter) = model.peft_adapter(&self.tasks, self.settings.model.to_str())?
        {
            adapter.save(self.out.join(ADAPTER_DIR))?;
        }
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    let devices = args.devices.clone().unwrap_or_else(|| Devices::one(args.device));
    ensure_compiled(devices.spec)?;
    let config_path = args.out.join(TRAIN_CONFIG);
    let (settings, origin) = if args.resume {
        if !config_path.is_file() {
            bail!(
                "--resume: {} not found; start the run without --resume",
                config_path.display()
            );
        }
        (read_toml::<TrainSettings>(&config_path)?, config_path.clone())
    } else {
        if args.out.exists() && std::fs::read_dir(&args.out).map_or(true, |mut d| d.next().is_some()) {
            bail!(
                "--out {}: exists and is not an empty folder; use --resume to continue a run",
                args.out.display()
            );
        }
        let (mut settings, origin) = args.settings()?;
        resolve_paths(&mut settings)?;
        (settings, origin)
    };
    let method = settings.method(&origin)?;
    let train = &settings.train;
    if train.steps == 0 || train.batch_size == 0 || train.grad_accumulation == 0 {
        bail!(
            "{}: train.steps, train.batch_size and train.grad_accumulation must be positive",
            origin.display()
        );
    }
    if let Some(rate) = train.dropout_rate {
        check_dropout_rate(rate).map_err(|e| anyhow!("{}: train.dropout_rate {e}", origin.display()))?;
    }
    ensure_precision(devices.spec, settings.precision)?;
    let model_config = check_model_dir(&settings.model)?;
    let encoder = settings.encoder(&model_config)?;
    let sni = SniDir::open(&settings.sni)?;
    let train_list = TaskList::read(&settings.train_tasks)?;
    let held_out = match &settings.held_out_tasks {
        Some(path) => TaskList::read(path)?,
        None => TaskList {
            path: PathBuf::new(),
            entries: Vec::new(),
        },
    };
    // Checks that every held-out SNI task has a file (reading none): a missing one is named with its list
    // line. T0 held-out dataset names (rte, copa, …) only reserve a routing row for `mhr adapt --t0`.
    let held_out_sni = TaskList {
        path: held_out.path.clone(),
        entries: (held_out.entries.iter())
            .filter(|(_, name)| T0Dataset::from_name(name).is_none())
            .cloned()
            .collect(),
    };
    sni.load(&held_out_sni, Default::default())?;
    let train_tasks: Vec<_> =
        load_tasks(&sni, &train_list, settings.max_instances)?.collect::<Result<_, _>>()?;
    if train_tasks.is_empty() {
        bail!(
            "{}: no English training task to train on",
            settings.train_tasks.display()
        );
    }
    // mttl's SNI convention: ids index the sorted union, so held-out tasks own rows pre-training never touches.
    let index = TaskIndex::sorted(
        train_tasks
            .iter()
            .map(|t| t.name.clone())
            .chain(held_out.names().map(String::from)),
    );
    let tasks = TaskMap::new(index.names().to_vec())?;
    let tasks_path = args.out.join(TASKS_FILE);
    if args.resume {
        let saved = TaskMap::load(&tasks_path)?;
        if saved.names() != tasks.names() {
            bail!(
                "{}: the tasks differ from those the run started with (did a task list or file change?)",
                tasks_path.display()
            );
        }
    }
    let examples = encode_tasks(&encoder, &train_tasks, &index)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    if !args.resume {
        write_toml(&config_path, &settings)?;
        tasks.save(&tasks_path)?;
    }
    let spec = devices.spec;
    catch_panics(&format!("training on `{spec}`"), || {
        with_backend(
            spec,
            TrainTask {
                settings,
                method,
                tasks,
                examples,
                out: args.out.clone(),
                stop_after: args.stop_after,
                devices,
            },
        )
    })
}
