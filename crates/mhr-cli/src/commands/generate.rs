//! `mhr generate`: greedy (`--num-beams 1`) or beam search, from token ids or from text.
//! - `--batch IN.safetensors`: encoder inputs as ids; the tokens are written as the fixtures hold them:
//!   `[b, ≤ N + 1]`, starting with the decoder start token and padded with the pad token (0) after eos.
//! - `--inputs FILE.jsonl`: one `{"task", "input"}` per line; one `{"line", "output", "tokens"}` per line out,
//!   run as `mhr serve` runs a request.
//!
//! Routing is deterministic (evaluation mode).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use mhr_models::GenerationConfig;
use mhr_serve::Inputs;
use mhr_serve::api::GenerateRequest;
use mhr_serve::inputs::GenerateJob;
use mhr_serve::scheduler::generate_jobs;
use serde_json::json;

use crate::commands::common::{
    InputBatch, ModelArgs, Prepared, catch_panics, check_out_path, check_sizes, write_output,
};
use crate::commands::texts::{TextArgs, output_line, read_input_lines, write_jsonl};
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["batch", "inputs"])))]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input safetensors: int64 (or int32) `input_ids` [b, s], `attention_mask` [b, s] and, for routed
    /// adapters, `task_ids` [b]; other tensors (e.g. `labels`) are ignored.
    #[arg(long, value_name = "IN.safetensors")]
    pub batch: Option<PathBuf>,
    /// Input text: JSON lines `{"task": NAME, "input": TEXT}` (`task` for routed adapters only; an `id` is copied
    /// to the output line; `choices` are not read).
    #[arg(long, value_name = "FILE.jsonl")]
    pub inputs: Option<PathBuf>,
    #[command(flatten)]
    pub text: TextArgs,
    /// Lines of --inputs generated together (of any tasks).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Stop after this many generated tokens (or when every row has produced eos).
    #[arg(long, value_name = "N")]
    pub max_new_tokens: usize,
    /// 1: greedy search; K > 1: beam search with K beams (early stopping, length penalty 1).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub num_beams: u32,
    /// With --batch: output safetensors, int64 `greedy_tokens` (K = 1) or `beam{K}_tokens` (K > 1), [b, ≤ N + 1].
    /// With --inputs: JSON lines `{"line", "id"?, "task"?, "output", "tokens"}`, in input order.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
}

/// The output key for `num_beams`: `greedy_tokens` or `beam{K}_tokens`, as in the fixtures.
pub fn output_key(num_beams: usize) -> String {
    if num_beams == 1 {
        "greedy_tokens".to_string()
    } else {
        format!("beam{num_beams}_tokens")
    }
}

struct GenerateTask {
    prepared: Prepared,
    batch: InputBatch,
    config: GenerationConfig,
}

impl BackendTask for GenerateTask {
    type Output = TensorData;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        let model = self.prepared.load_model::<B::InnerBackend>(&device)?;
        let tokens = model.generate(
            self.batch.input_ids.tensor(&device),
            self.batch.attention_mask.tensor(&device),
            &self.batch.routing(&device),
            &self.config,
        )?;
        let data = tokens.into_data();
        let shape = data.shape.to_vec();
        Ok(TensorData::new(data.iter::<i64>().collect::<Vec<i64>>(), shape))
    }
}

/// `--inputs`: the lines' jobs, run `batch_size` lines at a time.
struct TextGenerateTask {
    prepared: Prepared,
    inputs: Inputs,
    jobs: Vec<GenerateJob>,
    batch_size: usize,
}

impl BackendTask for TextGenerateTask {
    type Output = Vec<mhr_serve::api::Generated>;

    fn run<B: AutodiffBackend>(self, device: B::Device, _spec: DeviceSpec) -> Result<Self::Output> {
        let mut engine = self.prepared.engine::<B::InnerBackend>(&device)?;
        let mut outputs = Vec::with_capacity(self.jobs.len());
        for chunk in self.jobs.chunks(self.batch_size) {
            let chunk: Vec<&GenerateJob> = chunk.iter().collect();
            outputs.extend(
                generate_jobs(&mut engine, &self.inputs, &chunk)?
                    .into_iter()
                    .flatten(),
            );
        }
        Ok(outputs)
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

fn run_batch(args: &Args, prepared: Prepared, path: &std::path::Path) -> Result<()> {
    let batch = InputBatch::read(path, false)?;
    batch.validate(&prepared.config, prepared.n_tasks)?;
    let c = &prepared.config;
    let k = args.num_beams as usize;
    let (b, s) = (batch.batch_size(), batch.input_ids.cols);
    let steps = args.max_new_tokens.saturating_add(1);
    let (h, inner, layers) = (c.num_heads, c.inner_dim(), c.decoder_layers());
    check_sizes(
        &[
            ("encoder attention scores", &[b, h, s, s]),
            ("feed-forward activations", &[b, s, c.d_ff]),
            ("encoder output repeated per beam", &[b, k, s, c.d_model]),
            ("cross-attention key/value cache", &[layers, 2, b, k, s, inner]),
            ("self-attention key/value cache", &[layers, 2, b, k, steps, inner]),
            ("next-token logits", &[b, k, c.vocab_size]),
            ("generated tokens", &[b, k, steps, 2]),
        ],
        args.model.max_tensor_bytes(),
    )?;
    let key = output_key(k);
    let config = if k == 1 {
        GenerationConfig::greedy(args.max_new_tokens)
    } else {
        GenerationConfig::beam(args.max_new_tokens, k)
    };
    let spec = args.model.device;
    let tokens = catch_panics(&format!("generating on `{spec}`"), || {
        with_backend(
            spec,
            GenerateTask {
                prepared,
                batch,
                config,
            },
        )
    })?;
    write_output(&args.out, vec![(key, tokens)])
}

fn run_texts(args: &Args, prepared: Prepared, path: &std::path::Path) -> Result<()> {
    let inputs = args.text.inputs(&prepared, Some(args.max_new_tokens))?;
    let lines = read_input_lines(path)?;
    let jobs = lines
        .iter()
        .map(|(n, line)| {
            let request = GenerateRequest {
                task: line.task.clone(),
                input: Some(line.input.clone()),
                inputs: None,
                max_new_tokens: Some(args.max_new_tokens),
                num_beams: Some(args.num_beams as usize),
            };
            inputs
                .generate(&request)
                .with_context(|| format!("--inputs {}: line {n}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = args.model.device;
    let outputs = catch_panics(&format!("generating on `{spec}`"), || {
        with_backend(
            spec,
            TextGenerateTask {
                prepared,
                inputs,
                jobs,
                batch_size: args.batch_size as usize,
            },
        )
    })?;
    let values: Vec<serde_json::Value> = lines
        .iter()
        .zip(outputs)
        .map(|((n, line), output)| {
            output_line(*n, line, json!({"output": output.text, "tokens": output.tokens}))
        })
        .collect();
    write_jsonl(&args.out, &values)
}
