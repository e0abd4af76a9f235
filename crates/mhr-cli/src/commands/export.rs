//! `mhr export`: a run's final adapters as a peft folder (`adapter_config.json`, `adapter_model.safetensors`
//! and, for routed adapters, `tasks.json`), which `mhr score --adapter` and peft load.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::AdapterHost;
use mhr_core::peft::PeftAdapter;

use crate::commands::common::catch_panics;
use crate::commands::run_dir::Run;
use crate::device::{BackendTask, DeviceSpec, ensure_compiled, with_backend};

/// Export formats.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// peft's adapter folder layout.
    Peft,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run folder of `mhr train` or `mhr adapt`.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    #[arg(long, value_enum)]
    pub format: Format,
    /// The folder to write (created if missing; its adapter files are replaced atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Backend that rebuilds the run's model: cpu, ndarray, flex, wgpu[:N] or cuda[:N].
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

struct ExportTask {
    run: Run,
}

impl BackendTask for ExportTask {
    type Output = Option<PeftAdapter>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        let model = self.run.load_model::<B::InnerBackend>(&device)?;
        Ok(model.peft_adapter(&self.run.tasks, self.run.settings.model.to_str())?)
    }
}

pub fn run(args: Args) -> Result<()> {
    ensure_compiled(args.device)?;
    if args.out.is_file() {
        bail!("--out {}: is a file, expected a folder", args.out.display());
    }
    let run = Run::open(&args.run)?;
    let method = run.method;
    let spec = args.device;
    let adapter = catch_panics(&format!("exporting on `{spec}`"), || {
        with_backend(spec, ExportTask { run })
    })?;
    let Some(adapter) = adapter else {
        bail!(
            "--run {}: method {method} has no adapters (its weights are the whole model), so there is no peft \
             adapter to export",
            args.run.display()
        );
    };
    match args.format {
        Format::Peft => adapter.save(&args.out)?,
    }
    Ok(())
}
