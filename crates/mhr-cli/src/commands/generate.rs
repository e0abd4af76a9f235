//! `mhr generate`: greedy (`--num-beams 1`) or beam search from a batch of encoder inputs, with the
//! tokens written as the fixtures hold them: `[b, ≤ N + 1]`, starting with the decoder start token and
//! padded with the pad token (0) after eos. Routing is deterministic (evaluation mode).

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use mhr_models::GenerationConfig;

use crate::commands::common::{
    InputBatch, ModelArgs, Prepared, catch_panics, check_out_path, check_sizes, write_output,
};
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input safetensors: int64 (or int32) `input_ids` [b, s], `attention_mask` [b, s] and, for routed
    /// adapters, `task_ids` [b]; other tensors (e.g. `labels`) are ignored.
    #[arg(long, value_name = "IN.safetensors")]
    pub batch: PathBuf,
    /// Stop after this many generated tokens (or when every row has produced eos).
    #[arg(long, value_name = "N")]
    pub max_new_tokens: usize,
    /// 1: greedy search; K > 1: beam search with K beams (early stopping, length penalty 1).
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub num_beams: u32,
    /// Output safetensors: int64 `greedy_tokens` (K = 1) or `beam{K}_tokens` (K > 1), [b, ≤ N + 1].
    #[arg(long, value_name = "OUT.safetensors")]
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

pub fn run(args: Args) -> Result<()> {
    check_out_path(&args.out)?;
    let prepared = args.model.prepare()?;
    let batch = InputBatch::read(&args.batch, false)?;
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
