//! GGUF input: llama.cpp's one-file format, read with candle-core's GGUF
//! reader and presented as the Hugging Face checkpoint it was converted
//! from: a config.json built from the metadata, and the tensor names, shapes
//! and row orders of the transformers model, so that a GGUF and a
//! safetensors model of one architecture mix in one recipe.
//!
//! What llama.cpp's `convert_hf_to_gguf.py` changes, and this undoes:
//! names (`blk.3.attn_q.weight` for `model.layers.3.self_attn.q_proj.weight`),
//! the dimension order (GGUF lists the fastest-varying dimension first; the
//! data is the same row-major array), the rows of llama's q/k projections
//! (permuted per head so that rotary pairs sit side by side), and Gemma's
//! RMS-norm weights (stored plus one). Quantized tensors are dequantized whole
//! to f32 by candle when a run reads them (see `io::read`).

use super::safetensors::TensorInfo;
use super::DType;
use candle_core::quantized::gguf_file::{Content, Value as Meta};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How a GGUF tensor's stored data becomes the Hugging Face tensor, for the
/// tensors that cannot be read as plain bytes.
#[derive(Clone, Debug)]
pub struct Stored {
    pub ggml: GgmlDType,
    /// The head count whose rows llama.cpp interleaved (llama's q and k).
    pub heads: Option<usize>,
    /// Subtracted from every value (Gemma's norms are stored plus one).
    pub shift: f32,
}

/// The types candle's `qtensor_from_ggml` dequantizes (Q8_1 and Q8K are
/// intermediate types of llama.cpp's matmuls that candle does not read).
const READABLE: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// A known architecture: its transformers class and how its tensors are named.
struct Family {
    arch: &'static str,
    class: &'static str,
    /// GGUF per-layer suffix -> Hugging Face per-layer suffix.
    layer: &'static [(&'static str, &'static str)],
    /// llama.cpp permutes q/k rows for this family.
    permuted: bool,
    /// llama.cpp stores `norm.weight` tensors plus this.
    norm_shift: f32,
}

const ATTN: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

const GEMMA3: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

const FAMILIES: &[Family] = &[
    Family { arch: "llama", class: "LlamaForCausalLM", layer: ATTN, permuted: true, norm_shift: 0.0 },
    Family { arch: "qwen2", class: "Qwen2ForCausalLM", layer: ATTN, permuted: false, norm_shift: 0.0 },
    Family { arch: "gemma3", class: "Gemma3ForCausalLM", layer: GEMMA3, permuted: false, norm_shift: 1.0 },
];

/// Tensors llama.cpp adds that transformers computes instead.
const DERIVED: &[&str] = &["rope_freqs.weight"];

/// A GGUF file's tensors under Hugging Face names, with its config.json.
pub struct Header {
    pub config: Value,
    pub tensors: Vec<(String, TensorInfo, Option<Stored>)>,
}

/// Reads the header of the GGUF file at `path` (no tensor data).
pub fn read(path: &Path) -> Result<Header, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    let content = Content::read(&mut BufReader::new(&file)).map_err(|e| match unknown_type(path) {
        Some((tensor, code)) => format!(
            "tensor `{tensor}` has GGML type {code} ({}), which fuse cannot read; it reads {}",
            ggml_name(code),
            readable_list()
        ),
        None => format!("not a readable GGUF file: {e}"),
    })?;
    let meta = |key: &str| content.metadata.get(key);
    let arch = meta("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let family = FAMILIES.iter().find(|f| f.arch == arch).ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.arch).collect();
        format!("the GGUF architecture is `{arch}`; fuse maps only {} to Hugging Face tensor names", known.join(", "))
    })?;
    let int = |key: &str| meta(&format!("{arch}.{key}")).and_then(as_u64);
    let need = |key: &str| int(key).ok_or_else(|| format!("the GGUF metadata has no integer `{arch}.{key}`"));
    let heads = need("attention.head_count")? as usize;
    let kv_heads = int("attention.head_count_kv").map_or(heads, |v| v as usize);

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for gname in names {
        let t = &content.tensor_infos[gname];
        if DERIVED.contains(&gname.as_str()) {
            continue;
        }
        let name = hf_name(family, gname)
            .ok_or_else(|| format!("tensor `{gname}` of a {arch} GGUF has no Hugging Face name that fuse knows"))?;
        if !READABLE.contains(&t.ggml_dtype) {
            return Err(format!(
                "tensor `{gname}` has GGML type {:?}, which fuse cannot dequantize; it reads {}",
                t.ggml_dtype,
                readable_list()
            ));
        }
        let shape = t.shape.dims().to_vec();
        let numel: usize = shape.iter().product();
        let block = t.ggml_dtype.block_size();
        if !numel.is_multiple_of(block) {
            return Err(format!("tensor `{gname}` has {numel} elements, not a whole number of {block}-element blocks"));
        }
        let bytes = (numel / block * t.ggml_dtype.type_size()) as u64;
        let start = content.tensor_data_offset.checked_add(t.offset).ok_or("tensor offset overflows")?;
        let end = start.checked_add(bytes).ok_or("tensor offset overflows")?;
        if end > len {
            return Err(format!(
                "tensor `{gname}` needs bytes {start}..{end}, but the file has {len} bytes (truncated download?)"
            ));
        }
        let permute = match gname.rsplit_once('.').map(|(a, _)| a.rsplit('.').next().unwrap_or("")) {
            Some("attn_q") if family.permuted => Some(heads),
            Some("attn_k") if family.permuted => Some(kv_heads),
            _ => None,
        };
        if let Some(h) = permute {
            if h == 0 || shape[0] % (2 * h) != 0 {
                return Err(format!("tensor `{gname}` has {} rows, not split evenly over {h} heads", shape[0]));
            }
        }
        let shift = if gname.ends_with("norm.weight") { family.norm_shift } else { 0.0 };
        let plain = match t.ggml_dtype {
            GgmlDType::F32 => Some(DType::F32),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::BF16 => Some(DType::BF16),
            _ => None,
        };
        // Plain tensors that need no change are read as bytes like safetensors.
        let stored = match plain {
            Some(_) if permute.is_none() && shift == 0.0 => None,
            _ => Some(Stored { ggml: t.ggml_dtype, heads: permute, shift }),
        };
        let dtype = plain.unwrap_or(DType::F32);
        tensors.push((name, TensorInfo { dtype, shape, start, end }, stored));
    }
    let config = config(family, &content, &tensors, heads, kv_heads);
    Ok(Header { config, tensors })
}

/// The Hugging Face name of a GGUF tensor of `family`.
fn hf_name(family: &Family, gname: &str) -> Option<String> {
    match gname {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gname.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = family.layer.iter().find(|(g, _)| *g == suffix)?.1;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of Hugging Face tensor `hf` in architecture `arch`, whether
/// llama.cpp permutes its rows per head (llama's q/k: `Some(true)` for q,
/// `Some(false)` for k), and what llama.cpp adds to it (Gemma's norms).
/// `Err` when fuse does not map `arch` at all, `Ok(None)` for an unknown tensor.
pub fn gguf_name(arch: &str, hf: &str) -> Result<Option<(String, Option<bool>, f32)>, String> {
    let family = FAMILIES.iter().find(|f| f.arch == arch).ok_or_else(|| {
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.arch).collect();
        format!("the architecture is `{arch}`; fuse writes GGUF only for {}", known.join(", "))
    })?;
    let name = match hf {
        "model.embed_tokens.weight" => "token_embd.weight".to_string(),
        "model.norm.weight" => "output_norm.weight".to_string(),
        "lm_head.weight" => "output.weight".to_string(),
        _ => {
            let Some((layer, suffix)) = hf.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else {
                return Ok(None);
            };
            let Ok(layer) = layer.parse::<usize>() else { return Ok(None) };
            let Some((g, _)) = family.layer.iter().find(|(_, h)| *h == suffix) else { return Ok(None) };
            format!("blk.{layer}.{g}")
        }
    };
    let permute = match name.rsplit('.').nth(1) {
        Some("attn_q") if family.permuted && name.ends_with(".weight") => Some(true),
        Some("attn_k") if family.permuted && name.ends_with(".weight") => Some(false),
        _ => None,
    };
    let shift = if name.ends_with("norm.weight") { family.norm_shift } else { 0.0 };
    Ok(Some((name, permute, shift)))
}

/// llama.cpp's `permute`, the inverse of [`unpermute`]: within each head of
/// `d` rows, Hugging Face row `s * d/2 + i` is stored as GGUF row `2i + s`.
pub fn permute(vals: &[f32], heads: usize, rows: usize) -> Vec<f32> {
    let cols = vals.len() / rows.max(1);
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; vals.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..half {
                let from = (h * d + s * half + i) * cols;
                let to = (h * d + 2 * i + s) * cols;
                out[to..to + cols].copy_from_slice(&vals[from..from + cols]);
            }
        }
    }
    out
}

/// config.json from the GGUF metadata, with transformers' key names.
fn config(
    family: &Family,
    content: &Content,
    tensors: &[(String, TensorInfo, Option<Stored>)],
    heads: usize,
    kv_heads: usize,
) -> Value {
    let arch = family.arch;
    let get = |key: &str| content.metadata.get(&format!("{arch}.{key}"));
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([family.class]));
    c.insert("model_type".into(), json!(arch));
    let ints = [
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("feed_forward_length", "intermediate_size"),
        ("context_length", "max_position_embeddings"),
        ("attention.key_length", "head_dim"),
        ("attention.sliding_window", "sliding_window"),
    ];
    for (g, h) in ints {
        if let Some(v) = get(g).and_then(as_u64) {
            c.insert(h.into(), json!(v));
        }
    }
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    for (g, h) in [("attention.layer_norm_rms_epsilon", "rms_norm_eps"), ("rope.freq_base", "rope_theta")] {
        if let Some(v) = get(g).and_then(as_f64) {
            c.insert(h.into(), json!(v));
        }
    }
    if let Some((_, t, _)) = tensors.iter().find(|(n, _, _)| n == "model.embed_tokens.weight") {
        c.insert("vocab_size".into(), json!(t.shape[0]));
    }
    c.insert("tie_word_embeddings".into(), json!(!tensors.iter().any(|(n, _, _)| n == "lm_head.weight")));
    let act = if arch == "gemma3" { "gelu_pytorch_tanh" } else { "silu" };
    c.insert(if arch == "gemma3" { "hidden_activation" } else { "hidden_act" }.into(), json!(act));
    for (g, h) in [("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")] {
        if let Some(v) = content.metadata.get(g).and_then(as_u64) {
            c.insert(h.into(), json!(v));
        }
    }
    Value::Object(c)
}

/// A whole tensor as f32 in its Hugging Face layout.
pub fn dequantize(file: &File, info: &TensorInfo, stored: &Stored) -> Result<Vec<f32>, String> {
    let mut raw = vec![0u8; (info.end - info.start) as usize];
    file.read_exact_at(&mut raw, info.start).map_err(|e| e.to_string())?;
    let cpu = candle_core::Device::Cpu;
    let vals = qtensor_from_ggml(stored.ggml, &raw, info.shape.clone(), &cpu)
        .and_then(|q| q.dequantize(&cpu))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| format!("cannot dequantize {:?} data: {e}", stored.ggml))?;
    let mut vals = match stored.heads {
        Some(h) => unpermute(&vals, h, info.shape[0]),
        None => vals,
    };
    if stored.shift != 0.0 {
        vals.iter_mut().for_each(|v| *v -= stored.shift);
    }
    Ok(vals)
}

/// Undoes llama.cpp's `permute`: within each head of `d` rows, GGUF row
/// `2i + s` is Hugging Face row `s * d/2 + i` (rotate-half pairs, interleaved).
pub fn unpermute(vals: &[f32], heads: usize, rows: usize) -> Vec<f32> {
    let cols = vals.len() / rows.max(1);
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0f32; vals.len()];
    for h in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let from = (h * d + 2 * i + s) * cols;
                let to = (h * d + s * half + i) * cols;
                out[to..to + cols].copy_from_slice(&vals[from..from + cols]);
            }
        }
    }
    out
}

/// A GGUF integer of any width as u64 (negative ones as none).
pub(super) fn as_u64(v: &Meta) -> Option<u64> {
    match v {
        Meta::I32(x) => u64::try_from(*x).ok(),
        Meta::I64(x) => u64::try_from(*x).ok(),
        Meta::I16(x) => u64::try_from(*x).ok(),
        Meta::I8(x) => u64::try_from(*x).ok(),
        other => other.to_u64().ok(),
    }
}

fn as_f64(v: &Meta) -> Option<f64> {
    match v {
        // Through the shortest decimal, so that an f32 1e-5 reads as 1e-5, not 9.99999974e-6.
        Meta::F32(x) => x.to_string().parse().ok(),
        Meta::F64(x) => Some(*x),
        other => as_u64(other).map(|x| x as f64),
    }
}

fn readable_list() -> String {
    READABLE.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ")
}

/// ggml's name for a type code candle does not know.
fn ggml_name(code: u32) -> &'static str {
    match code {
        4 | 5 => "a removed Q4 type",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// The first tensor whose type code candle's reader rejects: its error names
/// the code but not the tensor, so the header is walked again here.
fn unknown_type(path: &Path) -> Option<(String, u32)> {
    let mut r = BufReader::new(File::open(path).ok()?);
    let u32_ = |r: &mut BufReader<File>| -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok().map(|_| u32::from_le_bytes(b))
    };
    let u64_ = |r: &mut BufReader<File>| -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok().map(|_| u64::from_le_bytes(b))
    };
    if u32_(&mut r)? != 0x4655_4747 || u32_(&mut r)? < 2 {
        return None;
    }
    let (n_tensors, n_kv) = (u64_(&mut r)?, u64_(&mut r)?);
    fn skip(r: &mut BufReader<File>, ty: u32, depth: usize) -> Option<()> {
        let mut b = [0u8; 8];
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                r.read_exact(&mut b).ok()?;
                u64::from_le_bytes(b)
            }
            9 if depth < 8 => {
                r.read_exact(&mut b[..4]).ok()?;
                let inner = u32::from_le_bytes(b[..4].try_into().unwrap());
                r.read_exact(&mut b).ok()?;
                for _ in 0..u64::from_le_bytes(b) {
                    skip(r, inner, depth + 1)?;
                }
                0
            }
            _ => return None,
        };
        r.seek_relative(i64::try_from(size).ok()?).ok()
    }
    let string = |r: &mut BufReader<File>| -> Option<String> {
        let n = u64_(r)?;
        let mut s = vec![0u8; usize::try_from(n).ok().filter(|&n| n < 1 << 20)?];
        r.read_exact(&mut s).ok()?;
        Some(String::from_utf8_lossy(&s).into_owned())
    };
    for _ in 0..n_kv {
        string(&mut r)?;
        let ty = u32_(&mut r)?;
        skip(&mut r, ty, 0)?;
    }
    for _ in 0..n_tensors {
        let name = string(&mut r)?;
        let dims = u32_(&mut r)?;
        r.seek_relative(8 * dims.min(8) as i64).ok()?;
        let code = u32_(&mut r)?;
        u64_(&mut r)?;
        if !matches!(code, 0..=3 | 6..=15 | 30) {
            return Some((name, code));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::unpermute;

    /// llama.cpp's permute: reshape(heads, 2, d/2, cols).swapaxes(1, 2).
    fn permute(vals: &[f32], heads: usize, rows: usize) -> Vec<f32> {
        let cols = vals.len() / rows;
        let (d, half) = (rows / heads, rows / heads / 2);
        let mut out = vec![0f32; vals.len()];
        for h in 0..heads {
            for s in 0..2 {
                for i in 0..half {
                    let from = (h * d + s * half + i) * cols;
                    let to = (h * d + i * 2 + s) * cols;
                    out[to..to + cols].copy_from_slice(&vals[from..from + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let vals: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect();
        assert_eq!(unpermute(&permute(&vals, 2, 8), 2, 8), vals);
        // One head of four rows: HF rows 0 1 2 3 are stored as 0 2 1 3.
        let rows: Vec<f32> = vec![0., 1., 2., 3.];
        assert_eq!(permute(&rows, 1, 4), vec![0., 2., 1., 3.]);
    }
}
