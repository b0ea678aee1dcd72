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

/// The output head that a model with `tie_word_embeddings` lacks.
pub const HEAD: &str = "lm_head.weight";
/// The embedding such a model uses as its head.
pub const TIED_EMBED: &str = "model.embed_tokens.weight";

/// How two architectures differ in the tensors merges combine.
#[derive(Default, Debug)]
pub struct ArchDiff<'a> {
    pub only_left: Vec<&'a TensorSig>,
    pub only_right: Vec<&'a TensorSig>,
    pub shapes: Vec<(&'a TensorSig, &'a TensorSig)>,
}

impl ArchDiff<'_> {
    pub fn is_empty(&self) -> bool {
        self.only_left.is_empty() && self.only_right.is_empty() && self.shapes.is_empty()
    }
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

    /// The tensors merges compare with `other`'s: the floating-point ones
    /// (integer buffers are copied, never merged), less a head that `other`
    /// ties to its embedding.
    fn merged<'a>(&'a self, other: &'a Arch) -> impl Iterator<Item = &'a TensorSig> + 'a {
        let skip_head = other.tied_head().is_some() && self.get(HEAD).is_some();
        self.tensors.iter().filter(move |t| t.dtype.is_float() && !(skip_head && t.name == HEAD))
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorSig> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// For a model whose head is its embedding (`tie_word_embeddings`, no
    /// `lm_head.weight`): that embedding.
    pub fn tied_head(&self) -> Option<&TensorSig> {
        self.get(HEAD).is_none().then(|| self.get(TIED_EMBED)).flatten()
    }

    /// What merging with `other` compares: the tensors only one side has,
    /// and those whose shapes differ (integer buffers and a tied head left out).
    pub fn diff<'a>(&'a self, other: &'a Arch) -> ArchDiff<'a> {
        let mut d = ArchDiff::default();
        let (mut a, mut b) = (self.merged(other).peekable(), other.merged(self).peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => return d,
                (Some(x), Some(y)) if x.name == y.name => {
                    if x.shape != y.shape {
                        d.shapes.push((x, y));
                    }
                    a.next();
                    b.next();
                }
                (Some(x), y) if y.is_none_or(|y| x.name < y.name) => {
                    d.only_left.push(*x);
                    a.next();
                }
                (_, Some(y)) => {
                    d.only_right.push(*y);
                    b.next();
                }
                (Some(_), None) => unreachable!(),
            }
        }
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
        let d = self.diff(other);
        let first = [
            d.shapes.first().map(|(x, y)| (x.name.as_str(), 0, Some((x, y)))),
            d.only_left.first().map(|x| (x.name.as_str(), 1, None)),
            d.only_right.first().map(|y| (y.name.as_str(), 2, None)),
        ];
        let (name, side, shapes) = first.into_iter().flatten().min_by(|a, b| a.0.cmp(b.0))?;
        Some(match (side, shapes) {
            (0, Some((x, y))) => format!("tensor `{name}` is {:?} on the left but {:?} on the right", x.shape, y.shape),
            (1, _) => format!("tensor `{name}` ({:?}) exists only on the left", d.only_left[0].shape),
            _ => format!("tensor `{name}` ({:?}) exists only on the right", d.only_right[0].shape),
        })
    }

    /// `self` with what merging it with `other` adds: `other`'s integer
    /// buffers that `self` lacks, and a head where `self` ties its head to
    /// its embedding and `other` has one (the output then has its own head,
    /// so its config says `tie_word_embeddings: false`). None when nothing is added.
    pub fn union(&self, other: &Arch) -> Option<Arch> {
        let head = other.get(HEAD).filter(|_| self.tied_head().is_some());
        let extra: Vec<&TensorSig> = other
            .tensors
            .iter()
            .filter(|t| (!t.dtype.is_float() || Some(*t) == head) && self.get(&t.name).is_none())
            .collect();
        if extra.is_empty() {
            return None;
        }
        let mut out = self.clone();
        out.tensors.extend(extra.into_iter().cloned());
        out.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        if out.get(HEAD).is_some() && self.get(HEAD).is_none() {
            out.config.retain(|(k, _)| k != "tie_word_embeddings");
            out.config.push(("tie_word_embeddings".into(), serde_json::Value::Bool(false)));
        }
        Some(out)
    }

    /// The integer and boolean tensors (buffers such as `position_ids`).
    pub fn buffers(&self) -> impl Iterator<Item = &TensorSig> {
        self.tensors.iter().filter(|t| !t.dtype.is_float())
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
