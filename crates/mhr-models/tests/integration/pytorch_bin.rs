//! `pytorch_model.bin` checkpoints: the tiny t5-v1_1 fixture saved by `torch.save` (tests/data/make_bin.py)
//! must load to the same model as its safetensors, sharded or not, in bf16, and fail cleanly when damaged.

use std::path::{Path, PathBuf};

use crate::common::*;
use burn::prelude::*;
use burn::tensor::bf16;
use mhr_core::RoutingContext;
use mhr_core::io::SafetensorsFile;
use mhr_models::{ModelError, T5ForConditionalGeneration};
use proptest::prelude::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A checkpoint folder with the fixture's `config.json` and the files of `tests/data/<variant>`.
fn bin_checkpoint(variant: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("t5-v1_1").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    for entry in std::fs::read_dir(data(variant)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<T5ForConditionalGeneration<Cpu>, ModelError> {
    T5ForConditionalGeneration::load(dir, &Default::default())
}

fn logits(model: &T5ForConditionalGeneration<Cpu>) -> TensorData {
    let reference = Reference::open("t5-v1_1");
    let ctx = RoutingContext::untasked();
    model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &ctx,
        )
        .unwrap()
        .logits
        .into_data()
}

fn fixture_shared() -> TensorData {
    SafetensorsFile::open(fixture("t5-v1_1").join("model.safetensors"))
        .unwrap()
        .f32("shared.weight")
        .unwrap()
}

#[test]
fn bin_loads_like_safetensors() {
    let dir = bin_checkpoint("single");
    let from_bin = logits(&load(dir.path()).unwrap());
    let from_safetensors = logits(&load(&fixture("t5-v1_1")).unwrap());
    assert_close(
        "bin vs safetensors logits",
        from_bin.clone(),
        from_safetensors,
        1e-6,
    );
    let reference = Reference::open("t5-v1_1");
    assert_close(
        "bin vs transformers logits",
        from_bin,
        reference.data("logits"),
        1e-4,
    );
}

#[test]
fn sharded_bin_loads_like_single_bin() {
    let single = bin_checkpoint("single");
    let sharded = bin_checkpoint("sharded");
    assert_close(
        "sharded vs single bin logits",
        logits(&load(sharded.path()).unwrap()),
        logits(&load(single.path()).unwrap()),
        1e-6,
    );
}

#[test]
fn bf16_bin_loads_as_f32() {
    let dir = bin_checkpoint("bf16");
    let model = load(dir.path()).unwrap();
    let rounded = fixture_shared().convert::<bf16>().convert::<f32>();
    assert_eq!(model.shared.val().into_data(), rounded);
    // bf16 weights move the logits, but not far.
    let reference = Reference::open("t5-v1_1");
    assert_rel_close("bf16 bin logits", logits(&model), reference.data("logits"), 5e-2);
}

#[test]
fn safetensors_is_preferred_over_bin() {
    let dir = bin_checkpoint("bf16");
    std::fs::copy(
        fixture("t5-v1_1").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let model = load(dir.path()).unwrap();
    assert_eq!(model.shared.val().into_data(), fixture_shared());
}

#[test]
fn truncated_bin_names_the_file() {
    let dir = bin_checkpoint("single");
    let path = dir.path().join("pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    for len in [10, 3000, bytes.len() / 2, bytes.len() - 100] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(
            matches!(&err, ModelError::Pytorch { path: p, .. } if p == &path),
            "{len} bytes: {err:?}"
        );
        assert!(err.to_string().starts_with(&path.display().to_string()), "{err}");
    }
}

/// A flipped byte in a tensor's data fails the zip entry's CRC: an error, not a zeroed weight.
#[test]
fn corrupt_tensor_data_names_the_file() {
    let dir = bin_checkpoint("single");
    let path = dir.path().join("pytorch_model.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let first: Vec<u8> = fixture_shared()
        .iter::<f32>()
        .take(8)
        .flat_map(f32::to_le_bytes)
        .collect();
    let at = bytes
        .windows(first.len())
        .position(|w| w == first.as_slice())
        .expect("shared.weight stored uncompressed");
    bytes[at + 1] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Pytorch { path: p, reason } if p == &path && reason.contains("entry")),
        "{err:?}"
    );
}

/// The second shard alone as `pytorch_model.bin` lacks every key of the first.
#[test]
fn bin_missing_a_key_names_it() {
    let dir = bin_checkpoint("single");
    let path = dir.path().join("pytorch_model.bin");
    std::fs::copy(data("sharded/pytorch_model-00002-of-00002.bin"), &path).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("sharded/pytorch_model.bin.index.json")).unwrap())
            .unwrap();
    let in_first_shard = |key: &str| index["weight_map"][key] == "pytorch_model-00001-of-00002.bin";
    match load(dir.path()) {
        Err(ModelError::MissingTensor {
            path: p,
            key,
            expected,
        }) => {
            assert_eq!(p, path);
            assert!(in_first_shard(&key), "{key} is in the second shard");
            let shape = SafetensorsFile::open(fixture("t5-v1_1").join("model.safetensors"))
                .unwrap()
                .shape(&key)
                .unwrap();
            assert_eq!(expected, shape);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn missing_shard_names_the_file() {
    let dir = bin_checkpoint("sharded");
    let shard = dir.path().join("pytorch_model-00002-of-00002.bin");
    std::fs::remove_file(&shard).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Pytorch { path, .. } if path == &shard),
        "{err:?}"
    );
}
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    /// Bytes overwritten (half of them in the zip's first entry, the pickle) and the file cut anywhere: the load
    /// returns, `Ok` or an error, and never panics. 64 cases per run.
    #[test]
    fn damaged_bin_never_panics(
        flips in proptest::collection::vec((0.0..1.0f64, any::<bool>(), any::<u8>()), 1..5),
        keep in proptest::option::weighted(0.2, 0.0..1.0f64),
    ) {
        let dir = bin_checkpoint("single");
        let path = dir.path().join("pytorch_model.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, in_pickle, byte) in flips {
            let span = if in_pickle { bytes.len().min(7000) } else { bytes.len() };
            bytes[(at * span as f64) as usize % span] = byte;
        }
        if let Some(keep) = keep {
            bytes.truncate((keep * bytes.len() as f64) as usize);
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = load(dir.path());
    }
}
