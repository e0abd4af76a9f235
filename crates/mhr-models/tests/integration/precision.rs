//! bf16 base weights with f32 adapters on flex, against transformers + peft with the base loaded in bfloat16
//! (`tests/data/bf16-oracle`, written by `scripts/make_bf16_fixtures.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn_flex::Flex;
use mhr_core::io::SafetensorsFile;
use mhr_core::{Adapter, AdapterHost, RoutingContext, RoutingMode, TrainableSet};
use mhr_models::{GenerationConfig, ModelError, Precision, T5ForConditionalGeneration};

use crate::common::*;

type Train = Autodiff<Flex>;

fn oracle_dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bf16-oracle")).join(name)
}

struct Oracle(SafetensorsFile);

impl Oracle {
    fn open(name: &str) -> Self {
        Self(SafetensorsFile::open(oracle_dir(name).join("reference.safetensors")).unwrap())
    }

    fn data(&self, key: &str) -> TensorData {
        self.0.f32(key).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ints<B: Backend, const D: usize>(&self, key: &str) -> Tensor<B, D, Int> {
        Tensor::from_data(self.0.i64(key).unwrap(), &Default::default())
    }

    fn context<B: Backend>(&self) -> RoutingContext<B> {
        match self.0.contains("task_ids") {
            true => RoutingContext::new(self.ints("task_ids"), RoutingMode::Deterministic),
            false => RoutingContext::untasked(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.0.names()
    }
}

fn f32_data<B: Backend, const D: usize>(t: Tensor<B, D>) -> TensorData {
    t.cast(DType::F32).into_data()
}

/// Our bf16 value against transformers' bf16 one: within `tol` at most, and when `nearer`, nearer to it on
/// average than to transformers' f32 run of the same weights, so that the comparison tells bf16 arithmetic
/// from f32.
fn check(what: &str, ours: TensorData, oracle: &Oracle, key: &str, tol: f32, nearer: bool) -> f32 {
    let bf16 = oracle.data(&format!("bf16.{key}"));
    let f32 = oracle.data(&format!("f32.{key}"));
    let mean = |a: &TensorData, b: &TensorData| {
        let n = a.num_elements() as f32;
        a.iter::<f32>()
            .zip(b.iter::<f32>())
            .map(|(x, y)| (x - y).abs())
            .sum::<f32>()
            / n
    };
    let (near, far) = (mean(&ours, &bf16), mean(&ours, &f32));
    let err = max_abs_diff(ours, bf16);
    println!("{what} {key}: max abs error {err:.3e}, mean {near:.3e} (to transformers' f32 run: {far:.3e})");
    assert!(err <= tol, "{what} {key}: max abs error {err} > {tol}");
    assert!(
        !nearer || near < far,
        "{what} {key}: nearer f32 ({far}) than bf16 ({near})"
    );
    err
}

fn check_base(name: &str) {
    let oracle = Oracle::open(name);
    let device = Default::default();
    let model =
        T5ForConditionalGeneration::<Flex>::load_as(oracle_dir(name), Precision::Bf16, &device).unwrap();
    assert_eq!(model.precision(), Precision::Bf16);
    assert_eq!(
        model.shared.val().dtype(),
        DType::BF16,
        "a bf16 checkpoint stays bf16"
    );
    let out = model
        .forward(
            oracle.ints("input_ids"),
            oracle.ints("attention_mask"),
            oracle.ints("labels"),
            &RoutingContext::untasked(),
        )
        .unwrap();
    assert_eq!(out.loss.dtype(), DType::F32, "the loss in f32");
    // The encoder rounds where transformers' does, to the bit; the head's matmul sums in another order,
    // which moves a few logits by one bf16 step.
    check(
        name,
        f32_data(out.encoder_last_hidden_state),
        &oracle,
        "encoder_last_hidden_state",
        0.0,
        true,
    );
    check(name, f32_data(out.logits), &oracle, "logits", 1e-2, true);
    check(name, out.loss.into_data(), &oracle, "loss", 1e-3, true);
    check(
        name,
        out.label_loglik_sum.into_data(),
        &oracle,
        "label_loglik_sum",
        2e-3,
        true,
    );
    let tokens = model
        .generate(
            oracle.ints("input_ids"),
            oracle.ints("attention_mask"),
            &RoutingContext::untasked(),
            &GenerationConfig::greedy(8),
        )
        .unwrap();
    let expected: Vec<i64> = oracle
        .0
        .i64("bf16.greedy_tokens")
        .unwrap()
        .iter::<i64>()
        .collect();
    assert_eq!(
        tokens.into_data().iter::<i64>().collect::<Vec<_>>(),
        expected,
        "{name} greedy tokens"
    );
}

#[test]
fn v1_1_bf16_matches_transformers_bf16() {
    check_base("t5-v1_1");
}

#[test]
fn v1_0_bf16_matches_transformers_bf16() {
    check_base("t5-v1_0");
}

/// f32 adapters on the bf16 base, forward and adapter gradients (peft keeps the adapter in f32).
fn check_adapter(name: &str) {
    let oracle = Oracle::open(name);
    let device = Default::default();
    let model = T5ForConditionalGeneration::<Train>::load_as(oracle_dir("t5-v1_1"), Precision::Bf16, &device)
        .unwrap()
        .load_peft_adapter(oracle_dir(name))
        .unwrap();
    let model = TrainableSet {
        base: false,
        adapters: true,
        routing: true,
    }
    .apply(model);
    let out = model
        .forward(
            oracle.ints("input_ids"),
            oracle.ints("attention_mask"),
            oracle.ints("labels"),
            &oracle.context(),
        )
        .unwrap();
    check(
        name,
        f32_data(out.logits.clone().inner()),
        &oracle,
        "logits",
        0.03,
        true,
    );
    check(
        name,
        out.loss.clone().inner().into_data(),
        &oracle,
        "loss",
        2e-3,
        true,
    );
    let grads = out.loss.backward();
    let mut found = BTreeMap::new();
    model.for_each_site(|path, site| {
        let mut put = |suffix: &str, param: &Param<Tensor<Train, 2>>, transpose: bool| {
            assert_eq!(
                param.val().dtype(),
                DType::F32,
                "{path}.{suffix}: adapters stay f32"
            );
            let grad = param.grad(&grads).expect("a gradient");
            let grad = if transpose { grad.transpose() } else { grad };
            found.insert(format!("grad.{path}.{suffix}"), grad.into_data());
        };
        match &site.adapter {
            // peft's `lora_A.weight` is `[r, d_in]`, ours `[d_in, r]`.
            Some(Adapter::Lora(a)) => {
                put("lora_A.weight", &a.lora_a, true);
                put("lora_B.weight", &a.lora_b, true);
            }
            Some(Adapter::RoutedLora(a)) => {
                put(
                    "poly_router.module_logits",
                    &a.router.own().unwrap().module_logits,
                    false,
                );
                for (suffix, param) in [("poly_lora_A", &a.poly_lora_a), ("poly_lora_B", &a.poly_lora_b)] {
                    assert_eq!(param.val().dtype(), DType::F32);
                    found.insert(
                        format!("grad.{path}.{suffix}"),
                        param.grad(&grads).unwrap().into_data(),
                    );
                }
            }
            _ => panic!("{path}: not a LoRA or routed LoRA site"),
        }
    });
    let expected: Vec<String> = (oracle.names().into_iter())
        .filter_map(|k| {
            k.strip_prefix("bf16.")
                .filter(|k| k.starts_with("grad."))
                .map(String::from)
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "{name}: the gradients peft has");
    // The backward rounds in other places than torch's: within twice the spread between torch's bf16 and f32
    // gradients.
    let mut worst = 0.0f32;
    for key in expected {
        let spread = max_abs_diff(
            oracle.data(&format!("bf16.{key}")),
            oracle.data(&format!("f32.{key}")),
        );
        worst = worst.max(check(name, found[&key].clone(), &oracle, &key, 2.5 * spread, false) / spread);
    }
    println!("{name}: worst gradient error {worst:.2} × the bf16/f32 spread of transformers");
}

#[test]
fn lora_on_bf16_base_matches_peft() {
    check_adapter("t5-v1_1-lora");
}

#[test]
fn mhr_on_bf16_base_matches_peft() {
    check_adapter("t5-v1_1-mhr");
}

/// A LoRA merged into the bf16 base (its update rounded to bf16, as peft's `merge`) scores as the unmerged one,
/// within bf16's resolution.
#[test]
fn lora_merges_into_the_bf16_base() {
    let oracle = Oracle::open("t5-v1_1-lora");
    let device = Default::default();
    let model = T5ForConditionalGeneration::<Flex>::load_as(oracle_dir("t5-v1_1"), Precision::Bf16, &device)
        .unwrap()
        .load_peft_adapter(oracle_dir("t5-v1_1-lora"))
        .unwrap();
    let logits = |model: &T5ForConditionalGeneration<Flex>| {
        let out = model.forward(
            oracle.ints("input_ids"),
            oracle.ints("attention_mask"),
            oracle.ints("labels"),
            &RoutingContext::untasked(),
        );
        f32_data(out.unwrap().logits)
    };
    let unmerged = logits(&model);
    let merged = model.map_each_site(|_, site| site.merge(None)).unwrap();
    let site = &merged.encoder.block[0].self_attention.attention.q;
    assert!(site.merged().is_some());
    assert_eq!(site.weight.val().dtype(), DType::BF16);
    let scale = unmerged.iter::<f32>().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(logits(&merged), unmerged);
    println!("merged vs unmerged bf16 LoRA logits: max abs error {err:.3e} (largest logit {scale:.2})");
    assert!(err < 0.03 * scale, "{err}");
}

/// ndarray computes in f32 only: bf16 is refused by name, before any weight is read.
#[test]
fn bf16_is_refused_on_ndarray() {
    let err = T5ForConditionalGeneration::<Cpu>::load_as(
        oracle_dir("t5-v1_1"),
        Precision::Bf16,
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InvalidInput {
                name: "precision",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bf16 is not supported"), "{err}");
}

/// Every float parameter's dtype and values, in visiting order.
struct Parameters(Vec<TensorData>);

impl<B: Backend> burn::module::ModuleVisitor<B> for Parameters {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data());
    }
}

fn parameters<B: Backend>(model: &T5ForConditionalGeneration<B>) -> Vec<TensorData> {
    let mut visitor = Parameters(Vec::new());
    model.visit(&mut visitor);
    visitor.0
}

/// A random bf16 model (what `cargo xtask bench --preset xl --precision bf16` trains) holds the f32 model's draws,
/// rounded to bf16 tensor by tensor, never the whole model in f32.
#[test]
fn random_bf16_model_is_the_f32_draws_rounded() {
    let config = mhr_models::T5Config::load(oracle_dir("t5-v1_1").join("config.json")).unwrap();
    let device = Default::default();
    Flex::seed(&device, 7);
    let direct = T5ForConditionalGeneration::<Flex>::new_as(&config, Precision::Bf16, &device).unwrap();
    Flex::seed(&device, 7);
    let rounded = T5ForConditionalGeneration::<Flex>::new(&config, &device)
        .unwrap()
        .with_precision(Precision::Bf16)
        .unwrap();
    assert_eq!(direct.precision(), Precision::Bf16);
    let (direct, rounded) = (parameters(&direct), parameters(&rounded));
    assert_eq!(direct.len(), rounded.len());
    assert!(direct.len() > 10, "{} parameters", direct.len());
    for (i, (a, b)) in direct.into_iter().zip(rounded).enumerate() {
        assert_eq!(a.dtype, DType::BF16, "parameter {i}");
        assert_eq!(a.shape, b.shape, "parameter {i}");
        assert_eq!(a.as_bytes(), b.as_bytes(), "parameter {i}");
    }
}
