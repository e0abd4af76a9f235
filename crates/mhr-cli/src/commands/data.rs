//! `mhr data ...`: task data utilities. `mhr data stats` prints one JSON line per task (name, instances,
//! examples, kind, mean source / target length in characters) for an SNI or a T0-style directory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mhr_data::{SniOptions, TaskStats, sni_stats, t0_stats};

use crate::device::DeviceSpec;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// One JSON line per task: name, instances, examples, kind, mean_source_chars, mean_target_chars.
    Stats(StatsArgs),
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["sni", "t0"])))]
pub struct StatsArgs {
    /// A Super-NaturalInstructions directory (`tasks/*.json`, `splits/`).
    #[arg(long, value_name = "DIR")]
    pub sni: Option<PathBuf>,
    /// A T0-style evaluation directory (`<dataset>/val*.jsonl`, `templates/`).
    #[arg(long, value_name = "DIR")]
    pub t0: Option<PathBuf>,
    /// A task list (one name per line); default: every task of the directory, in name order.
    #[arg(long, value_name = "FILE")]
    pub tasks: Option<PathBuf>,
    /// SNI: keep at most this many instances per task (`examples`); `instances` counts them all.
    #[arg(long, value_name = "N", conflicts_with = "t0")]
    pub max_instances: Option<usize>,
    /// SNI: include tasks whose input, output or instruction language is not English only.
    #[arg(long, conflicts_with = "t0")]
    pub all_languages: bool,
    /// Accepted for uniformity with the other commands; no model runs here.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Stats(args) => stats(args),
    }
}

/// Collects every record before printing, so that a bad task file prints an error and no partial table.
fn stats(args: StatsArgs) -> Result<()> {
    for (flag, dir) in [("--sni", &args.sni), ("--t0", &args.t0)] {
        if let Some(dir) = dir.as_ref().filter(|d| !d.is_dir()) {
            bail!("{flag} {}: not a directory", dir.display());
        }
    }
    let records: Vec<TaskStats> = match (&args.sni, &args.t0) {
        (Some(dir), _) => {
            let options = SniOptions {
                max_instances: args.max_instances,
                english_only: !args.all_languages,
                ..SniOptions::default()
            };
            sni_stats(dir, args.tasks.as_deref(), options)?.collect::<Result<_, _>>()?
        }
        (None, Some(dir)) => t0_stats(dir, args.tasks.as_deref())?.collect::<Result<_, _>>()?,
        (None, None) => bail!("give --sni DIR or --t0 DIR"),
    };
    let mut text = String::new();
    for record in &records {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to stdout")
}
