//! Developer and reproduction tasks: `cargo xtask reproduce`, `cargo xtask bench`, `cargo xtask loadtest`.

mod bench;
mod loadtest;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use mhr_cli::device::{BackendTask, DeviceSpec, Devices, ensure_compiled, with_backend};
use mhr_models::Precision;
use mhr_models::hub::Hub;
use mhr_presets::sni::{self, SniSettings};
use mhr_presets::synthetic::{self, SyntheticSettings};
use mhr_presets::t0::{self, T0Settings};
use mhr_train::TrainConfig;

#[derive(Parser)]
#[command(name = "xtask", about = "mhr reproduction and developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a preset end to end (pre-training → adaptation → evaluation) and write results.{json,md}.
    Reproduce(ReproduceArgs),
    /// Time full training steps (forward, backward, AdamW) of the peer benchmark's configuration; one JSON line.
    Bench(bench::BenchArgs),
    /// Load-test `mhr serve` with concurrent HTTP clients: mixed tasks against one task and against one request at a
    /// time; throughput and p50/p99 latency into loadtest.{json,md}.
    Loadtest(loadtest::LoadtestArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// Offline skill-composition benchmark with a T5 trained in-process (the default).
    Synthetic,
    /// Every method end to end on a tiny random T5 and a few shipped SNI tasks, in a minute or two (CI).
    Smoke,
    /// google/t5-small-lm-adapt (or --model) on the shipped SNI subset, three seeds.
    SniSmall,
    /// T5-XL-LM-adapt (or --model) with the paper's SNI hyper-parameters; give the full SNI checkout as "sni".
    PaperSni,
    /// T5-XL-LM-adapt (or --model) pre-trained on the T0 mixture (--p3 DIR), T-Few adaptation to the T0
    /// held-out datasets, rank-classification accuracy.
    PaperT0,
}

#[derive(clap::Args)]
struct ReproduceArgs {
    #[arg(long, value_enum, default_value_t = Preset::Synthetic)]
    preset: Preset,
    /// Output folder (results.json, results.md, routing.json, cached base model).
    #[arg(long, default_value = "runs/reproduce")]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Data-parallel peers for every stage's training instead of one device: cpu:N or a GPU list such as
    /// cuda:0,cuda:1 (docs/distributed.md); models are built and evaluated on the first.
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    devices: Option<Devices>,
    /// A JSON file overriding preset settings (e.g. {"seeds": [0, 1], "methods": ["lora", "mhr"]}).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Comma-separated seeds (overrides the settings file).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Comma-separated methods, or `all` (overrides the settings file).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// The T5 of the SNI presets: a folder, or a Hugging Face Hub repo id fetched into the HF cache
    /// (default: google/t5-small-lm-adapt for sni-small, google/t5-xl-lm-adapt for paper-sni).
    #[arg(long, value_name = "DIR|REPO")]
    model: Option<String>,
    /// paper-t0: the T0 training mixture, a folder with mixture.json and <subset>/train.jsonl
    /// (scripts/export_p3.py writes one from the Hub's bigscience/P3).
    #[arg(long, value_name = "DIR")]
    p3: Option<PathBuf>,
    /// synthetic: stages 2-3 run in this many processes at once, one per adapter family (from-scratch methods:
    /// one per seed), the cores shared among them (default: one per core on CPU devices, 1 on GPUs). Numbers
    /// are those of a sequential run.
    #[arg(long)]
    jobs: Option<usize>,
    /// The base weights' precision, f32 or bf16 (adapters stay f32; flex or cuda). Default: the settings'
    /// (f32), except paper-sni and paper-t0 on cuda, which run in bf16 as the paper.
    #[arg(long)]
    precision: Option<Precision>,
    /// Pre-training and adaptation recompute each T5 block in backward instead of keeping its activations
    /// (`checkpoint_activations` of both stages; docs/training.md).
    #[arg(long)]
    checkpoint_activations: bool,
    /// Internal: run stages 2-3 of `--methods` under `--seeds` (one unit) on the cached base and write their
    /// outcome (the workers of `--jobs`).
    #[arg(long, hide = true)]
    unit_worker: bool,
}

struct Sni {
    settings: SniSettings,
    out: PathBuf,
    devices: Devices,
}

impl BackendTask for Sni {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        eprintln!(
            "{} preset on {spec}, writing to {}",
            self.settings.preset,
            self.out.display()
        );
        sni::run::<B>(&self.settings, &self.out, &self.devices.of::<B>(&device))?;
        Ok(())
    }
}

struct PaperT0 {
    settings: T0Settings,
    out: PathBuf,
    devices: Devices,
}

impl BackendTask for PaperT0 {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        eprintln!("paper-t0 preset on {spec}, writing to {}", self.out.display());
        t0::run::<B>(&self.settings, &self.out, &self.devices.of::<B>(&device))?;
        Ok(())
    }
}

struct Synthetic {
    settings: SyntheticSettings,
    out: PathBuf,
    devices: Devices,
}

impl BackendTask for Synthetic {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        eprintln!("synthetic preset on {spec}, writing to {}", self.out.display());
        print_report(&synthetic::run::<B>(
            &self.settings,
            &self.out,
            &self.devices.of::<B>(&device),
        )?);
        Ok(())
    }
}

/// Stage 1 of a `--jobs` run: the base its workers load.
struct SyntheticBase {
    settings: SyntheticSettings,
    out: PathBuf,
    devices: Devices,
}

impl BackendTask for SyntheticBase {
    /// The base model's exact match per atomic skill, for the report.
    type Output = BTreeMap<String, f64>;
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<Self::Output> {
        eprintln!("synthetic preset on {spec}, writing to {}", self.out.display());
        Ok(
            synthetic::prepare::<B>(&self.settings, &self.out, &self.devices.of::<B>(&device))?
                .skill_exact_match,
        )
    }
}

/// One worker of a `--jobs` run.
struct SyntheticUnit {
    settings: SyntheticSettings,
    out: PathBuf,
    devices: Devices,
}

impl BackendTask for SyntheticUnit {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, _: DeviceSpec) -> Result<()> {
        let devices = self.devices.of::<B>(&device);
        let base = synthetic::cached_base::<B>(&self.settings, &self.out, &devices)?;
        let outcome = synthetic::run_unit::<B>(&self.settings, &base, &self.out, &devices)?;
        let path = synthetic::unit_outcome_path(&self.out, &self.settings);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        mhr_core::io::write_atomic(&path, &serde_json::to_vec(&outcome)?)?;
        Ok(())
    }
}

fn print_report(report: &synthetic::SyntheticReport) {
    println!("{}", report.markdown);
    println!(
        "routing vs ground truth (Spearman ρ): {:?}",
        report.spearman_routing_vs_truth
    );
    let held = report.ordering.iter().filter(|c| c.holds).count();
    println!(
        "ordering MHR ≥ Poly > LoRA > LoRA from scratch: {held} of {} claims hold",
        report.ordering.len()
    );
}

/// The synthetic preset with stages 2-3 in `jobs` worker processes (this binary, `--unit-worker`), one per
/// unit of [`synthetic::work_units`], each on its share of the threads: stage 1 here,
/// the units there, the report here from their outcomes.
fn synthetic_in_processes(
    settings: SyntheticSettings,
    out: PathBuf,
    devices: Devices,
    jobs: usize,
) -> Result<()> {
    let skill_exact_match = with_backend(
        devices.spec,
        SyntheticBase {
            settings: settings.clone(),
            out: out.clone(),
            devices: devices.clone(),
        },
    )?;
    let units = synthetic::work_units(&settings)?;
    let jobs = jobs.min(units.len()).max(1);
    let per_job = (bench::threads() / jobs).max(1);
    eprintln!(
        "stages 2-3: {} units in {jobs} processes of {per_job} thread(s)",
        units.len()
    );
    let exe = std::env::current_exe()?;
    let mut pending = units.iter();
    let mut running: Vec<(String, std::process::Child)> = Vec::new();
    let mut failure: Option<String> = None;
    loop {
        while failure.is_none() && running.len() < jobs {
            let Some(unit) = pending.next() else {
                break;
            };
            let name = synthetic::unit_name(unit);
            let _ = std::fs::remove_file(synthetic::unit_outcome_path(&out, unit));
            let seeds: Vec<String> = unit.seeds.iter().map(u64::to_string).collect();
            let child = std::process::Command::new(&exe)
                .args([
                    "reproduce",
                    "--preset",
                    "synthetic",
                    "--devices",
                    &devices.to_string(),
                ])
                .arg("--out")
                .arg(&out)
                .arg("--settings")
                .arg(out.join("settings.json"))
                .args(["--unit-worker", "--methods", &unit.methods.join(",")])
                .args(["--seeds", &seeds.join(",")])
                .env("RAYON_NUM_THREADS", per_job.to_string())
                .spawn()
                .map_err(|e| anyhow::anyhow!("starting the worker of {name} ({}): {e}", exe.display()))?;
            running.push((name, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        running.retain_mut(|(unit, child)| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                if !status.success() && failure.is_none() {
                    failure = Some(format!("the worker of {unit} failed ({status})"));
                }
                false
            }
            Err(e) => {
                failure.get_or_insert(format!("the worker of {unit}: {e}"));
                false
            }
        });
    }
    if let Some(failure) = failure {
        anyhow::bail!(
            "{failure}; the units that finished are in {}",
            out.join("units").display()
        );
    }
    let outcomes = units
        .iter()
        .map(|unit| {
            let path = synthetic::unit_outcome_path(&out, unit);
            let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .collect::<Result<Vec<synthetic::UnitOutcome>>>()?;
    print_report(&synthetic::assemble(
        &settings,
        &skill_exact_match,
        &outcomes,
        &out,
    )?);
    Ok(())
}

/// The preset's settings with the fields of `--settings FILE.json` set over theirs (nested fields one by one;
/// unknown fields: an error).
fn overlay<T: serde::Serialize + serde::de::DeserializeOwned>(
    preset: T,
    path: Option<&PathBuf>,
) -> Result<T> {
    let Some(path) = path else { return Ok(preset) };
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
    mhr_presets::with_overrides(preset, &text).map_err(|e| fail(&e))
}

/// A preset's model folder and tokenizer, fetched through the Hub when given as a repo id.
fn preset_model(args: &ReproduceArgs, default_repo: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    let spec = args.model.as_deref().unwrap_or(default_repo);
    let files = Hub::from_env().resolve(spec)?;
    Ok((files.dir, files.tokenizer))
}

/// `--methods all`: every method of the preset's table.
fn expand_all(methods: Vec<String>, table: &[&str]) -> Vec<String> {
    if methods == ["all"] {
        table.iter().map(|m| m.to_string()).collect()
    } else {
        methods
    }
}

/// `--seeds`, `--methods` (`all`: every method of the preset's `table`), `--precision` and
/// `--checkpoint-activations` over a preset's settings.
fn override_runs(
    args: &ReproduceArgs,
    seeds: &mut Vec<u64>,
    methods: &mut Vec<String>,
    precision: &mut Precision,
    stages: [&mut TrainConfig; 2],
    table: &[&str],
) {
    *precision = args.precision.unwrap_or(*precision);
    if args.checkpoint_activations {
        for stage in stages {
            stage.checkpoint_activations = true;
        }
    }
    if let Some(given) = &args.seeds {
        *seeds = given.clone();
    }
    if let Some(given) = &args.methods {
        *methods = expand_all(given.clone(), table);
    }
}

/// The paper presets' precision before `--settings` and `--precision`: bf16 on cuda (PAPER.md §2.4), else f32.
fn paper_precision(args: &ReproduceArgs) -> Precision {
    match args.device.resolve() {
        DeviceSpec::Cuda(_) => Precision::Bf16,
        _ => Precision::F32,
    }
}

/// paper-t0's settings: the model (and its tokenizer) through the Hub, the mixture from --p3.
fn paper_t0(args: &ReproduceArgs) -> Result<T0Settings> {
    let p3 = args.p3.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "--preset paper-t0 needs the T0 training mixture: --p3 DIR, a folder with mixture.json and \
             <subset>/train.jsonl (scripts/export_p3.py writes one from the Hub's bigscience/P3)"
        )
    })?;
    let (model, tokenizer) = preset_model(args, "google/t5-xl-lm-adapt")?;
    let tokenizer = tokenizer.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no tokenizer.json beside the model (paper-t0 needs it)",
            model.display()
        )
    })?;
    let preset = T0Settings {
        precision: paper_precision(args),
        ..T0Settings::paper_t0(model, tokenizer, p3)
    };
    let mut settings = overlay(preset, args.settings.as_ref())?;
    override_runs(
        args,
        &mut settings.seeds,
        &mut settings.methods,
        &mut settings.precision,
        [&mut settings.pretraining, &mut settings.adaptation],
        &t0::METHODS,
    );
    Ok(settings)
}

fn reproduce(mut args: ReproduceArgs) -> Result<()> {
    let devices = args.devices.clone().unwrap_or_else(|| Devices::one(args.device));
    // Every rule that looks at the backend (paper precision, CPU jobs) sees the peers' backend.
    args.device = devices.spec;
    ensure_compiled(args.device)?;
    let sni_preset = match args.preset {
        Preset::Synthetic => return reproduce_synthetic(args, devices),
        Preset::PaperT0 => {
            let settings = paper_t0(&args)?;
            return with_backend(
                args.device,
                PaperT0 {
                    settings,
                    out: args.out,
                    devices,
                },
            );
        }
        Preset::Smoke => SniSettings::smoke(),
        Preset::SniSmall => {
            let (model, tokenizer) = preset_model(&args, "google/t5-small-lm-adapt")?;
            SniSettings::sni_small(model, tokenizer)
        }
        Preset::PaperSni => {
            let (model, tokenizer) = preset_model(&args, "google/t5-xl-lm-adapt")?;
            SniSettings {
                precision: paper_precision(&args),
                ..SniSettings::paper_sni(model, tokenizer)
            }
        }
    };
    let mut settings = overlay(sni_preset, args.settings.as_ref())?;
    override_runs(
        &args,
        &mut settings.seeds,
        &mut settings.methods,
        &mut settings.precision,
        [&mut settings.pretraining, &mut settings.adaptation],
        &sni::METHODS,
    );
    with_backend(
        args.device,
        Sni {
            settings,
            out: args.out,
            devices,
        },
    )
}

/// The synthetic preset: in this process, in `--jobs` worker processes, or as one of those workers.
fn reproduce_synthetic(args: ReproduceArgs, devices: Devices) -> Result<()> {
    let mut settings = overlay(SyntheticSettings::default(), args.settings.as_ref())?;
    override_runs(
        &args,
        &mut settings.seeds,
        &mut settings.methods,
        &mut settings.precision,
        [&mut settings.pretraining, &mut settings.adaptation],
        &synthetic::METHODS,
    );
    if args.unit_worker {
        return with_backend(
            args.device,
            SyntheticUnit {
                settings,
                out: args.out,
                devices,
            },
        );
    }
    let on_cpu = matches!(
        args.device.resolve(),
        DeviceSpec::Cpu | DeviceSpec::Flex | DeviceSpec::Ndarray
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or(if on_cpu { cores } else { 1 }).max(1);
    if jobs > 1 {
        return synthetic_in_processes(settings, args.out, devices, jobs);
    }
    with_backend(
        args.device,
        Synthetic {
            settings,
            out: args.out,
            devices,
        },
    )
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Reproduce(args) => reproduce(args),
        Command::Bench(args) => bench::run(args),
        Command::Loadtest(args) => loadtest::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
