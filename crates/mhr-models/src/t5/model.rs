use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;
use burn::tensor::module::embedding;
use mhr_core::{
    AdaptedLinear, AdapterHost, GroupMap, IGNORE_INDEX, ParamGroup, RoutingContext, SharedRouters, to_dtype,
};

use crate::config::{T5Config, check_dropout_rate};
use crate::error::ModelError;
use crate::generation::DecoderCache;
use crate::loader::{CONFIG_FILE, Checkpoint, Init, RandomInit, WEIGHTS_FILE, WeightSource};
use crate::precision::Precision;
use crate::t5::attention::frozen;
use crate::t5::stack::{MASKED, T5Stack};

/// T5 with its language-model head, as transformers' `T5ForConditionalGeneration`.
///
/// Every linear layer of the blocks is an [`AdaptedLinear`] adapter site named by its HF module path; task ids
/// reach each site through the [`RoutingContext`] of the call. Base parameters are created frozen (PEFT is the
/// normal use); unfreeze them with `mhr_core::TrainableSet` for full fine-tuning. Routers shared by groups of
/// sites (a routing granularity coarser than per layer) live here once, not in the sites.
#[derive(Module, Debug)]
pub struct T5ForConditionalGeneration<B: Backend> {
    /// `[vocab, d_model]`: token embeddings of both stacks, and the head when tied.
    pub shared: Param<Tensor<B, 2>>,
    pub encoder: T5Stack<B>,
    pub decoder: T5Stack<B>,
    /// Untied head in Burn's `[d_model, vocab]` layout (HF's `lm_head.weight` transposed); `None` when tied.
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    /// One router per group of sites that share routing; empty with per-layer routing.
    pub shared_routers: SharedRouters<B>,
    config: T5Config,
}

/// The encoder's output with its padding mask: what the decoder needs, computed once per input batch.
#[derive(Debug, Clone)]
pub struct EncoderOutput<B: Backend> {
    last_hidden_state: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
    /// `[b, 1, 1, s]`: 0 for real tokens, -1e9 for padding; `None` when no token is padding (adding zeros
    /// changes nothing, and costs a pass over every attention score).
    mask_bias: Option<Tensor<B, 4>>,
}

impl<B: Backend> EncoderOutput<B> {
    /// `[b, s, d_model]`, after the encoder's final layer norm.
    pub fn last_hidden_state(&self) -> &Tensor<B, 3> {
        &self.last_hidden_state
    }

    /// `[b, s]`, 1 for real tokens and 0 for padding.
    pub fn attention_mask(&self) -> &Tensor<B, 2, Int> {
        &self.attention_mask
    }

    pub fn batch_size(&self) -> usize {
        self.last_hidden_state.dims()[0]
    }

    /// Repeats every row `k` times in place (`[a, a, b, b]`), to decode `k` beams or answer choices per input
    /// without re-encoding it; pair with [`RoutingContext::expand`].
    pub fn repeat_interleave(&self, k: usize) -> Self {
        let b = self.batch_size();
        let rows: Vec<i64> = (0..b as i64).flat_map(|i| std::iter::repeat_n(i, k)).collect();
        self.select(Tensor::<B, 1, Int>::from_data(
            TensorData::new(rows, [b * k]),
            &self.last_hidden_state.device(),
        ))
    }

    /// Keeps the rows `rows`, in that order (finished sequences leaving a decoding batch); pair with
    /// [`RoutingContext::select`].
    pub fn select(&self, rows: Tensor<B, 1, Int>) -> Self {
        Self {
            last_hidden_state: self.last_hidden_state.clone().select(0, rows.clone()),
            attention_mask: self.attention_mask.clone().select(0, rows.clone()),
            mask_bias: self.mask_bias.as_ref().map(|m| m.clone().select(0, rows)),
        }
    }
}

/// Teacher-forced outputs, laid out as the fixtures and `mhr score` write them.
#[derive(Debug, Clone)]
pub struct Seq2SeqLmOutput<B: Backend> {
    /// `[b, t, vocab]`
    pub logits: Tensor<B, 3>,
    /// `[1]`: mean cross entropy over the labels that are not [`IGNORE_INDEX`] (NaN when there are none, as in PyTorch).
    pub loss: Tensor<B, 1>,
    /// `[b]`: per-example sum of the labels' log-probabilities, the rank-classification score.
    pub label_loglik_sum: Tensor<B, 1>,
    /// `[b, s, d_model]`
    pub encoder_last_hidden_state: Tensor<B, 3>,
}

impl<B: Backend> T5ForConditionalGeneration<B> {
    /// Loads `config.json` and `model.safetensors` (or the shards of `model.safetensors.index.json`; without
    /// safetensors, `pytorch_model.bin` or the shards of `pytorch_model.bin.index.json`) from a HuggingFace
    /// checkpoint folder, one tensor at a time; bf16/f16 weights become f32.
    ///
    /// Every parameter must be present with its shape, and every tensor of the files must be used, except
    /// copies of tied weights (`encoder.embed_tokens`, `decoder.embed_tokens`, and `lm_head` when tied).
    pub fn load(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self, ModelError> {
        Self::load_as(dir, Precision::F32, device)
    }

    /// [`Self::load`] with the base weights in `precision`, each converted as it is read (a bf16 checkpoint
    /// is never held in f32 as a whole); refused on a backend that cannot compute in it.
    pub fn load_as(
        dir: impl AsRef<Path>,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        precision.check::<B>(device)?;
        let dir = dir.as_ref();
        let config = T5Config::load(dir.join(CONFIG_FILE))?;
        let mut checkpoint = Checkpoint::open(dir, device, precision.dtype())?;
        let model = Self::build(&mut checkpoint, config)?;
        let embedding_shape = vec![model.config.vocab_size, model.config.d_model];
        let mut copies = vec![
            ("encoder.embed_tokens.weight", embedding_shape.clone()),
            ("decoder.embed_tokens.weight", embedding_shape.clone()),
        ];
        if model.config.tie_word_embeddings {
            copies.push(("lm_head.weight", embedding_shape));
        }
        checkpoint.finish(&copies)?;
        Ok(model)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` as transformers' `save_pretrained` does: the base
    /// weights under their HF names and layouts, in their dtype (tied embeddings once, as `shared.weight`).
    /// [`Self::load`] reads them back, and so does transformers. Adapters are not part of it (a peft folder holds
    /// them); a site with an adapter merged into its weight is refused, its weight not being the base one.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        let dir = dir.as_ref();
        let mut tensors = vec![("shared.weight".to_string(), self.shared.val().into_data())];
        if let Some(head) = &self.lm_head {
            tensors.push(("lm_head.weight".into(), head.val().transpose().into_data()));
        }
        let mut merged = None;
        self.for_each_site(|path, site| {
            merged = merged.take().or(site.merged().map(|_| path.to_string()));
            tensors.push((
                format!("{path}.weight"),
                site.weight.val().transpose().into_data(),
            ));
        });
        if let Some(path) = merged {
            return Err(ModelError::InvalidInput {
                name: "model",
                reason: format!(
                    "{path} has its adapter merged into the weight; unmerge it before saving the base"
                ),
            });
        }
        for (prefix, stack) in [("encoder", &self.encoder), ("decoder", &self.decoder)] {
            tensors.extend(stack.named_norms_and_biases(prefix));
        }
        std::fs::create_dir_all(dir).map_err(|e| ModelError::Config {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let config = serde_json::to_vec_pretty(&self.config).map_err(|e| ModelError::Config {
            path: dir.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        mhr_core::io::write_safetensors(dir.join(WEIGHTS_FILE), tensors, Some(metadata))?;
        mhr_core::io::write_atomic(dir.join(CONFIG_FILE), &config)?;
        Ok(())
    }

    /// A randomly initialised model with transformers' initialisation (for tests and in-process toy models).
    pub fn new(config: &T5Config, device: &B::Device) -> Result<Self, ModelError> {
        Self::new_as(config, Precision::F32, device)
    }

    /// [`Self::new`] with the base weights in `precision`: the same draws, each tensor converted as it is made,
    /// so that a bf16 model of T5-XL size never needs its f32 copy in memory.
    pub fn new_as(config: &T5Config, precision: Precision, device: &B::Device) -> Result<Self, ModelError> {
        precision.check::<B>(device)?;
        config.validate().map_err(|reason| ModelError::InvalidInput {
            name: "config",
            reason,
        })?;
        let dtype = precision.dtype();
        Self::build(&mut RandomInit { device, dtype }, config.clone())
    }

    fn build<S: WeightSource<B>>(src: &mut S, config: T5Config) -> Result<Self, ModelError> {
        let kind = config.feed_forward().map_err(|reason| ModelError::InvalidInput {
            name: "config",
            reason,
        })?;
        let (vocab, d, factor) = (config.vocab_size, config.d_model, config.initializer_factor);
        let shared = src.tensor_any(
            &[
                "shared.weight",
                "encoder.embed_tokens.weight",
                "decoder.embed_tokens.weight",
            ],
            [vocab, d],
            Init::Normal { std: factor },
        )?;
        let encoder = T5Stack::build(src, "encoder", &config, kind, false)?;
        let decoder = T5Stack::build(src, "decoder", &config, kind, true)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(frozen(src.linear("lm_head.weight", d, vocab, factor)?))
        };
        Ok(Self {
            shared: frozen(shared),
            encoder,
            decoder,
            lm_head,
            shared_routers: SharedRouters::default(),
            config,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The dtype of the base weights and activations.
    pub fn precision(&self) -> Precision {
        match self.shared.val().dtype() {
            DType::BF16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }

    /// The model with its base weights (not its adapters or routers) cast to `precision`.
    pub fn with_precision(self, precision: Precision) -> Result<Self, ModelError> {
        precision.check::<B>(&self.shared.device())?;
        Ok(ParamGroup::map_params(self, BaseCast(precision.dtype())))
    }

    /// The model with T5's dropout at `rate` at every site (`config.json`'s `dropout_rate` overridden, for
    /// one training stage, say). Burn's `Dropout` acts only under an autodiff backend: in training, as
    /// transformers' in `train()` mode.
    pub fn with_dropout_rate(mut self, rate: f64) -> Result<Self, ModelError> {
        check_dropout_rate(rate).map_err(|reason| ModelError::InvalidInput {
            name: "dropout_rate",
            reason,
        })?;
        self.config.dropout_rate = rate;
        let dropout = self.config.dropout();
        self.encoder.set_dropout(&dropout);
        self.decoder.set_dropout(&dropout);
        Ok(self)
    }

    /// Runs the encoder on `input_ids: [b, s]` with `attention_mask: [b, s]` (1 = token, 0 = padding).
    pub fn encode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
    ) -> Result<EncoderOutput<B>, ModelError> {
        let mask_bias = self.encoder_mask_bias(&input_ids, &attention_mask, ctx)?;
        let last_hidden_state =
            self.encoder
                .encode(self.embed(input_ids), mask_bias.as_ref(), &self.with_routers(ctx));
        Ok(EncoderOutput {
            last_hidden_state,
            attention_mask,
            mask_bias,
        })
    }

    /// Checks the encoder's inputs and routing; `[b, 1, 1, s]`: 0 for real tokens, -1e9 for padding, `None`
    /// when nothing is padding.
    pub(crate) fn encoder_mask_bias(
        &self,
        input_ids: &Tensor<B, 2, Int>,
        attention_mask: &Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
    ) -> Result<Option<Tensor<B, 4>>, ModelError> {
        let [b, _] = self.check_tokens("input_ids", input_ids, false)?;
        if attention_mask.dims() != input_ids.dims() {
            return Err(ModelError::InputShape {
                name: "attention_mask",
                expected: format!("{:?} (the shape of input_ids)", input_ids.dims()),
                found: attention_mask.dims().to_vec(),
            });
        }
        let mask_values = host_ints(attention_mask);
        if let Some(&v) = mask_values.iter().find(|v| **v != 0 && **v != 1) {
            return Err(ModelError::InvalidInput {
                name: "attention_mask",
                reason: format!("holds {v}, not 0 or 1"),
            });
        }
        self.check_routing(ctx, b)?;
        let s = attention_mask.dims()[1];
        let dtype = self.shared.val().dtype();
        Ok(mask_values.contains(&0).then(|| {
            let bias = (attention_mask.clone().float().neg() + 1.0).reshape([b, 1, 1, s]) * MASKED;
            to_dtype(bias, dtype)
        }))
    }

    /// Decoder logits `[b, t, vocab]` for `decoder_input_ids: [b, t]` (starting with `decoder_start_token_id`).
    pub fn decode(
        &self,
        encoder: &EncoderOutput<B>,
        decoder_input_ids: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
    ) -> Result<Tensor<B, 3>, ModelError> {
        self.check_decoder_batch("decoder_input_ids", &decoder_input_ids, encoder.batch_size())?;
        self.check_tokens("decoder_input_ids", &decoder_input_ids, false)?;
        self.check_routing(ctx, encoder.batch_size())?;
        Ok(self.decode_step(encoder, decoder_input_ids, &mut DecoderCache::new(), ctx))
    }

    /// Logits `[b, t, vocab]` for the next `t` positions after those in `cache`, which grows by `t`.
    pub(crate) fn decode_step(
        &self,
        encoder: &EncoderOutput<B>,
        tokens: Tensor<B, 2, Int>,
        cache: &mut DecoderCache<B>,
        ctx: &RoutingContext<B>,
    ) -> Tensor<B, 3> {
        let hidden = self.decoder.decode(
            self.embed(tokens),
            &encoder.last_hidden_state,
            encoder.mask_bias.as_ref(),
            cache,
            &self.with_routers(ctx),
        );
        self.lm_logits(hidden)
    }

    /// The call's context with the model's shared routers, for the sites that route through them.
    pub(crate) fn with_routers(&self, ctx: &RoutingContext<B>) -> RoutingContext<B> {
        ctx.clone().with_shared_routers(&self.shared_routers)
    }

    /// Teacher-forced scoring of `labels: [b, t]` ([`IGNORE_INDEX`] = ignored) given an encoded batch.
    pub fn score(
        &self,
        encoder: &EncoderOutput<B>,
        labels: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
    ) -> Result<Seq2SeqLmOutput<B>, ModelError> {
        self.check_labels(&labels, encoder.batch_size(), ctx)?;
        let logits = self.decode_step(
            encoder,
            self.shift_right(labels.clone()),
            &mut DecoderCache::new(),
            ctx,
        );
        let (loss, label_loglik_sum) = label_scores(logits.clone(), labels);
        Ok(Seq2SeqLmOutput {
            logits,
            loss,
            label_loglik_sum,
            encoder_last_hidden_state: encoder.last_hidden_state.clone(),
        })
    }

    /// Encoder, then teacher-forced decoder on `labels` shifted right: logits, loss and per-example
    /// log-likelihood in one pass.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        labels: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
    ) -> Result<Seq2SeqLmOutput<B>, ModelError> {
        let encoder = self.encode(input_ids, attention_mask, ctx)?;
        self.score(&encoder, labels, ctx)
    }

    /// Decoder inputs for `labels`: `decoder_start_token_id`, then the labels without the last, with
    /// [`IGNORE_INDEX`] replaced by the pad token (transformers' `_shift_right`).
    pub fn shift_right(&self, labels: Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [b, t] = labels.dims();
        let start = Tensor::full([b, 1], self.config.decoder_start_token_id, &labels.device());
        let shifted = labels.slice([0..b, 0..t - 1]);
        let shifted = shifted
            .clone()
            .mask_fill(shifted.equal_elem(IGNORE_INDEX), self.config.pad_token_id);
        Tensor::cat(vec![start, shifted], 1)
    }

    pub(crate) fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        embedding(self.shared.val(), ids)
    }

    /// Tied head: `shared` after scaling by `d_model^-0.5` (T5 v1.0); untied: `lm_head`, unscaled.
    pub(crate) fn lm_logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = hidden.dims();
        let hidden = hidden.reshape([b * t, d]);
        let logits = match &self.lm_head {
            Some(head) => hidden.matmul(head.val()),
            // The scale applied in f32 (as torch applies a scalar to bf16), so it is not rounded to bf16.
            None => {
                let dtype = hidden.dtype();
                let scaled = to_dtype(to_dtype(hidden, DType::F32) * (d as f64).powf(-0.5), dtype);
                scaled.matmul(self.shared.val().transpose())
            }
        };
        logits.reshape([b, t, self.config.vocab_size])
    }

    /// Checks a `[b, t]` token tensor: non-empty, ids in the vocabulary (or [`IGNORE_INDEX`] when allowed).
    fn check_tokens(
        &self,
        name: &'static str,
        ids: &Tensor<B, 2, Int>,
        allow_ignore: bool,
    ) -> Result<[usize; 2], ModelError> {
        let dims = ids.dims();
        if dims.contains(&0) {
            return Err(ModelError::InputShape {
                name,
                expected: "[batch ≥ 1, length ≥ 1]".into(),
                found: dims.to_vec(),
            });
        }
        let vocab_size = self.config.vocab_size;
        let bad = |id: &i64| !((0..vocab_size as i64).contains(id) || (allow_ignore && *id == IGNORE_INDEX));
        match host_ints(ids).iter().find(|id| bad(id)) {
            Some(&id) => Err(ModelError::TokenOutOfRange { name, id, vocab_size }),
            None => Ok(dims),
        }
    }

    /// Checks decoder-side tokens against the encoder's `batch` size.
    fn check_decoder_batch(
        &self,
        name: &'static str,
        ids: &Tensor<B, 2, Int>,
        batch: usize,
    ) -> Result<(), ModelError> {
        if ids.dims()[0] != batch {
            return Err(ModelError::InputShape {
                name,
                expected: format!("[{batch}, length] (the encoder's batch)"),
                found: ids.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Checks teacher-forcing `labels` for an encoded batch of `batch` rows routed by `ctx`.
    pub(crate) fn check_labels(
        &self,
        labels: &Tensor<B, 2, Int>,
        batch: usize,
        ctx: &RoutingContext<B>,
    ) -> Result<(), ModelError> {
        self.check_decoder_batch("labels", labels, batch)?;
        self.check_tokens("labels", labels, true)?;
        self.check_routing(ctx, batch)
    }

    /// Routed adapters need a task id per example (`batch` a multiple of their number), each below the
    /// routers' task count unless the router falls back to uniform routing for unknown tasks.
    pub(crate) fn check_routing(&self, ctx: &RoutingContext<B>, batch: usize) -> Result<(), ModelError> {
        let mut routed = false;
        // The smallest task count among routers that refuse unknown tasks.
        let mut n_tasks: Option<usize> = None;
        let mut fewest_tasks = usize::MAX;
        let mut missing = None;
        self.for_each_site(|_, site| {
            let slot = match (&site.adapter, site.merged()) {
                (Some(adapter), None) => adapter.router(),
                _ => None,
            };
            let Some(slot) = slot else {
                return;
            };
            let router = match self.shared_routers.resolve(slot) {
                Ok(router) => router,
                Err(e) => {
                    missing = Some(e);
                    return;
                }
            };
            routed = true;
            fewest_tasks = fewest_tasks.min(router.n_tasks());
            if !router.config.unknown_task_fallback {
                n_tasks = Some(n_tasks.map_or(router.n_tasks(), |n| n.min(router.n_tasks())));
            }
        });
        if let Some(e) = missing {
            return Err(e.into());
        }
        if !routed {
            return Ok(());
        }
        let Some(ids) = ctx.task_ids() else {
            return Err(ModelError::InvalidInput {
                name: "task_ids",
                reason: "the model has routed adapters but the routing context has no task ids".into(),
            });
        };
        let n = ids.dims()[0];
        if n == 0 || !batch.is_multiple_of(n) {
            return Err(ModelError::InputShape {
                name: "task_ids",
                expected: format!("[n] with n dividing the batch of {batch}"),
                found: vec![n],
            });
        }
        let limit = n_tasks.map_or(i64::MAX, |n| n as i64);
        match host_ints(ids).into_iter().find(|id| *id < 0 || *id >= limit) {
            Some(id) => Err(ModelError::TaskOutOfRange {
                id,
                n_tasks: n_tasks.unwrap_or(fewest_tasks),
            }),
            None => Ok(()),
        }
    }
}

/// Sites are the linear layers of the blocks, named by their HF module paths.
impl<B: Backend> AdapterHost<B> for T5ForConditionalGeneration<B> {
    fn map_each_site<E>(
        self,
        mut f: impl FnMut(&str, AdaptedLinear<B>) -> Result<AdaptedLinear<B>, E>,
    ) -> Result<Self, E> {
        let encoder = self.encoder.map_sites("encoder", &mut f)?;
        let decoder = self.decoder.map_sites("decoder", &mut f)?;
        Ok(Self {
            encoder,
            decoder,
            ..self
        })
    }

    fn shared_routers(&self) -> &SharedRouters<B> {
        &self.shared_routers
    }

    fn with_shared_routers(self, shared_routers: SharedRouters<B>) -> Self {
        Self {
            shared_routers,
            ..self
        }
    }
}

/// Casts the float parameters of [`ParamGroup::Base`] (not the adapters or routing logits) to its dtype.
struct BaseCast(DType);

impl<B: Backend> GroupMap<B> for BaseCast {
    fn map<const D: usize>(&mut self, group: ParamGroup, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if group != ParamGroup::Base {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, to_dtype(tensor, self.0), mapper)
    }
}

/// Mean cross entropy `[1]` and per-example summed log-likelihood `[b]` of `labels` under `logits`, in f32
/// whatever the logits' dtype.
pub(crate) fn label_scores<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let logits = to_dtype(logits, DType::F32);
    let [b, t, _] = logits.dims();
    let ignored = labels.clone().equal_elem(IGNORE_INDEX);
    let targets = labels.mask_fill(ignored.clone(), 0).unsqueeze_dim(2);
    let valid = ignored.bool_not().float();
    let picked = log_softmax(logits, 2).gather(2, targets).reshape([b, t]) * valid.clone();
    let loglik_sum = picked.clone().sum_dim(1).reshape([b]);
    let loss = picked.sum().neg() / valid.sum();
    (loss, loglik_sum)
}

/// An integer tensor's values on the host, for validation.
pub(crate) fn host_ints<B: Backend, const D: usize>(t: &Tensor<B, D, Int>) -> Vec<i64> {
    t.to_data().iter::<i64>().collect()
}
