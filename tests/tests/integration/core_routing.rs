//! mhr-core against peft's Poly/MHR fixtures: router output, per-example mixing, -μ, merging, peft files.

use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::prelude::*;
use mhr_core::io::SafetensorsFile;
use mhr_core::peft::{ModuleWeights, PeftAdapter};
use mhr_core::{AdaptedLinear, Adapter, PolyRouter, RoutedLora, RoutingConfig, RoutingContext, RoutingMode};
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
/// mttl's `module_logits_dropout`: dropped weights are zero, the survivors renormalise among themselves.
/// peft's `n_splits` must divide both widths; peft itself only fails inside a reshape at forward time.
#[test]
fn expanded_batches_repeat_each_task_id() {
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
    let _rng = mhr_tests::rng_lock();
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
