//! `config.json` of a HuggingFace T5 checkpoint, read as written by `save_pretrained`.

use std::path::Path;

use burn::nn::{Dropout, DropoutConfig};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The fields of HF's `T5Config` that shape the model; unknown fields are ignored.
///
/// The dimensions have no defaults: a checkpoint without them is broken, and falling back to t5-small's
/// numbers would hide it. The other fields default as in transformers 4.x.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head; `num_heads * d_kv` need not equal `d_model`.
    pub d_kv: usize,
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers; `num_layers` when absent.
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "defaults::num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "defaults::layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// The probability of T5's dropout, at transformers' sites (embeddings, attention weights, each sub-layer's
    /// output, the FFN's hidden layer, each stack's output); it acts in training only.
    #[serde(default = "defaults::dropout_rate")]
    pub dropout_rate: f64,
    /// Scales the standard deviations of the random initialisation ([`crate::T5ForConditionalGeneration::new`]).
    #[serde(default = "defaults::initializer_factor")]
    pub initializer_factor: f64,
    /// `relu`, `gated-gelu`, `gated-silu`, ...: `[gated-]<activation>`, as transformers parses it.
    #[serde(default = "defaults::feed_forward_proj")]
    pub feed_forward_proj: String,
    /// Tied: the head is `shared` and the decoder output is scaled by `d_model^-0.5` (T5 v1.0);
    /// untied: a separate `lm_head`, no scaling (v1.1, LM-adapt, T0).
    #[serde(default = "defaults::yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: i64,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: i64,
    /// Required: transformers refuses to shift labels without it.
    pub decoder_start_token_id: i64,
}

mod defaults {
    pub fn num_buckets() -> usize {
        32
    }
    pub fn max_distance() -> usize {
        128
    }
    pub fn layer_norm_epsilon() -> f64 {
        1e-6
    }
    pub fn dropout_rate() -> f64 {
        0.1
    }
    pub fn initializer_factor() -> f64 {
        1.0
    }
    pub fn feed_forward_proj() -> String {
        "relu".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn eos_token_id() -> i64 {
        1
    }
}

/// A dropout probability a model can train with: in [0, 1) (1 would drop everything and scale by infinity).
pub fn check_dropout_rate(rate: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("must be in [0, 1), found {rate}"))
    }
}

/// The FFN nonlinearity, named as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU: transformers' `gelu`.
    Gelu,
    /// tanh-approximated GELU: `gelu_new` (what `gated-gelu` means) and `gelu_pytorch_tanh`.
    GeluTanh,
    /// `silu` / `swish`.
    Silu,
}

/// The FFN layout: `wo(act(wi x))`, or `wo(act(wi_0 x) * wi_1 x)` when gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForwardKind {
    pub activation: Activation,
    pub gated: bool,
}

impl T5Config {
    /// Reads and validates `config.json`; errors name the file and the missing or invalid field.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| {
            ModelError::Core(mhr_core::CoreError::Io {
                path: path.to_path_buf(),
                error: source,
            })
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate().map_err(|reason| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }

    /// Checks what the model needs beyond the JSON types; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon < 0.0 {
            return Err(format!(
                "layer_norm_epsilon must be non-negative, found {}",
                self.layer_norm_epsilon
            ));
        }
        check_dropout_rate(self.dropout_rate).map_err(|reason| format!("dropout_rate {reason}"))?;
        for (name, id) in [
            ("pad_token_id", self.pad_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if id < 0 || id as usize >= self.vocab_size {
                return Err(format!(
                    "{name} = {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        self.feed_forward().map(|_| ())
    }

    /// T5's dropout module at `dropout_rate`, one per site.
    pub(crate) fn dropout(&self) -> Dropout {
        DropoutConfig::new(self.dropout_rate).init()
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Width of the concatenated attention heads.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Parses `feed_forward_proj` as transformers' `T5Config.__init__` does.
    pub fn feed_forward(&self) -> Result<FeedForwardKind, String> {
        let invalid = || {
            format!(
                "feed_forward_proj = `{}` is not `gated-{{ACT}}` or `{{ACT}}` with ACT one of relu, gelu, \
                 gelu_new, gelu_pytorch_tanh, silu, swish",
                self.feed_forward_proj
            )
        };
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let gated = parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !gated) {
            return Err(invalid());
        }
        // transformers keeps `gated-gelu` as the tanh approximation for backward compatibility.
        let name = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            parts[parts.len() - 1]
        };
        let activation = match name {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => return Err(invalid()),
        };
        Ok(FeedForwardKind { activation, gated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<T5Config, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"vocab_size": 10, "d_model": 8, "d_kv": 2, "d_ff": 16, "num_layers": 1, "num_heads": 4,
                "decoder_start_token_id": 0, "unknown_field": [1, 2] {extra}}}"#
        ))
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = config("").unwrap();
        assert!(c.tie_word_embeddings);
        assert_eq!(c.decoder_layers(), 1);
        assert_eq!(
            (
                c.relative_attention_num_buckets,
                c.relative_attention_max_distance
            ),
            (32, 128)
        );
        assert_eq!((c.pad_token_id, c.eos_token_id), (0, 1));
        assert_eq!(c.dropout_rate, 0.1);
        assert_eq!(
            c.feed_forward(),
            Ok(FeedForwardKind {
                activation: Activation::Relu,
                gated: false
            })
        );
    }

    #[test]
    fn feed_forward_proj_is_parsed_like_transformers() {
        let kind = |s: &str| {
            config(&format!(r#", "feed_forward_proj": "{s}""#))
                .unwrap()
                .feed_forward()
        };
        assert_eq!(
            kind("gated-gelu"),
            Ok(FeedForwardKind {
                activation: Activation::GeluTanh,
                gated: true
            })
        );
        assert_eq!(
            kind("gelu"),
            Ok(FeedForwardKind {
                activation: Activation::Gelu,
                gated: false
            })
        );
        assert_eq!(
            kind("gated-silu"),
            Ok(FeedForwardKind {
                activation: Activation::Silu,
                gated: true
            })
        );
        assert!(kind("fancy-gelu").is_err());
        assert!(kind("gated-gelu-x").is_err());
        assert!(kind("tanh").is_err());
    }

    #[test]
    fn dropout_rate_outside_zero_to_one_is_refused_by_name() {
        for rate in ["1.0", "-0.1", "1.5"] {
            let c = config(&format!(r#", "dropout_rate": {rate}"#)).unwrap();
            let e = c.validate().unwrap_err();
            assert!(e.starts_with("dropout_rate must be in [0, 1)"), "{e}");
        }
        assert_eq!(config(r#", "dropout_rate": 0.0"#).unwrap().validate(), Ok(()));
    }
}
