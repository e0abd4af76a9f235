//! The T0-style multiple-choice loader: real held-out rows, promptsource templates, the T-Few protocol,
//! and hand-written rows in the upstream formats of HellaSwag, Winogrande and StoryCloze.

use std::collections::HashSet;
use std::path::Path;

use mhr_data::{DataError, T0_SEEDS, T0Dataset, T0Dir, TaskKind, TemplateSet, t0_stats};

fn dir() -> T0Dir {
    T0Dir::open(crate::common::t0_root()).unwrap()
}

/// Renders row `row` of `dataset` with the template called `name`.
fn render(dir: &T0Dir, dataset: T0Dataset, row: usize, name: &str) -> (String, String, Vec<String>) {
    let set = dir.templates(dataset).unwrap();
    let (_, rows) = dir.eval_rows(dataset).unwrap();
    let r = set.render(set.get(name).unwrap(), &rows[row].fields, 0).unwrap();
    (r.source, r.target, r.choices.unwrap())
}

#[test]
fn real_rows_render_to_the_expected_text() {
    let dir = dir();
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        render(&dir, T0Dataset::Copa, 0, "exercise"),
        (
            "Exercise: choose the most plausible alternative.\n\nThe man turned on the faucet.  so... \n\
             - The toilet filled with water.\n- Water flowed from the spout."
                .to_string(),
            "Water flowed from the spout.".to_string(),
            strs(&["The toilet filled with water.", "Water flowed from the spout."]),
        )
    );
    assert_eq!(
        render(&dir, T0Dataset::Copa, 0, "best_option").0,
        "The man turned on the faucet. \n\nWhat's the best option?\n- The toilet filled with water.\n\
         - Water flowed from the spout.\n\nWe are looking for  an effect"
    );
    let wsc = "Bernard , who had not told the government official that he was less than 21 when he filed for a \
               homestead claim, did not consider that he had done anything dishonest. Still, anyone who knew that \
               he was 19 years old could take his claim away from him .";
    // `span2_text.lower()`, and the flattened `target` of the SuperGLUE file.
    assert_eq!(
        render(&dir, T0Dataset::Wsc, 0, "does the pronoun refer to"),
        (
            format!("{wsc} In the previous sentence, does the pronoun \"him\" refer to anyone? Yes or no?"),
            "No".to_string(),
            strs(&["No", "Yes"]),
        )
    );
    // `text.split(" ")[span2_index:] | join(" ") | replace(...)`.
    assert_eq!(
        render(&dir, T0Dataset::Wsc, 0, "in other words").0,
        format!("{wsc} \n\nIn other words, anyone . True or false?")
    );
    assert_eq!(
        render(&dir, T0Dataset::Wsc, 3, "p is/are r").0,
        "Context: Always before, Larry had helped Dad with his work. But he could not help him now, for Dad said \
         that his boss at the railroad company would not want anyone but him to work in the office. \n\n\n\
         Question: \"his\" is Larry. True or false?\n\n\nAnswer:"
    );
    assert_eq!(
        render(&dir, T0Dataset::Cb, 0, "can we infer"),
        (
            "Suppose Valence the void-brain, Valence the virtuous valet. Why couldn't the figger choose his own \
             portion of titanic anatomy to shaft? Did he think he was helping? Can we infer that \"Valence was \
             helping\"? Yes, no, or maybe?"
                .to_string(),
            "No".to_string(),
            strs(&["Yes", "No", "Maybe"]),
        )
    );
    assert_eq!(
        render(&dir, T0Dataset::Rte, 0, "MNLI crowdsource").0,
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, according to the \
         Christopher Reeve Foundation. Using only the above description and what you know about the world, is \
         \"Christopher Reeve had an accident.\" definitely correct? Yes or no?"
    );
    assert_eq!(
        render(&dir, T0Dataset::Wic, 0, "same_sense"),
        (
            "Sentence 1: An emerging professional class.\nSentence 2: Apologizing for losing your temper, even though \
             you were badly provoked, showed real class.\n\nDetermine whether the word \"class\" is used in the same \
             sense in both sentences. Yes or no?"
                .to_string(),
            "No".to_string(),
            strs(&["No", "Yes"]),
        )
    );
    let (source, target, choices) = render(&dir, T0Dataset::AnliR1, 0, "GPT-3 style");
    assert!(source.starts_with("Linguistics is the scientific study of language"));
    assert!(source.ends_with(
        "Pāṇini, who wrote a formal description of the Sanskrit language in his \"Aṣṭādhyāyī \".\nQuestion: Form and \
         meaning are the only aspects of language linguistics is concerned with. True, False, or Neither?"
    ));
    assert_eq!(
        (target.as_str(), choices),
        ("False", strs(&["True", "Neither", "False"]))
    );
}

#[test]
fn every_shipped_dataset_loads_with_all_choices() {
    let dir = dir();
    let expected = [
        (T0Dataset::AnliR1, 300, 15),
        (T0Dataset::AnliR2, 300, 15),
        (T0Dataset::AnliR3, 300, 15),
        (T0Dataset::Cb, 56, 15),
        (T0Dataset::Copa, 100, 8),
        (T0Dataset::Rte, 277, 10),
        (T0Dataset::Wic, 300, 10),
        (T0Dataset::Wsc, 104, 10),
    ];
    assert_eq!(dir.available(), expected.iter().map(|e| e.0).collect::<Vec<_>>());
    for (dataset, rows, templates) in expected {
        let task = dir.load(dataset, T0_SEEDS[0]).unwrap();
        assert_eq!(task.kind, TaskKind::MultipleChoice);
        assert_eq!(
            (task.examples.len(), task.metadata.total_instances),
            (rows, rows),
            "{}",
            task.name
        );
        assert_eq!(task.metadata.templates.len(), templates, "{}", task.name);
        for example in &task.examples {
            let answer = example.answer.as_ref().unwrap();
            assert!(answer.choices.len() >= 2 && answer.gold < answer.choices.len());
            assert_eq!(example.targets, [answer.choices[answer.gold].clone()]);
            assert!(!example.source.is_empty());
        }
        // The template draw is a function of the seed.
        assert_eq!(dir.load(dataset, T0_SEEDS[0]).unwrap(), task);
        assert_ne!(dir.load(dataset, T0_SEEDS[1]).unwrap().examples, task.examples);
    }
    // Gold labels come from the upstream fields: CB's string labels, WSC's booleans, ANLI's letters.
    let (_, cb) = dir.eval_rows(T0Dataset::Cb).unwrap();
    assert_eq!(cb[0].gold, 1, "contradiction");
    assert_eq!(cb[1].gold, 2, "neutral");
    let (_, wsc) = dir.eval_rows(T0Dataset::Wsc).unwrap();
    assert_eq!(
        (wsc[0].gold, wsc[0].fields["span1_text"].as_str()),
        (0, Some("anyone"))
    );
    let (_, anli) = dir.eval_rows(T0Dataset::AnliR1).unwrap();
    assert_eq!(anli[0].gold, 2, "c = contradiction");
    assert!(anli[0].fields.get("premise").is_some());
}

#[test]
fn copa_uses_t_fews_first_eight_templates() {
    let dir = dir();
    let set = dir.templates(T0Dataset::Copa).unwrap();
    assert_eq!(set.original_task().len(), 12);
    let used = T0Dir::evaluation_templates(&set, T0Dataset::Copa).unwrap();
    assert_eq!(used.len(), 8);
    assert!(
        used.iter().all(|t| !t.name.starts_with('…')),
        "the conditional templates sort last"
    );
}

#[test]
fn few_shot_split_is_seeded_disjoint_and_keeps_evaluation_apart() {
    let dir = dir();
    for dataset in [T0Dataset::Rte, T0Dataset::Copa] {
        let split = dir.few_shot(dataset, 32, 16, 1024).unwrap();
        assert_eq!((split.train.len(), split.validation.len()), (32, 16));
        let (_, rows) = dir.eval_rows(dataset).unwrap();
        assert_eq!(split.test.len(), rows.len() - 48);
        let ids = |v: &[mhr_data::Example]| v.iter().map(|e| e.id.clone()).collect::<HashSet<_>>();
        let (train, validation, test) = (ids(&split.train), ids(&split.validation), ids(&split.test));
        assert!(train.is_disjoint(&validation) && train.is_disjoint(&test) && validation.is_disjoint(&test));
        assert_eq!(dir.few_shot(dataset, 32, 16, 1024).unwrap(), split);
        assert_ne!(ids(&dir.few_shot(dataset, 32, 16, 42).unwrap().train), train);
        // A row renders the same whichever split it lands in: the template draw depends on (seed, row).
        let whole = dir.load(dataset, 1024).unwrap();
        let first = &split.train[0];
        assert!(whole.examples.contains(first));
    }
    // CB has 56 rows: 32 + 32 drawn from them would leave nothing to evaluate.
    assert!(matches!(
        dir.few_shot(T0Dataset::Cb, 32, 32, 0),
        Err(DataError::InvalidArgument(_))
    ));
}

/// A T0 directory with the real templates and rows written here in the upstream formats.
fn handwritten(root: &Path) -> T0Dir {
    for dataset in [T0Dataset::HellaSwag, T0Dataset::Winogrande, T0Dataset::StoryCloze] {
        let to = root.join(dataset.templates_path());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(crate::common::t0_root().join(dataset.templates_path()), to).unwrap();
    }
    let hellaswag = serde_json::json!({"ind": 24, "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.", "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
        "split": "val", "split_type": "indomain", "label": 3,
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                    "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
        "source_id": "activitynet~v_-JhWjGDPHMY"});
    let mut second = hellaswag.clone();
    second["label"] = 0.into();
    std::fs::create_dir_all(root.join("hellaswag")).unwrap();
    std::fs::write(
        root.join("hellaswag/hellaswag_val.jsonl"),
        format!("{hellaswag}\n{second}\n"),
    )
    .unwrap();

    let winogrande = serde_json::json!({"qID": "3QHITW7OYO7Q6B6ISU2UMJB84ZLAQE-2",
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah", "option2": "Maria", "answer": "1"});
    let mut other = winogrande.clone();
    other["answer"] = "2".into();
    std::fs::create_dir_all(root.join("winogrande")).unwrap();
    std::fs::write(
        root.join("winogrande/dev.jsonl"),
        format!("{winogrande}\n\n{other}\n"),
    )
    .unwrap();

    std::fs::create_dir_all(root.join("story_cloze")).unwrap();
    std::fs::write(
        root.join("story_cloze/test.csv"),
        "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,\
         RandomFifthSentenceQuiz2,AnswerRightEnding\n\
         138d5bfb,Rick grew up in a troubled household.,\"He never found good support in family, and instead turned \
         to gangs.\",It wasn't long before Rick got shot in a robbery.,The incident caused him to turn a new leaf.,\
         He is happy now.,He joined a gang.,1\n\
         2aa1c9f0,Tom wanted a dog.,He saved money.,He went to the shelter.,He saw a puppy.,He adopted it.,\
         He bought a cat.,1\n",
    )
    .unwrap();
    T0Dir::open(root).unwrap()
}

fn render_named(dir: &T0Dir, dataset: T0Dataset, name: &str) -> (String, String, Vec<String>) {
    let set: TemplateSet = dir.templates(dataset).unwrap();
    let (_, rows) = dir.eval_rows(dataset).unwrap();
    let r = set.render(set.get(name).unwrap(), &rows[0].fields, 0).unwrap();
    (r.source, r.target, r.choices.unwrap())
}

#[test]
fn hellaswag_winogrande_and_story_cloze_from_upstream_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = handwritten(tmp.path());
    assert_eq!(
        dir.available(),
        [T0Dataset::HellaSwag, T0Dataset::StoryCloze, T0Dataset::Winogrande]
    );

    let endings = [
        "is using wrap to wrap a pair of skis.",
        "is ripping level tiles off.",
        "is holding a rubik's cube.",
        "starts pulling up roofing on a roof.",
    ];
    let (source, target, choices) = render_named(&dir, T0Dataset::HellaSwag, "complete_first_then");
    assert_eq!(
        source,
        "Complete the description with an appropriate ending:\nFirst, a man is sitting on a roof. Then, he ...\n\n\
         (a) is using wrap to wrap a pair of skis.\n\n(b) is ripping level tiles off.\n\n(c) is holding a rubik's \
         cube.\n\n(d) starts pulling up roofing on a roof."
    );
    assert_eq!(
        (target.as_str(), choices),
        (endings[3], endings.map(String::from).to_vec())
    );
    let (source, target, _) = render_named(&dir, T0Dataset::HellaSwag, "if_begins_how_continues");
    assert_eq!(
        source,
        "If a description of a situation begins like this: A man is sitting on a roof. he... Then how\ndoes it \
         continue? \n\nEnding 1: is using wrap to wrap a pair of skis.\n\nEnding 2: is ripping level tiles off.\n\n\
         Ending 3: is holding a rubik's cube.\n\nEnding 4: starts pulling up roofing on a roof."
    );
    assert_eq!(target, "Ending 4");
    // The `choice` filter picks one of the template's own prompts.
    let (source, _, _) = render_named(&dir, T0Dataset::HellaSwag, "Randomized prompts template");
    assert!(
        [
            "Can you pick",
            "The task is to generate",
            "How does this sentence end?",
            "From the list of endings"
        ]
        .iter()
        .any(|p| source.starts_with(p)),
        "{source}"
    );

    let sentence = "Sarah was a much better surgeon than Maria so _ always got the harder cases.";
    assert_eq!(
        render_named(&dir, T0Dataset::Winogrande, "fill in the blank"),
        (
            format!(
                "Fill in the _ in the below sentence:\n{sentence}\n\nChoices:\n- Sarah\n- Maria\n\nAnswer:"
            ),
            "Sarah".to_string(),
            vec!["Sarah".to_string(), "Maria".to_string()],
        )
    );
    assert_eq!(
        render_named(&dir, T0Dataset::Winogrande, "stand for").0,
        format!("In the sentence below, does the _ stand for Sarah or Maria?\n{sentence}")
    );

    assert_eq!(
        render_named(&dir, T0Dataset::StoryCloze, "Choose Story Ending"),
        (
            "Read the following story :\n\nRick grew up in a troubled household.\nHe never found good support in \
             family, and instead turned to gangs.\nIt wasn't long before Rick got shot in a robbery.\nThe incident \
             caused him to turn a new leaf.\n\nChoose a possible ending for the previous story from the following \
             options: \n- He is happy now.\n- He joined a gang."
                .to_string(),
            "He is happy now.".to_string(),
            vec!["He is happy now.".to_string(), "He joined a gang.".to_string()],
        )
    );

    for (dataset, golds, templates) in [
        (T0Dataset::HellaSwag, [3, 0], 4),
        (T0Dataset::Winogrande, [0, 1], 5),
        (T0Dataset::StoryCloze, [0, 0], 5),
    ] {
        let task = dir.load(dataset, 0).unwrap();
        let got: Vec<usize> = task
            .examples
            .iter()
            .map(|e| e.answer.as_ref().unwrap().gold)
            .collect();
        assert_eq!(got, golds, "{}", task.name);
        assert_eq!(task.metadata.templates.len(), templates);
        // Every original-task template renders these rows.
        let set = dir.templates(dataset).unwrap();
        let (_, rows) = dir.eval_rows(dataset).unwrap();
        for template in T0Dir::evaluation_templates(&set, dataset).unwrap() {
            for row in &rows {
                let r = set.render(template, &row.fields, 5).unwrap();
                assert_eq!(
                    r.target,
                    r.choices.unwrap()[row.gold],
                    "{}: {}",
                    task.name,
                    template.name
                );
            }
        }
    }
    assert_eq!(T0Dataset::HellaSwag.few_shot_k(), 20);
    assert_eq!(T0Dataset::Winogrande.few_shot_k(), 50);
    assert_eq!(T0Dataset::StoryCloze.few_shot_k(), 70);
    assert_eq!(T0Dataset::Copa.few_shot_k(), 32);
}

#[test]
fn every_original_template_of_the_shipped_datasets_renders_every_row() {
    let dir = dir();
    for dataset in dir.available() {
        let set = dir.templates(dataset).unwrap();
        assert!(set.issues().is_empty(), "{dataset:?}: {:?}", set.issues());
        let (_, rows) = dir.eval_rows(dataset).unwrap();
        for template in T0Dir::evaluation_templates(&set, dataset).unwrap() {
            for row in &rows {
                let r = set.render(template, &row.fields, 0).unwrap();
                assert_eq!(
                    r.target,
                    r.choices.unwrap()[row.gold],
                    "{dataset:?} {} row {}",
                    template.name,
                    row.index
                );
            }
        }
    }
}

#[test]
fn stats_for_t0_with_and_without_a_task_list() {
    let all: Vec<_> = t0_stats(&crate::common::t0_root(), None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 8);
    let copa = all.iter().find(|s| s.name == "copa").unwrap();
    assert_eq!((copa.instances, copa.kind), (100, TaskKind::MultipleChoice));
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("tasks.txt");
    std::fs::write(&list, "wsc\nrte\n").unwrap();
    let some: Vec<_> = t0_stats(&crate::common::t0_root(), Some(&list))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        some.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["wsc", "rte"]
    );
    std::fs::write(&list, "wsc\nhellaswag\n").unwrap();
    assert!(matches!(
        t0_stats(&crate::common::t0_root(), Some(&list)).map(|_| ()),
        Err(DataError::MissingTask { line: 2, task, .. }) if task == "hellaswag"
    ));
}
