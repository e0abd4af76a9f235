//! Gradient alignment between training tasks (PAPER.md §3.4, a reconstruction of the paper's analysis):
//! the cosine similarity of per-task gradients of the shared adapter parameters.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::{ParamGroup, RoutingContext, RoutingMode};
use mhr_data::EncodedExample;
use mhr_models::T5ForConditionalGeneration;
use serde::{Deserialize, Serialize};

use crate::batch::seq2seq_batch;
use crate::error::TrainError;
use crate::metrics::cosine;

/// Pairwise cosine similarities of per-task gradients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradientAlignment {
    pub tasks: Vec<String>,
    /// `cosine[i][j]` between the gradients of task `i` and task `j`.
    pub cosine: Vec<Vec<f64>>,
    /// Mean over pairs `i ≠ j`.
    pub mean_off_diagonal: f64,
}

/// Concatenates the gradients of parameters in the chosen groups, in module order.
struct Flatten<'a> {
    grads: &'a GradientsParams,
    include_routing: bool,
    path: Vec<String>,
    values: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let group = ParamGroup::of(self.path.last().map(String::as_str).unwrap_or(""));
        let wanted = group == ParamGroup::Adapter || (self.include_routing && group == ParamGroup::Routing);
        if !wanted {
            return;
        }
        let n: usize = param.shape().num_elements();
        match self.grads.get::<B::InnerBackend, D>(param.id) {
            Some(g) => self.values.extend(g.into_data().iter::<f32>()),
            // A parameter the task's loss does not reach (another task's routing row only) has zero gradient.
            None => self.values.extend(std::iter::repeat_n(0.0, n)),
        }
    }
}

/// Gradients of each task's batch (deterministic routing), flattened over the adapter parameters (and
/// the routing logits when `include_routing`), then their pairwise cosines.
pub fn gradient_alignment<B: AutodiffBackend>(
    model: &T5ForConditionalGeneration<B>,
    tasks: &[(String, Vec<EncodedExample>)],
    include_routing: bool,
) -> Result<GradientAlignment, TrainError>
where
    T5ForConditionalGeneration<B>: AutodiffModule<B>,
{
    let mut flat = Vec::with_capacity(tasks.len());
    for (_, examples) in tasks {
        let (batch, _) = seq2seq_batch(model, examples)?;
        let ctx = RoutingContext::new(batch.task_ids, RoutingMode::Deterministic);
        let out = model.forward(batch.input_ids, batch.attention_mask, batch.labels, &ctx)?;
        let grads = GradientsParams::from_grads(out.loss.backward(), model);
        let mut v = Flatten {
            grads: &grads,
            include_routing,
            path: Vec::new(),
            values: Vec::new(),
        };
        model.visit(&mut v);
        flat.push(v.values);
    }
    let n = flat.len();
    let cosine: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| cosine(&flat[i], &flat[j])).collect())
        .collect();
    let pairs: Vec<f64> = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| cosine[i][j])
        .collect();
    let mean_off_diagonal = if pairs.is_empty() {
        1.0
    } else {
        pairs.iter().sum::<f64>() / pairs.len() as f64
    };
    Ok(GradientAlignment {
        tasks: tasks.iter().map(|(t, _)| t.clone()).collect(),
        cosine,
        mean_off_diagonal,
    })
}
