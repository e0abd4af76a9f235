//! The same numeric checks on WGPU (Mesa lavapipe in CI) as on ndarray.
#![cfg(feature = "wgpu")]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{NdArray, Wgpu};
use burn::prelude::*;
use mhr_core::peft::PeftAdapter;
use mhr_core::{AdaptedLinear, AdapterHost, RoutingConfig, RoutingContext, RoutingMode};
use mhr_tests::{assert_rel_close, t5_fixture, wgpu_required};

/// Whether a Vulkan driver is installed; without one the WGPU tests skip, unless CI requires them.
fn wgpu_available() -> bool {
    let has_icd = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if !has_icd {
        assert!(
            !wgpu_required(),
            "MHR_REQUIRE_WGPU=1 but no Vulkan driver (install mesa-vulkan-drivers)"
        );
        eprintln!("skipping: no Vulkan driver installed (apt-get install mesa-vulkan-drivers)");
    }
    has_icd
}

fn routed_layer_output<B: Backend>(device: &B::Device, variant: &str) -> Vec<f32> {
    let adapter = PeftAdapter::load(t5_fixture(&format!("t5-v1_1-{variant}"))).unwrap();
    let module = "decoder.block.1.layer.2.DenseReluDense.wi_0";
    let routed = adapter
        .adapter_for::<B>(module, 64, 96, &RoutingConfig::default(), device)
        .unwrap()
        .unwrap();
    let weight: Vec<f32> = (0..64 * 96)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let layer = AdaptedLinear::new(
        Tensor::<B, 1>::from_floats(weight.as_slice(), device).reshape([64, 96]),
        None,
    )
    .set_adapter(Some(routed));
    let x: Vec<f32> = (0..3 * 7 * 64)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
        .collect();
    let x = Tensor::<B, 1>::from_floats(x.as_slice(), device).reshape([3, 7, 64]);
    let ctx = RoutingContext::new(
        Tensor::from_data([0i64, 2, 1], device),
        RoutingMode::Deterministic,
    );
    layer.forward(x, &ctx).into_data().to_vec::<f32>().unwrap()
}

#[test]
fn routed_layer_matches_ndarray_on_wgpu() {
    if !wgpu_available() {
        return;
    }
    for variant in ["poly", "mhr"] {
        let cpu = routed_layer_output::<NdArray>(&Default::default(), variant);
        let gpu = routed_layer_output::<Wgpu>(&WgpuDevice::DefaultDevice, variant);
        assert_rel_close(&gpu, &cpu, 1e-5, &format!("{variant} on wgpu"));
    }
}

/// T5 logits on WGPU against the HF fixture (as the ndarray tests do), base and MHR-adapted.
#[test]
fn t5_logits_match_the_fixtures_on_wgpu() {
    use mhr_core::io::SafetensorsFile;
    use mhr_models::T5ForConditionalGeneration;
    use mhr_tests::assert_abs_close;
    if !wgpu_available() {
        return;
    }
    let device = WgpuDevice::DefaultDevice;
    for (model_dir, adapter) in [
        ("t5-v1_1", None),
        ("t5-v1_0", None),
        ("t5-v1_1", Some("t5-v1_1-mhr")),
    ] {
        let mut model = T5ForConditionalGeneration::<Wgpu>::load(t5_fixture(model_dir), &device).unwrap();
        if let Some(a) = adapter {
            model = model.load_peft_adapter(t5_fixture(a)).unwrap();
        }
        let reference =
            SafetensorsFile::open(t5_fixture(adapter.unwrap_or(model_dir)).join("reference.safetensors"))
                .unwrap();
        let ints = |key: &str| Tensor::<Wgpu, 2, Int>::from_data(reference.i64(key).unwrap(), &device);
        let ctx = match adapter {
            Some(_) => RoutingContext::new(
                Tensor::from_data(reference.i64("task_ids").unwrap(), &device),
                RoutingMode::Deterministic,
            ),
            None => RoutingContext::untasked(),
        };
        let out = model
            .forward(ints("input_ids"), ints("attention_mask"), ints("labels"), &ctx)
            .unwrap();
        let logits: Vec<f32> = out.logits.into_data().to_vec().unwrap();
        let expected: Vec<f32> = reference.f32("logits").unwrap().to_vec().unwrap();
        assert_abs_close(
            &logits,
            &expected,
            1e-4,
            &format!("{} logits on wgpu", adapter.unwrap_or(model_dir)),
        );
    }
}

/// Vulkan through WGPU has no bf16 arithmetic: a bf16 model is refused by name before any weight is read.
#[test]
fn bf16_is_refused_on_wgpu() {
    if !wgpu_available() {
        return;
    }
    let err = mhr_models::T5ForConditionalGeneration::<Wgpu>::load_as(
        t5_fixture("t5-v1_1"),
        mhr_models::Precision::Bf16,
        &WgpuDevice::DefaultDevice,
    )
    .unwrap_err();
    assert!(err.to_string().contains("bf16 is not supported by the"), "{err}");
}
