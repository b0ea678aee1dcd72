//! Evaluates a recipe abstractly: names are resolved, calls bound and
//! arithmetic typed, producing symbolic tensor values over the models. Errors
//! are collected and evaluation goes on with a poison value, so one run
//! reports everything it can.

use super::methods::{self, Default as PDefault, Family, MethodSpec, PKind};
use super::value::*;
use super::{Output, Recipe, ResultValue};
use crate::diag::{did_you_mean, Code, Diagnostic, FileId, Sources};
use crate::io::{Checkpoint, DType, OpenError};
use crate::syntax::{self, Arg, BinOp, Expr, ExprKind, Pattern, Program, Span, StmtKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Builtin functions other than the merge methods.
const BUILTINS: &[&str] = &["model", "over_layers"];
/// Names bound per tensor inside arguments.
const PER_TENSOR: &[&str] = &["tensor", "layer", "depth"];
const MAX_CALL_DEPTH: usize = 64;

struct Binding {
    value: Value,
    file: FileId,
    span: Span,
}

/// Where an expression is being evaluated: its file (for spans and relative
/// paths) and the parameters of the `fn` it is in, if any.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    file: FileId,
    dir: &'a Path,
    locals: Option<&'a HashMap<String, Value>>,
}

struct Override {
    name: String,
    text: String,
    used: bool,
}

pub(super) struct Checker<'s> {
    sources: &'s mut Sources,
    pub diags: Vec<Diagnostic>,
    models: Vec<Arc<Checkpoint>>,
    archs: Vec<Arc<Arch>>,
    model_index: HashMap<PathBuf, usize>,
    exprs: Vec<TExpr>,
    globals: HashMap<String, Binding>,
    overrides: Vec<Override>,
    saves: Vec<Output>,
    result: Option<ResultValue>,
    depth: usize,
    importing: Vec<PathBuf>,
}

impl<'s> Checker<'s> {
    pub fn new(sources: &'s mut Sources, overrides: &[(String, String)]) -> Self {
        Checker {
            sources,
            diags: Vec::new(),
            models: Vec::new(),
            archs: Vec::new(),
            model_index: HashMap::new(),
            exprs: Vec::new(),
            globals: HashMap::new(),
            overrides: overrides
                .iter()
                .map(|(n, t)| Override { name: n.clone(), text: t.clone(), used: false })
                .collect(),
            saves: Vec::new(),
            result: None,
            depth: 0,
            importing: Vec::new(),
        }
    }

    fn err(&mut self, d: Diagnostic) -> Value {
        self.diags.push(d);
        Value::Poison
    }

    /// Checks the main recipe file.
    pub fn run_main(&mut self, program: &Program, file: FileId, path: &Path) {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.importing.push(path.to_path_buf());
        self.run_file(program, file, &dir, true);
        for o in &self.overrides {
            if !o.used {
                let params: Vec<&str> = self.globals.keys().map(String::as_str).collect();
                let mut d =
                    Diagnostic::error(Code::E0109, format!("--set {}: the recipe has no `param {}`", o.name, o.name));
                if let Some(s) = did_you_mean(&o.name, params) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.diags.push(d.with_note("only names declared with `param` can be set from the command line"));
            }
        }
    }

    pub fn finish(self, main: FileId) -> Recipe {
        Recipe { models: self.models, exprs: self.exprs, saves: self.saves, result: self.result, main_file: main }
    }

    fn run_file(&mut self, program: &Program, file: FileId, dir: &Path, is_main: bool) {
        let ctx = Ctx { file, dir, locals: None };
        let last = program.stmts.len().saturating_sub(1);
        for (i, stmt) in program.stmts.iter().enumerate() {
            match &stmt.kind {
                StmtKind::Let { name, value } => {
                    let v = self.eval(value, ctx);
                    let v = self.settle_value(v, value.span, file);
                    self.bind(&name.name, v, file, name.span);
                }
                StmtKind::Param { name, value } => {
                    let v = self.param_value(&name.name, value, ctx);
                    self.bind(&name.name, v, file, name.span);
                }
                StmtKind::Fn { name, params, body } => {
                    let f = UserFn {
                        name: name.name.clone(),
                        params: params.clone(),
                        body: body.clone(),
                        file,
                        span: name.span,
                    };
                    self.bind(&name.name, Value::Func(Func::User(Arc::new(f))), file, name.span);
                }
                StmtKind::Import { path, path_span } => self.import(path, *path_span, ctx),
                StmtKind::Save { args } => {
                    if !is_main {
                        self.err(Diagnostic::error(Code::E0111, "`save` in an imported file").with_label(
                            file,
                            stmt.span,
                            "imported files define names; only the main recipe writes outputs",
                        ));
                        continue;
                    }
                    self.save(args, stmt.span, ctx);
                }
                StmtKind::Expr(e) => {
                    if !is_main || i != last {
                        let why = if is_main {
                            "only the last statement can be a bare expression (the recipe's result)"
                        } else {
                            "an imported file cannot have a result"
                        };
                        self.err(
                            Diagnostic::error(Code::E0111, "bare expression is not the recipe's result")
                                .with_label(file, e.span, why)
                                .with_help("bind it to a name (`x = ...`) or remove it"),
                        );
                        continue;
                    }
                    let v = self.eval(e, ctx);
                    match self.settle_value(v, e.span, file) {
                        Value::Tensor(t) => self.result = Some(ResultValue { value: t, file, span: e.span }),
                        Value::Poison => {}
                        other => {
                            self.err(
                                Diagnostic::error(
                                    Code::E0106,
                                    format!("the recipe's result is {}, not a model", other.type_name()),
                                )
                                .with_label(
                                    file,
                                    e.span,
                                    "the last expression is what `fuse run -o DIR` writes",
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    fn bind(&mut self, name: &str, value: Value, file: FileId, span: Span) {
        if let Some(prev) = self.globals.get(name) {
            let d = Diagnostic::error(Code::E0102, format!("`{name}` is bound twice"))
                .with_label(file, span, "bound again here")
                .with_label(prev.file, prev.span, "first bound here")
                .with_help("a name is bound once; pick another name for one of them");
            self.diags.push(d);
            return;
        }
        if BUILTINS.contains(&name) || methods::method(name).is_some() || PER_TENSOR.contains(&name) {
            self.diags.push(
                Diagnostic::error(Code::E0102, format!("`{name}` is a builtin name"))
                    .with_label(file, span, "this would hide the builtin")
                    .with_help("pick another name"),
            );
            return;
        }
        self.globals.insert(name.to_string(), Binding { value, file, span });
    }

    fn param_value(&mut self, name: &str, default: &Expr, ctx: Ctx) -> Value {
        let dv = self.eval(default, ctx);
        let Some(o) = self.overrides.iter_mut().find(|o| o.name == name) else {
            return dv;
        };
        o.used = true;
        let text = o.text.clone();
        let file = self.sources.add(format!("--set {name}"), text.clone());
        let expr = match syntax::parse_expr(&text, file) {
            Ok(e) => e,
            Err(d) => return self.err(d),
        };
        let ov = self.eval(&expr, Ctx { file, dir: ctx.dir, locals: None });
        if !matches!(ov, Value::Poison) && !matches!(dv, Value::Poison) && ov.type_name() != dv.type_name() {
            return self.err(
                Diagnostic::error(
                    Code::E0106,
                    format!("--set {name}: expected {}, found {}", dv.type_name(), ov.type_name()),
                )
                .with_label(file, expr.span, format!("this is {}", ov.type_name()))
                .with_label(
                    ctx.file,
                    default.span,
                    format!("the param's default is {}", dv.type_name()),
                ),
            );
        }
        ov
    }

    fn import(&mut self, rel: &str, span: Span, ctx: Ctx) {
        let path = ctx.dir.join(rel);
        let canon = path.canonicalize().unwrap_or(path.clone());
        if self.importing.iter().any(|p| p.canonicalize().unwrap_or(p.clone()) == canon) {
            self.err(Diagnostic::error(Code::E0303, format!("`{rel}` imports itself")).with_label(
                ctx.file,
                span,
                "this import closes a cycle",
            ));
            return;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.err(
                    Diagnostic::error(Code::E0303, format!("cannot read `{}`: {e}", path.display()))
                        .with_label(ctx.file, span, "imported here")
                        .with_help("import paths are relative to the importing file"),
                );
                return;
            }
        };
        let file = self.sources.add(path.display().to_string(), text.clone());
        match syntax::parse(&text, file) {
            Ok(program) => {
                self.importing.push(path.clone());
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                self.run_file(&program, file, &dir, false);
                self.importing.pop();
            }
            Err(d) => self.diags.push(d),
        }
    }

    fn save(&mut self, args: &[Arg], span: Span, ctx: Ctx) {
        let mut bound = match self.bind_args("save", &["model", "dir", "dtype", "shard"], 2, 2, args, span, ctx) {
            Some(b) => b,
            None => return,
        };
        let (mv, mspan) = bound.remove("model").unwrap();
        let (dv, dspan) = bound.remove("dir").unwrap();
        let value = match self.settle_value(mv, mspan, ctx.file) {
            Value::Tensor(t) if self.kind(&t) == Some(Kind::Model) => t,
            Value::Tensor(_) => {
                self.err(
                    Diagnostic::error(Code::E0106, "`save` needs a model, found a task vector")
                        .with_label(ctx.file, mspan, "this is a Delta")
                        .with_help("add it to a base model: `save(base + ..., \"dir\")`"),
                );
                return;
            }
            Value::Poison => return,
            other => {
                self.err(
                    Diagnostic::error(Code::E0106, format!("`save` needs a model, found {}", other.type_name()))
                        .with_label(ctx.file, mspan, "not a model"),
                );
                return;
            }
        };
        let dir = match dv {
            Value::Str(s) => ctx.dir.join(s),
            Value::Poison => return,
            other => {
                self.err(
                    Diagnostic::error(
                        Code::E0106,
                        format!("the output directory must be a string, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, dspan, "expected a path like \"out/merged\""),
                );
                return;
            }
        };
        let dtype = match bound.remove("dtype") {
            None => None,
            Some((Value::DType(d), _)) => Some(d),
            Some((Value::Poison, _)) => return,
            Some((other, s)) => {
                self.err(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`dtype` must be bf16, f16 or f32, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, s, "expected a dtype"),
                );
                return;
            }
        };
        let shard = match bound.remove("shard") {
            None => 5_000_000_000,
            Some((Value::Str(s), sp)) => match crate::io::writer::parse_size(&s) {
                Some(n) => n,
                None => {
                    self.err(Diagnostic::error(Code::E0401, format!("`{s}` is not a size")).with_label(
                        ctx.file,
                        sp,
                        "expected a size like \"5GB\" or \"500MB\"",
                    ));
                    return;
                }
            },
            Some((Value::Poison, _)) => return,
            Some((other, s)) => {
                self.err(
                    Diagnostic::error(
                        Code::E0401,
                        format!("`shard` must be a size string, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, s, "expected a size like \"5GB\""),
                );
                return;
            }
        };
        self.saves.push(Output { value, dir, dtype, shard, file: ctx.file, span });
    }

    // ---- expressions ----

    fn eval(&mut self, e: &Expr, ctx: Ctx) -> Value {
        match &e.kind {
            ExprKind::Num(n) => Value::Num(Sched::Const(*n)),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::DType(d) => Value::DType(match d {
                syntax::DTypeLit::BF16 => DType::BF16,
                syntax::DTypeLit::F16 => DType::F16,
                syntax::DTypeLit::F32 => DType::F32,
            }),
            ExprKind::Ident(name) => self.lookup(name, e.span, ctx),
            ExprKind::List(items) => Value::List(items.iter().map(|i| self.eval(i, ctx)).collect()),
            ExprKind::Neg(inner) => match self.eval(inner, ctx) {
                Value::Num(s) => Value::Num(Sched::negate(s)),
                Value::Tensor(t) => self.scale(t, Sched::Const(-1.0)),
                Value::Poison => Value::Poison,
                other => {
                    self.err(Diagnostic::error(Code::E0203, format!("cannot negate {}", other.type_name())).with_label(
                        ctx.file,
                        inner.span,
                        "not a number or a model",
                    ))
                }
            },
            ExprKind::Binary(op, l, r) => {
                let lv = self.eval(l, ctx);
                let rv = self.eval(r, ctx);
                self.binary(*op, lv, rv, l, r, e.span, ctx)
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span, ctx),
            ExprKind::Match { scrutinee, arms } => self.eval_match(scrutinee, arms, e.span, ctx),
            ExprKind::Member(..) | ExprKind::Index(..) | ExprKind::Slice { .. } => self.err(
                Diagnostic::error(Code::E0203, "layer slices and member access are not supported yet")
                    .with_label(ctx.file, e.span, "fuse cannot evaluate this yet")
                    .with_note("`m.layers[i..j]` and `stack(...)` arrive with the model-structure work"),
            ),
        }
    }

    fn lookup(&mut self, name: &str, span: Span, ctx: Ctx) -> Value {
        if let Some(v) = ctx.locals.and_then(|l| l.get(name)) {
            return v.clone();
        }
        if let Some(b) = self.globals.get(name) {
            return b.value.clone();
        }
        match name {
            "tensor" => return Value::TensorName,
            "layer" => return Value::Num(Sched::Layer),
            "depth" => return Value::Num(Sched::Depth),
            _ => {}
        }
        if let Some(b) = BUILTINS.iter().find(|b| **b == name) {
            return Value::Func(Func::Builtin(b));
        }
        if let Some(m) = methods::method(name) {
            return Value::Func(Func::Builtin(m.name));
        }
        let mut candidates: Vec<&str> = self.globals.keys().map(String::as_str).collect();
        if let Some(l) = ctx.locals {
            candidates.extend(l.keys().map(String::as_str));
        }
        candidates.extend(PER_TENSOR);
        let mut d = Diagnostic::error(Code::E0101, format!("unknown name `{name}`")).with_label(
            ctx.file,
            span,
            "not bound anywhere",
        );
        if let Some(s) = did_you_mean(name, candidates) {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else {
            d = d.with_help(format!("bind it first, e.g. `{name} = model(\"path/to/checkpoint\")`"));
        }
        self.err(d)
    }

    fn push(&mut self, e: TExpr) -> TId {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    fn scale(&mut self, t: TVal, c: Sched) -> Value {
        let weight = Sched::bin(BinOp::Mul, c.clone(), t.weight.clone());
        let expr = self.push(TExpr::Lin(vec![(c, t.expr)]));
        Value::Tensor(TVal { expr, arch: t.arch, weight })
    }

    #[allow(clippy::too_many_arguments)]
    fn binary(&mut self, op: BinOp, lv: Value, rv: Value, l: &Expr, r: &Expr, span: Span, ctx: Ctx) -> Value {
        use Value::*;
        match (op, lv, rv) {
            (_, Poison, _) | (_, _, Poison) => Poison,
            (op, Num(a), Num(b)) => Num(Sched::bin(op, a, b)),
            (BinOp::Mul, Num(c), Tensor(t)) | (BinOp::Mul, Tensor(t), Num(c)) => self.scale(t, c),
            (BinOp::Div, Tensor(t), Num(c)) => self.scale(t, Sched::bin(BinOp::Div, Sched::Const(1.0), c)),
            (BinOp::Add | BinOp::Sub, Tensor(a), Tensor(b)) => {
                if !self.same_arch(&a.arch, &b.arch, l.span, r.span, ctx.file) {
                    return Poison;
                }
                let sign = if op == BinOp::Add { 1.0 } else { -1.0 };
                let weight = Sched::bin(op, a.weight.clone(), b.weight.clone());
                let expr = self.push(TExpr::Lin(vec![(Sched::Const(1.0), a.expr), (Sched::Const(sign), b.expr)]));
                Tensor(TVal { expr, arch: a.arch, weight })
            }
            (BinOp::Mul, Tensor(_), Tensor(_)) => self.err(
                Diagnostic::error(Code::E0203, "cannot multiply two models")
                    .with_label(ctx.file, span, "`*` between two tensor values")
                    .with_help(
                        "scale a model by a number (`0.5*a + 0.5*b`) or use a merge method such as `linear(a, b)`",
                    ),
            ),
            (op, lv, rv) => {
                let d = Diagnostic::error(
                    Code::E0203,
                    format!("cannot apply `{op}` to {} and {}", lv.type_name(), rv.type_name()),
                )
                .with_label(ctx.file, l.span, lv.type_name())
                .with_label(ctx.file, r.span, rv.type_name());
                let d = match (&lv, &rv, op) {
                    (Num(_), Tensor(_), BinOp::Add | BinOp::Sub) | (Tensor(_), Num(_), BinOp::Add | BinOp::Sub) => {
                        d.with_help("numbers scale models (`0.3*(a - base)`); they cannot be added to them")
                    }
                    (Num(_), Tensor(_), BinOp::Div) => {
                        d.with_help("a model can be divided by a number, not the other way round")
                    }
                    _ => d,
                };
                self.err(d)
            }
        }
    }

    /// Reports E0201 unless the two architectures agree.
    fn same_arch(&mut self, a: &Arc<Arch>, b: &Arc<Arch>, la: Span, lb: Span, file: FileId) -> bool {
        if Arc::ptr_eq(a, b) {
            return true;
        }
        let Some(why) = a.mismatch(b) else {
            return true;
        };
        let name = |x: &Arch| x.name.clone().unwrap_or_else(|| "unknown architecture".into());
        let why = why
            .replace("on the left", &format!("in `{}`", self.snippet(file, la)))
            .replace("on the right", &format!("in `{}`", self.snippet(file, lb)));
        // Point first at the operand that differs from the recipe's first model.
        let a_is_odd =
            self.archs.first().is_some_and(|first| first.mismatch(a).is_some() && first.mismatch(b).is_none());
        let (odd, odd_arch, other, other_arch) = if a_is_odd { (la, a, lb, b) } else { (lb, b, la, a) };
        self.diags.push(
            Diagnostic::error(Code::E0201, "operands have different architectures")
                .with_label(file, odd, format!("this is {} with {} layers, hidden size {}", name(odd_arch), odd_arch.n_layers, hidden(odd_arch)))
                .with_label(file, other, format!("but this is {} with {} layers, hidden size {}", name(other_arch), other_arch.n_layers, hidden(other_arch)))
                .with_note(why)
                .with_help("every operand of an operator or merge must have the same tensor names and shapes: fine-tunes of one base model"),
        );
        false
    }

    fn snippet(&self, file: FileId, span: Span) -> String {
        let t = self.sources.text(file).get(span.start..span.end).unwrap_or("?");
        if t.len() > 40 {
            format!("{}…", &t[..t.char_indices().take(40).last().map_or(0, |(i, _)| i)])
        } else {
            t.to_string()
        }
    }

    /// Whether a tensor value is a model (weights sum to 1) or a task vector
    /// (sum to 0), checked at every tensor when the weights vary.
    fn kind(&self, t: &TVal) -> Option<Kind> {
        let classify = |w: f64| {
            if (w - 1.0).abs() < 1e-9 {
                Some(Kind::Model)
            } else if w.abs() < 1e-9 {
                Some(Kind::Delta)
            } else {
                None
            }
        };
        if let Some(w) = t.weight.as_const() {
            return classify(w);
        }
        let mut kinds = t.arch.contexts().map(|c| classify(t.weight.eval(&c)));
        let first = kinds.next().flatten()?;
        kinds.all(|k| k == Some(first)).then_some(first)
    }

    /// At a binding, an argument or an output a weighted sum must be settled
    /// as a model or a task vector; otherwise this reports E0202.
    fn settle_value(&mut self, v: Value, span: Span, file: FileId) -> Value {
        let Value::Tensor(t) = &v else { return v };
        if self.kind(t).is_some() {
            return v;
        }
        let (sum, at) = match t.weight.as_const() {
            Some(w) => (w, None),
            None => {
                let c = t.arch.contexts().find(|c| {
                    let w = t.weight.eval(c);
                    (w - 1.0).abs() >= 1e-9 && w.abs() >= 1e-9
                });
                match c {
                    Some(c) => (t.weight.eval(&c), Some(c.name.to_string())),
                    None => (t.weight.eval(&t.arch.contexts().next().unwrap()), Some("some tensors".into())),
                }
            }
        };
        let src = self.snippet(file, span);
        let mut d = Diagnostic::error(Code::E0202, format!("the weights of this sum of models add up to {}", fmt_num(sum)))
            .with_label(file, span, format!("weights sum to {}{}", fmt_num(sum), at.map(|n| format!(" at `{n}`")).unwrap_or_default()))
            .with_note("a model is a weighted sum whose weights add up to 1 (`0.5*a + 0.5*b`); a task vector one whose weights add up to 0 (`a - base`)");
        if t.weight.as_const().is_some() && sum.abs() > 1e-9 {
            d = d.with_help(format!("to keep these proportions, divide by the sum: `({src}) / {}`, or use `linear(...)`, which normalizes its weights", fmt_num(sum)));
        }
        self.err(d)
    }

    fn eval_match(&mut self, scrutinee: &Expr, arms: &[syntax::MatchArm], span: Span, ctx: Ctx) -> Value {
        match self.eval(scrutinee, ctx) {
            Value::TensorName => {}
            Value::Poison => return Value::Poison,
            other => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`match` works on `tensor`, found {}", other.type_name()))
                        .with_label(ctx.file, scrutinee.span, "expected `tensor`"),
                )
            }
        }
        let mut globs = Vec::new();
        let mut default = None;
        let mut poisoned = false;
        for arm in arms {
            let v = self.eval(&arm.value, ctx);
            let s = match v {
                Value::Num(s) => s,
                Value::Poison => {
                    poisoned = true;
                    continue;
                }
                other => {
                    self.err(
                        Diagnostic::error(
                            Code::E0106,
                            format!("`match` arms must be numbers, found {}", other.type_name()),
                        )
                        .with_label(ctx.file, arm.value.span, "expected a number"),
                    );
                    poisoned = true;
                    continue;
                }
            };
            match &arm.pattern {
                Pattern::Glob(g, _) => globs.push((g.clone(), s)),
                Pattern::Wildcard(_) => {
                    default.get_or_insert(s);
                }
            }
        }
        if poisoned {
            return Value::Poison;
        }
        match default {
            Some(d) => Value::Num(Sched::Match(globs, Box::new(d))),
            None => self.err(
                Diagnostic::error(Code::E0105, "`match` has no `_` arm")
                    .with_label(ctx.file, span, "some tensors match no pattern")
                    .with_help("add a last arm `_ => value` for the tensors no glob matches"),
            ),
        }
    }

    // ---- calls ----

    fn call(&mut self, callee: &Expr, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let ExprKind::Ident(name) = &callee.kind else {
            return self.err(Diagnostic::error(Code::E0106, "only named functions can be called").with_label(
                ctx.file,
                callee.span,
                "not a function name",
            ));
        };
        let known = ctx.locals.is_some_and(|l| l.contains_key(name)) || self.globals.contains_key(name);
        let func = if known || BUILTINS.contains(&name.as_str()) || methods::method(name).is_some() {
            self.lookup(name, callee.span, ctx)
        } else {
            let mut cands: Vec<&str> = BUILTINS.to_vec();
            cands.extend(methods::METHODS.iter().map(|m| m.name));
            cands.extend(
                self.globals.iter().filter(|(_, b)| matches!(b.value, Value::Func(_))).map(|(n, _)| n.as_str()),
            );
            let mut d = Diagnostic::error(Code::E0103, format!("unknown function `{name}`")).with_label(
                ctx.file,
                callee.span,
                "no builtin, method or `fn` has this name",
            );
            if let Some(s) = did_you_mean(name, cands) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            return self.err(d);
        };
        match func {
            Value::Func(Func::Builtin("model")) => self.call_model(args, span, ctx),
            Value::Func(Func::Builtin("over_layers")) => self.call_over_layers(args, span, ctx),
            Value::Func(Func::Builtin(m)) => {
                self.call_method(methods::method(m).expect("builtin method"), args, span, ctx)
            }
            Value::Func(Func::User(f)) => self.call_user(&f, args, span, ctx),
            Value::Poison => Value::Poison,
            other => self.err(
                Diagnostic::error(Code::E0106, format!("`{name}` is {}, not a function", other.type_name()))
                    .with_label(ctx.file, callee.span, "called here"),
            ),
        }
    }

    /// Evaluates arguments and matches them to `params` (the first
    /// `positional` of which may be given by position). Returns None after
    /// reporting when they do not fit.
    #[allow(clippy::too_many_arguments)]
    fn bind_args(
        &mut self,
        fname: &str,
        params: &[&str],
        positional: usize,
        required: usize,
        args: &[Arg],
        span: Span,
        ctx: Ctx,
    ) -> Option<HashMap<String, (Value, Span)>> {
        let mut out: HashMap<String, (Value, Span)> = HashMap::new();
        let mut pos = 0;
        let mut ok = true;
        for a in args {
            let v = self.eval(&a.value, ctx);
            let name = match &a.name {
                Some(n) => {
                    let canon = methods::canonical_param(&n.name);
                    if !params.contains(&canon) {
                        let mut d = Diagnostic::error(Code::E0104, format!("`{fname}` has no argument `{}`", n.name))
                            .with_label(ctx.file, n.span, "unknown argument");
                        if let Some(s) = did_you_mean(&n.name, params.iter().copied()) {
                            d = d.with_help(format!("did you mean `{s}`?"));
                        } else {
                            d = d.with_note(format!("`{fname}` takes: {}", params.join(", ")));
                        }
                        self.diags.push(d);
                        ok = false;
                        continue;
                    }
                    canon.to_string()
                }
                None => {
                    if pos >= positional {
                        self.diags.push(
                            Diagnostic::error(
                                Code::E0107,
                                format!(
                                    "`{fname}` takes {positional} positional argument{}",
                                    if positional == 1 { "" } else { "s" }
                                ),
                            )
                            .with_label(ctx.file, a.value.span, "one too many")
                            .with_help(format!(
                                "name the argument, e.g. `{}=...`",
                                params.get(positional).unwrap_or(&"name")
                            )),
                        );
                        ok = false;
                        continue;
                    }
                    pos += 1;
                    params[pos - 1].to_string()
                }
            };
            if out.contains_key(&name) {
                self.diags.push(
                    Diagnostic::error(Code::E0107, format!("argument `{name}` is given twice")).with_label(
                        ctx.file,
                        a.value.span,
                        "given again here",
                    ),
                );
                ok = false;
                continue;
            }
            out.insert(name, (v, a.value.span));
        }
        for p in &params[..required] {
            if !out.contains_key(*p) && ok {
                self.diags.push(
                    Diagnostic::error(Code::E0105, format!("`{fname}` is missing its argument `{p}`")).with_label(
                        ctx.file,
                        span,
                        format!("`{p}` not given"),
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(out)
    }

    fn call_model(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let Some(mut b) = self.bind_args("model", &["path"], 1, 1, args, span, ctx) else {
            return Value::Poison;
        };
        let (v, pspan) = b.remove("path").unwrap();
        let spec = match v {
            Value::Str(s) => s,
            Value::Poison => return Value::Poison,
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
                let i = self.models.len();
                self.archs.push(Arc::new(Arch::from_checkpoint(&ck, i)));
                self.models.push(Arc::new(ck));
                self.model_index.insert(key, i);
                Value::Tensor(self.load_value(i))
            }
            Err(OpenError::NotFound { what, help }) => {
                self.err(Diagnostic::error(Code::E0301, format!("model not found: {what}")).with_label(ctx.file, pspan, "no checkpoint here").with_help(help))
            }
            Err(OpenError::Bad { file, what }) => self.err(
                Diagnostic::error(Code::E0302, format!("bad checkpoint `{}`: {what}", file.display()))
                    .with_label(ctx.file, pspan, "this checkpoint cannot be read")
                    .with_help("re-download or re-save the checkpoint; fuse reads safetensors files with a config.json beside them"),
            ),
        }
    }

    fn load_value(&mut self, model: usize) -> TVal {
        let expr = self.push(TExpr::Load { model });
        TVal { expr, arch: self.archs[model].clone(), weight: Sched::Const(1.0) }
    }

    fn call_over_layers(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
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

    fn call_user(&mut self, f: &Arc<UserFn>, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        if self.depth >= MAX_CALL_DEPTH {
            return self.err(
                Diagnostic::error(Code::E0110, format!("`{}` calls itself", f.name))
                    .with_label(ctx.file, span, "this call never ends")
                    .with_label(f.file, f.span, "defined here")
                    .with_note(format!("calls nest more than {MAX_CALL_DEPTH} deep; recipes have no recursion")),
            );
        }
        let names: Vec<&str> = f.params.iter().map(|p| p.name.name.as_str()).collect();
        let Some(mut bound) = self.bind_args(&f.name, &names, names.len(), 0, args, span, ctx) else {
            return Value::Poison;
        };
        let mut locals = HashMap::new();
        for p in &f.params {
            let v = match bound.remove(&p.name.name) {
                Some((v, _)) => v,
                None => match &p.default {
                    Some(d) => {
                        let dir = PathBuf::from(self.sources.name(f.file))
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default();
                        self.eval(d, Ctx { file: f.file, dir: &dir, locals: None })
                    }
                    None => {
                        return self.err(
                            Diagnostic::error(
                                Code::E0105,
                                format!("`{}` is missing its argument `{}`", f.name, p.name.name),
                            )
                            .with_label(ctx.file, span, format!("`{}` not given", p.name.name))
                            .with_label(f.file, p.name.span, "declared here"),
                        )
                    }
                },
            };
            locals.insert(p.name.name.clone(), v);
        }
        self.depth += 1;
        let dir = PathBuf::from(self.sources.name(f.file)).parent().map(Path::to_path_buf).unwrap_or_default();
        let v = self.eval(&f.body, Ctx { file: f.file, dir: &dir, locals: Some(&locals) });
        self.depth -= 1;
        v
    }

    fn call_method(&mut self, spec: &MethodSpec, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        // Positional arguments are the inputs; everything else is named.
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
        let pnames: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
        let Some(mut bound) = self.bind_args(spec.name, &pnames, 0, 0, &named, span, ctx) else {
            return Value::Poison;
        };
        if inputs.iter().any(|(v, _)| matches!(v, Value::Poison))
            || bound.values().any(|(v, _)| matches!(v, Value::Poison))
        {
            return Value::Poison;
        }
        if inputs.len() < spec.min_inputs {
            return self.err(
                Diagnostic::error(
                    Code::E0105,
                    format!(
                        "`{}` needs at least {} model{}",
                        spec.name,
                        spec.min_inputs,
                        if spec.min_inputs == 1 { "" } else { "s" }
                    ),
                )
                .with_label(ctx.file, span, "no models given")
                .with_help(format!("pass the models first: `{}(a, b, ...)`", spec.name)),
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
                            format!("`{}` merges models, found {}", spec.name, other.type_name()),
                        )
                        .with_label(ctx.file, *s, "expected a model or task vector")
                        .with_help("named arguments are written `name=value`"),
                    )
                }
            }
        }
        for w in 1..tvals.len() {
            if !self.same_arch(&tvals[0].0.arch, &tvals[w].0.arch, tvals[0].1, tvals[w].1, ctx.file) {
                return Value::Poison;
            }
        }
        let n = tvals.len();
        let mut per_model = HashMap::new();
        let mut nums = HashMap::new();
        let mut bools = HashMap::new();
        for p in spec.params {
            let given = bound.remove(p.name);
            match p.kind {
                PKind::PerModel => {
                    let v = match given {
                        Some((v, s)) => match self.per_model(spec.name, p.name, v, s, n, ctx) {
                            Some(v) => v,
                            None => return Value::Poison,
                        },
                        None => match p.default {
                            PDefault::Num(d) => vec![Sched::Const(d); n],
                            _ => {
                                return self.err(
                                    Diagnostic::error(Code::E0105, format!("`{}` needs `{}`", spec.name, p.name))
                                        .with_label(ctx.file, span, format!("`{}=` not given", p.name)),
                                )
                            }
                        },
                    };
                    per_model.insert(p.name, v);
                }
                PKind::Num => {
                    let v = match given {
                        Some((Value::Num(s), _)) => s,
                        Some((other, s)) => {
                            return self.err(
                                Diagnostic::error(
                                    Code::E0106,
                                    format!("`{}` must be a number, found {}", p.name, other.type_name()),
                                )
                                .with_label(ctx.file, s, "expected a number"),
                            )
                        }
                        None => match p.default {
                            PDefault::Num(d) => Sched::Const(d),
                            _ => {
                                return self.err(
                                    Diagnostic::error(Code::E0105, format!("`{}` needs `{}`", spec.name, p.name))
                                        .with_label(ctx.file, span, format!("`{}=` not given", p.name)),
                                )
                            }
                        },
                    };
                    nums.insert(p.name, v);
                }
                PKind::Bool => {
                    let v = match given {
                        Some((Value::Bool(b), _)) => b,
                        Some((other, s)) => {
                            return self.err(
                                Diagnostic::error(
                                    Code::E0106,
                                    format!("`{}` must be true or false, found {}", p.name, other.type_name()),
                                )
                                .with_label(ctx.file, s, "expected a Bool"),
                            )
                        }
                        None => matches!(p.default, PDefault::Bool(true)),
                    };
                    bools.insert(p.name, v);
                }
                PKind::Model => {
                    if let Some((v, s)) = given {
                        bound.insert(p.name.to_string(), (v, s));
                    }
                }
            }
        }
        if let Some(d) = per_model.get("density") {
            for s in d {
                if let Some(c) = s.as_const().filter(|c| !(0.0..=1.0).contains(c)) {
                    let at = args
                        .iter()
                        .find(|a| a.name.as_ref().is_some_and(|n| methods::canonical_param(&n.name) == "density"))
                        .map_or(span, |a| a.value.span);
                    return self.err(
                        Diagnostic::error(Code::E0106, format!("density {} is outside [0, 1]", fmt_num(c)))
                            .with_label(ctx.file, at, "a density is the fraction of entries kept")
                            .with_help("use a value between 0 and 1, e.g. `density=0.2`"),
                    );
                }
            }
        }
        let weights = per_model.remove("weight").unwrap_or_default();
        if !spec.task_vectors {
            // linear: a weighted average of models, or of task vectors.
            let kinds: Vec<Option<Kind>> = tvals.iter().map(|(t, _)| self.kind(t)).collect();
            if kinds.iter().any(|k| *k != kinds[0]) {
                let i = kinds.iter().position(|k| *k != kinds[0]).unwrap();
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`{}` mixes models and task vectors", spec.name))
                        .with_label(ctx.file, tvals[i].1, "this one differs from the first")
                        .with_help("average models with models, or task vectors with task vectors"),
                );
            }
            let normalize = bools["normalize"];
            let total = weights.iter().cloned().reduce(|a, b| Sched::bin(BinOp::Add, a, b)).unwrap();
            let terms: Vec<(Sched, TId)> = weights
                .iter()
                .zip(&tvals)
                .map(|(w, (t, _))| {
                    (if normalize { Sched::bin(BinOp::Div, w.clone(), total.clone()) } else { w.clone() }, t.expr)
                })
                .collect();
            let weight = terms
                .iter()
                .zip(&tvals)
                .map(|((c, _), (t, _))| Sched::bin(BinOp::Mul, c.clone(), t.weight.clone()))
                .reduce(|a, b| Sched::bin(BinOp::Add, a, b))
                .unwrap();
            let expr = self.push(TExpr::Lin(terms));
            return Value::Tensor(TVal { expr, arch: tvals[0].0.arch.clone(), weight });
        }
        // Task-vector methods: models become `model - base`.
        let base = match bound.remove("base") {
            Some((Value::Tensor(b), s)) => match self.kind(&b) {
                Some(Kind::Model) => Some((b, s)),
                _ => {
                    return self.err(Diagnostic::error(Code::E0106, "`base` must be a model").with_label(
                        ctx.file,
                        s,
                        "this is not a model",
                    ))
                }
            },
            Some((other, s)) => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`base` must be a model, found {}", other.type_name()))
                        .with_label(ctx.file, s, "expected a model"),
                )
            }
            None => None,
        };
        let mut deltas = Vec::new();
        for (t, s) in &tvals {
            match self.kind(t) {
                Some(Kind::Delta) => deltas.push(t.expr),
                _ => {
                    let base = match &base {
                        Some((b, bs)) => Some((b.clone(), *bs)),
                        None => match self.globals.get("base").map(|b| (b.value.clone(), b.span)) {
                            Some((Value::Tensor(b), bs)) if self.kind(&b) == Some(Kind::Model) => Some((b, bs)),
                            _ => None,
                        },
                    };
                    let Some((b, bs)) = base else {
                        return self.err(Diagnostic::error(Code::E0204, format!("`{}` takes task vectors, but no base model is known", spec.name))
                            .with_label(ctx.file, *s, "this model would become `model - base`")
                            .with_help(format!("pass `base=...` to `{}`, bind a model to the name `base`, or give task vectors (`a - b`)", spec.name)));
                    };
                    if !self.same_arch(&b.arch, &t.arch, bs, *s, ctx.file) {
                        return Value::Poison;
                    }
                    deltas.push(self.push(TExpr::Lin(vec![(Sched::Const(1.0), t.expr), (Sched::Const(-1.0), b.expr)])));
                }
            }
        }
        let (sparsify, sign_election) = match spec.family {
            Family::Ties => (Sparsify::Magnitude, true),
            Family::TaskArithmetic | Family::Linear => (Sparsify::None, false),
        };
        let expr = self.push(TExpr::TaskMerge {
            deltas,
            weights,
            densities: per_model.remove("density").unwrap_or_else(|| vec![Sched::Const(1.0); n]),
            sparsify,
            sign_election,
            normalize: bools["normalize"],
            lambda: nums.remove("lambda").unwrap_or(Sched::Const(1.0)),
        });
        Value::Tensor(TVal { expr, arch: tvals[0].0.arch.clone(), weight: Sched::Const(0.0) })
    }

    /// A per-model argument: one number for all, or a list of one per model.
    fn per_model(&mut self, method: &str, param: &str, v: Value, span: Span, n: usize, ctx: Ctx) -> Option<Vec<Sched>> {
        match v {
            Value::Num(s) => Some(vec![s; n]),
            Value::List(items) => {
                if items.len() != n {
                    self.diags.push(
                        Diagnostic::error(Code::E0108, format!("`{param}` has {} values for {n} models", items.len()))
                            .with_label(
                                ctx.file,
                                span,
                                format!("expected {n} values, one per model, or a single number"),
                            )
                            .with_note(format!("`{method}` was given {n} models")),
                    );
                    return None;
                }
                let mut out = Vec::new();
                for i in items {
                    match i {
                        Value::Num(s) => out.push(s),
                        other => {
                            self.diags.push(
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
            other => {
                self.diags.push(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`{param}` must be a number or a list of numbers, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, span, "expected a number"),
                );
                None
            }
        }
    }
}

/// The hidden size as the first dimension of the last 1-D tensor (a norm), for messages.
fn hidden(a: &Arch) -> String {
    a.tensors.iter().find(|t| t.shape.len() == 1).map_or("?".into(), |t| t.shape[0].to_string())
}

pub fn fmt_num(x: f64) -> String {
    let s = format!("{:.6}", x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
