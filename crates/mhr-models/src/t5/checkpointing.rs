//! Activation checkpointing, as transformers' `gradient_checkpointing`: a training step keeps only the input of
//! each block between forward and backward, and recomputes one block at a time in backward.
//!
//! Burn has no per-function checkpoint, so the step is split by hand into segments (each encoder block, the
//! encoder's final norm, each decoder block, the decoder's final norm with the head and the loss):
//! 1. forward through a copy of the model whose parameters need no gradient, so that no graph is recorded,
//!    keeping each segment's input;
//! 2. from the last segment to the first, forward the segment again from its kept input with the graph, and
//!    backward `Σ output · ∂loss/∂output` (the next segment's input gradient): the parameter gradients of the
//!    segment, summed over segments, and the gradient of its input for the segment before it.
//!
//! Gradients equal the unsplit step's (a parameter used by one segment gets exactly its ops; one shared by
//! several, such as routers shared across layers, sums its parts in another order). Every segment draws its
//! random numbers (dropout, relaxed-Bernoulli routing noise) from `seeds(k)` in both passes, so the
//! recomputation sees the same masks; those streams differ from an unsplit step's.

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mhr_core::RoutingContext;

use crate::error::ModelError;
use crate::generation::LayerCache;
use crate::t5::block::CrossInput;
use crate::t5::model::{Seq2SeqLmOutput, T5ForConditionalGeneration, label_scores};

impl<B: AutodiffBackend> T5ForConditionalGeneration<B> {
    /// One teacher-forced training pass with activation checkpointing (see the module docs): the loss that
    /// `loss` makes of the model's output, what else it returns, and the gradients of that loss.
    ///
    /// Segment `k` (encoder blocks first, the head last) draws its random numbers from `seeds(k)`: the context's
    /// [`mhr_core::Draws`] restarted there, or `B::seed` when it has none.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[b, s]`
    /// - `labels`: `[b, t]`, [`mhr_core::IGNORE_INDEX`] for ignored positions
    pub fn checkpointed_gradients<R, E: From<ModelError>>(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        labels: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
        seeds: impl Fn(usize) -> u64,
        loss: impl FnOnce(Seq2SeqLmOutput<B>) -> Result<(Tensor<B, 1>, R), E>,
    ) -> Result<(Tensor<B, 1>, R, GradientsParams), E> {
        let mask_bias = self.encoder_mask_bias(&input_ids, &attention_mask, ctx)?;
        let [b, s] = input_ids.dims();
        self.check_labels(&labels, b, ctx)?;
        let t = labels.dims()[1];
        let decoder_ids = self.shift_right(labels.clone());
        let device = input_ids.device();
        let seed = |k: usize| match ctx.draws() {
            Some(draws) => draws.restart(seeds(k)),
            None => B::seed(&device, seeds(k)),
        };
        let (n_enc, n_dec) = (self.encoder.block.len(), self.decoder.block.len());
        // Segment numbers: encoder blocks, the encoder's final norm, decoder blocks, the head.
        let (enc_final, dec_first, head) = (n_enc, n_enc + 1, n_enc + 1 + n_dec);

        // Pass 1: the inputs of the segments, without a graph.
        let frozen = self.clone().no_grad();
        let (enc_inputs, enc_last) = {
            let ctx = frozen.with_routers(ctx);
            let bias = frozen.encoder.encoder_bias(s, mask_bias.as_ref());
            seed(0);
            let mut x = frozen.encoder.start(frozen.embed(input_ids.clone()), &ctx);
            // The inputs of blocks 1..; block 0's is recomputed from the tokens (the embeddings may train).
            let mut inputs = Vec::with_capacity(n_enc);
            for (i, block) in frozen.encoder.block.iter().enumerate() {
                if i > 0 {
                    seed(i);
                    inputs.push(x.clone());
                }
                x = block.forward(x, bias.as_ref(), None, &ctx);
            }
            (inputs, x)
        };
        seed(enc_final);
        let encoder_hidden = frozen.encoder.finish(enc_last.clone(), ctx);
        let cross_bias = self.decoder.cross_bias(mask_bias.as_ref(), t);
        let (dec_inputs, dec_last) = {
            let ctx = frozen.with_routers(ctx);
            seed(dec_first);
            let mut x = frozen.decoder.start(frozen.embed(decoder_ids.clone()), &ctx);
            let bias = frozen.decoder.decoder_bias(0, t, &x);
            let mut inputs = Vec::with_capacity(n_dec);
            for (j, block) in frozen.decoder.block.iter().enumerate() {
                if j > 0 {
                    seed(dec_first + j);
                    inputs.push(x.clone());
                }
                let cross = CrossInput {
                    encoder_hidden: &encoder_hidden,
                    bias: cross_bias.as_ref(),
                    cache: &mut LayerCache::default(),
                };
                x = block.forward(x, bias.as_ref(), Some(cross), &ctx);
            }
            (inputs, x)
        };
        drop(frozen);

        // Pass 2, from the head down.
        let mut accumulator = GradientsAccumulator::<Self>::new();
        seed(head);
        let input = dec_last.require_grad();
        let logits = self.lm_logits(self.decoder.finish(input.clone(), ctx));
        let (token_loss, label_loglik_sum) = label_scores(logits.clone(), labels);
        let output = Seq2SeqLmOutput {
            logits,
            loss: token_loss,
            label_loglik_sum,
            encoder_last_hidden_state: encoder_hidden.clone(),
        };
        let (loss, extra) = loss(output)?;
        let [mut grad] = self.backward_segment(&mut accumulator, loss.clone(), [&input]);

        let ctx_graph = self.with_routers(ctx);
        let mut encoder_grad = encoder_hidden.zeros_like().inner();
        for j in (0..n_dec).rev() {
            seed(dec_first + j);
            let hidden = encoder_hidden.clone().require_grad();
            let input = match j {
                0 => self.decoder.start(self.embed(decoder_ids.clone()), ctx),
                _ => dec_inputs[j - 1].clone().require_grad(),
            };
            let bias = self.decoder.decoder_bias(0, t, &input);
            let cross = CrossInput {
                encoder_hidden: &hidden,
                bias: cross_bias.as_ref(),
                cache: &mut LayerCache::default(),
            };
            let output = self.decoder.block[j].forward(input.clone(), bias.as_ref(), Some(cross), &ctx_graph);
            let [input_grad, hidden_grad] =
                self.backward_segment(&mut accumulator, pulled_back(output, grad), [&input, &hidden]);
            grad = input_grad;
            encoder_grad = encoder_grad + hidden_grad;
        }

        seed(enc_final);
        let input = enc_last.require_grad();
        let output = self.encoder.finish(input.clone(), ctx);
        let [mut grad] = self.backward_segment(&mut accumulator, pulled_back(output, encoder_grad), [&input]);
        for i in (0..n_enc).rev() {
            seed(i);
            let input = match i {
                0 => self.encoder.start(self.embed(input_ids.clone()), ctx),
                _ => enc_inputs[i - 1].clone().require_grad(),
            };
            // Built in every segment: a tensor of one segment's graph is spent by its backward.
            let bias = self.encoder.encoder_bias(s, mask_bias.as_ref());
            let output = self.encoder.block[i].forward(input.clone(), bias.as_ref(), None, &ctx_graph);
            [grad] = self.backward_segment(&mut accumulator, pulled_back(output, grad), [&input]);
        }
        Ok((loss.detach(), extra, accumulator.grads()))
    }

    /// Backward of one segment's `objective`: its parameter gradients into `accumulator`, and the gradients
    /// of its `inputs` (zeros for one the objective does not depend on).
    fn backward_segment<const N: usize>(
        &self,
        accumulator: &mut GradientsAccumulator<Self>,
        objective: Tensor<B, 1>,
        inputs: [&Tensor<B, 3>; N],
    ) -> [Tensor<B::InnerBackend, 3>; N] {
        let grads = objective.backward();
        let input_grads =
            inputs.map(|input| input.grad(&grads).unwrap_or_else(|| input.zeros_like().inner()));
        accumulator.accumulate(self, GradientsParams::from_grads(grads, self));
        input_grads
    }
}

/// `Σ output · grad`: its backward hands `grad` (the next segment's input gradient) to `output`.
fn pulled_back<B: AutodiffBackend>(output: Tensor<B, 3>, grad: Tensor<B::InnerBackend, 3>) -> Tensor<B, 1> {
    (output * Tensor::from_inner(grad)).sum()
}
