//! `mhr score`, `mhr generate` and `mhr data stats` against the reference fixtures of `shared/`.

use crate::common::*;

const TOLERANCE: f32 = 1e-4;
const BASES: [&str; 2] = ["t5-v1_1", "t5-v1_0"];
const ADAPTERS: [&str; 4] = ["poly", "mhr", "lora", "ia3"];

/// `sum_t log softmax(logits[i, t])[labels[i, t]]` over labels != -100, from the reference logits.
fn loglik_sums(logits: &[f32], labels: &[i64], t: usize, vocab: usize) -> Vec<f32> {
    labels
        .chunks(t)
        .enumerate()
        .map(|(i, row)| {
            let mut sum = 0.0f64;
            for (j, &label) in row.iter().enumerate() {
                if label == -100 {
                    continue;
                }
                let z = &logits[(i * t + j) * vocab..(i * t + j + 1) * vocab];
                let max = z.iter().copied().fold(f32::MIN, f32::max) as f64;
                let log_norm = z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
                sum += z[label as usize] as f64 - log_norm;
            }
            sum as f32
        })
        .collect()
}

fn score(model: &str, adapter: Option<&str>, batch: &std::path::Path, out: &std::path::Path) {
    let mut args = vec![
        "score".to_string(),
        "--model".into(),
        fixture(model).display().to_string(),
        "--batch".into(),
        batch.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter".into(), fixture(a).display().to_string()]);
    }
    assert_success(&mhr(&args));
}

fn assert_close(name: &str, key: &str, found: &[f32], expected: &[f32]) {
    let diff = max_abs_diff(found, expected);
    assert!(diff <= TOLERANCE, "{name}: `{key}` differs by {diff}");
}

#[test]
fn score_reproduces_the_base_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    for model in BASES {
        let out = dir.path().join(format!("{model}.safetensors"));
        score(model, None, &reference(model), &out);
        let (found, expected) = (read(&out), read(&reference(model)));
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            ["label_loglik_sum", "logits", "loss"]
        );
        for key in ["logits", "loss", "label_loglik_sum"] {
            assert_eq!(found[key].dtype, "F32");
            assert_eq!(found[key].shape, expected[key].shape, "{model}: `{key}`");
            assert_close(model, key, &found[key].to_f32(), &expected[key].to_f32());
        }
    }
}

/// `--precision bf16` scores with the base in bf16: within bf16's resolution of the f32 fixtures, and not
/// the f32 numbers; ndarray, which has no bf16, refuses it by name.
#[test]
fn score_in_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let model = "t5-v1_1";
    let out = dir.path().join("bf16.safetensors");
    let run = |device: &str| {
        mhr([
            "score",
            "--model",
            &fixture(model).display().to_string(),
            "--batch",
            &reference(model).display().to_string(),
            "--precision",
            "bf16",
            "--device",
            device,
            "--out",
            &out.display().to_string(),
        ])
    };
    assert_success(&run("cpu"));
    let (found, expected) = (read(&out), read(&reference(model)));
    let (logits, reference_logits) = (found["logits"].to_f32(), expected["logits"].to_f32());
    let scale = reference_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&logits, &reference_logits);
    assert!(
        diff > TOLERANCE && diff < 0.02 * scale,
        "bf16 logits differ from f32 by {diff} (scale {scale})"
    );
    let loss_diff = max_abs_diff(&found["loss"].to_f32(), &expected["loss"].to_f32());
    assert!(loss_diff < 0.01, "bf16 loss differs from f32 by {loss_diff}");
    std::fs::remove_file(&out).unwrap();
    let refused = run("ndarray");
    assert!(!refused.status.success() && !out.exists());
    assert!(
        stderr(&refused).contains("bf16 is not supported by the"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn score_reproduces_the_adapter_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ADAPTERS {
        let name = format!("t5-v1_1-{kind}");
        let out = dir.path().join(format!("{kind}.safetensors"));
        score("t5-v1_1", Some(&name), &reference(&name), &out);
        let (found, expected) = (read(&out), read(&reference(&name)));
        for key in ["logits", "loss"] {
            assert_eq!(found[key].shape, expected[key].shape, "{name}: `{key}`");
            assert_close(&name, key, &found[key].to_f32(), &expected[key].to_f32());
        }
        // The adapter fixtures hold no label_loglik_sum: derive it from their logits.
        let [_, t, vocab] = expected["logits"].shape[..] else {
            panic!("logits are [b, t, V]")
        };
        let sums = loglik_sums(
            &expected["logits"].to_f32(),
            &expected["labels"].to_i64(),
            t,
            vocab,
        );
        assert_eq!(found["label_loglik_sum"].shape, [3]);
        assert_close(
            &name,
            "label_loglik_sum",
            &found["label_loglik_sum"].to_f32(),
            &sums,
        );
    }
}

#[test]
fn score_takes_int32_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let name = "t5-v1_1-mhr";
    let expected = read(&reference(name));
    let batch: Vec<_> = batch_of(&expected)
        .into_iter()
        .map(|(k, t)| (k, t.as_i32()))
        .collect();
    let input = dir.path().join("int32.safetensors");
    write(&input, &batch);
    let out = dir.path().join("out.safetensors");
    score("t5-v1_1", Some(name), &input, &out);
    let found = read(&out);
    assert_close(
        name,
        "logits",
        &found["logits"].to_f32(),
        &expected["logits"].to_f32(),
    );
}

fn generate(model: &str, adapter: Option<&str>, beams: usize, out: &std::path::Path) -> Tensor {
    let batch = reference(adapter.unwrap_or(model));
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        fixture(model).display().to_string(),
        "--batch".into(),
        batch.display().to_string(),
        "--max-new-tokens".into(),
        "8".into(),
        "--num-beams".into(),
        beams.to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter".into(), fixture(a).display().to_string()]);
    }
    assert_success(&mhr(&args));
    let mut found = read(out);
    let key = if beams == 1 {
        "greedy_tokens".to_string()
    } else {
        format!("beam{beams}_tokens")
    };
    assert_eq!(found.keys().collect::<Vec<_>>(), [&key]);
    found.remove(&key).unwrap()
}

#[test]
fn generate_reproduces_greedy_and_beam_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for model in BASES {
        let expected = read(&reference(model));
        for (beams, key) in [(1, "greedy_tokens"), (4, "beam4_tokens")] {
            let tokens = generate(
                model,
                None,
                beams,
                &dir.path().join(format!("{model}-{beams}.st")),
            );
            assert_eq!(tokens.dtype, "I64");
            assert_eq!(tokens.shape, expected[key].shape, "{model}: `{key}`");
            assert_eq!(tokens.to_i64(), expected[key].to_i64(), "{model}: `{key}`");
        }
    }
}

/// No adapter fixture holds generated tokens; the first generated token must still be the argmax of
/// the reference logits at the first decoder position (whose input is the start token whatever the labels).
#[test]
fn generate_with_adapters_starts_from_the_reference_logits() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ADAPTERS {
        let name = format!("t5-v1_1-{kind}");
        let expected = read(&reference(&name));
        let [b, t, vocab] = expected["logits"].shape[..] else {
            panic!("logits are [b, t, V]")
        };
        let logits = expected["logits"].to_f32();
        for beams in [1, 4] {
            let tokens = generate(
                "t5-v1_1",
                Some(&name),
                beams,
                &dir.path().join(format!("{kind}.st")),
            );
            let [rows, width] = tokens.shape[..] else {
                panic!("tokens are [b, n]")
            };
            assert_eq!(rows, b);
            assert!((2..=9).contains(&width), "{name}: width {width}");
            let ids = tokens.to_i64();
            for i in 0..b {
                assert_eq!(
                    ids[i * width],
                    0,
                    "{name}: row {i} starts with the decoder start token"
                );
                if beams == 1 {
                    let z = &logits[i * t * vocab..i * t * vocab + vocab];
                    let argmax = (0..vocab).max_by(|&a, &c| z[a].total_cmp(&z[c])).unwrap() as i64;
                    assert_eq!(ids[i * width + 1], argmax, "{name}: first token of row {i}");
                }
            }
        }
    }
}

fn stats_lines(args: &[&str]) -> Vec<serde_json::Value> {
    let output = mhr(args);
    assert_success(&output);
    stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn data_stats_prints_one_line_per_sni_task() {
    let sni = shared().join("data/sni");
    let sni = sni.to_str().unwrap();
    let lines = stats_lines(&["data", "stats", "--sni", sni]);
    assert_eq!(lines.len(), 78, "one line per task file");
    let task = lines
        .iter()
        .find(|l| l["name"] == "task639_multi_woz_user_utterance_generation")
        .expect("a line for task639");
    assert_eq!(task["instances"], 178);
    assert_eq!(task["examples"], 178);
    assert_eq!(task["kind"], "generation");
    for key in ["mean_source_chars", "mean_target_chars"] {
        assert!(task[key].as_f64().unwrap() > 0.0, "{key}");
    }

    let list = shared().join("data/sni/subset/eval_tasks.txt");
    let lines = stats_lines(&[
        "data",
        "stats",
        "--sni",
        sni,
        "--tasks",
        list.to_str().unwrap(),
        "--max-instances",
        "10",
    ]);
    assert_eq!(lines.len(), 15);
    for line in &lines {
        assert_eq!(line["examples"], 10, "{line}");
        assert!(line["instances"].as_u64().unwrap() >= 10, "{line}");
    }
}

#[test]
fn data_stats_reads_t0_datasets() {
    let t0 = shared().join("data/t0eval");
    let lines = stats_lines(&["data", "stats", "--t0", t0.to_str().unwrap()]);
    let cb = lines.iter().find(|l| l["name"] == "cb").expect("a line for cb");
    assert_eq!(cb["instances"], 56);
    assert_eq!(cb["kind"], "multiple_choice");
}
