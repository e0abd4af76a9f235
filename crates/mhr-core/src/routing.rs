use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::ParamId;
use burn::prelude::*;

use crate::draws::Draws;
use crate::router::{PolyRouter, RoutingMode};
use crate::sharing::{SharedRouters, SiteRouter};

/// What every adapted layer needs to know about the batch: one task id per example.
///
/// It travels with the forward call, never through global state. A layer whose input batch is `k`
/// times the number of task ids (beam search, one row per answer choice) repeats each id `k` times.
/// The model adds its shared routers ([`Self::with_shared_routers`]) for the sites that route through them.
#[derive(Debug, Clone)]
pub struct RoutingContext<B: Backend> {
    task_ids: Option<Tensor<B, 1, Int>>,
    mode: RoutingMode,
    shared: SharedRouters<B>,
    mixed: Option<MixedAdapters<B>>,
    draws: Option<Draws>,
}

/// Per-example mixed adapters `(A_t, B_t)` by site (its `A` parameter) and batch size.
type MixedAdapters<B> = Arc<Mutex<HashMap<(ParamId, usize), (Tensor<B, 3>, Tensor<B, 3>)>>>;

impl<B: Backend> RoutingContext<B> {
    pub fn new(task_ids: Tensor<B, 1, Int>, mode: RoutingMode) -> Self {
        Self {
            task_ids: Some(task_ids),
            mode,
            shared: SharedRouters::default(),
            mixed: None,
            draws: None,
        }
    }

    /// A context for models without routed adapters.
    pub fn untasked() -> Self {
        Self {
            task_ids: None,
            mode: RoutingMode::Deterministic,
            shared: SharedRouters::default(),
            mixed: None,
            draws: None,
        }
    }

    pub fn mode(&self) -> RoutingMode {
        self.mode
    }

    /// The context whose forward draws its random numbers from `draws` (a training step's: see [`Draws`]).
    pub fn with_draws(mut self, draws: Draws) -> Self {
        self.draws = Some(draws);
        self
    }

    /// Where the forward's random numbers come from; `None`: the backend's generator as it stands.
    pub fn draws(&self) -> Option<&Draws> {
        self.draws.as_ref()
    }

    pub fn with_mode(mut self, mode: RoutingMode) -> Self {
        self.mode = mode;
        self
    }

    pub fn task_ids(&self) -> Option<&Tensor<B, 1, Int>> {
        self.task_ids.as_ref()
    }

    /// Repeats every task id `k` times in place (`repeat_interleave`), for batches expanded per example.
    /// The new task ids start without kept mixed adapters.
    pub fn expand(&self, k: usize) -> Self {
        Self {
            task_ids: self.task_ids.clone().map(|ids| repeat_interleave(ids, k)),
            mode: self.mode,
            shared: self.shared.clone(),
            mixed: None,
            draws: None,
        }
    }

    /// Keeps the rows of `indices` (beam reordering, finished rows dropped). The new task ids start without
    /// kept mixed adapters.
    pub fn select(&self, indices: Tensor<B, 1, Int>) -> Self {
        Self {
            task_ids: self.task_ids.clone().map(|ids| ids.select(0, indices)),
            mode: self.mode,
            shared: self.shared.clone(),
            mixed: None,
            draws: None,
        }
    }

    /// Keeps each routed site's per-example mixed adapters after their first use (and in clones of this
    /// context), under deterministic routing: they depend only on the task ids and the parameters, so the
    /// steps of one generation call, which repeat both, mix the skills once instead of once per step. Only
    /// for frozen parameters and one set of task ids (it is what `generate` does); sampled routing never
    /// keeps them.
    pub fn keeping_mixed_adapters(mut self) -> Self {
        self.mixed = Some(MixedAdapters::default());
        self
    }

    /// Site `site`'s mixed adapters for a batch of `batch` rows: kept ones when the context keeps them (see
    /// [`Self::keeping_mixed_adapters`]), else `mix()`'s.
    pub(crate) fn mixed_adapters(
        &self,
        site: ParamId,
        batch: usize,
        mix: impl FnOnce() -> (Tensor<B, 3>, Tensor<B, 3>),
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let Some(kept) = self
            .mixed
            .as_ref()
            .filter(|_| self.mode == RoutingMode::Deterministic)
        else {
            return mix();
        };
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.entry((site, batch)).or_insert_with(mix).clone()
    }

    /// The context with the model's shared routers (clones share the parameters' tensors, so gradients
    /// reach the model's routers).
    pub fn with_shared_routers(mut self, shared: &SharedRouters<B>) -> Self {
        self.shared = shared.clone();
        self
    }

    /// The router of a site: its own, or its group's from the shared routers.
    ///
    /// # Panics
    /// When the site names a shared router the context does not hold; models check this before a call.
    pub fn router<'a>(&'a self, site: &'a SiteRouter<B>) -> &'a PolyRouter<B> {
        self.shared.resolve(site).unwrap_or_else(|e| panic!("{e}"))
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
