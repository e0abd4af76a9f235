//! The SNI loader against the shipped real task files.

use std::collections::HashSet;

use mhr_data::{
    DataError, SNI_K, SNI_SEEDS, SNI_TEST_INSTANCES, SniDir, SniOptions, SniPromptFormat, SniReferences,
    SniTask, SniTestSet, TaskIndex, TaskKind, TaskList, sni_few_shot, sni_stats,
};
use serde_json::Value;

const COPA: &str = "task1393_superglue_copa_text_completion";

fn dir() -> SniDir {
    SniDir::open(crate::common::sni_root()).unwrap()
}

fn raw_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().task_path(name)).unwrap()).unwrap()
}

#[test]
fn every_shipped_task_matches_its_json() {
    let dir = dir();
    let names = dir.task_names().unwrap();
    assert_eq!(names.len(), 78);
    for name in &names {
        let task = SniTask::read(&dir.task_path(name), None).unwrap();
        let json = raw_json(&task.name);
        let instances = json["Instances"].as_array().unwrap();
        assert_eq!(task.total_instances, instances.len(), "{}", task.name);
        assert_eq!(task.instances.len(), instances.len());
        assert_eq!(task.definition, json["Definition"][0].as_str().unwrap());
        assert_eq!(
            task.positive_examples.len(),
            json["Positive Examples"].as_array().unwrap().len()
        );
        assert_eq!(
            task.negative_examples.len(),
            json["Negative Examples"].as_array().unwrap().len()
        );
        for (inst, raw) in task.instances.iter().zip(instances) {
            assert_eq!(inst.id, raw["id"].as_str().unwrap());
            assert_eq!(inst.input, raw["input"].as_str().unwrap());
            let outputs: Vec<&str> = raw["output"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap())
                .collect();
            assert_eq!(inst.output, outputs);
        }
        assert!(task.is_english());
    }
    // The lazy loader renders the same tasks, one file per step.
    let loaded: Vec<_> = dir
        .load_all(SniOptions::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(loaded.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), names);
    assert!(
        loaded
            .iter()
            .all(|t| t.examples.len() == t.metadata.total_instances)
    );
}

#[test]
fn known_task_values_and_the_instance_cap() {
    let task = SniTask::read(&dir().task_path(COPA), Some(10)).unwrap();
    assert_eq!(task.name, COPA);
    assert_eq!((task.instances.len(), task.total_instances), (10, 200));
    assert_eq!(task.categories, ["Cause Effect Classification"]);
    assert_eq!(
        (task.positive_examples.len(), task.negative_examples.len()),
        (3, 2)
    );
    assert_eq!(task.instances[0].id, "task1393-3333a3c18e3744f899e65937f405445a");
    assert_eq!(task.instances[0].output, ["A"]);
    assert_eq!(task.positive_examples[0].output, "A");
    let zest = SniTask::read(&dir().task_path("task121_zest_text_modification"), None).unwrap();
    assert_eq!((zest.instances.len(), zest.total_instances), (127, 127));
    assert_eq!(zest.categories, ["Question Rewriting"]);
}

#[test]
fn rendered_prompts_match_hand_written_strings() {
    let task = SniTask::read(&dir().task_path(COPA), Some(1)).unwrap();
    let definition = "In this task, you are given a premise sentence, two possible options and a question word. If \
                      the question was cause you should select the option that is a possible cause of the premise \
                      sentence, and if the question word was effect you should find the option which is a possible \
                      effect of the premise sentence. Answer with \"A\" or \"B\".";
    let input = "The man fell unconscious. (A) The assailant struck the man in the head. (B) The assailant took the \
                 man's wallet., Question: cause";
    let mttl = format!(
        "Task definition: {definition}\nNow complete the following example -\nInput: {input}.\nOutput:"
    );
    let example = &task.to_task(&SniPromptFormat::Mttl).examples[0];
    assert_eq!(example.source, mttl);
    assert_eq!(example.targets, ["A"]);
    assert_eq!(example.id, task.instances[0].id);

    let demo = "The animal species became endangered. (A) Their habitat was destroyed. (B) Their predators went \
                extinct., Question: cause";
    let tk = format!(
        "Definition: {definition}\n\n Positive Example 1 -\nInput: {demo}.\n Output: A.\n\n\
         Now complete the following example -\nInput: {input}.\nOutput: "
    );
    assert_eq!(
        SniPromptFormat::TkInstruct { positive_examples: 1 }.render(&task, &task.instances[0].input),
        tk
    );
}

#[test]
fn splits_and_task_lists() {
    let dir = dir();
    let train = dir.split("train").unwrap();
    let test = dir.split("test").unwrap();
    assert_eq!((train.entries.len(), test.entries.len()), (756, 119));
    let subset = TaskList::read(&crate::common::sni_root().join("subset/train_tasks.txt")).unwrap();
    assert_eq!(subset.entries.len(), 63);
    assert!(subset.names().all(|name| train.contains(name)));
    let tasks: Vec<_> = dir
        .load(&subset, SniOptions::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tasks.len(), 63);
    assert!(
        tasks
            .iter()
            .zip(subset.names())
            .all(|(task, name)| task.name == name)
    );

    // The full default split names tasks that are not shipped: reported with the list line, before any read.
    match dir.load(&test, SniOptions::default()) {
        Err(DataError::MissingTask {
            list,
            line,
            task,
            expected,
        }) => {
            assert!(list.ends_with("splits/default/test_tasks.txt"));
            assert_eq!(test.entries[line - 1].1, task);
            assert!(!expected.exists());
        }
        other => panic!("expected MissingTask, got {other:?}"),
    }

    // mttl's SNI task ids: the sorted union of the split names.
    let index = TaskIndex::sorted(train.names().chain(test.names()));
    assert_eq!(index.len(), 756 + 119);
    assert_eq!(index.name(0), Some("task001_quoref_question_generation"));
    assert!(index.id(COPA).is_some());
}

#[test]
fn english_filter_skips_other_languages() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("tasks")).unwrap();
    let mut json = raw_json(COPA);
    std::fs::write(tmp.path().join("tasks/en.json"), json.to_string()).unwrap();
    json["Output_language"] = serde_json::json!(["Spanish"]);
    std::fs::write(tmp.path().join("tasks/es.json"), json.to_string()).unwrap();
    let sni = SniDir::open(tmp.path()).unwrap();
    let mut tasks = sni.load_all(SniOptions::default()).unwrap();
    let names: Vec<String> = tasks.by_ref().map(|t| t.unwrap().name).collect();
    assert_eq!(names, ["en"]);
    assert_eq!(tasks.skipped_non_english(), ["es"]);
    let all = SniOptions {
        english_only: false,
        ..SniOptions::default()
    };
    assert_eq!(sni.load_all(all).unwrap().count(), 2);
}

#[test]
fn few_shot_protocol_on_real_eval_tasks() {
    let dir = dir();
    let references =
        SniReferences::read(&crate::common::sni_root().join("subset/eval_references.jsonl")).unwrap();
    assert_eq!(references.tasks().count(), 15);
    let eval = TaskList::read(&crate::common::sni_root().join("subset/eval_tasks.txt")).unwrap();
    for task in dir.load(&eval, SniOptions::default()).unwrap() {
        let task = task.unwrap();
        assert_eq!(task.kind, TaskKind::Generation);
        let ids = references.ids(&task.name);
        assert_eq!(ids.len(), SNI_TEST_INSTANCES);
        let split = sni_few_shot(&task, SniTestSet::Ids(&ids), SNI_K, SNI_SEEDS[0]).unwrap();
        // The test set is the reference instances (in file order), with every reference kept for Rouge-L.
        for example in &split.test {
            let reference = references
                .task(&task.name)
                .iter()
                .find(|r| r.id == example.id)
                .unwrap();
            assert_eq!(example.targets, reference.references);
        }
        let pool = task.examples.len() - SNI_TEST_INSTANCES;
        assert_eq!(split.train.len(), SNI_K.min(pool));
        assert_eq!(split.validation.len(), SNI_K.min(pool - split.train.len()));
        let train_ids: HashSet<&str> = split.train.iter().map(|e| e.id.as_str()).collect();
        assert!(
            split
                .validation
                .iter()
                .all(|e| !train_ids.contains(e.id.as_str()) && !ids.contains(&e.id))
        );
        assert!(train_ids.iter().all(|id| !ids.contains(*id)));
        // Deterministic per seed, different across seeds.
        assert_eq!(
            sni_few_shot(&task, SniTestSet::Ids(&ids), SNI_K, SNI_SEEDS[0]).unwrap(),
            split
        );
        let other = sni_few_shot(&task, SniTestSet::Ids(&ids), SNI_K, SNI_SEEDS[1]).unwrap();
        assert_eq!(other.test, split.test);
        assert_ne!(other.train, split.train);
        // mttl's rule (the first 100 in file order) is available as well.
        let first = sni_few_shot(&task, SniTestSet::First(SNI_TEST_INSTANCES), SNI_K, 13).unwrap();
        assert_eq!(first.test, task.examples[..SNI_TEST_INSTANCES]);
    }
}

#[test]
fn stats_records_per_task() {
    let list = crate::common::sni_root().join("subset/eval_tasks.txt");
    let stats: Vec<_> = sni_stats(&crate::common::sni_root(), Some(&list), SniOptions::default())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stats.len(), 15);
    let copa = stats.iter().find(|s| s.name == COPA).unwrap();
    assert_eq!(
        (copa.instances, copa.examples, copa.kind),
        (200, 200, TaskKind::Generation)
    );
    assert!((copa.mean_target_chars - 1.0).abs() < 1e-9, "targets are A or B");
    assert!(copa.mean_source_chars > 500.0);
    let capped = SniOptions {
        max_instances: Some(5),
        ..SniOptions::default()
    };
    let all: Vec<_> = sni_stats(&crate::common::sni_root(), None, capped)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 78);
    assert!(all.iter().all(|s| s.examples == 5 && s.instances >= 100));
    let line = serde_json::to_value(&all[0]).unwrap();
    for key in [
        "name",
        "instances",
        "examples",
        "kind",
        "mean_source_chars",
        "mean_target_chars",
    ] {
        assert!(line.get(key).is_some(), "{key}");
    }
}
