//! peft adapter folders (Poly, MHR, LoRA, (IA)^3) on the v1.1 base, against peft's numbers.

use std::collections::BTreeMap;

use crate::common::*;
use burn::prelude::*;
use mhr_core::{Adapter, AdapterHost, RoutingContext, RoutingMode};
use mhr_models::{GenerationConfig, T5ForConditionalGeneration};

const TOL: f32 = 1e-4;

fn adapted<B: Backend>(name: &str) -> T5ForConditionalGeneration<B> {
    T5ForConditionalGeneration::<B>::load(fixture("t5-v1_1"), &Default::default())
        .unwrap()
        .load_peft_adapter(fixture(name))
        .unwrap()
}

/// Poly and MHR route by the reference's task ids, deterministically (peft's eval mode).
fn context<B: Backend>(reference: &Reference) -> RoutingContext<B> {
    if reference.has("task_ids") {
        RoutingContext::new(reference.ints("task_ids"), RoutingMode::Deterministic)
    } else {
        RoutingContext::untasked()
    }
}

/// The holdout fixtures have no `poly` folder: adapter tests run on the folders present.
fn present(name: &str) -> bool {
    let present = fixture(name).is_dir();
    if !present {
        println!("{name}: fixture absent, skipped");
    }
    present
}

fn check_forward(name: &str) {
    if !present(name) {
        return;
    }
    let reference = Reference::open(name);
    let model = adapted::<Cpu>(name);
    let out = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &context(&reference),
        )
        .unwrap();
    assert_close(
        &format!("{name} logits"),
        out.logits.into_data(),
        reference.data("logits"),
        TOL,
    );
    assert_close(
        &format!("{name} loss"),
        out.loss.into_data(),
        reference.data("loss"),
        TOL,
    );
}

#[test]
fn poly_forward_matches_peft() {
    check_forward("t5-v1_1-poly");
}

#[test]
fn mhr_forward_matches_peft() {
    check_forward("t5-v1_1-mhr");
}

#[test]
fn lora_forward_matches_peft() {
    check_forward("t5-v1_1-lora");
}

#[test]
fn ia3_forward_matches_peft() {
    check_forward("t5-v1_1-ia3");
}

/// Gradients of the loss w.r.t. every `poly_lora_A`, `poly_lora_B` and routing-logit tensor, by peft name.
fn check_gradients(name: &str) {
    if !present(name) {
        return;
    }
    let reference = Reference::open(name);
    let model = adapted::<Grad>(name);
    let ctx = context(&reference);
    let out = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &ctx,
        )
        .unwrap();
    let grads = out.loss.backward();
    let mut found = BTreeMap::new();
    model.for_each_site(|path, site| {
        if let Some(Adapter::RoutedLora(a)) = &site.adapter {
            let mut put = |suffix: &str, data: Option<TensorData>| {
                found.insert(format!("grad.{path}.{suffix}"), data.expect("gradient"));
            };
            put("poly_lora_A", a.poly_lora_a.grad(&grads).map(Tensor::into_data));
            put("poly_lora_B", a.poly_lora_b.grad(&grads).map(Tensor::into_data));
            put(
                "poly_router.module_logits",
                a.router
                    .own()
                    .unwrap()
                    .module_logits
                    .grad(&grads)
                    .map(Tensor::into_data),
            );
        }
    });
    let expected: Vec<String> = reference
        .names()
        .into_iter()
        .filter(|k| k.starts_with("grad."))
        .collect();
    assert_eq!(found.keys().cloned().collect::<Vec<_>>(), {
        let mut e = expected.clone();
        e.sort();
        e
    });
    let worst = expected
        .iter()
        .map(|key| (max_rel_diff(found[key].clone(), reference.data(key)), key))
        .fold((0.0f32, &expected[0]), |a, b| if b.0 > a.0 { b } else { a });
    println!(
        "{name}: {} gradient tensors, max rel error {:.3e} ({})",
        expected.len(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= TOL,
        "{name}: {} max relative error {}",
        worst.1,
        worst.0
    );
}

#[test]
fn poly_gradients_match_peft() {
    check_gradients("t5-v1_1-poly");
}

#[test]
fn mhr_gradients_match_peft() {
    check_gradients("t5-v1_1-mhr");
}

#[test]
fn routing_weights_match_peft() {
    for name in ["t5-v1_1-poly", "t5-v1_1-mhr"].into_iter().filter(|n| present(n)) {
        let reference = Reference::open(name);
        let model = adapted::<Cpu>(name);
        let site = "encoder.block.0.layer.0.SelfAttention.q";
        let mut weights = None;
        model.for_each_site(|path, linear| {
            if let (true, Some(Adapter::RoutedLora(a))) = (path == site, &linear.adapter) {
                weights = Some(
                    a.router
                        .own()
                        .unwrap()
                        .mixing_weights(reference.ints("task_ids"), RoutingMode::Deterministic),
                );
            }
        });
        let key = format!("mixing_weights.{site}");
        assert_close(
            &format!("{name} {key}"),
            weights.unwrap().into_data(),
            reference.data(&key),
            1e-6,
        );
    }
}

/// Routed generation: task ids are expanded per beam, and the cache changes nothing.
#[test]
fn routed_generation_with_and_without_cache_agree() {
    let reference = Reference::open("t5-v1_1-mhr");
    let model = adapted::<Cpu>("t5-v1_1-mhr");
    let ctx = context(&reference);
    for config in [GenerationConfig::greedy(6), GenerationConfig::beam(6, 3)] {
        let run = |use_cache| {
            let config = GenerationConfig {
                use_cache,
                ..config.clone()
            };
            rows(
                model
                    .generate(
                        reference.ints("input_ids"),
                        reference.ints("attention_mask"),
                        &ctx,
                        &config,
                    )
                    .unwrap(),
            )
        };
        assert_eq!(run(true), run(false), "{config:?}");
        // Rows of other tasks finish and leave the batch; each row decodes as it does alone.
        let (ids, mask) = (reference.ints("input_ids"), reference.ints("attention_mask"));
        let task_ids: Tensor<Cpu, 1, Int> = reference.ints("task_ids");
        let batch = run(true);
        for (i, row) in batch.iter().enumerate() {
            let one = |t: &Tensor<Cpu, 2, Int>| t.clone().slice([i..i + 1, 0..t.dims()[1]]);
            let ctx = RoutingContext::new(task_ids.clone().slice(i..i + 1), RoutingMode::Deterministic);
            let alone = rows(model.generate(one(&ids), one(&mask), &ctx, &config).unwrap()).remove(0);
            assert_eq!(row[..alone.len()], alone, "row {i}, {config:?}");
        }
    }
}
