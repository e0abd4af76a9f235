//! Activation checkpointing (`T5ForConditionalGeneration::checkpointed_gradients`) against the unsplit step.

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use mhr_core::peft::TargetModules;
use mhr_core::{AdapterConfig, AdapterHost, RoutedLoraConfig, RoutingContext, RoutingMode, TrainableSet};
use mhr_models::ModelError;

use super::{Model, RNG};
use crate::common::*;

/// A fixture with MHR adapters on every linear layer (B drawn, so every adapter weight has a gradient) and
/// every parameter trainable: the embeddings, the position bias and the head are used by several segments.
fn model(name: &str, dropout_rate: f64) -> Model {
    let device = Default::default();
    Grad::seed(&device, 3);
    let mut config = RoutedLoraConfig::new(2, 4, 2, 3);
    config.init_b_zero = false;
    let targets = TargetModules::Names(
        ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let model = Model::load(fixture(name), &device)
        .unwrap()
        .with_adapters(&targets, &AdapterConfig::RoutedLora(config))
        .unwrap()
        .with_dropout_rate(dropout_rate)
        .unwrap();
    TrainableSet {
        base: true,
        adapters: true,
        routing: true,
    }
    .apply(model)
}

struct Batch {
    input_ids: Tensor<Grad, 2, Int>,
    attention_mask: Tensor<Grad, 2, Int>,
    labels: Tensor<Grad, 2, Int>,
    ctx: RoutingContext<Grad>,
}

/// The fixture's inputs (padded sources, ignored labels), tasks 0, 2, 1, under `mode` routing.
fn batch(name: &str, mode: RoutingMode) -> Batch {
    let reference = Reference::open(name);
    let task_ids = Tensor::from_data(TensorData::new(vec![0i64, 2, 1], [3]), &Default::default());
    Batch {
        input_ids: reference.ints("input_ids"),
        attention_mask: reference.ints("attention_mask"),
        labels: reference.ints("labels"),
        ctx: RoutingContext::new(task_ids, mode),
    }
}

/// The checkpointed pass with segment seeds `100 + k`: token loss (value) and gradients.
fn checkpointed(model: &Model, batch: &Batch) -> (f32, GradientsParams) {
    let (loss, (), grads) = model
        .checkpointed_gradients(
            batch.input_ids.clone(),
            batch.attention_mask.clone(),
            batch.labels.clone(),
            &batch.ctx,
            |k| 100 + k as u64,
            |out| Ok::<_, ModelError>((out.loss, ())),
        )
        .unwrap();
    (loss.into_scalar(), grads)
}

/// Every parameter's gradient in two gradient sets: the largest difference relative to the largest gradient,
/// and how many parameters have a gradient in both.
struct Compare<'a> {
    found: &'a GradientsParams,
    expected: &'a GradientsParams,
    worst: f32,
    compared: usize,
    missing: Vec<String>,
}

impl ModuleVisitor<Grad> for Compare<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Grad, D>>) {
        if !param.val().is_require_grad() {
            return;
        }
        let (Some(found), Some(expected)) = (
            self.found.get::<Cpu, D>(param.id),
            self.expected.get::<Cpu, D>(param.id),
        ) else {
            self.missing.push(format!("{:?}", param.val().dims()));
            return;
        };
        let scale = expected.clone().abs().max().into_scalar().max(1e-12);
        let diff = (found - expected).abs().max().into_scalar();
        self.worst = self.worst.max(diff / scale);
        self.compared += 1;
    }
}

/// Without randomness (no dropout, deterministic routing) a checkpointed step is the unsplit step: the same
/// loss and, for every parameter, the same gradient up to the order of sums over segments.
#[test]
fn checkpointed_gradients_equal_the_unsplit_step() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["t5-v1_1", "t5-v1_0"] {
        let model = model(name, 0.0);
        let batch = batch(name, RoutingMode::Deterministic);
        let out = model
            .forward(
                batch.input_ids.clone(),
                batch.attention_mask.clone(),
                batch.labels.clone(),
                &batch.ctx,
            )
            .unwrap();
        let loss: f32 = out.loss.clone().into_scalar();
        let unsplit = GradientsParams::from_grads(out.loss.backward(), &model);
        let (checkpointed_loss, grads) = checkpointed(&model, &batch);
        assert_eq!(checkpointed_loss, loss, "{name}: loss");
        let mut compare = Compare {
            found: &grads,
            expected: &unsplit,
            worst: 0.0,
            compared: 0,
            missing: Vec::new(),
        };
        model.visit(&mut compare);
        assert!(
            compare.missing.is_empty(),
            "{name}: no gradient for {:?}",
            compare.missing
        );
        assert!(
            compare.compared > 50,
            "{name}: {} parameters compared",
            compare.compared
        );
        assert!(
            compare.worst < 1e-5,
            "{name}: gradients differ by {}",
            compare.worst
        );
    }
}

/// `θ + step · g` for the gradients `g` of the trainable parameters.
struct Move<'a> {
    grads: &'a GradientsParams,
    step: f64,
}

impl ModuleMapper<Grad> for Move<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Grad, D>>) -> Param<Tensor<Grad, D>> {
        match self.grads.get::<Cpu, D>(param.id) {
            Some(g) => param.map(|t| {
                let moved = t.clone().inner() + g * self.step;
                Tensor::from_inner(moved).require_grad()
            }),
            None => param,
        }
    }
}

/// Squared norm of every gradient of `grads` over the parameters of a model.
struct SquaredNorm<'a>(&'a GradientsParams, f64);

impl ModuleVisitor<Grad> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Grad, D>>) {
        if let Some(g) = self.0.get::<Cpu, D>(param.id) {
            self.1 += g.powi_scalar(2).sum().into_scalar() as f64;
        }
    }
}

/// With dropout and relaxed-Bernoulli routing noise, the recomputation must draw the masks of the first pass:
/// the gradient then predicts how the (seeded, hence deterministic) loss changes along it, as a central
/// difference measures. Masks drawn afresh in backward would differentiate another function.
#[test]
fn checkpointed_gradients_are_those_of_the_seeded_loss_under_dropout() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let name = "t5-v1_1";
    let model = model(name, 0.3);
    let batch = batch(name, RoutingMode::Sampled);
    let (loss, grads) = checkpointed(&model, &batch);
    assert_eq!(
        checkpointed(&model, &batch).0,
        loss,
        "the seeded loss is deterministic"
    );
    let mut norm = SquaredNorm(&grads, 0.0);
    model.visit(&mut norm);
    let step = 1e-3 / norm.1.sqrt();
    let along = |sign: f64| {
        let moved = model.clone().map(&mut Move {
            grads: &grads,
            step: sign * step,
        });
        checkpointed(&moved, &batch).0 as f64
    };
    let measured = (along(1.0) - along(-1.0)) / (2.0 * step);
    let predicted = norm.1;
    assert!(
        (measured - predicted).abs() < 0.02 * predicted,
        "directional derivative {measured} measured, {predicted} predicted by the gradient"
    );
    // The dropout acts: without it the loss differs.
    let plain = model.clone().with_dropout_rate(0.0).unwrap();
    assert!((checkpointed(&plain, &batch).0 - loss).abs() > 1e-3);
    let _ = model.valid();
}
