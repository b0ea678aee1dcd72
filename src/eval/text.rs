//! The evaluation text: tokenized with the model's tokenizer.json, and cut
//! into windows.
//!
//! Windows are non-overlapping runs of `context` tokens (stride = context,
//! as in transformers' "perplexity of fixed-length models" with
//! `stride == max_length`); the last window may be shorter and is kept when
//! it has at least two tokens. Each window is run on its own, from position
//! 0. Within a window every token but the first is scored, given the tokens
//! before it in that window: the first token of each window is context only.
//! So `n` tokens in `w` windows score `n - w` tokens.
//!
//! Bits per byte charge each scored token the bytes from the end of the
//! previous token to its own end (its text plus any whitespace or bytes the
//! tokenizer dropped before it), so the bytes counted are those of the text
//! the scored tokens cover.

use std::ops::Range;
use std::path::PathBuf;

/// A tokenized text.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The bytes each token accounts for (see the module's docs).
    pub bytes: Vec<usize>,
}

/// Where a tokenizer comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A tokenizer.json file.
    File(PathBuf),
    /// tokenizer.json text built from a GGUF file's metadata (`io::gguf_tokenizer`).
    Gguf(PathBuf, String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "`{}`", p.display()),
            Source::Gguf(p, _) => write!(f, "the metadata of `{}`", p.display()),
        }
    }
}

/// Tokenizes `text` with `source`, adding special tokens as the tokenizer's
/// post-processor says (transformers' default), and keeping at most
/// `max_tokens`.
pub fn tokenize(source: &Source, text: &str, max_tokens: Option<usize>) -> Result<Tokens, String> {
    let tok = match source {
        Source::File(p) => tokenizers::Tokenizer::from_file(p),
        Source::Gguf(_, json) => json.parse::<tokenizers::Tokenizer>(),
    }
    .map_err(|e| format!("cannot load the tokenizer from {source}: {e}"))?;
    let enc = tok.encode(text, true).map_err(|e| format!("cannot tokenize with {source}: {e}"))?;
    let mut ids = enc.get_ids().to_vec();
    let mut bytes = Vec::with_capacity(ids.len());
    let mut end = 0;
    for &(_, e) in enc.get_offsets() {
        let e = e.max(end);
        bytes.push(e - end);
        end = e;
    }
    if let Some(n) = max_tokens {
        ids.truncate(n);
        bytes.truncate(n);
    }
    Ok(Tokens { ids, bytes })
}

/// The windows over `n` tokens (see the module's docs).
pub fn windows(n: usize, context: usize) -> Vec<Range<usize>> {
    (0..n).step_by(context.max(2)).map(|s| s..(s + context.max(2)).min(n)).filter(|r| r.len() >= 2).collect()
}

/// Tokens and bytes scored over these windows.
pub fn scored(tokens: &Tokens, windows: &[Range<usize>]) -> (usize, usize) {
    let n = windows.iter().map(|w| w.len() - 1).sum();
    let b = windows.iter().map(|w| tokens.bytes[w.start + 1..w.end].iter().sum::<usize>()).sum();
    (n, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_do_not_overlap_and_keep_a_last_short_one() {
        assert_eq!(windows(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(windows(9, 4), vec![0..4, 4..8]);
        assert_eq!(windows(8, 4), vec![0..4, 4..8]);
        let t = Tokens { ids: vec![0; 10], bytes: (1..=10).collect() };
        // Scored: tokens 1..4, 5..8 and 9, charged 2+3+4, 6+7+8 and 10 bytes.
        assert_eq!(scored(&t, &windows(10, 4)), (7, 40));
    }
}
