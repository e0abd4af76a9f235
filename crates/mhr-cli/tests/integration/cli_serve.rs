//! Text in, text out: `mhr generate --inputs`, `mhr score --inputs` and `mhr serve` against the token-id path
//! (`--batch`) on the MHR fixture, whose three routing rows are served as tasks "0", "1", "2".

use std::path::Path;

use mhr_data::{HfTokenizer, TextTokenizer};
use serde_json::{Value, json};

use crate::common::*;

const MODEL: &str = "t5-v1_1";
const ADAPTER: &str = "t5-v1_1-mhr";
const EOS: i64 = 1;

/// (task, input) of the generation lines: every task, inputs of different lengths.
const GENERATE: [(&str, &str); 4] = [
    ("0", "Definition: In this task, you are given a sentence."),
    ("2", "Output:"),
    ("1", "  leading and  double  spaces "),
    ("2", "Now complete the following example -"),
];

/// (task, input, choices) of the scoring lines.
const SCORE: [(&str, &str, [&str; 2]); 2] = [
    ("1", "Is the sky blue? Output:", ["yes", "no"]),
    ("0", "Output:", ["a b c", "maybe so"]),
];

fn tokenizer() -> HfTokenizer {
    HfTokenizer::from_file(&fixture("tokenizer.json")).unwrap()
}

fn model_args() -> Vec<String> {
    [
        "--model",
        &fixture(MODEL).display().to_string(),
        "--adapter",
        &fixture(ADAPTER).display().to_string(),
        "--tokenizer",
        &fixture("tokenizer.json").display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn generate_lines() -> Vec<Value> {
    GENERATE
        .iter()
        .enumerate()
        .map(|(i, (task, input))| json!({"id": format!("g{i}"), "task": task, "input": input}))
        .collect()
}

fn score_lines() -> Vec<Value> {
    SCORE
        .iter()
        .map(|(task, input, choices)| json!({"task": task, "input": input, "choices": choices}))
        .collect()
}

/// `mhr generate --inputs` of the generation lines, all in one batch.
fn generate_texts(dir: &Path, beams: usize) -> Vec<Value> {
    let (inputs, out) = (
        dir.join("generate.jsonl"),
        dir.join(format!("generated-{beams}.jsonl")),
    );
    write_lines(&inputs, &generate_lines());
    let mut args = vec!["generate".to_string()];
    args.extend(model_args());
    args.extend(
        [
            "--inputs",
            &inputs.display().to_string(),
            "--max-new-tokens",
            "8",
            "--num-beams",
            &beams.to_string(),
            "--batch-size",
            "4",
            "--out",
            &out.display().to_string(),
        ]
        .map(String::from),
    );
    assert_success(&mhr(&args));
    read_lines(&out)
}

/// `mhr score --inputs` of the scoring lines.
fn score_texts(dir: &Path) -> Vec<Value> {
    let inputs = dir.join("score.jsonl");
    write_lines(&inputs, &score_lines());
    let scored = dir.join("scored.jsonl");
    let mut args = vec!["score".to_string()];
    args.extend(model_args());
    args.extend(
        [
            "--inputs",
            &inputs.display().to_string(),
            "--out",
            &scored.display().to_string(),
        ]
        .map(String::from),
    );
    assert_success(&mhr(&args));
    read_lines(&scored)
}

fn tokens_of(value: &Value) -> Vec<i64> {
    value["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect()
}

/// Rows of ids padded with 0 into an int64 tensor, and their mask.
fn padded(rows: &[Vec<u32>], fill: i64) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for row in rows {
        ids.extend(row.iter().map(|&i| i64::from(i)));
        ids.extend(std::iter::repeat_n(fill, width - row.len()));
        mask.extend(std::iter::repeat_n(1, row.len()));
        mask.extend(std::iter::repeat_n(0, width - row.len()));
    }
    (
        Tensor::i64(&ids, &[rows.len(), width]),
        Tensor::i64(&mask, &[rows.len(), width]),
    )
}

fn task_ids(tasks: &[&str]) -> Tensor {
    let ids: Vec<i64> = tasks.iter().map(|t| t.parse().unwrap()).collect();
    Tensor::i64(&ids, &[ids.len()])
}

#[test]
fn text_inputs_equal_the_token_id_path() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let sources: Vec<Vec<u32>> = GENERATE
        .iter()
        .map(|(_, s)| tok.encode(s, true).unwrap())
        .collect();
    let (input_ids, attention_mask) = padded(&sources, 0);
    let tasks: Vec<&str> = GENERATE.iter().map(|(t, _)| *t).collect();
    let batch = dir.path().join("batch.safetensors");
    write(
        &batch,
        &[
            ("input_ids", input_ids),
            ("attention_mask", attention_mask),
            ("task_ids", task_ids(&tasks)),
        ],
    );
    for beams in [1, 3] {
        let lines = generate_texts(dir.path(), beams);
        let out = dir.path().join(format!("tokens-{beams}.safetensors"));
        let mut args = vec!["generate".to_string()];
        args.extend(model_args());
        args.extend(
            [
                "--batch",
                &batch.display().to_string(),
                "--max-new-tokens",
                "8",
                "--num-beams",
                &beams.to_string(),
                "--out",
                &out.display().to_string(),
            ]
            .map(String::from),
        );
        assert_success(&mhr(&args));
        let key = if beams == 1 {
            "greedy_tokens".to_string()
        } else {
            format!("beam{beams}_tokens")
        };
        let tokens = read(&out)[&key].clone();
        let width = tokens.shape[1];
        let rows = tokens.to_i64();
        assert_eq!(lines.len(), GENERATE.len());
        for (i, line) in lines.iter().enumerate() {
            // Without the decoder start token, up to and with eos.
            let row = &rows[i * width + 1..(i + 1) * width];
            let end = row.iter().position(|&t| t == EOS).map_or(row.len(), |p| p + 1);
            assert_eq!(tokens_of(line), row[..end], "beams {beams}, line {i}");
            let ids: Vec<u32> = row[..end].iter().map(|&t| t as u32).collect();
            assert_eq!(
                line["output"],
                tok.decode(&ids).unwrap(),
                "beams {beams}, line {i}"
            );
            assert_eq!(
                (line["line"].clone(), line["id"].clone()),
                (json!(i + 1), json!(format!("g{i}")))
            );
            assert_eq!(line["task"], GENERATE[i].0);
        }
    }

    // Scoring: one (input, choice) row per choice through `mhr score --batch`.
    let scored = score_texts(dir.path());
    let (mut sources, mut labels, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
    for (task, input, choices) in SCORE {
        for choice in choices {
            sources.push(tok.encode(input, true).unwrap());
            labels.push(tok.encode(choice, true).unwrap());
            tasks.push(task);
        }
    }
    let (input_ids, attention_mask) = padded(&sources, 0);
    let (label_ids, _) = padded(&labels, -100);
    write(
        &batch,
        &[
            ("input_ids", input_ids),
            ("attention_mask", attention_mask),
            ("labels", label_ids),
            ("task_ids", task_ids(&tasks)),
        ],
    );
    let out = dir.path().join("scores.safetensors");
    let mut args = vec!["score".to_string()];
    args.extend(model_args());
    args.extend(
        [
            "--batch",
            &batch.display().to_string(),
            "--out",
            &out.display().to_string(),
        ]
        .map(String::from),
    );
    assert_success(&mhr(&args));
    let sums = read(&out)["label_loglik_sum"].to_f32();
    for (i, line) in scored.iter().enumerate() {
        let logliks: Vec<f64> = line["logliks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let scores: Vec<f64> = line["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for c in 0..2 {
            let expected = f64::from(sums[2 * i + c]);
            assert!(
                (logliks[c] - expected).abs() < 1e-4,
                "line {i} choice {c}: {} vs {expected}",
                logliks[c]
            );
            let n = labels[2 * i + c].len() as f64;
            assert!((scores[c] - expected / n).abs() < 1e-4, "line {i} choice {c}");
        }
        let best = usize::from(scores[1] > scores[0]);
        assert_eq!(line["answer_index"], best);
        assert_eq!(line["answer"], SCORE[i].2[best]);
    }
}

#[test]
fn text_inputs_refuse_bad_lines_naming_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in.jsonl");
    let out = dir.path().join("out.jsonl");
    let cases: [(&str, &str, &str); 5] = [
        (
            "generate",
            "{\"task\": \"7\", \"input\": \"x\"}",
            "line 1: `task`: unknown task `7`",
        ),
        ("generate", "\n{\"input\": \"x\"}", "line 2: `task`: required"),
        (
            "generate",
            "{\"task\": \"0\", \"input\": [1]}",
            "line 1: `input`: invalid type",
        ),
        (
            "score",
            "{\"task\": \"0\", \"input\": \"x\"}",
            "line 1: `choices`: required",
        ),
        (
            "score",
            "{\"task\": \"0\", \"input\": \"x\", \"choices\": [], \"k\": 1}",
            "line 1: `k`",
        ),
    ];
    for (command, text, expected) in cases {
        std::fs::write(&inputs, text).unwrap();
        let mut args = vec![command.to_string()];
        args.extend(model_args());
        args.extend(
            [
                "--inputs",
                &inputs.display().to_string(),
                "--out",
                &out.display().to_string(),
            ]
            .map(String::from),
        );
        if command == "generate" {
            args.extend(["--max-new-tokens".into(), "4".into()]);
        }
        let output = mhr(&args);
        assert!(!output.status.success());
        let message = stderr(&output);
        assert!(message.contains(expected), "{command} {text}: {message}");
        assert!(message.contains(&inputs.display().to_string()), "{message}");
        assert!(!out.exists(), "nothing is written");
    }
}

/// `mhr serve` on the MHR fixture with `extra` flags.
fn serve(extra: &[&str]) -> Server {
    let mut args = vec!["serve".to_string()];
    args.extend(model_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&args)
}

/// The value of an unlabelled metric in `/metrics`.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// Runs the requests concurrently, answers in request order.
fn concurrently(server: &Server, path: &str, bodies: Vec<String>) -> Vec<(u16, Value, Option<String>)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|body| scope.spawn(|| server.post(path, body)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn server_batches_tasks_together_and_answers_as_offline() {
    let dir = tempfile::tempdir().unwrap();
    let offline = generate_texts(dir.path(), 1);
    let server = serve(&[
        "--max-batch",
        "4",
        "--max-wait-ms",
        "5000",
        "--max-input-tokens",
        "48",
        "--max-new-tokens",
        "8",
    ]);
    assert_eq!(server.get("/health"), r#"{"status":"ok"}"#);
    assert_eq!(
        server.get("/v1/tasks"),
        r#"{"tasks":["0","1","2"],"routed":true}"#
    );

    // Four requests of three tasks: one batch of four rows (it runs once full, long before max-wait).
    let bodies = GENERATE
        .iter()
        .map(|(task, input)| json!({"task": task, "input": input, "max_new_tokens": 8}).to_string())
        .collect();
    let answers = concurrently(&server, "/v1/generate", bodies);
    for (i, (status, body, _)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let output = &body["outputs"][0];
        assert_eq!(output["tokens"], offline[i]["tokens"], "request {i}");
        assert_eq!(output["text"], offline[i]["output"], "request {i}");
    }
    let metrics = server.get("/metrics");
    assert_eq!(metric(&metrics, "mhr_batch_requests_count"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "mhr_batch_requests_sum"), 4.0, "{metrics}");

    // Two scoring requests of two choices each fill one batch too, and equal `mhr score --inputs`.
    let offline = score_texts(dir.path());
    let answers = concurrently(
        &server,
        "/v1/score",
        score_lines().iter().map(Value::to_string).collect(),
    );
    for (i, (status, body, _)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        for key in ["answer", "answer_index"] {
            assert_eq!(body[key], offline[i][key], "{key} of request {i}");
        }
        for key in ["logliks", "scores"] {
            let (a, b) = (body[key].as_array().unwrap(), offline[i][key].as_array().unwrap());
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5,
                    "{key} of request {i}"
                );
            }
        }
    }
    let metrics = server.get("/metrics");
    assert_eq!(metric(&metrics, "mhr_batch_requests_count"), 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "mhr_queue_depth"), 0.0, "{metrics}");
    assert!(
        metrics.contains(r#"mhr_requests_total{endpoint="generate",status="200"} 4"#),
        "{metrics}"
    );

    // A request in flight when SIGTERM comes is still answered, then the server exits cleanly.
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| {
            server.post(
                "/v1/generate",
                &json!({"task": "1", "input": "Output:"}).to_string(),
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        server.terminate();
        let (status, body, _) = in_flight.join().unwrap();
        assert_eq!(status, 200, "{body}");
    });
    let mut server = server;
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn server_refuses_bad_requests_with_the_field_and_keeps_serving() {
    let server = serve(&[
        "--max-batch",
        "1",
        "--max-wait-ms",
        "0",
        "--max-input-tokens",
        "48",
        "--max-new-tokens",
        "8",
    ]);
    let long = "Definition: In this task, you are given a sentence. ".repeat(3);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/generate",
            json!({"task": "9", "input": "x"}).to_string(),
            404,
            "task",
        ),
        ("/v1/generate", json!({"input": "x"}).to_string(), 400, "task"),
        (
            "/v1/generate",
            json!({"task": "0", "input": long}).to_string(),
            413,
            "input",
        ),
        (
            "/v1/generate",
            json!({"task": "0", "inputs": ["x", long]}).to_string(),
            413,
            "inputs[1]",
        ),
        (
            "/v1/generate",
            json!({"task": "0", "input": "x", "max_new_tokens": 9}).to_string(),
            400,
            "max_new_tokens",
        ),
        (
            "/v1/generate",
            json!({"task": "0", "input": "x", "max_new_tokens": -1}).to_string(),
            400,
            "max_new_tokens",
        ),
        (
            "/v1/generate",
            json!({"task": 0, "input": "x"}).to_string(),
            400,
            "task",
        ),
        (
            "/v1/generate",
            json!({"task": "0", "input": "x", "temperature": 1}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/score",
            json!({"task": "0", "input": "x", "choices": []}).to_string(),
            400,
            "choices",
        ),
        (
            "/v1/score",
            json!({"task": "0", "input": "x", "choices": ["a", 2]}).to_string(),
            400,
            "choices[1]",
        ),
        (
            "/v1/score",
            json!({"task": "0", "input": "x"}).to_string(),
            400,
            "choices",
        ),
        ("/v1/score", "[1, 2]".to_string(), 400, "body"),
        ("/v1/nothing", "{}".to_string(), 404, "path"),
    ];
    for (path, body, status, field) in &cases {
        let (found, answer, _) = server.post(path, body);
        assert_eq!(
            (found, answer["error"]["field"].as_str()),
            (*status, Some(*field)),
            "{path} {body}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    // Every prefix of a valid request (malformed JSON) and every value replaced by a wrong type: a 400 naming a
    // field, never a failure of the server.
    let valid = json!({"task": "2", "inputs": ["Output:", "x"], "max_new_tokens": 3, "num_beams": 2});
    let text = valid.to_string();
    for end in 0..text.len() {
        let (status, answer, _) = server.post("/v1/generate", &text[..end]);
        assert_eq!(status, 400, "{:?}: {answer}", &text[..end]);
        assert_eq!(answer["error"]["field"], "body");
    }
    for key in ["task", "inputs", "max_new_tokens", "num_beams"] {
        for wrong in [
            json!(null),
            json!(true),
            json!(-3),
            json!(1.5),
            json!("x"),
            json!([[]]),
            json!({}),
        ] {
            let mut body = valid.clone();
            body[key] = wrong.clone();
            let (status, answer, _) = server.post("/v1/generate", &body.to_string());
            if status == 200 {
                // Some replacements are still valid (a null optional field, a string task …): answered normally.
                continue;
            }
            assert!(matches!(status, 400 | 404), "{body}: {status} {answer}");
            // The field replaced, or `input` when `inputs` became null (neither is given then).
            let field = answer["error"]["field"].as_str().unwrap();
            assert!(
                field.starts_with(key) || (key, field) == ("inputs", "input"),
                "{body}: {answer}"
            );
        }
    }
    let (status, answer, _) = server.post("/v1/generate", &text);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"].as_array().unwrap().len(), 2);
    let metrics = server.get("/metrics");
    assert!(
        metrics.contains(r#"mhr_requests_total{endpoint="generate",status="413"} 2"#),
        "{metrics}"
    );
    assert!(server.stop().success());
}
