//! The values a recipe evaluates to while it is checked. Tensor-valued ones
//! are symbolic ([`TExpr`] nodes over models) and carry their architecture;
//! numbers may vary per tensor ([`Sched`]). Nothing here holds weights.

use crate::diag::FileId;
use crate::io::{layer_of, Checkpoint, DType};
use crate::syntax::{BinOp, Span};
use std::sync::Arc;

/// A number that may depend on the tensor it is used for.
#[derive(Clone, Debug, PartialEq)]
pub enum Sched {
    Const(f64),
    /// `layer / (n_layers - 1)`, 0 outside the layer stack.
    Depth,
    /// The layer index, 0 outside the layer stack.
    Layer,
    /// mergekit's gradient: piecewise linear in depth through the values.
    OverLayers(Vec<Sched>),
    /// `match tensor { "glob" => a, ..., _ => d }`: the first matching glob wins.
    Match(Vec<(String, Sched)>, Box<Sched>),
    /// Operators applied left to right: `Fold(a, [(+, b), (*, c)])` is
    /// `(a + b) * c`. One flat node, so that a long sum never nests deeply.
    Fold(Box<Sched>, Vec<(BinOp, Sched)>),
    Neg(Box<Sched>),
    /// `a / b`, or the fallback where `|b| < 1e-6` (nuslerp's weight ratio).
    Ratio(Box<Sched>, Box<Sched>, f64),
}

/// What a per-tensor number is evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct TensorCtx<'a> {
    pub name: &'a str,
    pub layer: Option<usize>,
    pub n_layers: usize,
}

impl TensorCtx<'_> {
    pub fn depth(&self) -> f64 {
        match self.layer {
            Some(l) if self.n_layers > 1 => l as f64 / (self.n_layers - 1) as f64,
            Some(_) => 1.0,
            None => 0.0,
        }
    }
}

impl Sched {
    pub fn as_const(&self) -> Option<f64> {
        match self {
            Sched::Const(c) => Some(*c),
            _ => None,
        }
    }

    /// Folds constants so that plain arithmetic stays a plain number, and
    /// extends a fold on the left in place (a long sum costs no copying).
    pub fn bin(op: BinOp, a: Sched, b: Sched) -> Sched {
        match (a, b) {
            (Sched::Const(x), Sched::Const(y)) => Sched::Const(op.apply(x, y)),
            (Sched::Fold(first, mut rest), b) => {
                rest.push((op, b));
                Sched::Fold(first, rest)
            }
            (a, b) => Sched::Fold(Box::new(a), vec![(op, b)]),
        }
    }

    pub fn negate(a: Sched) -> Sched {
        match a {
            Sched::Const(c) => Sched::Const(-c),
            other => Sched::Neg(Box::new(other)),
        }
    }

    pub fn eval(&self, ctx: &TensorCtx) -> f64 {
        match self {
            Sched::Const(c) => *c,
            Sched::Depth => ctx.depth(),
            Sched::Layer => ctx.layer.unwrap_or(0) as f64,
            Sched::OverLayers(vals) => {
                let t = ctx.depth();
                let m = vals.len();
                if m == 1 {
                    return vals[0].eval(ctx);
                }
                let x = t * (m - 1) as f64;
                let i = (x.floor() as usize).min(m - 2);
                let frac = x - i as f64;
                let (a, b) = (vals[i].eval(ctx), vals[i + 1].eval(ctx));
                a + (b - a) * frac
            }
            Sched::Match(arms, default) => {
                arms.iter().find(|(g, _)| glob_match(g, ctx.name)).map_or(&**default, |(_, v)| v).eval(ctx)
            }
            Sched::Fold(first, rest) => rest.iter().fold(first.eval(ctx), |x, (op, b)| op.apply(x, b.eval(ctx))),
            Sched::Neg(a) => -a.eval(ctx),
            Sched::Ratio(a, b, fallback) => {
                let d = b.eval(ctx);
                if d.abs() < 1e-6 {
                    *fallback
                } else {
                    a.eval(ctx) / d
                }
            }
        }
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

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
}

impl Arch {
    pub fn from_checkpoint(ck: &Checkpoint, origin: usize) -> Arch {
        let tensors = ck
            .tensors
            .iter()
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

/// Tensors whose first dimension is the vocabulary: input embedding and output head.
pub fn is_vocab_tensor(name: &str) -> bool {
    name.contains("embed_tokens")
        || name.starts_with("lm_head")
        || name.contains("wte")
        || name.contains("output.weight")
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
    Kernel { kernel: crate::graph::Kernel<Sched>, inputs: Vec<TId> },
    /// Tensors taken from other values under other names (layer slices and
    /// stacks): output name -> (part, that part's tensor name). Each part
    /// is given with its layer count, for per-tensor numbers inside it.
    Select { parts: Vec<(TId, usize)>, map: Arc<std::collections::HashMap<String, (usize, String)>> },
    /// A LoRA adapter (model `adapter` of the recipe) as a delta: base tensor
    /// name -> (its lora_A, its lora_B); `scale` is alpha / r.
    Lora { adapter: usize, map: Arc<std::collections::HashMap<String, (String, String)>>, scale: f64 },
    /// A mixture-of-experts router weight [experts, hidden].
    Router { experts: usize, hidden: usize, mode: crate::graph::RouterMode },
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

/// Model or task vector, once a weighted sum has been settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    Delta,
}

/// A function value: a builtin by name, or a `fn` of the recipe.
#[derive(Clone, Debug)]
pub enum Func {
    Builtin(&'static str),
    User(Arc<UserFn>),
}

#[derive(Debug)]
pub struct UserFn {
    pub name: String,
    pub params: Vec<crate::syntax::FnParam>,
    pub body: crate::syntax::Expr,
    pub file: FileId,
    pub span: Span,
}

/// A value during checking.
#[derive(Clone, Debug)]
pub enum Value {
    Num(Sched),
    Bool(bool),
    Str(String),
    DType(DType),
    List(Vec<Value>),
    Tensor(TVal),
    Func(Func),
    /// The `tensor` binding: the name of the tensor being computed.
    TensorName,
    /// `none`: an optional argument left out.
    None,
    /// An error was already reported for this value; uses stay quiet.
    Poison,
}

impl Value {
    /// The type's name as users read it in diagnostics.
    pub fn type_name(&self) -> String {
        match self {
            Value::Num(_) => "Num".into(),
            Value::Bool(_) => "Bool".into(),
            Value::Str(_) => "Str".into(),
            Value::DType(_) => "DType".into(),
            Value::List(items) => match items.first() {
                Some(v) => format!("[{}]", v.type_name()),
                None => "[]".into(),
            },
            Value::Tensor(t) if t.arch.slice_of.is_some() => "Layers".into(),
            Value::Tensor(t) => match t.weight.as_const() {
                Some(w) if (w - 1.0).abs() < 1e-9 => "Model".into(),
                Some(w) if w.abs() < 1e-9 => "Delta".into(),
                _ => "a weighted sum of models".into(),
            },
            Value::Func(_) => "a function".into(),
            Value::TensorName => "the tensor name".into(),
            Value::None => "none".into(),
            Value::Poison => "an erroneous value".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*self_attn*", "model.layers.0.self_attn.q_proj.weight"));
        assert!(!glob_match("*mlp*", "model.layers.0.self_attn.q_proj.weight"));
        assert!(glob_match("model.layers.?.mlp*", "model.layers.3.mlp.up_proj.weight"));
        assert!(glob_match("lm_head.weight", "lm_head.weight"));
    }

    #[test]
    fn gradients_follow_mergekit() {
        let g = Sched::OverLayers(vec![Sched::Const(0.0), Sched::Const(0.5), Sched::Const(1.0)]);
        let at = |layer| g.eval(&TensorCtx { name: "x", layer, n_layers: 5 });
        assert_eq!(at(None), 0.0);
        assert_eq!(at(Some(0)), 0.0);
        assert!((at(Some(1)) - 0.25).abs() < 1e-12);
        assert_eq!(at(Some(4)), 1.0);
    }
}
