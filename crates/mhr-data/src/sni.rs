//! Super-NaturalInstructions: task files, split lists, the English filter and the two prompt formats.
//!
//! A checkout (or the shipped subset) is a directory with `tasks/<name>.json` and
//! `splits/default/{train,test}_tasks.txt`. Task files are parsed as a stream from a buffered reader,
//! one file at a time: instances past the cap are parsed and dropped without being kept, so the memory
//! held for one task is bounded by its definition, its demonstrations and `max_instances` instances,
//! whatever the file's size (see the crate docs for the measured bound).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{DataError, Result};
use crate::jsonl::read_jsonl;
use crate::task::{Example, Task, TaskKind, TaskList, TaskMetadata};

/// The suffix that mttl's truncation keeps at the end of an over-long source.
pub const MTTL_SOURCE_SUFFIX: &str = "\nOutput:";

/// How an SNI instance becomes model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SniPromptFormat {
    /// The MHR authors' (mttl's) format, the paper's default: `Task definition: <def>.` newline
    /// `Now complete the following example -` newline `Input: <input>.` newline `Output:`, no
    /// demonstrations; an over-long source is truncated so that it still ends with `\nOutput:`
    /// ([`MTTL_SOURCE_SUFFIX`], applied by the encoder).
    #[default]
    Mttl,
    /// Tk-Instruct's format: `Definition: <def>.` and a blank line, then `positive_examples`
    /// demonstrations (` Positive Example i -` / `Input:` / ` Output:`), then the instance, ending in
    /// `Output: ` (with a trailing space). All requested demonstrations are included; an over-long source
    /// is cut at the end by the encoder.
    TkInstruct {
        /// How many positive examples to show (Tk-Instruct's default is 2).
        positive_examples: usize,
    },
}

impl SniPromptFormat {
    /// Renders the source text of `input` for `task`.
    pub fn render(&self, task: &SniTask, input: &str) -> String {
        match self {
            Self::Mttl => {
                let mut s = String::from("Task definition: ");
                s.push_str(task.definition.trim());
                end_with_punctuation(&mut s);
                s.push_str("\nNow complete the following example -\nInput: ");
                s.push_str(input.trim());
                end_with_punctuation(&mut s);
                s.push_str("\nOutput:");
                s
            }
            Self::TkInstruct { positive_examples } => {
                let mut s = String::from("Definition: ");
                s.push_str(task.definition.trim());
                end_with_punctuation(&mut s);
                s.push_str("\n\n");
                for (i, demo) in task.positive_examples.iter().take(*positive_examples).enumerate() {
                    s.push_str(&format!(" Positive Example {} -\nInput: ", i + 1));
                    s.push_str(demo.input.trim());
                    end_with_punctuation(&mut s);
                    s.push_str("\n Output: ");
                    s.push_str(demo.output.trim());
                    end_with_punctuation(&mut s);
                    s.push_str("\n\n");
                }
                s.push_str("Now complete the following example -\nInput: ");
                s.push_str(input.trim());
                end_with_punctuation(&mut s);
                s.push_str("\nOutput: ");
                s
            }
        }
    }

    /// The text an over-long source must keep at its end, if the format has one.
    pub fn source_suffix(&self) -> Option<&'static str> {
        match self {
            Self::Mttl => Some(MTTL_SOURCE_SUFFIX),
            Self::TkInstruct { .. } => None,
        }
    }
}

/// Appends "." unless the text ends in ASCII punctuation (Python's `string.punctuation`), as both
/// reference collators do.
fn end_with_punctuation(s: &mut String) {
    if !s.chars().next_back().is_some_and(|c| c.is_ascii_punctuation()) {
        s.push('.');
    }
}

/// A positive or negative demonstration of an SNI task.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SniDemonstration {
    /// Demonstration input.
    pub input: String,
    /// Demonstration output.
    pub output: String,
    /// Why the output is (in)correct.
    #[serde(default)]
    pub explanation: String,
}

/// One SNI instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SniInstance {
    /// Instance id, e.g. `task1344-<32 hex>`.
    pub id: String,
    /// Instance input.
    pub input: String,
    /// Every acceptable output (kept for Rouge-L; the first is the training target).
    pub output: Vec<String>,
}

/// An SNI task file as read, before prompt formatting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniTask {
    /// Task name (the file stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// `Definition[0]`.
    pub definition: String,
    /// `Positive Examples`.
    pub positive_examples: Vec<SniDemonstration>,
    /// `Negative Examples`.
    pub negative_examples: Vec<SniDemonstration>,
    /// `Categories`.
    pub categories: Vec<String>,
    /// `Input_language`.
    pub input_language: Vec<String>,
    /// `Output_language`.
    pub output_language: Vec<String>,
    /// `Instruction_language`.
    pub instruction_language: Vec<String>,
    /// The first `max_instances` instances, in file order.
    pub instances: Vec<SniInstance>,
    /// How many instances the file holds.
    pub total_instances: usize,
}

impl SniTask {
    /// Reads a task file, keeping at most `max_instances` instances (all if `None`).
    pub fn read(path: &Path, max_instances: Option<usize>) -> Result<Self> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(1 << 16, file));
        let raw = de
            .deserialize_map(TaskVisitor {
                cap: max_instances.unwrap_or(usize::MAX),
            })
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(|e| DataError::json(path, &e, 0))?;
        let missing = |field: &str| DataError::MissingField {
            path: path.to_path_buf(),
            field: field.into(),
        };
        let definition = raw
            .definition
            .ok_or_else(|| missing("Definition"))?
            .into_iter()
            .next()
            .ok_or_else(|| DataError::invalid(path, "Definition", "empty list"))?;
        let (instances, total_instances) = raw.instances.ok_or_else(|| missing("Instances"))?;
        if total_instances == 0 {
            return Err(DataError::EmptyTask {
                path: path.to_path_buf(),
            });
        }
        if let Some(i) = instances.iter().position(|inst| inst.output.is_empty()) {
            return Err(DataError::invalid(
                path,
                format!("Instances[{i}].output"),
                "empty list",
            ));
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            path: path.to_path_buf(),
            definition,
            positive_examples: raw
                .positive_examples
                .ok_or_else(|| missing("Positive Examples"))?,
            negative_examples: raw
                .negative_examples
                .ok_or_else(|| missing("Negative Examples"))?,
            categories: raw.categories.unwrap_or_default(),
            input_language: raw.input_language.ok_or_else(|| missing("Input_language"))?,
            output_language: raw.output_language.ok_or_else(|| missing("Output_language"))?,
            instruction_language: raw
                .instruction_language
                .ok_or_else(|| missing("Instruction_language"))?,
            instances,
            total_instances,
        })
    }

    /// Whether input, output and instruction are all English only (SNI's default track).
    pub fn is_english(&self) -> bool {
        [
            &self.input_language,
            &self.output_language,
            &self.instruction_language,
        ]
        .iter()
        .all(|langs| langs.len() == 1 && langs.iter().all(|l| l == "English"))
    }

    /// Renders every kept instance with `format` into a generation task; all outputs stay references.
    pub fn to_task(&self, format: &SniPromptFormat) -> Task {
        let examples = self
            .instances
            .iter()
            .map(|inst| Example {
                id: inst.id.clone(),
                source: format.render(self, &inst.input),
                targets: inst.output.clone(),
                answer: None,
            })
            .collect();
        Task {
            name: self.name.clone(),
            kind: TaskKind::Generation,
            examples,
            metadata: TaskMetadata {
                origin: self.path.clone(),
                categories: self.categories.clone(),
                definition: Some(self.definition.clone()),
                total_instances: self.total_instances,
                templates: Vec::new(),
            },
        }
    }
}

/// The fields of a task file, gathered in one streaming pass.
#[derive(Default)]
struct RawTask {
    definition: Option<Vec<String>>,
    positive_examples: Option<Vec<SniDemonstration>>,
    negative_examples: Option<Vec<SniDemonstration>>,
    categories: Option<Vec<String>>,
    input_language: Option<Vec<String>>,
    output_language: Option<Vec<String>>,
    instruction_language: Option<Vec<String>>,
    instances: Option<(Vec<SniInstance>, usize)>,
}

struct TaskVisitor {
    cap: usize,
}

impl<'de> Visitor<'de> for TaskVisitor {
    type Value = RawTask;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an SNI task object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawTask, A::Error> {
        let mut raw = RawTask::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Definition" => raw.definition = Some(map.next_value()?),
                "Positive Examples" => raw.positive_examples = Some(map.next_value()?),
                "Negative Examples" => raw.negative_examples = Some(map.next_value()?),
                "Categories" => raw.categories = Some(map.next_value()?),
                "Input_language" => raw.input_language = Some(map.next_value()?),
                "Output_language" => raw.output_language = Some(map.next_value()?),
                "Instruction_language" => raw.instruction_language = Some(map.next_value()?),
                "Instances" => raw.instances = Some(map.next_value_seed(CappedInstances { cap: self.cap })?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// Keeps the first `cap` instances and only counts (and syntax-checks) the rest.
struct CappedInstances {
    cap: usize,
}

impl<'de> DeserializeSeed<'de> for CappedInstances {
    type Value = (Vec<SniInstance>, usize);

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> std::result::Result<Self::Value, D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedInstances {
    type Value = (Vec<SniInstance>, usize);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of instances")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut kept = Vec::new();
        let mut total = 0;
        while kept.len() < self.cap {
            match seq.next_element::<SniInstance>()? {
                Some(inst) => kept.push(inst),
                None => return Ok((kept, total)),
            }
            total += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok((kept, total))
    }
}

/// Options for loading SNI tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniOptions {
    /// Keep at most this many instances per task, in file order (`None`: all).
    pub max_instances: Option<usize>,
    /// Skip tasks whose input, output or instruction language is not English only.
    pub english_only: bool,
    /// How instances become sources.
    pub format: SniPromptFormat,
}

impl Default for SniOptions {
    /// No cap, English only, the paper's (mttl's) prompt format.
    fn default() -> Self {
        Self {
            max_instances: None,
            english_only: true,
            format: SniPromptFormat::Mttl,
        }
    }
}

/// An SNI directory: `tasks/*.json` and `splits/default/*_tasks.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniDir {
    root: PathBuf,
}

impl SniDir {
    /// Opens a directory; fails if it has no `tasks/` folder.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let dir = Self { root: root.into() };
        let tasks = dir.tasks_dir();
        if !tasks.is_dir() {
            return Err(DataError::io(&tasks, std::io::ErrorKind::NotFound.into()));
        }
        Ok(dir)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `tasks/`.
    pub fn tasks_dir(&self) -> PathBuf {
        self.root.join("tasks")
    }

    /// The file of task `name`.
    pub fn task_path(&self, name: &str) -> PathBuf {
        self.tasks_dir().join(format!("{name}.json"))
    }

    /// `splits/default/<split>_tasks.txt` (`split` is `train`, `test` or `excluded`).
    pub fn split_path(&self, split: &str) -> PathBuf {
        self.root
            .join("splits")
            .join("default")
            .join(format!("{split}_tasks.txt"))
    }

    /// Reads the default split list `split`.
    pub fn split(&self, split: &str) -> Result<TaskList> {
        TaskList::read(&self.split_path(split))
    }

    /// The names of every `tasks/*.json`, sorted.
    pub fn task_names(&self) -> Result<Vec<String>> {
        let dir = self.tasks_dir();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
            let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
            if path.extension().is_some_and(|ext| ext == "json")
                && let Some(stem) = path.file_stem()
            {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads the tasks of `list` lazily, one file per `next()`. Every listed task must have a file;
    /// this is checked before anything is read, and a missing one is reported with its list line.
    pub fn load(&self, list: &TaskList, options: SniOptions) -> Result<SniTasks> {
        let mut paths = Vec::with_capacity(list.entries.len());
        for (line, name) in &list.entries {
            let path = self.task_path(name);
            if !path.is_file() {
                return Err(DataError::MissingTask {
                    list: list.path.clone(),
                    line: *line,
                    task: name.clone(),
                    expected: path,
                });
            }
            paths.push(path);
        }
        Ok(SniTasks {
            paths: paths.into_iter(),
            options,
            skipped: Vec::new(),
        })
    }

    /// Loads every task in `tasks/`, in name order, lazily.
    pub fn load_all(&self, options: SniOptions) -> Result<SniTasks> {
        let paths: Vec<PathBuf> = self
            .task_names()?
            .iter()
            .map(|name| self.task_path(name))
            .collect();
        Ok(SniTasks {
            paths: paths.into_iter(),
            options,
            skipped: Vec::new(),
        })
    }
}

/// A lazy sequence of SNI tasks, rendered with the options' prompt format: each `next()` reads one task
/// file, so only one is in memory at a time.
#[derive(Debug)]
pub struct SniTasks {
    paths: std::vec::IntoIter<PathBuf>,
    options: SniOptions,
    skipped: Vec<String>,
}

impl SniTasks {
    /// Tasks passed over so far by the English-only filter.
    pub fn skipped_non_english(&self) -> &[String] {
        &self.skipped
    }
}

impl Iterator for SniTasks {
    type Item = Result<Task>;

    fn next(&mut self) -> Option<Self::Item> {
        for path in self.paths.by_ref() {
            match SniTask::read(&path, self.options.max_instances) {
                Ok(task) if self.options.english_only && !task.is_english() => self.skipped.push(task.name),
                other => return Some(other.map(|task| task.to_task(&self.options.format))),
            }
        }
        None
    }
}

/// One line of SNI's official evaluation reference file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SniReference {
    /// Instance id.
    pub id: String,
    /// Task name.
    pub task_id: String,
    /// Every acceptable output (Rouge-L takes the best).
    pub references: Vec<String>,
}

/// SNI's evaluation references (`eval_references.jsonl`, one JSON object per line), grouped by task in
/// file order. They name the official test instances, which need not be a file's first 100.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SniReferences {
    by_task: BTreeMap<String, Vec<SniReference>>,
}

impl SniReferences {
    /// Reads a reference file.
    pub fn read(path: &Path) -> Result<Self> {
        let mut by_task: BTreeMap<String, Vec<SniReference>> = BTreeMap::new();
        for (_, reference) in read_jsonl::<SniReference>(path)? {
            by_task
                .entry(reference.task_id.clone())
                .or_default()
                .push(reference);
        }
        Ok(Self { by_task })
    }

    /// The task names, sorted.
    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.by_task.keys().map(String::as_str)
    }

    /// The references of `task` (empty if none).
    pub fn task(&self, task: &str) -> &[SniReference] {
        self.by_task.get(task).map_or(&[], Vec::as_slice)
    }

    /// The test instance ids of `task`, for [`crate::SniTestSet::Ids`].
    pub fn ids(&self, task: &str) -> HashSet<String> {
        self.task(task).iter().map(|r| r.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(definition: &str, positives: &[(&str, &str)]) -> SniTask {
        SniTask {
            name: "task0_demo".into(),
            path: PathBuf::from("task0_demo.json"),
            definition: definition.into(),
            positive_examples: positives
                .iter()
                .map(|(i, o)| SniDemonstration {
                    input: (*i).into(),
                    output: (*o).into(),
                    explanation: String::new(),
                })
                .collect(),
            negative_examples: Vec::new(),
            categories: Vec::new(),
            input_language: vec!["English".into()],
            output_language: vec!["English".into()],
            instruction_language: vec!["English".into()],
            instances: Vec::new(),
            total_instances: 0,
        }
    }

    #[test]
    fn mttl_format_adds_full_stops_only_where_missing() {
        let t = task("  Answer the question ", &[]);
        assert_eq!(
            SniPromptFormat::Mttl.render(&t, " What is 2+2? "),
            "Task definition: Answer the question.\nNow complete the following example -\nInput: What is 2+2?\nOutput:"
        );
        assert_eq!(
            SniPromptFormat::Mttl.render(&t, "no punctuation"),
            "Task definition: Answer the question.\nNow complete the following example -\nInput: no punctuation.\nOutput:"
        );
        // An empty input still gets the full stop, as `task_input[-1]` is then the space after "Input:".
        assert!(
            SniPromptFormat::Mttl
                .render(&t, "")
                .ends_with("Input: .\nOutput:")
        );
    }

    #[test]
    fn tk_instruct_format_matches_the_reference_collator() {
        let t = task(
            "Say it louder!",
            &[("hi", "HI"), ("ok.", "OK"), ("unused", "UNUSED")],
        );
        let expected = "Definition: Say it louder!\n\n Positive Example 1 -\nInput: hi.\n Output: HI.\n\n \
                        Positive Example 2 -\nInput: ok.\n Output: OK.\n\nNow complete the following example -\n\
                        Input: yes.\nOutput: ";
        assert_eq!(
            SniPromptFormat::TkInstruct { positive_examples: 2 }.render(&t, "yes"),
            expected
        );
        assert_eq!(
            SniPromptFormat::TkInstruct { positive_examples: 0 }.source_suffix(),
            None
        );
        assert_eq!(SniPromptFormat::Mttl.source_suffix(), Some("\nOutput:"));
    }

    #[test]
    fn english_filter_needs_all_three_languages() {
        let mut t = task("d", &[]);
        assert!(t.is_english());
        t.output_language = vec!["Spanish".into()];
        assert!(!t.is_english());
        t.output_language = vec!["English".into(), "Spanish".into()];
        assert!(!t.is_english());
    }
}
