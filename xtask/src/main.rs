//! Developer and reproduction tasks: `cargo xtask reproduce`, `cargo xtask bench`.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use mhr_cli::device::{BackendTask, DeviceSpec, ensure_compiled, with_backend};
use mhr_train::reproduce::smoke::{self, SmokeSettings};
use mhr_train::reproduce::synthetic::{self, SyntheticSettings};

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Preset {
    /// Offline skill-composition benchmark with a T5 trained in-process (the default).
    Synthetic,
    /// Every method end to end on a tiny random T5 and a few shipped SNI tasks, in a minute or two (CI).
    Smoke,
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
    /// A JSON file overriding preset settings (e.g. {"seeds": [0, 1], "methods": ["lora", "mhr"]}).
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Comma-separated seeds (overrides the settings file).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Comma-separated methods, or `all` (overrides the settings file).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
}

struct Smoke {
    settings: SmokeSettings,
    out: PathBuf,
}

impl BackendTask for Smoke {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        eprintln!("smoke preset on {spec}, writing to {}", self.out.display());
        smoke::run::<B>(&self.settings, &self.out, &device)?;
        Ok(())
    }
}

struct Synthetic {
    settings: SyntheticSettings,
    out: PathBuf,
}

impl BackendTask for Synthetic {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        eprintln!("synthetic preset on {spec}, writing to {}", self.out.display());
        let report = synthetic::run::<B>(&self.settings, &self.out, &device)?;
        println!("{}", report.markdown);
        println!(
            "routing vs ground truth (Spearman ρ): {:?}",
            report.spearman_routing_vs_truth
        );
        Ok(())
    }
}

/// Preset settings from `--settings FILE.json` (fields not given keep their defaults).
fn settings<T: serde::de::DeserializeOwned + Default>(path: Option<&PathBuf>) -> Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn reproduce(args: ReproduceArgs) -> Result<()> {
    ensure_compiled(args.device)?;
    match args.preset {
        Preset::Smoke => {
            let mut settings: SmokeSettings = settings(args.settings.as_ref())?;
            if let Some(seed) = args.seeds.as_ref().and_then(|s| s.first()) {
                settings.seed = *seed;
            }
            if let Some(methods) = args.methods {
                settings.methods = methods;
            }
            with_backend(
                args.device,
                Smoke {
                    settings,
                    out: args.out,
                },
            )
        }
        Preset::Synthetic => {
            let mut settings: SyntheticSettings = match &args.settings {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => SyntheticSettings::default(),
            };
            if let Some(seeds) = args.seeds {
                settings.seeds = seeds;
            }
            if let Some(methods) = args.methods {
                settings.methods = methods;
            }
            with_backend(
                args.device,
                Synthetic {
                    settings,
                    out: args.out,
                },
            )
        }
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Reproduce(args) => reproduce(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
