//! `cargo xtask bench`: the same configuration and JSON keys as `../shared/peer/bench_train_step.py`.
//!
//! Times full training steps (forward, backward, AdamW update) of a randomly initialised T5 with adapters on
//! q, k, v, o, wi_0, wi_1, wo ((IA)^3: k, v and wo, scaling wo's input), and prints one JSON line. `--what`
//! adds greedy generation throughput and the time to merge every adapter into its base weight.

use std::fmt;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_cli::device::{BackendTask, DeviceMemory, DeviceSpec, ensure_compiled, with_backend};
use mhr_core::peft::TargetModules;
use mhr_core::{
    AdapterConfig, AdapterHost, Ia3Config, LoraConfig, Method, RoutedLoraConfig, RoutingContext, RoutingMode,
    Stage,
};
use mhr_models::{GenerationConfig, Precision, T5Config, T5ForConditionalGeneration};
use mhr_train::optim::{OptimConfig, TwoSpeedAdamW};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPreset {
    /// T5 v1.1 small shapes: d_model 512, 8+8 layers, 6 heads, gated-gelu, vocab 32128; batch 4 × (128 + 32).
    Small,
    /// d_model 128, 2+2 layers, 4 heads, gated-gelu, vocab 1024; batch 8 × (64 + 16).
    Tiny,
    /// T5 v1.1 base (d_model 768, 12+12 layers) at the paper's T0 shapes and adapters: batch 8 × (256 + 32),
    /// rank 1 on every linear layer of the blocks, S = 8, h = 64.
    Base,
    /// T5 v1.1 large (d_model 1024, 24+24 layers), T0 shapes and adapters.
    Large,
    /// T5 v1.1 XL / T0-3B (d_model 2048, 24+24 layers, 2.85B parameters), T0 shapes and adapters.
    Xl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMethod {
    Mhr,
    Poly,
    Lora,
    Ia3,
}

/// What to measure besides (or instead of) the training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Training steps only (the peer benchmark's keys).
    Train,
    /// Greedy generation with the key/value cache (no autodiff): `generate_*` keys.
    Generate,
    /// `AdaptedLinear::merge` of every adapter site: `merge_ms`.
    Merge,
    /// All of the above in one line.
    All,
}

impl fmt::Display for BenchMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BenchMethod::Mhr => "mhr",
            BenchMethod::Poly => "poly",
            BenchMethod::Lora => "lora",
            BenchMethod::Ia3 => "ia3",
        })
    }
}

impl fmt::Display for BenchPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BenchPreset::Small => "small",
            BenchPreset::Tiny => "tiny",
            BenchPreset::Base => "base",
            BenchPreset::Large => "large",
            BenchPreset::Xl => "xl",
        })
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = BenchPreset::Small)]
    preset: BenchPreset,
    #[arg(long, value_enum, default_value_t = BenchMethod::Mhr)]
    method: BenchMethod,
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// LoRA rank (default: the preset's, 8 for tiny/small, 1 for the T0 presets).
    #[arg(long)]
    rank: Option<usize>,
    /// Skills S of Poly/MHR (default 8).
    #[arg(long)]
    skills: Option<usize>,
    /// MHR heads (splits; default: 8 for tiny/small, 64 for the T0 presets); Poly always has 1.
    #[arg(long)]
    heads: Option<usize>,
    /// Examples per step (default: the preset's).
    #[arg(long)]
    batch: Option<usize>,
    /// The base weights' precision, f32 or bf16 (adapters and optimiser state stay f32).
    #[arg(long, default_value_t = Precision::F32)]
    precision: Precision,
    /// Keep each T5 block's input only and recompute the block in backward (`checkpoint_activations`).
    #[arg(long)]
    checkpoint_activations: bool,
    /// The device's peak dense TFLOP/s for the model FLOPs utilisation (`mfu`): a number, or a GPU of
    /// [`KNOWN_PEAKS`] by name (its bf16 tensor-core figure).
    #[arg(long, value_name = "TFLOPS|GPU")]
    peak_tflops: Option<PeakTflops>,
    #[arg(long, value_enum, default_value_t = What::Train)]
    what: What,
    /// Tokens generated per example by `--what generate` (default: the preset's target length).
    #[arg(long)]
    gen_tokens: Option<usize>,
}

/// Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity).
pub const KNOWN_PEAKS: [(&str, f64); 7] = [
    ("a100", 312.0),
    ("a10g", 70.0),
    ("h100-sxm", 989.0),
    ("h100-pcie", 756.0),
    ("h200", 989.0),
    ("l4", 121.0),
    ("l40s", 362.0),
];

/// `--peak-tflops`: a figure, or a name of [`KNOWN_PEAKS`].
#[derive(Clone, Copy, Debug)]
pub struct PeakTflops(f64);

impl std::str::FromStr for PeakTflops {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((_, peak)) = KNOWN_PEAKS.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)) {
            return Ok(Self(*peak));
        }
        match s.parse::<f64>() {
            Ok(peak) if peak > 0.0 && peak.is_finite() => Ok(Self(peak)),
            _ => Err(format!(
                "`{s}` is neither a positive TFLOP/s figure nor a known GPU ({})",
                KNOWN_PEAKS.map(|(name, _)| name).join(", ")
            )),
        }
    }
}

/// A preset's model, shapes and adapter sizes.
struct PresetSpec {
    model: Value,
    batch: usize,
    src_len: usize,
    tgt_len: usize,
    n_tasks: usize,
    rank: usize,
    heads: usize,
}

fn preset(p: BenchPreset) -> PresetSpec {
    let model = |vocab: usize, d: usize, d_ff: usize, layers: usize, heads: usize, d_kv: usize| {
        json!({
            "vocab_size": vocab, "d_model": d, "d_kv": d_kv, "d_ff": d_ff, "num_layers": layers,
            "num_decoder_layers": layers, "num_heads": heads, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
            "dropout_rate": 0.0,
        })
    };
    // The peer benchmark's presets (../shared/peer/bench_train_step.py).
    let peer = |model, batch, src_len, tgt_len| PresetSpec {
        model,
        batch,
        src_len,
        tgt_len,
        n_tasks: 16,
        rank: 8,
        heads: 8,
    };
    // The paper's T0 runs (PAPER.md §2.3-2.4): batch 8 of 256 + 32 tokens, rank 1, h = 64; one routing row
    // per promptsource template of the T0 training mixture (about 300).
    let t0 = |model| PresetSpec {
        model,
        batch: 8,
        src_len: 256,
        tgt_len: 32,
        n_tasks: 300,
        rank: 1,
        heads: 64,
    };
    match p {
        BenchPreset::Small => peer(model(32128, 512, 1024, 8, 6, 64), 4, 128, 32),
        BenchPreset::Tiny => peer(model(1024, 128, 256, 2, 4, 32), 8, 64, 16),
        BenchPreset::Base => t0(model(32128, 768, 2048, 12, 12, 64)),
        BenchPreset::Large => t0(model(32128, 1024, 2816, 24, 16, 64)),
        BenchPreset::Xl => t0(model(32128, 2048, 5120, 24, 32, 64)),
    }
}

const TARGETS: [&str; 7] = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];

fn names(n: &[&str]) -> TargetModules {
    TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
}

/// Model FLOPs of one training step on a frozen base, counted from the shapes: 2·m·n·k per matmul in forward;
/// in backward, the input gradient of every base matmul (the same count), both operands' gradients of the two
/// attention products, and input and weight gradients of the adapters' rank-`r` products at the [`TARGETS`]
/// sites (`None`: no LoRA-shaped adapter, as (IA)^3). Element-wise work and activation checkpointing's
/// recomputation are not counted (the MFU convention).
fn step_flops(
    c: &T5Config,
    batch: usize,
    src_len: usize,
    tgt_len: usize,
    rank: Option<usize>,
) -> Result<f64> {
    let gated = c.feed_forward().map_err(anyhow::Error::msg)?.gated;
    let (b, s, t) = (batch as f64, src_len as f64, tgt_len as f64);
    let (d, inner, ff) = (c.d_model as f64, c.inner_dim() as f64, c.d_ff as f64);
    let (enc, dec) = (b * s, b * t);
    let wi = if gated { 2.0 } else { 1.0 };
    // (tokens, d_in + d_out, d_in · d_out) of every adapted linear layer of one block.
    let ffn = |n: f64| [vec![(n, d + ff, d * ff); wi as usize], vec![(n, ff + d, ff * d)]].concat();
    let attention = |q: f64, kv: f64| {
        vec![
            (q, d + inner, d * inner),
            (kv, d + inner, d * inner),
            (kv, d + inner, d * inner),
            (q, inner + d, inner * d),
        ]
    };
    let encoder_block = [attention(enc, enc), ffn(enc)].concat();
    let decoder_block = [attention(dec, dec), attention(dec, enc), ffn(dec)].concat();
    let sites = std::iter::repeat_n(encoder_block, c.num_layers)
        .chain(std::iter::repeat_n(decoder_block, c.decoder_layers()))
        .flatten();
    let (mut base, mut adapter) = (0.0, 0.0);
    for (n, fan_sum, fan_product) in sites {
        base += 2.0 * n * fan_product;
        adapter += rank.map_or(0.0, |r| 2.0 * n * r as f64 * fan_sum);
    }
    base += 2.0 * dec * d * c.vocab_size as f64;
    // QKᵀ and softmax·V: 2·b·heads·q·k·d_kv each.
    let products = |q: f64, k: f64| 2.0 * 2.0 * b * inner * q * k;
    let attention =
        c.num_layers as f64 * products(s, s) + c.decoder_layers() as f64 * (products(t, t) + products(t, s));
    Ok((base + attention + adapter) + (base + 2.0 * attention + 2.0 * adapter))
}

/// splitmix64: reproducible ids without another dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, lo: i64, hi: i64) -> i64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + (z % (hi - lo) as u64) as i64
    }

    fn ints<B: Backend, const D: usize>(
        &mut self,
        shape: [usize; D],
        lo: i64,
        hi: i64,
        device: &B::Device,
    ) -> Tensor<B, D, Int> {
        let n = shape.iter().product();
        let data: Vec<i64> = (0..n).map(|_| self.below(lo, hi)).collect();
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}

/// Number of parameters that receive gradients.
struct Trainable(usize);

impl<B: Backend> ModuleVisitor<B> for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.val().is_require_grad() {
            self.0 += param.val().shape().num_elements();
        }
    }
}

/// Peak resident set size of this process (MiB), from `/proc/self/status` (`VmHWM`).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// CPU time (ns) used so far by all threads of this process, from `/proc/self/task/*/schedstat`: unlike the
/// wall clock, it does not grow when other processes take the cores (the machine may be shared).
fn cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let m = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    m * 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The threads this process may use: `RAYON_NUM_THREADS`, else one per core.
pub(crate) fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct Bench {
    args: BenchArgs,
    spec: PresetSpec,
    config: T5Config,
    /// LoRA rank, skills and MHR heads: the flags, else the preset's.
    rank: usize,
    skills: usize,
    heads: usize,
    batch: usize,
}

impl Bench {
    fn new(args: BenchArgs) -> Result<Self> {
        let spec = preset(args.preset);
        let config: T5Config = serde_json::from_value(spec.model.clone())?;
        Ok(Self {
            rank: args.rank.unwrap_or(spec.rank),
            skills: args.skills.unwrap_or(8),
            heads: args.heads.unwrap_or(spec.heads),
            batch: args.batch.unwrap_or(spec.batch),
            args,
            spec,
            config,
        })
    }

    fn adapted<B: Backend>(&self, device: &B::Device) -> Result<T5ForConditionalGeneration<B>> {
        let a = &self.args;
        let model = T5ForConditionalGeneration::<B>::new_as(&self.config, a.precision, device)?;
        let (rank, skills, n_tasks) = (self.rank, self.skills, self.spec.n_tasks);
        let routed = |heads| AdapterConfig::RoutedLora(RoutedLoraConfig::new(rank, skills, heads, n_tasks));
        Ok(match a.method {
            BenchMethod::Mhr => model.with_adapters(&names(&TARGETS), &routed(self.heads))?,
            BenchMethod::Poly => model.with_adapters(&names(&TARGETS), &routed(1))?,
            BenchMethod::Lora => model.with_adapters(
                &names(&TARGETS),
                &AdapterConfig::Lora(LoraConfig::new(rank, rank as f64)),
            )?,
            BenchMethod::Ia3 => model
                .with_adapters(
                    &names(&["k", "v"]),
                    &AdapterConfig::Ia3(Ia3Config { feedforward: false }),
                )?
                .with_adapters(
                    &names(&["wo"]),
                    &AdapterConfig::Ia3(Ia3Config { feedforward: true }),
                )?,
        })
    }

    fn method(&self) -> Method {
        match self.args.method {
            BenchMethod::Mhr => Method::Mhr,
            BenchMethod::Poly => Method::Poly,
            BenchMethod::Lora => Method::Lora,
            BenchMethod::Ia3 => Method::Ia3,
        }
    }

    fn routed(&self) -> bool {
        matches!(self.args.method, BenchMethod::Mhr | BenchMethod::Poly)
    }
}

impl BackendTask for Bench {
    type Output = Value;

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<Value> {
        let a = self.args.clone();
        let p = &self.spec;
        let batch = self.batch;
        let vocab = self.config.vocab_size as i64;
        // torch.manual_seed(0) in the peer: the same seed gives the same numbers run to run.
        B::seed(&device, 0);
        let model = self.adapted::<B>(&device)?;
        let mut model = self.method().trainable(Stage::Pretrain).apply(model);
        let mut count = Trainable(0);
        model.visit(&mut count);

        // The peer draws source, target and task ids once and reuses them every step.
        let mut rng = Rng(1);
        let src = rng.ints::<B, 2>([batch, p.src_len], 2, vocab, &device);
        let tgt = rng.ints::<B, 2>([batch, p.tgt_len], 2, vocab, &device);
        let task_ids = rng.ints::<B, 1>([batch], 0, p.n_tasks as i64, &device);
        let mask = Tensor::<B, 2, Int>::ones([batch, p.src_len], &device);
        let ctx = if self.routed() {
            RoutingContext::new(task_ids.clone(), RoutingMode::Sampled)
        } else {
            RoutingContext::untasked()
        };
        // torch.optim.AdamW(lr=1e-3) defaults: one learning rate, weight decay 0.01, eps 1e-8, no clipping.
        let optim_config = OptimConfig {
            lr: 1e-3,
            routing_lr: 1e-3,
            weight_decay: 0.01,
            routing_weight_decay: 0.01,
            max_grad_norm: 0.0,
            epsilon: 1e-8,
            ..OptimConfig::default()
        };
        let mut optim = TwoSpeedAdamW::new(optim_config, &model);
        let tokens = batch * (p.src_len + p.tgt_len);
        let lora_rank = (a.method != BenchMethod::Ia3).then_some(self.rank);
        let flops = step_flops(&self.config, batch, p.src_len, p.tgt_len, lora_rank)?;
        let mut out = json!({
            "impl": "mhr-burn", "method": a.method.to_string(), "preset": a.preset.to_string(),
            "rank": self.rank, "skills": self.skills, "heads": self.heads, "batch": batch,
            "precision": a.precision.to_string(), "checkpoint_activations": a.checkpoint_activations,
            "trainable_params": count.0, "tokens_per_step": tokens,
            "model_tflop_per_step": round4(flops / 1e12),
        });
        let mut device_memory = DeviceMemory::new(spec);
        let train = matches!(a.what, What::Train | What::All);
        if train {
            let mut times = Vec::with_capacity(a.steps);
            // Forward alone (eager CPU backends finish it before returning; on GPUs it is only the launch time).
            let mut forward_times = Vec::with_capacity(a.steps);
            let mut last_loss = f64::NAN;
            let mut cpu_start = None;
            for i in 0..a.warmup + a.steps.max(1) {
                if i == a.warmup {
                    cpu_start = cpu_ns();
                }
                let t0 = Instant::now();
                let (loss, grads, t_forward) = if a.checkpoint_activations {
                    // Forward and backward interleave block by block: no forward time of its own.
                    let (loss, (), grads) = model.checkpointed_gradients(
                        src.clone(),
                        mask.clone(),
                        tgt.clone(),
                        &ctx,
                        |segment| segment as u64,
                        |out| Ok::<_, anyhow::Error>((out.loss, ())),
                    )?;
                    (loss, grads, None)
                } else {
                    let output = model.forward(src.clone(), mask.clone(), tgt.clone(), &ctx)?;
                    let t_forward = t0.elapsed().as_secs_f64();
                    device_memory.sample();
                    let grads = output.loss.clone().backward();
                    (
                        output.loss,
                        GradientsParams::from_grads(grads, &model),
                        Some(t_forward),
                    )
                };
                device_memory.sample();
                let (updated, _) = optim.step(1.0, model, grads);
                model = updated;
                B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let dt = t0.elapsed().as_secs_f64();
                device_memory.sample();
                if i >= a.warmup {
                    times.push(dt);
                    forward_times.extend(t_forward);
                }
                if i + 1 == a.warmup + a.steps.max(1) {
                    last_loss = loss.into_scalar().elem::<f64>();
                }
            }
            let cpu = cpu_start
                .zip(cpu_ns())
                .map(|(a, b)| round2((b - a) as f64 / 1e6 / times.len() as f64));
            let med = median_ms(times);
            out["step_ms_median"] = json!(round2(med));
            out["cpu_ms_per_step"] = json!(cpu);
            out["forward_ms_median"] =
                json!((!forward_times.is_empty()).then(|| round2(median_ms(forward_times))));
            out["tokens_per_s"] = json!((tokens as f64 / (med / 1e3) * 10.0).round() / 10.0);
            let achieved = flops / (med / 1e3) / 1e12;
            out["model_tflops"] = json!(round4(achieved));
            out["mfu"] = json!(a.peak_tflops.map(|PeakTflops(peak)| round4(achieved / peak)));
            out["loss"] = json!(last_loss);
        }
        let inner = model.valid();
        if matches!(a.what, What::Generate | What::All) {
            let new_tokens = a.gen_tokens.unwrap_or(p.tgt_len);
            let ids = src.clone().inner();
            let mask = mask.clone().inner();
            let ctx = if self.routed() {
                RoutingContext::new(task_ids.clone().inner(), RoutingMode::Deterministic)
            } else {
                RoutingContext::untasked()
            };
            let config = GenerationConfig::greedy(new_tokens);
            let mut times = Vec::new();
            let mut generated = 0;
            for i in 0..a.warmup.min(1) + a.steps.max(1) {
                let t0 = Instant::now();
                let tokens = inner.generate(ids.clone(), mask.clone(), &ctx, &config)?;
                let dt = t0.elapsed().as_secs_f64();
                generated = batch * (tokens.dims()[1] - 1);
                if i >= a.warmup.min(1) {
                    times.push(dt);
                }
            }
            let med = median_ms(times);
            out["generate_batch"] = json!(batch);
            out["generate_new_tokens"] = json!(generated);
            out["generate_ms_median"] = json!(round2(med));
            out["generate_tokens_per_s"] = json!((generated as f64 / (med / 1e3) * 10.0).round() / 10.0);
        }
        if matches!(a.what, What::Merge | What::All) {
            let task = self.routed().then_some(0);
            let mut times = Vec::new();
            for _ in 0..a.steps.max(1) {
                let m = inner.clone();
                let t0 = Instant::now();
                let merged = m.map_sites(|_, site| match site.adapter {
                    Some(_) => site.merge(task),
                    None => Ok(site),
                })?;
                // Force the lazy backends to finish the folds.
                merged.for_each_site(|_, site| {
                    let _ = site.weight.val().slice([0..1, 0..1]).into_data();
                });
                times.push(t0.elapsed().as_secs_f64());
            }
            out["merge_ms"] = json!(round2(median_ms(times)));
        }
        out["peak_rss_mb"] = json!(peak_rss_mb());
        out["device_mem_reserved_mb"] = json!(device_memory.peak_mb());
        out["device"] = json!(spec.to_string());
        out["backend"] = json!(spec.resolve().to_string());
        out["threads"] = json!(threads());
        Ok(out)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    ensure_compiled(args.device)?;
    let device = args.device;
    let line = with_backend(device, Bench::new(args)?)?;
    println!("{line}");
    Ok(())
}
