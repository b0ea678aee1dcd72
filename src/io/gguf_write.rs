//! GGUF output: one llama.cpp file instead of a model directory, for an
//! output path ending in `.gguf`.
//!
//! The header (metadata, then every tensor's GGUF name, dimensions, type and
//! data offset) is planned before anything is computed, so each tensor is
//! encoded and written at its final offset as soon as it is ready. Names and
//! q/k row orders become llama.cpp's (the inverse of what `gguf.rs` undoes);
//! 1-D tensors (norms, biases) stay f32 as llama.cpp's converter keeps them;
//! `q8_0` quantizes 2-D tensors whose rows are a multiple of 32 long and
//! falls back to f16 for other 2-D tensors.
//!
//! Metadata comes from the first GGUF input when there is one (every key but
//! the file type), else from config.json; the layer count and hyperparameters
//! config.json gives are set from it in both cases. The key [`MARK`] records
//! that fuse wrote the file: `--force` replaces a `.gguf` file only when it
//! holds it (see `target.rs`).
//!
//! Like a directory output, the file is written under a hidden partial name
//! (`.NAME.fuse-partial-...`) beside the target and renamed onto it at the end.

use super::writer::OutTensor;
use candle_core::quantized::gguf_file::{Content, Value as Meta};
use serde_json::Value;
use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The metadata key that marks a GGUF file as written by fuse.
pub const MARK: &str = "general.fuse.written_by";

const ALIGN: u64 = 32;

/// The tensor types a GGUF output is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl Quant {
    /// Parses `f32`, `f16`, `bf16` or `q8_0`.
    pub fn parse(s: &str) -> Option<Quant> {
        match s {
            "f32" => Some(Quant::F32),
            "f16" => Some(Quant::F16),
            "bf16" => Some(Quant::BF16),
            "q8_0" => Some(Quant::Q8_0),
            _ => None,
        }
    }

    /// GGML's type code.
    fn code(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 8,
            Quant::BF16 => 30,
        }
    }

    /// Bytes for `n` values (`n` a multiple of 32 for q8_0).
    fn bytes(self, n: usize) -> u64 {
        (match self {
            Quant::F32 => n * 4,
            Quant::F16 | Quant::BF16 => n * 2,
            Quant::Q8_0 => n / 32 * 34,
        }) as u64
    }

    /// llama.cpp's `general.file_type` for a file mostly of this type.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
            Quant::BF16 => 32,
        }
    }
}

/// One tensor of a GGUF output.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub quant: Quant,
    /// Absolute offset of its data in the file.
    pub offset: u64,
    /// llama.cpp's per-head row permutation, with this head count.
    pub heads: Option<usize>,
    /// Added to every value (Gemma's norms).
    pub shift: f32,
}

/// A planned GGUF file: its header bytes and where each tensor goes
/// (`tensors[i]` is output tensor `i`).
#[derive(Clone, Debug)]
pub struct GgufLayout {
    pub header: Vec<u8>,
    pub tensors: Vec<GgufTensor>,
    pub size: u64,
}

/// Plans the GGUF file for output `tensors` (Hugging Face names) of a model
/// with `config` (the output's config.json), taking metadata from the GGUF
/// file `source` when there is one, else from the tokenizer files in the
/// origin model's directory (see [`tokenizer_meta`] and [`chat_meta`]).
pub fn plan(
    tensors: &[OutTensor],
    config: &Value,
    source: Option<&Path>,
    origin_dir: Option<&Path>,
    quant: Quant,
) -> Result<GgufLayout, String> {
    let mut meta: Vec<(String, Meta)> = Vec::new();
    if let Some(src) = source {
        let f = File::open(src).map_err(|e| format!("cannot open `{}`: {e}", src.display()))?;
        let content = Content::read(&mut BufReader::new(f)).map_err(|e| format!("`{}`: {e}", src.display()))?;
        let mut keys: Vec<&String> = content.metadata.keys().collect();
        keys.sort();
        for k in keys {
            if !(k.starts_with("general.fuse.") || k == "general.file_type" || k == "general.alignment") {
                meta.push((k.clone(), content.metadata[k].clone()));
            }
        }
    }
    let get = |k: &str| config.get(k);
    let arch = match meta.iter().find(|(k, _)| k == "general.architecture") {
        Some((_, Meta::String(a))) => a.clone(),
        // llama.cpp's architecture names: one per family, whatever
        // transformers calls the text-only or Mistral variants.
        _ => match get("model_type").and_then(Value::as_str).unwrap_or("") {
            "gemma3_text" => "gemma3".to_string(),
            "mistral" => "llama".to_string(),
            other => other.to_string(),
        },
    };
    if arch.is_empty() {
        return Err("config.json names no `model_type`, so the GGUF architecture is unknown".into());
    }
    let heads = get("num_attention_heads").and_then(Value::as_u64);
    let kv_heads = get("num_key_value_heads").and_then(Value::as_u64).or(heads);
    let mut set = |k: String, v: Meta| match meta.iter_mut().find(|(m, _)| *m == k) {
        Some(slot) => slot.1 = v,
        None => meta.push((k, v)),
    };
    set("general.architecture".into(), Meta::String(arch.clone()));
    set(MARK.into(), Meta::String(format!("fuse {}", env!("CARGO_PKG_VERSION"))));
    set("general.file_type".into(), Meta::U32(quant.file_type()));
    if quant == Quant::Q8_0 {
        set("general.quantization_version".into(), Meta::U32(2));
    }
    let ints = [
        ("max_position_embeddings", "context_length"),
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("intermediate_size", "feed_forward_length"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("head_dim", "attention.key_length"),
        ("head_dim", "attention.value_length"),
        ("sliding_window", "attention.sliding_window"),
        ("vocab_size", "vocab_size"),
    ];
    for (h, g) in ints {
        if let Some(v) = get(h).and_then(Value::as_u64) {
            set(format!("{arch}.{g}"), Meta::U32(v as u32));
        }
    }
    if let Some(v) = get("rms_norm_eps").and_then(Value::as_f64) {
        set(format!("{arch}.attention.layer_norm_rms_epsilon"), Meta::F32(v as f32));
    }
    // transformers 5 moved `rope_theta` into `rope_parameters`, per attention
    // type where there are two (Gemma 3: llama.cpp's base is the global one).
    let rope = get("rope_parameters");
    let theta = get("rope_theta")
        .or_else(|| rope.and_then(|r| r.get("rope_theta")))
        .or_else(|| rope.and_then(|r| r.get("full_attention")).and_then(|r| r.get("rope_theta")));
    if let Some(v) = theta.and_then(Value::as_f64) {
        set(format!("{arch}.rope.freq_base"), Meta::F32(v as f32));
    }
    if source.is_none() {
        for (h, g) in [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")]
        {
            if let Some(v) = get(h).and_then(Value::as_u64) {
                set(g.into(), Meta::U32(v as u32));
            }
        }
    }
    if let (None, Some(dir)) = (source, origin_dir) {
        let vocab_size = get("vocab_size").and_then(Value::as_u64).unwrap_or(0) as usize;
        for (k, v) in tokenizer_meta(dir, vocab_size)? {
            set(k.into(), v);
        }
        for (k, v) in chat_meta(dir) {
            set(k, v);
        }
    }
    let count = |k: &str| match meta.iter().find(|(m, _)| m == &format!("{arch}.{k}")) {
        Some((_, v)) => v.to_u32().ok().map(u64::from).or_else(|| v.to_u64().ok()),
        None => None,
    };
    let heads = heads.or_else(|| count("attention.head_count"));
    let kv_heads = kv_heads.or_else(|| count("attention.head_count_kv")).or(heads);

    let mut infos = Vec::new();
    let mut out = Vec::new();
    let mut off = 0u64;
    for t in tensors {
        let (name, permute, shift) = super::gguf::gguf_name(&arch, &t.name)?
            .ok_or_else(|| format!("tensor `{}` has no GGUF name in a {arch} model that fuse knows", t.name))?;
        let numel: usize = t.shape.iter().product();
        let row = t.shape.last().copied().unwrap_or(1);
        let q = match (t.shape.len(), quant) {
            (0 | 1, _) => Quant::F32,
            (_, Quant::Q8_0) if !row.is_multiple_of(32) => Quant::F16,
            (_, q) => q,
        };
        let heads = match permute {
            Some(true) => heads,
            Some(false) => kv_heads,
            None => None,
        };
        let heads = match (permute, heads) {
            (None, _) => None,
            (Some(_), Some(h)) if h > 0 && t.shape[0].is_multiple_of(2 * h as usize) => Some(h as usize),
            _ => {
                return Err(format!(
                    "tensor `{}` has {} rows, not split evenly over the heads config.json gives",
                    t.name, t.shape[0]
                ))
            }
        };
        infos.push((name.clone(), t.shape.iter().rev().map(|&d| d as u64).collect::<Vec<_>>(), q, off));
        out.push(GgufTensor { name, quant: q, offset: off, heads, shift });
        off += q.bytes(numel).div_ceil(ALIGN) * ALIGN;
    }
    let mut h = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in &meta {
        string(&mut h, k);
        h.extend_from_slice(&type_code(v).to_le_bytes());
        value(&mut h, v)?;
    }
    for (name, dims, q, off) in &infos {
        string(&mut h, name);
        h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| h.extend_from_slice(&d.to_le_bytes()));
        h.extend_from_slice(&q.code().to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
    }
    h.resize((h.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize, 0);
    let start = h.len() as u64;
    out.iter_mut().for_each(|t| t.offset += start);
    Ok(GgufLayout { header: h, tensors: out, size: start + off })
}

/// What a Hugging Face directory says about chat and special tokens, as
/// GGUF metadata: `tokenizer.chat_template` (tokenizer_config.json's
/// `chat_template`, its `default` entry when it lists named templates, else
/// `chat_template.jinja` or `chat_template.json`) and
/// `tokenizer.ggml.add_bos_token` / `add_eos_token`.
fn chat_meta(dir: &Path) -> Vec<(String, Meta)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let config: Value = read("tokenizer_config.json").and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let named = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or(list.first())
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    let template = named(&config["chat_template"]).or_else(|| read("chat_template.jinja")).or_else(|| {
        let v: Value = serde_json::from_str(&read("chat_template.json")?).ok()?;
        named(&v["chat_template"])
    });
    let mut out = Vec::new();
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".to_string(), Meta::String(t)));
    }
    for key in ["add_bos_token", "add_eos_token"] {
        if let Some(b) = config[key].as_bool() {
            out.push((format!("tokenizer.ggml.{key}"), Meta::Bool(b)));
        }
    }
    out
}

/// `tokenizer.ggml.*` for the tokenizer files in `dir`: SentencePiece's
/// `tokenizer.model` unless `tokenizer.json` is byte-level BPE, else the
/// BPE `tokenizer.json`; none without either.
fn tokenizer_meta(dir: &Path, vocab_size: usize) -> Result<Vec<(&'static str, Meta)>, String> {
    let tok: Option<Value> =
        fs::read_to_string(dir.join("tokenizer.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
    let byte_level = tok.as_ref().is_some_and(|t| t["pre_tokenizer"].to_string().contains("ByteLevel"));
    let spm = dir.join("tokenizer.model");
    if !byte_level && spm.is_file() {
        let bytes = fs::read(&spm).map_err(|e| format!("cannot read `{}`: {e}", spm.display()))?;
        let model = super::spm::parse(&bytes).map_err(|e| format!("`{}`: {e}", spm.display()))?;
        return Ok(sentencepiece(&model, tok.as_ref(), vocab_size));
    }
    Ok(tok.as_ref().map(vocab).unwrap_or_default())
}

/// `tokenizer.ggml.*` for a SentencePiece vocabulary, as llama.cpp's
/// converter writes it: pieces with their scores and types, then the added
/// tokens `tokenizer.json` lists past them (control when special, else
/// user-defined), padded with unused `[PADn]` up to the model's vocabulary.
fn sentencepiece(model: &super::spm::Model, tok: Option<&Value>, vocab_size: usize) -> Vec<(&'static str, Meta)> {
    let mut tokens: Vec<(String, f32, i32)> = model.pieces.iter().map(|p| (p.text.clone(), p.score, p.kind)).collect();
    let mut added: Vec<(usize, String, i32)> = tok
        .and_then(|t| t["added_tokens"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let ty = if a["special"] == true { 3 } else { 4 };
            Some((a["id"].as_u64()? as usize, a["content"].as_str()?.to_string(), ty))
        })
        .collect();
    added.sort();
    for (id, text, ty) in added {
        if id < tokens.len() {
            continue;
        }
        while tokens.len() < id {
            tokens.push((format!("[PAD{}]", tokens.len()), -1000.0, 5));
        }
        tokens.push((text, -1000.0, ty));
    }
    while tokens.len() < vocab_size {
        tokens.push((format!("[PAD{}]", tokens.len()), -1000.0, 5));
    }
    let mut out = vec![
        ("tokenizer.ggml.model", Meta::String("llama".into())),
        ("tokenizer.ggml.pre", Meta::String("default".into())),
        ("tokenizer.ggml.tokens", Meta::Array(tokens.iter().map(|t| Meta::String(t.0.clone())).collect())),
        ("tokenizer.ggml.scores", Meta::Array(tokens.iter().map(|t| Meta::F32(t.1)).collect())),
        ("tokenizer.ggml.token_type", Meta::Array(tokens.iter().map(|t| Meta::I32(t.2)).collect())),
        ("tokenizer.ggml.add_space_prefix", Meta::Bool(model.add_dummy_prefix)),
    ];
    if let Some(unk) = tokens.iter().position(|t| t.2 == 2) {
        out.push(("tokenizer.ggml.unknown_token_id", Meta::U32(unk as u32)));
    }
    out
}

/// `tokenizer.ggml.*` from a BPE `tokenizer.json`: the model (`gpt2` for
/// byte-level BPE, else `llama`), tokens by id with their types (3 for
/// special added tokens) and the merges. Empty for other tokenizer kinds.
fn vocab(tok: &Value) -> Vec<(&'static str, Meta)> {
    let model = &tok["model"];
    let Some(v) = model["vocab"].as_object().filter(|_| model["type"] == "BPE") else {
        return Vec::new();
    };
    let mut tokens: Vec<(u64, String, i32)> =
        v.iter().filter_map(|(t, id)| Some((id.as_u64()?, t.clone(), 1))).collect();
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(t)) = (a["id"].as_u64(), a["content"].as_str()) else { continue };
        let ty = if a["special"] == true { 3 } else { 4 };
        match tokens.iter_mut().find(|x| x.0 == id) {
            Some(x) => x.2 = ty,
            None => tokens.push((id, t.to_string(), ty)),
        }
    }
    tokens.sort_by_key(|x| x.0);
    // Ids must run 0..n with no gaps for llama.cpp; pad gaps as unused tokens.
    let mut padded: Vec<(String, i32)> = Vec::new();
    for (id, t, ty) in tokens {
        while (padded.len() as u64) < id {
            padded.push((format!("[PAD{}]", padded.len()), 5));
        }
        padded.push((t, ty));
    }
    let byte_level = tok["pre_tokenizer"].to_string().contains("ByteLevel");
    let merges: Vec<Meta> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(s) => Some(Meta::String(s.clone())),
            Value::Array(p) => Some(Meta::String(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))),
            _ => None,
        })
        .collect();
    let mut out = vec![
        ("tokenizer.ggml.model", Meta::String(if byte_level { "gpt2" } else { "llama" }.into())),
        ("tokenizer.ggml.tokens", Meta::Array(padded.iter().map(|(t, _)| Meta::String(t.clone())).collect())),
        ("tokenizer.ggml.token_type", Meta::Array(padded.iter().map(|(_, ty)| Meta::I32(*ty)).collect())),
    ];
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges", Meta::Array(merges)));
    }
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_code(v: &Meta) -> u32 {
    match v {
        Meta::U8(_) => 0,
        Meta::I8(_) => 1,
        Meta::U16(_) => 2,
        Meta::I16(_) => 3,
        Meta::U32(_) => 4,
        Meta::I32(_) => 5,
        Meta::F32(_) => 6,
        Meta::Bool(_) => 7,
        Meta::String(_) => 8,
        Meta::Array(_) => 9,
        Meta::U64(_) => 10,
        Meta::I64(_) => 11,
        Meta::F64(_) => 12,
    }
}

fn value(out: &mut Vec<u8>, v: &Meta) -> Result<(), String> {
    match v {
        Meta::U8(x) => out.push(*x),
        Meta::I8(x) => out.push(*x as u8),
        Meta::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::Bool(x) => out.push(*x as u8),
        Meta::String(s) => string(out, s),
        Meta::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Meta::Array(items) => {
            // An empty array's element type is lost on reading; u32 is as good as any.
            let inner = items.first().map_or(4, type_code);
            if items.iter().any(|i| type_code(i) != inner) {
                return Err("a GGUF metadata array mixes value types".into());
            }
            out.extend_from_slice(&inner.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                value(out, i)?;
            }
        }
    }
    Ok(())
}

/// Encodes Hugging Face tensor values (row-major, `rows` rows) as GGUF data.
pub fn encode(t: &GgufTensor, vals: &[f32], rows: usize) -> Vec<u8> {
    let mut vals = match t.heads {
        Some(h) => super::gguf::permute(vals, h, rows),
        None => vals.to_vec(),
    };
    if t.shift != 0.0 {
        vals.iter_mut().for_each(|v| *v += t.shift);
    }
    match t.quant {
        Quant::F32 => super::codec::encode(&vals, super::DType::F32),
        Quant::F16 => super::codec::encode(&vals, super::DType::F16),
        Quant::BF16 => super::codec::encode(&vals, super::DType::BF16),
        Quant::Q8_0 => q8_0(&vals),
    }
}

/// ggml's Q8_0: blocks of 32 values, an f16 scale `max|x| / 127`, then 32
/// signed bytes `round(x / scale)`.
pub fn q8_0(vals: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() / 32 * 34);
    for block in vals.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
    }
    out
}

/// Whether the file at `path` is a GGUF file fuse wrote (holds [`MARK`]).
pub fn written_by_fuse(path: &Path) -> bool {
    File::open(path)
        .ok()
        .and_then(|f| Content::read(&mut BufReader::new(f)).ok())
        .is_some_and(|c| c.metadata.contains_key(MARK))
}

/// A GGUF output being written; dropped without [`GgufFile::commit`], it
/// removes its partial file.
pub struct GgufFile {
    target: PathBuf,
    partial: PathBuf,
    file: File,
    _lock: File,
    committed: bool,
}

impl GgufFile {
    /// Checks the target, then creates the partial file at its final size with its header.
    pub fn create(target: &Path, force: bool, layout: &GgufLayout) -> Result<GgufFile, String> {
        super::target::may_replace(target, force).map_err(|r| format!("`{}` {r}", target.display()))?;
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        let name = target.file_name().and_then(|n| n.to_str()).ok_or("the output path has no file name")?;
        super::writer::clean_stale(parent, name);
        let (partial, lock) = super::writer::create_locked(parent, name, |p| File::create_new(p).map(drop))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(|e| format!("cannot open `{}`: {e}", partial.display()))?;
        let out = GgufFile { target: target.to_path_buf(), partial, file, _lock: lock, committed: false };
        out.file.set_len(layout.size).map_err(|e| format!("cannot size `{}`: {e}", out.partial.display()))?;
        out.file.write_all_at(&layout.header, 0).map_err(|e| format!("cannot write: {e}"))?;
        Ok(out)
    }

    /// Writes bytes at an absolute offset; safe from many threads for disjoint ranges.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// Flushes the file and renames it onto the target.
    pub fn commit(mut self) -> Result<PathBuf, String> {
        self.file.sync_all().map_err(|e| format!("cannot flush output: {e}"))?;
        // Checked again: a file may have appeared at the target since `create`.
        if self.target.exists() {
            super::target::may_replace(&self.target, true)
                .map_err(|r| format!("`{}` {r}; nothing was replaced", self.target.display()))?;
        }
        fs::rename(&self.partial, &self.target)
            .map_err(|e| format!("cannot move the output into place at `{}`: {e}", self.target.display()))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_hold_a_scale_and_32_bytes() {
        let vals: Vec<f32> = (0..64).map(|i| i as f32 - 32.0).collect();
        let b = q8_0(&vals);
        assert_eq!(b.len(), 68);
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert!((d - 32.0 / 127.0).abs() < 1e-3);
        assert_eq!(b[2] as i8, -127);
    }
}
