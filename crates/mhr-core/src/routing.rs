use burn::prelude::*;

/// Whether routing weights are sampled (training) or deterministic (evaluation).
///
/// Kept explicit rather than inferred from the backend, so that gradients can be taken through the
/// deterministic path (the fixtures do) and sampling can be switched off in training (mttl's T0 runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// `σ(Z)`, no noise.
    Deterministic,
    /// A relaxed-Bernoulli sample when the router's config enables it, else `σ(Z)`.
    Sampled,
}

/// What every adapted layer needs to know about the batch: one task id per example.
///
/// It travels with the forward call, never through global state. A layer whose input batch is `k`
/// times the number of task ids (beam search, one row per answer choice) repeats each id `k` times.
#[derive(Debug, Clone)]
pub struct RoutingContext<B: Backend> {
    task_ids: Option<Tensor<B, 1, Int>>,
    mode: RoutingMode,
}

impl<B: Backend> RoutingContext<B> {
    pub fn new(task_ids: Tensor<B, 1, Int>, mode: RoutingMode) -> Self {
        Self {
            task_ids: Some(task_ids),
            mode,
        }
    }

    /// A context for models without routed adapters.
    pub fn untasked() -> Self {
        Self {
            task_ids: None,
            mode: RoutingMode::Deterministic,
        }
    }

    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    pub fn with_mode(mut self, mode: RoutingMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn task_ids(&self) -> Option<&Tensor<B, 1, Int>> {
        self.task_ids.as_ref()
    }

    /// Repeats every task id `k` times in place (`repeat_interleave`), for batches expanded per example.
    pub fn expand(&self, k: usize) -> Self {
        Self {
            task_ids: self.task_ids.clone().map(|ids| repeat_interleave(ids, k)),
            mode: self.mode,
        }
    }

    /// Keeps the rows of `indices` (beam reordering, finished rows dropped).
    pub fn select(&self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            task_ids: self.task_ids.clone().map(|ids| ids.select(0, indices)),
            mode: self.mode,
        }
    }

    /// The task ids for a batch of `batch` rows.
    ///
    /// # Panics
    /// When the context has no task ids, or `batch` is not a multiple of their number: a routed
    /// adapter cannot run without knowing each example's task.
    pub fn ids_for_batch(&self, batch: usize) -> Tensor<B, 1, Int> {
        let ids = self
            .task_ids
            .clone()
            .expect("a routed adapter needs task ids in the RoutingContext");
        let n = ids.dims()[0];
        assert!(
            n > 0 && batch.is_multiple_of(n),
            "batch of {batch} rows cannot be routed with {n} task ids (need a multiple)"
        );
        if batch == n {
            ids
        } else {
            repeat_interleave(ids, batch / n)
        }
    }
}

fn repeat_interleave<B: Backend>(ids: Tensor<B, 1, Int>, k: usize) -> Tensor<B, 1, Int> {
    let n = ids.dims()[0];
    ids.reshape([n, 1]).repeat_dim(1, k).reshape([n * k])
}
