//! The training loop on a tiny random T5: the loss falls for every kind of adapter, a run stopped (or
//! interrupted, by a flag or a real SIGINT) and resumed from its checkpoint ends with the same parameters as
//! an uninterrupted one under either optimiser, a non-finite loss leaves the last checkpoint readable, a run
//! killed (SIGKILL) at any moment leaves a checkpoint that verifies and resumes exactly, and a corrupted
//! checkpoint is refused by name with resume falling back to the one before it. On the fixture T5 and the
//! shipped COPA rows: the multiple-choice source yields each raw row's gold answer at its gold index, and T-Few
//! adaptation lowers its loss, `-z` moves only routing, and a resumed MC run is bit-identical.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;
use mhr_core::peft::TargetModules;
use mhr_core::{AdapterConfig, AdapterHost, Ia3Config, LoraConfig, Method, RoutedLoraConfig, Stage};
use mhr_data::EncodedExample;
use mhr_models::{Precision, T5Config, T5ForConditionalGeneration};
use mhr_train::TrainConfig;
use mhr_train::TrainError;
use mhr_train::data::{ShuffledEpochs, StepData, StepShape};
use mhr_train::optim::{OptimConfig, OptimizerKind};
use mhr_train::trainer::{RunDir, RunOptions, resume, train};

type A = Autodiff<NdArray>;

/// Burn's backend RNG is process-global: tests that seed it and compare runs must not interleave.
pub(crate) static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) fn tiny_model<B: Backend>() -> T5ForConditionalGeneration<B> {
    let config: T5Config = serde_json::from_value(serde_json::json!({
        "vocab_size": 24, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 16,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0,
        "dropout_rate": 0.0
    }))
    .unwrap();
    B::seed(&Default::default(), 1);
    T5ForConditionalGeneration::new(&config, &Default::default()).unwrap()
}

/// Four tasks over token strings: copy, reverse, and each shifted by one.
pub(crate) fn examples() -> Vec<EncodedExample> {
    (0..48)
        .map(|i| {
            let task = i % 4;
            let src: Vec<u32> = (0..5).map(|j| 3 + ((i * 7 + j * 3) % 19) as u32).collect();
            let mut out = src.clone();
            if task % 2 == 1 {
                out.reverse();
            }
            if task >= 2 {
                out.iter_mut().for_each(|t| *t = 3 + (*t - 3 + 1) % 19);
            }
            let mut input_ids = src;
            input_ids.push(1);
            out.push(1);
            EncodedExample {
                input_ids,
                labels: out,
                task_id: task,
            }
        })
        .collect()
}

pub(crate) fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 8,
        grad_accumulation: 1,
        optim: OptimConfig {
            lr: 1e-2,
            routing_lr: 0.1,
            max_grad_norm: 1.0,
            ..OptimConfig::default()
        },
        schedule: mhr_train::schedule::Schedule::Linear {
            warmup_fraction: 0.1,
            floor: 0.0,
        },
        seed: 5,
        label_smoothing: 0.0,
        sampled_routing: true,
        dropout_rate: None,
        checkpoint_activations: false,
        log_every: 1,
        checkpoint_every: 0,
    }
}

fn adapted(method: Method) -> T5ForConditionalGeneration<A> {
    adapted_on(method, Precision::F32)
}

/// The tiny model with `method`'s adapters (f32) on its base in `precision`.
pub(crate) fn adapted_on<B: Backend>(method: Method, precision: Precision) -> T5ForConditionalGeneration<B> {
    let all = TargetModules::Names(
        ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let adapter = match method {
        Method::Lora => AdapterConfig::Lora(LoraConfig::new(4, 4.0)),
        Method::Ia3 => AdapterConfig::Ia3(Ia3Config { feedforward: false }),
        Method::Poly => AdapterConfig::RoutedLora(RoutedLoraConfig::new(4, 4, 1, 4)),
        _ => AdapterConfig::RoutedLora(RoutedLoraConfig::new(4, 4, 4, 4)),
    };
    let model = tiny_model::<B>().with_precision(precision).unwrap();
    let model = if method == Method::FullFinetune {
        model
    } else {
        model.with_adapters(&all, &adapter).unwrap()
    };
    method.trainable(Stage::Pretrain).apply(model)
}

#[test]
fn pretraining_lowers_the_loss_for_each_method() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    for method in [
        Method::Lora,
        Method::Ia3,
        Method::Poly,
        Method::Mhr,
        Method::FullFinetune,
    ] {
        let sampler = ShuffledEpochs::new(&data, &config(0), 0);
        let (_, outcome) = train(
            adapted(method),
            &sampler,
            &config(30),
            &RunOptions {
                label: method.name(),
                ..Default::default()
            },
        )
        .unwrap();
        let first = outcome.losses[..3].iter().map(|l| l.1).sum::<f64>() / 3.0;
        let last = outcome.losses[outcome.losses.len() - 3..]
            .iter()
            .map(|l| l.1)
            .sum::<f64>()
            / 3.0;
        assert!(last < first * 0.9, "{method}: loss {first} → {last}");
    }
}

struct Flatten(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.extend(param.val().into_data().iter::<f32>());
    }
}

fn flat<B: Backend, M: Module<B>>(m: &M) -> Vec<f32> {
    let mut f = Flatten(Vec::new());
    m.visit(&mut f);
    f.0
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = TrainConfig {
        checkpoint_every: 4,
        ..config(12)
    };
    resumed_run_equals_uninterrupted::<A>(&cfg, Precision::F32);
}

/// T5's dropout draws its masks from the per-step seed, so a resumed run keeps them; the override holds for
/// the stage only.
#[test]
fn dropout_changes_training_and_resumes_bit_identically() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = TrainConfig {
        checkpoint_every: 4,
        dropout_rate: Some(0.1),
        ..config(12)
    };
    let with_dropout = resumed_run_equals_uninterrupted::<A>(&cfg, Precision::F32);
    assert_eq!(
        with_dropout.config().dropout_rate,
        0.0,
        "the model's own rate back"
    );
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let run = |cfg: &TrainConfig| train(adapted(Method::Mhr), &sampler, cfg, &RunOptions::default()).unwrap();
    let (without, _) = run(&TrainConfig {
        dropout_rate: None,
        ..cfg.clone()
    });
    let (again, _) = run(&cfg);
    assert_eq!(flat(&again), flat(&with_dropout), "same seed, same masks");
    assert_ne!(flat(&without), flat(&with_dropout), "dropout acted in training");
    let refused = train(
        adapted(Method::Mhr),
        &sampler,
        &TrainConfig {
            dropout_rate: Some(1.0),
            ..cfg
        },
        &RunOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("dropout_rate") && refused.contains("found 1"),
        "{refused}"
    );
}

/// Activation checkpointing recomputes each block in backward. Without randomness (no dropout, σ(Z) routing)
/// it trains as the unsplit step does, up to the order of sums over segments; with dropout and sampled
/// routing it draws its own per-block masks, and a run stopped and resumed is bit-identical.
#[test]
fn checkpointed_training_follows_the_unsplit_run_and_resumes_bit_identically() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let run = |cfg: &TrainConfig| train(adapted(Method::Mhr), &sampler, cfg, &RunOptions::default()).unwrap();
    let plain = TrainConfig {
        sampled_routing: false,
        ..config(12)
    };
    let (unsplit, unsplit_outcome) = run(&plain);
    let checkpointed = TrainConfig {
        checkpoint_activations: true,
        ..plain.clone()
    };
    let (split, split_outcome) = run(&checkpointed);
    for ((step, a), (_, b)) in unsplit_outcome.losses.iter().zip(&split_outcome.losses) {
        assert!(
            (a - b).abs() < 1e-5 * a.abs(),
            "step {step}: loss {a} unsplit, {b} checkpointed"
        );
    }
    let (unsplit, split) = (flat(&unsplit), flat(&split));
    let worst = unsplit
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    // Adam's scale-free updates magnify rounding differences of near-zero gradients a little.
    assert!(worst < 1e-4, "parameters differ by {worst} after 12 steps");
    assert_ne!(
        flat(&adapted(Method::Mhr)),
        split,
        "training moved the parameters"
    );

    let random = TrainConfig {
        checkpoint_activations: true,
        dropout_rate: Some(0.1),
        checkpoint_every: 4,
        ..config(12)
    };
    resumed_run_equals_uninterrupted::<A>(&random, Precision::F32);
}

/// A bf16 base under f32 adapters, on flex: the base stays bf16 and the adapters f32 through training and
/// resume (bit-identical), and the loss follows the f32 run's.
#[test]
fn bf16_base_trains_like_f32_and_resumes_bit_identically() {
    type F = Autodiff<Flex>;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = TrainConfig {
        checkpoint_every: 4,
        ..config(12)
    };
    let trained = resumed_run_equals_uninterrupted::<F>(&cfg, Precision::Bf16);
    assert_eq!(trained.precision(), Precision::Bf16);
    let site = &trained.encoder.block[0].self_attention.attention.q;
    assert_eq!(site.weight.val().dtype(), DType::BF16);
    match &site.adapter {
        Some(mhr_core::Adapter::RoutedLora(a)) => assert_eq!(a.poly_lora_a.val().dtype(), DType::F32),
        _ => panic!("an MHR site"),
    }
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let losses = |precision| {
        let model = adapted_on::<F>(Method::Mhr, precision);
        let (_, outcome) = train(model, &sampler, &config(40), &RunOptions::default()).unwrap();
        outcome
            .losses
            .into_iter()
            .map(|(_, loss)| loss)
            .collect::<Vec<_>>()
    };
    let (full, half) = (losses(Precision::F32), losses(Precision::Bf16));
    let gap = full
        .iter()
        .zip(&half)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0.0, f64::max);
    println!(
        "bf16 vs f32 loss over 40 steps: largest relative gap {gap:.3e}; {:.4} → {:.4} vs {:.4} → {:.4}",
        full[0], full[39], half[0], half[39]
    );
    assert!(
        half[39] < half[0] * 0.9,
        "bf16 trains: {} → {}",
        half[0],
        half[39]
    );
    assert!(
        gap < 0.02,
        "bf16 loss within 2 % of f32 at every step, found {gap}"
    );
}

/// Trains MHR (its base in `precision`) for `cfg` straight, and again stopped after 6 steps and resumed in a
/// fresh model: the parameters must be bit-identical. Returns the straight run's model.
fn resumed_run_equals_uninterrupted<B: AutodiffBackend>(
    cfg: &TrainConfig,
    precision: Precision,
) -> T5ForConditionalGeneration<B> {
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let cfg = cfg.clone();
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_run = RunDir::new(straight_dir.path());
    let (straight, _) = train(
        adapted_on::<B>(Method::Mhr, precision),
        &sampler,
        &cfg,
        &RunOptions {
            dir: Some(&straight_run),
            ..Default::default()
        },
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let stopped = RunOptions {
        dir: Some(&run),
        stop_after: Some(6),
        ..Default::default()
    };
    let (_, partial) = train(adapted_on::<B>(Method::Mhr, precision), &sampler, &cfg, &stopped).unwrap();
    assert_eq!(partial.steps, 6);
    // A fresh process: a new model, resumed from the checkpoint of step 6.
    let (resumed, _) = train(
        adapted_on::<B>(Method::Mhr, precision),
        &sampler,
        &cfg,
        &RunOptions {
            dir: Some(&run),
            ..Default::default()
        },
    )
    .unwrap();
    let (a, b) = (flat(&resumed), flat(&straight));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differing,
        0,
        "bit-identical parameters after resume ({differing} of {} differ)",
        a.len()
    );
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count(),
        12,
        "one metrics line per step, none duplicated by the resume"
    );
    straight
}

/// Every float parameter with its field path, for diffing.
struct Named {
    path: Vec<String>,
    params: Vec<(String, Vec<f32>)>,
}

impl<B: Backend> ModuleVisitor<B> for Named {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.params.push((
            self.path.join("."),
            param.val().into_data().iter::<f32>().collect(),
        ));
    }
}

fn named<M: Module<A>>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut v = Named {
        path: Vec::new(),
        params: Vec::new(),
    };
    m.visit(&mut v);
    v.params
}

/// The paths of parameters that differ between two models of the same structure.
fn changed(before: &[(String, Vec<f32>)], after: &[(String, Vec<f32>)]) -> Vec<String> {
    assert_eq!(before.len(), after.len(), "same structure");
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.1 != a.1)
        .map(|(b, _)| b.0.clone())
        .collect()
}

#[test]
fn adaptation_regimes_train_only_their_parameters() {
    use mhr_core::RoutingConfig;
    use mhr_train::methods::{AdapterSizes, attach_pretraining, prepare_adaptation};
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let sizes = AdapterSizes {
        lora_rank: 4,
        lora_alpha: 1.0,
        poly_rank: 4,
        n_skills: 4,
        mhr_heads: 4,
        routing: RoutingConfig::default(),
    };
    let all = TargetModules::Names(
        ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let data = examples();
    // Pre-train on tasks 0..3, adapt to task 3 alone.
    let pre: Vec<EncodedExample> = data.iter().filter(|e| e.task_id < 3).cloned().collect();
    let held: Vec<EncodedExample> = data.iter().filter(|e| e.task_id == 3).cloned().collect();
    let model = attach_pretraining(tiny_model::<A>(), Method::Mhr, &sizes, &all, 4).unwrap();
    let (pretrained, _) = train(
        model,
        &ShuffledEpochs::new(&pre, &config(0), 0),
        &config(3),
        &RunOptions::default(),
    )
    .unwrap();

    let z = prepare_adaptation(pretrained.clone(), Method::MhrZ, &sizes).unwrap();
    let before = named(&z);
    let (z, _) = train(
        z,
        &ShuffledEpochs::new(&held, &config(0), 0),
        &config(3),
        &RunOptions::default(),
    )
    .unwrap();
    let moved = changed(&before, &named(&z));
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|p| p.ends_with("module_logits")),
        "-z moved {moved:?}"
    );

    let mu = prepare_adaptation(pretrained, Method::MhrMu, &sizes).unwrap();
    let before = named(&mu);
    assert!(
        before
            .iter()
            .all(|(p, _)| !p.contains("poly_lora") && !p.contains("module_logits")),
        "-μ drops routing"
    );
    let (mu, _) = train(
        mu,
        &ShuffledEpochs::new(&held, &config(0), 0),
        &config(3),
        &RunOptions::default(),
    )
    .unwrap();
    let moved = changed(&before, &named(&mu));
    assert!(!moved.is_empty());
    assert!(
        moved
            .iter()
            .all(|p| p.ends_with("lora_a") || p.ends_with("lora_b")),
        "-μ moved {moved:?}"
    );
}

#[test]
fn gradient_alignment_of_identical_tasks_is_one() {
    use mhr_train::alignment::gradient_alignment;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let copy: Vec<EncodedExample> = data.iter().filter(|e| e.task_id == 1).cloned().collect();
    let other: Vec<EncodedExample> = data.iter().filter(|e| e.task_id == 2).cloned().collect();
    let tasks = vec![
        ("a".to_string(), copy.clone()),
        ("a-again".to_string(), copy),
        ("b".to_string(), other),
    ];
    for method in [Method::Lora, Method::Mhr] {
        let model = adapted(method);
        // Make B non-zero so that the gradients of A are too.
        let (model, _) = train(
            model,
            &ShuffledEpochs::new(&data, &config(0), 0),
            &config(2),
            &RunOptions::default(),
        )
        .unwrap();
        let a = gradient_alignment(&model, &tasks, true).unwrap();
        assert!(
            (a.cosine[0][1] - 1.0).abs() < 1e-6,
            "{method}: identical tasks {}",
            a.cosine[0][1]
        );
        assert!((a.cosine[0][0] - 1.0).abs() < 1e-6);
        assert!(
            a.cosine[0][2] < 0.999,
            "{method}: different tasks {}",
            a.cosine[0][2]
        );
    }
}

/// Passes `inner`'s batches through, and at step `at` (as its first micro-batch is requested, i.e.
/// mid-step) either raises `flag` or, with `poison`, returns examples with no labels (a NaN loss).
struct Trigger<'a> {
    inner: &'a dyn StepData,
    at: usize,
    flag: Option<&'a AtomicBool>,
    poison: bool,
}

impl StepData for Trigger<'_> {
    fn shape(&self) -> StepShape {
        self.inner.shape()
    }

    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
        let mut examples = self.inner.examples(step, micro);
        if step == self.at {
            if let Some(flag) = self.flag {
                flag.store(true, Ordering::SeqCst);
            }
            if self.poison {
                examples.iter_mut().for_each(|e| e.labels.clear());
            }
        }
        examples
    }
}

fn with_optimizer(optimizer: OptimizerKind, steps: usize) -> TrainConfig {
    let mut cfg = config(steps);
    cfg.optim.optimizer = optimizer;
    if optimizer == OptimizerKind::Adafactor {
        // The paper's T0 few-shot setting (PAPER.md §2.4): no decay, scale_parameter off for MHR.
        cfg.optim.weight_decay = 0.0;
        cfg.optim.routing_weight_decay = 0.0;
        cfg.optim.lr = 3e-3;
    }
    cfg
}

#[test]
fn interrupted_run_resumes_bit_identically_under_each_optimizer() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    for optimizer in [OptimizerKind::AdamW, OptimizerKind::Adafactor] {
        let cfg = with_optimizer(optimizer, 10);
        let initial = flat(&adapted(Method::Mhr));
        let (straight, outcome) =
            train(adapted(Method::Mhr), &sampler, &cfg, &RunOptions::default()).unwrap();
        assert!(!outcome.interrupted && outcome.steps == 10);
        assert_ne!(flat(&straight), initial, "{optimizer:?} trains");

        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let flag = AtomicBool::new(false);
        let trigger = Trigger {
            inner: &sampler,
            at: 4,
            flag: Some(&flag),
            poison: false,
        };
        let options = RunOptions {
            dir: Some(&run),
            interrupt: Some(&flag),
            ..Default::default()
        };
        let (_, partial) = train(adapted(Method::Mhr), &trigger, &cfg, &options).unwrap();
        assert!(partial.interrupted, "{optimizer:?}");
        assert_eq!(
            partial.steps, 5,
            "the step in flight completes, the next one does not start"
        );
        let latest = run.checkpoints().load_latest().unwrap().unwrap();
        assert_eq!(latest.step, 5);
        assert_eq!(latest.state["optimizer"], optimizer.name());

        // A fresh process: a new model and a lowered flag, resumed from the checkpoint of step 5.
        let (resumed, rest) = train(
            adapted(Method::Mhr),
            &sampler,
            &cfg,
            &RunOptions {
                dir: Some(&run),
                interrupt: Some(&AtomicBool::new(false)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!rest.interrupted && rest.steps == 10);
        let (a, b) = (flat(&resumed), flat(&straight));
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differing,
            0,
            "{optimizer:?}: {differing} of {} parameters differ after resume",
            a.len()
        );

        // Resuming under the other optimiser is refused by name, not misread.
        let other = with_optimizer(
            match optimizer {
                OptimizerKind::AdamW => OptimizerKind::Adafactor,
                OptimizerKind::Adafactor => OptimizerKind::AdamW,
            },
            10,
        );
        let device = Default::default();
        let err = resume(Some(&run), adapted(Method::Mhr), &other.optim, &device)
            .err()
            .unwrap();
        assert!(err.to_string().contains(optimizer.name()), "{err}");
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_checkpoint() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let cfg = TrainConfig {
        checkpoint_every: 2,
        ..config(10)
    };
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let poisoned = Trigger {
        inner: &sampler,
        at: 5,
        flag: None,
        poison: true,
    };
    let options = RunOptions {
        dir: Some(&run),
        ..Default::default()
    };
    let err = train(adapted(Method::Mhr), &poisoned, &cfg, &options)
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::NonFiniteLoss { step: 5, .. }), "{err}");
    // The checkpoint of step 4 is intact and loads into a model; training resumes from it.
    let device = Default::default();
    let (_, _, start) = resume(Some(&run), adapted(Method::Mhr), &cfg.optim, &device).unwrap();
    assert_eq!(start, 4);
    let (_, outcome) = train(adapted(Method::Mhr), &sampler, &cfg, &options).unwrap();
    assert_eq!(outcome.steps, 10);
    assert!(
        outcome
            .losses
            .iter()
            .all(|(step, loss)| *step > 4 && loss.is_finite())
    );
}

/// The child half of [`sigint_checkpoints_and_exits_cleanly`]: trains until Ctrl-C, under the real
/// handler. Runs only when that test starts it (with the run directory in `MHR_SIGINT_CHILD`).
#[test]
#[ignore = "started as a child process by sigint_checkpoints_and_exits_cleanly"]
fn sigint_child() {
    let Some(dir) = std::env::var_os("MHR_SIGINT_CHILD") else {
        return;
    };
    let run = RunDir::new(std::path::PathBuf::from(dir));
    let flag = mhr_train::interrupt::sigint_flag().unwrap();
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    /// Tells the parent that training runs (and the handler is installed) once step 2 is under way.
    struct Announce<'a> {
        inner: &'a dyn StepData,
        marker: std::path::PathBuf,
    }
    impl StepData for Announce<'_> {
        fn shape(&self) -> StepShape {
            self.inner.shape()
        }

        fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
            if step == 2 {
                std::fs::write(&self.marker, b"").unwrap();
            }
            self.inner.examples(step, micro)
        }
    }
    let announce = Announce {
        inner: &sampler,
        marker: run.path.join("ready"),
    };
    let options = RunOptions {
        dir: Some(&run),
        interrupt: Some(&flag),
        ..Default::default()
    };
    let (_, outcome) = train(adapted(Method::Mhr), &announce, &config(1_000_000), &options).unwrap();
    println!(
        "outcome: interrupted={} steps={}",
        outcome.interrupted, outcome.steps
    );
}

#[cfg(unix)]
#[test]
fn sigint_checkpoints_and_exits_cleanly() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "training::sigint_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MHR_SIGINT_CHILD", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !dir.path().join("ready").exists() {
        assert!(Instant::now() < deadline, "the child never started training");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child exited before training"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child: {:?}\n{stdout}", output.status);
    // libtest prints "test sigint_child ... " on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("outcome: ").map(|(_, rest)| rest))
        .expect(&stdout);
    let steps: usize = line
        .strip_prefix("interrupted=true steps=")
        .expect(line)
        .parse()
        .unwrap();
    assert!(steps >= 3, "interrupted after the ready marker of step 2: {line}");
    let latest = RunDir::new(dir.path())
        .checkpoints()
        .load_latest()
        .unwrap()
        .unwrap();
    assert_eq!(latest.step, steps, "the checkpoint holds exactly the steps done");
}

/// Steps of the killed runs: enough that every kill below lands mid-run.
const KILLED_RUN_STEPS: usize = 24;

/// A checkpoint after every step, so that a kill can land inside a save.
fn killed_run_config() -> TrainConfig {
    TrainConfig {
        checkpoint_every: 1,
        ..config(KILLED_RUN_STEPS)
    }
}

/// Prints `step N` as step N starts (after the checkpoint of step N is written), for the parent to time
/// its kill.
struct Report<'a> {
    inner: &'a dyn StepData,
}

impl StepData for Report<'_> {
    fn shape(&self) -> StepShape {
        self.inner.shape()
    }

    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
        if micro == 0 {
            println!("step {step}");
        }
        self.inner.examples(step, micro)
    }
}

/// The child half of [`sigkill_at_any_moment_leaves_a_resumable_run`]: trains (resuming from the run
/// directory in `MHR_SIGKILL_CHILD`) until killed. Runs only when that test starts it.
#[test]
#[ignore = "started as a child process by sigkill_at_any_moment_leaves_a_resumable_run"]
fn sigkill_child() {
    let Some(dir) = std::env::var_os("MHR_SIGKILL_CHILD") else {
        return;
    };
    let run = RunDir::new(std::path::PathBuf::from(dir));
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let options = RunOptions {
        dir: Some(&run),
        ..Default::default()
    };
    let report = Report { inner: &sampler };
    train(adapted(Method::Mhr), &report, &killed_run_config(), &options).unwrap();
}

/// When, after the child announces a step, the parent kills it.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This fraction of the last step's duration later.
    Fraction(f64),
    /// As soon as this path inside the temporary folder of the step's checkpoint appears ("": the folder
    /// itself), i.e. at a chosen point of the save.
    Saving(&'static str),
    /// As soon as the step's checkpoint folder is renamed into place, before or after `latest` names it.
    Renamed,
}

/// The names in `dir` of temporary files and folders (`.name.pid.tmp`).
fn temporaries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with('.') && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(unix)]
#[test]
fn sigkill_at_any_moment_leaves_a_resumable_run() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    // (step announced, when to kill after it): fixed points spread over a step and into its save.
    let kills = [
        (2, KillAt::Fraction(0.0)),
        (4, KillAt::Saving("")),
        (7, KillAt::Fraction(0.37)),
        (10, KillAt::Saving("model.mpk")),
        (13, KillAt::Fraction(0.81)),
        (16, KillAt::Saving("manifest.json")),
        (19, KillAt::Renamed),
        (21, KillAt::Fraction(0.55)),
    ];
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let checkpoints = dir.path().join("checkpoints");
    let mut latest_step = 0;
    let mut killed_mid_save = 0;
    for (at, when) in kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "training::sigkill_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MHR_SIGKILL_CHILD", dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // libtest prints "test sigkill_child ... " before the first step's line.
        let announced = |line: &str| {
            line.rsplit_once("step ")
                .and_then(|(_, n)| n.parse::<usize>().ok())
        };
        let (mut previous, mut step_time) = (None, Duration::ZERO);
        loop {
            let line = lines.next().expect("the child ended before the kill").unwrap();
            let Some(step) = announced(&line) else {
                continue;
            };
            let now = Instant::now();
            if let Some(before) = previous {
                step_time = now - before;
            }
            previous = Some(now);
            if step >= at {
                break;
            }
        }
        let saving = checkpoints.join(format!(".step-{:09}.{}.tmp", at + 1, child.id()));
        let saved = checkpoints.join(format!("step-{:09}", at + 1));
        let wait_for = |path: &std::path::Path| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !path.exists() && !saved.exists() {
                assert!(Instant::now() < deadline, "step {at} never saved");
                std::thread::yield_now();
            }
        };
        match when {
            KillAt::Fraction(f) => std::thread::sleep(step_time.mul_f64(f)),
            KillAt::Saving(file) => wait_for(&saving.join(file)),
            KillAt::Renamed => wait_for(&saved),
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "killed, not finished: {status:?}");
        drop(lines);

        // The checkpoint `latest` names verifies as it is, with no fallback, and is never a temporary.
        let latest = run.checkpoints().load_latest().unwrap().unwrap();
        assert!(
            latest.step >= at.max(latest_step) && latest.step < KILLED_RUN_STEPS,
            "killed after step {at} started: latest checkpoint {}",
            latest.step
        );
        let pointer = std::fs::read_to_string(checkpoints.join("latest")).unwrap();
        assert_eq!(pointer, format!("step-{:09}", latest.step));
        if saving.exists() {
            killed_mid_save += 1;
            assert_eq!(
                latest.step, at,
                "killed before the rename: `latest` still names step {at}"
            );
        }
        latest_step = latest.step;
    }
    eprintln!("{killed_mid_save} of the kills landed inside a checkpoint save");

    // A line torn by a kill mid-write (which `RunDir::log` avoids by writing a line at once) is dropped.
    let metrics = dir.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str(r#"{"stage":"","step":"#);
    std::fs::write(&metrics, text).unwrap();

    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let cfg = killed_run_config();
    let (straight, _) = train(adapted(Method::Mhr), &sampler, &cfg, &RunOptions::default()).unwrap();
    let options = RunOptions {
        dir: Some(&run),
        ..Default::default()
    };
    let (resumed, rest) = train(adapted(Method::Mhr), &sampler, &cfg, &options).unwrap();
    assert_eq!(rest.losses.first().map(|l| l.0), Some(latest_step + 1));
    let (a, b) = (flat(&resumed), flat(&straight));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} parameters differ after the kills",
        a.len()
    );
    let steps: Vec<u64> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        steps,
        (1..=KILLED_RUN_STEPS as u64).collect::<Vec<_>>(),
        "each step logged once"
    );
    assert_eq!(
        temporaries(&checkpoints),
        Vec::<String>::new(),
        "half-written saves removed"
    );
}

#[test]
fn corrupt_checkpoint_is_refused_by_name_and_resume_falls_back() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &config(0), 0);
    let cfg = TrainConfig {
        checkpoint_every: 2,
        ..config(10)
    };
    let (straight, _) = train(adapted(Method::Mhr), &sampler, &cfg, &RunOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let stopped = RunOptions {
        dir: Some(&run),
        stop_after: Some(6),
        ..Default::default()
    };
    train(adapted(Method::Mhr), &sampler, &cfg, &stopped).unwrap();
    let model = dir.path().join("checkpoints/step-000000006/model.mpk");
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&model, bytes).unwrap();

    let err = run.checkpoints().load_latest().unwrap_err().to_string();
    assert!(
        err.contains(&model.display().to_string()) && err.contains("checksum mismatch"),
        "{err}"
    );
    // Resume falls back to the checkpoint of step 4 and still ends where the uninterrupted run does.
    let options = RunOptions {
        dir: Some(&run),
        ..Default::default()
    };
    let (resumed, rest) = train(adapted(Method::Mhr), &sampler, &cfg, &options).unwrap();
    assert_eq!(rest.losses.first().map(|l| l.0), Some(5));
    let (a, b) = (flat(&resumed), flat(&straight));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differing, 0, "{differing} of {} parameters differ", a.len());
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 10, "steps 5 and 6 logged once, not twice");
    assert_eq!(run.checkpoints().load_latest().unwrap().unwrap().step, 10);
}

#[test]
fn rank_classification_scores_choices_by_mean_log_likelihood() {
    use mhr_core::RoutingContext;
    use mhr_data::EncodedChoices;
    use mhr_train::eval::rank_classification;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let model = adapted(Method::Mhr);
    // Choices of 1 to 3 tokens (eos included), so batches pad them to different lengths.
    let examples: Vec<EncodedChoices> = (0..6u32)
        .map(|i| EncodedChoices {
            input_ids: vec![3 + i, 5 + i, 1],
            choices: (0..2 + i as usize % 3)
                .map(|c| {
                    let mut ids: Vec<u32> = (0..c as u32 % 4)
                        .map(|k| 4 + (i + 3 * k + c as u32) % 19)
                        .collect();
                    ids.push(1);
                    ids
                })
                .collect(),
            gold: i as usize % 2,
            task_id: i as usize % 4,
        })
        .collect();
    let ranked = rank_classification(&model, &examples, 4).unwrap();

    // Independently: one forward pass per (example, choice), log-softmax on the host.
    let device = Default::default();
    let mut predictions = Vec::new();
    for (e, example) in examples.iter().enumerate() {
        let mut expected = Vec::new();
        for choice in &example.choices {
            let ids = |v: &[u32]| {
                Tensor::<A, 2, Int>::from_data(
                    TensorData::new(v.iter().map(|&x| x as i64).collect::<Vec<_>>(), [1, v.len()]),
                    &device,
                )
            };
            let ctx = RoutingContext::new(
                Tensor::<A, 1, Int>::from_data([example.task_id as i64], &device),
                mhr_core::RoutingMode::Deterministic,
            );
            let mask = Tensor::<A, 2, Int>::ones([1, example.input_ids.len()], &device);
            let out = model
                .forward(ids(&example.input_ids), mask, ids(choice), &ctx)
                .unwrap();
            let logits: Vec<f32> = out.logits.into_data().iter::<f32>().collect();
            let vocab = logits.len() / choice.len();
            let loglik: f64 = choice
                .iter()
                .enumerate()
                .map(|(pos, &label)| {
                    let row = &logits[pos * vocab..(pos + 1) * vocab];
                    let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
                    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                    row[label as usize] as f64 - max - z.ln()
                })
                .sum();
            expected.push(loglik / choice.len() as f64);
        }
        for (got, want) in ranked.scores[e].iter().zip(&expected) {
            assert!((got - want).abs() < 1e-4, "example {e}: {got} vs {want}");
        }
        assert_eq!(ranked.scores[e].len(), expected.len());
        let best = (0..expected.len())
            .max_by(|&a, &b| expected[a].total_cmp(&expected[b]).then(b.cmp(&a)))
            .unwrap();
        predictions.push(best);
    }
    assert_eq!(ranked.predictions, predictions);
    let correct = predictions
        .iter()
        .zip(&examples)
        .filter(|(p, e)| **p == e.gold)
        .count();
    assert_eq!(ranked.accuracy, correct as f64 / examples.len() as f64);

    let bad = vec![EncodedChoices {
        gold: 5,
        ..examples[0].clone()
    }];
    let err = rank_classification(&model, &bad, 4).unwrap_err().to_string();
    assert!(err.contains("example 0") && err.contains("gold index 5"), "{err}");
}

/// `$MHR_SHARED`, or the `shared/` folder beside the repository.
fn shared() -> std::path::PathBuf {
    std::env::var_os("MHR_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared").into())
}

/// COPA's rows drawn for few-shot training by T-Few's protocol (the shipped data has no training file, so
/// they come from the evaluation rows), encoded with the fixture tokenizer for routing row `task_id`.
fn copa_few_shot(
    k: usize,
    seed: u64,
    task_id: usize,
) -> (
    mhr_data::FewShotSplit,
    mhr_data::Encoder,
    Vec<mhr_data::EncodedChoices>,
) {
    use mhr_data::{Encoder, EncoderConfig, HfTokenizer, T0Dataset, T0Dir};
    let dir = T0Dir::open(shared().join("data/t0eval")).unwrap();
    let split = dir.few_shot(T0Dataset::Copa, k, 0, seed).unwrap();
    let tokenizer = HfTokenizer::from_file(&shared().join("fixtures/t5/tokenizer.json")).unwrap();
    let config = EncoderConfig {
        max_source_len: 64,
        max_target_len: 24,
        source_suffix: None,
    };
    let encoder = Encoder::new(std::sync::Arc::new(tokenizer), config).unwrap();
    let examples = mhr_train::t0::encode_choices(&encoder, &split.train, task_id).unwrap();
    (split, encoder, examples)
}

#[test]
fn t0_choice_source_is_deterministic_and_yields_the_gold_choice_at_its_index() {
    use mhr_data::ChoiceBatchData;
    use mhr_train::data::ChoiceStepData;
    let (split, encoder, examples) = copa_few_shot(12, 42, 1);
    assert_eq!(examples.len(), 12);
    let raw: Vec<serde_json::Value> = std::fs::read_to_string(shared().join("data/t0eval/copa/val.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids = |text: &str| encoder.encode_target(text).unwrap();
    // 12 examples, micro-batches of 4, 2 per step: steps 0 and 1 (first micro-batch) are one epoch.
    let shape = TrainConfig {
        batch_size: 4,
        grad_accumulation: 2,
        ..TrainConfig::default()
    };
    let source = ShuffledEpochs::new(&examples, &shape, 9);
    let epoch: Vec<_> = [(0, 0), (0, 1), (1, 0)]
        .into_iter()
        .flat_map(|(step, micro)| source.choices(step, micro))
        .collect();
    let mut seen: Vec<usize> = Vec::new();
    for item in &epoch {
        let i = examples.iter().position(|e| e == item).unwrap();
        seen.push(i);
        let row: usize = split.train[i].id.strip_prefix("copa-").unwrap().parse().unwrap();
        let label = raw[row]["label"].as_u64().unwrap() as usize;
        let (gold, wrong) = if label == 0 {
            ("choice1", "choice2")
        } else {
            ("choice2", "choice1")
        };
        assert_eq!(item.gold, label, "row {row}");
        assert_eq!(item.choices.len(), 2);
        assert_eq!(
            item.choices[label],
            ids(raw[row][gold].as_str().unwrap()),
            "row {row}"
        );
        assert_eq!(
            item.choices[1 - label],
            ids(raw[row][wrong].as_str().unwrap()),
            "row {row}"
        );
        assert_eq!(item.task_id, 1);
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..12).collect::<Vec<_>>(),
        "an epoch yields every example once"
    );
    // Deterministic in (step, micro-batch); another seed, another order.
    let again = ShuffledEpochs::new(&examples, &shape, 9);
    assert_eq!(again.choices(5, 1), source.choices(5, 1));
    assert_ne!(
        ShuffledEpochs::new(&examples, &shape, 10).choices(0, 0),
        source.choices(0, 0)
    );
    // Collated, each example's gold row holds the gold choice's ids.
    let batch = source.choices(3, 0);
    let data = ChoiceBatchData::collate(&batch, 0);
    let t = data.pairs.target_len;
    for row in 0..data.pairs.batch_size {
        let (e, c) = (data.example_index[row], data.choice_index[row]);
        let expected: Vec<i64> = batch[e].choices[c].iter().map(|&x| i64::from(x)).collect();
        assert_eq!(
            &data.pairs.labels[row * t..row * t + expected.len()],
            expected.as_slice()
        );
        assert!(
            data.pairs.labels[row * t + expected.len()..(row + 1) * t]
                .iter()
                .all(|&l| l == -100)
        );
    }
    assert_eq!(data.gold, batch.iter().map(|e| e.gold).collect::<Vec<_>>());
}

/// The fixture T5 with MHR adapters (rows for 2 tasks), prepared for adapting task 1 as `method` does.
fn fixture_for_adaptation(method: Method) -> T5ForConditionalGeneration<A> {
    use mhr_train::methods::{AdapterSizes, attach_pretraining, prepare_adaptation};
    let device = Default::default();
    let model = T5ForConditionalGeneration::<A>::load(shared().join("fixtures/t5/t5-v1_1"), &device).unwrap();
    <A as Backend>::seed(&device, 3);
    let sizes = AdapterSizes {
        lora_rank: 4,
        poly_rank: 4,
        n_skills: 4,
        mhr_heads: 4,
        ..AdapterSizes::default()
    };
    let all = TargetModules::Names(
        ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let model = attach_pretraining(model, Method::Mhr, &sizes, &all, 2).unwrap();
    prepare_adaptation(model, method, &sizes).unwrap()
}

/// The metric lines of a run folder.
fn metric_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tfew_adaptation_lowers_the_tfew_loss_and_logs_its_terms() {
    use mhr_train::objective::Objective;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (_, _, examples) = copa_few_shot(16, 42, 1);
    let source = ShuffledEpochs::new(&examples, &config(0), 0);
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let options = RunOptions {
        dir: Some(&run),
        ..Default::default()
    };
    let model = fixture_for_adaptation(Method::Mhr);
    let mut cfg = config(30);
    cfg.optim.lr = 3e-2;
    let (_, outcome) = train(model, Objective::TFew(&source), &cfg, &options).unwrap();
    let mean = |l: &[(usize, f64)]| l.iter().map(|x| x.1).sum::<f64>() / l.len() as f64;
    let (first, last) = (mean(&outcome.losses[..3]), mean(&outcome.losses[27..]));
    assert!(last < first * 0.8, "T-Few loss {first} → {last}");
    let lines = metric_lines(dir.path());
    assert_eq!(lines.len(), 30);
    for line in &lines {
        let term = |k: &str| line[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {line}"));
        let (lm, mc, ul) = (term("lm"), term("mc"), term("unlikelihood"));
        assert!((lm + mc + ul - term("loss")).abs() < 1e-5, "{line}");
        // −log(1 − p + 0.01) lies above −log 1.01 (below 0 where the wrong tokens have p < 0.01).
        assert!(lm > 0.0 && mc > 0.0 && ul > -(1.01f64).ln(), "{line}");
    }
    // Two choices scored alike at first: the MC term starts near ln 2.
    let mc0 = lines[0]["mc"].as_f64().unwrap();
    assert!((mc0 - 2f64.ln()).abs() < 0.25, "first L_MC {mc0}");
}

#[test]
fn tfew_z_adaptation_moves_only_routing() {
    use mhr_train::objective::Objective;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (_, _, examples) = copa_few_shot(16, 42, 1);
    let source = ShuffledEpochs::new(&examples, &config(0), 0);
    let z = fixture_for_adaptation(Method::MhrZ);
    let before = named(&z);
    let (z, _) = train(z, Objective::TFew(&source), &config(3), &RunOptions::default()).unwrap();
    let moved = changed(&before, &named(&z));
    assert!(!moved.is_empty());
    assert!(
        moved.iter().all(|p| p.ends_with("module_logits")),
        "-z moved {moved:?}"
    );
}

#[test]
fn tfew_resume_with_accumulation_equals_uninterrupted_run() {
    use mhr_train::objective::Objective;
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (_, _, examples) = copa_few_shot(12, 1024, 1);
    let cfg = TrainConfig {
        batch_size: 4,
        grad_accumulation: 2,
        checkpoint_every: 2,
        ..config(6)
    };
    let source = ShuffledEpochs::new(&examples, &cfg, 0);
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_run = RunDir::new(straight_dir.path());
    fn options(run: &RunDir) -> RunOptions<'_> {
        RunOptions {
            dir: Some(run),
            ..Default::default()
        }
    }
    let objective = Objective::TFew(&source);
    let (straight, _) = train(
        fixture_for_adaptation(Method::Mhr),
        objective,
        &cfg,
        &options(&straight_run),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::new(dir.path());
    let stopped = RunOptions {
        stop_after: Some(3),
        ..options(&run)
    };
    let (_, partial) = train(fixture_for_adaptation(Method::Mhr), objective, &cfg, &stopped).unwrap();
    assert_eq!(partial.steps, 3);
    let (resumed, _) = train(
        fixture_for_adaptation(Method::Mhr),
        objective,
        &cfg,
        &options(&run),
    )
    .unwrap();
    let (a, b) = (flat(&resumed), flat(&straight));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(differing, 0, "{differing} of {} parameters differ", a.len());
    assert_eq!(
        metric_lines(dir.path()),
        metric_lines(straight_dir.path()),
        "the same losses and terms, each step logged once"
    );
}
