//! The tensor graph: a checked recipe value lowered to plain data, one small
//! graph per output tensor in a shared arena. Numbers that vary per tensor
//! are evaluated here, identical nodes are shared (hash-consed), and the
//! output layout (names, shapes, dtypes, shard offsets) is fixed before any
//! tensor data is read.

use crate::ir::{Kernel, RouterMode};

use crate::io::writer::{Layout, OutTensor};
use crate::io::{Checkpoint, DType};
use crate::ir::{Recipe, Sched, TExpr, TId, TVal, TensorCtx, HEAD, TIED_EMBED};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

mod modules;

pub type NodeId = usize;

/// An f64 that can be hashed, so nodes with equal coefficients are shared.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct F(u64);

impl F {
    pub fn new(x: f64) -> F {
        F((x + 0.0).to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// What a node computes. Every node yields one f32 tensor of its node's shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Tensor `tensor` of input model `model`, converted to f32.
    Load { model: usize, tensor: String },
    /// `sum_i c_i * x_i`.
    Lin(Vec<(F, NodeId)>),
    /// A native kernel over its inputs (see `kernel.rs`).
    Kernel { kernel: Kernel<F>, inputs: Vec<NodeId> },
    /// All zeros (a LoRA's delta for tensors it does not touch).
    Zeros,
    /// A mixture-of-experts router weight for tensor `tensor`.
    Router { mode: RouterMode, tensor: String },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub shape: Vec<usize>,
}

/// One tensor of the output and the node that computes it.
#[derive(Clone, Debug)]
pub struct OutputTensor {
    pub name: String,
    pub node: NodeId,
    pub layer: Option<usize>,
}

/// Everything needed to compute and write one output checkpoint.
pub struct Plan {
    pub nodes: Vec<Node>,
    pub outputs: Vec<OutputTensor>,
    /// Shards and offsets; `layout.tensors[i]` is `outputs[i]`.
    pub layout: Layout,
    pub models: Vec<Arc<Checkpoint>>,
    /// The model whose config.json and tokenizer the output takes.
    pub origin: usize,
    /// The output's layer count (config.json's `num_hidden_layers`).
    pub n_layers: usize,
    /// Further config.json fields to set.
    pub config: Vec<(String, serde_json::Value)>,
    /// Where each output layer came from: (model, layer), for config.json's per-layer lists.
    pub layers: Vec<(usize, usize)>,
    /// Warnings about the output found while lowering (module weights copied unmerged).
    pub notes: Vec<String>,
    pub dtype: Option<DType>,
}

struct Builder<'r> {
    recipe: &'r Recipe,
    nodes: Vec<Node>,
    shared: HashMap<Op, NodeId>,
}

impl<'r> Builder<'r> {
    fn node(&mut self, op: Op, shape: &[usize]) -> NodeId {
        if let Some(&id) = self.shared.get(&op) {
            return id;
        }
        self.nodes.push(Node { op: op.clone(), shape: shape.to_vec() });
        self.shared.insert(op, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// The node for `e` at the tensor `ctx` names. `memo` is keyed by the
    /// name without copying it: a sum of many terms looks it up once a term.
    fn lower<'n>(
        &mut self,
        e: TId,
        ctx: &TensorCtx<'n>,
        shape: &[usize],
        memo: &mut HashMap<(TId, &'n str), NodeId>,
    ) -> NodeId
    where
        'r: 'n,
    {
        if let Some(&n) = memo.get(&(e, ctx.name)) {
            return n;
        }
        let ev = |s: &Sched| F::new(s.eval(ctx));
        let recipe: &'r Recipe = self.recipe;
        let id = match &recipe.exprs[e] {
            TExpr::Load { model } => {
                // A model that ties its head to its embedding reads the embedding as its head.
                let ck = &recipe.models[*model];
                let tensor = if ctx.name == HEAD && !ck.tensors.contains_key(HEAD) { TIED_EMBED } else { ctx.name };
                self.node(Op::Load { model: *model, tensor: tensor.to_string() }, shape)
            }
            TExpr::Lin(terms) => {
                let terms: Vec<(F, NodeId)> =
                    terms.iter().map(|(c, t)| (ev(c), self.lower(*t, ctx, shape, memo))).collect();
                match terms.as_slice() {
                    [(c, only)] if c.get() == 1.0 => *only,
                    _ => self.node(Op::Lin(terms), shape),
                }
            }
            TExpr::Lora { adapter, map, scale } => match map.get(ctx.name) {
                None => self.node(Op::Zeros, shape),
                Some((a, b)) => {
                    let ck = &self.recipe.models[*adapter];
                    let load = |t: &String| {
                        (Op::Load { model: *adapter, tensor: t.clone() }, ck.tensors[t].info.shape.clone())
                    };
                    let ((la, sa), (lb, sb)) = (load(a), load(b));
                    let (na, nb) = (self.node(la, &sa), self.node(lb, &sb));
                    self.node(
                        Op::Kernel { kernel: Kernel::LoraProduct { scale: F::new(*scale) }, inputs: vec![nb, na] },
                        shape,
                    )
                }
            },
            TExpr::ResizeVocab { input, from, to } => {
                if crate::io::is_vocab_tensor(ctx.name) && shape.first() == Some(to) {
                    let mut in_shape = shape.to_vec();
                    in_shape[0] = *from;
                    let x = self.lower(*input, ctx, &in_shape, memo);
                    self.node(Op::Kernel { kernel: Kernel::ResizeRows { from: *from as u64 }, inputs: vec![x] }, shape)
                } else {
                    self.lower(*input, ctx, shape, memo)
                }
            }
            TExpr::Router { mode, .. } => {
                self.node(Op::Router { mode: mode.clone(), tensor: ctx.name.to_string() }, shape)
            }
            TExpr::Select { parts, map } => {
                let (part, source) = &map[ctx.name];
                let (expr, n_layers) = parts[*part];
                let inner = TensorCtx { name: source, layer: crate::io::layer_of(source), n_layers };
                self.lower(expr, &inner, shape, memo)
            }
            TExpr::Kernel { kernel, inputs } => {
                let inputs: Vec<NodeId> = inputs.iter().map(|x| self.lower(*x, ctx, shape, memo)).collect();
                match kernel.map(&ev) {
                    // Without sign election a consensus is a linear combination.
                    Kernel::Consensus { weights, elect_sign: false, normalize } => {
                        let sum: f64 = weights.iter().map(|w| w.get()).sum();
                        let div = if normalize && sum.abs() >= 1e-8 { sum } else { 1.0 };
                        let terms = weights.iter().zip(&inputs).map(|(w, d)| (F::new(w.get() / div), *d)).collect();
                        self.node(Op::Lin(terms), shape)
                    }
                    kernel => self.node(Op::Kernel { kernel, inputs }, shape),
                }
            }
        };
        memo.insert((e, ctx.name), id);
        id
    }

    /// The models that expression `e` reads tensor `name` of and that hold
    /// it, in the expression's order (left operand first).
    fn holders(&self, e: TId, name: &str, out: &mut Vec<usize>) {
        match &self.recipe.exprs[e] {
            TExpr::Load { model } => {
                if self.recipe.models[*model].tensors.contains_key(name) && !out.contains(model) {
                    out.push(*model);
                }
            }
            TExpr::Lin(terms) => terms.iter().for_each(|(_, t)| self.holders(*t, name, out)),
            TExpr::Kernel { inputs, .. } => inputs.iter().for_each(|t| self.holders(*t, name, out)),
            TExpr::ResizeVocab { input, .. } => self.holders(*input, name, out),
            TExpr::Select { parts, map } => {
                if let Some((part, source)) = map.get(name) {
                    self.holders(parts[*part].0, source, out);
                }
            }
            TExpr::Lora { .. } | TExpr::Router { .. } => {}
        }
    }

    /// An integer or boolean tensor (a buffer such as `position_ids`) is
    /// never merged: it is the recipe's base's, else the first holder's.
    fn buffer(&mut self, e: TId, name: &str, shape: &[usize]) -> Option<NodeId> {
        let mut holders = Vec::new();
        self.holders(e, name, &mut holders);
        let model = holders.iter().copied().find(|m| Some(*m) == self.recipe.base).or(holders.first().copied())?;
        let source = self.source_name(e, name);
        Some(self.node(Op::Load { model, tensor: source }, shape))
    }

    /// The name tensor `name` of `e` has in the models it reads (Selects rename).
    fn source_name(&self, e: TId, name: &str) -> String {
        match &self.recipe.exprs[e] {
            TExpr::Select { parts, map } => match map.get(name) {
                Some((part, source)) => self.source_name(parts[*part].0, source),
                None => name.to_string(),
            },
            TExpr::Lin(terms) => terms.first().map_or(name.to_string(), |(_, t)| self.source_name(*t, name)),
            TExpr::Kernel { inputs, .. } => inputs.first().map_or(name.to_string(), |t| self.source_name(*t, name)),
            TExpr::ResizeVocab { input, .. } => self.source_name(*input, name),
            _ => name.to_string(),
        }
    }
}

/// Lowers `value` to a plan for one output checkpoint.
pub fn lower(recipe: &Recipe, value: &TVal, dtype: Option<DType>, max_shard: u64) -> Plan {
    let arch = &value.arch;
    let mut b = Builder { recipe, nodes: Vec::new(), shared: HashMap::new() };
    let mut order: Vec<usize> = (0..arch.tensors.len()).collect();
    // Embeddings first, then layer by layer, then the final norm and head:
    // the order people expect in a checkpoint, and the order layers stream in.
    order.sort_by_key(|&i| {
        let t = &arch.tensors[i];
        let group = match t.layer {
            Some(_) => 1,
            None if t.name.contains("embed") => 0,
            None => 2,
        };
        (group, t.layer.unwrap_or(0), t.name.clone())
    });
    let mut outputs = Vec::new();
    let mut outs = Vec::new();
    for i in order {
        let t = &arch.tensors[i];
        let ctx = TensorCtx { name: &t.name, layer: t.layer, n_layers: arch.n_layers };
        let buffer = if t.dtype.is_float() { None } else { b.buffer(value.expr, &t.name, &t.shape) };
        let node = buffer.unwrap_or_else(|| b.lower(value.expr, &ctx, &t.shape, &mut HashMap::new()));
        outputs.push(OutputTensor { name: t.name.clone(), node, layer: t.layer });
        let out_dtype = match dtype {
            Some(d) if t.dtype.is_float() => d,
            _ => t.dtype,
        };
        outs.push(OutTensor { name: t.name.clone(), shape: t.shape.clone(), dtype: out_dtype });
    }
    // Sentence-transformers module weights of the origin model, after the head.
    let mut notes: Vec<String> = Vec::new();
    for (name, t) in recipe.models[arch.origin].tensors.iter().filter(|(n, _)| n.contains('/')) {
        let (node, why) = b.module_tensor(value.expr, arch.origin, name, &t.info.shape);
        if let Some(why) = why {
            let folder = crate::io::modules::folder_of(name).unwrap_or_default();
            let origin = recipe.models[arch.origin].root.display();
            let note = format!("module weights `{folder}/` were copied from `{origin}` unmerged: {why}");
            if !notes.iter().any(|n| n.starts_with(&format!("module weights `{folder}/`"))) {
                notes.push(note);
            }
        }
        outputs.push(OutputTensor { name: name.clone(), node, layer: None });
        let out_dtype = match dtype {
            Some(d) if t.info.dtype.is_float() => d,
            _ => t.info.dtype,
        };
        outs.push(OutTensor { name: name.clone(), shape: t.info.shape.clone(), dtype: out_dtype });
    }
    Plan {
        nodes: b.nodes,
        outputs,
        layout: Layout::plan(outs, max_shard),
        models: recipe.models.clone(),
        origin: arch.origin,
        n_layers: arch.n_layers,
        config: arch.config.clone(),
        layers: arch.layers.clone(),
        notes,
        dtype,
    }
}

impl fmt::Display for Plan {
    /// The plan as `fuse graph` prints it: each output tensor's nodes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let op = match &n.op {
                Op::Load { model, tensor } => format!("load m{model}[{tensor}]"),
                Op::Lin(terms) => terms.iter().map(|(c, x)| format!("{:?}*%{x}", c)).collect::<Vec<_>>().join(" + "),
                Op::Zeros => "zeros".into(),
                Op::Router { mode, .. } => format!("router({mode:?})"),
                Op::Kernel { kernel, inputs } => {
                    format!("{kernel:?}({})", inputs.iter().map(|x| format!("%{x}")).collect::<Vec<_>>().join(", "))
                }
            };
            writeln!(f, "%{i} {:?} = {op}", n.shape)?;
        }
        for o in &self.outputs {
            writeln!(f, "out {} = %{}", o.name, o.node)?;
        }
        Ok(())
    }
}
