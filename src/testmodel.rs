//! Writes small Llama-layout checkpoints (config.json, safetensors,
//! tokenizer.json) for the tests, the examples, the demo and the benchmark,
//! so nothing has to be downloaded.
//!
//! Weights are `sum_i scale_i * N(0,1)` with each term drawn from
//! (seed_i, tensor name): a fine-tune is the base's terms plus one more, so
//! its task vector is known exactly.

use crate::io::safetensors::DType;
use crate::io::writer::{Layout, OutTensor, OutputDir};
use std::path::Path;

/// The shape of a Llama-family model.
#[derive(Clone, Debug)]
pub struct TinyLlama {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub dtype: DType,
    /// Data bytes per shard; above this the checkpoint is sharded with an index.
    pub max_shard: u64,
}

impl Default for TinyLlama {
    fn default() -> Self {
        TinyLlama {
            hidden: 32,
            intermediate: 64,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            vocab: 96,
            dtype: DType::F32,
            max_shard: u64::MAX,
        }
    }
}

impl TinyLlama {
    /// The models `fuse demo` makes, and the examples are written for.
    pub fn demo() -> TinyLlama {
        TinyLlama { hidden: 64, intermediate: 128, layers: 4, vocab: 256, ..Default::default() }
    }

    /// Tensor names and shapes in the order Hugging Face writes them.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let head_dim = h / self.heads;
        let kv = self.kv_heads * head_dim;
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.input_layernorm.weight"), vec![h]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![self.intermediate, h]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![self.intermediate, h]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![h, self.intermediate]));
        }
        v.push(("model.norm.weight".to_string(), vec![h]));
        v.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        v
    }

    pub fn params(&self) -> usize {
        self.tensors().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Writes a checkpoint whose weights are the sum of the given
    /// `(seed, scale)` noise terms (norm weights are 1 plus the terms).
    pub fn write(&self, dir: &Path, terms: &[(u64, f32)]) -> Result<(), String> {
        let names = self.tensors();
        let outs: Vec<OutTensor> =
            names.iter().map(|(n, s)| OutTensor { name: n.clone(), shape: s.clone(), dtype: self.dtype }).collect();
        let layout = Layout::plan(outs, self.max_shard);
        let out = OutputDir::create(dir, true, &layout)?;
        use rayon::prelude::*;
        names.par_iter().enumerate().try_for_each(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let mut vals = vec![if name.contains("norm") { 1.0f32 } else { 0.0 }; n];
            for &(seed, scale) in terms {
                let key = crate::rng::stream_key(seed, name, 0);
                for (i, v) in vals.iter_mut().enumerate() {
                    *v += scale * crate::rng::normal(key, i as u64) as f32;
                }
            }
            let slot = layout.slots[i];
            out.write_at(slot.shard, slot.offset, &crate::io::codec::encode(&vals, self.dtype))
                .map_err(|e| e.to_string())
        })?;
        if let Some(index) = layout.index_json() {
            out.write_file("model.safetensors.index.json", index.as_bytes())?;
        }
        out.write_file("config.json", self.config_json().as_bytes())?;
        out.write_file("tokenizer.json", self.tokenizer_json().as_bytes())?;
        out.write_file("tokenizer_config.json", b"{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"model_max_length\": 128, \"tokenizer_class\": \"PreTrainedTokenizerFast\"}\n")?;
        out.write_file("generation_config.json", b"{\"bos_token_id\": 1, \"eos_token_id\": 2}\n")?;
        out.commit().map(|_| ())
    }

    pub fn config_json(&self) -> String {
        let v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden / self.heads,
            "vocab_size": self.vocab,
            "hidden_act": "silu",
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": self.dtype.torch_name(),
        });
        serde_json::to_string_pretty(&v).unwrap() + "\n"
    }

    /// A word-level tokenizer over `tok0 .. tokN`, enough for tools that load it.
    fn tokenizer_json(&self) -> String {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(t.to_string(), i.into());
        }
        for i in 3..self.vocab {
            vocab.insert(format!("tok{i}"), i.into());
        }
        let v = serde_json::json!({
            "version": "1.0",
            "truncation": null, "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        serde_json::to_string(&v).unwrap()
    }
}
