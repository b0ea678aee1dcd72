//! Symbolic tensor values: the per-tensor expression arena ([`TExpr`]) the
//! checker writes and lowering reads, and the architectures ([`Arch`]) that
//! type them.

use super::kernel::{Kernel, RouterMode};
use super::sched::{Sched, TensorCtx};
use crate::io::{is_vocab_tensor, layer_of, Checkpoint, DType};
use std::sync::Arc;

/// One tensor of an architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSig {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub layer: Option<usize>,
}

/// A model's architecture: its tensor table and layer count, read from
/// config.json and the safetensors headers.
#[derive(Clone, Debug)]
pub struct Arch {
    pub tensors: Vec<TensorSig>,
    pub n_layers: usize,
    pub name: Option<String>,
    /// Which model of the recipe it was read from (config and tokenizer come from it).
    pub origin: usize,
    /// For a slice of layers (`m.layers[i..j]`): the model it was cut from,
    /// whose embeddings, final norm and head `stack` takes.
    pub slice_of: Option<TVal>,
    /// config.json fields the output sets (a MoE becomes Mixtral).
    pub config: Vec<(String, serde_json::Value)>,
    /// Where each layer came from: (recipe model, its layer index). Slices
    /// and `stack` rearrange it; config.json's per-layer lists follow it.
    pub layers: Vec<(usize, usize)>,
}

impl Arch {
    pub fn from_checkpoint(ck: &Checkpoint, origin: usize) -> Arch {
        let tensors = ck
            .tensors
            .iter()
            // Sentence-transformers module weights (`2_Dense/linear.weight`)
            // are not part of the architecture the checker compares.
            .filter(|(name, _)| !name.contains('/'))
            .map(|(name, t)| TensorSig {
                name: name.clone(),
                shape: t.info.shape.clone(),
                dtype: t.info.dtype,
                layer: layer_of(name),
            })
            .collect();
        Arch {
            tensors,
            n_layers: ck.n_layers(),
            name: ck.architecture().map(str::to_string),
            origin,
            slice_of: None,
            config: Vec::new(),
            layers: (0..ck.n_layers()).map(|l| (origin, l)).collect(),
        }
    }

    pub fn params(&self) -> usize {
        self.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum()
    }

    /// The first difference from `other`, in words, or None when they agree.
    pub fn mismatch(&self, other: &Arch) -> Option<String> {
        if self.slice_of.is_some() != other.slice_of.is_some() {
            return Some("a slice of layers cannot be combined with a whole model".into());
        }
        if self.slice_of.is_some() && self.n_layers != other.n_layers {
            return Some(format!(
                "the slices have {} and {} layers; merged slices must be equally long",
                self.n_layers, other.n_layers
            ));
        }
        let mut a = self.tensors.iter().peekable();
        let mut b = other.tensors.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return None,
                (Some(x), Some(y)) if x.name == y.name => {
                    if x.shape != y.shape {
                        return Some(format!(
                            "tensor `{}` is {:?} on the left but {:?} on the right",
                            x.name, x.shape, y.shape
                        ));
                    }
                    a.next();
                    b.next();
                }
                (Some(x), y) if y.is_none_or(|y| x.name < y.name) => {
                    return Some(format!("tensor `{}` ({:?}) exists only on the left", x.name, x.shape));
                }
                (_, Some(y)) => return Some(format!("tensor `{}` ({:?}) exists only on the right", y.name, y.shape)),
                (Some(_), None) => unreachable!(),
            }
        }
    }

    /// The vocabulary size: rows of the input embedding.
    pub fn vocab(&self) -> Option<usize> {
        self.tensors.iter().find(|t| t.name.contains("embed_tokens")).map(|t| t.shape[0])
    }

    /// Whether `other` differs only in vocabulary size (embedding and head rows).
    pub fn differs_only_in_vocab(&self, other: &Arch) -> bool {
        self.tensors.len() == other.tensors.len()
            && self.vocab() != other.vocab()
            && self.tensors.iter().zip(&other.tensors).all(|(a, b)| {
                a.name == b.name && (a.shape == b.shape || (is_vocab_tensor(&a.name) && a.shape[1..] == b.shape[1..]))
            })
    }

    /// Per-tensor contexts, for evaluating schedules over the whole model.
    pub fn contexts(&self) -> impl Iterator<Item = TensorCtx<'_>> {
        self.tensors.iter().map(|t| TensorCtx { name: &t.name, layer: t.layer, n_layers: self.n_layers })
    }

    pub fn summary(&self) -> String {
        let name = self.name.as_deref().unwrap_or("unknown architecture");
        format!(
            "{name}, {} layers, {} tensors, {} parameters",
            self.n_layers,
            self.tensors.len(),
            human_count(self.params())
        )
    }
}

pub fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Index of a [`TExpr`] in the recipe's arena.
pub type TId = usize;

/// A tensor-valued expression over the recipe's models, the same for every
/// tensor name; `graph/` instantiates it per tensor.
#[derive(Clone, Debug)]
pub enum TExpr {
    /// The same-named tensor of model `model`.
    Load { model: usize },
    /// `sum_i c_i * x_i`.
    Lin(Vec<(Sched, TId)>),
    /// A native kernel over its inputs, with numbers that may vary per tensor.
    Kernel { kernel: Kernel<Sched>, inputs: Vec<TId> },
    /// Tensors taken from other values under other names (layer slices and
    /// stacks): output name -> (part, that part's tensor name). Each part
    /// is given with its layer count, for per-tensor numbers inside it.
    Select { parts: Vec<(TId, usize)>, map: Arc<std::collections::HashMap<String, (usize, String)>> },
    /// A LoRA adapter (model `adapter` of the recipe) as a delta: base tensor
    /// name -> (its lora_A, its lora_B); `scale` is alpha / r.
    Lora { adapter: usize, map: Arc<std::collections::HashMap<String, (String, String)>>, scale: f64 },
    /// A mixture-of-experts router weight [experts, hidden].
    Router { experts: usize, hidden: usize, mode: RouterMode },
    /// `input` with its embedding and head cut or padded from `from` rows to
    /// `to` rows (new rows: the mean of the existing ones).
    ResizeVocab { input: TId, from: usize, to: usize },
}

/// A symbolic tensor-valued value: an expression, its architecture, and the
/// sum of its model weights (1 for a model, 0 for a task vector).
#[derive(Clone, Debug)]
pub struct TVal {
    pub expr: TId,
    pub arch: Arc<Arch>,
    pub weight: Sched,
}
