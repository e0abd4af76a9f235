//! The model side: one padded batch of rows of any mix of tasks, generated from or scored in one pass.

use std::collections::BTreeMap;

use burn::prelude::*;
use mhr_core::peft::{PeftAdapter, PeftKind};
use mhr_core::{AdapterHost, RoutingConfig, RoutingContext, RoutingMode, SiteRouter};
use mhr_data::{BatchData, EncodedChoices, EncodedExample};
use mhr_models::{GenerationConfig, T5ForConditionalGeneration};
use mhr_train::eval::rank_classification;

use crate::error::ServeError;

/// How a generation request decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decoding {
    pub max_new_tokens: usize,
    /// 1: greedy search; more: beam search.
    pub num_beams: usize,
}

impl Decoding {
    /// Requests that may share a batch: greedy rows of any length (the batch runs to the longest and each row
    /// keeps its own), beam rows of the same width and length (both decide when a hypothesis is final).
    pub fn batch_key(&self) -> Decoding {
        match self.num_beams {
            1 => Decoding {
                max_new_tokens: 0,
                num_beams: 1,
            },
            _ => *self,
        }
    }
}

/// The weights that answer a task's requests, and its routing row in them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// `None`: the served adapter; `Some(i)`: the `i`-th adapter registered for a task of its own.
    pub adapter: Option<usize>,
    /// The routing row (0 where the adapter does not route by task).
    pub row: usize,
}

/// One input row of a generation batch.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub task_id: usize,
    /// Ids ending in eos.
    pub source: &'a [u32],
    pub max_new_tokens: usize,
}

/// Per choice of one example: summed and mean token log-likelihood, and the best choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub logliks: Vec<f64>,
    pub scores: Vec<f64>,
    pub best: usize,
}

/// A model with its adapter (or none); `routed`: its rows carry their task's routing row (a Poly / MHR adapter).
#[derive(Debug)]
struct Adapted<B: Backend> {
    model: T5ForConditionalGeneration<B>,
    adapted: bool,
    routed: bool,
}

impl<B: Backend> Adapted<B> {
    fn new(base: &T5ForConditionalGeneration<B>, adapter: Option<&PeftAdapter>) -> Result<Self, ServeError> {
        Ok(match adapter {
            None => Self {
                model: base.clone(),
                adapted: false,
                routed: false,
            },
            Some(adapter) => Self {
                // The clone shares the base weights' tensors: an adapter costs its own weights only.
                model: base
                    .clone()
                    .with_peft_adapter(adapter, &RoutingConfig::default())?,
                adapted: true,
                routed: matches!(adapter.config.kind, PeftKind::Poly { .. }),
            },
        })
    }
}

fn routing<B: Backend>(routed: bool, task_ids: Tensor<B, 1, Int>) -> RoutingContext<B> {
    if routed {
        RoutingContext::new(task_ids, RoutingMode::Deterministic)
    } else {
        RoutingContext::untasked()
    }
}

/// The served model with its adapter, and the adapters registered for a task of their own, in evaluation mode
/// (deterministic routing `σ(Z)`, no dropout).
#[derive(Debug)]
pub struct Engine<B: Backend> {
    /// The frozen model without adapters, which the registered adapters attach to.
    base: T5ForConditionalGeneration<B>,
    served: Adapted<B>,
    own: Vec<Adapted<B>>,
    /// Whether a batch of one task runs on a copy of its model with the task's adapter merged into the weights.
    merge_hot_task: bool,
    /// That copy for the last such batch, with the task's route.
    hot: Option<(Route, T5ForConditionalGeneration<B>)>,
    pad_id: u32,
    eos_id: u32,
}

impl<B: Backend> Engine<B> {
    /// `base`: the model without adapters; `served`: the adapter requests of the served tasks go through.
    pub fn new(
        base: T5ForConditionalGeneration<B>,
        served: Option<&PeftAdapter>,
    ) -> Result<Self, ServeError> {
        let config = base.config();
        let id = |name: &str, value: i64| {
            u32::try_from(value).map_err(|_| ServeError::Config(format!("{name} {value} is not a token id")))
        };
        let (pad_id, eos_id) = (
            id("pad_token_id", config.pad_token_id)?,
            id("eos_token_id", config.eos_token_id)?,
        );
        Ok(Self {
            served: Adapted::new(&base, served)?,
            base,
            own: Vec::new(),
            merge_hot_task: false,
            hot: None,
            pad_id,
            eos_id,
        })
    }

    /// Runs a batch whose rows are all of one task on the model with that task's adapter merged into the weights
    /// (one matmul per adapted layer instead of the routed mixture); the copy is made for the first such batch of
    /// a task and kept until a batch of another task needs one.
    pub fn merging_hot_task(mut self) -> Self {
        self.merge_hot_task = true;
        self
    }

    /// The model for a batch of `adapter` whose rows have the routing rows `rows`, and whether it routes them.
    fn model_for(
        &mut self,
        adapter: Option<usize>,
        rows: &[usize],
    ) -> Result<(&T5ForConditionalGeneration<B>, bool), ServeError> {
        let adapted = self.adapted(adapter)?;
        let routed = adapted.routed;
        let one_task = rows.first().copied().filter(|row| rows.iter().all(|r| r == row));
        let hot = match one_task {
            Some(row) if self.merge_hot_task && adapted.adapted => Route { adapter, row },
            _ => return Ok((&self.adapted(adapter)?.model, routed)),
        };
        let merged = match self.hot.take() {
            Some((key, merged)) if key == hot => merged,
            _ => self
                .adapted(adapter)?
                .model
                .clone()
                .map_sites(|_, site| match &site.adapter {
                    Some(_) => site.merge(Some(hot.row)),
                    None => Ok(site),
                })?,
        };
        Ok((&self.hot.insert((hot, merged)).1, routed))
    }

    /// The adapted model of `adapter` (see [`crate::Route::adapter`]).
    fn adapted(&self, adapter: Option<usize>) -> Result<&Adapted<B>, ServeError> {
        match adapter {
            None => Ok(&self.served),
            Some(i) => self
                .own
                .get(i)
                .ok_or_else(|| ServeError::Config(format!("no registered adapter {i}"))),
        }
    }

    /// Generates from `rows` as one batch with `num_beams`, running to the longest `max_new_tokens`; returns per
    /// row its ids without the decoder start token, cut after eos (or at the row's own `max_new_tokens`).
    ///
    /// # Shapes
    /// - encoder input: `[rows, longest source]`, padded with the pad id
    pub fn generate(
        &mut self,
        adapter: Option<usize>,
        rows: &[Row<'_>],
        num_beams: usize,
    ) -> Result<Vec<Vec<u32>>, ServeError> {
        let Some(longest) = rows.iter().map(|r| r.max_new_tokens).max() else {
            return Ok(Vec::new());
        };
        let examples: Vec<EncodedExample> = rows
            .iter()
            .map(|r| EncodedExample {
                input_ids: r.source.to_vec(),
                labels: Vec::new(),
                task_id: r.task_id,
            })
            .collect();
        let batch = BatchData::collate(&examples, self.pad_id).to_tensors::<B>(&self.base.device());
        let config = match num_beams {
            1 => GenerationConfig::greedy(longest),
            k => GenerationConfig::beam(longest, k),
        };
        let tasks: Vec<usize> = rows.iter().map(|r| r.task_id).collect();
        let (model, routed) = self.model_for(adapter, &tasks)?;
        let tokens = model.generate(
            batch.input_ids,
            batch.attention_mask,
            &routing(routed, batch.task_ids),
            &config,
        )?;
        let [b, t] = tokens.dims();
        let ids: Vec<i64> = tokens.into_data().iter::<i64>().collect();
        Ok((0..b)
            .map(|row| {
                let generated = &ids[row * t + 1..(row + 1) * t];
                let end = generated
                    .iter()
                    .position(|&id| id == i64::from(self.eos_id))
                    .map_or(generated.len(), |i| i + 1)
                    .min(rows[row].max_new_tokens);
                generated[..end].iter().map(|&id| id as u32).collect()
            })
            .collect())
    }

    /// Attaches `adapter` to the base model for a task of its own: as registered adapter `index`, appended (`index`
    /// must then be the count of registered adapters) or replacing that one.
    pub fn put_adapter(&mut self, adapter: &PeftAdapter, index: usize) -> Result<(), ServeError> {
        if index > self.own.len() {
            return Err(ServeError::Config(format!(
                "registered adapter {index} of {}",
                self.own.len()
            )));
        }
        let adapted = Adapted::new(&self.base, Some(adapter))?;
        self.hot = None;
        match self.own.get_mut(index) {
            Some(own) => *own = adapted,
            None => self.own.push(adapted),
        }
        Ok(())
    }

    /// Puts a task's routing rows (by site path) at routing row `task` of every router of the served adapter,
    /// appended (`task` must then be the routers' task count) or replacing that row. Every routed site must have a
    /// row, and every row a routed site.
    pub fn put_task(
        &mut self,
        rows: &BTreeMap<String, Vec<f32>>,
        task: usize,
        append: bool,
    ) -> Result<(), ServeError> {
        let mut placed = 0;
        let model = self.served.model.clone().map_sites(|path, mut site| {
            let Some(router) = site.adapter.as_mut().and_then(|a| a.router_mut()) else {
                return Ok(site);
            };
            let SiteRouter::Own(own) = router else {
                return Err(ServeError::Config(format!(
                    "{path}: routes through a shared router"
                )));
            };
            let row = rows
                .get(path)
                .ok_or_else(|| ServeError::Config(format!("no routing row for {path}")))?;
            if append && own.n_tasks() != task {
                return Err(ServeError::Config(format!(
                    "{path}: {} routing rows for {task} served task names",
                    own.n_tasks()
                )));
            }
            *own = own.clone().with_task_row(task, row)?;
            placed += 1;
            Ok(site)
        })?;
        if placed != rows.len() {
            return Err(ServeError::Config(format!(
                "{} routing rows for {placed} routed sites",
                rows.len()
            )));
        }
        self.served.model = model;
        self.hot = None;
        Ok(())
    }

    /// Scores every choice of every example under teacher forcing, as one batch of (example, choice) rows.
    pub fn score(
        &mut self,
        adapter: Option<usize>,
        examples: &[EncodedChoices],
    ) -> Result<Vec<Scores>, ServeError> {
        if examples.is_empty() {
            return Ok(Vec::new());
        }
        let tasks: Vec<usize> = examples.iter().map(|e| e.task_id).collect();
        let (model, _) = self.model_for(adapter, &tasks)?;
        let ranked = rank_classification(model, examples, examples.len())?;
        Ok(ranked
            .logliks
            .into_iter()
            .zip(ranked.scores)
            .zip(ranked.predictions)
            .map(|((logliks, scores), best)| Scores {
                logliks,
                scores,
                best,
            })
            .collect())
    }
}
