//! The reproduction presets end to end (small settings): every method yields a finite score.

use burn::backend::{Autodiff, NdArray};
use mhr_core::AdapterHost;
use mhr_models::T5ForConditionalGeneration;
use mhr_presets::sni::{self, SniSettings};
use mhr_presets::synthetic::{self, SyntheticSettings};
use mhr_tests::{shared_dir, t5_fixture};

type A = Autodiff<NdArray>;

#[test]
fn smoke_preset_scores_every_method() {
    let _rng = mhr_tests::rng_lock();
    let out = tempfile::tempdir().unwrap();
    let settings = SniSettings {
        sni: shared_dir().join("data/sni"),
        ..SniSettings::smoke()
    };
    let results = sni::run::<A>(&settings, out.path(), &[Default::default()]).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(written["preset"], "smoke");
    for method in sni::METHODS {
        let rows: Vec<_> = results.rows.iter().filter(|r| r.method == method).collect();
        assert_eq!(
            rows.len(),
            settings.eval_tasks,
            "{method}: one row per held-out task"
        );
        assert!(
            rows.iter()
                .all(|r| r.value.is_finite() && (0.0..=1.0).contains(&r.value) && r.metric == "rouge_l")
        );
    }
    assert!(
        std::fs::read_to_string(out.path().join("results.md"))
            .unwrap()
            .contains("| mhr-mu |")
    );
}

/// sni-small's path on the fixture checkpoint and its tokenizer: a loaded model, several seeds.
fn sni_small_on_the_fixture() -> SniSettings {
    let mut settings = SniSettings {
        sni: shared_dir().join("data/sni"),
        train_tasks: 2,
        eval_tasks: 1,
        instances_per_task: 120,
        n_test: 3,
        max_source_len: 64,
        max_target_len: 8,
        seeds: vec![13, 42],
        methods: vec!["lora".into(), "mhr".into()],
        ..SniSettings::sni_small(t5_fixture("t5-v1_1"), Some(t5_fixture("tokenizer.json")))
    };
    settings.pretraining.steps = 3;
    settings.adaptation.steps = 2;
    settings
}

#[test]
fn sni_small_preset_loads_the_model_and_repeats_seeds() {
    let _rng = mhr_tests::rng_lock();
    let out = tempfile::tempdir().unwrap();
    let settings = sni_small_on_the_fixture();
    let results = sni::run::<A>(&settings, out.path(), &[Default::default()]).unwrap();
    assert_eq!(results.preset, "sni-small");
    let mut cells: Vec<_> = results.rows.iter().map(|r| (r.method.as_str(), r.seed)).collect();
    cells.sort();
    assert_eq!(cells, [("lora", 13), ("lora", 42), ("mhr", 13), ("mhr", 42)]);
    assert!(
        results
            .rows
            .iter()
            .all(|r| r.k == 32 && (0.0..=1.0).contains(&r.value))
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("settings.json")).unwrap()).unwrap();
    assert_eq!(written["targets"], serde_json::json!(["q", "k", "v", "o"]));
}

#[test]
fn sni_preset_rejects_a_tokenizer_larger_than_the_vocabulary() {
    let out = tempfile::tempdir().unwrap();
    let settings = SniSettings {
        tokenizer: None,
        ..sni_small_on_the_fixture()
    };
    let error = sni::run::<A>(&settings, out.path(), &[Default::default()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("259 ids") && error.contains("vocab_size is 200"),
        "{error}"
    );
}

#[test]
fn synthetic_preset_runs_and_scores_routing() {
    let _rng = mhr_tests::rng_lock();
    let out = tempfile::tempdir().unwrap();
    let mut settings = SyntheticSettings {
        methods: ["lora-scratch", "lora", "poly-z", "mhr", "mhr-mu"]
            .map(String::from)
            .to_vec(),
        seeds: vec![0, 1],
        ks: vec![16],
        base_steps: 20,
        n_test: 10,
        ..SyntheticSettings::default()
    };
    settings.pretraining.steps = 5;
    settings.adaptation.steps = 2;
    let report = synthetic::run::<A>(&settings, out.path(), &[Default::default()]).unwrap();
    assert_eq!(
        report.results.rows.len(),
        5 * 10 * 2,
        "5 methods × 10 held-out tasks × 2 seeds"
    );
    // One split: both seeds adapt to the same held-out tasks.
    let tasks = |seed: u64| -> Vec<&str> {
        let rows = report.results.rows.iter();
        rows.filter(|r| r.seed == seed && r.method == "mhr")
            .map(|r| r.task.as_str())
            .collect()
    };
    assert_eq!(tasks(0), tasks(1));
    // Of the ordering's pairs only `lora ≥ lora-scratch` has both methods here: its gap and noise are the mean
    // and two standard errors of the 20 paired (task, seed) differences.
    let [check] = report.ordering.as_slice() else {
        panic!("one ordering claim, found {:?}", report.ordering)
    };
    let scores = |m: &str| -> Vec<f64> {
        let rows = report.results.rows.iter();
        rows.filter(|r| r.method == m).map(|r| r.value).collect()
    };
    let d: Vec<f64> = scores("lora")
        .iter()
        .zip(scores("lora-scratch"))
        .map(|(a, b)| a - b)
        .collect();
    let mean = d.iter().sum::<f64>() / 20.0;
    let variance = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 19.0;
    assert_eq!(
        (check.better.as_str(), check.worse.as_str(), check.k),
        ("lora", "lora-scratch", 16)
    );
    assert!((check.gap - mean).abs() < 1e-12, "{check:?} vs {mean}");
    assert!(
        (check.noise - 2.0 * (variance / 20.0).sqrt()).abs() < 1e-12,
        "{check:?}"
    );
    assert_eq!(check.holds, check.gap >= -check.noise);
    assert!(
        std::fs::read_to_string(out.path().join("results.md"))
            .unwrap()
            .contains("| lora ≥ lora-scratch | 16 |")
    );
    assert!(
        report
            .results
            .rows
            .iter()
            .all(|r| r.value.is_finite() && r.metric == "exact_match")
    );
    let routing: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("routing.json")).unwrap()).unwrap();
    let rho = routing["spearman_routing_vs_truth"]["mhr"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&rho), "{rho}");
    // Diagnostics: the base per atomic skill (100 inputs), stage 2 per family on 10 training tasks (10 inputs
    // each), and few-shot exact match per held-out task, each cell the mean of the seeds' rows.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap()).unwrap();
    let counts = |value: &serde_json::Value, n: f64| {
        let x = value.as_f64().unwrap() * n;
        assert!(
            (0.0..=n).contains(&x) && (x - x.round()).abs() < 1e-9,
            "{value} of {n}"
        );
    };
    let base = written["diagnostics"]["base_exact_match"].as_object().unwrap();
    assert_eq!(base.len(), 8, "{base:?}");
    base.values().for_each(|v| counts(v, 100.0));
    let stage2 = written["diagnostics"]["stage2_exact_match"].as_object().unwrap();
    let families: Vec<&str> = stage2.keys().map(String::as_str).collect();
    assert_eq!(families, ["lora-r16", "mhr", "poly"]);
    for scores in stage2.values() {
        let scores = scores.as_object().unwrap();
        assert_eq!(scores.len(), 10);
        scores.values().for_each(|v| counts(v, 10.0));
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    let (_, per_task) = md
        .split_once("Few-shot exact match per held-out task at k = 16")
        .expect("a per-task table");
    let first_task = &tasks(0)[0];
    let seeds_of = |seed| {
        let mut rows = report.results.rows.iter();
        rows.find(|r| r.method == "mhr" && r.seed == seed && r.task == *first_task)
            .unwrap()
            .value
    };
    let cell = format!("| mhr | {:.3} |", (seeds_of(0) + seeds_of(1)) / 2.0);
    assert!(
        per_task.lines().any(|l| l.starts_with(&cell)),
        "{cell} in {per_task}"
    );
    // Figures: routing beside the ground truth per routed method, alignment per pre-trained family, curves.
    for figure in [
        "routing_mhr.svg",
        "alignment_mhr.svg",
        "alignment_lora-r16.svg",
        "learning_curves.svg",
    ] {
        let svg = std::fs::read_to_string(out.path().join(figure)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{figure}"
        );
    }
    // Each task's gradient is perfectly aligned with itself.
    let alignment: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("alignment.json")).unwrap()).unwrap();
    let cosine = alignment["mhr"]["cosine"].as_array().unwrap();
    assert_eq!(cosine.len(), 8);
    for (i, row) in cosine.iter().enumerate() {
        let row: Vec<f64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!((row[i] - 1.0).abs() < 1e-6, "diagonal {}", row[i]);
        assert!(row.iter().all(|c| (-1.0 - 1e-6..=1.0 + 1e-6).contains(c)));
    }
    // The run's files reproduce it: the base as a transformers checkpoint (also the cache a second run with the
    // same settings loads instead of training) and each family's stage-2 adapter as a peft folder score stage 2
    // exactly as the run did.
    let base =
        T5ForConditionalGeneration::<NdArray>::load(out.path().join("base"), &Default::default()).unwrap();
    for family in families {
        let model = base
            .clone()
            .load_peft_adapter(out.path().join("stage2").join(family))
            .unwrap();
        let scores = synthetic::stage2_exact_match(&model, &settings).unwrap();
        assert_eq!(serde_json::json!(scores), stage2[family], "{family}");
    }
}

/// A T0-mixture folder in P3's layout made from two shipped SNI training tasks: task A as two
/// "templates" (the bare input, and the input after the task definition), task B as one.
fn p3_folder_from_sni() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let task = |name: &str| -> serde_json::Value {
        let path = shared_dir().join(format!("data/sni/tasks/{name}.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let a = task("task033_winogrande_answer_generation");
    let b = task("task080_piqa_answer_generation");
    let definition = a["Definition"][0].as_str().unwrap().to_string();
    let subsets: [(&str, &str, &serde_json::Value, &str); 3] = [
        ("wino_bare", "winogrande", &a, ""),
        ("wino_defined", "winogrande", &a, definition.as_str()),
        ("piqa_bare", "piqa", &b, ""),
    ];
    let mut manifest = Vec::new();
    for (subset, dataset, task, prefix) in subsets {
        manifest.push(serde_json::json!({"subset": subset, "dataset": dataset, "template": subset}));
        std::fs::create_dir(dir.path().join(subset)).unwrap();
        let rows: String = task["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .take(40)
            .map(|i| {
                let input = format!("{prefix} {}", i["input"].as_str().unwrap());
                let row = serde_json::json!({"inputs_pretokenized": input.trim(), "targets_pretokenized": i["output"][0]});
                format!("{row}\n")
            })
            .collect();
        std::fs::write(dir.path().join(subset).join("train.jsonl"), rows).unwrap();
    }
    std::fs::write(
        dir.path().join("mixture.json"),
        serde_json::to_string(&manifest).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn paper_t0_path_pretrains_on_the_mixture_and_adapts_to_held_out_datasets() {
    use mhr_presets::t0::{self, T0Settings};
    let _rng = mhr_tests::rng_lock();
    let p3 = p3_folder_from_sni();
    let out = tempfile::tempdir().unwrap();
    let mut settings = T0Settings {
        t0eval: shared_dir().join("data/t0eval"),
        datasets: vec!["copa".into(), "wsc".into()],
        cap_per_dataset: 40,
        validation_per_subset: 4,
        max_source_len: 64,
        max_target_len: 16,
        seeds: vec![42, 0],
        methods: vec!["lora".into(), "mhr".into(), "mhr-z".into()],
        n_test: 12,
        eval_batch: 6,
        ..T0Settings::paper_t0(
            t5_fixture("t5-v1_1"),
            t5_fixture("tokenizer.json"),
            p3.path().to_path_buf(),
        )
    };
    (settings.pretraining.steps, settings.pretraining.batch_size) = (3, 4);
    (settings.adaptation.steps, settings.adaptation.batch_size) = (2, 4);
    (settings.adapter.mhr_heads, settings.adapter.n_skills) = (2, 2);
    let results = t0::run::<A>(&settings, out.path(), &[Default::default()]).unwrap();
    let mut cells: Vec<_> = results
        .rows
        .iter()
        .map(|r| (r.method.as_str(), r.task.as_str(), r.seed, r.k))
        .collect();
    cells.sort();
    let mut expected = Vec::new();
    for method in ["lora", "mhr", "mhr-z"] {
        for task in ["copa", "wsc"] {
            for seed in [0, 42] {
                expected.push((method, task, seed, 32));
            }
        }
    }
    assert_eq!(cells, expected, "T-Few's k = 32 for COPA and WSC");
    // 12 scored rows each: the accuracy is a multiple of 1/12.
    for r in &results.rows {
        assert_eq!(r.metric, "accuracy");
        let correct = r.value * 12.0;
        assert!((correct - correct.round()).abs() < 1e-9, "{r:?}");
    }
    let pre: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("pretraining.json")).unwrap()).unwrap();
    // One routing row per (dataset, template) in name order, then the held-out datasets.
    assert_eq!(
        pre["tasks"],
        serde_json::json!(["piqa_bare", "wino_bare", "wino_defined", "copa", "wsc"])
    );
    for family in ["lora", "mhr"] {
        let loss = pre["validation_loss"][family].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{family}: {loss}");
    }
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("| mhr | ") && md.contains("0.69"), "{md}");
}

#[test]
fn paper_t0_rejects_an_unknown_held_out_dataset_before_loading_anything() {
    use mhr_presets::t0::{self, T0Settings};
    let out = tempfile::tempdir().unwrap();
    let settings = T0Settings {
        t0eval: shared_dir().join("data/t0eval"),
        datasets: vec!["copa".into(), "coppa".into()],
        ..T0Settings::paper_t0(
            t5_fixture("t5-v1_1"),
            t5_fixture("tokenizer.json"),
            out.path().join("no-p3"),
        )
    };
    let error = t0::run::<A>(&settings, out.path(), &[Default::default()])
        .unwrap_err()
        .to_string();
    assert!(error.contains("`coppa`") && error.contains("anli_r1"), "{error}");
}

/// `--jobs` runs each adapter family in its own process and assembles their outcomes: units taken one by one,
/// in another order, through a JSON round trip, give the report of one sequential run, bit for bit.
#[test]
fn synthetic_units_run_apart_assemble_to_the_sequential_report() {
    let _rng = mhr_tests::rng_lock();
    let mut settings = SyntheticSettings {
        seeds: vec![0, 1],
        methods: ["lora-scratch", "lora", "mhr"].map(String::from).to_vec(),
        ks: vec![16],
        base_steps: 10,
        n_test: 10,
        ..SyntheticSettings::default()
    };
    settings.pretraining.steps = 3;
    settings.adaptation.steps = 2;
    let device = Default::default();
    let devices = std::slice::from_ref(&device);
    let whole_dir = tempfile::tempdir().unwrap();
    let whole = synthetic::run::<A>(&settings, whole_dir.path(), devices).unwrap();
    let apart_dir = tempfile::tempdir().unwrap();
    let base = synthetic::prepare::<A>(&settings, apart_dir.path(), devices).unwrap();
    let units = synthetic::work_units(&settings).unwrap();
    let names: Vec<String> = units.iter().map(synthetic::unit_name).collect();
    assert_eq!(names, ["mhr@0,1", "lora@0,1", "lora-scratch@0", "lora-scratch@1"]);
    let mut outcomes = Vec::new();
    for unit in units.iter().rev() {
        // A worker loads the base that `prepare` cached and runs one unit.
        let base = synthetic::cached_base::<A>(&settings, apart_dir.path(), devices).unwrap();
        let outcome = synthetic::run_unit::<A>(unit, &base, apart_dir.path(), devices).unwrap();
        let json = serde_json::to_string(&outcome).unwrap();
        outcomes.push(serde_json::from_str::<synthetic::UnitOutcome>(&json).unwrap());
    }
    let skills = &base.skill_exact_match;
    let apart = synthetic::assemble(&settings, skills, &outcomes, apart_dir.path()).unwrap();
    assert_eq!(whole.markdown, apart.markdown);
    assert_eq!(whole.spearman_routing_vs_truth, apart.spearman_routing_vs_truth);
    let values = |r: &synthetic::SyntheticReport| -> Vec<(String, u64, u64)> {
        r.results
            .rows
            .iter()
            .map(|x| (x.method.clone(), x.seed, x.value.to_bits()))
            .collect()
    };
    assert_eq!(values(&whole), values(&apart));
    for file in [
        "routing.json",
        "alignment.json",
        "learning_curves.json",
        "results.json",
    ] {
        assert_eq!(
            std::fs::read(whole_dir.path().join(file)).unwrap(),
            std::fs::read(apart_dir.path().join(file)).unwrap(),
            "{file}"
        );
    }
    // The outcomes came in reverse unit order: without the last, MHR's is missing.
    let missing = synthetic::assemble(&settings, skills, &outcomes[..3], apart_dir.path())
        .unwrap_err()
        .to_string();
    assert!(missing.contains("no outcome for method mhr, seed 0"), "{missing}");
}
