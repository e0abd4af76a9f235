//! Text in, text out: the tokenizer and task names of a served model, and the JSON-lines files of
//! `mhr generate --inputs` / `mhr score --inputs`. `mhr serve` checks requests with the same [`Inputs`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mhr_core::TaskMap;
use mhr_data::TextTokenizer;
use mhr_serve::api::{InputLine, parse};
use mhr_serve::{Inputs, Limits};
use mhr_train::sni::load_tokenizer;

use crate::commands::common::Prepared;
use crate::commands::run_dir::{BYTE_TOKENIZER, Run};

/// `--tokenizer` and the input limits, for the commands that take text.
#[derive(clap::Args, Debug, Clone)]
pub struct TextArgs {
    /// A tokenizer.json, or `byte` (ByT5's bytes). Default: the run's (when --adapter is a run folder), else the
    /// model folder's tokenizer.json.
    #[arg(long, value_name = "FILE|byte")]
    pub tokenizer: Option<String>,
    /// Refuse inputs of more tokens than this (eos included) instead of truncating them.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_input_tokens)]
    pub max_input_tokens: usize,
}

impl TextArgs {
    /// The tokenizer, the task names and the limits of `prepared` (with `max_new_tokens` as the longest and
    /// default generation).
    pub fn inputs(&self, prepared: &Prepared, max_new_tokens: Option<usize>) -> Result<Inputs> {
        let mut limits = Limits {
            max_input_tokens: self.max_input_tokens,
            ..Limits::default()
        };
        if let Some(n) = max_new_tokens {
            limits.max_new_tokens = n;
            limits.default_new_tokens = n;
        }
        Ok(Inputs::new(
            self.tokenizer(prepared)?,
            task_names(prepared)?,
            limits,
        )?)
    }

    fn tokenizer(&self, prepared: &Prepared) -> Result<Arc<dyn TextTokenizer>> {
        let vocab = prepared.config.vocab_size;
        let run = prepared
            .adapter
            .as_ref()
            .map(|(dir, _)| dir)
            .filter(|dir| Run::is_run(dir));
        let (path, origin) = match (self.tokenizer.as_deref(), run) {
            (Some(BYTE_TOKENIZER), _) => (None, "--tokenizer".to_string()),
            (Some(path), _) => (Some(PathBuf::from(path)), "--tokenizer".to_string()),
            (None, Some(run)) => {
                let run = Run::open(run)?;
                return run
                    .settings
                    .tokenizer(&prepared.config)
                    .with_context(|| format!("the tokenizer of run {}", run.dir.display()));
            }
            (None, None) => {
                let path = prepared.model_dir.join("tokenizer.json");
                if !path.is_file() {
                    bail!(
                        "{}: not found; give --tokenizer (a tokenizer.json, or `{BYTE_TOKENIZER}`)",
                        path.display()
                    );
                }
                (Some(path), "--model".to_string())
            }
        };
        load_tokenizer(path.as_deref(), vocab).with_context(|| origin)
    }
}

/// The names requests give for a routed adapter: its `tasks.json`, else the routing rows' numbers ("0", "1",
/// …, as for a peft folder written by Python). `None` for an adapter that does not route by task.
fn task_names(prepared: &Prepared) -> Result<Option<TaskMap>> {
    let Some(n_tasks) = prepared.n_tasks else {
        return Ok(None);
    };
    let named = prepared
        .adapter
        .as_ref()
        .and_then(|(_, adapter)| adapter.tasks.clone());
    Ok(Some(match named {
        Some(tasks) => tasks,
        None => TaskMap::new((0..n_tasks).map(|i| i.to_string()).collect())?,
    }))
}

/// Every line of an `--inputs` file; an error names the file, the line and the field. Blank lines are skipped.
pub fn read_input_lines(path: &Path) -> Result<Vec<(usize, InputLine)>> {
    let file = std::fs::File::open(path).with_context(|| format!("--inputs {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("--inputs {}: line {}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = parse::<InputLine>(line.as_bytes())
            .with_context(|| format!("--inputs {}: line {}", path.display(), i + 1))?;
        lines.push((i + 1, parsed));
    }
    if lines.is_empty() {
        bail!("--inputs {}: no input lines", path.display());
    }
    Ok(lines)
}

/// The output line of input line `n`: `fields` with the line number, and the line's `id` and `task` when given.
pub fn output_line(n: usize, line: &InputLine, fields: serde_json::Value) -> serde_json::Value {
    let mut value = fields;
    value["line"] = n.into();
    if let Some(id) = &line.id {
        value["id"] = id.clone();
    }
    if let Some(task) = &line.task {
        value["task"] = task.as_str().into();
    }
    value
}

/// Writes one JSON value per line, atomically.
pub fn write_jsonl(out: &Path, values: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for value in values {
        text.push_str(&serde_json::to_string(value)?);
        text.push('\n');
    }
    mhr_core::io::write_atomic(out, text.as_bytes())
        .with_context(|| format!("cannot write --out {}", out.display()))
}
