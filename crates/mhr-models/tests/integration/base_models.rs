//! The two base fixtures (T5 v1.1 and v1.0 layouts) against transformers' numbers.

use crate::common::*;
use burn::prelude::*;
use mhr_core::RoutingContext;
use mhr_models::{GenerationConfig, T5ForConditionalGeneration};

const TOL: f32 = 1e-4;

fn check_forward(name: &str) {
    let reference = Reference::open(name);
    let model = T5ForConditionalGeneration::<Cpu>::load(fixture(name), &Default::default()).unwrap();
    let ctx = RoutingContext::untasked();
    let out = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &ctx,
        )
        .unwrap();
    assert_close(
        &format!("{name} encoder_last_hidden_state"),
        out.encoder_last_hidden_state.into_data(),
        reference.data("encoder_last_hidden_state"),
        TOL,
    );
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
    assert_close(
        &format!("{name} label_loglik_sum"),
        out.label_loglik_sum.into_data(),
        reference.data("label_loglik_sum"),
        TOL,
    );
}

#[test]
fn v1_1_forward_matches_transformers() {
    check_forward("t5-v1_1");
}

#[test]
fn v1_0_forward_matches_transformers() {
    check_forward("t5-v1_0");
}

fn load(name: &str) -> (Reference, T5ForConditionalGeneration<Cpu>) {
    let model = T5ForConditionalGeneration::<Cpu>::load(fixture(name), &Default::default()).unwrap();
    (Reference::open(name), model)
}

fn generate(name: &str, config: &GenerationConfig) -> Vec<Vec<i64>> {
    let (reference, model) = load(name);
    let ctx = RoutingContext::untasked();
    rows(
        model
            .generate(
                reference.ints("input_ids"),
                reference.ints("attention_mask"),
                &ctx,
                config,
            )
            .unwrap(),
    )
}

#[test]
fn greedy_tokens_match_transformers() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        let expected = Reference::open(name).int_rows("greedy_tokens");
        assert_eq!(generate(name, &GenerationConfig::greedy(8)), expected, "{name}");
    }
}

#[test]
fn beam4_tokens_match_transformers() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        let expected = Reference::open(name).int_rows("beam4_tokens");
        assert_eq!(generate(name, &GenerationConfig::beam(8, 4)), expected, "{name}");
    }
}

#[test]
fn one_beam_is_greedy() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        let (reference, model) = load(name);
        let ctx = RoutingContext::untasked();
        let encoder = model
            .encode(
                reference.ints("input_ids"),
                reference.ints("attention_mask"),
                &ctx,
            )
            .unwrap();
        let beam = model
            .beam_search(&encoder, &ctx, &GenerationConfig::beam(8, 1))
            .unwrap();
        assert_eq!(rows(beam), reference.int_rows("greedy_tokens"), "{name}");
    }
}

#[test]
fn generation_without_cache_is_the_same() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        for config in [GenerationConfig::greedy(8), GenerationConfig::beam(8, 4)] {
            let uncached = GenerationConfig {
                use_cache: false,
                ..config.clone()
            };
            assert_eq!(
                generate(name, &uncached),
                generate(name, &config),
                "{name} {config:?}"
            );
        }
    }
}

/// Full fine-tuning: d loss / d param for the five base weights of the fixtures (linear weights are stored
/// transposed in Burn, so their gradients are compared with the transpose).
#[test]
fn full_finetuning_gradients_match_transformers() {
    use burn::module::Param;
    use mhr_core::TrainableSet;
    use mhr_models::t5::T5DenseReluDense;

    for name in ["t5-v1_1", "t5-v1_0"] {
        let reference = Reference::open(name);
        let model = T5ForConditionalGeneration::<Grad>::load(fixture(name), &Default::default()).unwrap();
        let model = TrainableSet {
            base: true,
            adapters: true,
            routing: true,
        }
        .apply(model);
        let ctx = RoutingContext::untasked();
        let out = model
            .forward(
                reference.ints("input_ids"),
                reference.ints("attention_mask"),
                reference.ints("labels"),
                &ctx,
            )
            .unwrap();
        let grads = out.loss.backward();
        let grad = |p: &Param<Tensor<Grad, 2>>| p.grad(&grads).expect("gradient").into_data();
        let last = model.decoder.block.last().unwrap();
        let wo = match &last.ff.dense_relu_dense {
            T5DenseReluDense::Act(m) => &m.wo,
            T5DenseReluDense::Gated(m) => &m.wo,
        };
        let bias = model.encoder.block[0]
            .self_attention
            .attention
            .relative_attention_bias
            .as_ref()
            .unwrap();
        let found = [
            ("grad.shared.weight", grad(&model.shared)),
            (
                "grad.encoder.block.0.layer.0.SelfAttention.q.weight",
                transpose(grad(&model.encoder.block[0].self_attention.attention.q.weight)),
            ),
            (
                "grad.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                grad(&bias.weight),
            ),
            (
                &format!(
                    "grad.decoder.block.{}.layer.2.DenseReluDense.wo.weight",
                    model.decoder.block.len() - 1
                ),
                transpose(grad(&wo.weight)),
            ),
            (
                "grad.decoder.final_layer_norm.weight",
                model
                    .decoder
                    .final_layer_norm
                    .weight
                    .grad(&grads)
                    .unwrap()
                    .into_data(),
            ),
        ];
        for (key, data) in found {
            assert_rel_close(&format!("{name} {key}"), data, reference.data(key), TOL);
        }
    }
}

fn transpose(data: TensorData) -> TensorData {
    Tensor::<Cpu, 2>::from_data(data, &Default::default())
        .transpose()
        .into_data()
}

/// Swaps the head's columns of eos and `token`: the model then says eos exactly where it said `token`.
fn swap_with_eos(
    mut model: T5ForConditionalGeneration<Cpu>,
    token: usize,
) -> T5ForConditionalGeneration<Cpu> {
    use burn::module::Param;
    let eos = model.config().eos_token_id as usize;
    let d = model.config().d_model;
    let head = match model.lm_head.take() {
        Some(head) => head.val(),
        None => model.shared.val().transpose() * (d as f32).powf(-0.5),
    };
    let column = |i: usize| head.clone().slice([0..d, i..i + 1]);
    let (eos_column, token_column) = (column(eos), column(token));
    let head = head
        .slice_assign([0..d, eos..eos + 1], token_column)
        .slice_assign([0..d, token..token + 1], eos_column);
    model.lm_head = Some(Param::from_tensor(head));
    model
}

/// Rows that produce eos stop there and are padded with pad; generation ends once every row is done.
#[test]
fn eos_ends_rows_and_pads_them() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        let (reference, model) = load(name);
        let (eos, pad) = (model.config().eos_token_id, model.config().pad_token_id);
        let ctx = RoutingContext::untasked();
        let (ids, mask) = (reference.ints("input_ids"), reference.ints("attention_mask"));
        let greedy = reference.int_rows("greedy_tokens");
        // A token of the first row becomes eos; every row then stops where it first said that token. Rows that
        // ended by themselves before that token would continue unpredictably, so the token must come first.
        let stops_first = |t: i64| {
            greedy.iter().all(|row| {
                let first = |x: i64| row[1..].iter().position(|&y| y == x).unwrap_or(usize::MAX);
                first(eos) == usize::MAX || first(t) < first(eos)
            })
        };
        let Some(token) = greedy[0][1..]
            .iter()
            .copied()
            .find(|&t| t != eos && stops_first(t))
        else {
            println!("{name}: no token precedes every natural eos, skipped");
            continue;
        };
        let model = swap_with_eos(model, token as usize);
        let mut expected: Vec<Vec<i64>> = greedy
            .iter()
            .map(|row| match row[1..].iter().position(|&t| t == token) {
                Some(i) => row[..=i].iter().copied().chain([eos]).collect(),
                None => row.clone(),
            })
            .collect();
        let width = expected.iter().map(Vec::len).max().unwrap();
        expected.iter_mut().for_each(|row| row.resize(width, pad));
        let generated = model.generate(ids.clone(), mask.clone(), &ctx, &GenerationConfig::greedy(8));
        assert_eq!(rows(generated.unwrap()), expected, "{name} greedy");
        let encoder = model.encode(ids.clone(), mask.clone(), &ctx).unwrap();
        let beam = model
            .beam_search(&encoder, &ctx, &GenerationConfig::beam(8, 1))
            .unwrap();
        assert_eq!(rows(beam), expected, "{name} one beam");
        for use_cache in [true, false] {
            let config = GenerationConfig {
                use_cache,
                ..GenerationConfig::beam(8, 4)
            };
            for row in rows(model.generate(ids.clone(), mask.clone(), &ctx, &config).unwrap()) {
                if let Some(i) = row.iter().position(|&t| t == eos) {
                    assert!(row[i + 1..].iter().all(|&t| t == pad), "{name}: {row:?}");
                }
            }
        }
        // Finished rows leave the batch; the others decode on as each would alone.
        for config in [GenerationConfig::greedy(8), GenerationConfig::beam(8, 3)] {
            let batch = rows(model.generate(ids.clone(), mask.clone(), &ctx, &config).unwrap());
            for (i, row) in batch.iter().enumerate() {
                let one = |t: &Tensor<Cpu, 2, Int>| t.clone().slice([i..i + 1, 0..t.dims()[1]]);
                let alone = rows(model.generate(one(&ids), one(&mask), &ctx, &config).unwrap()).remove(0);
                assert_eq!(
                    row[..alone.len()],
                    alone,
                    "{name} row {i}, {} beams",
                    config.num_beams
                );
                assert!(row[alone.len()..].iter().all(|&t| t == pad), "{name}: {row:?}");
            }
        }
    }
}
