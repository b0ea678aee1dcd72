//! The forward pass of the decoder families fuse writes (Llama, Mistral,
//! Qwen2, Mixtral, Gemma 3), on candle-core tensors, from weights computed
//! into memory under their Hugging Face names. It follows transformers'
//! modeling code step for step (RMSNorm, rotate-half RoPE with Llama 3 or
//! linear scaling, grouped-query attention with a causal and optionally
//! sliding mask, SwiGLU MLP or Mixtral's top-k experts, tied or separate
//! head; for Gemma 3 also its `1 + w` norms, scaled embeddings, q/k norms,
//! norms around attention and MLP, GELU, and sliding layers with their own
//! RoPE base), in f32. docs/notes/eval.md says why this is ours and not candle-transformers'.

use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;
use std::collections::HashMap;

/// The families there is a forward pass for, by config.json `architectures`.
pub const SUPPORTED: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "MixtralForCausalLM", "Gemma3ForCausalLM"];

/// What the forward pass reads from config.json.
#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub eps: f64,
    pub inv_freq: Vec<f32>,
    /// Mistral's sliding window: a query sees at most this many positions.
    pub sliding_window: Option<usize>,
    /// Mixtral: (experts, experts per token).
    pub experts: Option<(usize, usize)>,
    /// config.json's `max_position_embeddings`.
    pub max_positions: Option<usize>,
    pub gemma: Option<Gemma>,
}

/// What Gemma 3 does beyond Llama.
#[derive(Debug, Clone)]
pub struct Gemma {
    /// `query_pre_attn_scalar ** -0.5`.
    pub scaling: f64,
    /// Which layers attend within `sliding_window` (with `local_inv_freq`).
    pub sliding: Vec<bool>,
    pub window: usize,
    pub local_inv_freq: Vec<f32>,
    pub softcap: Option<f64>,
}

impl Config {
    /// Reads config.json; `Err` says why the model cannot be run.
    pub fn from_json(c: &Value) -> Result<Config, String> {
        let arch = c
            .pointer("/architectures/0")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                let t = c.get("model_type")?.as_str()?;
                let i = ["llama", "mistral", "qwen2", "mixtral", "gemma3_text"].iter().position(|m| *m == t)?;
                Some(SUPPORTED[i].to_string())
            })
            .ok_or("config.json names no architecture")?;
        if !SUPPORTED.contains(&arch.as_str()) {
            return Err(format!("no forward pass for `{arch}`"));
        }
        let int = |k: &str| c.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let need = |k: &str| int(k).ok_or_else(|| format!("config.json has no `{k}`"));
        let hidden = need("hidden_size")?;
        let heads = need("num_attention_heads")?;
        let head_dim = int("head_dim").unwrap_or(hidden / heads.max(1));
        // transformers 5 writes `rope_parameters` (per attention type for Gemma 3), older
        // configs `rope_theta` and `rope_scaling`.
        let rope_params = |kind: &str| {
            let p = c.get("rope_parameters").filter(|p| !p.is_null());
            p.and_then(|p| p.get(kind)).or(p).cloned()
        };
        let full = rope_params("full_attention");
        let theta = full
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| c.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        let freqs = |theta: f64| -> Vec<f32> {
            (0..head_dim / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect()
        };
        let mut inv_freq = freqs(theta);
        if let Some(s) = c.get("rope_scaling").filter(|s| !s.is_null()).or(full.as_ref()) {
            rope_scaling(s, &mut inv_freq)?;
        }
        let sliding_window = match arch.as_str() {
            "MistralForCausalLM" | "MixtralForCausalLM" => int("sliding_window"),
            "Qwen2ForCausalLM" if c.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
                return Err("Qwen2 with `use_sliding_window` (per-layer windows) is not supported".into())
            }
            _ => None,
        };
        let layers = need("num_hidden_layers")?;
        let gemma = if arch == "Gemma3ForCausalLM" {
            let window = int("sliding_window").unwrap_or(usize::MAX);
            let sliding = match c.get("layer_types").and_then(Value::as_array) {
                Some(t) => t.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
                None => {
                    let pattern = int("sliding_window_pattern").unwrap_or(6).max(1);
                    (0..layers).map(|l| (l + 1) % pattern != 0).collect()
                }
            };
            let local = rope_params("sliding_attention");
            let local_theta = local
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .or_else(|| c.get("rope_local_base_freq"))
                .and_then(Value::as_f64)
                .unwrap_or(10000.0);
            let scalar = c.get("query_pre_attn_scalar").and_then(Value::as_f64).unwrap_or(head_dim as f64);
            Some(Gemma {
                scaling: scalar.powf(-0.5),
                sliding,
                window,
                local_inv_freq: freqs(local_theta),
                softcap: c.get("final_logit_softcapping").and_then(Value::as_f64),
            })
        } else {
            None
        };
        let experts = match arch.as_str() {
            "MixtralForCausalLM" => Some((need("num_local_experts")?, int("num_experts_per_tok").unwrap_or(2))),
            _ => None,
        };
        Ok(Config {
            arch,
            hidden,
            layers,
            heads,
            kv_heads: int("num_key_value_heads").unwrap_or(heads),
            head_dim,
            intermediate: int("intermediate_size").unwrap_or(0),
            vocab: need("vocab_size")?,
            eps: c.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            inv_freq,
            sliding_window,
            experts,
            max_positions: int("max_position_embeddings"),
            gemma,
        })
    }
}

/// transformers' `rope_scaling`: Llama 3's frequency-dependent scaling and linear.
fn rope_scaling(s: &Value, inv_freq: &mut [f32]) -> Result<(), String> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let f = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    match kind {
        "default" => {}
        "linear" => inv_freq.iter_mut().for_each(|x| *x /= f("factor", 1.0) as f32),
        "llama3" => {
            let (factor, low, high) = (f("factor", 8.0), f("low_freq_factor", 1.0), f("high_freq_factor", 4.0));
            let old = f("original_max_position_embeddings", 8192.0);
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            for x in inv_freq.iter_mut() {
                let freq = *x as f64;
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                *x = if wavelen < high_wavelen {
                    freq
                } else if wavelen > low_wavelen {
                    freq / factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * freq / factor + smooth * freq
                } as f32;
            }
        }
        other => return Err(format!("rope_scaling `{other}` is not supported (default, linear and llama3 are)")),
    }
    Ok(())
}

/// A model ready to run: its config and its weights on a device.
pub struct Model {
    pub cfg: Config,
    pub weights: HashMap<String, Tensor>,
    pub device: Device,
}

type R<T> = Result<T, String>;

fn ce(e: candle_core::Error) -> String {
    e.to_string()
}

impl Model {
    fn w(&self, name: &str) -> R<&Tensor> {
        self.weights.get(name).ok_or_else(|| format!("the model has no tensor `{name}`"))
    }

    /// `x W^T (+ b)` for the projection `name` (`...q_proj`).
    fn linear(&self, x: &Tensor, name: &str) -> R<Tensor> {
        let y = x.matmul(&self.w(&format!("{name}.weight"))?.t().map_err(ce)?).map_err(ce)?;
        match self.weights.get(&format!("{name}.bias")) {
            Some(b) => y.broadcast_add(b).map_err(ce),
            None => Ok(y),
        }
    }

    fn rms_norm(&self, x: &Tensor, name: &str) -> R<Tensor> {
        let w = self.w(name)?;
        // Gemma stores norm weights as offsets from 1.
        let shifted;
        let w = if self.cfg.gemma.is_some() {
            shifted = (w + 1.0).map_err(ce)?;
            &shifted
        } else {
            w
        };
        let var = x.sqr().and_then(|s| s.mean_keepdim(D::Minus1)).map_err(ce)?;
        let inv = (var + self.cfg.eps).and_then(|v| v.sqrt()).and_then(|v| v.recip()).map_err(ce)?;
        x.broadcast_mul(&inv).and_then(|y| y.broadcast_mul(w)).map_err(ce)
    }

    /// The next-token logits after each of `ids`: `ids.len() * vocab` values, row by row.
    pub fn logits(&self, ids: &[u32]) -> R<Vec<f32>> {
        let c = &self.cfg;
        let t = ids.len();
        let dev = &self.device;
        let ids_t = Tensor::from_vec(ids.to_vec(), t, dev).map_err(ce)?;
        let mut x = self.w("model.embed_tokens.weight")?.index_select(&ids_t, 0).map_err(ce)?;
        let global = (self.rope_tables(t, &c.inv_freq)?, self.mask(t, c.sliding_window)?);
        match &c.gemma {
            Some(g) => {
                x = (x * (c.hidden as f64).sqrt()).map_err(ce)?;
                let local = (self.rope_tables(t, &g.local_inv_freq)?, self.mask(t, Some(g.window))?);
                for l in 0..c.layers {
                    let ((cos, sin), mask) = if g.sliding.get(l) == Some(&true) { &local } else { &global };
                    x = self.gemma_layer(&x, &format!("model.layers.{l}"), cos, sin, mask)?;
                }
            }
            None => {
                let ((cos, sin), mask) = &global;
                for l in 0..c.layers {
                    let p = format!("model.layers.{l}");
                    let h = self.rms_norm(&x, &format!("{p}.input_layernorm.weight"))?;
                    let a = self.attention(&h, &p, cos, sin, mask)?;
                    x = (x + a).map_err(ce)?;
                    let h = self.rms_norm(&x, &format!("{p}.post_attention_layernorm.weight"))?;
                    let m = match c.experts {
                        None => self.mlp(&h, &format!("{p}.mlp"), ("gate_proj", "up_proj", "down_proj"))?,
                        Some((n, k)) => self.moe(&h, &p, n, k)?,
                    };
                    x = (x + m).map_err(ce)?;
                }
            }
        }
        let x = self.rms_norm(&x, "model.norm.weight")?;
        let head = match self.weights.get("lm_head.weight") {
            Some(w) => w,
            None => self.w("model.embed_tokens.weight")?,
        };
        if head.dim(0).map_err(ce)? != c.vocab {
            return Err(format!("the head has {} rows but the embedding {}", head.dim(0).map_err(ce)?, c.vocab));
        }
        let mut logits = x.matmul(&head.t().map_err(ce)?).map_err(ce)?;
        if let Some(cap) = c.gemma.as_ref().and_then(|g| g.softcap) {
            logits = (logits / cap).and_then(|l| l.tanh()).and_then(|l| l * cap).map_err(ce)?;
        }
        logits.flatten_all().and_then(|l| l.to_dtype(DType::F32)).and_then(|l| l.to_vec1::<f32>()).map_err(ce)
    }

    /// cos and sin of each position times each frequency, `[t, head_dim]`
    /// (the frequencies repeated, as transformers' rotate-half layout).
    fn rope_tables(&self, t: usize, inv_freq: &[f32]) -> R<(Tensor, Tensor)> {
        let hd = self.cfg.head_dim;
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd), Vec::with_capacity(t * hd));
        for pos in 0..t {
            for j in 0..hd {
                let a = pos as f32 * inv_freq[j % (hd / 2)];
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let dev = &self.device;
        Ok((Tensor::from_vec(cos, (t, hd), dev).map_err(ce)?, Tensor::from_vec(sin, (t, hd), dev).map_err(ce)?))
    }

    /// 0 where query i may see key j (j <= i, within the sliding window), -inf elsewhere.
    fn mask(&self, t: usize, window: Option<usize>) -> R<Tensor> {
        let w = window.unwrap_or(usize::MAX);
        let m: Vec<f32> = (0..t * t)
            .map(|k| {
                let (i, j) = (k / t, k % t);
                if j <= i && i - j < w {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        Tensor::from_vec(m, (t, t), &self.device).map_err(ce)
    }

    fn attention(&self, h: &Tensor, p: &str, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> R<Tensor> {
        let c = &self.cfg;
        let t = h.dim(0).map_err(ce)?;
        let heads = |x: Tensor, n: usize| {
            x.reshape((t, n, c.head_dim)).and_then(|x| x.transpose(0, 1)).and_then(|x| x.contiguous()).map_err(ce)
        };
        let mut q = heads(self.linear(h, &format!("{p}.self_attn.q_proj"))?, c.heads)?;
        let mut k = heads(self.linear(h, &format!("{p}.self_attn.k_proj"))?, c.kv_heads)?;
        if c.gemma.is_some() {
            q = self.rms_norm(&q, &format!("{p}.self_attn.q_norm.weight"))?;
            k = self.rms_norm(&k, &format!("{p}.self_attn.k_norm.weight"))?;
        }
        let v = heads(self.linear(h, &format!("{p}.self_attn.v_proj"))?, c.kv_heads)?;
        let q = rope(&q, cos, sin).map_err(ce)?;
        let k = rope(&k, cos, sin).map_err(ce)?;
        // Grouped-query attention: each key/value head serves `rep` query heads in a row.
        let rep = c.heads / c.kv_heads.max(1);
        let repeat = |x: Tensor| -> R<Tensor> {
            if rep == 1 {
                return Ok(x);
            }
            x.unsqueeze(1)
                .and_then(|x| x.expand((c.kv_heads, rep, t, c.head_dim)))
                .and_then(|x| x.reshape((c.heads, t, c.head_dim)))
                .map_err(ce)
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let scale = c.gemma.as_ref().map_or(1.0 / (c.head_dim as f64).sqrt(), |g| g.scaling);
        let scores =
            q.matmul(&k.t().map_err(ce)?).and_then(|s| s * scale).and_then(|s| s.broadcast_add(mask)).map_err(ce)?;
        let probs = softmax(&scores).map_err(ce)?;
        let out = probs
            .matmul(&v)
            .and_then(|o| o.transpose(0, 1))
            .and_then(|o| o.reshape((t, c.heads * c.head_dim)))
            .map_err(ce)?;
        self.linear(&out, &format!("{p}.self_attn.o_proj"))
    }

    /// A Gemma 3 decoder layer: norms before and after attention and MLP.
    fn gemma_layer(&self, x: &Tensor, p: &str, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> R<Tensor> {
        let h = self.rms_norm(x, &format!("{p}.input_layernorm.weight"))?;
        let a = self.attention(&h, p, cos, sin, mask)?;
        let a = self.rms_norm(&a, &format!("{p}.post_attention_layernorm.weight"))?;
        let x = (x + a).map_err(ce)?;
        let h = self.rms_norm(&x, &format!("{p}.pre_feedforward_layernorm.weight"))?;
        let m = self.mlp(&h, &format!("{p}.mlp"), ("gate_proj", "up_proj", "down_proj"))?;
        let m = self.rms_norm(&m, &format!("{p}.post_feedforward_layernorm.weight"))?;
        (x + m).map_err(ce)
    }

    fn mlp(&self, h: &Tensor, p: &str, (gate, up, down): (&str, &str, &str)) -> R<Tensor> {
        let g = self.linear(h, &format!("{p}.{gate}"))?;
        // Gemma's gelu_pytorch_tanh is candle's `gelu` (the tanh approximation).
        let g = if self.cfg.gemma.is_some() { g.gelu() } else { g.silu() }.map_err(ce)?;
        let u = self.linear(h, &format!("{p}.{up}"))?;
        self.linear(&(g * u).map_err(ce)?, &format!("{p}.{down}"))
    }

    /// Mixtral's sparse MoE block: softmax over the router's logits, the
    /// top k experts per token with their weights renormalized to sum to 1.
    fn moe(&self, h: &Tensor, p: &str, n: usize, k: usize) -> R<Tensor> {
        let t = h.dim(0).map_err(ce)?;
        let logits = self.linear(h, &format!("{p}.block_sparse_moe.gate"))?.to_vec2::<f32>().map_err(ce)?;
        let mut routing = vec![0f32; t * n];
        for (i, row) in logits.iter().enumerate() {
            let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = row.iter().map(|x| (x - mx).exp()).collect();
            let s: f32 = e.iter().sum();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| e[b].total_cmp(&e[a]));
            let top: f32 = order[..k].iter().map(|&j| e[j] / s).sum();
            for &j in &order[..k] {
                routing[i * n + j] = e[j] / s / top;
            }
        }
        let mut out = h.zeros_like().map_err(ce)?;
        for e in 0..n {
            let w: Vec<f32> = (0..t).map(|i| routing[i * n + e]).collect();
            if w.iter().all(|x| *x == 0.0) {
                continue;
            }
            let y = self.mlp(h, &format!("{p}.block_sparse_moe.experts.{e}"), ("w1", "w3", "w2"))?;
            let w = Tensor::from_vec(w, (t, 1), &self.device).map_err(ce)?;
            out = (out + y.broadcast_mul(&w).map_err(ce)?).map_err(ce)?;
        }
        Ok(out)
    }
}

/// `x cos + rotate_half(x) sin`, x `[heads, t, head_dim]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
