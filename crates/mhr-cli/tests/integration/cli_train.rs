//! `mhr train`, `mhr export`, `mhr adapt` and `mhr eval` on the tiny fixture T5 and a few shipped SNI tasks
//! (and the shipped T0 COPA rows for `adapt --t0`): the exported adapter scores exactly as the model trained in
//! memory through the library, a resumed run ends where an uninterrupted one does, and bad inputs are one-line
//! errors naming what is at fault.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use crate::common::*;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, TensorData};
use mhr_core::peft::TargetModules;
use mhr_core::{Method, RoutingContext, RoutingMode};
use mhr_data::{Encoder, EncoderConfig, HfTokenizer, SniDir, SniPromptFormat, TaskIndex, TaskList};
use mhr_models::T5ForConditionalGeneration;
use mhr_train::TrainConfig;
use mhr_train::data::ShuffledEpochs;
use mhr_train::methods::{AdapterSizes, attach_pretraining};
use mhr_train::optim::OptimConfig;
use mhr_train::sni::{encode_all, load_tasks};
use mhr_train::trainer::{RunOptions, train};

type A = Autodiff<NdArray>;

const TRAIN_TASKS: [&str; 2] = [
    "task639_multi_woz_user_utterance_generation",
    "task1600_smcalflow_sentence_generation",
];
const HELD_OUT: &str = "task1344_glue_entailment_classification";
const STEPS: usize = 3;
const SEED: u64 = 7;
const LR: f64 = 0.02;

/// A scratch folder with task lists and a config for the fixture model.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.txt"), TRAIN_TASKS.join("\n")).unwrap();
        std::fs::write(dir.path().join("held.txt"), HELD_OUT).unwrap();
        let config = format!(
            r#"model = "{model}"
tokenizer = "{tokenizer}"
sni = "{sni}"
train_tasks = "{dir}/train.txt"
held_out_tasks = "{dir}/held.txt"
max_instances = 12
max_source_len = 48
max_target_len = 12

[adapter]
lora_rank = 4
poly_rank = 4
n_skills = 4
mhr_heads = 4

[train]
steps = {STEPS}
batch_size = 4
seed = {SEED}
log_every = 1

[train.optim]
lr = {LR}
"#,
            model = fixture("t5-v1_1").display(),
            tokenizer = fixture("tokenizer.json").display(),
            sni = sni().display(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `mhr train --config config.toml --method METHOD --out RUN extra...`.
    fn train(&self, method: &str, run: &str, extra: &[&str]) -> Output {
        let config = self.path("config.toml");
        let run = self.path(run);
        let mut args = vec![
            "train",
            "--config",
            s(&config),
            "--method",
            method,
            "--out",
            s(&run),
        ];
        args.extend_from_slice(extra);
        mhr(args)
    }

    fn export(&self, run: &str, out: &str) -> Output {
        mhr([
            "export",
            "--run",
            s(&self.path(run)),
            "--format",
            "peft",
            "--out",
            s(&self.path(out)),
        ])
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sni() -> PathBuf {
    shared().join("data/sni")
}

/// Fails unless the command failed with status 1 and a one-line error containing every `needles`.
fn assert_error(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
}

/// The pre-training of `mhr train` written out with the library: the fixture T5 with MHR adapters, the
/// two training tasks tokenised with the fixture tokenizer, ids from the sorted task names.
fn train_in_memory() -> T5ForConditionalGeneration<A> {
    let device = Default::default();
    let sni = SniDir::open(sni()).unwrap();
    let list = TaskList {
        path: PathBuf::from("in-memory"),
        entries: TRAIN_TASKS.iter().map(|t| (0, t.to_string())).collect(),
    };
    let tasks: Vec<_> = load_tasks(&sni, &list, 12).unwrap().map(Result::unwrap).collect();
    let index = TaskIndex::sorted(TRAIN_TASKS.iter().chain([&HELD_OUT]).map(|t| t.to_string()));
    let tokenizer = HfTokenizer::from_file(&fixture("tokenizer.json")).unwrap();
    let encoder = Encoder::new(
        Arc::new(tokenizer),
        EncoderConfig {
            max_source_len: 48,
            max_target_len: 12,
            source_suffix: SniPromptFormat::Mttl.source_suffix().map(String::from),
        },
    )
    .unwrap();
    let mut examples = Vec::new();
    for task in &tasks {
        examples.extend(encode_all(&encoder, &task.examples, index.id(&task.name).unwrap()).unwrap());
    }
    let model = T5ForConditionalGeneration::<A>::load(fixture("t5-v1_1"), &device).unwrap();
    A::seed(&device, SEED);
    let sizes = AdapterSizes {
        poly_rank: 4,
        n_skills: 4,
        mhr_heads: 4,
        lora_rank: 4,
        ..AdapterSizes::default()
    };
    let targets = TargetModules::Names(
        ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"]
            .map(String::from)
            .to_vec(),
    );
    let model = attach_pretraining(model, Method::Mhr, &sizes, &targets, index.len()).unwrap();
    let config = TrainConfig {
        steps: STEPS,
        batch_size: 4,
        seed: SEED,
        optim: OptimConfig {
            lr: LR,
            ..OptimConfig::default()
        },
        ..TrainConfig::default()
    };
    let data = ShuffledEpochs::new(&examples, &config, SEED);
    train(model, &data, &config, &RunOptions::default()).unwrap().0
}

/// Teacher-forced logits of `batch` (deterministic routing by its task ids).
fn logits(model: &T5ForConditionalGeneration<A>, batch: &[(&str, Tensor)]) -> Vec<f32> {
    let device = Default::default();
    let get = |key: &str| batch.iter().find(|(k, _)| *k == key).unwrap().1.clone();
    let int2 = |t: Tensor| {
        let shape = [t.shape[0], t.shape[1]];
        burn::tensor::Tensor::<A, 2, Int>::from_data(TensorData::new(t.to_i64(), shape), &device)
    };
    let task_ids = get("task_ids").to_i64();
    let n = task_ids.len();
    let ctx = RoutingContext::new(
        burn::tensor::Tensor::<A, 1, Int>::from_data(TensorData::new(task_ids, [n]), &device),
        RoutingMode::Deterministic,
    );
    let out = model
        .forward(
            int2(get("input_ids")),
            int2(get("attention_mask")),
            int2(get("labels")),
            &ctx,
        )
        .unwrap();
    out.logits.into_data().iter::<f32>().collect()
}

#[test]
fn exported_adapter_scores_as_the_model_trained_in_memory() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "run", &[]));
    for file in [
        "config.toml",
        "tasks.json",
        "metrics.jsonl",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(setup.path("run").join(file).is_file(), "{file}");
    }
    let metrics = std::fs::read_to_string(setup.path("run/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), STEPS, "{metrics}");
    let tasks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("run/tasks.json")).unwrap()).unwrap();
    let mut sorted = vec![HELD_OUT, TRAIN_TASKS[0], TRAIN_TASKS[1]];
    sorted.sort();
    assert_eq!(tasks["names"], serde_json::json!(sorted));

    assert_success(&setup.export("run", "peft"));
    let inspect = stdout(&mhr(["inspect", "--adapter", s(&setup.path("peft"))]));
    let header: serde_json::Value = serde_json::from_str(inspect.lines().next().unwrap()).unwrap();
    assert_eq!(
        header["config"],
        serde_json::json!({"type": "POLY", "r": 4, "n_tasks": 3, "n_skills": 4, "n_splits": 4})
    );

    // The fixtures' batch (vocabulary 200) routed to each of the three tasks.
    let batch = batch_of(&read(&reference("t5-v1_1-poly")));
    let batch_path = setup.path("batch.safetensors");
    write(&batch_path, &batch);
    let scored = setup.path("scored.safetensors");
    let output = mhr([
        "score",
        "--model",
        s(&fixture("t5-v1_1")),
        "--adapter",
        s(&setup.path("peft")),
        "--batch",
        s(&batch_path),
        "--out",
        s(&scored),
    ]);
    assert_success(&output);
    let found = read(&scored)["logits"].to_f32();
    // The run folder itself is an adapter folder for `score` (its final `adapter/`).
    let from_run = setup.path("from_run.safetensors");
    assert_success(&mhr([
        "score",
        "--model",
        s(&fixture("t5-v1_1")),
        "--adapter",
        s(&setup.path("run")),
        "--batch",
        s(&batch_path),
        "--out",
        s(&from_run),
    ]));
    assert!(
        read(&from_run)["logits"] == read(&scored)["logits"],
        "--adapter RUN differs from its export"
    );

    let model = train_in_memory();
    let expected = logits(&model, &batch);
    let diff = max_abs_diff(&found, &expected);
    assert!(diff < 1e-5, "exported adapter vs in-memory model: {diff}");
    // The adapters trained: the scores are not the base model's.
    let base = read(&reference("t5-v1_1"))["logits"].to_f32();
    assert!(max_abs_diff(&found, &base) > 1e-3, "the adapters changed nothing");
}

#[test]
fn resumed_run_ends_where_an_uninterrupted_one_does() {
    let setup = Setup::new();
    assert_success(&setup.train("lora", "whole", &[]));
    assert_success(&setup.train("lora", "parts", &["--stop-after", "1"]));
    assert!(
        !setup.path("parts/adapter").exists(),
        "no final adapter before the last step"
    );
    // An unfinished run is refused by export.
    assert_error(
        &setup.export("parts", "early"),
        &["stopped at step 1 of 3", "--resume"],
    );
    let resumed = mhr(["train", "--resume", "--out", s(&setup.path("parts"))]);
    assert_success(&resumed);
    let weights =
        |run: &str| std::fs::read(setup.path(run).join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        weights("whole") == weights("parts"),
        "resumed LoRA weights differ"
    );
    let metrics = std::fs::read_to_string(setup.path("parts/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), STEPS, "{metrics}");
    // A finished run exports as LORA.
    assert_success(&setup.export("whole", "lora"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("lora/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
}

#[test]
fn bad_train_and_export_inputs_are_one_line_errors() {
    let setup = Setup::new();
    // Unknown method.
    assert_error(&setup.train("mhx", "a", &[]), &["unknown method `mhx`"]);
    assert!(!setup.path("a").exists(), "nothing written");
    // Unknown config key, named.
    let config = setup.path("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // `mhr train --config FILE --method mhr --out OUT` with `[train]` of the setup's config edited.
    let train_with = |file: &str, train_keys: &str, out: &str| {
        let path = setup.path(file);
        std::fs::write(
            &path,
            text.replace("[train]\n", &format!("[train]\n{train_keys}\n")),
        )
        .unwrap();
        mhr([
            "train",
            "--config",
            s(&path),
            "--method",
            "mhr",
            "--out",
            s(&setup.path(out)),
        ])
    };
    assert_error(
        &train_with("bad.toml", "learning_rate = 1", "b"),
        &["bad.toml", "unknown field `learning_rate`"],
    );
    // A dropout rate that cannot train, named with its file.
    assert_error(
        &train_with("drop.toml", "dropout_rate = 1.0", "b2"),
        &["drop.toml", "train.dropout_rate must be in [0, 1), found 1"],
    );
    assert!(!setup.path("b2").exists(), "nothing written");
    // Unknown task name in a task list: the task and the list file are named.
    std::fs::write(
        setup.path("train.txt"),
        "task639_multi_woz_user_utterance_generation\nno_such_task\n",
    )
    .unwrap();
    assert_error(&setup.train("mhr", "c", &[]), &["no_such_task", "train.txt"]);
    // A model folder without weights: the missing file is named.
    let empty_model = setup.path("model");
    std::fs::create_dir(&empty_model).unwrap();
    std::fs::copy(fixture("t5-v1_1/config.json"), empty_model.join("config.json")).unwrap();
    let output = mhr([
        "train",
        "--config",
        s(&config),
        "--method",
        "lora",
        "--model",
        s(&empty_model),
        "--out",
        s(&setup.path("d")),
    ]);
    assert_error(&output, &["model.safetensors"]);
    // The byte tokenizer does not fit the fixture's 200-id vocabulary.
    assert_error(
        &setup.train("lora", "e", &["--tokenizer", "byte"]),
        &["tokenizer byte produces 259 ids", "vocab_size is 200"],
    );
    // Export: a missing run folder, a folder that is no run, an unknown format.
    assert_error(&setup.export("missing", "x"), &["missing", "not a directory"]);
    assert_error(&setup.export("model", "x"), &["not an mhr run"]);
    let output = mhr([
        "export",
        "--run",
        s(&setup.path("model")),
        "--format",
        "onnx",
        "--out",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("invalid value 'onnx'"),
        "{}",
        stderr(&output)
    );
    // An existing run is not overwritten without --resume.
    std::fs::create_dir(setup.path("busy")).unwrap();
    std::fs::write(setup.path("busy/x"), "").unwrap();
    assert_error(
        &setup.train("lora", "busy", &[]),
        &["not an empty folder", "--resume"],
    );
}

/// A run with its base in bf16: the precision is kept in the run's config, a resumed run ends with the weights of
/// an uninterrupted one, `mhr adapt` and `mhr eval` inherit it, ndarray (no bf16) refuses it before writing
/// anything, and `mhr eval --precision f32` evaluates it there.
#[test]
fn bf16_run_resumes_exactly_and_adaptation_inherits_it() {
    let setup = Setup::new();
    train_and_resume(&setup, &["--precision", "bf16"], "precision = \"bf16\"");
    let weights = |run: &str| adapter_weights(&setup, run);
    assert_success(&adapt(&setup, "adapted", &["--steps", "2"]));
    assert!(
        !std::fs::read_to_string(setup.path("adapted/adapt.toml"))
            .unwrap()
            .contains("precision")
    );
    let f32_run = setup.train("mhr", "f32", &[]);
    assert_success(&f32_run);
    assert!(weights("f32") != weights("pre"), "bf16 changed nothing");
    assert_error(
        &setup.train("mhr", "nd", &["--precision", "bf16", "--device", "ndarray"]),
        &["bf16 is not supported by the ndarray backend"],
    );
    assert!(!setup.path("nd").exists(), "nothing written");
    assert_error(
        &adapt(&setup, "adapted-nd", &["--device", "ndarray"]),
        &["bf16 is not supported by the ndarray backend"],
    );
    assert!(!setup.path("adapted-nd").exists(), "nothing written");

    // `mhr eval` runs in the run's precision; ndarray refuses it, and evaluates it with `--precision f32`.
    let eval = |out: &str, extra: &[&str]| {
        let (run, out) = (setup.path("adapted"), setup.path(out));
        mhr([&["eval", "--run", s(&run), "--out", s(&out)], extra].concat())
    };
    assert_success(&eval("bf16.json", &[]));
    assert_error(
        &eval("nd.json", &["--device", "ndarray"]),
        &["bf16 is not supported by the ndarray backend", "--precision f32"],
    );
    assert!(!setup.path("nd.json").exists(), "nothing written");
    assert_success(&eval("f32.json", &["--device", "ndarray", "--precision", "f32"]));
}

/// `--checkpoint-activations` is kept in the run's config, a checkpointed run resumes to the weights of an
/// uninterrupted one, `mhr adapt` inherits the setting and `--checkpoint-activations=false` turns it off.
#[test]
fn checkpointed_run_resumes_exactly_and_adaptation_inherits_it() {
    let setup = Setup::new();
    train_and_resume(
        &setup,
        &["--checkpoint-activations"],
        "checkpoint_activations = true",
    );
    let settings = |run: &str| std::fs::read_to_string(setup.path(run).join("adapt.toml")).unwrap();
    assert_success(&adapt(&setup, "inherits", &["--steps", "2"]));
    assert!(settings("inherits").contains("checkpoint_activations = true"));
    assert_success(&adapt(
        &setup,
        "off",
        &["--steps", "2", "--checkpoint-activations=false"],
    ));
    assert!(!settings("off").contains("checkpoint_activations"));
}

#[test]
fn data_parallel_runs_equal_one_device() {
    let setup = Setup::new();
    // At this test's usual 0.02, Adam magnifies the rounding of split sums past 1e-5 (docs/distributed.md).
    let lr = ["--lr", "0.001"];
    assert_success(&setup.train("mhr", "pre", &lr));
    // Two CPU peers, stopped after a step and resumed on three.
    assert_success(&setup.train(
        "mhr",
        "peers",
        &[&lr[..], &["--devices", "cpu:2", "--stop-after", "1"]].concat(),
    ));
    assert_success(&mhr([
        "train",
        "--resume",
        "--devices",
        "cpu:3",
        "--out",
        s(&setup.path("peers")),
    ]));
    assert_close_adapters(&setup, "pre", "peers");
    assert_success(&adapt(&setup, "z", &["--method", "mhr-z", "--steps", "2"]));
    assert_success(&adapt(
        &setup,
        "z-peers",
        &["--method", "mhr-z", "--steps", "2", "--devices", "cpu:2"],
    ));
    assert_close_adapters(&setup, "z", "z-peers");
    // Peers need examples; --device and --devices exclude each other; a list names one backend.
    let refused = setup.train("mhr", "many", &["--devices", "cpu:5"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("batch_size = 4 cannot be split over 5 data-parallel peers"));
    let both = setup.train("mhr", "both", &["--devices", "cpu:2", "--device", "cpu"]);
    assert!(!both.status.success());
    let mixed = setup.train("mhr", "mixed", &["--devices", "cuda:0,wgpu:1"]);
    assert!(
        stderr(&mixed).contains("invalid --devices `cuda:0,wgpu:1`"),
        "{}",
        stderr(&mixed)
    );
}

/// The adapters of runs `a` and `b` agree to 1e-5 (relative, per tensor).
fn assert_close_adapters(setup: &Setup, a: &str, b: &str) {
    let (a_tensors, b_tensors) = (
        peft_tensors(&setup.path(a).join("adapter")),
        peft_tensors(&setup.path(b).join("adapter")),
    );
    assert_eq!(
        a_tensors.keys().collect::<Vec<_>>(),
        b_tensors.keys().collect::<Vec<_>>()
    );
    for (key, x) in &a_tensors {
        let (x, y) = (x.to_f32(), b_tensors[key].to_f32());
        let diff: f32 = x.iter().zip(&y).map(|(p, q)| (p - q).powi(2)).sum();
        let norm: f32 = x.iter().map(|p| p * p).sum();
        assert!(
            diff.sqrt() <= 1e-5 * norm.sqrt().max(1e-12),
            "{a} vs {b}: {key} differs by {} of {}",
            diff.sqrt(),
            norm.sqrt()
        );
    }
}

/// An MHR run `pre` with `flags`, whose config.toml then holds `kept`, and a run `parts` with the same flags
/// stopped after a step and resumed, which must end with `pre`'s weights.
fn train_and_resume(setup: &Setup, flags: &[&str], kept: &str) {
    assert_success(&setup.train("mhr", "pre", flags));
    let config = std::fs::read_to_string(setup.path("pre/config.toml")).unwrap();
    assert!(config.contains(kept), "{config}");
    assert_success(&setup.train("mhr", "parts", &[flags, &["--stop-after", "1"]].concat()));
    assert_success(&mhr(["train", "--resume", "--out", s(&setup.path("parts"))]));
    assert!(
        adapter_weights(setup, "pre") == adapter_weights(setup, "parts"),
        "resumed run's weights differ ({flags:?})"
    );
}

/// The bytes of a run's exported adapter weights.
fn adapter_weights(setup: &Setup, run: &str) -> Vec<u8> {
    std::fs::read(setup.path(run).join("adapter/adapter_model.safetensors")).unwrap()
}

/// `mhr adapt --run pre --task HELD_OUT --k 4 --seed 1 --test-instances 4 --out OUT extra...`.
fn adapt(setup: &Setup, out: &str, extra: &[&str]) -> Output {
    let (pre, out) = (setup.path("pre"), setup.path(out));
    let mut args = vec![
        "adapt",
        "--run",
        s(&pre),
        "--task",
        HELD_OUT,
        "--k",
        "4",
        "--seed",
        "1",
        "--test-instances",
        "4",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    mhr(args)
}

/// The tensors of an exported peft folder.
fn peft_tensors(dir: &Path) -> std::collections::BTreeMap<String, Tensor> {
    read(&dir.join("adapter_model.safetensors"))
}

#[test]
fn z_adaptation_trains_only_the_held_out_routing_row() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "pre", &[]));
    let output = adapt(
        &setup,
        "z",
        &["--method", "mhr-z", "--steps", "2", "--routing-lr", "1.0"],
    );
    assert_success(&output);
    let before = peft_tensors(&setup.path("pre/adapter"));
    let after = peft_tensors(&setup.path("z/adapter"));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    // Rows without gradient only feel AdamW's decoupled decay θ ← θ·(1 − lr·factor·λ): routing lr 1, decay
    // 0.01, linear schedule over 2 steps without warm-up (factors 1 and 1/2).
    let decay = (1.0 - 0.01) * (1.0 - 0.01 * 0.5);
    // Task ids: the sorted names, so the held-out task (task1344…) is row 0.
    let mut row_changed = false;
    for (key, b) in &before {
        let a = &after[key];
        if key.ends_with("module_logits") {
            let (b, a) = (b.to_f32(), a.to_f32());
            let width = b.len() / 3;
            let decayed: Vec<f32> = b[width..].iter().map(|v| v * decay).collect();
            assert!(
                max_abs_diff(&a[width..], &decayed) < 1e-7,
                "{key}: a training task's row trained"
            );
            let held_out: Vec<f32> = b[..width].iter().map(|v| v * decay).collect();
            row_changed |= max_abs_diff(&a[..width], &held_out) > 1e-4;
        } else {
            assert!(a == b, "{key}: -z changed the skills");
        }
    }
    assert!(row_changed, "the held-out row did not train");
}

#[test]
fn mu_adaptation_starts_from_the_average_of_the_skills() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "pre", &[]));
    // lr 0: the adapter after one step is the averaged one, untouched.
    assert_success(&adapt(
        &setup,
        "mu",
        &["--method", "mhr-mu", "--steps", "1", "--lr", "0"],
    ));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(setup.path("mu/adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some(4), Some(1.0))
    );
    let skills = peft_tensors(&setup.path("pre/adapter"));
    let mu = peft_tensors(&setup.path("mu/adapter"));
    let module = "base_model.model.encoder.block.1.layer.1.DenseReluDense.wi_0";
    // Poly A [h, S, d_in/h, r] → peft lora_A.weight [r, d_in]: mean over skills, heads side by side.
    let a = &skills[&format!("{module}.poly_lora_A")];
    let (h, n_skills, d, r) = (a.shape[0], a.shape[1], a.shape[2], a.shape[3]);
    let a = a.to_f32();
    let mut expected = vec![0f32; r * h * d];
    for q in 0..h {
        for s in 0..n_skills {
            for i in 0..d {
                for j in 0..r {
                    expected[j * h * d + q * d + i] +=
                        a[((q * n_skills + s) * d + i) * r + j] / n_skills as f32;
                }
            }
        }
    }
    let found = mu[&format!("{module}.lora_A.weight")].to_f32();
    assert!(
        max_abs_diff(&found, &expected) < 1e-6,
        "lora_A is not the mean of the skills"
    );
}

#[test]
fn eval_scores_the_generations_that_mhr_generate_produces() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "pre", &[]));
    assert_success(&adapt(&setup, "z", &["--method", "mhr-z", "--steps", "2"]));
    assert_success(&setup.export("z", "z-peft"));
    let (results, predictions) = (setup.path("results.json"), setup.path("predictions.jsonl"));
    let output = mhr([
        "eval",
        "--run",
        s(&setup.path("z")),
        "--out",
        s(&results),
        "--predictions",
        s(&predictions),
    ]);
    assert_success(&output);
    assert_eq!(stdout(&output).lines().count(), 2, "one line per row");

    // The test set, independently: the first 4 instances of the task file, encoded as in training.
    let sni = SniDir::open(sni()).unwrap();
    let list = TaskList {
        path: PathBuf::from("in-memory"),
        entries: vec![(0, HELD_OUT.to_string())],
    };
    let task = load_tasks(&sni, &list, 12).unwrap().next().unwrap().unwrap();
    let test = &task.examples[..4];
    let tokenizer = Arc::new(HfTokenizer::from_file(&fixture("tokenizer.json")).unwrap());
    let encoder = Encoder::new(
        tokenizer.clone(),
        EncoderConfig {
            max_source_len: 48,
            max_target_len: 12,
            source_suffix: SniPromptFormat::Mttl.source_suffix().map(String::from),
        },
    )
    .unwrap();
    let encoded = encode_all(&encoder, test, 0).unwrap();
    let len = encoded.iter().map(|e| e.input_ids.len()).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for e in &encoded {
        for i in 0..len {
            ids.push(e.input_ids.get(i).map_or(0, |&id| i64::from(id)));
            mask.push(i64::from(i < e.input_ids.len()));
        }
    }
    let batch = setup.path("test.safetensors");
    write(
        &batch,
        &[
            ("input_ids", Tensor::i64(&ids, &[4, len])),
            ("attention_mask", Tensor::i64(&mask, &[4, len])),
            ("task_ids", Tensor::i64(&[0; 4], &[4])),
        ],
    );
    let generated = setup.path("generated.safetensors");
    assert_success(&mhr([
        "generate",
        "--model",
        s(&fixture("t5-v1_1")),
        "--adapter",
        s(&setup.path("z-peft")),
        "--batch",
        s(&batch),
        "--max-new-tokens",
        "12",
        "--out",
        s(&generated),
    ]));
    let tokens = &read(&generated)["greedy_tokens"];
    let width = tokens.shape[1];
    let tokens = tokens.to_i64();
    let texts: Vec<String> = (0..4)
        .map(|row| {
            let ids: Vec<u32> = tokens[row * width + 1..(row + 1) * width]
                .iter()
                .map(|&t| t as u32)
                .collect();
            mhr_data::TextTokenizer::decode(tokenizer.as_ref(), &ids).unwrap()
        })
        .collect();

    let lines = read_jsonl(&predictions);
    assert_eq!(lines.len(), 4);
    for ((line, text), example) in lines.iter().zip(&texts).zip(test) {
        assert_eq!(line["prediction"], text.as_str());
        assert_eq!(line["id"], example.id.as_str());
    }
    let mean = |f: fn(&str, &[String]) -> f64| {
        texts.iter().zip(test).map(|(t, e)| f(t, &e.targets)).sum::<f64>() / 4.0
    };
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    assert_eq!(results["preset"], "mhr-eval");
    let rows = results["rows"].as_array().unwrap();
    let expected = [
        ("rouge_l", mean(mhr_train::metrics::rouge_l::<String>)),
        ("exact_match", mean(mhr_train::metrics::exact_match::<String>)),
    ];
    assert_eq!(rows.len(), 2);
    for (row, (metric, value)) in rows.iter().zip(expected) {
        assert_eq!(
            row,
            &serde_json::json!({"method": "mhr-z", "task": HELD_OUT, "k": 4, "seed": 1, "metric": metric,
                                "value": value})
        );
    }
}

#[test]
fn bad_adapt_and_eval_inputs_are_one_line_errors() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "pre", &[]));
    // A task without a routing row: the task and the run's tasks.json are named.
    let pre = setup.path("pre");
    let output = mhr([
        "adapt",
        "--run",
        s(&pre),
        "--task",
        "task_nowhere",
        "--k",
        "4",
        "--seed",
        "1",
        "--out",
        s(&setup.path("a")),
    ]);
    assert_error(&output, &["task_nowhere", "tasks.json"]);
    // A variant of another pre-training.
    assert_error(
        &adapt(&setup, "b", &["--method", "poly-z"]),
        &["poly-z", "mhr-z", "mhr-mu"],
    );
    assert_error(
        &adapt(&setup, "c", &["--method", "mhx"]),
        &["--method: method: unknown method `mhx`"],
    );
    assert_error(
        &adapt(&setup, "d", &["--dropout-rate", "1.5"]),
        &["--dropout-rate must be in [0, 1), found 1.5"],
    );
    assert!(!setup.path("d").exists(), "nothing written");
    // eval wants adaptation runs.
    let output = mhr(["eval", "--run", s(&pre), "--out", s(&setup.path("r.json"))]);
    assert_error(&output, &["a pre-training run"]);
    assert!(!setup.path("r.json").exists());
}

/// `mhr adapt --run pre --t0 T0EVAL --task TASK --k 8 --seed 42 --out OUT extra...`.
fn adapt_t0(setup: &Setup, task: &str, out: &str, extra: &[&str]) -> Output {
    adapt_t0_from(setup, &shared().join("data/t0eval"), task, out, extra)
}

fn adapt_t0_from(setup: &Setup, t0: &Path, task: &str, out: &str, extra: &[&str]) -> Output {
    let (pre, out) = (setup.path("pre"), setup.path(out));
    let mut args = vec![
        "adapt",
        "--run",
        s(&pre),
        "--t0",
        s(t0),
        "--task",
        task,
        "--k",
        "8",
        "--seed",
        "42",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    mhr(args)
}

#[test]
fn t0_adaptation_trains_with_tfew_and_eval_reports_rank_accuracy() {
    let setup = Setup::new();
    // COPA gets a routing row beside the SNI held-out task (no SNI file is looked for it).
    std::fs::write(setup.path("held.txt"), format!("{HELD_OUT}\ncopa\n")).unwrap();
    assert_success(&setup.train("mhr", "pre", &[]));
    assert_success(&adapt_t0(&setup, "copa", "copa", &["--steps", "3"]));
    let adapt_toml = std::fs::read_to_string(setup.path("copa/adapt.toml")).unwrap();
    assert!(
        adapt_toml.contains("t0 = ") && adapt_toml.contains("task = \"copa\""),
        "{adapt_toml}"
    );
    let metrics = read_jsonl(setup.path("copa/metrics.jsonl"));
    assert_eq!(metrics.len(), 3);
    for line in &metrics {
        let term = |k: &str| line[k].as_f64().unwrap_or_else(|| panic!("no `{k}` in {line}"));
        let sum = term("lm") + term("mc") + term("unlikelihood");
        assert!(
            (sum - term("loss")).abs() < 1e-5,
            "the T-Few terms add up to the loss: {line}"
        );
    }

    // Stopped after a step and resumed: the same adapter as the uninterrupted adaptation.
    assert_success(&adapt_t0(
        &setup,
        "copa",
        "parts",
        &["--steps", "3", "--stop-after", "1"],
    ));
    assert_success(&mhr(["adapt", "--resume", "--out", s(&setup.path("parts"))]));
    let weights =
        |run: &str| std::fs::read(setup.path(run).join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        weights("copa") == weights("parts"),
        "resumed T-Few adaptation differs"
    );

    let (results, predictions) = (setup.path("results.json"), setup.path("predictions.jsonl"));
    let output = mhr([
        "eval",
        "--run",
        s(&setup.path("copa")),
        "--n-test",
        "20",
        "--out",
        s(&results),
        "--predictions",
        s(&predictions),
    ]);
    assert_success(&output);
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{results}");
    let accuracy = rows[0]["value"].as_f64().unwrap();
    assert!(
        accuracy.is_finite() && (0.0..=1.0).contains(&accuracy),
        "{accuracy}"
    );
    assert_eq!(
        (
            &rows[0]["metric"],
            &rows[0]["task"],
            &rows[0]["method"],
            &rows[0]["k"]
        ),
        (
            &serde_json::json!("accuracy"),
            &serde_json::json!("copa"),
            &serde_json::json!("mhr"),
            &serde_json::json!(8)
        )
    );
    // Each prediction is one of its row's two choices; the accuracy is the share equal to the gold one.
    let raw = read_jsonl(shared().join("data/t0eval/copa/val.jsonl"));
    let lines = read_jsonl(&predictions);
    assert_eq!(lines.len(), 20);
    let mut correct = 0;
    for line in &lines {
        let row: usize = line["id"]
            .as_str()
            .unwrap()
            .strip_prefix("copa-")
            .unwrap()
            .parse()
            .unwrap();
        let choices = [&raw[row]["choice1"], &raw[row]["choice2"]];
        assert!(choices.contains(&&line["prediction"]), "{line}");
        let gold = choices[raw[row]["label"].as_u64().unwrap() as usize];
        assert_eq!(&line["references"][0], gold, "{line}");
        correct += usize::from(&line["prediction"] == gold);
    }
    assert_eq!(accuracy, correct as f64 / 20.0);

    // Bad T0 inputs: the dataset name, the folder, the missing templates file are named.
    assert_error(
        &adapt_t0(&setup, "copx", "e1", &[]),
        &["--task copx", "not a T0 held-out dataset", "copa"],
    );
    let output = adapt_t0_from(&setup, &setup.path("nowhere"), "copa", "e2", &[]);
    assert_error(&output, &["--t0", "nowhere", "not a directory"]);
    std::fs::create_dir(setup.path("empty-t0")).unwrap();
    let output = adapt_t0_from(&setup, &setup.path("empty-t0"), "copa", "e3", &[]);
    assert_error(&output, &["empty-t0", "templates.yaml"]);
    // A T0 dataset without a routing row, under a routed method.
    assert_error(&adapt_t0(&setup, "rte", "e4", &[]), &["--task rte", "tasks.json"]);
    for out in ["e1", "e2", "e3", "e4"] {
        assert!(!setup.path(out).exists(), "{out} written");
    }
}

/// The JSON values of a JSON-lines file.
fn read_jsonl(path: impl AsRef<Path>) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `mhr generate --inputs` of `texts` on task `task` with `--adapter adapter` (a run folder): the output lines.
fn generate_texts(setup: &Setup, adapter: &str, task: &str, texts: &[&str]) -> Vec<serde_json::Value> {
    let (inputs, out) = (
        setup.path("texts.jsonl"),
        setup.path(&format!("{adapter}-{task}.jsonl")),
    );
    let lines: String = texts
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({"task": task, "input": t})))
        .collect();
    std::fs::write(&inputs, lines).unwrap();
    let model = fixture("t5-v1_1");
    assert_success(&mhr([
        "generate",
        "--model",
        s(&model),
        "--adapter",
        s(&setup.path(adapter)),
        "--inputs",
        s(&inputs),
        "--max-new-tokens",
        "6",
        "--out",
        s(&out),
    ]));
    read_jsonl(&out)
}

/// The tokens `server` generates for `texts` on `task`.
fn served_tokens(server: &Server, task: &str, texts: &[&str]) -> Vec<serde_json::Value> {
    let body = serde_json::json!({"task": task, "inputs": texts, "max_new_tokens": 6}).to_string();
    let (status, answer, _) = server.post("/v1/generate", &body);
    assert_eq!(status, 200, "{answer}");
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["tokens"].clone())
        .collect()
}

#[test]
fn serve_registers_a_z_adaptation_as_its_routing_row_and_a_full_one_as_its_own_adapter() {
    let setup = Setup::new();
    assert_success(&setup.train("mhr", "pre", &[]));
    let z = ["--method", "mhr-z", "--steps", "2", "--routing-lr", "1.0"];
    assert_success(&adapt(&setup, "z", &z));
    assert_success(&adapt(&setup, "full", &["--method", "mhr", "--steps", "1"]));
    let texts = [
        "Definition: Decide whether the second sentence follows from the first. Input: it rains. Output:",
        "Input: the cat sleeps. Output:",
    ];
    // The adaptations themselves, offline, on their task: what the server must answer once they are registered.
    let offline = |run: &str| -> Vec<serde_json::Value> {
        generate_texts(&setup, run, HELD_OUT, &texts)
            .iter()
            .map(|line| line["tokens"].clone())
            .collect()
    };
    let (expected, expected_full) = (offline("z"), offline("full"));
    assert_ne!(
        expected, expected_full,
        "the two adaptations should generate apart"
    );
    let token = setup.path("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let model = fixture("t5-v1_1");
    let serve = |extra: &[&str]| {
        let mut args: Vec<String> = ["serve", "--model", s(&model), "--adapter", s(&setup.path("pre"))]
            .map(String::from)
            .to_vec();
        args.extend(["--max-wait-ms", "0", "--max-new-tokens", "6"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        Server::start(&args)
    };
    let server = serve(&["--token-file", s(&token)]);
    let register =
        |body: serde_json::Value, token: Option<&str>| server.post_as("/v1/tasks", &body.to_string(), token);
    let tasks =
        |server: &Server| -> serde_json::Value { serde_json::from_str(&server.get("/v1/tasks")).unwrap() };
    assert_eq!(tasks(&server)["tasks"].as_array().unwrap().len(), 3);
    let z_body = serde_json::json!({"path": setup.path("z"), "name": "held-z"});
    for token in [None, Some("wrong")] {
        let (status, answer, _) = register(z_body.clone(), token);
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (401, Some("authorization")),
            "{answer}"
        );
    }
    // A new name: one routing row appended, which routes as the adaptation's own row.
    let (status, answer, _) = register(z_body, Some("s3cret"));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"task": "held-z", "task_id": 3, "replaced": false, "own_adapter": false})
    );
    assert_eq!(tasks(&server)["tasks"][3], "held-z");
    assert_eq!(served_tokens(&server, "held-z", &texts), expected);
    // The run's own task (row 0 of the pre-training, untrained there): its row replaced.
    let (status, answer, _) = register(serde_json::json!({"path": setup.path("z")}), Some("s3cret"));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"task": HELD_OUT, "task_id": 0, "replaced": true, "own_adapter": false})
    );
    assert_eq!(served_tokens(&server, HELD_OUT, &texts), expected);
    // An adaptation that trained the skills is a full adapter of its own, not a routing row: refused under the name
    // of a routing row, served under its own name beside the routed tasks.
    let (status, answer, _) = register(serde_json::json!({"path": setup.path("full")}), Some("s3cret"));
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("name")),
        "{answer}"
    );
    let full_body = serde_json::json!({"path": setup.path("full"), "name": "held-full"});
    let (status, answer, _) = register(full_body.clone(), Some("s3cret"));
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"task": "held-full", "task_id": 0, "replaced": false, "own_adapter": true})
    );
    assert_eq!(tasks(&server)["tasks"][4], "held-full");
    assert_eq!(served_tokens(&server, "held-full", &texts), expected_full);
    assert_eq!(served_tokens(&server, HELD_OUT, &texts), expected);
    let (status, answer, _) = register(full_body, Some("s3cret"));
    assert_eq!(
        (status, &answer["replaced"]),
        (201, &serde_json::json!(true)),
        "{answer}"
    );
    // A routing-only adaptation cannot take the name of a task with its own adapter.
    let (status, answer, _) = register(
        serde_json::json!({"path": setup.path("z"), "name": "held-full"}),
        Some("s3cret"),
    );
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("name")),
        "{answer}"
    );
    let (status, answer, _) = register(serde_json::json!({"path": setup.path("none")}), Some("s3cret"));
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("path")),
        "{answer}"
    );
    assert!(server.stop().success());
    // `--tasks` at start: the same row, without a token (registration over HTTP is then off).
    let server = serve(&["--tasks", s(&setup.path("z"))]);
    assert_eq!(served_tokens(&server, HELD_OUT, &texts), expected);
    assert!(server.stop().success());
    // With the base model alone, the full adaptation is the one task, under its run's name.
    let tokenizer = fixture("tokenizer.json");
    let server = Server::start(
        &[
            "serve",
            "--model",
            s(&model),
            "--tokenizer",
            s(&tokenizer),
            "--max-wait-ms",
            "0",
            "--max-new-tokens",
            "6",
            "--tasks",
            s(&setup.path("full")),
        ]
        .map(String::from),
    );
    assert_eq!(tasks(&server)["tasks"], serde_json::json!([HELD_OUT]));
    assert_eq!(served_tokens(&server, HELD_OUT, &texts), expected_full);
    let (status, answer, _) = server.post_as("/v1/tasks", "{}", Some("s3cret"));
    assert_eq!(status, 403, "{answer}");
    assert!(server.stop().success());
}
