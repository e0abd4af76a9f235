//! Property tests over the loaders of everything a user hands us: safetensors files, HF model folders, peft
//! adapter configs, SNI task files and promptsource templates. Each case corrupts a real file from `../shared`
//! (byte flips, truncation, spliced garbage) or builds a hostile safetensors header; the loader must return,
//! `Ok` or a one-line error, and never panic.
//!
//! Bounded for CI: proptest's default 256 cases per property (`PROPTEST_CASES=N` for a longer run).

use std::path::Path;

use burn::backend::NdArray;
use mhr_core::io::SafetensorsFile;
use mhr_core::peft::PeftConfig;
use mhr_data::{SniTask, TemplateSet};
use mhr_models::{T5Config, T5ForConditionalGeneration};
use mhr_tests::{shared_dir, t5_fixture};
use proptest::prelude::*;

/// One corruption of a file's bytes; positions are fractions of the length, so they fit any file.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: f64, byte: u8 },
    Truncate { keep: f64 },
    Splice { at: f64, garbage: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0.0..1.0, any::<u8>()).prop_map(|(at, byte)| Damage::Flip { at, byte }),
        1 => (0.0..1.0).prop_map(|keep| Damage::Truncate { keep }),
        1 => (0.0..1.0, proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, garbage)| Damage::Splice { at, garbage }),
    ]
}

/// Damage concentrated where parsers look first (the first 256 bytes: safetensors' header length and JSON),
/// or anywhere in the file.
fn apply(mut bytes: Vec<u8>, damages: &[Damage], head_only: bool) -> Vec<u8> {
    for d in damages {
        let span = if head_only {
            bytes.len().min(256)
        } else {
            bytes.len()
        };
        let index = |at: f64| ((at * span as f64) as usize).min(span.saturating_sub(1));
        match d {
            Damage::Flip { at, byte } if !bytes.is_empty() => {
                let i = index(*at);
                bytes[i] = *byte;
            }
            Damage::Truncate { keep } => bytes.truncate((keep * bytes.len() as f64) as usize),
            Damage::Splice { at, garbage } => {
                let i = index(*at).min(bytes.len());
                bytes.splice(i..i, garbage.iter().copied());
            }
            Damage::Flip { .. } => {}
        }
    }
    bytes
}

fn damaged_copy(src: &Path, dir: &Path, damages: &[Damage], head_only: bool) -> std::path::PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::write(&dst, apply(std::fs::read(src).unwrap(), damages, head_only)).unwrap();
    dst
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with their minimal case; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every tensor of an opened file reads or fails cleanly, and what reads has as many values as its shape says.
fn read_everything(file: &SafetensorsFile) {
    for name in file.names() {
        let shape = file.shape(&name).unwrap_or_default();
        if let Ok(data) = file.f32(&name) {
            assert_eq!(data.num_elements(), shape.iter().product::<usize>(), "{name}");
        }
        let _ = file.i64(&name);
    }
}

/// A safetensors header whose entries may be huge, overlapping, out of the file, or of unknown dtypes.
fn hostile_header() -> impl Strategy<Value = Vec<u8>> {
    let dtype = prop_oneof![
        Just("F32"),
        Just("F16"),
        Just("BF16"),
        Just("I64"),
        Just("I32"),
        Just("U8"),
        Just("F64"),
        Just("Q4"),
    ];
    let dim = prop_oneof![0usize..5, Just(usize::MAX / 2), Just(1usize << 40)];
    let entry = (
        dtype,
        proptest::collection::vec(dim, 0..4),
        0usize..96,
        0usize..96,
    );
    (proptest::collection::vec(entry, 0..4), 0usize..64).prop_map(|(entries, data_len)| {
        let tensors: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .enumerate()
            .map(|(i, (dtype, shape, start, len))| {
                (
                    format!("t{i}"),
                    serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, start + len]}),
                )
            })
            .collect();
        let header = serde_json::to_vec(&tensors).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(std::iter::repeat_n(0x3f, data_len));
        bytes
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn damaged_safetensors_never_panic(
        damages in proptest::collection::vec(damage(), 1..4),
        head_only in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = damaged_copy(&t5_fixture("t5-v1_1-mhr/adapter_model.safetensors"), dir.path(), &damages, head_only);
        if let Ok(file) = SafetensorsFile::open(&path) {
            read_everything(&file);
        }
    }

    #[test]
    fn hostile_safetensors_headers_never_panic(bytes in hostile_header()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.safetensors");
        std::fs::write(&path, bytes).unwrap();
        if let Ok(file) = SafetensorsFile::open(&path) {
            read_everything(&file);
        }
    }

    #[test]
    fn damaged_model_folders_load_or_fail_cleanly(
        damages in proptest::collection::vec(damage(), 1..3),
        head_only in any::<bool>(),
        config_too in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let model = t5_fixture("t5-v1_1");
        damaged_copy(&model.join("model.safetensors"), dir.path(), &damages, head_only);
        if config_too {
            damaged_copy(&model.join("config.json"), dir.path(), &damages, true);
        } else {
            std::fs::copy(model.join("config.json"), dir.path().join("config.json")).unwrap();
        }
        let _ = T5ForConditionalGeneration::<NdArray>::load(dir.path(), &Default::default());
    }

    #[test]
    fn damaged_json_configs_never_panic(damages in proptest::collection::vec(damage(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let config = damaged_copy(&t5_fixture("t5-v1_1/config.json"), dir.path(), &damages, false);
        let _ = T5Config::load(&config);
        let adapter = damaged_copy(&t5_fixture("t5-v1_1-mhr/adapter_config.json"), dir.path(), &damages, false);
        let _ = PeftConfig::load(&adapter);
    }

    #[test]
    fn damaged_sni_task_files_never_panic(
        damages in proptest::collection::vec(damage(), 1..4),
        head_only in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let src = shared_dir().join("data/sni/tasks/task1582_bless_hypernym_generation.json");
        let path = damaged_copy(&src, dir.path(), &damages, head_only);
        let _ = SniTask::read(&path, Some(50));
    }

    #[test]
    fn damaged_templates_never_panic(damages in proptest::collection::vec(damage(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let src = shared_dir().join("data/t0eval/templates/super_glue/rte/templates.yaml");
        let path = damaged_copy(&src, dir.path(), &damages, false);
        if let Ok(set) = TemplateSet::load(&path) {
            let row = serde_json::json!({"premise": "It rains.", "hypothesis": "It is wet.", "label": 0, "idx": 3});
            for template in set.templates() {
                let _ = set.render(template, &row, 0);
            }
        }
    }
}
