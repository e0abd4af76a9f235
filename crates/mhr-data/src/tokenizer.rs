//! Text ↔ ids: a HF `tokenizer.json` (T5's SentencePiece Unigram, which appends `</s>`) through the
//! `tokenizers` crate, and a dependency-free ByT5-style byte tokenizer for presets that ship no
//! tokenizer file. Both sit behind [`TextTokenizer`] so that encoders and batchers need not care.

use std::path::Path;

use crate::error::{DataError, Result};

/// What the data pipeline needs from a tokenizer.
pub trait TextTokenizer: Send + Sync {
    /// Encodes `text`; with `add_eos` the end-of-sequence id is appended (T5's post-processor).
    fn encode(&self, text: &str, add_eos: bool) -> Result<Vec<u32>>;
    /// Decodes `ids`, skipping special tokens (pad, eos, unk).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// Number of ids the tokenizer can produce.
    fn vocab_size(&self) -> usize;
    /// The padding id (also T5's decoder start id).
    fn pad_id(&self) -> u32;
    /// The end-of-sequence id.
    fn eos_id(&self) -> u32;
}

/// Cuts `ids` to at most `max_len`, keeping a final eos in place as HF's truncation does (the text
/// part is shortened, then the special token is appended).
pub fn truncate_ids(ids: &mut Vec<u32>, max_len: usize, eos: u32) {
    if ids.len() <= max_len {
        return;
    }
    let ends_with_eos = ids.last() == Some(&eos);
    ids.truncate(max_len);
    if ends_with_eos && let Some(last) = ids.last_mut() {
        *last = eos;
    }
}

/// A HF `tokenizer.json` (e.g. T5's), with its own padding and truncation switched off: the encoder
/// and batchers of this crate do both.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    eos_id: u32,
}

impl HfTokenizer {
    /// Loads `tokenizer.json`; it must define `<pad>` and `</s>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer {
            message: format!("{}: {e}", path.display()),
        })?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| DataError::Tokenizer {
            message: format!("{}: {e}", path.display()),
        })?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| DataError::Tokenizer {
                message: format!("{}: no `{token}` token", path.display()),
            })
        };
        let (pad_id, eos_id) = (id("<pad>")?, id("</s>")?);
        Ok(Self {
            inner,
            pad_id,
            eos_id,
        })
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_eos: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_eos)
            .map_err(|e| DataError::Tokenizer {
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| DataError::Tokenizer {
            message: e.to_string(),
        })
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }

    fn eos_id(&self) -> u32 {
        self.eos_id
    }
}

/// ByT5's byte-level scheme without a vocabulary file: pad 0, eos 1, unk 2, byte `b` → `b + 3`.
/// It emits ids `0..259`; ByT5 checkpoints have 384 embeddings, the rest being unused sentinels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    const PAD: u32 = 0;
    const EOS: u32 = 1;
    const OFFSET: u32 = 3;
}

impl TextTokenizer for ByteTokenizer {
    fn encode(&self, text: &str, add_eos: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = text.bytes().map(|b| u32::from(b) + Self::OFFSET).collect();
        if add_eos {
            ids.push(Self::EOS);
        }
        Ok(ids)
    }

    /// Special and out-of-range ids are skipped, and so are invalid UTF-8 bytes (ByT5 decodes with
    /// `errors="ignore"`).
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| id.checked_sub(Self::OFFSET).and_then(|b| u8::try_from(b).ok()))
            .collect();
        Ok(bytes.utf8_chunks().map(|chunk| chunk.valid()).collect())
    }

    fn vocab_size(&self) -> usize {
        256 + Self::OFFSET as usize
    }

    fn pad_id(&self) -> u32 {
        Self::PAD
    }

    fn eos_id(&self) -> u32 {
        Self::EOS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_utf8() {
        let tok = ByteTokenizer;
        for text in [
            "",
            "plain ascii",
            "Ünïcödé — “quotes” and emoji 🙂",
            "tab\tnew\nline\0nul",
            "日本語テキスト",
        ] {
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(ids.len(), text.len() + 1);
            assert_eq!(ids.last(), Some(&1));
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        assert_eq!(tok.encode("A", false).unwrap(), vec![65 + 3]);
    }

    #[test]
    fn byte_tokenizer_skips_specials_and_invalid_bytes() {
        let tok = ByteTokenizer;
        // pad, 'h', unk, 0xFF (invalid alone), 'i', eos, a sentinel id beyond the byte range
        assert_eq!(
            tok.decode(&[0, 104 + 3, 2, 255 + 3, 105 + 3, 1, 300]).unwrap(),
            "hi"
        );
    }

    #[test]
    fn truncation_keeps_the_final_eos() {
        let mut ids = vec![5, 6, 7, 8, 1];
        truncate_ids(&mut ids, 3, 1);
        assert_eq!(ids, vec![5, 6, 1]);
        let mut ids = vec![5, 6, 7, 8];
        truncate_ids(&mut ids, 3, 1);
        assert_eq!(ids, vec![5, 6, 7]);
        let mut short = vec![5, 1];
        truncate_ids(&mut short, 3, 1);
        assert_eq!(short, vec![5, 1]);
    }
}
