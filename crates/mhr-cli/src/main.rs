//! `mhr`: multi-task adapter routing for T5 from the command line. Errors are one line on stderr and a
//! non-zero exit; outputs are written atomically.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mhr_cli::commands;

#[derive(Parser)]
#[command(name = "mhr", version, about = "Poly / MHR adapter routing for T5 on Burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the backends compiled into this binary.
    Devices,
    /// Summarise a peft adapter folder: type, modules, shapes and per-layer routing diagnostics (JSON lines).
    Inspect(commands::inspect::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => {
            println!("{}", mhr_cli::device::compiled_backends().join("\n"));
            Ok(())
        }
        Command::Inspect(args) => commands::inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
