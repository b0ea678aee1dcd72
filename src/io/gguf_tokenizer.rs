//! A tokenizer.json from a GGUF file's metadata, for byte-level BPE
//! vocabularies (`tokenizer.ggml.model = "gpt2"`: GPT-2, SmolLM, Llama 3,
//! Qwen2), built as transformers' `integrations/gguf` builds it: the
//! vocabulary (spelled in the byte alphabet), the merges, control tokens as
//! special added tokens and user-defined ones as plain added tokens, a
//! byte-level pre-tokenizer (with Llama 3's or Qwen2's split where
//! `tokenizer.ggml.pre` names them), and a BOS when `add_bos_token` says so.
//! Other vocabularies (SentencePiece) are refused: a tokenizer.json beside
//! the file serves them.

use candle_core::quantized::gguf_file::{Content, Value as Meta};
use serde_json::{json, Value};
use std::path::Path;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex of a `tokenizer.ggml.pre` (None: GPT-2's byte-level regex).
fn split_of(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's map from bytes to the printable characters byte-level vocabularies are spelled in.
fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    out
}

/// tokenizer.json for the GGUF file at `path`; `Err` says why there is none.
pub fn tokenizer_json(path: &Path) -> Result<Value, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
    let content = Content::read(&mut f).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let meta = |k: &str| content.metadata.get(&format!("tokenizer.ggml.{k}"));
    let string = |k: &str| meta(k).and_then(|v| v.to_string().ok()).cloned();
    let model = string("model").ok_or("the file has no tokenizer metadata")?;
    if model != "gpt2" {
        return Err(format!("its `{model}` vocabulary (SentencePiece) is not rebuilt from GGUF metadata"));
    }
    let strings = |k: &str| -> Vec<String> {
        match meta(k) {
            Some(Meta::Array(a)) => a.iter().filter_map(|v| v.to_string().ok().cloned()).collect(),
            _ => Vec::new(),
        }
    };
    let tokens = strings("tokens");
    let merges = strings("merges");
    let types: Vec<i64> = match meta("token_type") {
        Some(Meta::Array(a)) => a.iter().map(|v| v.to_i32().map(i64::from).unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let alphabet = byte_alphabet();
    let spelled = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = if spelled(t) { t.clone() } else { t.bytes().map(|b| alphabet[b as usize]).collect() };
        vocab.insert(key, i.into());
    }
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        // 3: control (special; a byte-level one spelled otherwise is a mislabel), 4: user-defined.
        let special = *ty == 3 && spelled(t);
        if special || *ty == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": false, "special": special}));
        }
    }
    let byte_level =
        |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let pre = string("pre").unwrap_or_default();
    let pre_tokenizer = match split_of(&pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        None => byte_level(true),
    };
    let bos = meta("bos_token_id").and_then(|v| v.to_u32().ok()).map(|i| i as usize);
    let add_bos = matches!(meta("add_bos_token"), Some(Meta::Bool(true)));
    let post_processor = match (add_bos, bos.and_then(|b| tokens.get(b).map(|t| (b, t)))) {
        (true, Some((id, t))) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t.as_str(): {"id": t, "ids": [id], "tokens": [t]}}}),
        _ => Value::Null,
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}
