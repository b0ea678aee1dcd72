//! Calls: finding the function, matching arguments to parameters, and
//! evaluating `fn` bodies (the recipe's and the standard library's). Errors
//! raised inside the standard library also point at the user's call.

use super::eval::{Checker, Ctx};
use super::natives;
use super::value::*;
use crate::diag::{did_you_mean, Code, Diagnostic};
use crate::syntax::{Arg, Expr, ExprKind, Span};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_CALL_DEPTH: usize = 64;

/// Arguments matched to parameter names, with the span of each value.
pub(super) type Bound = HashMap<String, (Value, Span)>;

impl Checker<'_> {
    /// Records a diagnostic. One raised inside the standard library gets the
    /// user's call site as its first label, so it points where the fix is.
    pub fn report(&mut self, mut d: Diagnostic) {
        let in_stdlib = d.labels.first().is_some_and(|l| self.stdlib_files.contains(&l.file));
        if in_stdlib {
            if let Some((name, file, span)) = self.frames.iter().rev().find(|(_, f, _)| !self.stdlib_files.contains(f))
            {
                let label =
                    crate::diag::Label { file: *file, span: *span, message: format!("in this call to `{name}`") };
                d.labels.insert(0, label);
            }
        }
        self.diags.push(d);
    }

    pub fn call(&mut self, callee: &Expr, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let ExprKind::Ident(name) = &callee.kind else {
            return self.err(Diagnostic::error(Code::E0106, "only named functions can be called").with_label(
                ctx.file,
                callee.span,
                "not a function name",
            ));
        };
        let known = ctx.locals.is_some_and(|l| l.contains_key(name))
            || self.globals.contains_key(name)
            || self.prelude.contains_key(name)
            || natives::native(name).is_some();
        if !known {
            let mut cands: Vec<&str> = natives::all().map(|n| n.name).collect();
            cands.extend(self.prelude.keys().map(String::as_str));
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
        }
        match self.lookup(name, callee.span, ctx) {
            Value::Func(Func::Builtin(b)) => match natives::native(b) {
                Some(native) => self.call_native(native, args, span, ctx),
                None => unreachable!("builtin `{b}` is not in the table of natives"),
            },
            Value::Func(Func::User(f)) => self.call_user(&f, args, span, ctx),
            Value::Poison => Value::Poison,
            other => self.err(
                Diagnostic::error(Code::E0106, format!("`{name}` is {}, not a function", other.type_name()))
                    .with_label(ctx.file, callee.span, "called here"),
            ),
        }
    }

    /// Evaluates arguments and matches them to `params` (the first
    /// `positional` of which may be given by position, the first `required`
    /// of which must be given). Returns None after reporting when they do not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn bind_args(
        &mut self,
        fname: &str,
        params: &[&str],
        positional: usize,
        required: usize,
        args: &[Arg],
        span: Span,
        ctx: Ctx,
    ) -> Option<Bound> {
        let mut out = Bound::new();
        let mut pos = 0;
        let mut ok = true;
        for a in args {
            let v = self.eval(&a.value, ctx);
            let name = match &a.name {
                Some(n) => {
                    let canon = natives::canonical_param(&n.name);
                    if !params.contains(&canon) {
                        self.unknown_arg(fname, &n.name, n.span, params, ctx);
                        ok = false;
                        continue;
                    }
                    canon.to_string()
                }
                None => {
                    if pos >= positional {
                        self.too_many(fname, positional, params.get(positional).copied(), a.value.span, ctx);
                        ok = false;
                        continue;
                    }
                    pos += 1;
                    params[pos - 1].to_string()
                }
            };
            if out.contains_key(&name) {
                self.report(Diagnostic::error(Code::E0107, format!("argument `{name}` is given twice")).with_label(
                    ctx.file,
                    a.value.span,
                    "given again here",
                ));
                ok = false;
                continue;
            }
            out.insert(name, (v, a.value.span));
        }
        for p in &params[..required] {
            if !out.contains_key(*p) && ok {
                self.report(
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

    pub fn unknown_arg(&mut self, fname: &str, name: &str, span: Span, params: &[&str], ctx: Ctx) {
        let mut d = Diagnostic::error(Code::E0104, format!("`{fname}` has no argument `{name}`")).with_label(
            ctx.file,
            span,
            "unknown argument",
        );
        if let Some(s) = did_you_mean(name, params.iter().copied()) {
            d = d.with_help(format!("did you mean `{s}`?"));
        } else {
            d = d.with_note(format!("`{fname}` takes: {}", params.join(", ")));
        }
        self.report(d);
    }

    fn too_many(&mut self, fname: &str, positional: usize, next: Option<&str>, span: Span, ctx: Ctx) {
        let plural = if positional == 1 { "" } else { "s" };
        self.report(
            Diagnostic::error(Code::E0107, format!("`{fname}` takes {positional} positional argument{plural}"))
                .with_label(ctx.file, span, "one too many")
                .with_help(format!("name the argument, e.g. `{}=...`", next.unwrap_or("name"))),
        );
    }

    /// Calls a `fn`: positional arguments fill its parameters in order, a
    /// `..name` parameter collects the rest as a list, and parameters after
    /// it are given by name.
    fn call_user(&mut self, f: &Arc<UserFn>, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        if self.frames.len() >= MAX_CALL_DEPTH {
            self.cut_off = true;
            return self.err(
                Diagnostic::error(Code::E0110, format!("`{}` calls itself", f.name))
                    .with_label(ctx.file, span, "this call never ends")
                    .with_label(f.file, f.span, "defined here")
                    .with_note(format!("calls nest more than {MAX_CALL_DEPTH} deep; recipes have no recursion")),
            );
        }
        let names: Vec<&str> = f.params.iter().map(|p| p.name.name.as_str()).collect();
        let variadic = f.params.iter().position(|p| p.variadic);
        let positional = variadic.unwrap_or(names.len());
        let mut bound = Bound::new();
        let mut rest = Vec::new();
        let mut ok = true;
        let mut pos = 0;
        for a in args {
            let v = self.eval(&a.value, ctx);
            match &a.name {
                Some(n) => {
                    let canon = natives::canonical_param(&n.name);
                    if !names.contains(&canon) || Some(canon) == variadic.map(|i| names[i]) {
                        self.unknown_arg(&f.name, &n.name, n.span, &names, ctx);
                        ok = false;
                    } else if bound.insert(canon.to_string(), (v, a.value.span)).is_some() {
                        self.report(
                            Diagnostic::error(Code::E0107, format!("argument `{canon}` is given twice")).with_label(
                                ctx.file,
                                a.value.span,
                                "given again here",
                            ),
                        );
                        ok = false;
                    }
                }
                None if pos < positional => {
                    bound.insert(names[pos].to_string(), (v, a.value.span));
                    pos += 1;
                }
                None if variadic.is_some() => rest.push(v),
                None => {
                    self.too_many(&f.name, positional, names.get(positional).copied(), a.value.span, ctx);
                    ok = false;
                }
            }
        }
        if !ok {
            return Value::Poison;
        }
        let dir = PathBuf::from(self.sources.name(f.file)).parent().map(Path::to_path_buf).unwrap_or_default();
        let mut locals = HashMap::new();
        for p in &f.params {
            let v = if p.variadic {
                Value::List(std::mem::take(&mut rest))
            } else {
                match bound.remove(&p.name.name) {
                    Some((v, _)) => v,
                    None => match &p.default {
                        Some(d) => self.eval(d, Ctx { file: f.file, dir: &dir, locals: None }),
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
                }
            };
            locals.insert(p.name.name.clone(), v);
        }
        self.frames.push((f.name.clone(), ctx.file, span));
        let v = self.eval(&f.body, Ctx { file: f.file, dir: &dir, locals: Some(&locals) });
        self.frames.pop();
        if self.frames.is_empty() {
            // The runaway call, if any, is over; the rest of the recipe is checked as usual.
            self.cut_off = false;
        }
        v
    }
}
