//! Few-shot splits drawn by seed: the same seed gives the same examples to every method.
//!
//! Shuffles use `rand`'s `StdRng` seeded with `seed_from_u64`: stable across runs and platforms for a
//! given `rand` version, but not the same permutation as Python's `random` or numpy, so the drawn
//! examples differ from mttl's and T-Few's while following the same protocol.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{DataError, Result};
use crate::task::{Example, Task};

/// The seeds of the paper's SNI few-shot runs.
pub const SNI_SEEDS: [u64; 3] = [13, 42, 58];
/// SNI's test set per task: 100 instances.
pub const SNI_TEST_INSTANCES: usize = 100;
/// The paper's SNI training (and validation) size per task.
pub const SNI_K: usize = 32;

/// One task's few-shot data for one seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotSplit {
    /// The task name.
    pub task: String,
    /// The seed the split was drawn with.
    pub seed: u64,
    /// The k training examples (fewer only if the pool is smaller).
    pub train: Vec<Example>,
    /// Examples for model selection, disjoint from `train` and `test`.
    pub validation: Vec<Example>,
    /// The evaluation examples, never drawn into `train` or `validation`.
    pub test: Vec<Example>,
}

/// Shuffles `0..n` by `seed`; returns the first `min(k, n)` as training indices, up to `validation`
/// more as validation indices, and the rest. For a fixed seed the training indices for a smaller `k` are
/// a prefix of those for a larger one.
pub fn draw_indices(
    n: usize,
    k: usize,
    validation: usize,
    seed: u64,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let rest = order.split_off(k.min(n));
    let mut validation_set = rest;
    let rest = validation_set.split_off(validation.min(validation_set.len()));
    (order, validation_set, rest)
}

/// Splits a pool into `k` training and `validation` examples by `seed`; `test` is kept as given.
pub fn split_pool(
    task: &str,
    pool: &[Example],
    test: Vec<Example>,
    k: usize,
    validation: usize,
    seed: u64,
) -> FewShotSplit {
    let (train, valid, _) = draw_indices(pool.len(), k, validation, seed);
    let pick = |indices: &[usize]| indices.iter().filter_map(|&i| pool.get(i).cloned()).collect();
    FewShotSplit {
        task: task.to_string(),
        seed,
        train: pick(&train),
        validation: pick(&valid),
        test,
    }
}

/// Which instances of an SNI task form its test set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniTestSet<'a> {
    /// The first `n` instances in file order (mttl: 100, which upstream puts first, label-balanced).
    First(usize),
    /// The instances with these ids (the official `eval_references.jsonl`, for files whose reference
    /// instances are not the first 100, as in the shipped subset); every id must be found.
    Ids(&'a HashSet<String>),
}

/// The paper's SNI protocol for one test task: the test set is taken out (in file order), the remaining
/// instances are shuffled by `seed`, the first `k` train and the next `k` validate (mttl's
/// `max_num_instances_per_task = 32` for both). Load the task with a cap large enough to hold the
/// test set and `2k` more. Fails if no example is left for training, or a test id is missing.
pub fn sni_few_shot(task: &Task, test: SniTestSet<'_>, k: usize, seed: u64) -> Result<FewShotSplit> {
    let (test_examples, pool): (Vec<Example>, Vec<Example>) = match test {
        SniTestSet::First(n) => {
            let (test, pool) = task.examples.split_at(n.min(task.examples.len()));
            (test.to_vec(), pool.to_vec())
        }
        SniTestSet::Ids(ids) => {
            let (test, pool): (Vec<&Example>, Vec<&Example>) =
                task.examples.iter().partition(|e| ids.contains(&e.id));
            if test.len() != ids.len() {
                return Err(DataError::InvalidArgument(format!(
                    "{}: {} of {} test ids are not among the {} loaded instances",
                    task.name,
                    ids.len() - test.len(),
                    ids.len(),
                    task.examples.len()
                )));
            }
            (
                test.into_iter().cloned().collect(),
                pool.into_iter().cloned().collect(),
            )
        }
    };
    if pool.is_empty() {
        return Err(DataError::InvalidArgument(format!(
            "{}: {} examples leave none for few-shot training beyond the {} test examples",
            task.name,
            task.examples.len(),
            test_examples.len()
        )));
    }
    Ok(split_pool(&task.name, &pool, test_examples, k, k, seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskKind, TaskMetadata};

    fn task(n: usize) -> Task {
        Task {
            name: "t".into(),
            kind: TaskKind::Generation,
            examples: (0..n)
                .map(|i| Example {
                    id: i.to_string(),
                    source: format!("s{i}"),
                    targets: vec![format!("t{i}")],
                    answer: None,
                })
                .collect(),
            metadata: TaskMetadata::default(),
        }
    }

    #[test]
    fn draws_are_deterministic_disjoint_and_nested_over_k() {
        let (a, b, rest) = draw_indices(50, 16, 8, 42);
        assert_eq!((a.len(), b.len(), rest.len()), (16, 8, 26));
        assert_eq!(draw_indices(50, 16, 8, 42), (a.clone(), b.clone(), rest.clone()));
        let mut all: Vec<usize> = a.iter().chain(&b).chain(&rest).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        let (a32, _, _) = draw_indices(50, 32, 8, 42);
        assert_eq!(a32[..16], a[..]);
        assert_ne!(draw_indices(50, 16, 8, 13).0, a);
    }

    #[test]
    fn small_pools_give_what_they_have() {
        let (a, b, rest) = draw_indices(5, 4, 4, 0);
        assert_eq!((a.len(), b.len(), rest.len()), (4, 1, 0));
    }

    #[test]
    fn sni_protocol_keeps_the_first_100_for_test() {
        let t = task(180);
        let split = sni_few_shot(&t, SniTestSet::First(SNI_TEST_INSTANCES), 32, 13).unwrap();
        assert_eq!(split.test, t.examples[..100]);
        assert_eq!((split.train.len(), split.validation.len()), (32, 32));
        let test_ids: Vec<&str> = split.test.iter().map(|e| e.id.as_str()).collect();
        for e in split.train.iter().chain(&split.validation) {
            assert!(!test_ids.contains(&e.id.as_str()));
        }
        assert!(split.train.iter().all(|e| !split.validation.contains(e)));
        assert_eq!(sni_few_shot(&t, SniTestSet::First(100), 32, 13).unwrap(), split);
        assert!(matches!(
            sni_few_shot(&task(100), SniTestSet::First(100), 32, 13),
            Err(DataError::InvalidArgument(_))
        ));
    }

    #[test]
    fn sni_protocol_can_take_the_test_set_by_id() {
        let t = task(10);
        let ids: HashSet<String> = ["1", "7"].map(String::from).into();
        let split = sni_few_shot(&t, SniTestSet::Ids(&ids), 3, 0).unwrap();
        assert_eq!(
            split.test.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["1", "7"]
        );
        assert_eq!((split.train.len(), split.validation.len()), (3, 3));
        assert!(
            split
                .train
                .iter()
                .chain(&split.validation)
                .all(|e| !ids.contains(&e.id))
        );
        let unknown: HashSet<String> = ["1", "99"].map(String::from).into();
        assert!(matches!(
            sni_few_shot(&t, SniTestSet::Ids(&unknown), 3, 0),
            Err(DataError::InvalidArgument(_))
        ));
    }
}
