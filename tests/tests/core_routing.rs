//! mhr-core against peft's Poly/MHR fixtures: router output, per-example mixing, -μ, merging, peft files.

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::prelude::*;
use mhr_core::io::SafetensorsFile;
use mhr_core::peft::{ModuleWeights, PeftAdapter};
use mhr_core::{
    AdaptedLinear, Adapter, AdapterConfig, Normalization, PolyRouter, RoutedLora, RoutedLoraConfig,
    RoutingConfig, RoutingContext, RoutingMode,
};
use mhr_tests::{assert_abs_close, assert_rel_close, t5_fixture};

type B = NdArray;
const DEV: NdArrayDevice = NdArrayDevice::Cpu;
const Q: &str = "encoder.block.0.layer.0.SelfAttention.q";

fn f32s<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn routed(variant: &str, module: &str) -> (RoutedLora<B>, Tensor<B, 1, Int>) {
    let adapter = PeftAdapter::load(t5_fixture(&format!("t5-v1_1-{variant}"))).unwrap();
    let Some(ModuleWeights::Poly { a, .. }) = adapter.modules.get(module) else {
        panic!("no poly module {module}")
    };
    let d_in = a.shape[0] * a.shape[2];
    let d_out = match adapter.modules.get(module) {
        Some(ModuleWeights::Poly { b, .. }) => b.shape[0] * b.shape[3],
        _ => unreachable!(),
    };
    let Some(Adapter::RoutedLora(r)) = adapter
        .adapter_for::<B>(module, d_in, d_out, &RoutingConfig::default(), &DEV)
        .unwrap()
    else {
        panic!("not routed")
    };
    let reference =
        SafetensorsFile::open(t5_fixture(&format!("t5-v1_1-{variant}/reference.safetensors"))).unwrap();
    let ids = Tensor::from_data(reference.i64("task_ids").unwrap(), &DEV);
    (r, ids)
}

#[test]
fn router_output_equals_peft_mixing_weights() {
    for variant in ["poly", "mhr"] {
        let (r, ids) = routed(variant, Q);
        let w = r
            .router
            .own()
            .unwrap()
            .mixing_weights(ids, RoutingMode::Deterministic);
        let reference =
            SafetensorsFile::open(t5_fixture(&format!("t5-v1_1-{variant}/reference.safetensors"))).unwrap();
        let expected = reference.f32(&format!("mixing_weights.{Q}")).unwrap();
        assert_eq!(w.dims().to_vec(), expected.shape.to_vec(), "{variant}");
        assert_abs_close(&f32s(w), &expected.to_vec::<f32>().unwrap(), 1e-6, variant);
    }
}

/// The layer's batched forward equals a per-example loop in f64 over the skill formula of PAPER.md §1.5.
#[test]
fn mixed_batch_delta_equals_per_example_formula() {
    for variant in ["poly", "mhr"] {
        let (r, ids) = routed(variant, "decoder.block.0.layer.2.DenseReluDense.wo");
        let [h, s, din_h, rank] = r.dims();
        let dout_h = r.poly_lora_b.dims()[3];
        let (d_in, d_out) = (h * din_h, h * dout_h);
        let x = Tensor::<B, 3>::random([3, 5, d_in], burn::tensor::Distribution::Normal(0.0, 1.0), &DEV);
        let ctx = RoutingContext::new(ids.clone(), RoutingMode::Deterministic);
        let got = f32s(r.delta(x.clone(), &ctx));

        let w = f32s(
            r.router
                .own()
                .unwrap()
                .mixing_weights(ids, RoutingMode::Deterministic),
        );
        let a = f32s(r.poly_lora_a.val());
        let b = f32s(r.poly_lora_b.val());
        let xs = f32s(x);
        let mut expected = vec![0f32; 3 * 5 * d_out];
        for e in 0..3 {
            // A_t: [d_in, r], B_t: [r, d_out] for this example's task.
            let mut at = vec![0f64; d_in * rank];
            let mut bt = vec![0f64; rank * d_out];
            for q in 0..h {
                for k in 0..s {
                    let wk = w[(e * h + q) * s + k] as f64;
                    for i in 0..din_h {
                        for j in 0..rank {
                            at[(q * din_h + i) * rank + j] +=
                                wk * a[((q * s + k) * din_h + i) * rank + j] as f64;
                        }
                    }
                    for j in 0..rank {
                        for o in 0..dout_h {
                            bt[j * d_out + q * dout_h + o] +=
                                wk * b[((q * s + k) * rank + j) * dout_h + o] as f64;
                        }
                    }
                }
            }
            for n in 0..5 {
                let row = &xs[(e * 5 + n) * d_in..(e * 5 + n + 1) * d_in];
                let xa: Vec<f64> = (0..rank)
                    .map(|j| (0..d_in).map(|i| row[i] as f64 * at[i * rank + j]).sum())
                    .collect();
                for o in 0..d_out {
                    let v: f64 = (0..rank).map(|j| xa[j] * bt[j * d_out + o]).sum::<f64>() / rank as f64;
                    expected[(e * 5 + n) * d_out + o] = v as f32;
                }
            }
        }
        assert_rel_close(&got, &expected, 1e-5, variant);
    }
}

#[test]
fn mu_adapter_equals_uniformly_routed_inventory() {
    let (r, _) = routed("mhr", Q);
    let lora = r.average_skills();
    let uniform = RoutedLora::from_parts(
        r.poly_lora_a.val(),
        r.poly_lora_b.val(),
        PolyRouter::from_logits(
            Tensor::zeros(
                [
                    1,
                    r.router.own().unwrap().n_heads * r.router.own().unwrap().n_skills,
                ],
                &DEV,
            ),
            4,
            4,
            RoutingConfig::default(),
        ),
        r.scale,
    );
    let x = Tensor::<B, 3>::random([2, 3, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &DEV);
    let ctx = RoutingContext::new(Tensor::from_data([0i64, 0], &DEV), RoutingMode::Deterministic);
    let routed_out = f32s(uniform.delta(x.clone(), &ctx));
    let mu_out = f32s(lora.delta(x.reshape([6, 64])));
    assert_rel_close(&mu_out, &routed_out, 1e-5, "mu vs uniform routing");
    // and the factors are the skill means
    let a_mean: f32 = f32s(r.poly_lora_a.val().slice([0..1, 0..4, 0..1, 0..1]))
        .iter()
        .sum::<f32>()
        / 4.0;
    assert!((f32s(lora.lora_a.val())[0] - a_mean).abs() < 1e-6);
}

#[test]
fn merged_forward_equals_adapter_forward_and_unmerge_restores() {
    let (r, _) = routed("mhr", Q);
    let weight = Tensor::<B, 2>::random([64, 64], burn::tensor::Distribution::Normal(0.0, 0.1), &DEV);
    let layer = AdaptedLinear::new(weight.clone(), None).set_adapter(Some(Adapter::RoutedLora(r)));
    let x = Tensor::<B, 3>::random([2, 4, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &DEV);
    let ctx = RoutingContext::new(Tensor::from_data([2i64, 2], &DEV), RoutingMode::Deterministic);
    let before = f32s(layer.forward(x.clone(), &ctx));
    let merged = layer.merge(Some(2)).unwrap();
    assert!(merged.clone().merge(Some(2)).is_err(), "double merge must fail");
    let after = f32s(merged.forward(x, &ctx));
    assert_rel_close(&after, &before, 1e-5, "merged forward");
    let restored = merged.unmerge().unwrap();
    assert_rel_close(
        &f32s(restored.weight.val()),
        &f32s(weight),
        1e-6,
        "unmerged weight",
    );
}

#[test]
fn merging_a_routed_adapter_needs_a_known_task() {
    let (r, _) = routed("poly", Q);
    let layer = AdaptedLinear::new(Tensor::<B, 2>::zeros([64, 64], &DEV), None)
        .set_adapter(Some(Adapter::RoutedLora(r)));
    assert!(
        layer
            .clone()
            .merge(None)
            .unwrap_err()
            .to_string()
            .contains("needs a task id")
    );
    assert!(
        layer
            .merge(Some(3))
            .unwrap_err()
            .to_string()
            .contains("router has 3 tasks")
    );
}

#[test]
fn peft_files_round_trip_byte_for_byte() {
    for variant in ["poly", "mhr", "lora", "ia3"] {
        let dir = t5_fixture(&format!("t5-v1_1-{variant}"));
        let loaded = PeftAdapter::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        loaded.save(out.path()).unwrap();
        let original = SafetensorsFile::open(dir.join("adapter_model.safetensors")).unwrap();
        let written = SafetensorsFile::open(out.path().join("adapter_model.safetensors")).unwrap();
        let mut a = original.names();
        let mut b = written.names();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{variant}: tensor names");
        for key in &a {
            assert_eq!(original.shape(key), written.shape(key), "{variant}: {key}");
            let x = original.f32(key).unwrap();
            let y = written.f32(key).unwrap();
            assert_eq!(x.as_bytes(), y.as_bytes(), "{variant}: {key} bytes");
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap())
                .unwrap();
        let original_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config, original_config, "{variant}: config");
    }
}

/// Binary-concrete statistics (τ = 1): P(z > ½) = σ(Z), and E[z] = ∫ σ(Z + l) dLogistic(l) by quadrature.
#[test]
fn relaxed_bernoulli_matches_its_analytical_statistics() {
    let logits = [-2.0f32, -0.5, 0.0, 1.5];
    let config = RoutingConfig {
        normalization: Normalization::SqrtCorrection,
        ..RoutingConfig::default()
    };
    let router = PolyRouter::<B>::from_logits(Tensor::from_data([logits], &DEV), 1, 4, config);
    // With h = 1 and the sqrt correction w = z·√(1/4) = z/2, so z is observed directly.
    let n = 20_000;
    let ids = Tensor::<B, 1, Int>::zeros([n], &DEV);
    <B as burn::tensor::backend::Backend>::seed(&DEV, 7);
    let z: Vec<f32> = f32s(router.mixing_weights(ids, RoutingMode::Sampled) * 2.0);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    for (k, &l) in logits.iter().enumerate() {
        let samples: Vec<f64> = (0..n).map(|i| z[i * 4 + k] as f64).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let above = samples.iter().filter(|&&v| v > 0.5).count() as f64 / n as f64;
        // E[σ(Z + L)], L ~ Logistic(0, 1), by the midpoint rule on [-40, 40].
        let steps = 400_000;
        let dx = 80.0 / steps as f64;
        let expected_mean: f64 = (0..steps)
            .map(|i| {
                let t = -40.0 + (i as f64 + 0.5) * dx;
                sigmoid(l as f64 + t) * sigmoid(t) * (1.0 - sigmoid(t)) * dx
            })
            .sum();
        // Standard error of a mean of values in (0, 1) with n = 20k is below 0.0036; allow 4 σ.
        assert!(
            (mean - expected_mean).abs() < 0.015,
            "logit {l}: mean {mean} vs {expected_mean}"
        );
        assert!(
            (above - sigmoid(l as f64)).abs() < 0.015,
            "logit {l}: P(z>½) {above} vs {}",
            sigmoid(l as f64)
        );
    }
}

#[test]
fn injected_noise_gives_the_binary_concrete_formula() {
    let config = RoutingConfig {
        temperature: 0.5,
        ..RoutingConfig::default()
    };
    let router = PolyRouter::<B>::from_logits(Tensor::from_data([[0.3f32, -1.2]], &DEV), 1, 2, config);
    let u = [0.25f32, 0.9];
    let w = f32s(
        router.mixing_weights_with_noise(Tensor::from_data([0i64], &DEV), Tensor::from_data([[u]], &DEV)),
    );
    let z: Vec<f64> = [0.3f64, -1.2]
        .iter()
        .zip(u)
        .map(|(l, u)| 1.0 / (1.0 + (-(l + (u as f64).ln() - (1.0 - u as f64).ln()) / 0.5).exp()))
        .collect();
    let total = z[0] + z[1];
    assert_abs_close(
        &w,
        &[(z[0] / total) as f32, (z[1] / total) as f32],
        1e-6,
        "noised weights",
    );
}

#[test]
fn sampled_routing_passes_gradients_to_the_logits() {
    type A = Autodiff<NdArray>;
    let router = PolyRouter::<A>::from_logits(
        Tensor::from_data([[0.1f32, -0.2, 0.3], [0.5, 0.0, -0.4]], &DEV),
        1,
        3,
        RoutingConfig::default(),
    );
    let w = router.mixing_weights(Tensor::from_data([0i64, 1, 1], &DEV), RoutingMode::Sampled);
    let loss = (w * Tensor::<A, 3>::from_data([[[1.0f32, 2.0, 3.0]]], &DEV)).sum();
    let grads = loss.backward();
    let g = router.module_logits.grad(&grads).expect("logits get a gradient");
    let g: Vec<f32> = g.into_data().to_vec().unwrap();
    assert!(
        g.iter().all(|v| v.is_finite()) && g.iter().any(|v| v.abs() > 1e-6),
        "{g:?}"
    );
}

/// mttl's `module_logits_dropout`: dropped weights are zero, the survivors renormalise among themselves.
#[test]
fn logits_dropout_zeroes_skills_before_normalising() {
    let logits = [0.4f32, -1.0, 2.0, 0.0];
    let config = RoutingConfig {
        relaxed_bernoulli: false,
        logits_dropout: 0.25,
        ..RoutingConfig::default()
    };
    let router = PolyRouter::<B>::from_logits(Tensor::from_data([logits], &DEV), 1, 4, config);
    let keep = [1.0f32, 0.0, 1.0, 1.0];
    let w = f32s(router.mixing_weights_with_dropout(
        Tensor::from_data([0i64], &DEV),
        None,
        Tensor::from_data([[keep]], &DEV),
    ));
    let z: Vec<f64> = logits
        .iter()
        .zip(keep)
        .map(|(&l, k)| k as f64 / (1.0 + (-l as f64).exp()))
        .collect();
    let total: f64 = z.iter().sum();
    let expected: Vec<f32> = z.iter().map(|v| (v / total) as f32).collect();
    assert_abs_close(&w, &expected, 1e-6, "dropped-out weights");
    assert_eq!(w[1], 0.0);

    // Sampled mode drops each weight with probability p; evaluation never drops.
    let n = 4_000;
    let ids = Tensor::<B, 1, Int>::zeros([n], &DEV);
    <B as burn::tensor::backend::Backend>::seed(&DEV, 11);
    let sampled = f32s(router.mixing_weights(ids.clone(), RoutingMode::Sampled));
    let dropped = sampled.iter().filter(|&&v| v == 0.0).count() as f64 / sampled.len() as f64;
    // Standard error of a proportion near 0.25 over 16k cells is 0.0034; allow 4 σ.
    assert!((dropped - 0.25).abs() < 0.014, "dropped fraction {dropped}");
    let eval = f32s(router.mixing_weights(ids, RoutingMode::Deterministic));
    assert!(eval.iter().all(|&v| v > 0.0));
}

/// peft's `n_splits` must divide both widths; peft itself only fails inside a reshape at forward time.
#[test]
fn heads_that_do_not_divide_a_width_are_refused_at_construction() {
    let config = AdapterConfig::RoutedLora(RoutedLoraConfig::new(4, 2, 3, 5));
    let err = config.validate(64, 48).unwrap_err().to_string();
    assert!(err.contains("d_in = 64 is not divisible by n_heads = 3"), "{err}");
    let err = config.validate(48, 64).unwrap_err().to_string();
    assert!(
        err.contains("d_out = 64 is not divisible by n_heads = 3"),
        "{err}"
    );
    assert!(config.validate(48, 96).is_ok());
}

#[test]
fn routing_knobs_out_of_range_are_refused() {
    for (routing, message) in [
        (
            RoutingConfig {
                logits_dropout: 1.0,
                ..RoutingConfig::default()
            },
            "logits_dropout must lie in [0, 1), found 1",
        ),
        (
            RoutingConfig {
                temperature: 0.0,
                ..RoutingConfig::default()
            },
            "temperature must be a positive number, found 0",
        ),
    ] {
        let config = AdapterConfig::RoutedLora(RoutedLoraConfig {
            routing,
            ..RoutedLoraConfig::new(4, 2, 1, 3)
        });
        let err = config.validate(8, 8).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}

#[test]
fn unknown_tasks_fall_back_to_the_uniform_average() {
    let config = RoutingConfig {
        unknown_task_fallback: true,
        ..RoutingConfig::default()
    };
    let router = PolyRouter::<B>::from_logits(Tensor::from_data([[3.0f32, -3.0, 1.0]], &DEV), 1, 3, config);
    let w = f32s(router.mixing_weights(Tensor::from_data([0i64, 1, 5], &DEV), RoutingMode::Deterministic));
    assert!((w[0] - w[1]).abs() > 0.1, "known task is not uniform");
    for row in [1, 2] {
        assert_abs_close(
            &w[row * 3..row * 3 + 3],
            &[1.0 / 3.0; 3],
            1e-6,
            "unknown task row",
        );
    }
}

#[test]
fn expanded_batches_repeat_each_task_id() {
    let (r, ids) = routed("mhr", Q);
    let x = Tensor::<B, 3>::random([3, 2, 64], burn::tensor::Distribution::Normal(0.0, 1.0), &DEV);
    // Each example repeated twice (two beams / two answer choices), rows kept together.
    let expanded_x = x
        .clone()
        .reshape([3, 1, 2, 64])
        .repeat_dim(1, 2)
        .reshape([6, 2, 64]);
    let ctx = RoutingContext::new(ids, RoutingMode::Deterministic);
    let base = f32s(r.delta(x, &ctx));
    let implicit = f32s(r.delta(expanded_x.clone(), &ctx));
    let explicit = f32s(r.delta(expanded_x, &ctx.expand(2)));
    assert_eq!(implicit, explicit);
    for e in 0..3 {
        for k in 0..2 {
            let row = &implicit[(e * 2 + k) * 128..(e * 2 + k + 1) * 128];
            assert_eq!(row, &base[e * 128..(e + 1) * 128]);
        }
    }
}

#[test]
fn frozen_base_and_trainable_sets() {
    use mhr_core::{Method, Stage};
    type A = Autodiff<NdArray>;
    let (r, _) = routed("mhr", Q);
    let r = RoutedLora::<A>::from_parts(
        Tensor::from_data(r.poly_lora_a.val().into_data(), &DEV),
        Tensor::from_data(r.poly_lora_b.val().into_data(), &DEV),
        PolyRouter::from_logits(
            Tensor::from_data(r.router.own().unwrap().module_logits.val().into_data(), &DEV),
            4,
            4,
            RoutingConfig::default(),
        ),
        0.25,
    );
    let layer = AdaptedLinear::new(Tensor::<A, 2>::zeros([64, 64], &DEV), None)
        .set_adapter(Some(Adapter::RoutedLora(r)));
    let flags = |l: &AdaptedLinear<A>| {
        let Some(Adapter::RoutedLora(r)) = &l.adapter else {
            unreachable!()
        };
        let g = |p: &Param<Tensor<A, 4>>| p.val().is_require_grad();
        (
            l.weight.val().is_require_grad(),
            g(&r.poly_lora_a),
            r.router.own().unwrap().module_logits.val().is_require_grad(),
        )
    };
    assert_eq!(flags(&layer), (false, true, true));
    let z_only = Method::MhrZ.trainable(Stage::Adapt).apply(layer);
    assert_eq!(flags(&z_only), (false, false, true));
    let full = Method::FullFinetune.trainable(Stage::Adapt).apply(z_only);
    assert_eq!(flags(&full), (true, false, false));
}

/// `keeping_mixed_adapters` (what `generate` uses): deterministic deltas equal the unkept ones, the mixing
/// runs once per site and batch size (a router changed afterwards is not seen: the contract is frozen
/// parameters), and sampled routing never keeps.
#[test]
fn kept_mixed_adapters_are_mixed_once_and_only_under_deterministic_routing() {
    let (site, ids) = routed("mhr", Q);
    let x = Tensor::<B, 3>::random([ids.dims()[0], 3, 64], burn::tensor::Distribution::Default, &DEV);
    let plain = RoutingContext::new(ids.clone(), RoutingMode::Deterministic);
    let kept = plain.clone().keeping_mixed_adapters();
    let expected = f32s(site.delta(x.clone(), &plain));
    assert_eq!(f32s(site.delta(x.clone(), &kept)), expected);
    let mut rerouted = site.clone();
    let router = site.router.own().unwrap();
    rerouted.router = mhr_core::SiteRouter::Own(PolyRouter::from_logits(
        router.module_logits.val().neg(),
        router.n_heads,
        router.n_skills,
        router.config.clone(),
    ));
    let moved = f32s(rerouted.delta(x.clone(), &plain));
    assert!(
        moved.iter().zip(&expected).any(|(a, b)| (a - b).abs() > 1e-4),
        "another routing moves the delta"
    );
    assert_eq!(
        f32s(rerouted.delta(x.clone(), &kept)),
        expected,
        "kept from the first call"
    );
    // A different batch size is mixed anew; an expanded context keeps nothing.
    let twice = Tensor::cat(vec![x.clone(), x.clone()], 0);
    assert_ne!(
        f32s(rerouted.delta(twice.clone(), &kept))[..expected.len()],
        expected[..]
    );
    let sampled = RoutingContext::new(ids, RoutingMode::Sampled).keeping_mixed_adapters();
    assert_ne!(
        f32s(site.delta(x.clone(), &sampled)),
        f32s(site.delta(x, &sampled)),
        "relaxed-Bernoulli samples are drawn at every call"
    );
}
