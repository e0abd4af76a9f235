//! `mhr score`: teacher-forced logits, loss and per-example label log-likelihood of a batch, in the
//! fixtures' layout. Routing is deterministic (evaluation mode: `σ(Z)`, no noise).

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use crate::commands::common::{
    InputBatch, IntMatrix, ModelArgs, Prepared, catch_panics, check_out_path, check_sizes, write_output,
};
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input safetensors: int64 (or int32) `input_ids` [b, s], `attention_mask` [b, s], `labels` [b, t]
    /// (-100 = ignored) and, for routed adapters, `task_ids` [b].
    #[arg(long, value_name = "IN.safetensors")]
    pub batch: PathBuf,
    /// Output safetensors: f32 `logits` [b, t, vocab], `loss` [1], `label_loglik_sum` [b].
    #[arg(long, value_name = "OUT.safetensors")]
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

pub fn run(args: Args) -> Result<()> {
    check_out_path(&args.out)?;
    let prepared = args.model.prepare()?;
    let mut batch = InputBatch::read(&args.batch, true)?;
    batch.validate(&prepared.config, prepared.n_tasks)?;
    let labels = batch
        .labels
        .take()
        .ok_or_else(|| anyhow!("{}: tensor `labels` is missing", args.batch.display()))?;
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
