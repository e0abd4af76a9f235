//! `mhr`: multi-task adapter routing for T5 from the command line. Errors are one line on stderr and a
//! non-zero exit (1: the command failed; 2: the command line is invalid); outputs are written atomically.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use mhr_cli::commands;
use mhr_cli::commands::common::catch_panics;

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
    /// Teacher-forced logits, loss and label log-likelihood of a batch (safetensors in and out), or rank
    /// classification of answer choices given as text (JSON lines in and out).
    Score(commands::score::Args),
    /// Greedy or beam-search generation from a batch of token ids (safetensors in and out) or from text (JSON
    /// lines in and out).
    Generate(commands::generate::Args),
    /// Serve the model and its adapter over HTTP/JSON: generation and scoring for any mix of tasks, batched.
    Serve(commands::serve::Args),
    /// Task data utilities (`mhr data stats`).
    Data(commands::data::Args),
    /// Multi-task pre-training of a method on SNI tasks, into a run folder.
    Train(commands::train::Args),
    /// Few-shot adaptation of a pre-training run to one task, into a run folder.
    Adapt(commands::adapt::Args),
    /// Rouge-L and exact match of adaptation runs on their tasks' test sets (results.json).
    Eval(commands::eval::Args),
    /// A run's final adapters as a peft folder.
    Export(commands::export::Args),
}

/// Exit status of a command line that clap refuses (as clap's own `exit()` uses).
const USAGE_ERROR: u8 = 2;

/// Prints `error: …` on one line: newlines of nested messages become spaces.
fn print_error(message: &str) {
    let line: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = line.join(" ");
    eprintln!("error: {line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(USAGE_ERROR);
        }
        Err(e) => {
            // clap's message without its `error:` prefix, usage block and `--help` hint, on one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            let message = message.join("\n");
            print_error(message.trim().strip_prefix("error:").unwrap_or(&message));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    // Commands validate their inputs; a panic from deeper layers still ends as a one-line error.
    let result = catch_panics("running the command", || match cli.command {
        Command::Devices => {
            println!("{}", mhr_cli::device::compiled_backends().join("\n"));
            Ok(())
        }
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Score(args) => commands::score::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Adapt(args) => commands::adapt::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Export(args) => commands::export::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
