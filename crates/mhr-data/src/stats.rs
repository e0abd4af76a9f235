//! Per-task statistics for `mhr data stats`: one serialisable record per task, computed one task at a
//! time so that the full SNI can be summarised in bounded memory.
//!
//! Lengths are in characters (Unicode scalar values) of the rendered source (SNI: the configured
//! prompt format, untruncated; T0: the seed-42 template draw) and of the training target (first output
//! / gold choice), so they do not depend on a tokenizer.

use std::path::Path;

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::sni::{SniDir, SniOptions};
use crate::t0::{T0_SEEDS, T0Dataset, T0Dir};
use crate::task::{Example, Task, TaskKind, TaskList};

/// The summary of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStats {
    /// Task name.
    pub name: String,
    /// Instances or rows in the source file, before any cap.
    pub instances: usize,
    /// Examples loaded (after the cap).
    pub examples: usize,
    /// Generation or multiple choice.
    pub kind: TaskKind,
    /// Mean source length in characters.
    pub mean_source_chars: f64,
    /// Mean training-target length in characters.
    pub mean_target_chars: f64,
}

impl TaskStats {
    /// Summarises a loaded task.
    pub fn of(task: &Task) -> Self {
        let mean = |len: &dyn Fn(&Example) -> usize| {
            let total: usize = task.examples.iter().map(len).sum();
            if task.examples.is_empty() {
                0.0
            } else {
                total as f64 / task.examples.len() as f64
            }
        };
        Self {
            name: task.name.clone(),
            instances: task.metadata.total_instances,
            examples: task.examples.len(),
            kind: task.kind,
            mean_source_chars: mean(&|e| e.source.chars().count()),
            mean_target_chars: mean(&|e| e.target().chars().count()),
        }
    }
}

/// Statistics of an SNI directory: the tasks of `tasks` (a task list file) or, without one, every
/// `tasks/*.json` in name order. Tasks are read lazily, one per item.
pub fn sni_stats(
    root: &Path,
    tasks: Option<&Path>,
    options: SniOptions,
) -> Result<impl Iterator<Item = Result<TaskStats>>> {
    let dir = SniDir::open(root)?;
    let loaded = match tasks {
        Some(list) => dir.load(&TaskList::read(list)?, options)?,
        None => dir.load_all(options)?,
    };
    Ok(loaded.map(|task| task.map(|t| TaskStats::of(&t))))
}

/// Statistics of a T0-style directory: the datasets named in `tasks` (names as
/// [`T0Dataset::name`]) or, without a list, every dataset present.
pub fn t0_stats(root: &Path, tasks: Option<&Path>) -> Result<impl Iterator<Item = Result<TaskStats>>> {
    let dir = T0Dir::open(root)?;
    let datasets = match tasks {
        Some(path) => {
            let list = TaskList::read(path)?;
            let mut datasets = Vec::with_capacity(list.entries.len());
            for (line, name) in &list.entries {
                let missing = |expected| DataError::MissingTask {
                    list: list.path.clone(),
                    line: *line,
                    task: name.clone(),
                    expected,
                };
                let dataset = T0Dataset::from_name(name).ok_or_else(|| missing(root.join(name)))?;
                if dir.eval_path(dataset).is_none() {
                    return Err(missing(dir.expected_eval_path(dataset)));
                }
                datasets.push(dataset);
            }
            datasets
        }
        None => dir.available(),
    };
    Ok(datasets
        .into_iter()
        .map(move |d| dir.load(d, T0_SEEDS[0]).map(|t| TaskStats::of(&t))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskMetadata;

    #[test]
    fn means_count_characters_not_bytes() {
        let example = |source: &str, target: &str| Example {
            id: String::new(),
            source: source.into(),
            targets: vec![target.into()],
            answer: None,
        };
        let task = Task {
            name: "t".into(),
            kind: TaskKind::Generation,
            examples: vec![example("ab", "é"), example("abcd", "🙂🙂🙂")],
            metadata: TaskMetadata {
                total_instances: 10,
                ..Default::default()
            },
        };
        let stats = TaskStats::of(&task);
        assert_eq!((stats.instances, stats.examples), (10, 2));
        assert_eq!((stats.mean_source_chars, stats.mean_target_chars), (3.0, 2.0));
        let json = serde_json::to_string(&stats).unwrap();
        assert_eq!(
            json,
            r#"{"name":"t","instances":10,"examples":2,"kind":"generation","mean_source_chars":3.0,"mean_target_chars":2.0}"#
        );
    }
}
