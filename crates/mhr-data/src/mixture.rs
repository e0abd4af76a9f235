//! Multi-task mixtures: which (task, example) comes next in multi-task pre-training.
//!
//! The stream is infinite and deterministic for a seed (take as many steps as training needs); it
//! yields indices, so examples stay wherever the caller keeps them.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::error::{DataError, Result};

/// How tasks are weighted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixingStrategy {
    /// Every step picks a task uniformly at random, then that task's next example (each task cycles
    /// through its examples in a reshuffled order), so small tasks are seen as often as large ones.
    Uniform,
    /// Examples-proportional: each task contributes a fixed random subset of at most `cap` examples
    /// (`None`: all), and every epoch visits the union once in a fresh random order (T0's 500k/#templates
    /// cap, SNI's ≤ 100 instances per training task).
    Proportional {
        /// Most examples taken from one task.
        cap: Option<usize>,
    },
}

/// One step of a mixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MixtureItem {
    /// Index of the task in the sizes given to [`Mixture::new`] (use it as the task id or map it).
    pub task: usize,
    /// Index of the example within that task.
    pub example: usize,
}

/// An endless, seeded stream of [`MixtureItem`]s.
#[derive(Debug)]
pub struct Mixture {
    rng: StdRng,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Uniform {
        orders: Vec<Vec<usize>>,
        positions: Vec<usize>,
    },
    Proportional {
        epoch: Vec<MixtureItem>,
        position: usize,
    },
}

impl Mixture {
    /// A mixture over tasks with `sizes[t]` examples each; every task needs at least one.
    pub fn new(sizes: &[usize], strategy: MixingStrategy, seed: u64) -> Result<Self> {
        if sizes.is_empty() {
            return Err(DataError::InvalidArgument(
                "a mixture needs at least one task".into(),
            ));
        }
        if let Some(t) = sizes.iter().position(|&n| n == 0) {
            return Err(DataError::InvalidArgument(format!(
                "task {t} of the mixture has no examples"
            )));
        }
        if strategy == (MixingStrategy::Proportional { cap: Some(0) }) {
            return Err(DataError::InvalidArgument(
                "a mixture cap of 0 leaves no examples".into(),
            ));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let state = match strategy {
            MixingStrategy::Uniform => State::Uniform {
                orders: sizes.iter().map(|&n| shuffled(n, &mut rng)).collect(),
                positions: vec![0; sizes.len()],
            },
            MixingStrategy::Proportional { cap } => {
                let epoch = sizes
                    .iter()
                    .enumerate()
                    .flat_map(|(task, &n)| {
                        let mut subset = shuffled(n, &mut rng);
                        subset.truncate(cap.unwrap_or(n));
                        subset
                            .into_iter()
                            .map(move |example| MixtureItem { task, example })
                    })
                    .collect();
                // Position at the end: the first `next()` shuffles, as every later epoch does.
                State::Proportional {
                    position: usize::MAX,
                    epoch,
                }
            }
        };
        Ok(Self { rng, state })
    }
}

fn shuffled(n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

impl Iterator for Mixture {
    type Item = MixtureItem;

    fn next(&mut self) -> Option<MixtureItem> {
        match &mut self.state {
            State::Uniform { orders, positions } => {
                let task = self.rng.random_range(0..orders.len());
                let (order, position) = (orders.get_mut(task)?, positions.get_mut(task)?);
                if *position >= order.len() {
                    order.shuffle(&mut self.rng);
                    *position = 0;
                }
                let example = *order.get(*position)?;
                *position += 1;
                Some(MixtureItem { task, example })
            }
            State::Proportional { epoch, position } => {
                if *position >= epoch.len() {
                    epoch.shuffle(&mut self.rng);
                    *position = 0;
                }
                let item = *epoch.get(*position)?;
                *position += 1;
                Some(item)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(items: &[MixtureItem], n_tasks: usize) -> Vec<usize> {
        let mut c = vec![0; n_tasks];
        for item in items {
            c[item.task] += 1;
        }
        c
    }

    #[test]
    fn uniform_balances_tasks_and_cycles_examples() {
        let items: Vec<_> = Mixture::new(&[2, 100, 10], MixingStrategy::Uniform, 0)
            .unwrap()
            .take(3000)
            .collect();
        for c in counts(&items, 3) {
            assert!((900..1100).contains(&c), "{c}");
        }
        let first_task0: Vec<usize> = items
            .iter()
            .filter(|i| i.task == 0)
            .take(2)
            .map(|i| i.example)
            .collect();
        assert_eq!(
            {
                let mut v = first_task0;
                v.sort();
                v
            },
            vec![0, 1]
        );
        assert!(items.iter().all(|i| i.example < [2, 100, 10][i.task]));
    }

    #[test]
    fn proportional_caps_and_visits_each_kept_example_once_per_epoch() {
        let sizes = [5, 50, 20];
        let mixture = Mixture::new(&sizes, MixingStrategy::Proportional { cap: Some(10) }, 1).unwrap();
        let items: Vec<_> = mixture.take(50).collect();
        let (epoch1, epoch2) = items.split_at(25);
        assert_eq!(counts(epoch1, 3), vec![5, 10, 10]);
        let mut a = epoch1.to_vec();
        let mut b = epoch2.to_vec();
        a.sort_by_key(|i| (i.task, i.example));
        b.sort_by_key(|i| (i.task, i.example));
        assert_eq!(a, b, "the capped subset is fixed across epochs");
        assert_ne!(epoch1, epoch2, "each epoch is reshuffled");
        let again: Vec<_> = Mixture::new(&sizes, MixingStrategy::Proportional { cap: Some(10) }, 1)
            .unwrap()
            .take(50)
            .collect();
        assert_eq!(items, again);
    }

    #[test]
    fn empty_mixtures_are_rejected() {
        assert!(Mixture::new(&[], MixingStrategy::Uniform, 0).is_err());
        assert!(Mixture::new(&[3, 0], MixingStrategy::Uniform, 0).is_err());
        assert!(Mixture::new(&[3], MixingStrategy::Proportional { cap: Some(0) }, 0).is_err());
    }
}
