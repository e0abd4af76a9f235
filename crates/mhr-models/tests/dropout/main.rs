//! T5's dropout against a forward pass transcribed here from transformers' `modeling_t5.py`, which applies
//! the same masks at the sites where transformers applies dropout; activation checkpointing, which must draw
//! the same masks twice (`checkpointing.rs`).
//!
//! One site at a time gets p = 0.5; the model and the transcription draw their masks from the backend after
//! the same seed. Burn's backend RNG is process-global, so these tests have a binary of their own and take
//! turns.

mod checkpointing;
#[path = "../integration/common.rs"]
mod common;

use std::sync::Mutex;

use burn::module::AutodiffModule;
use burn::nn::DropoutConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::embedding;
use common::*;
use mhr_core::RoutingContext;
use mhr_models::T5ForConditionalGeneration;
use mhr_models::t5::{
    RelativePositionBias, T5Attention, T5Block, T5DenseReluDense, T5LayerCrossAttention, T5LayerFF, T5Stack,
};

static RNG: Mutex<()> = Mutex::new(());

const P: f64 = 0.5;
const SEED: u64 = 7;

type Model = T5ForConditionalGeneration<Grad>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    Encoder,
    Decoder,
}

/// Where transformers calls a dropout module (per block: the block's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    /// `T5Stack.dropout(inputs_embeds)`; the same module as [`Site::StackOutput`].
    Embeddings,
    /// `T5Attention`: `dropout(attn_weights)` of self-attention.
    SelfWeights(usize),
    /// `T5LayerSelfAttention`: `hidden + dropout(attention_output)`.
    SelfOutput(usize),
    CrossWeights(usize),
    /// `T5LayerCrossAttention`: `hidden + dropout(attention_output)`.
    CrossOutput(usize),
    /// `T5DenseActDense` / `T5DenseGatedActDense`: `dropout` before `wo`.
    FfHidden(usize),
    /// `T5LayerFF`: `hidden + dropout(forwarded_states)`.
    FfOutput(usize),
    /// `T5Stack.dropout(final_layer_norm(hidden))`.
    StackOutput,
}

/// transformers' forward pass, reading the model's weights, with dropout at `active` sites.
struct Transcribed<'a> {
    model: &'a Model,
    active: Vec<(Stack, Site)>,
}

impl Transcribed<'_> {
    fn drop<const D: usize>(&self, stack: Stack, site: Site, x: Tensor<Grad, D>) -> Tensor<Grad, D> {
        if !self.active.contains(&(stack, site)) {
            return x;
        }
        let keep = Tensor::random(x.shape(), Distribution::Bernoulli(1.0 - P), &x.device());
        x * keep * (1.0 / (1.0 - P))
    }

    /// `T5Attention` without a cache: queries from `x`, keys and values from `kv`, `bias` `[b, h, t, s]`.
    fn attention(
        &self,
        (stack, site): (Stack, Site),
        attention: &T5Attention<Grad>,
        x: Tensor<Grad, 3>,
        kv: Tensor<Grad, 3>,
        bias: Tensor<Grad, 4>,
    ) -> Tensor<Grad, 3> {
        let ctx = RoutingContext::untasked();
        let h = attention.num_heads;
        let shape = |x: Tensor<Grad, 3>| {
            let [b, t, inner] = x.dims();
            x.reshape([b, t, h, inner / h]).swap_dims(1, 2)
        };
        let q = shape(attention.q.forward(x, &ctx));
        let k = shape(attention.k.forward(kv.clone(), &ctx));
        let v = shape(attention.v.forward(kv, &ctx));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)) + bias, 3);
        let weights = self.drop(stack, site, weights);
        let out = weights.matmul(v).swap_dims(1, 2);
        let [b, t, _, d] = out.dims();
        let out = out.reshape([b, t, h * d]);
        attention.o.forward(out, &ctx)
    }

    /// `T5LayerSelfAttention` of block `i`.
    fn self_attention(
        &self,
        stack: Stack,
        i: usize,
        block: &T5Block<Grad>,
        x: Tensor<Grad, 3>,
        bias: &Tensor<Grad, 4>,
    ) -> Tensor<Grad, 3> {
        let layer = &block.self_attention;
        let normed = layer.layer_norm.forward(x.clone());
        let out = self.attention(
            (stack, Site::SelfWeights(i)),
            &layer.attention,
            normed.clone(),
            normed,
            bias.clone(),
        );
        x + self.drop(stack, Site::SelfOutput(i), out)
    }

    fn ff(&self, stack: Stack, i: usize, layer: &T5LayerFF<Grad>, x: Tensor<Grad, 3>) -> Tensor<Grad, 3> {
        let ctx = RoutingContext::untasked();
        let normed = layer.layer_norm.forward(x.clone());
        let out = match &layer.dense_relu_dense {
            T5DenseReluDense::Act(m) => {
                let hidden = relu(m.wi.forward(normed, &ctx));
                m.wo.forward(self.drop(stack, Site::FfHidden(i), hidden), &ctx)
            }
            T5DenseReluDense::Gated(m) => {
                let hidden = gelu_new(m.wi_0.forward(normed.clone(), &ctx)) * m.wi_1.forward(normed, &ctx);
                m.wo.forward(self.drop(stack, Site::FfHidden(i), hidden), &ctx)
            }
        };
        x + self.drop(stack, Site::FfOutput(i), out)
    }

    fn logits(
        &self,
        input_ids: Tensor<Grad, 2, Int>,
        attention_mask: Tensor<Grad, 2, Int>,
        labels: Tensor<Grad, 2, Int>,
    ) -> Tensor<Grad, 3> {
        let model = self.model;
        let [b, s] = input_ids.dims();
        let h = model.config().num_heads;
        let padding = (attention_mask.float().neg() + 1.0).reshape([b, 1, 1, s]) * -1e9;
        let embed = |ids| embedding(model.shared.val(), ids);

        let (stack, enc) = (Stack::Encoder, &model.encoder);
        let position = first_bias(enc).forward(0, s, s).expand([b, h, s, s]);
        let bias = position + padding.clone().expand([b, h, s, s]);
        let mut x = self.drop(stack, Site::Embeddings, embed(input_ids));
        for (i, block) in enc.block.iter().enumerate() {
            x = self.self_attention(stack, i, block, x, &bias);
            x = self.ff(stack, i, &block.ff, x);
        }
        let encoded = self.drop(stack, Site::StackOutput, enc.final_layer_norm.forward(x));

        let (stack, dec) = (Stack::Decoder, &model.decoder);
        let decoder_input = model.shift_right(labels);
        let t = decoder_input.dims()[1];
        let causal: Vec<f32> = (0..t)
            .flat_map(|q| (0..t).map(move |k| if k > q { -1e9 } else { 0.0 }))
            .collect();
        let causal = Tensor::<Grad, 4>::from_data(TensorData::new(causal, [1, 1, t, t]), &Default::default());
        let self_bias = first_bias(dec).forward(0, t, t).expand([b, h, t, t]) + causal.expand([b, h, t, t]);
        let cross_bias = padding.expand([b, h, t, s]);
        let mut x = self.drop(stack, Site::Embeddings, embed(decoder_input));
        for (i, block) in dec.block.iter().enumerate() {
            x = self.self_attention(stack, i, block, x, &self_bias);
            let layer = block.cross_attention.as_ref().expect("a decoder block");
            let normed = layer.layer_norm.forward(x.clone());
            let out = self.attention(
                (stack, Site::CrossWeights(i)),
                &layer.attention,
                normed,
                encoded.clone(),
                cross_bias.clone(),
            );
            x = x + self.drop(stack, Site::CrossOutput(i), out);
            x = self.ff(stack, i, &block.ff, x);
        }
        let x = self.drop(stack, Site::StackOutput, dec.final_layer_norm.forward(x));
        let d = model.config().d_model;
        match &model.lm_head {
            Some(head) => x.matmul(head.val().unsqueeze()),
            None => (x * (d as f64).powf(-0.5)).matmul(model.shared.val().transpose().unsqueeze()),
        }
    }
}

fn first_bias(stack: &T5Stack<Grad>) -> &RelativePositionBias<Grad> {
    stack.block[0]
        .self_attention
        .attention
        .relative_attention_bias
        .as_ref()
        .expect("the first block holds the position bias")
}

/// transformers' `NewGELUActivation`.
fn gelu_new(x: Tensor<Grad, 3>) -> Tensor<Grad, 3> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powf_scalar(3.0) * 0.044715) * c;
    x * 0.5 * (inner.tanh() + 1.0)
}

/// `model` with dropout p = [`P`] at one module: `site` of `stack` (the stack's embedding and output dropout
/// are one module, as in transformers).
fn with_one_site(mut model: Model, stack: Stack, site: Site) -> Model {
    let dropout = DropoutConfig::new(P).init();
    let layers = match stack {
        Stack::Encoder => &mut model.encoder,
        Stack::Decoder => &mut model.decoder,
    };
    match site {
        Site::Embeddings | Site::StackOutput => layers.dropout = dropout,
        Site::SelfWeights(i) => layers.block[i].self_attention.attention.dropout = dropout,
        Site::SelfOutput(i) => layers.block[i].self_attention.dropout = dropout,
        Site::CrossWeights(i) => cross(&mut layers.block[i]).attention.dropout = dropout,
        Site::CrossOutput(i) => cross(&mut layers.block[i]).dropout = dropout,
        Site::FfHidden(i) => match &mut layers.block[i].ff.dense_relu_dense {
            T5DenseReluDense::Act(m) => m.dropout = dropout,
            T5DenseReluDense::Gated(m) => m.dropout = dropout,
        },
        Site::FfOutput(i) => layers.block[i].ff.dropout = dropout,
    }
    model
}

fn cross(block: &mut T5Block<Grad>) -> &mut T5LayerCrossAttention<Grad> {
    block.cross_attention.as_mut().expect("a decoder block")
}

fn check_sites(name: &str) {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let reference = Reference::open(name);
    let device = Default::default();
    let model = Model::load(fixture(name), &device).unwrap();
    let inputs = || {
        (
            reference.ints::<Grad, 2>("input_ids"),
            reference.ints::<Grad, 2>("attention_mask"),
            reference.ints::<Grad, 2>("labels"),
        )
    };
    let transcribed = |active: Vec<(Stack, Site)>| {
        let (ids, mask, labels) = inputs();
        Transcribed {
            model: &model,
            active,
        }
        .logits(ids, mask, labels)
        .into_data()
    };
    // The transcription is T5: without dropout it gives transformers' logits.
    let plain = transcribed(Vec::new());
    assert_close(
        &format!("{name} transcription"),
        plain.clone(),
        reference.data("logits"),
        1e-4,
    );

    let mut sites = vec![
        (Stack::Encoder, Site::Embeddings),
        (Stack::Decoder, Site::Embeddings),
    ];
    for stack in [Stack::Encoder, Stack::Decoder] {
        let n = match stack {
            Stack::Encoder => model.encoder.block.len(),
            Stack::Decoder => model.decoder.block.len(),
        };
        for i in 0..n {
            sites.extend(
                [
                    Site::SelfWeights(i),
                    Site::SelfOutput(i),
                    Site::FfHidden(i),
                    Site::FfOutput(i),
                ]
                .map(|s| (stack, s)),
            );
            if stack == Stack::Decoder {
                sites.extend([Site::CrossWeights(i), Site::CrossOutput(i)].map(|s| (stack, s)));
            }
        }
    }
    for (stack, site) in sites {
        let active = match site {
            Site::Embeddings | Site::StackOutput => {
                vec![(stack, Site::Embeddings), (stack, Site::StackOutput)]
            }
            _ => vec![(stack, site)],
        };
        let one = with_one_site(model.clone(), stack, site);
        let (ids, mask, labels) = inputs();
        Grad::seed(&device, SEED);
        let ours = one
            .forward(ids, mask, labels, &RoutingContext::untasked())
            .unwrap()
            .logits
            .into_data();
        Grad::seed(&device, SEED);
        let theirs = transcribed(active);
        let what = format!("{name} {stack:?} {site:?}");
        assert!(
            max_abs_diff(theirs.clone(), plain.clone()) > 1e-3,
            "{what}: the mask changes the logits"
        );
        assert_close(&what, ours, theirs, 1e-4);
    }
}

#[test]
fn v1_1_dropout_sites_are_transformers() {
    check_sites("t5-v1_1");
}

#[test]
fn v1_0_dropout_sites_are_transformers() {
    check_sites("t5-v1_0");
}

/// The model's logits on the fixture's batch.
fn fixture_logits<B: Backend>(model: &T5ForConditionalGeneration<B>, reference: &Reference) -> TensorData {
    let out = model.forward(
        reference.ints("input_ids"),
        reference.ints("attention_mask"),
        reference.ints("labels"),
        &RoutingContext::untasked(),
    );
    out.unwrap().logits.into_data()
}

/// `config.json`'s rate reaches the model: in training the encoder's last dropout zeroes that fraction of its
/// output (binomial, within 4 standard deviations); in evaluation nothing is dropped.
#[test]
fn config_rate_drops_its_fraction_in_training_only() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let rate = 0.3;
    let dir = tempfile::tempdir().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("t5-v1_1").join("config.json")).unwrap()).unwrap();
    config["dropout_rate"] = rate.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture("t5-v1_1").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let device = Default::default();
    let model = Model::load(dir.path(), &device).unwrap();
    assert_eq!(model.config().dropout_rate, rate);
    let reference = Reference::open("t5-v1_1");

    assert_close(
        "evaluation logits",
        fixture_logits(&model.valid(), &reference),
        reference.data("logits"),
        1e-4,
    );

    let (mut zeros, mut n) = (0usize, 0usize);
    for seed in 0..10 {
        Grad::seed(&device, seed);
        let encoded = model
            .encode(
                reference.ints("input_ids"),
                reference.ints("attention_mask"),
                &RoutingContext::untasked(),
            )
            .unwrap();
        let values = encoded.last_hidden_state().to_data();
        zeros += values.iter::<f32>().filter(|v| *v == 0.0).count();
        n += values.num_elements();
    }
    let (expected, sd) = (n as f64 * rate, (n as f64 * rate * (1.0 - rate)).sqrt());
    assert!(
        (zeros as f64 - expected).abs() < 4.0 * sd,
        "{zeros} of {n} zeroed, expected {expected:.0} ± {sd:.0}"
    );

    // Overridden to 0: training draws nothing and is the evaluation forward.
    let off = model.with_dropout_rate(0.0).unwrap();
    assert_close(
        "logits without dropout",
        fixture_logits(&off, &reference),
        reference.data("logits"),
        1e-4,
    );
    assert!(off.with_dropout_rate(1.0).is_err());
}
