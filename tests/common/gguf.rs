//! A small GGUF writer for tests, written from the format description
//! (ggml's docs/gguf.md) rather than with fuse's or candle's code: version 3,
//! little-endian, 32-byte alignment. Also llama.cpp's q8_0 quantization and
//! its q/k row permutation, so tests know the expected values independently.

use super::T;
use std::collections::BTreeMap;

/// A metadata value.
pub enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
    Bool(bool),
    /// Arrays (type 9) of strings and of u32.
    Strs(Vec<String>),
    U32s(Vec<u32>),
}

/// A tensor's stored type: a known encoding, or a raw type code with bytes.
pub enum Enc {
    F32,
    F16,
    Q8_0,
    Raw(u32, Vec<u8>),
}

#[derive(Default)]
pub struct Gguf {
    meta: Vec<(String, Meta)>,
    /// name, dims in Hugging Face (row-major) order, type code, data.
    tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)>,
}

impl Gguf {
    pub fn meta(&mut self, key: &str, v: Meta) -> &mut Self {
        self.meta.push((key.to_string(), v));
        self
    }

    /// Adds a tensor and returns its values as a reader will see them.
    pub fn tensor(&mut self, name: &str, shape: &[usize], vals: &[f32], enc: Enc) -> Vec<f32> {
        let (code, bytes, seen) = match enc {
            Enc::F32 => (0, vals.iter().flat_map(|v| v.to_le_bytes()).collect(), vals.to_vec()),
            Enc::F16 => {
                let h: Vec<half::f16> = vals.iter().map(|v| half::f16::from_f32(*v)).collect();
                (1, h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
            }
            Enc::Q8_0 => {
                let (b, s) = q8_0(vals);
                (8, b, s)
            }
            Enc::Raw(code, b) => (code, b, vec![]),
        };
        self.tensors.push((name.to_string(), shape.to_vec(), code, bytes));
        seen
    }

    pub fn bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            string(&mut out, k);
            match v {
                Meta::U32(x) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Meta::F32(x) => {
                    out.extend_from_slice(&6u32.to_le_bytes());
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::Bool(b) => {
                    out.extend_from_slice(&7u32.to_le_bytes());
                    out.push(*b as u8);
                }
                Meta::Strs(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for s in v {
                        string(&mut out, s);
                    }
                }
                Meta::U32s(v) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                    for x in v {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        for (name, shape, code, data) in &self.tensors {
            string(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            // GGUF lists dimensions fastest-varying first.
            for d in shape.iter().rev() {
                out.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (_, _, _, data) in &self.tensors {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        out
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`: blocks of 32, scale amax/127 stored
/// as f16, values rounded with the unrounded scale. Returns the bytes and
/// the dequantized values.
pub fn q8_0(vals: &[f32]) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(vals.len() % 32, 0);
    let mut bytes = Vec::new();
    let mut seen = Vec::new();
    for block in vals.chunks(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let dh = half::f16::from_f32(d);
        bytes.extend_from_slice(&dh.to_le_bytes());
        for v in block {
            let q = (v * id).round() as i8;
            bytes.push(q as u8);
            seen.push(q as f32 * dh.to_f32());
        }
    }
    (bytes, seen)
}

/// llama.cpp's `LlamaModel.permute` of a [rows, cols] weight:
/// reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2).
pub fn permute(vals: &[f32], heads: usize, rows: usize) -> Vec<f32> {
    let cols = vals.len() / rows;
    let d = rows / heads;
    let mut out = vec![0f32; vals.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..d / 2 {
                let from = (h * d + s * d / 2 + i) * cols;
                let to = (h * d + 2 * i + s) * cols;
                out[to..to + cols].copy_from_slice(&vals[from..from + cols]);
            }
        }
    }
    out
}

/// llama.cpp's GGUF name for a Hugging Face Llama tensor name.
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, suffix) = rest.split_once('.').unwrap();
    let g = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}")
}

/// A llama GGUF holding `hf` (a Hugging Face Llama checkpoint's tensors)
/// converted as llama.cpp does, each tensor encoded by `enc`; returns the
/// builder and the values fuse should read back, under Hugging Face names.
pub fn llama(
    hf: &BTreeMap<String, T>,
    heads: usize,
    kv_heads: usize,
    enc: impl Fn(&str) -> Enc,
) -> (Gguf, BTreeMap<String, T>) {
    let mut g = Gguf::default();
    let hidden = hf["model.embed_tokens.weight"].shape[1];
    let layers = hf.keys().filter(|n| n.ends_with("input_layernorm.weight")).count();
    let inter = hf["model.layers.0.mlp.up_proj.weight"].shape[0];
    g.meta("general.architecture", Meta::Str("llama".into()))
        .meta("llama.embedding_length", Meta::U32(hidden as u32))
        .meta("llama.block_count", Meta::U32(layers as u32))
        .meta("llama.feed_forward_length", Meta::U32(inter as u32))
        .meta("llama.attention.head_count", Meta::U32(heads as u32))
        .meta("llama.attention.head_count_kv", Meta::U32(kv_heads as u32))
        .meta("llama.context_length", Meta::U32(128))
        .meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-6))
        .meta("llama.rope.freq_base", Meta::F32(10000.0));
    let mut expected = BTreeMap::new();
    for (name, t) in hf {
        let rows = t.shape[0];
        let permuted = if name.ends_with("q_proj.weight") {
            Some(heads)
        } else if name.ends_with("k_proj.weight") {
            Some(kv_heads)
        } else {
            None
        };
        let stored = permuted.map_or(t.data.clone(), |h| permute(&t.data, h, rows));
        let e = enc(name);
        let dtype = match e {
            Enc::F16 => "F16",
            _ => "F32",
        };
        let seen = g.tensor(&gguf_name(name), &t.shape, &stored, e);
        // What fuse should return: the stored values, un-permuted.
        let seen = match permuted {
            Some(h) => unpermute(&seen, h, rows),
            None => seen,
        };
        expected.insert(name.clone(), T { shape: t.shape.clone(), dtype: dtype.into(), data: seen });
    }
    (g, expected)
}

/// The inverse of [`permute`], by search: the row order `permute` produces.
fn unpermute(vals: &[f32], heads: usize, rows: usize) -> Vec<f32> {
    let cols = vals.len() / rows;
    let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    let order = permute(&index, heads, rows);
    let mut out = vec![0f32; vals.len()];
    for (stored_row, hf_row) in order.iter().enumerate() {
        let hf_row = *hf_row as usize;
        out[hf_row * cols..(hf_row + 1) * cols].copy_from_slice(&vals[stored_row * cols..(stored_row + 1) * cols]);
    }
    out
}

/// A GGUF file's header, parsed here from the format description.
pub struct Parsed {
    pub version: u32,
    /// Metadata: scalars and strings as text, arrays as `[N items]`.
    pub meta: BTreeMap<String, String>,
    /// The items of array metadata, each as text.
    pub arrays: BTreeMap<String, Vec<String>>,
    /// name -> (dims as stored, fastest first; type code; absolute data offset).
    pub tensors: BTreeMap<String, (Vec<u64>, u32, u64)>,
}

/// Parses the header of GGUF `bytes` (version 3, alignment 32).
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut pos = 0usize;
    let mut take = |n: usize| {
        let s = &bytes[pos..pos + n];
        pos += n;
        s
    };
    assert_eq!(take(4), b"GGUF");
    fn u32_(b: &[u8]) -> u32 {
        u32::from_le_bytes(b.try_into().unwrap())
    }
    fn u64_(b: &[u8]) -> u64 {
        u64::from_le_bytes(b.try_into().unwrap())
    }
    let version = u32_(take(4));
    let n_tensors = u64_(take(8));
    let n_kv = u64_(take(8));
    fn value(take: &mut dyn FnMut(usize) -> Vec<u8>, ty: u32) -> String {
        let u64_ = |b: Vec<u8>| u64::from_le_bytes(b.try_into().unwrap());
        match ty {
            0 => take(1)[0].to_string(),
            1 => (take(1)[0] as i8).to_string(),
            2 => u16::from_le_bytes(take(2).try_into().unwrap()).to_string(),
            3 => i16::from_le_bytes(take(2).try_into().unwrap()).to_string(),
            4 => u32::from_le_bytes(take(4).try_into().unwrap()).to_string(),
            5 => i32::from_le_bytes(take(4).try_into().unwrap()).to_string(),
            6 => f32::from_le_bytes(take(4).try_into().unwrap()).to_string(),
            7 => (take(1)[0] != 0).to_string(),
            8 => {
                let n = u64_(take(8)) as usize;
                String::from_utf8(take(n)).unwrap()
            }
            9 => {
                let inner = u32::from_le_bytes(take(4).try_into().unwrap());
                let n = u64_(take(8));
                for _ in 0..n {
                    value(take, inner);
                }
                format!("[{n} items]")
            }
            10 => u64_(take(8)).to_string(),
            11 => (u64_(take(8)) as i64).to_string(),
            12 => f64::from_le_bytes(take(8).try_into().unwrap()).to_string(),
            t => panic!("unknown metadata type {t}"),
        }
    }
    let mut take = |n: usize| take(n).to_vec();
    let mut meta = BTreeMap::new();
    let mut arrays = BTreeMap::new();
    for _ in 0..n_kv {
        let key = value(&mut take, 8);
        let ty = u32::from_le_bytes(take(4).try_into().unwrap());
        if ty == 9 {
            let inner = u32::from_le_bytes(take(4).try_into().unwrap());
            let n = u64::from_le_bytes(take(8).try_into().unwrap());
            let items: Vec<String> = (0..n).map(|_| value(&mut take, inner)).collect();
            meta.insert(key.clone(), format!("[{n} items]"));
            arrays.insert(key, items);
        } else {
            meta.insert(key, value(&mut take, ty));
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = value(&mut take, 8);
        let n = u32::from_le_bytes(take(4).try_into().unwrap());
        let dims: Vec<u64> = (0..n).map(|_| u64::from_le_bytes(take(8).try_into().unwrap())).collect();
        let ty = u32::from_le_bytes(take(4).try_into().unwrap());
        let off = u64::from_le_bytes(take(8).try_into().unwrap());
        infos.push((name, dims, ty, off));
    }
    let start = pos.div_ceil(32) as u64 * 32;
    let tensors = infos.into_iter().map(|(n, d, t, o)| (n, (d, t, start + o))).collect();
    Parsed { version, meta, arrays, tensors }
}
