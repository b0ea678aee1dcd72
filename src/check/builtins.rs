//! How the natives of `natives.rs` are evaluated: `model`, `over_layers`,
//! the primitives the standard library is written in, and the merge methods
//! that are native kernels.

use super::call::Bound;
use super::eval::{Checker, Ctx};
use super::natives::{Arity, BaseUse, Default as PDefault, How, MethodSpec, Native};
use super::value::*;
use crate::diag::{Code, Diagnostic};
use crate::io::{Checkpoint, OpenError};
use crate::ir::{Kernel, Sparsify};
use crate::syntax::{Arg, BinOp, Span};
use std::path::PathBuf;
use std::sync::Arc;

impl Checker<'_> {
    /// Calls a native function as the table in `natives.rs` says.
    pub fn call_native(&mut self, native: &'static Native, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        match native.how {
            How::Special(f) => f(self, args, span, ctx),
            How::Bound { required, eval } => {
                let names: Vec<&str> = native.params.iter().map(|p| p.name).collect();
                let Some(mut b) = self.bind_args(native.name, &names, names.len(), required, args, span, ctx) else {
                    return Value::Poison;
                };
                if b.values().any(|(v, _)| matches!(v, Value::Poison)) {
                    return Value::Poison;
                }
                eval(self, native, &mut b, span, ctx)
            }
            How::Method(spec) => self.call_method(native, &spec, args, span, ctx),
        }
    }

    pub(super) fn native_model(&mut self, _: &'static Native, b: &mut Bound, _: Span, ctx: Ctx) -> Value {
        self.call_model(b.remove("path").unwrap(), ctx)
    }

    fn call_model(&mut self, (v, pspan): (Value, Span), ctx: Ctx) -> Value {
        let spec = match v {
            Value::Str(s) => s,
            other => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`model` takes a path string, found {}", other.type_name()))
                        .with_label(ctx.file, pspan, "expected a string like \"models/base\""),
                )
            }
        };
        let key = if spec.starts_with("hf:") {
            PathBuf::from(&spec)
        } else {
            ctx.dir.join(&spec).canonicalize().unwrap_or(ctx.dir.join(&spec))
        };
        if let Some(&i) = self.model_index.get(&key) {
            return Value::Tensor(self.load_value(i));
        }
        match Checkpoint::open(&spec, ctx.dir) {
            Ok(ck) => {
                let what = format!("the model `{spec}`");
                self.inputs.push(crate::ir::Input::checkpoint(what, &ck, ctx.file, pspan));
                let i = self.models.len();
                self.archs.push(Arc::new(Arch::from_checkpoint(&ck, i)));
                self.models.push(Arc::new(ck));
                self.model_index.insert(key, i);
                Value::Tensor(self.load_value(i))
            }
            Err(OpenError::NotFound { what, help }) => self.err(
                Diagnostic::error(Code::E0301, format!("model not found: {what}"))
                    .with_label(ctx.file, pspan, "no checkpoint here")
                    .with_help(help),
            ),
            Err(OpenError::Bad { file, what }) => self.err(
                Diagnostic::error(Code::E0302, format!("bad checkpoint `{}`: {what}", file.display()))
                    .with_label(ctx.file, pspan, "this checkpoint cannot be read")
                    .with_help("re-download or re-save the checkpoint; fuse reads safetensors or pytorch_model.bin files with a config.json beside them, and GGUF files"),
            ),
        }
    }

    fn load_value(&mut self, model: usize) -> TVal {
        let expr = self.push(TExpr::Load { model });
        TVal { expr, arch: self.archs[model].clone(), weight: Sched::Const(1.0) }
    }

    pub(super) fn call_over_layers(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let mut vals = Vec::new();
        for a in args {
            if let Some(n) = &a.name {
                return self.err(
                    Diagnostic::error(Code::E0104, format!("`over_layers` has no argument `{}`", n.name)).with_label(
                        ctx.file,
                        n.span,
                        "over_layers takes only the values, by position",
                    ),
                );
            }
            match self.eval(&a.value, ctx) {
                Value::Num(s) => vals.push(s),
                Value::Poison => return Value::Poison,
                other => {
                    return self.err(
                        Diagnostic::error(
                            Code::E0106,
                            format!("`over_layers` takes numbers, found {}", other.type_name()),
                        )
                        .with_label(ctx.file, a.value.span, "expected a number"),
                    )
                }
            }
        }
        if vals.is_empty() {
            return self.err(Diagnostic::error(Code::E0105, "`over_layers` needs at least one value").with_label(
                ctx.file,
                span,
                "e.g. `over_layers(0, 0.5, 1)`",
            ));
        }
        Value::Num(Sched::OverLayers(vals))
    }

    // ---- primitives of the standard library ----

    /// A list of tensor values (or one), settled, of one architecture.
    fn tensors(&mut self, (v, s): (Value, Span), what: &str, ctx: Ctx) -> Option<Vec<TVal>> {
        let items = match v {
            Value::List(items) => items,
            Value::Tensor(t) => vec![Value::Tensor(t)],
            other => {
                self.report(
                    Diagnostic::error(Code::E0106, format!("expected a list of {what}, found {}", other.type_name()))
                        .with_label(ctx.file, s, format!("expected {what}")),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            match self.settle_value(item, s, ctx.file) {
                Value::Tensor(t) => out.push(t),
                Value::Poison => return None,
                other => {
                    self.report(
                        Diagnostic::error(Code::E0106, format!("expected {what}, found {}", other.type_name()))
                            .with_label(ctx.file, s, format!("this holds {}", other.type_name())),
                    );
                    return None;
                }
            }
        }
        if out.is_empty() {
            self.report(
                Diagnostic::error(Code::E0105, format!("no {what} given"))
                    .with_label(ctx.file, s, "an empty list")
                    .with_help("pass the models first: `method(a, b, ...)`"),
            );
            return None;
        }
        for i in 1..out.len() {
            out[0].arch = self.same_arch(&out[0].clone(), &out[i].clone(), s, s, ctx.file)?;
        }
        Some(out)
    }

    /// The base for task vectors: the one given, else the binding `base`.
    pub fn base_model(&mut self, given: Option<(Value, Span)>, span: Span, who: &str, ctx: Ctx) -> Option<TVal> {
        let (v, s) = match given {
            Some((Value::None, _)) | None => match self.globals.get("base").map(|b| (b.value.clone(), b.span)) {
                Some(b) => b,
                None => {
                    self.report(
                        Diagnostic::error(Code::E0204, format!("`{who}` needs task vectors, but no base model is known"))
                            .with_label(ctx.file, span, "these models would become `model - base`")
                            .with_help(format!(
                                "pass `base=...` to `{who}`, bind a model to the name `base`, or give task vectors (`a - b`)"
                            )),
                    );
                    return None;
                }
            },
            Some(g) => g,
        };
        match v {
            Value::Tensor(b) if self.kind(&b) == Some(Kind::Model) => Some(b),
            Value::Poison => None,
            other => {
                self.report(
                    Diagnostic::error(Code::E0106, format!("the base must be a model, found {}", other.type_name()))
                        .with_label(ctx.file, s, "not a model"),
                );
                None
            }
        }
    }

    pub(super) fn task_vectors(&mut self, _: &'static Native, b: &mut Bound, span: Span, ctx: Ctx) -> Value {
        let Some(models) = self.tensors(b.remove("models").unwrap(), "models or task vectors", ctx) else {
            return Value::Poison;
        };
        let mut base = None;
        let mut given = b.remove("base");
        let mut out = Vec::new();
        for m in models {
            if self.kind(&m) == Some(Kind::Delta) {
                out.push(Value::Tensor(m));
                continue;
            }
            if base.is_none() {
                let who = self.frame_name();
                base = self.base_model(given.take(), span, &who, ctx);
            }
            let Some(bm) = &base else { return Value::Poison };
            let bm = bm.clone();
            let Some(arch) = self.same_arch(&m, &bm, span, span, ctx.file) else {
                return Value::Poison;
            };
            let expr = self.push(TExpr::Lin(vec![(Sched::Const(1.0), m.expr), (Sched::Const(-1.0), bm.expr)]));
            out.push(Value::Tensor(TVal { expr, arch, weight: Sched::Const(0.0) }));
        }
        Value::List(out)
    }

    /// The name users called: the innermost `fn` being evaluated.
    fn frame_name(&self) -> String {
        self.frames.last().map_or("task_vectors".into(), |f| f.0.clone())
    }

    pub(super) fn weighted_sum(&mut self, native: &'static Native, b: &mut Bound, span: Span, ctx: Ctx) -> Value {
        let Some(xs) = self.tensors(b.remove("xs").unwrap(), "models or task vectors", ctx) else {
            return Value::Poison;
        };
        let kinds: Vec<Option<Kind>> = xs.iter().map(|t| self.kind(t)).collect();
        if kinds.iter().any(|k| *k != kinds[0]) {
            return self.err(
                Diagnostic::error(Code::E0106, "a weighted sum mixes models and task vectors")
                    .with_label(ctx.file, span, "models and task vectors together")
                    .with_help("average models with models, or task vectors with task vectors"),
            );
        }
        let Some(weights) = self.per_model("weight", b.remove("weight"), xs.len(), native.num_default("weight"), ctx)
        else {
            return Value::Poison;
        };
        let Some(normalize) = self.flag(b.remove("normalize"), native.bool_default("normalize"), ctx) else {
            return Value::Poison;
        };
        let total = weights.iter().cloned().reduce(|a, b| Sched::bin(BinOp::Add, a, b)).unwrap();
        let terms: Vec<(Sched, TId)> = weights
            .iter()
            .zip(&xs)
            .map(|(w, t)| {
                (if normalize { Sched::bin(BinOp::Div, w.clone(), total.clone()) } else { w.clone() }, t.expr)
            })
            .collect();
        let weight = terms
            .iter()
            .zip(&xs)
            .map(|((c, _), t)| Sched::bin(BinOp::Mul, c.clone(), t.weight.clone()))
            .reduce(|a, b| Sched::bin(BinOp::Add, a, b))
            .unwrap();
        let expr = self.push(TExpr::Lin(terms));
        Value::Tensor(TVal { expr, arch: xs[0].arch.clone(), weight })
    }

    /// Task vectors only: models here mean a missing `task_vectors(...)`.
    fn deltas(&mut self, v: (Value, Span), ctx: Ctx) -> Option<Vec<TVal>> {
        let s = v.1;
        let xs = self.tensors(v, "task vectors", ctx)?;
        if xs.iter().any(|t| self.kind(t) != Some(Kind::Delta)) {
            self.report(
                Diagnostic::error(Code::E0106, "expected task vectors, found models")
                    .with_label(ctx.file, s, "these are models")
                    .with_help("turn models into task vectors first: `task_vectors(models, base)` or `m - base`"),
            );
            return None;
        }
        Some(xs)
    }

    pub(super) fn merge_deltas(&mut self, native: &'static Native, b: &mut Bound, _: Span, ctx: Ctx) -> Value {
        let Some(ds) = self.deltas(b.remove("deltas").unwrap(), ctx) else { return Value::Poison };
        let Some(weights) = self.per_model("weight", b.remove("weight"), ds.len(), native.num_default("weight"), ctx)
        else {
            return Value::Poison;
        };
        let Some(elect_sign) = self.flag(b.remove("elect_sign"), native.bool_default("elect_sign"), ctx) else {
            return Value::Poison;
        };
        let Some(normalize) = self.flag(b.remove("normalize"), native.bool_default("normalize"), ctx) else {
            return Value::Poison;
        };
        let kernel = Kernel::Consensus { weights, elect_sign, normalize };
        let expr = self.push(TExpr::Kernel { kernel, inputs: ds.iter().map(|d| d.expr).collect() });
        Value::Tensor(TVal { expr, arch: ds[0].arch.clone(), weight: Sched::Const(0.0) })
    }

    /// trim_magnitude, trim_outliers, drop_random, drop_della: one sparsify
    /// kernel per task vector.
    pub(super) fn sparsify(&mut self, native: &'static Native, b: &mut Bound, span: Span, ctx: Ctx) -> Value {
        let name = native.name;
        let Some(ds) = self.deltas(b.remove("deltas").unwrap(), ctx) else { return Value::Poison };
        let n = ds.len();
        let dspan = b.get("density").map_or(span, |d| d.1);
        let gspan = b.get("gamma").map_or(span, |g| g.1);
        let Some(density) = self.per_model("density", b.remove("density"), n, native.num_default("density"), ctx)
        else {
            return Value::Poison;
        };
        for d in &density {
            if let Some(c) = d.as_const().filter(|c| !(0.0..=1.0).contains(c)) {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("density {} is outside [0, 1]", super::fmt_num(c)))
                        .with_label(ctx.file, dspan, "a density is the fraction of entries kept")
                        .with_help("use a value between 0 and 1, e.g. `density=0.2`"),
                );
            }
        }
        let Some(rescale) = self.flag(b.remove("rescale"), native.bool_default("rescale"), ctx) else {
            return Value::Poison;
        };
        let seed = match b.remove("seed") {
            None => native.num_default("seed") as u64,
            Some((Value::Num(Sched::Const(s)), _)) if s >= 0.0 && s.fract() == 0.0 => s as u64,
            Some((v, s)) => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`seed` must be a whole number, found {}", v.type_name()))
                        .with_label(ctx.file, s, "expected e.g. `seed=42`"),
                )
            }
        };
        let extra = match name {
            "trim_outliers" => self.per_model("gamma", b.remove("gamma"), n, native.num_default("gamma"), ctx),
            "drop_della" => self.per_model("epsilon", b.remove("epsilon"), n, native.num_default("epsilon"), ctx),
            _ => Some(vec![Sched::Const(0.0); n]),
        };
        let Some(extra) = extra else { return Value::Poison };
        let mut out = Vec::new();
        for (i, ((d, density), x)) in ds.iter().zip(density).zip(extra).enumerate() {
            if let (true, Some(g)) = (name == "trim_outliers", x.as_const()) {
                if !(0.0..=1.0).contains(&g) {
                    return self.err(
                        Diagnostic::error(Code::E0106, format!("gamma {} is outside [0, 1]", super::fmt_num(g)))
                            .with_label(ctx.file, gspan, "gamma is the fraction of largest magnitudes dropped")
                            .with_help("use a value between 0 and 1, e.g. `gamma=0.01`"),
                    );
                }
            }
            if name == "drop_della" {
                if let (Some(dc), Some(e)) = (density.as_const(), x.as_const()) {
                    if dc < 1.0 && (dc - e <= 0.0 || dc + e >= 1.0) {
                        return self.err(
                            Diagnostic::error(
                                Code::E0106,
                                format!("della needs density ± epsilon inside (0, 1); density {dc} and epsilon {e} give [{}, {}]", super::fmt_num(dc - e), super::fmt_num(dc + e)),
                            )
                            .with_label(ctx.file, dspan, "keep probabilities would leave (0, 1)")
                            .with_help("lower epsilon, or move density away from 0 and 1"),
                        );
                    }
                }
            }
            let how = match name {
                "trim_magnitude" => Sparsify::Magnitude { density },
                "trim_outliers" => Sparsify::Outliers { density, gamma: x },
                "drop_random" => Sparsify::Random { density },
                _ => Sparsify::Della { density, epsilon: x },
            };
            let kernel = Kernel::Sparsify { how, rescale, seed, stream: i as u64 };
            let expr = self.push(TExpr::Kernel { kernel, inputs: vec![d.expr] });
            out.push(Value::Tensor(TVal { expr, arch: d.arch.clone(), weight: Sched::Const(0.0) }));
        }
        Value::List(out)
    }

    /// A per-model argument: absent (the default), one number for all, or a
    /// list of one number per model.
    pub fn per_model(
        &mut self,
        param: &str,
        given: Option<(Value, Span)>,
        n: usize,
        default: f64,
        ctx: Ctx,
    ) -> Option<Vec<Sched>> {
        let Some((v, span)) = given else { return Some(vec![Sched::Const(default); n]) };
        match v {
            Value::Num(s) => Some(vec![s; n]),
            Value::List(items) => {
                if items.len() != n {
                    self.report(
                        Diagnostic::error(Code::E0108, format!("`{param}` has {} values for {n} models", items.len()))
                            .with_label(
                                ctx.file,
                                span,
                                format!("expected {n} values, one per model, or a single number"),
                            ),
                    );
                    return None;
                }
                let mut out = Vec::new();
                for i in items {
                    match i {
                        Value::Num(s) => out.push(s),
                        other => {
                            self.report(
                                Diagnostic::error(
                                    Code::E0106,
                                    format!("`{param}` must hold numbers, found {}", other.type_name()),
                                )
                                .with_label(ctx.file, span, "expected numbers"),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Value::None => Some(vec![Sched::Const(default); n]),
            other => {
                self.report(
                    Diagnostic::error(
                        Code::E0106,
                        format!("expected a number or a list of numbers, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, span, "expected a number"),
                );
                None
            }
        }
    }

    fn flag(&mut self, given: Option<(Value, Span)>, default: bool, ctx: Ctx) -> Option<bool> {
        match given {
            None | Some((Value::None, _)) => Some(default),
            Some((Value::Bool(b), _)) => Some(b),
            Some((other, s)) => {
                self.report(
                    Diagnostic::error(Code::E0106, format!("expected true or false, found {}", other.type_name()))
                        .with_label(ctx.file, s, "expected a Bool"),
                );
                None
            }
        }
    }

    fn num(&mut self, given: Option<(Value, Span)>, default: f64, ctx: Ctx) -> Option<Sched> {
        match given {
            None | Some((Value::None, _)) => Some(Sched::Const(default)),
            Some((Value::Num(s), _)) => Some(s),
            Some((other, s)) => {
                self.report(
                    Diagnostic::error(Code::E0106, format!("expected a number, found {}", other.type_name()))
                        .with_label(ctx.file, s, "expected a number"),
                );
                None
            }
        }
    }

    // ---- native methods ----

    /// A merge method implemented by one native kernel (see `methods.rs`).
    pub fn call_method(
        &mut self,
        native: &'static Native,
        spec: &MethodSpec,
        args: &[Arg],
        span: Span,
        ctx: Ctx,
    ) -> Value {
        let mut inputs = Vec::new();
        let mut named = Vec::new();
        for a in args {
            if a.name.is_some() {
                named.push(a.clone());
            } else {
                let v = self.eval(&a.value, ctx);
                inputs.push((self.settle_value(v, a.value.span, ctx.file), a.value.span));
            }
        }
        let pnames: Vec<&str> = native.params.iter().map(|p| p.name).collect();
        let Some(mut b) = self.bind_args(native.name, &pnames, 0, 0, &named, span, ctx) else { return Value::Poison };
        if inputs.iter().any(|(v, _)| matches!(v, Value::Poison)) || b.values().any(|(v, _)| matches!(v, Value::Poison))
        {
            return Value::Poison;
        }
        let n = inputs.len();
        let arity_ok = match spec.arity {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        };
        if !arity_ok {
            let (code, want) = match spec.arity {
                Arity::Exactly(k) => (if n > k { Code::E0107 } else { Code::E0105 }, format!("exactly {k}")),
                Arity::AtLeast(k) => (Code::E0105, format!("at least {k}")),
            };
            let at = match spec.arity {
                Arity::Exactly(k) if n > k => inputs[k].1.to(inputs[n - 1].1),
                _ => span,
            };
            return self.err(
                Diagnostic::error(code, format!("`{}` takes {want} models, got {n}", native.name))
                    .with_label(ctx.file, at, format!("{n} model{} given", if n == 1 { "" } else { "s" }))
                    .with_help(format!("for example `{}`", native.example)),
            );
        }
        let mut tvals = Vec::new();
        for (v, s) in &inputs {
            match v {
                Value::Tensor(t) => tvals.push((t.clone(), *s)),
                other => {
                    return self.err(
                        Diagnostic::error(
                            Code::E0106,
                            format!("`{}` merges models, found {}", native.name, other.type_name()),
                        )
                        .with_label(ctx.file, *s, "expected a model")
                        .with_help("parameters are named: `name=value`"),
                    )
                }
            }
        }
        for w in 1..tvals.len() {
            let (first, other) = (tvals[0].clone(), tvals[w].clone());
            let Some(arch) = self.same_arch(&first.0, &other.0, first.1, other.1, ctx.file) else {
                return Value::Poison;
            };
            tvals[0].0.arch = arch;
        }
        // Required arguments and defaults.
        for p in native.params {
            if p.default == PDefault::Required && !b.contains_key(p.name) {
                return self.err(
                    Diagnostic::error(Code::E0105, format!("`{}` needs `{}`", native.name, p.name))
                        .with_label(ctx.file, span, format!("`{}=` not given", p.name))
                        .with_help(format!("for example `{}`", native.example)),
                );
            }
        }
        let base = match spec.base {
            BaseUse::Never => None,
            BaseUse::Optional => match b.remove("base") {
                None | Some((Value::None, _)) => None,
                given => Some(self.base_model(given, span, native.name, ctx)),
            },
            BaseUse::Required => Some(self.base_model(b.remove("base"), span, native.name, ctx)),
        };
        let base = match base {
            Some(None) => return Value::Poison,
            Some(Some(bm)) => {
                let first = tvals[0].clone();
                let Some(arch) = self.same_arch(&first.0, &bm, first.1, span, ctx.file) else {
                    return Value::Poison;
                };
                tvals[0].0.arch = arch;
                Some(bm)
            }
            None => None,
        };
        let kinds: Vec<Option<Kind>> = tvals.iter().map(|(t, _)| self.kind(t)).collect();
        if let Some(i) = kinds.iter().position(|k| *k != kinds[0]) {
            return self.err(
                Diagnostic::error(Code::E0106, format!("`{}` mixes models and task vectors", native.name))
                    .with_label(ctx.file, tvals[i].1, "this one differs from the first")
                    .with_help("give all models, or all task vectors"),
            );
        }
        let on_deltas = spec.task_vectors || (spec.base == BaseUse::Optional && base.is_some());
        let mut ins: Vec<TId> = Vec::new();
        for (t, _) in &tvals {
            match (&base, on_deltas && self.kind(t) == Some(Kind::Model)) {
                (Some(bm), true) => {
                    ins.push(self.push(TExpr::Lin(vec![(Sched::Const(1.0), t.expr), (Sched::Const(-1.0), bm.expr)])))
                }
                _ => ins.push(t.expr),
            }
        }
        let mut call = MethodCall { native, bound: &mut b, n, base: base.as_ref(), inputs: &mut ins, span };
        let Some(kernel) = (spec.kernel)(self, &mut call, ctx) else {
            return Value::Poison;
        };
        let expr = self.push(TExpr::Kernel { kernel, inputs: ins });
        let arch = tvals[0].0.arch.clone();
        if spec.task_vectors {
            return Value::Tensor(TVal { expr, arch, weight: Sched::Const(0.0) });
        }
        match (&base, on_deltas) {
            // Interpolated task vectors go back onto the base.
            (Some(bm), true) => {
                let expr = self.push(TExpr::Lin(vec![(Sched::Const(1.0), bm.expr), (Sched::Const(1.0), expr)]));
                Value::Tensor(TVal { expr, arch, weight: Sched::Const(1.0) })
            }
            _ => Value::Tensor(TVal { expr, arch, weight: tvals[0].0.weight.clone() }),
        }
    }
}

/// What a method's kernel builder gets: the call's named arguments (to
/// `remove` as it reads them), the number of models, the base, and the
/// kernel's inputs (which it may extend, as model_stock prepends the base).
pub struct MethodCall<'a> {
    pub native: &'static Native,
    pub bound: &'a mut Bound,
    pub n: usize,
    pub base: Option<&'a TVal>,
    pub inputs: &'a mut Vec<TId>,
    pub span: Span,
}

impl MethodCall<'_> {
    fn take(&mut self, name: &str) -> Option<(Value, Span)> {
        self.bound.remove(name)
    }
}

// ---- kernel builders of the native methods (named in `natives.rs`) ----

impl Checker<'_> {
    pub(super) fn kernel_slerp(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::Slerp { t: self.num(m.take("t"), m.native.num_default("t"), ctx)? })
    }

    pub(super) fn kernel_nearswap(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::NearSwap { t: self.num(m.take("t"), m.native.num_default("t"), ctx)? })
    }

    pub(super) fn kernel_nuslerp(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let w = self.per_model("weight", m.take("weight"), 2, m.native.num_default("weight"), ctx)?;
        let total = Sched::bin(BinOp::Add, w[0].clone(), w[1].clone());
        let flatten = self.flag(m.take("nuslerp_flatten"), m.native.bool_default("nuslerp_flatten"), ctx)?;
        let row_wise = self.flag(m.take("nuslerp_row_wise"), m.native.bool_default("nuslerp_row_wise"), ctx)?;
        let t = Sched::Ratio(Box::new(w[1].clone()), Box::new(total), 0.5);
        Some(Kernel::NuSlerp { t, flatten, row_wise })
    }

    pub(super) fn kernel_multislerp(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let w = self.per_model("weight", m.take("weight"), m.n, m.native.num_default("weight"), ctx)?;
        let normalize = self.flag(m.take("normalize_weights"), m.native.bool_default("normalize_weights"), ctx)?;
        let total = w.iter().cloned().reduce(|a, c| Sched::bin(BinOp::Add, a, c)).unwrap();
        let weights =
            w.into_iter().map(|x| if normalize { Sched::bin(BinOp::Div, x, total.clone()) } else { x }).collect();
        Some(Kernel::MultiSlerp { weights, eps: self.num(m.take("eps"), m.native.num_default("eps"), ctx)? })
    }

    pub(super) fn kernel_karcher(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let max_iter = match self.num(m.take("max_iter"), m.native.num_default("max_iter"), ctx)?.as_const() {
            Some(x) if x >= 1.0 => x as u64,
            _ => {
                self.report(
                    Diagnostic::error(Code::E0106, "`max_iter` must be a whole number of at least 1").with_label(
                        ctx.file,
                        m.span,
                        "in this call",
                    ),
                );
                return None;
            }
        };
        Some(Kernel::Karcher { max_iter, tol: self.num(m.take("tol"), m.native.num_default("tol"), ctx)? })
    }

    pub(super) fn kernel_model_stock(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let filter_wise = self.flag(m.take("filter_wise"), m.native.bool_default("filter_wise"), ctx)?;
        let bm = m.base.expect("model_stock has a base");
        m.inputs.insert(0, bm.expr);
        Some(Kernel::ModelStock { filter_wise })
    }

    pub(super) fn kernel_magmax(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::MagMax { lambda: self.num(m.take("lambda"), m.native.num_default("lambda"), ctx)? })
    }

    pub(super) fn kernel_iso_c(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::IsoC { lambda: self.num(m.take("lambda"), m.native.num_default("lambda"), ctx)? })
    }

    pub(super) fn kernel_tsv_m(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::TsvM { lambda: self.num(m.take("lambda"), m.native.num_default("lambda"), ctx)? })
    }

    /// A parameter that must be a fraction: constants outside [0, 1] are E0106.
    fn fraction(&mut self, m: &mut MethodCall, name: &str, what: &str, ctx: Ctx) -> Option<Sched> {
        let x = self.num(m.take(name), m.native.num_default(name), ctx)?;
        if let Some(c) = x.as_const().filter(|c| !(0.0..=1.0).contains(c)) {
            self.report(
                Diagnostic::error(Code::E0106, format!("{name} {} is outside [0, 1]", super::fmt_num(c)))
                    .with_label(ctx.file, m.span, what)
                    .with_help(format!("use a value between 0 and 1, e.g. `{name}={}`", m.native.num_default(name))),
            );
            return None;
        }
        Some(x)
    }

    pub(super) fn kernel_iso_cts(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let lambda = self.num(m.take("lambda"), m.native.num_default("lambda"), ctx)?;
        let common = self.fraction(m, "common", "the fraction of the rank given to the common subspace", ctx)?;
        Some(Kernel::IsoCts { lambda, common })
    }

    pub(super) fn kernel_cart(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let rank = self.fraction(m, "rank", "the fraction of each deviation's rank kept", ctx)?;
        Some(Kernel::Cart { rank, lambda: self.num(m.take("lambda"), m.native.num_default("lambda"), ctx)? })
    }

    pub(super) fn kernel_ram(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::Ram { epsilon: self.num(m.take("epsilon"), m.native.num_default("epsilon"), ctx)? })
    }

    pub(super) fn kernel_ramplus_tl(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let r = self.num(m.take("r"), m.native.num_default("r"), ctx)?;
        let alpha = self.num(m.take("alpha"), m.native.num_default("alpha"), ctx)?;
        Some(Kernel::RamPlusTl {
            r,
            alpha,
            epsilon: self.num(m.take("epsilon"), m.native.num_default("epsilon"), ctx)?,
        })
    }

    pub(super) fn kernel_arcee_fusion(&mut self, _: &mut MethodCall, _: Ctx) -> Option<Kernel<Sched>> {
        Some(Kernel::ArceeFusion)
    }

    pub(super) fn kernel_sce(&mut self, m: &mut MethodCall, ctx: Ctx) -> Option<Kernel<Sched>> {
        let topk = self.num(m.take("select_topk"), m.native.num_default("select_topk"), ctx)?;
        if let Some(c) = topk.as_const().filter(|c| !(0.0..=1.0).contains(c)) {
            self.report(
                Diagnostic::error(Code::E0106, format!("select_topk {} is outside [0, 1]", super::fmt_num(c)))
                    .with_label(ctx.file, m.span, "the fraction of positions kept")
                    .with_help("use a value between 0 and 1, e.g. `select_topk=0.5`"),
            );
            return None;
        }
        Some(Kernel::Sce { select_topk: topk })
    }
}
