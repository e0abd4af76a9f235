//! The T0 training mixture as P3 (`bigscience/P3`) renders it: every (dataset, promptsource template) pair
//! is one subset of prompted input/target pairs, and with the paper's `use_t0_templates_as_tasks` every
//! subset is its own task (its own routing row).
//!
//! Folder layout (`scripts/export_p3.py` writes it from the Hub's P3; any tool can):
//!
//! ```text
//! <root>/mixture.json             [{"subset": "...", "dataset": "adversarial_qa/dbert", "template": "..."}, …]
//! <root>/<subset>/train.jsonl     {"inputs_pretokenized": "...", "targets_pretokenized": "..."} per line
//! ```
//!
//! P3's own field names are kept (other fields of a row are ignored), so a P3 split dumped as JSON Lines
//! needs no conversion. Loading follows mttl's T0 pre-training (PAPER.md §2.2): each subset is capped at
//! `cap_per_dataset / (templates of its dataset)` rows, a seeded uniform sample drawn while streaming the
//! file (memory stays bounded by the cap), and the first `validation_per_subset` rows of the sample are held
//! out for the validation loss. Training batches drawn uniformly from the union are examples-proportional.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Deserialize;

use crate::error::{DataError, Result};
use crate::task::{Example, Task, TaskKind, TaskMetadata};

/// The manifest's file name.
pub const P3_MANIFEST: &str = "mixture.json";
/// T0's cap on the training rows of one dataset, shared by its templates.
pub const T0_CAP_PER_DATASET: usize = 500_000;
/// Rows of every (dataset, template) pair held out for the validation loss.
pub const T0_VALIDATION_PER_SUBSET: usize = 100;

/// One (dataset, template) subset listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P3Subset {
    /// P3's subset name, also the folder of its rows (e.g. `adversarial_qa_dbert_answer_the_following_q`).
    pub subset: String,
    /// The source dataset, with its configuration (`adversarial_qa/dbert`): templates of one dataset share
    /// its cap.
    pub dataset: String,
    /// The promptsource template's name.
    pub template: String,
}

/// How [`P3Dir::load`] samples the mixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P3Options {
    /// Training rows per dataset, split evenly over its templates (T0: 500,000).
    pub cap_per_dataset: usize,
    /// Rows of each subset held out for validation (mttl: 100).
    pub validation_per_subset: usize,
    /// One task per (dataset, template) (the paper's T0 runs) or one per dataset.
    pub templates_as_tasks: bool,
    /// Seeds the sample and the hold-out.
    pub seed: u64,
}

impl Default for P3Options {
    fn default() -> Self {
        Self {
            cap_per_dataset: T0_CAP_PER_DATASET,
            validation_per_subset: T0_VALIDATION_PER_SUBSET,
            templates_as_tasks: true,
            seed: 0,
        }
    }
}

/// The sampled mixture: training and validation examples per task, tasks in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P3Mixture {
    /// Training tasks (generation: every target is a reference).
    pub train: Vec<Task>,
    /// The held-out rows of the same tasks, same order.
    pub validation: Vec<Task>,
}

/// A P3 folder: the manifest, checked against the files beside it.
#[derive(Debug, Clone)]
pub struct P3Dir {
    root: PathBuf,
    subsets: Vec<P3Subset>,
}

/// One task's share of the sample, gathered over its subsets.
#[derive(Default)]
struct SampledTask {
    train: Vec<Example>,
    validation: Vec<Example>,
    templates: Vec<String>,
}

#[derive(Deserialize)]
struct P3Row {
    inputs_pretokenized: String,
    targets_pretokenized: String,
}

impl P3Dir {
    /// Reads `root/mixture.json`; every subset it lists must have its `train.jsonl`, and no subset may be
    /// listed twice.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let manifest = root.join(P3_MANIFEST);
        let text = std::fs::read_to_string(&manifest).map_err(|e| DataError::io(&manifest, e))?;
        let subsets: Vec<P3Subset> =
            serde_json::from_str(&text).map_err(|e| DataError::json(&manifest, &e, 0))?;
        if subsets.is_empty() {
            return Err(DataError::EmptyTask { path: manifest });
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in subsets.iter().enumerate() {
            if s.subset.is_empty() || s.subset.contains(['/', '\\']) || s.subset.starts_with('.') {
                return Err(DataError::invalid(
                    &manifest,
                    format!("[{i}].subset"),
                    format!("`{}` is not a folder name", s.subset),
                ));
            }
            if !seen.insert(&s.subset) {
                return Err(DataError::invalid(
                    &manifest,
                    format!("[{i}].subset"),
                    format!("`{}` is listed twice", s.subset),
                ));
            }
            let file = root.join(&s.subset).join("train.jsonl");
            if !file.is_file() {
                return Err(DataError::MissingTask {
                    list: manifest.clone(),
                    line: i + 1,
                    task: s.subset.clone(),
                    expected: file,
                });
            }
        }
        Ok(Self { root, subsets })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The subsets, in manifest order.
    pub fn subsets(&self) -> &[P3Subset] {
        &self.subsets
    }

    /// The task names `load` gives with `templates_as_tasks`, sorted (the routing rows of pre-training).
    pub fn task_names(&self, templates_as_tasks: bool) -> Vec<String> {
        let mut names: Vec<String> = self
            .subsets
            .iter()
            .map(|s| task_name(s, templates_as_tasks).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Samples the mixture (module docs): deterministic for `options.seed`.
    pub fn load(&self, options: &P3Options) -> Result<P3Mixture> {
        if options.cap_per_dataset == 0 {
            return Err(DataError::InvalidArgument(
                "cap_per_dataset must be at least 1".into(),
            ));
        }
        let mut templates_per_dataset: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.subsets {
            *templates_per_dataset.entry(&s.dataset).or_default() += 1;
        }
        let mut tasks: BTreeMap<String, SampledTask> = BTreeMap::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            let cap = (options.cap_per_dataset / templates_per_dataset[subset.dataset.as_str()]).max(1);
            let keep = cap + options.validation_per_subset;
            let path = self.root.join(&subset.subset).join("train.jsonl");
            let seed = options.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut sample = sample_rows(&path, keep, seed)?;
            if sample.len() <= options.validation_per_subset {
                return Err(DataError::invalid(
                    &path,
                    "rows",
                    format!(
                        "{} rows: not more than the {} held out for validation",
                        sample.len(),
                        options.validation_per_subset
                    ),
                ));
            }
            let held: Vec<(usize, P3Row)> = sample.drain(..options.validation_per_subset).collect();
            sample.sort_by_key(|(line, _)| *line);
            let name = task_name(subset, options.templates_as_tasks).to_string();
            let to_example = |(line, row): (usize, P3Row)| Example {
                id: format!("{}-{line}", subset.subset),
                source: row.inputs_pretokenized,
                targets: vec![row.targets_pretokenized],
                answer: None,
            };
            let sampled = tasks.entry(name).or_default();
            sampled.train.extend(sample.into_iter().map(to_example));
            sampled.validation.extend(held.into_iter().map(to_example));
            sampled.templates.push(subset.template.clone());
        }
        let task = |name: &str, examples: Vec<Example>, templates: Vec<String>| Task {
            name: name.to_string(),
            kind: TaskKind::Generation,
            metadata: TaskMetadata {
                origin: self.root.clone(),
                total_instances: examples.len(),
                templates,
                ..TaskMetadata::default()
            },
            examples,
        };
        let (train, validation) = tasks
            .into_iter()
            .map(|(name, sampled)| {
                (
                    task(&name, sampled.train, sampled.templates.clone()),
                    task(&name, sampled.validation, sampled.templates),
                )
            })
            .unzip();
        Ok(P3Mixture { train, validation })
    }
}

fn task_name(subset: &P3Subset, templates_as_tasks: bool) -> &str {
    if templates_as_tasks {
        &subset.subset
    } else {
        &subset.dataset
    }
}

/// A uniform sample of at most `keep` rows of `path` (reservoir sampling while streaming), each with its
/// 1-based line, in a seeded random order.
fn sample_rows(path: &Path, keep: usize, seed: u64) -> Result<Vec<(usize, P3Row)>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut reservoir: Vec<(usize, P3Row)> = Vec::new();
    let mut seen = 0usize;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        // Every row is parsed, so a malformed one is reported wherever it sits.
        let row: P3Row = serde_json::from_str(&line).map_err(|e| DataError::json(path, &e, i))?;
        seen += 1;
        if reservoir.len() < keep {
            reservoir.push((i + 1, row));
        } else {
            let j = rng.random_range(0..seen);
            if j < keep {
                reservoir[j] = (i + 1, row);
            }
        }
    }
    if seen == 0 {
        return Err(DataError::EmptyTask {
            path: path.to_path_buf(),
        });
    }
    reservoir.shuffle(&mut rng);
    Ok(reservoir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dir(subsets: &[(&str, &str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let manifest: Vec<serde_json::Value> = subsets
            .iter()
            .map(|(subset, dataset, _)| serde_json::json!({"subset": subset, "dataset": dataset, "template": format!("t-{subset}")}))
            .collect();
        std::fs::write(
            dir.path().join(P3_MANIFEST),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        for (subset, _, rows) in subsets {
            std::fs::create_dir(dir.path().join(subset)).unwrap();
            let text: String = (0..*rows)
                .map(|r| {
                    format!(
                        "{}\n",
                        serde_json::json!({"inputs_pretokenized": format!("{subset} in {r}"), "targets_pretokenized": format!("out {r}"), "idx": r})
                    )
                })
                .collect();
            std::fs::write(dir.path().join(subset).join("train.jsonl"), text).unwrap();
        }
        dir
    }

    #[test]
    fn caps_are_shared_by_a_datasets_templates_and_validation_is_held_apart() {
        let dir = write_dir(&[("a_x", "a", 50), ("a_y", "a", 50), ("b_x", "b", 8)]);
        let p3 = P3Dir::open(dir.path()).unwrap();
        let options = P3Options {
            cap_per_dataset: 20,
            validation_per_subset: 3,
            templates_as_tasks: true,
            seed: 7,
        };
        let mixture = p3.load(&options).unwrap();
        let names: Vec<&str> = mixture.train.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a_x", "a_y", "b_x"]);
        // 20 rows of `a` split over 2 templates; `b` has only 8 rows, 3 of them held out.
        let sizes: Vec<usize> = mixture.train.iter().map(|t| t.examples.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        for (train, val) in mixture.train.iter().zip(&mixture.validation) {
            assert_eq!(val.examples.len(), 3);
            for e in &val.examples {
                assert!(!train.examples.iter().any(|t| t.id == e.id), "{} in both", e.id);
                let row: usize = e.id.rsplit('-').next().unwrap().parse().unwrap();
                assert_eq!(e.source, format!("{} in {}", train.name, row - 1));
                assert_eq!(e.targets, [format!("out {}", row - 1)]);
            }
        }
        assert_eq!(mixture, p3.load(&options).unwrap(), "same seed, same sample");
        let other = p3
            .load(&P3Options {
                seed: 8,
                ..options.clone()
            })
            .unwrap();
        assert_ne!(mixture.train[0].examples, other.train[0].examples);
        let by_dataset = p3
            .load(&P3Options {
                templates_as_tasks: false,
                ..options
            })
            .unwrap();
        let names: Vec<&str> = by_dataset.train.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(by_dataset.train[0].examples.len(), 20);
        assert_eq!(by_dataset.train[0].metadata.templates, ["t-a_x", "t-a_y"]);
        assert_eq!(p3.task_names(false), ["a", "b"]);
    }

    #[test]
    fn bad_folders_are_errors_naming_the_file() {
        let dir = write_dir(&[("a_x", "a", 5)]);
        std::fs::write(
            dir.path().join("a_x/train.jsonl"),
            "{\"inputs_pretokenized\": \"x\"}\n",
        )
        .unwrap();
        let err = P3Dir::open(dir.path())
            .unwrap()
            .load(&P3Options {
                validation_per_subset: 0,
                ..P3Options::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a_x/train.jsonl:1") && err.contains("targets_pretokenized"),
            "{err}"
        );

        std::fs::remove_dir_all(dir.path().join("a_x")).unwrap();
        let err = P3Dir::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mixture.json:1") && err.contains("a_x/train.jsonl"),
            "{err}"
        );

        let err = P3Dir::open(dir.path().join("nowhere")).unwrap_err().to_string();
        assert!(err.contains("nowhere/mixture.json"), "{err}");

        let dir = write_dir(&[("a_x", "a", 2)]);
        let err = P3Dir::open(dir.path())
            .unwrap()
            .load(&P3Options::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 rows") && err.contains("100 held out"), "{err}");
    }
}
