//! T0 held-out multiple-choice datasets in their upstream formats, rendered with promptsource
//! templates, and the T-Few few-shot protocol.
//!
//! Directory layout (the shipped `data/t0eval` follows it; the first file found is used):
//!
//! | dataset | evaluation rows | few-shot training pool | templates |
//! |---|---|---|---|
//! | `anli_r{1,2,3}` | `anli/r{n}/test.jsonl`, else `dev.jsonl`, else `dev.first300.jsonl` | `anli/r{n}/train.jsonl` | `anli` |
//! | `cb`, `copa`, `rte`, `wsc` | `<name>/val.jsonl` | `<name>/train.jsonl` | `super_glue/{cb,copa,rte,wsc.fixed}` |
//! | `wic` | `wic/val.jsonl`, else `wic/val.first300.jsonl` | `wic/train.jsonl` | `super_glue/wic` |
//! | `hellaswag` | `hellaswag/hellaswag_val.jsonl` | `hellaswag/hellaswag_train.jsonl` | `hellaswag` |
//! | `story_cloze` | `story_cloze/test.csv` (the 2016 test CSV) | `story_cloze/val.csv` | `story_cloze/2016` |
//! | `winogrande` | `winogrande/dev.jsonl` | `winogrande/train_xl.jsonl` | `winogrande/winogrande_xl` |
//!
//! Templates live under `templates/<dataset>/[<subset>/]templates.yaml`. Rows are converted to the
//! fields of the HF datasets the templates were written for (ANLI `context` → `premise`, WSC's nested
//! `target` flattened, string labels → indices) and carry the gold choice index.
//!
//! Few-shot protocol (T-Few): k = 32 (Winogrande 50, StoryCloze 70, HellaSwag 20) training rows drawn
//! by seed (42, 1024, 0) from the training pool, a validation set for model selection drawn from the
//! same pool after them, and the evaluation rows kept apart from both. Where no training file exists
//! (the shipped data has evaluation rows only), the pool is the evaluation rows and the drawn rows
//! are removed from the evaluation set. Each example gets one "original task" template drawn at random
//! by `(seed, row)`, both for training and evaluation; COPA uses the first 8 of them in name order, as
//! T-Few does (the other 4 apply only to one question type).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Map, Value};

use crate::error::{DataError, Result};
use crate::fewshot::{FewShotSplit, draw_indices};
use crate::jsonl::read_jsonl;
use crate::task::{AnswerChoices, Example, Task, TaskKind, TaskMetadata};
use crate::template::{Template, TemplateSet};

/// The seeds of the T-Few few-shot protocol.
pub const T0_SEEDS: [u64; 3] = [42, 1024, 0];

/// The eleven T0 held-out datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum T0Dataset {
    /// ANLI round 1.
    AnliR1,
    /// ANLI round 2.
    AnliR2,
    /// ANLI round 3.
    AnliR3,
    /// SuperGLUE CommitmentBank.
    Cb,
    /// SuperGLUE COPA.
    Copa,
    /// HellaSwag.
    HellaSwag,
    /// SuperGLUE RTE.
    Rte,
    /// StoryCloze 2016.
    StoryCloze,
    /// SuperGLUE WiC.
    Wic,
    /// Winogrande XL.
    Winogrande,
    /// SuperGLUE WSC (`wsc.fixed` templates).
    Wsc,
}

/// A dataset row converted to the fields its templates expect, with the gold choice.
#[derive(Debug, Clone, PartialEq)]
pub struct T0Row {
    /// 0-based position in its file.
    pub index: usize,
    /// The fields, as a JSON object.
    pub fields: Value,
    /// Index of the correct answer choice.
    pub gold: usize,
}

impl T0Dataset {
    /// All eleven, in name order.
    pub const ALL: [Self; 11] = [
        Self::AnliR1,
        Self::AnliR2,
        Self::AnliR3,
        Self::Cb,
        Self::Copa,
        Self::HellaSwag,
        Self::Rte,
        Self::StoryCloze,
        Self::Wic,
        Self::Winogrande,
        Self::Wsc,
    ];

    /// The task name used for ids and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::AnliR1 => "anli_r1",
            Self::AnliR2 => "anli_r2",
            Self::AnliR3 => "anli_r3",
            Self::Cb => "cb",
            Self::Copa => "copa",
            Self::HellaSwag => "hellaswag",
            Self::Rte => "rte",
            Self::StoryCloze => "story_cloze",
            Self::Wic => "wic",
            Self::Winogrande => "winogrande",
            Self::Wsc => "wsc",
        }
    }

    /// The dataset called `name` (as returned by [`T0Dataset::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// T-Few's number of training examples.
    pub fn few_shot_k(self) -> usize {
        match self {
            Self::Winogrande => 50,
            Self::StoryCloze => 70,
            Self::HellaSwag => 20,
            _ => 32,
        }
    }

    /// `templates.yaml`, relative to the data root.
    pub fn templates_path(self) -> &'static str {
        match self {
            Self::AnliR1 | Self::AnliR2 | Self::AnliR3 => "templates/anli/templates.yaml",
            Self::Cb => "templates/super_glue/cb/templates.yaml",
            Self::Copa => "templates/super_glue/copa/templates.yaml",
            Self::HellaSwag => "templates/hellaswag/templates.yaml",
            Self::Rte => "templates/super_glue/rte/templates.yaml",
            Self::StoryCloze => "templates/story_cloze/2016/templates.yaml",
            Self::Wic => "templates/super_glue/wic/templates.yaml",
            Self::Winogrande => "templates/winogrande/winogrande_xl/templates.yaml",
            Self::Wsc => "templates/super_glue/wsc.fixed/templates.yaml",
        }
    }

    /// Candidate evaluation files, relative to the root, in order of preference.
    fn eval_files(self) -> &'static [&'static str] {
        match self {
            Self::AnliR1 => &[
                "anli/r1/test.jsonl",
                "anli/r1/dev.jsonl",
                "anli/r1/dev.first300.jsonl",
            ],
            Self::AnliR2 => &[
                "anli/r2/test.jsonl",
                "anli/r2/dev.jsonl",
                "anli/r2/dev.first300.jsonl",
            ],
            Self::AnliR3 => &[
                "anli/r3/test.jsonl",
                "anli/r3/dev.jsonl",
                "anli/r3/dev.first300.jsonl",
            ],
            Self::Cb => &["cb/val.jsonl"],
            Self::Copa => &["copa/val.jsonl"],
            Self::HellaSwag => &["hellaswag/hellaswag_val.jsonl"],
            Self::Rte => &["rte/val.jsonl"],
            Self::StoryCloze => &["story_cloze/test.csv"],
            Self::Wic => &["wic/val.jsonl", "wic/val.first300.jsonl"],
            Self::Winogrande => &["winogrande/dev.jsonl"],
            Self::Wsc => &["wsc/val.jsonl"],
        }
    }

    /// Candidate few-shot training files, relative to the root.
    fn train_files(self) -> &'static [&'static str] {
        match self {
            Self::AnliR1 => &["anli/r1/train.jsonl"],
            Self::AnliR2 => &["anli/r2/train.jsonl"],
            Self::AnliR3 => &["anli/r3/train.jsonl"],
            Self::Cb => &["cb/train.jsonl"],
            Self::Copa => &["copa/train.jsonl"],
            Self::HellaSwag => &["hellaswag/hellaswag_train.jsonl"],
            Self::Rte => &["rte/train.jsonl"],
            Self::StoryCloze => &["story_cloze/val.csv"],
            Self::Wic => &["wic/train.jsonl"],
            Self::Winogrande => &["winogrande/train_xl.jsonl"],
            Self::Wsc => &["wsc/train.jsonl"],
        }
    }

    /// The fields every row must have after conversion (the templates read them).
    fn required_fields(self) -> &'static [&'static str] {
        match self {
            Self::AnliR1 | Self::AnliR2 | Self::AnliR3 | Self::Cb | Self::Rte => &["premise", "hypothesis"],
            Self::Copa => &["premise", "choice1", "choice2", "question"],
            Self::HellaSwag => &["ctx", "ctx_a", "ctx_b", "activity_label", "endings"],
            Self::StoryCloze => &[
                "input_sentence_1",
                "input_sentence_2",
                "input_sentence_3",
                "input_sentence_4",
                "sentence_quiz1",
                "sentence_quiz2",
            ],
            Self::Wic => &["word", "sentence1", "sentence2"],
            Self::Winogrande => &["sentence", "option1", "option2"],
            Self::Wsc => &["text", "span1_text", "span2_text", "span1_index", "span2_index"],
        }
    }

    /// How many original-task templates T-Few uses (in name order), if not all.
    fn template_limit(self) -> Option<usize> {
        (self == Self::Copa).then_some(8)
    }

    /// Converts an upstream row (`fields`, from line `line` of `path`) to template fields + gold index.
    fn convert(
        self,
        mut fields: Map<String, Value>,
        index: usize,
        path: &Path,
        line: usize,
    ) -> Result<T0Row> {
        let bad =
            |field: &str, message: String| DataError::invalid(path, format!("line {line}: {field}"), message);
        let missing = |field: &str| DataError::MissingField {
            path: path.to_path_buf(),
            field: format!("{field} (line {line})"),
        };
        let take =
            |fields: &mut Map<String, Value>, key: &str| fields.remove(key).ok_or_else(|| missing(key));
        let label = |value: &Value, names: &[&str]| -> Result<usize> {
            let n = names.len();
            let index = match value {
                Value::Number(x) => x.as_u64().and_then(|x| usize::try_from(x).ok()),
                Value::Bool(b) if n == 2 => Some(usize::from(*b)),
                Value::String(s) => names.iter().position(|name| name == s),
                _ => None,
            };
            index
                .filter(|&i| i < n)
                .ok_or_else(|| bad("label", format!("{value} is not one of {names:?}")))
        };
        let gold = match self {
            Self::AnliR1 | Self::AnliR2 | Self::AnliR3 => {
                if !fields.contains_key("premise") {
                    let context = take(&mut fields, "context")?;
                    fields.insert("premise".into(), context);
                }
                label(&take(&mut fields, "label")?, &["e", "n", "c"])?
            }
            Self::Cb => label(
                &take(&mut fields, "label")?,
                &["entailment", "contradiction", "neutral"],
            )?,
            Self::Rte => label(&take(&mut fields, "label")?, &["entailment", "not_entailment"])?,
            Self::Copa => label(&take(&mut fields, "label")?, &["0", "1"])?,
            Self::Wic => label(&take(&mut fields, "label")?, &["false", "true"])?,
            Self::Wsc => {
                if let Some(Value::Object(target)) = fields.remove("target") {
                    fields.extend(target);
                }
                label(&take(&mut fields, "label")?, &["false", "true"])?
            }
            Self::HellaSwag => {
                let gold = label(&take(&mut fields, "label")?, &["0", "1", "2", "3"])?;
                // HF's hellaswag has a string label; templates compare it with `instance | string`.
                fields.insert("label".into(), Value::String(gold.to_string()));
                gold
            }
            // 1-based answers, a string in Winogrande's files and an integer in StoryCloze's HF form.
            Self::Winogrande => {
                let gold = label(&one_based(take(&mut fields, "answer")?), &["1", "2"])?;
                fields.insert("answer".into(), Value::String((gold + 1).to_string()));
                gold
            }
            Self::StoryCloze => {
                let gold = label(&one_based(take(&mut fields, "answer_right_ending")?), &["1", "2"])?;
                fields.insert("answer_right_ending".into(), Value::from(gold + 1));
                gold
            }
        };
        if !matches!(self, Self::HellaSwag | Self::Winogrande | Self::StoryCloze) {
            fields.insert("label".into(), Value::from(gold));
        }
        if let Some(field) = self.required_fields().iter().find(|f| !fields.contains_key(**f)) {
            return Err(missing(field));
        }
        Ok(T0Row {
            index,
            fields: Value::Object(fields),
            gold,
        })
    }

    /// Reads and converts every row of `path` (JSON Lines, or the StoryCloze CSV).
    pub fn read_rows(self, path: &Path) -> Result<Vec<T0Row>> {
        let raw = if self == Self::StoryCloze {
            read_story_cloze_csv(path)?
        } else {
            read_jsonl(path)?
        };
        if raw.is_empty() {
            return Err(DataError::EmptyTask {
                path: path.to_path_buf(),
            });
        }
        raw.into_iter()
            .enumerate()
            .map(|(index, (line, fields))| self.convert(fields, index, path, line))
            .collect()
    }
}

/// A 1-based numeric answer as text, so that it is looked up by name rather than used as an index.
fn one_based(value: Value) -> Value {
    match value {
        Value::Number(n) => Value::String(n.to_string()),
        other => other,
    }
}

/// Reads a StoryCloze 2016 CSV (`InputStoryid, InputSentence1..4, RandomFifthSentenceQuiz1/2,
/// AnswerRightEnding`) into HF `story_cloze` fields.
fn read_story_cloze_csv(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    const COLUMNS: [(&str, &str); 8] = [
        ("InputStoryid", "story_id"),
        ("InputSentence1", "input_sentence_1"),
        ("InputSentence2", "input_sentence_2"),
        ("InputSentence3", "input_sentence_3"),
        ("InputSentence4", "input_sentence_4"),
        ("RandomFifthSentenceQuiz1", "sentence_quiz1"),
        ("RandomFifthSentenceQuiz2", "sentence_quiz2"),
        ("AnswerRightEnding", "answer_right_ending"),
    ];
    let csv_err = |e: csv::Error| DataError::Csv {
        path: path.to_path_buf(),
        line: e.position().map_or(0, csv::Position::line),
        message: e.to_string(),
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_err)?;
    let headers = reader.headers().map_err(csv_err)?.clone();
    let mut positions = Vec::with_capacity(COLUMNS.len());
    for (column, field) in COLUMNS {
        let position =
            headers
                .iter()
                .position(|h| h.trim() == column)
                .ok_or_else(|| DataError::MissingField {
                    path: path.to_path_buf(),
                    field: column.to_string(),
                })?;
        positions.push((position, field));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
        let fields = positions
            .iter()
            .map(|&(position, field)| {
                (
                    field.to_string(),
                    Value::from(record.get(position).unwrap_or_default()),
                )
            })
            .collect();
        rows.push((line, fields));
    }
    Ok(rows)
}

/// Derives the per-example seed from the run seed and the row (SplitMix64 finaliser), so that a row is
/// rendered the same way in every split and by every method.
fn example_seed(seed: u64, row: usize) -> u64 {
    let mut z = seed ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Renders `rows` into multiple-choice examples, each with one of `templates` drawn by `(seed, row)`.
/// Every choice is kept (rank classification scores them all); the target is the gold choice.
pub fn render_rows(
    name: &str,
    set: &TemplateSet,
    templates: &[&Template],
    rows: &[T0Row],
    seed: u64,
) -> Result<Vec<Example>> {
    rows.iter()
        .map(|row| {
            let row_seed = example_seed(seed, row.index);
            let mut rng = StdRng::seed_from_u64(row_seed);
            let template = *templates
                .choose(&mut rng)
                .ok_or_else(|| DataError::InvalidArgument(format!("{name}: no template to render with")))?;
            let rendered = set.render(template, &row.fields, rng.random())?;
            let template_err = |message: String| DataError::Template {
                path: set.path().to_path_buf(),
                template: template.name.clone(),
                message: format!("row {}: {message}", row.index),
            };
            let choices = rendered
                .choices
                .ok_or_else(|| template_err("has no answer choices".into()))?;
            let target = choices.get(row.gold).cloned().ok_or_else(|| {
                template_err(format!("gold index {} but {} choices", row.gold, choices.len()))
            })?;
            Ok(Example {
                id: format!("{name}-{}", row.index),
                source: rendered.source,
                targets: vec![target],
                answer: Some(AnswerChoices {
                    choices,
                    gold: row.gold,
                }),
            })
        })
        .collect()
}

/// A T0-style data directory (see the module docs for its layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct T0Dir {
    root: PathBuf,
}

impl T0Dir {
    /// Opens a directory; fails if it does not exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(DataError::io(&root, std::io::ErrorKind::NotFound.into()));
        }
        Ok(Self { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn find(&self, candidates: &[&str]) -> Option<PathBuf> {
        candidates.iter().map(|c| self.root.join(c)).find(|p| p.is_file())
    }

    /// The evaluation file of `dataset`, if present.
    pub fn eval_path(&self, dataset: T0Dataset) -> Option<PathBuf> {
        self.find(dataset.eval_files())
    }

    /// The few-shot training file of `dataset`, if present.
    pub fn train_path(&self, dataset: T0Dataset) -> Option<PathBuf> {
        self.find(dataset.train_files())
    }

    /// Where the evaluation file of `dataset` is expected (the first candidate), for error reports.
    pub fn expected_eval_path(&self, dataset: T0Dataset) -> PathBuf {
        self.root
            .join(dataset.eval_files().first().copied().unwrap_or_default())
    }

    /// The datasets whose evaluation file is present, in name order.
    pub fn available(&self) -> Vec<T0Dataset> {
        T0Dataset::ALL
            .into_iter()
            .filter(|&d| self.eval_path(d).is_some())
            .collect()
    }

    /// Loads the templates of `dataset`.
    pub fn templates(&self, dataset: T0Dataset) -> Result<TemplateSet> {
        TemplateSet::load(&self.root.join(dataset.templates_path()))
    }

    /// The evaluation rows of `dataset`.
    pub fn eval_rows(&self, dataset: T0Dataset) -> Result<(PathBuf, Vec<T0Row>)> {
        let path = self.eval_path(dataset).ok_or_else(|| {
            let expected = self.expected_eval_path(dataset);
            DataError::io(&expected, std::io::ErrorKind::NotFound.into())
        })?;
        let rows = dataset.read_rows(&path)?;
        Ok((path, rows))
    }

    /// The T-Few evaluation templates of `dataset`: every original-task template (COPA: the first 8).
    /// A template the engine cannot compile is an error here, never skipped.
    pub fn evaluation_templates(set: &TemplateSet, dataset: T0Dataset) -> Result<Vec<&Template>> {
        let mut templates = set.original_task();
        if let Some(limit) = dataset.template_limit() {
            templates.truncate(limit);
        }
        if let Some(issue) = set
            .issues()
            .iter()
            .find(|i| templates.iter().any(|t| t.name == i.template))
        {
            return Err(DataError::Template {
                path: set.path().to_path_buf(),
                template: issue.template.clone(),
                message: issue.message.clone(),
            });
        }
        Ok(templates)
    }

    /// The whole evaluation set of `dataset` as one multiple-choice task, templates drawn with `seed`.
    pub fn load(&self, dataset: T0Dataset, seed: u64) -> Result<Task> {
        let set = self.templates(dataset)?;
        let templates = Self::evaluation_templates(&set, dataset)?;
        let (path, rows) = self.eval_rows(dataset)?;
        Ok(Task {
            name: dataset.name().to_string(),
            kind: TaskKind::MultipleChoice,
            examples: render_rows(dataset.name(), &set, &templates, &rows, seed)?,
            metadata: TaskMetadata {
                origin: path,
                categories: Vec::new(),
                definition: None,
                total_instances: rows.len(),
                templates: templates.iter().map(|t| t.name.clone()).collect(),
            },
        })
    }

    /// The T-Few few-shot split of `dataset` for `seed`: `k` training and `validation` model-selection
    /// examples drawn from the training pool, and the evaluation set kept apart from both.
    pub fn few_shot(
        &self,
        dataset: T0Dataset,
        k: usize,
        validation: usize,
        seed: u64,
    ) -> Result<FewShotSplit> {
        let set = self.templates(dataset)?;
        let templates = Self::evaluation_templates(&set, dataset)?;
        let (_, eval_rows) = self.eval_rows(dataset)?;
        let (train, validation, test) = match self.train_path(dataset) {
            Some(train_path) => {
                let pool = dataset.read_rows(&train_path)?;
                let (train, validation, _) = draw_indices(pool.len(), k, validation, seed);
                (pick(&pool, &train), pick(&pool, &validation), eval_rows)
            }
            None => {
                let (train, validation, mut rest) = draw_indices(eval_rows.len(), k, validation, seed);
                rest.sort_unstable();
                (
                    pick(&eval_rows, &train),
                    pick(&eval_rows, &validation),
                    pick(&eval_rows, &rest),
                )
            }
        };
        if test.is_empty() {
            return Err(DataError::InvalidArgument(format!(
                "{}: no evaluation rows left after drawing {k} training and the validation rows",
                dataset.name()
            )));
        }
        let render = |rows: &[T0Row]| render_rows(dataset.name(), &set, &templates, rows, seed);
        Ok(FewShotSplit {
            task: dataset.name().to_string(),
            seed,
            train: render(&train)?,
            validation: render(&validation)?,
            test: render(&test)?,
        })
    }
}

fn pick(rows: &[T0Row], indices: &[usize]) -> Vec<T0Row> {
    indices.iter().filter_map(|&i| rows.get(i).cloned()).collect()
}
