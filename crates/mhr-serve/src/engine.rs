//! The model side: one padded batch of rows of any mix of tasks, generated from or scored in one pass.

use std::collections::BTreeMap;

use burn::prelude::*;
use mhr_core::{AdapterHost, RoutingContext, RoutingMode, SiteRouter};
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

/// The served model, with its adapters, in evaluation mode (deterministic routing `σ(Z)`, no dropout).
#[derive(Debug)]
pub struct Engine<B: Backend> {
    model: T5ForConditionalGeneration<B>,
    /// Whether rows carry their task's routing row (a Poly / MHR adapter).
    routed: bool,
    pad_id: u32,
    eos_id: u32,
}

impl<B: Backend> Engine<B> {
    pub fn new(model: T5ForConditionalGeneration<B>, routed: bool) -> Result<Self, ServeError> {
        let config = model.config();
        let id = |name: &str, value: i64| {
            u32::try_from(value).map_err(|_| ServeError::Config(format!("{name} {value} is not a token id")))
        };
        let (pad_id, eos_id) = (
            id("pad_token_id", config.pad_token_id)?,
            id("eos_token_id", config.eos_token_id)?,
        );
        Ok(Self {
            model,
            routed,
            pad_id,
            eos_id,
        })
    }

    fn routing(&self, task_ids: Tensor<B, 1, Int>) -> RoutingContext<B> {
        if self.routed {
            RoutingContext::new(task_ids, RoutingMode::Deterministic)
        } else {
            RoutingContext::untasked()
        }
    }

    /// Generates from `rows` as one batch with `num_beams`, running to the longest `max_new_tokens`; returns per
    /// row its ids without the decoder start token, cut after eos (or at the row's own `max_new_tokens`).
    ///
    /// # Shapes
    /// - encoder input: `[rows, longest source]`, padded with the pad id
    pub fn generate(&self, rows: &[Row<'_>], num_beams: usize) -> Result<Vec<Vec<u32>>, ServeError> {
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
        let batch = BatchData::collate(&examples, self.pad_id).to_tensors::<B>(&self.model.device());
        let config = match num_beams {
            1 => GenerationConfig::greedy(longest),
            k => GenerationConfig::beam(longest, k),
        };
        let tokens = self.model.generate(
            batch.input_ids,
            batch.attention_mask,
            &self.routing(batch.task_ids),
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

    /// Puts a task's routing rows (by site path) at routing row `task` of every router, appended (`task` must then be
    /// the routers' task count) or replacing that row. Every routed site must have a row, and every row a routed site.
    pub fn put_task(
        &mut self,
        rows: &BTreeMap<String, Vec<f32>>,
        task: usize,
        append: bool,
    ) -> Result<(), ServeError> {
        let mut placed = 0;
        let model = self.model.clone().map_sites(|path, mut site| {
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
        self.model = model;
        Ok(())
    }

    /// Scores every choice of every example under teacher forcing, as one batch of (example, choice) rows.
    pub fn score(&self, examples: &[EncodedChoices]) -> Result<Vec<Scores>, ServeError> {
        if examples.is_empty() {
            return Ok(Vec::new());
        }
        let ranked = rank_classification(&self.model, examples, examples.len())?;
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
