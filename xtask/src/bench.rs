//! `cargo xtask bench`: the same configuration and JSON keys as `../shared/peer/bench_train_step.py`.
//!
//! Times full training steps (forward, backward, AdamW update) of a randomly initialised T5 with adapters on
//! q, k, v, o, wi_0, wi_1, wo ((IA)^3: k, v and wo, scaling wo's input), and prints one JSON line. `--what`
//! adds greedy generation throughput and the time to merge every adapter into its base weight.

use std::fmt;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_cli::device::{BackendTask, DeviceSpec, ensure_compiled, with_backend};
use mhr_core::peft::TargetModules;
use mhr_core::{
    AdapterConfig, AdapterHost, Ia3Config, LoraConfig, Method, RoutedLoraConfig, RoutingContext, RoutingMode,
    Stage,
};
use mhr_models::{GenerationConfig, T5Config, T5ForConditionalGeneration};
use mhr_train::optim::{OptimConfig, TwoSpeedAdamW};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPreset {
    /// T5 v1.1 small shapes: d_model 512, 8+8 layers, 6 heads, gated-gelu, vocab 32128; batch 4 × (128 + 32).
    Small,
    /// d_model 128, 2+2 layers, 4 heads, gated-gelu, vocab 1024; batch 8 × (64 + 16).
    Tiny,
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
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 8)]
    skills: usize,
    /// MHR heads (splits); Poly always has 1.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    #[arg(long, value_enum, default_value_t = What::Train)]
    what: What,
    /// Tokens generated per example by `--what generate` (default: the preset's target length).
    #[arg(long)]
    gen_tokens: Option<usize>,
}

/// The peer benchmark's presets.
struct PresetSpec {
    model: Value,
    batch: usize,
    src_len: usize,
    tgt_len: usize,
    n_tasks: usize,
}

fn preset(p: BenchPreset) -> PresetSpec {
    let model = |vocab: usize, d: usize, d_kv: usize, d_ff: usize, layers: usize, heads: usize| {
        json!({
            "vocab_size": vocab, "d_model": d, "d_kv": d_kv, "d_ff": d_ff, "num_layers": layers,
            "num_decoder_layers": layers, "num_heads": heads, "feed_forward_proj": "gated-gelu",
            "tie_word_embeddings": false, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
            "dropout_rate": 0.0,
        })
    };
    match p {
        BenchPreset::Small => PresetSpec {
            model: model(32128, 512, 64, 1024, 8, 6),
            batch: 4,
            src_len: 128,
            tgt_len: 32,
            n_tasks: 16,
        },
        BenchPreset::Tiny => PresetSpec {
            model: model(1024, 128, 32, 256, 2, 4),
            batch: 8,
            src_len: 64,
            tgt_len: 16,
            n_tasks: 16,
        },
    }
}

const TARGETS: [&str; 7] = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"];

fn names(n: &[&str]) -> TargetModules {
    TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
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
}

impl Bench {
    fn adapted<B: Backend>(
        &self,
        spec: &PresetSpec,
        device: &B::Device,
    ) -> Result<T5ForConditionalGeneration<B>> {
        let a = &self.args;
        let config: T5Config = serde_json::from_value(spec.model.clone())?;
        let model = T5ForConditionalGeneration::<B>::new(&config, device)?;
        let routed =
            |heads| AdapterConfig::RoutedLora(RoutedLoraConfig::new(a.rank, a.skills, heads, spec.n_tasks));
        Ok(match a.method {
            BenchMethod::Mhr => model.with_adapters(&names(&TARGETS), &routed(a.heads))?,
            BenchMethod::Poly => model.with_adapters(&names(&TARGETS), &routed(1))?,
            BenchMethod::Lora => model.with_adapters(
                &names(&TARGETS),
                &AdapterConfig::Lora(LoraConfig::new(a.rank, a.rank as f64)),
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
        let p = preset(a.preset);
        let vocab = p.model["vocab_size"].as_u64().context("vocab")? as i64;
        // torch.manual_seed(0) in the peer: the same seed gives the same numbers run to run.
        B::seed(&device, 0);
        let model = self.adapted::<B>(&p, &device)?;
        let mut model = self.method().trainable(Stage::Pretrain).apply(model);
        let mut count = Trainable(0);
        model.visit(&mut count);

        // The peer draws source, target and task ids once and reuses them every step.
        let mut rng = Rng(1);
        let src = rng.ints::<B, 2>([p.batch, p.src_len], 2, vocab, &device);
        let tgt = rng.ints::<B, 2>([p.batch, p.tgt_len], 2, vocab, &device);
        let task_ids = rng.ints::<B, 1>([p.batch], 0, p.n_tasks as i64, &device);
        let mask = Tensor::<B, 2, Int>::ones([p.batch, p.src_len], &device);
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
        let tokens = p.batch * (p.src_len + p.tgt_len);
        let mut out = json!({
            "impl": "mhr-burn", "method": a.method.to_string(), "preset": a.preset.to_string(),
            "rank": a.rank, "skills": a.skills, "heads": a.heads,
            "trainable_params": count.0, "tokens_per_step": tokens,
        });
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
                let output = model.forward(src.clone(), mask.clone(), tgt.clone(), &ctx)?;
                let t_forward = t0.elapsed().as_secs_f64();
                let grads = GradientsParams::from_grads(output.loss.backward(), &model);
                let (updated, _) = optim.step(1.0, model, grads);
                model = updated;
                B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let dt = t0.elapsed().as_secs_f64();
                if i >= a.warmup {
                    times.push(dt);
                    forward_times.push(t_forward);
                }
                if i + 1 == a.warmup + a.steps.max(1) {
                    last_loss = output.loss.into_scalar().elem::<f64>();
                }
            }
            let cpu = cpu_start
                .zip(cpu_ns())
                .map(|(a, b)| round2((b - a) as f64 / 1e6 / times.len() as f64));
            let med = median_ms(times);
            out["step_ms_median"] = json!(round2(med));
            out["cpu_ms_per_step"] = json!(cpu);
            out["forward_ms_median"] = json!(round2(median_ms(forward_times)));
            out["tokens_per_s"] = json!((tokens as f64 / (med / 1e3) * 10.0).round() / 10.0);
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
                generated = p.batch * (tokens.dims()[1] - 1);
                if i >= a.warmup.min(1) {
                    times.push(dt);
                }
            }
            let med = median_ms(times);
            out["generate_batch"] = json!(p.batch);
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
    let line = with_backend(device, Bench { args })?;
    println!("{line}");
    Ok(())
}
