//! Examples → token ids, with the length limits and the source truncation of the prompt format.

use std::sync::Arc;

use crate::error::{DataError, Result};
use crate::task::Example;
use crate::tokenizer::{TextTokenizer, truncate_ids};

/// A tokenised generation example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    /// Source ids, ending in eos.
    pub input_ids: Vec<u32>,
    /// Target ids, ending in eos.
    pub labels: Vec<u32>,
    /// The routing row of the example's task.
    pub task_id: usize,
}

/// A tokenised multiple-choice example: one source, every choice as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChoices {
    /// Source ids, ending in eos.
    pub input_ids: Vec<u32>,
    /// Ids of each choice, ending in eos.
    pub choices: Vec<Vec<u32>>,
    /// Index of the correct choice.
    pub gold: usize,
    /// The routing row of the example's task.
    pub task_id: usize,
}

/// Length limits and truncation of the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Most source ids (eos included).
    pub max_source_len: usize,
    /// Most target ids (eos included).
    pub max_target_len: usize,
    /// Text an over-long source must still end with (mttl's SNI format: `"\nOutput:"`); `None` cuts
    /// the end off.
    pub source_suffix: Option<String>,
}

impl Default for EncoderConfig {
    /// The paper's SNI lengths (1024 / 128), plain truncation.
    fn default() -> Self {
        Self {
            max_source_len: 1024,
            max_target_len: 128,
            source_suffix: None,
        }
    }
}

/// Tokenises examples with one tokenizer and one set of limits.
#[derive(Clone)]
pub struct Encoder {
    tokenizer: Arc<dyn TextTokenizer>,
    config: EncoderConfig,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder; both limits must leave room for at least one token and eos.
    pub fn new(tokenizer: Arc<dyn TextTokenizer>, config: EncoderConfig) -> Result<Self> {
        if config.max_source_len < 2 || config.max_target_len < 2 {
            return Err(DataError::InvalidArgument(format!(
                "length limits must be at least 2, got source {} / target {}",
                config.max_source_len, config.max_target_len
            )));
        }
        Ok(Self { tokenizer, config })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &dyn TextTokenizer {
        self.tokenizer.as_ref()
    }

    /// The limits.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Encodes a source. Over-long text with a `source_suffix` is cut like mttl's collator (decode the
    /// head, append the suffix, encode again), except that room is also left for eos, so that the
    /// result really ends with the suffix; anything still too long is then cut, keeping eos.
    pub fn encode_source(&self, text: &str) -> Result<Vec<u32>> {
        let (tok, max) = (self.tokenizer.as_ref(), self.config.max_source_len);
        let mut ids = tok.encode(text, true)?;
        if ids.len() > max
            && let Some(suffix) = &self.config.source_suffix
        {
            let suffix_len = tok.encode(suffix, false)?.len();
            let head = ids.get(..max.saturating_sub(suffix_len + 1)).unwrap_or_default();
            ids = tok.encode(&(tok.decode(head)? + suffix), true)?;
        }
        truncate_ids(&mut ids, max, tok.eos_id());
        Ok(ids)
    }

    /// Encodes a target, cut to `max_target_len` keeping eos.
    pub fn encode_target(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text, true)?;
        truncate_ids(&mut ids, self.config.max_target_len, self.tokenizer.eos_id());
        Ok(ids)
    }

    /// Encodes a generation example with its training target.
    pub fn encode(&self, example: &Example, task_id: usize) -> Result<EncodedExample> {
        Ok(EncodedExample {
            input_ids: self.encode_source(&example.source)?,
            labels: self.encode_target(example.target())?,
            task_id,
        })
    }

    /// Encodes a multiple-choice example with every choice as a target.
    pub fn encode_choices(&self, example: &Example, task_id: usize) -> Result<EncodedChoices> {
        let answer = example.answer.as_ref().ok_or_else(|| {
            DataError::InvalidArgument(format!("example `{}` has no answer choices", example.id))
        })?;
        Ok(EncodedChoices {
            input_ids: self.encode_source(&example.source)?,
            choices: answer
                .choices
                .iter()
                .map(|c| self.encode_target(c))
                .collect::<Result<_>>()?,
            gold: answer.gold,
            task_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::AnswerChoices;
    use crate::tokenizer::ByteTokenizer;

    fn encoder(max_source_len: usize, suffix: Option<&str>) -> Encoder {
        let config = EncoderConfig {
            max_source_len,
            max_target_len: 4,
            source_suffix: suffix.map(str::to_string),
        };
        Encoder::new(Arc::new(ByteTokenizer), config).unwrap()
    }

    #[test]
    fn over_long_sources_keep_the_suffix() {
        let enc = encoder(16, Some("\nOutput:"));
        let ids = enc
            .encode_source("Input: a very long input text.\nOutput:")
            .unwrap();
        assert_eq!(ids.len(), 16);
        assert_eq!(enc.tokenizer().decode(&ids).unwrap(), "Input: \nOutput:");
        assert_eq!(ids.last(), Some(&1));
        // Short sources are untouched.
        assert_eq!(
            enc.tokenizer()
                .decode(&enc.encode_source("ab\nOutput:").unwrap())
                .unwrap(),
            "ab\nOutput:"
        );
    }

    #[test]
    fn plain_truncation_cuts_the_end_and_keeps_eos() {
        let enc = encoder(5, None);
        let ids = enc.encode_source("abcdefgh").unwrap();
        assert_eq!(enc.tokenizer().decode(&ids).unwrap(), "abcd");
        assert_eq!(ids.len(), 5);
        let ex = Example {
            id: "x".into(),
            source: "s".into(),
            targets: vec!["target".into()],
            answer: Some(AnswerChoices {
                choices: vec!["no".into(), "yes!!".into()],
                gold: 1,
            }),
        };
        let encoded = enc.encode(&ex, 3).unwrap();
        assert_eq!(enc.tokenizer().decode(&encoded.labels).unwrap(), "tar");
        assert_eq!(encoded.task_id, 3);
        let choices = enc.encode_choices(&ex, 3).unwrap();
        assert_eq!(
            choices.choices,
            vec![vec![110 + 3, 111 + 3, 1], vec![121 + 3, 101 + 3, 115 + 3, 1]]
        );
        assert_eq!(choices.gold, 1);
        let no_choices = Example { answer: None, ..ex };
        assert!(matches!(
            enc.encode_choices(&no_choices, 0),
            Err(DataError::InvalidArgument(_))
        ));
        assert!(
            Encoder::new(
                Arc::new(ByteTokenizer),
                EncoderConfig {
                    max_source_len: 1,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
