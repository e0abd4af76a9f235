//! Tasks, examples, task lists and the task-name ↔ task-id map that routing rows are indexed by.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DataError, Result};

/// How a task is trained and scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Free text output, scored by Rouge-L against every reference (Super-NaturalInstructions).
    Generation,
    /// A fixed set of answer choices, scored by rank classification (T0 held-out datasets).
    MultipleChoice,
}

/// The answer options of a multiple-choice example; rank classification scores every one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerChoices {
    /// The rendered choices, in template order.
    pub choices: Vec<String>,
    /// Index of the correct choice in `choices`.
    pub gold: usize,
}

/// One input/output pair of a task, already rendered to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// A stable id: the SNI instance id, or `<dataset>-<row>` for T0-style rows.
    pub id: String,
    /// The model input (prompt).
    pub source: String,
    /// Every acceptable output; the first is the training target, all are kept for Rouge-L.
    pub targets: Vec<String>,
    /// Answer choices and the gold index, for multiple-choice examples.
    pub answer: Option<AnswerChoices>,
}

impl Example {
    /// The training target: the first reference (the gold choice for multiple-choice examples).
    pub fn target(&self) -> &str {
        self.targets.first().map_or("", String::as_str)
    }
}

/// What is known about a task besides its examples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMetadata {
    /// The file the task was read from.
    pub origin: PathBuf,
    /// SNI categories (e.g. `Title Generation`); empty for T0-style datasets.
    pub categories: Vec<String>,
    /// The SNI task definition, if any.
    pub definition: Option<String>,
    /// How many instances or rows the source holds, before any cap.
    pub total_instances: usize,
    /// Names of the promptsource templates the examples were rendered with (T0-style tasks).
    pub templates: Vec<String>,
}

/// A named task with its examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task name (SNI file stem, or the T0 dataset name such as `copa`).
    pub name: String,
    /// Generation or multiple choice.
    pub kind: TaskKind,
    /// The examples, in source order unless stated otherwise.
    pub examples: Vec<Example>,
    /// Origin, categories, definition, templates.
    pub metadata: TaskMetadata,
}

/// A list of task names read from a file (one per line, as SNI's `splits/default/*_tasks.txt`),
/// remembering each name's line so that a missing task can be reported where it is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskList {
    /// The list file.
    pub path: PathBuf,
    /// `(1-based line, name)`; blank lines and lines starting with `#` are skipped.
    pub entries: Vec<(usize, String)>,
}

impl TaskList {
    /// Reads a task list file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let entries = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, name)| !name.is_empty() && !name.starts_with('#'))
            .map(|(line, name)| (line, name.to_string()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The names, in list order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, name)| name.as_str())
    }

    /// Whether `name` is listed.
    pub fn contains(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }
}

/// A stable map between task names and the integer ids that index routing rows.
///
/// Two constructions, both deterministic: [`TaskIndex::in_order`] keeps a list's order (T0 datasets,
/// a few-shot run's single task), [`TaskIndex::sorted`] sorts and de-duplicates names, which is mttl's
/// SNI convention (ids index the sorted union of the train, validation and test task names, so test
/// tasks also own an untrained row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskIndex {
    names: Vec<String>,
    ids: HashMap<String, usize>,
}

impl TaskIndex {
    /// Ids in list order; a repeated name is an error, since two ids for one task would split its rows.
    pub fn in_order<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut index = Self::default();
        for name in names {
            let name = name.into();
            if index.ids.contains_key(&name) {
                return Err(DataError::InvalidArgument(format!(
                    "task `{name}` is listed twice"
                )));
            }
            index.ids.insert(name.clone(), index.names.len());
            index.names.push(name);
        }
        Ok(index)
    }

    /// Ids in sorted order of the de-duplicated names.
    pub fn sorted<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        let ids = names
            .iter()
            .enumerate()
            .map(|(id, name)| (name.clone(), id))
            .collect();
        Self { names, ids }
    }

    /// The id of `name`, if known.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    /// The name of `id`, if in range.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    /// All names, in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of tasks (rows of the routing matrix).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no task is known.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_index_is_stable_and_deduplicated() {
        let index = TaskIndex::sorted(["task2", "task10", "task1", "task2"]);
        assert_eq!(index.names(), ["task1", "task10", "task2"]);
        assert_eq!(index.id("task10"), Some(1));
        assert_eq!(index.name(2), Some("task2"));
        assert_eq!(index.id("task3"), None);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn ordered_index_keeps_list_order_and_rejects_repeats() {
        let index = TaskIndex::in_order(["copa", "cb", "rte"]).unwrap();
        assert_eq!(index.id("copa"), Some(0));
        assert_eq!(index.id("rte"), Some(2));
        assert!(matches!(
            TaskIndex::in_order(["a", "b", "a"]),
            Err(DataError::InvalidArgument(_))
        ));
    }

    #[test]
    fn task_list_keeps_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.txt");
        std::fs::write(&path, "task1\n\n# comment\n  task2  \n").unwrap();
        let list = TaskList::read(&path).unwrap();
        assert_eq!(
            list.entries,
            vec![(1, "task1".to_string()), (4, "task2".to_string())]
        );
        assert!(list.contains("task2"));
        assert!(matches!(
            TaskList::read(&dir.path().join("absent.txt")),
            Err(DataError::Io { .. })
        ));
    }
}
