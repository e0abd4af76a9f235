//! Data-parallel training with CPU peers (threads on one flex device) against one device with the whole
//! batch: after 10 steps every parameter and every logged loss agree to 1e-5 (relative), for MHR
//! pre-training with routing noise and T5 dropout, `-z` (routing-only) adaptation, LoRA and full
//! fine-tuning, with gradient accumulation and clipping; a run resumed on another number of peers continues
//! it; repeated runs are bit-identical; a peer that fails stops the others with its error.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn_flex::Flex;
use mhr_core::{Method, Stage};
use mhr_data::EncodedExample;
use mhr_models::{Precision, T5ForConditionalGeneration};
use mhr_train::data::{ShuffledEpochs, StepData, StepShape};
use mhr_train::optim::OptimConfig;
use mhr_train::trainer::{RunDir, RunOptions, TrainOutcome, train_on};
use mhr_train::{TrainConfig, TrainError};

use crate::training::{RNG, adapted_on, config, examples};

type A = Autodiff<Flex>;
type Model = T5ForConditionalGeneration<A>;

/// 6 examples per micro-batch, 2 micro-batches per step, T5 dropout on: every draw, accumulation and the
/// weighting of shares are exercised. Learning rates of the paper's range: at 10× them, Adam turns the
/// float rounding of a split sum (about 1e-7 per step) into 2e-5 after 10 steps.
fn parallel_config() -> TrainConfig {
    TrainConfig {
        batch_size: 6,
        grad_accumulation: 2,
        dropout_rate: Some(0.1),
        optim: OptimConfig {
            lr: 1e-3,
            routing_lr: 1e-2,
            ..config(10).optim
        },
        ..config(10)
    }
}

fn model(method: Method, stage: Stage) -> Model {
    method
        .trainable(stage)
        .apply(adapted_on::<A>(method, Precision::F32))
}

fn run(model: Model, config: &TrainConfig, peers: usize, options: &RunOptions) -> (Model, TrainOutcome) {
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, config, 3);
    let devices = vec![Default::default(); peers];
    train_on(model, &sampler, config, options, &devices).unwrap()
}

/// Each parameter's values, in module order.
struct Params(Vec<Vec<f32>>);

impl<B: Backend> ModuleVisitor<B> for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data().iter::<f32>().collect());
    }
}

fn params(model: &Model) -> Vec<Vec<f32>> {
    let mut p = Params(Vec::new());
    model.visit(&mut p);
    p.0
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

fn assert_equal_runs(
    what: &str,
    (one, one_out): &(Model, TrainOutcome),
    (many, many_out): &(Model, TrainOutcome),
) {
    let (a, b) = (params(one), params(many));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| relative(x, y)).fold(0.0, f64::max);
    assert!(worst <= 1e-5, "{what}: parameters differ by {worst:e} (relative)");
    // A resumed run logs the steps it took.
    let logged = &one_out.losses[one_out.losses.len() - many_out.losses.len()..];
    for ((step, x), (other, y)) in logged.iter().zip(&many_out.losses) {
        assert_eq!(step, other);
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "{what}: loss at step {step}: {x} vs {y}"
        );
    }
}

#[test]
fn peers_equal_one_device_with_the_whole_batch() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = parallel_config();
    let none = RunOptions::default();
    for (method, stage) in [
        (Method::Mhr, Stage::Pretrain),
        (Method::MhrZ, Stage::Adapt),
        (Method::Lora, Stage::Pretrain),
        (Method::FullFinetune, Stage::Pretrain),
    ] {
        let start = model(method, stage);
        let one = run(start.clone(), &cfg, 1, &none);
        let trained = params(&one.0);
        let moved = params(&start)
            .iter()
            .zip(&trained)
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 0, "{method}: nothing trained");
        for peers in [2, 3] {
            let many = run(start.clone(), &cfg, peers, &none);
            assert_equal_runs(&format!("{method} ({stage:?}) on {peers} peers"), &one, &many);
        }
    }
}

#[test]
fn peers_repeat_bit_for_bit_and_differ_from_noise_of_another_seed() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = parallel_config();
    let none = RunOptions::default();
    let start = model(Method::Mhr, Stage::Pretrain);
    let first = run(start.clone(), &cfg, 3, &none);
    let again = run(start.clone(), &cfg, 3, &none);
    assert_eq!(params(&first.0), params(&again.0));
    let reseeded = run(start, &TrainConfig { seed: 6, ..cfg }, 3, &none);
    assert_ne!(params(&first.0), params(&reseeded.0), "the seed drives the draws");
}

#[test]
fn a_run_resumes_on_another_number_of_peers() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = parallel_config();
    let start = model(Method::Mhr, Stage::Pretrain);
    let whole = run(start.clone(), &cfg, 1, &RunOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new(dir.path());
    let options = |stop_after| RunOptions {
        dir: Some(&run_dir),
        stop_after,
        ..RunOptions::default()
    };
    let (_, first) = run(start.clone(), &cfg, 2, &options(Some(4)));
    assert_eq!(first.steps, 4);
    let resumed = run(start, &cfg, 3, &options(None));
    assert_eq!(resumed.1.steps, 10);
    assert_equal_runs("2 peers, then 3", &whole, &resumed);
    // Rank 0 alone wrote the metrics: one line per step.
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 10);
}

#[test]
fn an_interrupt_stops_every_peer_after_the_step_under_way() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = parallel_config();
    let start = model(Method::Lora, Stage::Pretrain);
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new(dir.path());
    let flag = AtomicBool::new(false);
    let data = examples();
    let sampler = ShuffledEpochs::new(&data, &cfg, 3);
    let raise = Hook {
        inner: &sampler,
        at: 3,
        act: &|| flag.store(true, Ordering::SeqCst),
    };
    let options = RunOptions {
        dir: Some(&run_dir),
        interrupt: Some(&flag),
        ..RunOptions::default()
    };
    let (_, outcome) = train_on(start.clone(), &raise, &cfg, &options, &[Default::default(); 2]).unwrap();
    assert!(outcome.interrupted);
    assert_eq!(
        outcome.steps, 4,
        "step 3 (0-based) finishes, then every peer stops"
    );
    flag.store(false, Ordering::SeqCst);
    let resumed = run(start.clone(), &cfg, 2, &options);
    let whole = run(start, &cfg, 1, &RunOptions::default());
    assert_equal_runs("interrupted at 4, resumed", &whole, &resumed);
}

#[test]
fn a_failing_peer_stops_the_others_with_its_error() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = parallel_config();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new(dir.path());
    let data = examples();
    let sampler = ShuffledEpochs::new(
        &data,
        &TrainConfig {
            checkpoint_every: 2,
            ..cfg.clone()
        },
        3,
    );
    let once = AtomicBool::new(false);
    let fail = Hook {
        inner: &sampler,
        at: 5,
        act: &|| {
            if !once.swap(true, Ordering::SeqCst) {
                panic!("disk on fire");
            }
        },
    };
    let options = RunOptions {
        dir: Some(&run_dir),
        ..RunOptions::default()
    };
    let cfg = TrainConfig {
        checkpoint_every: 2,
        ..cfg
    };
    let start = model(Method::Mhr, Stage::Pretrain);
    let error = train_on(start.clone(), &fail, &cfg, &options, &[Default::default(); 3]).unwrap_err();
    match &error {
        TrainError::PeerPanicked { message, .. } => assert_eq!(message, "disk on fire"),
        other => panic!("expected the panicking peer's error, got: {}", other.chain()),
    }
    // The last good checkpoint (step 4) stays and resumes.
    let checkpoint = run_dir.checkpoints().load_latest_good().unwrap().unwrap();
    assert_eq!(checkpoint.step, 4);
}

/// Passes `inner`'s batches through and calls `act` whenever a peer asks for step `at`.
struct Hook<'a> {
    inner: &'a dyn StepData,
    at: usize,
    act: &'a (dyn Fn() + Sync),
}

impl StepData for Hook<'_> {
    fn shape(&self) -> StepShape {
        self.inner.shape()
    }

    fn examples(&self, step: usize, micro: usize) -> Vec<EncodedExample> {
        if step == self.at {
            (self.act)();
        }
        self.inner.examples(step, micro)
    }
}
