//! Model structure: layer slices (`m.layers[i..j]`) and `stack(...)`, which
//! builds a deeper model from slices of one or more models (frankenmerges,
//! depth upscaling), as mergekit's passthrough does.

use super::eval::{Checker, Ctx};
use super::value::*;
use crate::diag::{Code, Diagnostic};
use crate::io::{is_vocab_tensor, layer_of, with_layer};
use crate::syntax::{Arg, Expr, Ident, Span};
use std::collections::HashMap;
use std::sync::Arc;

impl Checker<'_> {
    /// `m.layers`: all of a model's layers as a slice.
    pub fn member(&mut self, target: &Expr, member: &Ident, ctx: Ctx) -> Value {
        let v = self.eval(target, ctx);
        let v = self.settle_value(v, target.span, ctx.file);
        match (v, member.name.as_str()) {
            (Value::Poison, _) => Value::Poison,
            (Value::Tensor(t), "layers") if t.arch.slice_of.is_some() => Value::Tensor(t),
            (Value::Tensor(t), "layers") if self.kind(&t) == Some(Kind::Model) => {
                let n = t.arch.n_layers;
                self.slice(&t, 0, n)
            }
            (Value::Tensor(_), "layers") => self.err(
                Diagnostic::error(Code::E0106, "only models have layers")
                    .with_label(ctx.file, target.span, "this is a task vector")
                    .with_help(
                        "slice the model and merge the slices, e.g. `slerp(a.layers[0..8], b.layers[0..8], t=0.5)`",
                    ),
            ),
            (other, name) => self.err(
                Diagnostic::error(Code::E0203, format!("{} has no member `{name}`", other.type_name()))
                    .with_label(ctx.file, member.span, "unknown member")
                    .with_help("models have `.layers`, sliced as `m.layers[i..j]`"),
            ),
        }
    }

    /// `layers[i]` or `layers[i..j]`.
    pub fn index(
        &mut self,
        target: &Expr,
        lo: Option<&Expr>,
        hi: Option<&Expr>,
        single: bool,
        span: Span,
        ctx: Ctx,
    ) -> Value {
        let t = match self.eval(target, ctx) {
            Value::Tensor(t) if t.arch.slice_of.is_some() => t,
            Value::Poison => return Value::Poison,
            other => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("only layers can be indexed, not {}", other.type_name()))
                        .with_label(ctx.file, target.span, "not a slice of layers")
                        .with_help("write `m.layers[i..j]`"),
                )
            }
        };
        let n = t.arch.n_layers;
        let mut bound = |e: Option<&Expr>, default: usize| -> Option<usize> {
            let Some(e) = e else { return Some(default) };
            match self.eval(e, ctx) {
                Value::Num(Sched::Const(x)) if x >= 0.0 && x.fract() == 0.0 => Some(x as usize),
                Value::Poison => None,
                other => {
                    self.report(
                        Diagnostic::error(
                            Code::E0106,
                            format!("a layer index must be a whole number, found {}", other.type_name()),
                        )
                        .with_label(ctx.file, e.span, "expected e.g. `0` or `8`"),
                    );
                    None
                }
            }
        };
        let (Some(l), Some(h)) = (bound(lo, 0), bound(hi, n)) else { return Value::Poison };
        let h = if single { l + 1 } else { h };
        if l >= h || h > n {
            let what = if single { format!("layer {l}") } else { format!("layers {l}..{h}") };
            return self.err(
                Diagnostic::error(Code::E0205, format!("{what} is out of range: the model has {n} layers (0..{n})"))
                    .with_label(ctx.file, span, format!("valid layers are 0..{n}"))
                    .with_help("slices are half-open, `m.layers[i..j]` with 0 <= i < j <= the layer count"),
            );
        }
        self.slice(&t, l, h)
    }

    /// Layers `lo..hi` of a model or slice, renumbered from 0.
    fn slice(&mut self, t: &TVal, lo: usize, hi: usize) -> Value {
        let parent = t.arch.slice_of.clone().unwrap_or_else(|| t.clone());
        let mut map = HashMap::new();
        let mut tensors = Vec::new();
        for sig in &t.arch.tensors {
            let Some(l) = sig.layer.filter(|l| (lo..hi).contains(l)) else { continue };
            let name = with_layer(&sig.name, l - lo);
            map.insert(name.clone(), (0, sig.name.clone()));
            tensors.push(TensorSig { name, shape: sig.shape.clone(), dtype: sig.dtype, layer: Some(l - lo) });
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let expr = self.push(TExpr::Select { parts: vec![(t.expr, t.arch.n_layers)], map: Arc::new(map) });
        let arch = Arch {
            tensors,
            n_layers: hi - lo,
            name: t.arch.name.clone(),
            origin: t.arch.origin,
            slice_of: Some(parent),
            config: t.arch.config.clone(),
            layers: t.arch.layers.get(lo..hi).map_or_else(Vec::new, <[_]>::to_vec),
        };
        Value::Tensor(TVal { expr, arch: Arc::new(arch), weight: t.weight.clone() })
    }

    /// `resize_vocab(m, like=other)`: `m` with its embedding and head cut or
    /// padded to `other`'s vocabulary size.
    pub fn call_resize_vocab(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let Some(mut b) = self.bind_args("resize_vocab", &["model", "like"], 2, 2, args, span, ctx) else {
            return Value::Poison;
        };
        let mut model = |this: &mut Self, key: &str| -> Option<TVal> {
            let (v, s) = b.remove(key).unwrap();
            match this.settle_value(v, s, ctx.file) {
                Value::Tensor(t) if this.kind(&t) == Some(Kind::Model) && t.arch.vocab().is_some() => Some(t),
                Value::Poison => None,
                other => {
                    this.report(
                        Diagnostic::error(
                            Code::E0106,
                            format!("`resize_vocab` takes models with an embedding, found {}", other.type_name()),
                        )
                        .with_label(ctx.file, s, "expected a model"),
                    );
                    None
                }
            }
        };
        let (Some(m), Some(like)) = (model(self, "model"), model(self, "like")) else { return Value::Poison };
        let (from, to) = (m.arch.vocab().unwrap(), like.arch.vocab().unwrap());
        if from == to {
            return Value::Tensor(m);
        }
        let tensors = m
            .arch
            .tensors
            .iter()
            .map(|t| {
                let mut t = t.clone();
                if is_vocab_tensor(&t.name) && t.shape.first() == Some(&from) {
                    t.shape[0] = to;
                }
                t
            })
            .collect();
        let expr = self.push(TExpr::ResizeVocab { input: m.expr, from, to });
        let mut config = m.arch.config.clone();
        config.push(("vocab_size".into(), to.into()));
        let arch = Arch { tensors, config, ..(*m.arch).clone() };
        Value::Tensor(TVal { expr, arch: Arc::new(arch), weight: m.weight.clone() })
    }

    /// `stack(a.layers[0..24], b.layers[8..32], ...)`: the slices' layers in
    /// order, embeddings from the first slice's model, final norm and head
    /// from the last's.
    pub fn call_stack(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let mut parts: Vec<(TVal, Span)> = Vec::new();
        for a in args {
            if let Some(n) = &a.name {
                return self.err(
                    Diagnostic::error(Code::E0104, format!("`stack` has no argument `{}`", n.name)).with_label(
                        ctx.file,
                        n.span,
                        "stack takes only slices, by position",
                    ),
                );
            }
            let v = self.eval(&a.value, ctx);
            match self.settle_value(v, a.value.span, ctx.file) {
                Value::Tensor(t) if t.arch.slice_of.is_some() => parts.push((t, a.value.span)),
                Value::Tensor(t) if self.kind(&t) == Some(Kind::Model) => {
                    let n = t.arch.n_layers;
                    let Value::Tensor(s) = self.slice(&t, 0, n) else { unreachable!() };
                    parts.push((s, a.value.span));
                }
                Value::Poison => return Value::Poison,
                other => {
                    return self.err(
                        Diagnostic::error(
                            Code::E0106,
                            format!("`stack` takes slices of layers, found {}", other.type_name()),
                        )
                        .with_label(ctx.file, a.value.span, "expected e.g. `m.layers[0..8]`"),
                    )
                }
            }
        }
        if parts.is_empty() {
            return self.err(
                Diagnostic::error(Code::E0105, "`stack` needs at least one slice")
                    .with_label(ctx.file, span, "nothing to stack")
                    .with_help("e.g. `stack(a.layers[0..24], b.layers[8..32])`"),
            );
        }
        // Every layer must have the same tensors: compare each part's first layer.
        let layer0 = |t: &TVal| -> Vec<(String, Vec<usize>)> {
            t.arch.tensors.iter().filter(|s| s.layer == Some(0)).map(|s| (s.name.clone(), s.shape.clone())).collect()
        };
        let first = layer0(&parts[0].0);
        for (t, s) in &parts[1..] {
            let this = layer0(t);
            if this != first {
                let (a, b) = (first.iter().find(|x| !this.contains(x)), this.iter().find(|x| !first.contains(x)));
                let why = match (a, b) {
                    (Some(a), Some(b)) if a.0 == b.0 => {
                        format!("`{}` is {:?} in the first slice but {:?} here", a.0, a.1, b.1)
                    }
                    (Some(a), _) => format!("`{}` of the first slice is missing here", a.0),
                    (_, Some(b)) => format!("`{}` exists only here", b.0),
                    _ => "their layers differ".into(),
                };
                return self.err(
                    Diagnostic::error(Code::E0201, "stacked slices have different layer architectures")
                        .with_label(ctx.file, *s, "this slice's layers differ from the first's")
                        .with_label(ctx.file, parts[0].1, "the first slice")
                        .with_note(why.replace(".0.", ".N.")),
                );
            }
        }
        let head_from = parts.last().unwrap().0.arch.slice_of.clone().unwrap();
        let embed_from = parts[0].0.arch.slice_of.clone().unwrap();
        let mut exprs: Vec<(TId, usize)> = parts.iter().map(|(t, _)| (t.expr, t.arch.n_layers)).collect();
        exprs.push((embed_from.expr, embed_from.arch.n_layers));
        exprs.push((head_from.expr, head_from.arch.n_layers));
        let (embed_part, head_part) = (parts.len(), parts.len() + 1);
        let mut map = HashMap::new();
        let mut tensors = Vec::new();
        let mut offset = 0;
        for (i, (t, _)) in parts.iter().enumerate() {
            for sig in &t.arch.tensors {
                let l = sig.layer.expect("slices hold layer tensors");
                let name = with_layer(&sig.name, offset + l);
                map.insert(name.clone(), (i, sig.name.clone()));
                tensors.push(TensorSig { name, layer: Some(offset + l), ..sig.clone() });
            }
            offset += t.arch.n_layers;
        }
        for (part, from, embed) in [(embed_part, &embed_from, true), (head_part, &head_from, false)] {
            for sig in from.arch.tensors.iter().filter(|s| layer_of(&s.name).is_none()) {
                if sig.name.contains("embed") == embed {
                    map.insert(sig.name.clone(), (part, sig.name.clone()));
                    tensors.push(sig.clone());
                }
            }
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let expr = self.push(TExpr::Select { parts: exprs, map: Arc::new(map) });
        let arch = Arch {
            tensors,
            n_layers: offset,
            name: embed_from.arch.name.clone(),
            origin: embed_from.arch.origin,
            slice_of: None,
            config: embed_from.arch.config.clone(),
            layers: parts.iter().flat_map(|(t, _)| t.arch.layers.iter().copied()).collect(),
        };
        Value::Tensor(TVal { expr, arch: Arc::new(arch), weight: Sched::Const(1.0) })
    }
}
