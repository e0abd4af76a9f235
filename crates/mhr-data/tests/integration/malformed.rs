//! Bad input gives the specific error, naming the file (and line or field), and never panics.

use std::path::{Path, PathBuf};

use mhr_data::{DataError, SniDir, SniOptions, SniTask, T0Dataset, T0Dir, TaskList, TemplateSet};
use serde_json::json;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn task_json() -> serde_json::Value {
    json!({
        "Definition": ["Do it"],
        "Positive Examples": [{"input": "a", "output": "b", "explanation": "c"}],
        "Negative Examples": [],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Instances": [{"id": "t-1", "input": "x", "output": ["y"]}, {"id": "t-2", "input": "z", "output": ["w"]}]
    })
}

fn read(text: &str) -> (PathBuf, Result<SniTask, DataError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "task9_demo.json", text);
    let result = SniTask::read(&path, None);
    (path, result, tmp)
}

#[test]
fn a_well_formed_task_reads() {
    let (_, task, _tmp) = read(&serde_json::to_string_pretty(&task_json()).unwrap());
    let task = task.unwrap();
    assert_eq!((task.name.as_str(), task.instances.len()), ("task9_demo", 2));
}

#[test]
fn malformed_json_names_file_and_line() {
    let text = serde_json::to_string_pretty(&task_json()).unwrap().replacen(
        "\"Negative Examples\": []",
        "\"Negative Examples\": [,]",
        1,
    );
    let (path, result, _tmp) = read(&text);
    match result {
        Err(DataError::Json { path: p, line, .. }) => {
            assert_eq!(p, path);
            assert_eq!(line, text.lines().position(|l| l.contains("[,]")).unwrap() + 1);
        }
        other => panic!("expected Json, got {other:?}"),
    }
}

#[test]
fn truncated_json_is_a_json_error() {
    let full = serde_json::to_string_pretty(&task_json()).unwrap();
    let (_, result, _tmp) = read(&full[..full.len() / 2]);
    assert!(matches!(result, Err(DataError::Json { message, .. }) if message.contains("EOF")));
    let (_, result, _tmp) = read("");
    assert!(matches!(result, Err(DataError::Json { .. })));
    let (_, result, _tmp) = read(&format!("{full} trailing"));
    assert!(matches!(result, Err(DataError::Json { .. })));
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    for field in ["Definition", "Instances", "Positive Examples", "Input_language"] {
        let mut value = task_json();
        value.as_object_mut().unwrap().remove(field);
        let (_, result, _tmp) = read(&value.to_string());
        assert!(
            matches!(&result, Err(DataError::MissingField { field: f, .. }) if f == field),
            "{field}: {result:?}"
        );
    }
    let mut value = task_json();
    value["Instances"][1].as_object_mut().unwrap().remove("output");
    let (_, result, _tmp) = read(&value.to_string());
    assert!(matches!(result, Err(DataError::Schema { message, .. }) if message.contains("`output`")));
    let mut value = task_json();
    value["Definition"] = json!("not a list");
    let (_, result, _tmp) = read(&value.to_string());
    assert!(matches!(result, Err(DataError::Schema { .. })));
    let (_, result, _tmp) = read("[1, 2]");
    assert!(matches!(result, Err(DataError::Schema { message, .. }) if message.contains("SNI task object")));
    let mut value = task_json();
    value["Instances"][1]["output"] = json!([]);
    let (_, result, _tmp) = read(&value.to_string());
    assert!(matches!(result, Err(DataError::InvalidField { field, .. }) if field == "Instances[1].output"));
    let mut value = task_json();
    value["Definition"] = json!([]);
    let (_, result, _tmp) = read(&value.to_string());
    assert!(matches!(result, Err(DataError::InvalidField { field, .. }) if field == "Definition"));
}

#[test]
fn empty_tasks_and_missing_files() {
    let mut value = task_json();
    value["Instances"] = json!([]);
    let (path, result, _tmp) = read(&value.to_string());
    assert!(matches!(result, Err(DataError::EmptyTask { path: p }) if p == path));
    assert!(matches!(
        SniTask::read(Path::new("/no/such/task.json"), None),
        Err(DataError::Io { .. })
    ));
    assert!(matches!(SniDir::open("/no/such/dir"), Err(DataError::Io { .. })));
}

#[test]
fn a_listed_but_absent_task_is_reported_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "tasks/task9_demo.json", &task_json().to_string());
    let list = write(
        tmp.path(),
        "splits/default/test_tasks.txt",
        "task9_demo\n\ntask10_absent\n",
    );
    let sni = SniDir::open(tmp.path()).unwrap();
    let split = sni.split("test").unwrap();
    match sni.load(&split, SniOptions::default()) {
        Err(DataError::MissingTask {
            list: l, line, task, ..
        }) => {
            assert_eq!((l, line, task.as_str()), (list, 3, "task10_absent"));
        }
        other => panic!("expected MissingTask, got {other:?}"),
    }
    assert!(matches!(
        TaskList::read(&tmp.path().join("nope.txt")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn a_bad_task_in_a_lazy_load_is_an_item_error() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "tasks/a.json", &task_json().to_string());
    write(tmp.path(), "tasks/b.json", "{\"Definition\": [");
    let results: Vec<_> = SniDir::open(tmp.path())
        .unwrap()
        .load_all(SniOptions::default())
        .unwrap()
        .collect();
    assert!(results[0].is_ok());
    assert!(matches!(&results[1], Err(DataError::Json { path, .. }) if path.ends_with("tasks/b.json")));
}

/// A T0 directory holding the real COPA templates and the given `copa/val.jsonl`.
fn copa_dir(rows: &str) -> (tempfile::TempDir, T0Dir) {
    let tmp = tempfile::tempdir().unwrap();
    let templates = T0Dataset::Copa.templates_path();
    write(
        tmp.path(),
        templates,
        &std::fs::read_to_string(crate::common::t0_root().join(templates)).unwrap(),
    );
    write(tmp.path(), "copa/val.jsonl", rows);
    let dir = T0Dir::open(tmp.path()).unwrap();
    (tmp, dir)
}

const COPA_ROW: &str =
    r#"{"premise": "p.", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": 0}"#;

#[test]
fn t0_rows_report_the_line() {
    let (_tmp, dir) = copa_dir(&format!("{COPA_ROW}\n{COPA_ROW}\n{{\"premise\": \n"));
    assert!(matches!(
        dir.load(T0Dataset::Copa, 0),
        Err(DataError::Json { line: 3, .. })
    ));

    let (_tmp, dir) = copa_dir(&format!("{COPA_ROW}\n[1]\n"));
    assert!(matches!(
        dir.load(T0Dataset::Copa, 0),
        Err(DataError::Schema { line: 2, .. })
    ));

    let (_tmp, dir) = copa_dir(&format!(
        "{COPA_ROW}\n{}\n",
        COPA_ROW.replace("\"label\": 0", "\"label\": 7")
    ));
    assert!(
        matches!(dir.load(T0Dataset::Copa, 0), Err(DataError::InvalidField { field, .. }) if field == "line 2: label")
    );

    let (_tmp, dir) = copa_dir(&COPA_ROW.replace("\"choice2\": \"b\", ", ""));
    assert!(
        matches!(dir.load(T0Dataset::Copa, 0), Err(DataError::MissingField { field, .. }) if field == "choice2 (line 1)")
    );

    let (_tmp, dir) = copa_dir("\n");
    assert!(matches!(
        dir.load(T0Dataset::Copa, 0),
        Err(DataError::EmptyTask { .. })
    ));
}

#[test]
fn templates_unknown_or_unreadable() {
    let set = TemplateSet::load(&crate::common::t0_root().join(T0Dataset::Copa.templates_path())).unwrap();
    assert!(
        matches!(set.get("no such template"), Err(DataError::UnknownTemplate { name, .. }) if name == "no such template")
    );
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "templates.yaml",
        "dataset: x\ntemplates: {a: !Template {id: a, name: n, jinja: '{% if %}'}}\n",
    );
    let set = TemplateSet::load(&path).unwrap();
    assert_eq!(
        set.issues().len(),
        1,
        "a template that does not compile is reported"
    );
    let row = json!({"x": 1});
    assert!(
        matches!(set.render(set.get("n").unwrap(), &row, 0), Err(DataError::Template { template, .. }) if template == "n")
    );
    assert!(matches!(
        TemplateSet::load(&tmp.path().join("absent.yaml")),
        Err(DataError::Io { .. })
    ));
}

#[test]
fn story_cloze_csv_without_its_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "test.csv", "InputStoryid,InputSentence1\nx,y\n");
    assert!(matches!(
        T0Dataset::StoryCloze.read_rows(&path),
        Err(DataError::MissingField { field, .. }) if field == "InputSentence2"
    ));
    let header = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,\
                  RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding";
    let path = write(tmp.path(), "ragged.csv", &format!("{header}\nx,y,z\n"));
    assert!(matches!(
        T0Dataset::StoryCloze.read_rows(&path),
        Err(DataError::Csv { line: 2, .. })
    ));
}
