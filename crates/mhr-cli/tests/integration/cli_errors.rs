//! Bad inputs to `mhr score`, `mhr generate` and `mhr data stats`: each exits non-zero with a one-line
//! `error: …` naming the file, key or value at fault, never panics, and writes no output file.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::*;

/// Exit status of a failed command; 2 is a command line that clap refuses.
const FAILED: i32 = 1;
const USAGE: i32 = 2;

/// A scratch folder with an output path in it.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out(&self) -> PathBuf {
        self.path("out.safetensors")
    }

    /// A batch file holding `tensors`.
    fn batch(&self, tensors: &[(&str, Tensor)]) -> PathBuf {
        let path = self.path("batch.safetensors");
        write(&path, tensors);
        path
    }

    /// A batch file of raw bytes.
    fn raw_batch(&self, bytes: &[u8]) -> PathBuf {
        let path = self.path("batch.safetensors");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `mhr score --model t5-v1_1 [--adapter ...] --batch BATCH --out OUT extra...`.
    fn score(&self, adapter: Option<&str>, batch: &Path, extra: &[&str]) -> Output {
        self.run("score", "t5-v1_1", adapter, batch, extra)
    }

    fn generate(&self, adapter: Option<&str>, batch: &Path, extra: &[&str]) -> Output {
        let mut extra = extra.to_vec();
        if !extra.contains(&"--max-new-tokens") {
            extra.extend(["--max-new-tokens", "8"]);
        }
        self.run("generate", "t5-v1_1", adapter, batch, &extra)
    }

    fn run(&self, command: &str, model: &str, adapter: Option<&str>, batch: &Path, extra: &[&str]) -> Output {
        let model = if model.starts_with('/') {
            PathBuf::from(model)
        } else {
            fixture(model)
        };
        let mut args: Vec<String> = vec![
            command.into(),
            "--model".into(),
            model.display().to_string(),
            "--batch".into(),
            batch.display().to_string(),
            "--out".into(),
            self.out().display().to_string(),
        ];
        if let Some(a) = adapter {
            let a = if a.starts_with('/') {
                PathBuf::from(a)
            } else {
                fixture(a)
            };
            args.extend(["--adapter".into(), a.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        mhr(&args)
    }

    /// The command failed with `code`, a single `error:` line containing every one of `needles`, no
    /// panic, and left nothing behind in the scratch folder but the inputs.
    fn assert_fails(&self, output: &Output, code: i32, needles: &[&str]) {
        let err = stderr(output);
        assert_eq!(output.status.code(), Some(code), "stderr: {err}");
        assert!(!err.contains("panicked"), "a panic: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected: {err}");
        assert!(lines[0].starts_with("error: "), "{err}");
        for needle in needles {
            assert!(lines[0].contains(needle), "`{needle}` not in: {err}");
        }
        assert!(stdout(output).is_empty(), "stdout: {}", stdout(output));
        assert!(!self.out().exists(), "an output file was written");
        let leftovers: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

fn base_batch() -> Vec<(&'static str, Tensor)> {
    batch_of(&read(&reference("t5-v1_1")))
}

fn poly_batch() -> Vec<(&'static str, Tensor)> {
    batch_of(&read(&reference("t5-v1_1-poly")))
}

/// `batch` with `key` replaced by `tensor` (or removed when `None`).
fn replace(
    mut batch: Vec<(&'static str, Tensor)>,
    key: &str,
    tensor: Option<Tensor>,
) -> Vec<(&'static str, Tensor)> {
    let pos = batch.iter().position(|(k, _)| *k == key).expect("key in batch");
    match tensor {
        Some(t) => batch[pos].1 = t,
        None => {
            batch.remove(pos);
        }
    }
    batch
}

fn get(batch: &[(&str, Tensor)], key: &str) -> Tensor {
    batch.iter().find(|(k, _)| *k == key).unwrap().1.clone()
}

// --- token ids, task ids, mask values --------------------------------------------------------------

#[test]
fn token_id_outside_the_vocabulary() {
    let case = Case::new();
    let batch = base_batch();
    // Row 1, column 2 (flat index 11 + 2 = 13).
    let ids = get(&batch, "input_ids").with_value(13, 200);
    let path = case.batch(&replace(batch, "input_ids", Some(ids)));
    let output = case.score(None, &path, &[]);
    case.assert_fails(
        &output,
        FAILED,
        &[
            "batch.safetensors",
            "`input_ids`",
            "token id 200 at [1, 2]",
            "vocabulary of 200",
        ],
    );
    case.assert_fails(&case.generate(None, &path, &[]), FAILED, &["token id 200"]);
}

#[test]
fn negative_token_id() {
    let case = Case::new();
    let batch = base_batch();
    let ids = get(&batch, "input_ids").with_value(0, -5);
    let path = case.batch(&replace(batch, "input_ids", Some(ids)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`input_ids`", "token id -5"],
    );
}

#[test]
fn label_outside_the_vocabulary() {
    let case = Case::new();
    let batch = base_batch();
    let labels = get(&batch, "labels").with_value(7, 999);
    let path = case.batch(&replace(batch, "labels", Some(labels)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`labels`", "token id 999 at [1, 1]", "-100"],
    );
}

#[test]
fn task_id_outside_the_adapters_tasks() {
    let case = Case::new();
    let batch = poly_batch();
    let tasks = get(&batch, "task_ids").with_value(1, 3);
    let path = case.batch(&replace(batch, "task_ids", Some(tasks)));
    let needles = ["`task_ids`", "task id 3 at [1]", "3 tasks"];
    case.assert_fails(&case.score(Some("t5-v1_1-poly"), &path, &[]), FAILED, &needles);
    case.assert_fails(&case.generate(Some("t5-v1_1-mhr"), &path, &[]), FAILED, &needles);
}

#[test]
fn negative_task_id() {
    let case = Case::new();
    let batch = poly_batch();
    let tasks = get(&batch, "task_ids").with_value(0, -1);
    let path = case.batch(&replace(batch, "task_ids", Some(tasks)));
    case.assert_fails(
        &case.score(Some("t5-v1_1-poly"), &path, &[]),
        FAILED,
        &["task id -1"],
    );
}

#[test]
fn missing_task_ids_for_a_routed_adapter() {
    let case = Case::new();
    let path = case.batch(&replace(poly_batch(), "task_ids", None));
    case.assert_fails(
        &case.score(Some("t5-v1_1-poly"), &path, &[]),
        FAILED,
        &["`task_ids` is missing", "routes by task"],
    );
}

#[test]
fn attention_mask_that_is_not_zero_or_one() {
    let case = Case::new();
    let batch = base_batch();
    let mask = get(&batch, "attention_mask").with_value(4, 2);
    let path = case.batch(&replace(batch, "attention_mask", Some(mask)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`attention_mask` holds 2 at [0, 4]"],
    );
}

// --- shapes ----------------------------------------------------------------------------------------

#[test]
fn attention_mask_shape_differs_from_input_ids() {
    let case = Case::new();
    let mask = Tensor::i64(&[1; 30], &[3, 10]);
    let path = case.batch(&replace(base_batch(), "attention_mask", Some(mask)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`attention_mask` has shape [3, 10]", "[3, 11]"],
    );
}

#[test]
fn labels_batch_differs_from_input_ids() {
    let case = Case::new();
    let labels = Tensor::i64(&[5; 12], &[2, 6]);
    let path = case.batch(&replace(base_batch(), "labels", Some(labels)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`labels` has shape [2, 6]"],
    );
}

#[test]
fn task_ids_of_the_wrong_length() {
    let case = Case::new();
    let tasks = Tensor::i64(&[0, 1], &[2]);
    let path = case.batch(&replace(poly_batch(), "task_ids", Some(tasks)));
    case.assert_fails(
        &case.score(Some("t5-v1_1-poly"), &path, &[]),
        FAILED,
        &["`task_ids` has shape [2]", "[3]"],
    );
}

#[test]
fn input_ids_of_the_wrong_rank() {
    let case = Case::new();
    let ids = Tensor::i64(&[5; 33], &[33]);
    let path = case.batch(&replace(base_batch(), "input_ids", Some(ids)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`input_ids` has shape [33]"],
    );
}

#[test]
fn empty_input_ids() {
    let case = Case::new();
    let batch = vec![
        ("input_ids", Tensor::i64(&[], &[3, 0])),
        ("attention_mask", Tensor::i64(&[], &[3, 0])),
        ("labels", Tensor::i64(&[5; 3], &[3, 1])),
    ];
    let path = case.batch(&batch);
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`input_ids`", "empty dimension"],
    );
}

// --- dtypes and keys -------------------------------------------------------------------------------

#[test]
fn float_input_ids() {
    let case = Case::new();
    let batch = base_batch();
    let ids = get(&batch, "input_ids").as_f32();
    let path = case.batch(&replace(batch, "input_ids", Some(ids)));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`input_ids`", "dtype F32"],
    );
    case.assert_fails(
        &case.generate(None, &path, &[]),
        FAILED,
        &["`input_ids`", "dtype F32"],
    );
}

#[test]
fn float_task_ids() {
    let case = Case::new();
    let batch = poly_batch();
    let tasks = get(&batch, "task_ids").as_f32();
    let path = case.batch(&replace(batch, "task_ids", Some(tasks)));
    case.assert_fails(
        &case.score(Some("t5-v1_1-poly"), &path, &[]),
        FAILED,
        &["`task_ids`", "dtype F32"],
    );
}

#[test]
fn missing_labels() {
    let case = Case::new();
    let path = case.batch(&replace(base_batch(), "labels", None));
    case.assert_fails(&case.score(None, &path, &[]), FAILED, &["`labels` is missing"]);
}

#[test]
fn missing_input_ids() {
    let case = Case::new();
    let path = case.batch(&replace(base_batch(), "input_ids", None));
    case.assert_fails(
        &case.generate(None, &path, &[]),
        FAILED,
        &["`input_ids` is missing"],
    );
}

#[test]
fn missing_attention_mask() {
    let case = Case::new();
    let path = case.batch(&replace(base_batch(), "attention_mask", None));
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["`attention_mask` is missing"],
    );
}

// --- broken safetensors files ----------------------------------------------------------------------

#[test]
fn truncated_batch_file() {
    let case = Case::new();
    let bytes = to_bytes(&base_batch());
    for keep in [bytes.len() - 1, bytes.len() / 2, 12, 5, 0] {
        let path = case.raw_batch(&bytes[..keep]);
        case.assert_fails(
            &case.score(None, &path, &[]),
            FAILED,
            &["batch.safetensors", "not a valid safetensors file"],
        );
    }
}

#[test]
fn malformed_header() {
    let case = Case::new();
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"this is not json");
    let path = case.raw_batch(&bytes);
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["not a valid safetensors file"],
    );
    let path = case.raw_batch(b"<html>not a tensor file</html>");
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["not a valid safetensors file"],
    );
}

/// A header declaring a 1 TB tensor over 88 bytes of data is refused at once, without allocating it.
#[test]
fn header_claiming_a_terabyte_tensor() {
    let case = Case::new();
    let n = 125_000_000_000usize; // int64 elements: 1 TB
    let header = serde_json::json!({
        "input_ids": {"dtype": "I64", "shape": [1, n], "data_offsets": [0, n * 8]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 88]);
    let path = case.raw_batch(&bytes);
    let start = Instant::now();
    let output = case.score(None, &path, &[]);
    assert!(start.elapsed() < Duration::from_secs(20));
    case.assert_fails(&output, FAILED, &["not a valid safetensors file"]);

    // The same claim with offsets that match the 88 bytes: the shape does not fit the data.
    let header = serde_json::json!({
        "input_ids": {"dtype": "I64", "shape": [1, n], "data_offsets": [0, 88]},
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 88]);
    let path = case.raw_batch(&bytes);
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["not a valid safetensors file"],
    );
}

#[test]
fn header_length_beyond_the_file() {
    let case = Case::new();
    for claimed in [u64::MAX, 1 << 40, 50_000_000] {
        let mut bytes = claimed.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        let path = case.raw_batch(&bytes);
        case.assert_fails(
            &case.score(None, &path, &[]),
            FAILED,
            &["not a valid safetensors file"],
        );
    }
}

/// A small, valid file whose sequence length would need terabytes of attention scores is refused.
#[test]
fn honest_but_absurd_sequence_length() {
    let case = Case::new();
    let s = 1_000_000;
    let batch = vec![
        ("input_ids", Tensor::i32(&vec![5; s], &[1, s])),
        ("attention_mask", Tensor::i32(&vec![1; s], &[1, s])),
        ("labels", Tensor::i32(&[5], &[1, 1])),
    ];
    let path = case.batch(&batch);
    case.assert_fails(
        &case.score(None, &path, &[]),
        FAILED,
        &["encoder attention scores", "--max-tensor-gib"],
    );
}

#[test]
fn batch_file_that_does_not_exist_or_is_a_folder() {
    let case = Case::new();
    let missing = case.path("missing.safetensors");
    case.assert_fails(&case.score(None, &missing, &[]), FAILED, &["missing.safetensors"]);
    case.assert_fails(
        &case.score(None, case.dir.path(), &[]),
        FAILED,
        &["is a directory"],
    );
}

// --- model and adapter folders ---------------------------------------------------------------------

#[test]
fn model_folder_that_does_not_exist() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let missing = case.path("no-model");
    let output = case.run("score", missing.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["--model", "no-model", "not a directory"]);
}

/// A copy of the v1.1 fixture model in the scratch folder, with its weights as `weights` bytes.
fn model_copy(case: &Case, config: Option<&str>, weights: Option<&[u8]>) -> PathBuf {
    let dir = case.path("model");
    std::fs::create_dir(&dir).unwrap();
    let original = std::fs::read_to_string(fixture("t5-v1_1").join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.unwrap_or(&original)).unwrap();
    if let Some(w) = weights {
        std::fs::write(dir.join("model.safetensors"), w).unwrap();
    }
    dir
}

/// A copy of the v1.1 fixture, its weights as they are and its config.json with `edit` applied.
fn model_with_config(case: &Case, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let original = std::fs::read_to_string(fixture("t5-v1_1").join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    edit(&mut config);
    let weights = std::fs::read(fixture("t5-v1_1").join("model.safetensors")).unwrap();
    model_copy(case, Some(&config.to_string()), Some(&weights))
}

#[test]
fn model_folder_without_weights() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = model_copy(&case, None, None);
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["no weights", "model.safetensors"]);
}

#[test]
fn model_folder_without_config() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = case.path("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(
        fixture("t5-v1_1").join("model.safetensors"),
        model.join("model.safetensors"),
    )
    .unwrap();
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["config.json"]);
}

#[test]
fn truncated_model_weights() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let weights = std::fs::read(fixture("t5-v1_1").join("model.safetensors")).unwrap();
    let model = model_copy(&case, None, Some(&weights[..weights.len() / 2]));
    let output = case.run(
        "generate",
        model.to_str().unwrap(),
        None,
        &path,
        &["--max-new-tokens", "8"],
    );
    case.assert_fails(
        &output,
        FAILED,
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn malformed_model_config() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = model_copy(&case, Some("{\"vocab_size\": \"many\""), None);
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["config.json"]);
}

#[test]
fn model_config_with_a_dropout_rate_of_one() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = model_with_config(&case, |c| c["dropout_rate"] = serde_json::json!(1.0));
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(
        &output,
        FAILED,
        &["config.json", "dropout_rate must be in [0, 1), found 1"],
    );
}

/// A config that claims an enormous vocabulary is refused before any weight is read.
#[test]
fn model_config_with_absurd_sizes() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = model_with_config(&case, |c| c["vocab_size"] = serde_json::json!(1u64 << 40));
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["logits", "--max-tensor-gib"]);
}

/// A copy of the poly adapter with `edit` applied to its config.
fn adapter_copy(case: &Case, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = case.path("adapter");
    std::fs::create_dir(&dir).unwrap();
    let source = fixture("t5-v1_1-poly");
    let text = std::fs::read_to_string(source.join("adapter_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn adapter_of_an_unknown_peft_type() {
    let case = Case::new();
    let path = case.batch(&poly_batch());
    let adapter = adapter_copy(&case, |c| c["peft_type"] = "PREFIX_TUNING".into());
    let output = case.score(Some(adapter.to_str().unwrap()), &path, &[]);
    case.assert_fails(
        &output,
        FAILED,
        &["--adapter", "adapter_config.json", "peft_type", "PREFIX_TUNING"],
    );
}

#[test]
fn adapter_whose_config_disagrees_with_its_weights() {
    let case = Case::new();
    let path = case.batch(&poly_batch());
    let adapter = adapter_copy(&case, |c| c["n_tasks"] = 5.into());
    let output = case.score(Some(adapter.to_str().unwrap()), &path, &[]);
    case.assert_fails(&output, FAILED, &["adapter_model.safetensors", "module_logits"]);
}

#[test]
fn adapter_folder_that_does_not_exist() {
    let case = Case::new();
    let path = case.batch(&poly_batch());
    let missing = case.path("no-adapter");
    let output = case.score(Some(missing.to_str().unwrap()), &path, &[]);
    case.assert_fails(&output, FAILED, &["--adapter", "no-adapter", "not a directory"]);
}

// --- devices and flags -----------------------------------------------------------------------------

#[test]
fn unknown_device() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let output = case.score(None, &path, &["--device", "tpu"]);
    case.assert_fails(&output, USAGE, &["--device", "unknown device `tpu`"]);
}

#[cfg(not(feature = "cuda"))]
#[test]
fn backend_not_compiled_in() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let output = case.score(None, &path, &["--device", "cuda:0"]);
    case.assert_fails(&output, FAILED, &["cuda:0", "built without the `cuda` feature"]);
}

#[cfg(not(feature = "wgpu"))]
#[test]
fn wgpu_not_compiled_in() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let output = case.generate(None, &path, &["--device", "wgpu"]);
    case.assert_fails(&output, FAILED, &["wgpu", "built without the `wgpu` feature"]);
}

#[test]
fn zero_beams_is_a_usage_error() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let output = case.generate(None, &path, &["--num-beams", "0"]);
    case.assert_fails(&output, USAGE, &["--num-beams"]);
}

#[test]
fn absurd_generation_length_is_refused() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let output = case.generate(None, &path, &["--max-new-tokens", "1000000000000"]);
    case.assert_fails(&output, FAILED, &["key/value cache", "--max-tensor-gib"]);
}

#[test]
fn missing_required_flag_is_a_usage_error() {
    let case = Case::new();
    let output = mhr(["score", "--model", fixture("t5-v1_1").to_str().unwrap()]);
    case.assert_fails(&output, USAGE, &["--batch", "--out"]);
}

#[test]
fn output_folder_that_does_not_exist() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let out = case.path("missing/out.safetensors");
    let output = mhr([
        "score",
        "--model",
        fixture("t5-v1_1").to_str().unwrap(),
        "--batch",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    case.assert_fails(&output, FAILED, &["--out", "does not exist"]);
    assert!(!out.exists());
}

/// A failed run leaves an earlier output in place, byte for byte.
#[test]
fn failure_keeps_an_existing_output() {
    let case = Case::new();
    let batch = base_batch();
    let ids = get(&batch, "input_ids").with_value(0, 1_000);
    let path = case.batch(&replace(batch, "input_ids", Some(ids)));
    std::fs::write(case.out(), b"earlier result").unwrap();
    let output = case.score(None, &path, &[]);
    assert_eq!(output.status.code(), Some(FAILED));
    assert_eq!(std::fs::read(case.out()).unwrap(), b"earlier result");
}

// --- data stats ------------------------------------------------------------------------------------

#[test]
fn data_stats_on_a_missing_folder() {
    let case = Case::new();
    let missing = case.path("no-sni");
    let output = mhr(["data", "stats", "--sni", missing.to_str().unwrap()]);
    case.assert_fails(&output, FAILED, &["no-sni"]);
}

#[test]
fn data_stats_with_a_task_list_naming_an_absent_task() {
    let case = Case::new();
    let list = case.path("tasks.txt");
    std::fs::write(
        &list,
        "task639_multi_woz_user_utterance_generation\ntask_nonexistent\n",
    )
    .unwrap();
    let sni = shared().join("data/sni");
    let output = mhr([
        "data",
        "stats",
        "--sni",
        sni.to_str().unwrap(),
        "--tasks",
        list.to_str().unwrap(),
    ]);
    // No partial table: the error alone.
    case.assert_fails(&output, FAILED, &["tasks.txt:2", "task_nonexistent"]);
}

#[test]
fn data_stats_needs_exactly_one_source() {
    let case = Case::new();
    let sni = shared().join("data/sni");
    let sni = sni.to_str().unwrap();
    case.assert_fails(
        &mhr(["data", "stats", "--sni", sni, "--t0", sni]),
        USAGE,
        &["--sni", "--t0"],
    );
    case.assert_fails(&mhr(["data", "stats"]), USAGE, &["--sni", "--t0"]);
}

#[test]
fn data_stats_on_a_malformed_task_file() {
    let case = Case::new();
    let sni = case.path("sni");
    std::fs::create_dir_all(sni.join("tasks")).unwrap();
    let good = shared().join("data/sni/tasks/task639_multi_woz_user_utterance_generation.json");
    std::fs::copy(
        &good,
        sni.join("tasks/task639_multi_woz_user_utterance_generation.json"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&good).unwrap();
    std::fs::write(sni.join("tasks/task999_broken.json"), &text[..text.len() / 2]).unwrap();
    let output = mhr(["data", "stats", "--sni", sni.to_str().unwrap()]);
    // The good task's line is not printed either: the error alone.
    case.assert_fails(&output, FAILED, &["task999_broken.json", "invalid JSON"]);
}

#[test]
fn model_weights_that_do_not_fit_the_config() {
    let case = Case::new();
    let path = case.batch(&base_batch());
    let model = model_with_config(&case, |c| c["d_ff"] = serde_json::json!(97));
    let output = case.run("score", model.to_str().unwrap(), None, &path, &[]);
    case.assert_fails(&output, FAILED, &["model.safetensors", "has shape", "expected"]);
}
