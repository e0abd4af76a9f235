//! `mhr score`, from token ids or from text. Routing is deterministic (evaluation mode: `σ(Z)`, no noise).
//! - `--batch IN.safetensors`: teacher-forced logits, loss and per-example label log-likelihood, in the
//!   fixtures' layout.
//! - `--inputs FILE.jsonl`: rank classification of each line's `choices` as continuations of its `input`, run
//!   as `mhr serve` runs a request.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use mhr_serve::api::{ScoreRequest, ScoreResponse};
use mhr_serve::inputs::ScoreJob;
use mhr_serve::scheduler::score_jobs;
use serde_json::json;

use crate::commands::common::{
    InputBatch, IntMatrix, ModelArgs, Prepared, catch_panics, check_out_path, check_sizes, write_output,
};
use crate::commands::texts::{TextArgs, output_line, read_input_lines, write_jsonl};
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["batch", "inputs"])))]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input safetensors: int64 (or int32) `input_ids` [b, s], `attention_mask` [b, s], `labels` [b, t]
    /// (-100 = ignored) and, for routed adapters, `task_ids` [b].
    #[arg(long, value_name = "IN.safetensors")]
    pub batch: Option<PathBuf>,
    /// Input text: JSON lines `{"task": NAME, "input": TEXT, "choices": [TEXT, …]}` (`task` for routed adapters
    /// only; an `id` is copied to the output line).
    #[arg(long, value_name = "FILE.jsonl")]
    pub inputs: Option<PathBuf>,
    #[command(flatten)]
    pub text: TextArgs,
    /// Lines of --inputs scored together (of any tasks), each with all its choices.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// With --batch: output safetensors, f32 `logits` [b, t, vocab], `loss` [1], `label_loglik_sum` [b].
    /// With --inputs: JSON lines `{"line", "id"?, "task"?, "answer", "answer_index", "scores", "logliks"}`:
    /// per choice its mean and summed token log-likelihood; the answer has the best mean.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
}

struct ScoreTask {
    prepared: Prepared,
    batch: InputBatch,
    labels: IntMatrix,
}

impl BackendTask for ScoreTask {
    type Output = Vec<(String, TensorData)>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        // Inference only: the inner backend records no autodiff graph.
        let model = self.prepared.load_model::<B::InnerBackend>(&device)?;
        let output = model.forward(
            self.batch.input_ids.tensor(&device),
            self.batch.attention_mask.tensor(&device),
            self.labels.tensor(&device),
            &self.batch.routing(&device),
        )?;
        let f32_data = |data: TensorData| {
            let shape = data.shape.to_vec();
            TensorData::new(data.iter::<f32>().collect::<Vec<f32>>(), shape)
        };
        Ok(vec![
            ("logits".into(), f32_data(output.logits.into_data())),
            ("loss".into(), f32_data(output.loss.into_data())),
            (
                "label_loglik_sum".into(),
                f32_data(output.label_loglik_sum.into_data()),
            ),
        ])
    }
}

/// `--inputs`: the lines' jobs, scored `batch_size` lines at a time.
struct TextScoreTask {
    prepared: Prepared,
    jobs: Vec<ScoreJob>,
    batch_size: usize,
}

impl BackendTask for TextScoreTask {
    type Output = Vec<ScoreResponse>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        let mut engine = self.prepared.engine::<B::InnerBackend>(&device)?;
        let mut scored = Vec::with_capacity(self.jobs.len());
        for chunk in self.jobs.chunks(self.batch_size) {
            let chunk: Vec<&ScoreJob> = chunk.iter().collect();
            scored.extend(score_jobs(&mut engine, &chunk)?);
        }
        Ok(scored)
    }
}

pub fn run(args: Args) -> Result<()> {
    check_out_path(&args.out)?;
    let prepared = args.model.prepare()?;
    match (&args.batch, &args.inputs) {
        (Some(batch), _) => run_batch(&args, prepared, batch),
        (None, Some(inputs)) => run_texts(&args, prepared, inputs),
        (None, None) => bail!("give --batch IN.safetensors or --inputs FILE.jsonl"),
    }
}

fn run_batch(args: &Args, prepared: Prepared, path: &Path) -> Result<()> {
    let mut batch = InputBatch::read(path, true)?;
    batch.validate(&prepared.config, prepared.n_tasks)?;
    let labels = batch
        .labels
        .take()
        .ok_or_else(|| anyhow!("{}: tensor `labels` is missing", path.display()))?;
    let c = &prepared.config;
    let (b, s, t) = (batch.batch_size(), batch.input_ids.cols, labels.cols);
    let h = c.num_heads;
    check_sizes(
        &[
            ("encoder attention scores", &[b, h, s, s]),
            ("decoder self-attention scores", &[b, h, t, t]),
            ("cross-attention scores", &[b, h, t, s]),
            ("feed-forward activations", &[b, s.max(t), c.d_ff]),
            ("logits", &[b, t, c.vocab_size]),
        ],
        args.model.max_tensor_bytes(),
    )?;
    let spec = args.model.device;
    let tensors = catch_panics(&format!("scoring on `{spec}`"), || {
        with_backend(
            spec,
            ScoreTask {
                prepared,
                batch,
                labels,
            },
        )
    })?;
    write_output(&args.out, tensors)
}

fn run_texts(args: &Args, prepared: Prepared, path: &Path) -> Result<()> {
    let inputs = args.text.inputs(&prepared, None)?;
    let lines = read_input_lines(path)?;
    let jobs = lines
        .iter()
        .map(|(n, line)| {
            let at = || format!("--inputs {}: line {n}", path.display());
            let Some(choices) = line.choices.clone() else {
                bail!("{}: `choices`: required by mhr score", at());
            };
            let request = ScoreRequest {
                task: line.task.clone(),
                input: line.input.clone(),
                choices,
            };
            inputs.score(&request).with_context(at)
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = args.model.device;
    let scored = catch_panics(&format!("scoring on `{spec}`"), || {
        with_backend(
            spec,
            TextScoreTask {
                prepared,
                jobs,
                batch_size: args.batch_size as usize,
            },
        )
    })?;
    let values: Vec<serde_json::Value> = lines
        .iter()
        .zip(scored)
        .map(|((n, line), scored)| {
            let fields = json!({
                "answer": scored.answer,
                "answer_index": scored.answer_index,
                "scores": scored.scores,
                "logliks": scored.logliks,
            });
            output_line(*n, line, fields)
        })
        .collect();
    write_jsonl(&args.out, &values)
}
