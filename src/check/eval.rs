//! Evaluates a recipe abstractly: names are resolved, calls bound and
//! arithmetic typed, producing symbolic tensor values over the models. Errors
//! are collected and evaluation goes on with a poison value, so one run
//! reports everything it can.

use super::natives;
use super::value::*;
use super::{Output, Recipe, ResultValue};
use crate::diag::{did_you_mean, Code, Diagnostic, FileId, Sources};
use crate::io::{Checkpoint, DType};
use crate::syntax::{self, Arg, BinOp, Expr, ExprKind, Pattern, Program, Span, StmtKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Names bound per tensor inside arguments.
pub(super) const PER_TENSOR: &[&str] = &["tensor", "layer", "depth"];

/// How deeply evaluation may nest, counting the bodies of the `fn`s it
/// calls: the text's limit plus room for those bodies. Past it, evaluation is
/// cut off (E0002) before it can overflow the stack (see docs/notes/nesting.md).
pub(super) const MAX_EVAL_DEPTH: usize = syntax::MAX_DEPTH + 64;

pub(super) struct Binding {
    pub value: Value,
    pub file: FileId,
    pub span: Span,
}

/// Where an expression is being evaluated: its file (for spans and relative
/// paths) and the parameters of the `fn` it is in, if any.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    pub file: FileId,
    pub dir: &'a Path,
    pub locals: Option<&'a HashMap<String, Value>>,
}

struct Override {
    name: String,
    text: String,
    used: bool,
}

pub(super) struct Checker<'s> {
    pub sources: &'s mut Sources,
    pub diags: Vec<Diagnostic>,
    pub models: Vec<Arc<Checkpoint>>,
    pub archs: Vec<Arc<Arch>>,
    pub model_index: HashMap<PathBuf, usize>,
    pub exprs: Vec<TExpr>,
    pub globals: HashMap<String, Binding>,
    /// The standard library's functions, visible everywhere, never rebound.
    pub prelude: HashMap<String, Binding>,
    pub stdlib_files: Vec<FileId>,
    /// Call sites of the `fn`s being evaluated, innermost last.
    pub frames: Vec<(String, FileId, Span)>,
    /// How many `eval`s are in progress.
    depth: usize,
    /// Set when a call nests too deeply (E0110, E0002): every evaluation
    /// returns poison until the outermost call returns, so a body that calls
    /// itself twice is not tried 2^64 times.
    pub cut_off: bool,
    overrides: Vec<Override>,
    pub want: super::Want,
    pub last: Option<super::Described>,
    pub types: Vec<(FileId, Span, String)>,
    pub saves: Vec<Output>,
    /// Every path the recipe reads (models, adapters, imports, itself).
    pub inputs: Vec<crate::ir::Input>,
    result: Option<ResultValue>,
    ensemble: Option<crate::ir::EnsembleResult>,
    importing: Vec<PathBuf>,
    /// The latest expression outside the standard library that gave each
    /// tensor expression: where errors found inside the stdlib point.
    pub origins: HashMap<crate::ir::TId, (FileId, Span)>,
    /// Integer buffers copied rather than merged, and the first place that did it.
    pub buffers: (std::collections::BTreeSet<String>, Option<(FileId, Span)>),
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
            prelude: HashMap::new(),
            stdlib_files: Vec::new(),
            frames: Vec::new(),
            depth: 0,
            cut_off: false,
            overrides: overrides
                .iter()
                .map(|(n, t)| Override { name: n.clone(), text: t.clone(), used: false })
                .collect(),
            want: super::Want::default(),
            last: None,
            types: Vec::new(),
            saves: Vec::new(),
            inputs: Vec::new(),
            result: None,
            ensemble: None,
            importing: Vec::new(),
            origins: HashMap::new(),
            buffers: Default::default(),
        }
    }

    pub fn err(&mut self, d: Diagnostic) -> Value {
        self.report(d);
        Value::Poison
    }

    /// Defines the standard library's functions (their bodies are checked
    /// where they are called).
    pub fn load_stdlib(&mut self) {
        for (name, text) in super::STDLIB {
            let file = self.sources.add(*name, *text);
            self.stdlib_files.push(file);
            match syntax::parse(text, file) {
                Ok(program) => self.run_file(&program, file, Path::new("stdlib"), false),
                Err(d) => self.report(d),
            }
        }
        self.prelude = std::mem::take(&mut self.globals);
    }

    /// Checks the main recipe file.
    pub fn run_main(&mut self, program: &Program, file: FileId, path: &Path) {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        self.importing.push(path.to_path_buf());
        self.run_file(program, file, &dir, true);
        // Last, so that an output overlapping both a model and the recipe names the model.
        self.inputs.push(crate::ir::Input::file(format!("the recipe `{}`", path.display()), path, file, None));
        self.check_outputs();
        self.note_buffers();
        let unused: Vec<String> = self.overrides.iter().filter(|o| !o.used).map(|o| o.name.clone()).collect();
        for name in unused {
            {
                let o = Override { name, text: String::new(), used: false };
                let params: Vec<&str> = self.globals.keys().map(String::as_str).collect();
                let mut d =
                    Diagnostic::error(Code::E0109, format!("--set {}: the recipe has no `param {}`", o.name, o.name));
                if let Some(s) = did_you_mean(&o.name, params) {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                self.report(d.with_note("only names declared with `param` can be set from the command line"));
            }
        }
    }

    /// Every name bound outside the standard library, with where.
    pub fn definitions(&self) -> Vec<(String, FileId, Span)> {
        self.globals.iter().map(|(n, b)| (n.clone(), b.file, b.span)).collect()
    }

    pub fn finish(self, main: FileId) -> Recipe {
        let base = match self.globals.get("base").map(|b| &b.value) {
            Some(Value::Tensor(t)) => match self.exprs[t.expr] {
                TExpr::Load { model } => Some(model),
                _ => None,
            },
            _ => None,
        };
        Recipe {
            base,
            models: self.models,
            exprs: self.exprs,
            saves: self.saves,
            result: self.result,
            ensemble: self.ensemble,
            main_file: main,
            inputs: self.inputs,
        }
    }

    pub fn run_file(&mut self, program: &Program, file: FileId, dir: &Path, is_main: bool) {
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
                StmtKind::Save { args, lora } => {
                    if !is_main {
                        self.err(Diagnostic::error(Code::E0111, "`save` in an imported file").with_label(
                            file,
                            stmt.span,
                            "imported files define names; only the main recipe writes outputs",
                        ));
                        continue;
                    }
                    if *lora {
                        self.save_lora(args, stmt.span, ctx);
                    } else {
                        self.save(args, stmt.span, ctx);
                    }
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
                    let v = self.settle_value(v, e.span, file);
                    if !matches!(v, Value::Poison) {
                        let (summary, value) = match &v {
                            Value::Tensor(t) => (Some(t.arch.summary()), Some(t.clone())),
                            Value::Ensemble(e) => (Some(super::ensemble::summary(e)), None),
                            _ => (None, None),
                        };
                        let ensemble = match &v {
                            Value::Ensemble(e) => Some(e.clone()),
                            _ => None,
                        };
                        let values = match &v {
                            Value::List(items) => items
                                .iter()
                                .filter_map(|i| if let Value::Tensor(t) = i { Some(t.clone()) } else { None })
                                .collect(),
                            _ => Vec::new(),
                        };
                        self.last =
                            Some(super::Described { type_name: v.type_name(), summary, value, values, ensemble });
                    }
                    if self.want.any_result && !matches!(v, Value::Tensor(_) | Value::Ensemble(_)) {
                        continue;
                    }
                    match v {
                        Value::Tensor(t) => self.result = Some(ResultValue { value: t, file, span: e.span }),
                        Value::Ensemble(value) => {
                            self.ensemble = Some(crate::ir::EnsembleResult { value, file, span: e.span })
                        }
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

    pub fn bind(&mut self, name: &str, value: Value, file: FileId, span: Span) {
        if let Some(prev) = self.globals.get(name).or_else(|| self.prelude.get(name)) {
            let d = Diagnostic::error(Code::E0102, format!("`{name}` is bound twice"))
                .with_label(file, span, "bound again here")
                .with_label(prev.file, prev.span, "first bound here")
                .with_help("a name is bound once; pick another name for one of them");
            self.report(d);
            return;
        }
        if natives::native(name).is_some() || PER_TENSOR.contains(&name) || name == "none" {
            self.report(
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
        self.inputs.push(crate::ir::Input::file(format!("the import `{rel}`"), &path, ctx.file, Some(span)));
        let file = self.sources.add(path.display().to_string(), text.clone());
        match syntax::parse(&text, file) {
            Ok(program) => {
                self.importing.push(path.clone());
                let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
                self.run_file(&program, file, &dir, false);
                self.importing.pop();
            }
            Err(d) => self.report(d),
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
            Value::Ensemble(_) => {
                self.err(
                    Diagnostic::error(Code::E0208, "an Ensemble cannot be saved")
                        .with_label(ctx.file, mspan, "this is an Ensemble")
                        .with_note("an ensemble runs its members side by side and combines their next-token predictions; it has no weights of its own to write")
                        .with_help("measure it with `fuse eval RECIPE --text FILE`, or save a merged model instead (e.g. `linear(a, b)`)"),
                );
                return;
            }
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
        let mut quant = None;
        let gguf = dir.extension().is_some_and(|e| e == "gguf");
        let dtype = match bound.remove("dtype") {
            None => None,
            Some((Value::DType(d), _)) => Some(d),
            Some((Value::Str(s), _)) if gguf && s == "q8_0" => {
                quant = Some(crate::io::gguf_write::Quant::Q8_0);
                None
            }
            Some((Value::Poison, _)) => return,
            Some((other, s)) => {
                self.err(
                    Diagnostic::error(
                        Code::E0106,
                        format!(
                            "`dtype` must be bf16, f16 or f32 (or \"q8_0\" for a .gguf output), found {}",
                            other.type_name()
                        ),
                    )
                    .with_label(ctx.file, s, "expected a dtype"),
                );
                return;
            }
        };
        let shard = match bound.remove("shard") {
            None => crate::io::writer::DEFAULT_SHARD,
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
        self.saves.push(Output { value, dir, dtype, quant, shard, lora: None, file: ctx.file, span });
    }

    // ---- expressions ----

    pub fn eval(&mut self, e: &Expr, ctx: Ctx) -> Value {
        if self.depth == 0 {
            self.cut_off = false;
        }
        if self.cut_off {
            return Value::Poison;
        }
        if self.depth >= MAX_EVAL_DEPTH {
            return self.too_deep(e.span, ctx);
        }
        self.depth += 1;
        let v = self.eval_inner(e, ctx);
        self.depth -= 1;
        if let Value::Tensor(t) = &v {
            if !self.stdlib_files.contains(&ctx.file) {
                self.origins.insert(t.expr, (ctx.file, e.span));
            }
        }
        if self.want.types && !matches!(v, Value::Poison) {
            self.types.push((ctx.file, e.span, v.type_name()));
        }
        v
    }

    fn eval_inner(&mut self, e: &Expr, ctx: Ctx) -> Value {
        match &e.kind {
            ExprKind::Num(n) => Value::Num(Sched::Const(*n)),
            ExprKind::Str(s) => Value::Str(s.clone()),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
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
                Value::Ensemble(_) => self.ensemble_misuse(inner.span, ctx.file, "`-`"),
                other => {
                    self.err(Diagnostic::error(Code::E0203, format!("cannot negate {}", other.type_name())).with_label(
                        ctx.file,
                        inner.span,
                        "not a number or a model",
                    ))
                }
            },
            ExprKind::Chain(first, rest) => self.chain(first, rest, ctx),
            ExprKind::Call { callee, args } => self.call(callee, args, e.span, ctx),
            ExprKind::Match { scrutinee, arms } => self.eval_match(scrutinee, arms, e.span, ctx),
            ExprKind::Member(target, member) => self.member(target, member, ctx),
            ExprKind::Index(target, index) => self.index(target, Some(index), Some(index), true, e.span, ctx),
            ExprKind::Slice { target, lo, hi } => self.index(target, lo.as_deref(), hi.as_deref(), false, e.span, ctx),
        }
    }

    /// E0002 inside a `fn` body: the text nests within the limit, but calls
    /// nest the bodies they evaluate inside each other.
    fn too_deep(&mut self, span: Span, ctx: Ctx) -> Value {
        self.cut_off = true;
        let mut d = Diagnostic::error(Code::E0002, format!("evaluation nested more than {MAX_EVAL_DEPTH} levels deep"))
            .with_label(ctx.file, span, format!("level {} is here", MAX_EVAL_DEPTH + 1));
        if let Some((name, file, call)) = self.frames.first().cloned() {
            d = d.with_label(file, call, format!("inside this call to `{name}`"));
        }
        self.err(
            d.with_note(
                "a call evaluates the function's body inside the call, so nested calls add up the bodies' levels",
            )
            .with_help("bind inner parts to names first (`inner = ...`) and use the names"),
        )
    }

    pub fn lookup(&mut self, name: &str, span: Span, ctx: Ctx) -> Value {
        if let Some(v) = ctx.locals.and_then(|l| l.get(name)) {
            return v.clone();
        }
        if let Some(b) = self.globals.get(name).or_else(|| self.prelude.get(name)) {
            return b.value.clone();
        }
        match name {
            "tensor" => return Value::TensorName,
            "layer" => return Value::Num(Sched::Layer),
            "depth" => return Value::Num(Sched::Depth),
            _ => {}
        }
        if let Some(n) = natives::native(name) {
            return Value::Func(Func::Builtin(n.name));
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

    pub fn push(&mut self, e: TExpr) -> TId {
        self.exprs.push(e);
        self.exprs.len() - 1
    }

    pub fn scale(&mut self, t: TVal, c: Sched) -> Value {
        let weight = Sched::bin(BinOp::Mul, c.clone(), t.weight.clone());
        let expr = self.push(TExpr::Lin(vec![(c, t.expr)]));
        Value::Tensor(TVal { expr, arch: t.arch, weight })
    }

    /// `first op1 x1 op2 x2 ...`, left to right, without recursing per
    /// operator. A run of `+`/`-` between tensor values becomes one linear
    /// combination (its terms in order, so it computes exactly what the
    /// nested pairs did), not one node per operator.
    fn chain(&mut self, first: &Expr, rest: &[(BinOp, Expr)], ctx: Ctx) -> Value {
        let mut acc = self.eval(first, ctx);
        // The `TExpr::Lin` this chain made for its last `+`/`-`: nothing else
        // refers to it, so the next term may be appended to it in place.
        let mut own_sum = None;
        let mut left = first.span;
        for (i, (op, r)) in rest.iter().enumerate() {
            let rv = self.eval(r, ctx);
            let spans = Operands { left, right: r.span, whole: left.to(r.span) };
            acc = self.binary(*op, acc, rv, spans, own_sum.take(), ctx);
            left = spans.whole;
            if let (BinOp::Add | BinOp::Sub, Value::Tensor(t)) = (op, &acc) {
                own_sum = Some(t.expr);
            }
            // Each prefix is an expression of its own for hover, as when
            // chains were nested pairs; `eval` records the whole chain.
            if self.want.types && i + 1 < rest.len() && !matches!(acc, Value::Poison) {
                self.types.push((ctx.file, left, acc.type_name()));
            }
        }
        acc
    }

    /// `lv op rv`. `own_sum` is a linear combination a `+`/`-` may extend in
    /// place instead of nesting it in a new one (see [`Checker::chain`]).
    fn binary(&mut self, op: BinOp, lv: Value, rv: Value, at: Operands, own_sum: Option<TId>, ctx: Ctx) -> Value {
        use Value::*;
        let (l, r, span) = (at.left, at.right, at.whole);
        match (op, lv, rv) {
            (_, Poison, _) | (_, _, Poison) => Poison,
            (op, Num(a), Num(b)) => Num(Sched::bin(op, a, b)),
            (BinOp::Mul, Num(c), Tensor(t)) | (BinOp::Mul, Tensor(t), Num(c)) => self.scale(t, c),
            (BinOp::Div, Tensor(t), Num(c)) => self.scale(t, Sched::bin(BinOp::Div, Sched::Const(1.0), c)),
            (BinOp::Add | BinOp::Sub, Tensor(a), Tensor(b)) => {
                let Some(arch) = self.same_arch(&a, &b, l, r, ctx.file) else {
                    return Poison;
                };
                let sign = if op == BinOp::Add { 1.0 } else { -1.0 };
                let term = (Sched::Const(sign), b.expr);
                let expr = match own_sum {
                    Some(sum) if sum == a.expr => {
                        let TExpr::Lin(terms) = &mut self.exprs[sum] else { unreachable!("a chain's sums are Lin") };
                        terms.push(term);
                        sum
                    }
                    _ => self.push(TExpr::Lin(vec![(Sched::Const(1.0), a.expr), term])),
                };
                Tensor(TVal { expr, arch, weight: Sched::bin(op, a.weight, b.weight) })
            }
            (op, Ensemble(_), _) => self.ensemble_misuse(l, ctx.file, &format!("`{op}`")),
            (op, _, Ensemble(_)) => self.ensemble_misuse(r, ctx.file, &format!("`{op}`")),
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
                .with_label(ctx.file, l, lv.type_name())
                .with_label(ctx.file, r, rv.type_name());
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

    pub fn snippet(&self, file: FileId, span: Span) -> String {
        let t = self.sources.text(file).get(span.start..span.end).unwrap_or("?");
        if t.len() > 40 {
            format!("{}…", &t[..t.char_indices().take(40).last().map_or(0, |(i, _)| i)])
        } else {
            t.to_string()
        }
    }

    /// Whether a tensor value is a model (weights sum to 1) or a task vector
    /// (sum to 0), checked at every tensor when the weights vary.
    pub fn kind(&self, t: &TVal) -> Option<Kind> {
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
    pub fn settle_value(&mut self, v: Value, span: Span, file: FileId) -> Value {
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
}

/// Where the operands of one operator are: left, right, and both with it.
#[derive(Clone, Copy)]
struct Operands {
    left: Span,
    right: Span,
    whole: Span,
}

/// The hidden size as the first dimension of the last 1-D tensor (a norm), for messages.
pub fn fmt_num(x: f64) -> String {
    let s = format!("{:.6}", x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
