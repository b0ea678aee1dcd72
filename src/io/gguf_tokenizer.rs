//! The tokenizer of a GGUF input as Hugging Face files, for a safetensors
//! output: a GGUF holds its vocabulary as metadata (`tokenizer.ggml.*`), not
//! as `tokenizer.json`, so an output directory written from one would have no
//! tokenizer at all. For a byte-level BPE vocabulary (`tokenizer.ggml.model`
//! = `gpt2`: SmolLM, Qwen2, Llama 3 ...) this builds `tokenizer.json` and
//! `tokenizer_config.json` (special tokens, `add_bos_token`, chat template)
//! the way transformers' own GGUF loader builds its tokenizer: tokens marked
//! control (type 3) become special added tokens, user-defined ones (type 4)
//! plain added tokens, and the text is split with the regex that
//! `tokenizer.ggml.pre` names (GPT-2's without one). A SentencePiece
//! vocabulary (`llama`: Llama 2, Mistral, TinyLlama) becomes transformers'
//! `LlamaTokenizer`: BPE with byte fallback over `▁`-marked pieces, its
//! merges derived from the scores (see `spm_merges`), BOS added unless the
//! file says not. Gemma's SentencePiece files (own respelling and merge
//! order) are not converted: the caller notes it.

use super::gguf::as_u64;
use candle_core::quantized::gguf_file::{Content, Value as Meta};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Llama 3's split, also used by llama.cpp's `llama-bpe` and others.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split (single digits).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` value, where it is not GPT-2's.
fn split_for(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => Some(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's map from bytes to the printable characters byte-level
/// vocabularies are spelled in.
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

/// `(file name, contents)` of the tokenizer files for the GGUF file at
/// `path` (`tokenizer.json`, `tokenizer_config.json`), or why there are none.
pub fn files(path: &Path) -> Result<Vec<(&'static str, Vec<u8>)>, String> {
    let (tokenizer, config) = build(path)?;
    let pretty = |v: &Value| (serde_json::to_string_pretty(v).unwrap() + "\n").into_bytes();
    Ok(vec![("tokenizer.json", pretty(&tokenizer)), ("tokenizer_config.json", pretty(&config))])
}

/// The tokenizer.json for the GGUF file at `path` (what `fuse eval`
/// tokenizes a GGUF input's text with), or why there is none.
pub fn tokenizer_json(path: &Path) -> Result<Value, String> {
    build(path).map(|(tokenizer, _)| tokenizer)
}

/// tokenizer.json and tokenizer_config.json for the GGUF file at `path`.
fn build(path: &Path) -> Result<(Value, Value), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let content = Content::read(&mut std::io::BufReader::new(file)).map_err(|e| format!("not readable: {e}"))?;
    let meta = &content.metadata;
    let text = |k: &str| meta.get(k).and_then(|v| v.to_string().ok()).cloned();
    let strings = |k: &str| -> Option<Vec<String>> {
        match meta.get(k)? {
            Meta::Array(a) => a.iter().map(|v| v.to_string().ok().cloned()).collect(),
            _ => None,
        }
    };
    let id = |k: &str| meta.get(k).and_then(as_u64).map(|v| v as usize);
    let model = text("tokenizer.ggml.model").ok_or("it has no `tokenizer.ggml.model`")?;
    let arch = text("general.architecture").unwrap_or_default();
    // Gemma's SentencePiece files need their own respelling and merge order.
    let spm = model == "llama" && !arch.starts_with("gemma");
    if model != "gpt2" && !spm {
        return Err(format!(
            "its tokenizer is `{model}` ({arch}); fuse converts byte-level BPE (`gpt2`) and Llama-style \
             SentencePiece (`llama`) vocabularies"
        ));
    }
    let tokens = strings("tokenizer.ggml.tokens").ok_or("it has no `tokenizer.ggml.tokens`")?;
    // A vocabulary of single bytes has no merges, and a writer may leave the key out.
    let merges = strings("tokenizer.ggml.merges").unwrap_or_default();
    let types: Vec<u64> = match meta.get("tokenizer.ggml.token_type") {
        Some(Meta::Array(a)) => a.iter().map(|v| as_u64(v).unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    // In a byte-level vocabulary every real token is spelled in the byte
    // alphabet: one that is not is respelled, and one marked control that
    // is not is a llama.cpp mislabel, not a special token (as transformers).
    let alphabet = byte_alphabet();
    let spelled = |t: &str| spm || t.chars().all(|c| alphabet.contains(&c));
    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = if spelled(t) { t.clone() } else { t.bytes().map(|b| alphabet[b as usize]).collect() };
        vocab.insert(key, json!(i));
    }
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if (*ty == 3 && spelled(t)) || *ty == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3}));
        }
    }
    let flag = |k: &str| meta.get(k).and_then(|v| v.to_bool().ok());
    // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
    let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(spm);
    // BOS, where the file asks for it, by a template (as transformers' own
    // tokenizer classes set it up).
    let bos = id("tokenizer.ggml.bos_token_id").and_then(|i| tokens.get(i).map(|t| (i, t.clone())));
    let bos_processor = match bos.filter(|_| add_bos) {
        Some((i, t)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t.clone(): {"id": t, "ids": [i], "tokens": [t]}}}),
        None => Value::Null,
    };
    let tokenizer = if spm {
        let scores: Vec<f32> = match meta.get("tokenizer.ggml.scores") {
            Some(Meta::Array(a)) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
            _ => return Err("its SentencePiece vocabulary has no `tokenizer.ggml.scores`".into()),
        };
        let unk = id("tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i)).cloned();
        let prepend = if flag("tokenizer.ggml.add_space_prefix").unwrap_or(true) { "first" } else { "never" };
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": prepend, "split": false},
            "post_processor": bos_processor.clone(),
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": if prepend == "first" { 1 } else { 0 }, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": spm_merges(&tokens, &scores)},
        })
    } else {
        let byte_level =
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match text("tokenizer.ggml.pre").as_deref().and_then(split_for) {
            Some(re) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            None => byte_level,
        };
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": bos_processor.clone(),
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        })
    };
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(flag("tokenizer.ggml.add_eos_token").unwrap_or(false)));
    for (name, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ] {
        if let Some(t) = id(&format!("tokenizer.ggml.{key}")).and_then(|i| tokens.get(i)) {
            config.insert(name.into(), json!(t));
        }
    }
    if let Some(t) = text("tokenizer.chat_template") {
        config.insert("chat_template".into(), json!(t));
    }
    Ok((tokenizer, Value::Object(config)))
}

/// The BPE merges a SentencePiece vocabulary implies, as transformers
/// derives them (`generate_merges`): every split of a token into two tokens
/// of the vocabulary, each token's splits in vocabulary order, all ranked by
/// the merged token's score, then the lengths (in characters) of the left
/// and right parts, highest first; equal keys keep their order.
fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<String> {
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t, i);
    }
    // A token listed twice is scored by its last entry.
    let mut score: std::collections::HashMap<&str, f32> = std::collections::HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        score.insert(t, *s);
    }
    let mut seen = std::collections::HashSet::new();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for t in tokens {
        if !seen.insert(t.as_str()) {
            continue;
        }
        let mut local: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                local.push((a, b, l, r));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        let s = score[t.as_str()];
        merges.extend(local.into_iter().map(|(_, _, l, r)| (s, l.chars().count(), r.chars().count(), l, r)));
    }
    merges.sort_by(|a, b| (b.0, b.1, b.2).partial_cmp(&(a.0, a.1, a.2)).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(_, _, _, l, r)| format!("{l} {r}")).collect()
}
