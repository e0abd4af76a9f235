//! Greedy and beam-search decoding with an incremental key/value cache, following transformers 4.x
//! `generate` for encoder–decoders: the encoder runs once; the decoder runs one token per step, reusing the
//! cached self-attention keys/values of earlier positions and the cross-attention keys/values of the
//! encoder output (computed on the first step).

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::log_softmax;
use mhr_core::{RoutingContext, to_dtype};

use crate::error::ModelError;
use crate::t5::{EncoderOutput, T5ForConditionalGeneration};

/// Keys and values `[b, heads, t, d_kv]` of one decoder layer.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerCache<B: Backend> {
    self_attention: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    cross_attention: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> LayerCache<B> {
    /// Appends this step's self-attention keys and values; returns those of all positions so far.
    pub(crate) fn append_self_attention(
        &mut self,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let kv = match self.self_attention.take() {
            Some((past_k, past_v)) => (Tensor::cat(vec![past_k, k], 2), Tensor::cat(vec![past_v, v], 2)),
            None => (k, v),
        };
        self.self_attention = Some(kv.clone());
        kv
    }

    /// The cross-attention keys and values, computed by `project` on first use (the encoder output is fixed).
    pub(crate) fn cross_attention(
        &mut self,
        project: impl FnOnce() -> (Tensor<B, 4>, Tensor<B, 4>),
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.cross_attention.get_or_insert_with(project).clone()
    }

    fn select(self, rows: &Tensor<B, 1, Int>) -> Self {
        let pick = |kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>| {
            kv.map(|(k, v)| (k.select(0, rows.clone()), v.select(0, rows.clone())))
        };
        Self {
            self_attention: pick(self.self_attention),
            cross_attention: pick(self.cross_attention),
        }
    }
}

/// The decoder's key/value cache over the positions decoded so far.
#[derive(Debug, Clone)]
pub(crate) struct DecoderCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    len: usize,
}

impl<B: Backend> DecoderCache<B> {
    pub(crate) fn new() -> Self {
        Self {
            layers: Vec::new(),
            len: 0,
        }
    }

    /// Positions cached.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn layers_mut(&mut self, n: usize) -> &mut [LayerCache<B>] {
        if self.layers.len() < n {
            self.layers.resize_with(n, LayerCache::default);
        }
        &mut self.layers[..n]
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Keeps the rows `rows` of every cached tensor, in that order (beam search's reordering).
    pub(crate) fn select(&mut self, rows: Tensor<B, 1, Int>) {
        self.layers = std::mem::take(&mut self.layers)
            .into_iter()
            .map(|l| l.select(&rows))
            .collect();
    }
}

/// Decoding settings with transformers' meaning. Beam search always stops early (`early_stopping=True`):
/// a row is done once it holds `num_beams` finished hypotheses.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 1: greedy search; more: beam search.
    pub num_beams: usize,
    /// Finished hypotheses are ranked by `sum log p / generated_length^length_penalty`.
    pub length_penalty: f32,
    /// Decode incrementally with the key/value cache; `false` re-runs the decoder over the whole prefix at
    /// every step (slower, the same tokens).
    pub use_cache: bool,
}

impl GenerationConfig {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            num_beams: 1,
            length_penalty: 1.0,
            use_cache: true,
        }
    }

    pub fn beam(max_new_tokens: usize, num_beams: usize) -> Self {
        Self {
            num_beams,
            ..Self::greedy(max_new_tokens)
        }
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.num_beams == 0 {
            return Err(ModelError::InvalidInput {
                name: "num_beams",
                reason: "must be at least 1".into(),
            });
        }
        if !self.length_penalty.is_finite() {
            return Err(ModelError::InvalidInput {
                name: "length_penalty",
                reason: format!("must be finite, found {}", self.length_penalty),
            });
        }
        Ok(())
    }
}

/// Next-token logits for a batch of growing sequences, with or without the cache.
struct Decoding<'a, B: Backend> {
    model: &'a T5ForConditionalGeneration<B>,
    encoder: EncoderOutput<B>,
    ctx: RoutingContext<B>,
    /// `None`: re-run the decoder over each full prefix.
    cache: Option<DecoderCache<B>>,
}

impl<B: Backend> Decoding<'_, B> {
    /// Logits `[n, vocab]` of the token after each of the `n` equally long `sequences`.
    fn next_logits(&mut self, sequences: &[&[i64]]) -> Tensor<B, 2> {
        let device = self.encoder.last_hidden_state().device();
        let mut fresh = DecoderCache::new();
        let (tokens, cache): (Vec<&[i64]>, _) = match &mut self.cache {
            Some(cache) => (sequences.iter().map(|s| &s[s.len() - 1..]).collect(), cache),
            None => (sequences.to_vec(), &mut fresh),
        };
        let logits = self.model.decode_step(
            &self.encoder,
            tokens_tensor(&tokens, 0, &device),
            cache,
            &self.ctx,
        );
        let [n, t, v] = logits.dims();
        // In f32 whatever the model's dtype, as transformers' `generate`.
        to_dtype(logits.slice([0..n, t - 1..t, 0..v]).reshape([n, v]), DType::F32)
    }

    /// Row `i` of the next step continues row `cached[i]` of this one's cache (beam search's reordering); with
    /// `rows`, the batch keeps only those rows of its encoder output and routing (finished sequences leave it).
    fn select(&mut self, cached: &[usize], rows: Option<&[usize]>) {
        let device = self.encoder.last_hidden_state().device();
        let indices = |rows: &[usize]| {
            let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), &device)
        };
        if let Some(cache) = &mut self.cache {
            cache.select(indices(cached));
        }
        if let Some(rows) = rows {
            let rows = indices(rows);
            self.encoder = self.encoder.select(rows.clone());
            self.ctx = self.ctx.select(rows).keeping_mixed_adapters();
        }
    }
}

/// `[rows, longest]` token ids, shorter rows right-padded with `pad`.
fn tokens_tensor<B: Backend>(rows: &[impl AsRef<[i64]>], pad: i64, device: &B::Device) -> Tensor<B, 2, Int> {
    let width = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let data: Vec<i64> = rows
        .iter()
        .map(AsRef::as_ref)
        .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(pad, width - r.len())))
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

/// A finished (or placeholder) beam hypothesis.
#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<i64>,
    score: f32,
    done: bool,
}

/// A continuation of beam `beam` by `token`, with its accumulated log-probability.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    beam: usize,
    token: i64,
    score: f32,
}

/// The `keep` best continuations of a row's beams, best first; `log_probs: [beams · vocab]`.
fn top_candidates(log_probs: &[f32], beam_scores: &[f32], vocab: usize, keep: usize) -> Vec<Candidate> {
    let mut all: Vec<Candidate> = log_probs
        .iter()
        .enumerate()
        .map(|(i, lp)| Candidate {
            beam: i / vocab,
            token: (i % vocab) as i64,
            score: lp + beam_scores[i / vocab],
        })
        .collect();
    let by_score = |a: &Candidate, b: &Candidate| b.score.total_cmp(&a.score);
    if all.len() > keep {
        all.select_nth_unstable_by(keep, by_score);
        all.truncate(keep);
    }
    all.sort_by(by_score);
    all
}

/// Added to the score of a hypothesis that must not be picked (as transformers does).
const EXCLUDED: f32 = -1e9;

impl<B: Backend> T5ForConditionalGeneration<B> {
    /// Greedy or beam search from `input_ids: [b, s]`; returns `[b, ≤ 1 + max_new_tokens]` tokens that start
    /// with `decoder_start_token_id` and are padded with `pad_token_id` after `eos_token_id`.
    pub fn generate(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        ctx: &RoutingContext<B>,
        config: &GenerationConfig,
    ) -> Result<Tensor<B, 2, Int>, ModelError> {
        config.validate()?;
        let encoder = self.encode(input_ids, attention_mask, ctx)?;
        match config.num_beams {
            1 => self.greedy_search(&encoder, ctx, config),
            _ => self.beam_search(&encoder, ctx, config),
        }
    }

    fn decoding(
        &self,
        encoder: EncoderOutput<B>,
        ctx: RoutingContext<B>,
        use_cache: bool,
    ) -> Decoding<'_, B> {
        Decoding {
            model: self,
            encoder,
            // Every step repeats the task ids: the routed sites mix their skills once per call.
            ctx: ctx.keeping_mixed_adapters(),
            cache: use_cache.then(DecoderCache::new),
        }
    }

    /// Picks the most likely token at each step; a row that produced eos leaves the batch and is padded with pad.
    pub fn greedy_search(
        &self,
        encoder: &EncoderOutput<B>,
        ctx: &RoutingContext<B>,
        config: &GenerationConfig,
    ) -> Result<Tensor<B, 2, Int>, ModelError> {
        config.validate()?;
        let b = encoder.batch_size();
        self.check_routing(ctx, b)?;
        let c = self.config();
        let mut decoding = self.decoding(encoder.clone(), ctx.clone(), config.use_cache);
        let mut sequences = vec![vec![c.decoder_start_token_id]; b];
        // The rows still decoding, in the order of the decoding batch.
        let mut open: Vec<usize> = (0..b).collect();
        for _ in 0..config.max_new_tokens {
            let prefixes: Vec<&[i64]> = open.iter().map(|&row| &sequences[row][..]).collect();
            let next = crate::t5::host_ints(&decoding.next_logits(&prefixes).argmax(1));
            for (&row, token) in open.iter().zip(next) {
                sequences[row].push(token);
            }
            let staying: Vec<usize> = (0..open.len())
                .filter(|&i| sequences[open[i]].last() != Some(&c.eos_token_id))
                .collect();
            if staying.is_empty() {
                break;
            }
            if staying.len() < open.len() {
                decoding.select(&staying, Some(&staying));
                open = staying.iter().map(|&i| open[i]).collect();
            }
        }
        Ok(tokens_tensor(
            &sequences,
            c.pad_token_id,
            &encoder.last_hidden_state().device(),
        ))
    }

    /// Beam search with transformers 4.x semantics (`early_stopping=True`): each step keeps the `2·num_beams`
    /// best continuations of a row; those among the first `num_beams` that end in eos (or reach the length
    /// limit) compete for the row's `num_beams` finished slots with score `sum log p / len^length_penalty`,
    /// and the best unfinished `num_beams` continue. A row is done when its slots are full; the best finished
    /// hypothesis is returned, padded with pad; a done row leaves the batch. (transformers 4.57 pads with eos
    /// instead when `pad_token_id` is 0, a bug fixed upstream; the tokens before the padding are the same.)
    pub fn beam_search(
        &self,
        encoder: &EncoderOutput<B>,
        ctx: &RoutingContext<B>,
        config: &GenerationConfig,
    ) -> Result<Tensor<B, 2, Int>, ModelError> {
        config.validate()?;
        let b = encoder.batch_size();
        self.check_routing(ctx, b)?;
        let c = self.config();
        let (k, vocab) = (config.num_beams, c.vocab_size);
        let keep = 2 * k;
        let max_length = 1 + config.max_new_tokens;
        let mut decoding = self.decoding(encoder.repeat_interleave(k), ctx.expand(k), config.use_cache);
        let mut running = vec![vec![c.decoder_start_token_id]; b * k];
        // Only the first beam of a row is live at the start, so the first step does not pick k copies.
        let mut running_scores: Vec<f32> = (0..b * k)
            .map(|i| if i % k == 0 { 0.0 } else { EXCLUDED })
            .collect();
        let placeholder = Hypothesis {
            tokens: Vec::new(),
            score: EXCLUDED,
            done: false,
        };
        let mut finished = vec![vec![placeholder.clone(); k]; b];
        // The rows not done, in the order of the decoding batch (`k` beams each).
        let mut active: Vec<usize> = (0..b).collect();
        let mut cur_len = 1;
        while cur_len < max_length {
            let prefixes: Vec<&[i64]> = running.iter().map(Vec::as_slice).collect();
            let log_probs: Vec<f32> = log_softmax(decoding.next_logits(&prefixes), 1)
                .into_data()
                .iter::<f32>()
                .collect();
            let (mut next_running, mut next_scores, mut origins) = (Vec::new(), Vec::new(), Vec::new());
            let mut every_candidate_stops = true;
            let length = (cur_len as f64).powf(config.length_penalty as f64) as f32;
            for (at, &row) in active.iter().enumerate() {
                let beams = at * k..(at + 1) * k;
                let candidates = top_candidates(
                    &log_probs[at * k * vocab..(at + 1) * k * vocab],
                    &running_scores[beams],
                    vocab,
                    keep,
                );
                let stops: Vec<bool> = candidates
                    .iter()
                    .map(|x| x.token == c.eos_token_id || cur_len + 1 >= max_length)
                    .collect();
                every_candidate_stops &= stops.iter().all(|s| *s);
                let extend = |x: &Candidate| {
                    let mut tokens = running[at * k + x.beam].clone();
                    tokens.push(x.token);
                    tokens
                };

                // The best `k` continuations that did not stop keep running.
                let live = |i: usize| candidates[i].score + if stops[i] { EXCLUDED } else { 0.0 };
                let mut order: Vec<usize> = (0..candidates.len()).collect();
                order.sort_by(|&x, &y| live(y).total_cmp(&live(x)));
                for &i in order.iter().take(k) {
                    next_running.push(extend(&candidates[i]));
                    next_scores.push(live(i));
                    origins.push(at * k + candidates[i].beam);
                }

                // Stopped continuations among the first `k` compete for the finished slots.
                let full = finished[row].iter().all(|h| h.done);
                let mut merged = std::mem::take(&mut finished[row]);
                for (i, x) in candidates.iter().enumerate() {
                    let done = stops[i] && i < k;
                    let excluded = if full { EXCLUDED } else { 0.0 } + if done { 0.0 } else { EXCLUDED };
                    let tokens = if done { extend(x) } else { Vec::new() };
                    merged.push(Hypothesis {
                        tokens,
                        score: x.score / length + excluded,
                        done,
                    });
                }
                merged.sort_by(|x, y| y.score.total_cmp(&x.score));
                merged.truncate(k);
                finished[row] = merged;
            }
            cur_len += 1;
            let staying: Vec<usize> = (0..active.len())
                .filter(|&at| !finished[active[at]].iter().all(|h| h.done))
                .collect();
            if every_candidate_stops || staying.is_empty() {
                running = next_running;
                break;
            }
            if staying.len() == active.len() {
                decoding.select(&origins, None);
                (running, running_scores) = (next_running, next_scores);
            } else {
                let beams: Vec<usize> = staying.iter().flat_map(|&at| at * k..(at + 1) * k).collect();
                let cached: Vec<usize> = beams.iter().map(|&i| origins[i]).collect();
                decoding.select(&cached, Some(&beams));
                running = beams
                    .iter()
                    .map(|&i| std::mem::take(&mut next_running[i]))
                    .collect();
                running_scores = beams.iter().map(|&i| next_scores[i]).collect();
                active = staying.iter().map(|&at| active[at]).collect();
            }
        }
        let best: Vec<Vec<i64>> = finished
            .iter()
            .enumerate()
            .map(|(row, hyps)| match hyps.iter().find(|h| h.done) {
                Some(h) => h.tokens.clone(),
                None => {
                    let at = active
                        .iter()
                        .position(|&r| r == row)
                        .expect("a row not done is active");
                    running[at * k].clone()
                }
            })
            .collect();
        Ok(tokens_tensor(
            &best,
            c.pad_token_id,
            &encoder.last_hidden_state().device(),
        ))
    }
}
