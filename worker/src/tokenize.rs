//! Text tokenization: the model's CLIP BPE tokenizer, 77 tokens, padded with
//! the end-of-text id.
//!
//! The tokenizer is the Hugging Face `tokenizers` crate (pure Rust) loading the
//! model directory's `tokenizer.json`, built from the model's own vocabulary and
//! merges, with an NFKC normalizer (measured to agree with the Python
//! `CLIPTokenizer` the model was trained with, full-width characters included).
//!
//! Truncation and padding are set here, not trusted from the file: sequences are
//! cut to the context length keeping the start and end tokens (the managed
//! service: "anything past 77 tokens is cut off"), and padded with 49407 with a
//! zero attention mask, as `CLIPTokenizer(padding="max_length")` does.

use std::path::Path;

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

/// End-of-text id of the CLIP vocabulary, also used for padding.
pub const END_OF_TEXT: i64 = 49407;

/// Texts longer than this many non-whitespace characters are cut before
/// tokenizing: no BPE token is longer than a few dozen characters, so the first
/// 77 tokens always lie well inside this prefix, and a multi-megabyte text
/// cannot make the tokenizer burn CPU on words that will be discarded.
const MAX_SIGNIFICANT_CHARS: usize = 8192;

/// Why the tokenizer could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer from {path}: {reason}")]
    Load {
        /// File path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Tokenization failed (should not happen for valid UTF-8).
    #[error("tokenization failed")]
    Encode,
}

/// A loaded tokenizer with fixed truncation and padding.
#[derive(derive_more::Debug)]
pub struct TextTokenizer {
    #[debug(skip)]
    inner: Tokenizer,
    context_length: usize,
}

/// Token ids and attention masks of a batch, row-major `[n, context_length]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for real tokens (start and end included), 0 for padding.
    pub attention_mask: Vec<i64>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and fixes truncation and padding to `context_length`.
    pub fn load(path: &Path, context_length: usize) -> Result<Self, TokenizeError> {
        let load_err = |reason: String| TokenizeError::Load {
            path: path.display().to_string(),
            reason,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| load_err(e.to_string()))?;
        let pad_token = inner
            .id_to_token(END_OF_TEXT as u32)
            .ok_or_else(|| load_err(format!("vocabulary has no id {END_OF_TEXT} (end of text)")))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: END_OF_TEXT as u32,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            inner,
            context_length,
        })
    }

    /// The fixed sequence length.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Tokenizes one text into `context_length` ids and mask values.
    pub fn encode_into(&self, text: &str, out: &mut Tokens) -> Result<(), TokenizeError> {
        let enc = self
            .inner
            .encode(significant_prefix(text), true)
            .map_err(|_| TokenizeError::Encode)?;
        let ids = enc.get_ids();
        let mask = enc.get_attention_mask();
        if ids.len() != self.context_length || mask.len() != self.context_length {
            return Err(TokenizeError::Encode);
        }
        out.input_ids.extend(ids.iter().map(|&i| i64::from(i)));
        out.attention_mask
            .extend(mask.iter().map(|&m| i64::from(m)));
        Ok(())
    }

    /// Tokenizes a batch.
    pub fn encode_batch<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Tokens, TokenizeError> {
        let mut out = Tokens {
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
        };
        for t in texts {
            self.encode_into(t, &mut out)?;
        }
        Ok(out)
    }
}

/// The prefix of `text` holding its first [`MAX_SIGNIFICANT_CHARS`]
/// non-whitespace characters.
fn significant_prefix(text: &str) -> &str {
    let mut seen = 0usize;
    for (i, c) in text.char_indices() {
        if !c.is_whitespace() {
            seen += 1;
            if seen > MAX_SIGNIFICANT_CHARS {
                return &text[..i];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_cut_is_char_safe() {
        let s = "é".repeat(MAX_SIGNIFICANT_CHARS + 10);
        let p = significant_prefix(&s);
        assert_eq!(p.chars().count(), MAX_SIGNIFICANT_CHARS);
        assert_eq!(significant_prefix("a b c"), "a b c");
    }
}
