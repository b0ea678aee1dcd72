//! Checking: AST in, [`Recipe`] out. Resolves names, imports and calls, reads
//! each model's architecture (config.json and safetensors headers, never
//! tensor data), types the affine arithmetic, checks that operands agree, and
//! collects every error it can find in one pass.

mod builtins;
mod call;
mod eval;
mod filter;
mod lora;
mod moe;
pub mod natives;
mod operands;
mod outputs;
mod structure;
pub mod value;

pub use crate::ir::{Arch, Input, LoraOut, Output, Recipe, ResultValue, Sched, TExpr, TId, TVal, TensorCtx};
pub use eval::fmt_num;
pub use outputs::output_conflict;
pub use value::Kind;

use crate::diag::{Diagnostic, FileId, Sources};
use crate::syntax::{self, Span};
use std::path::Path;

/// The standard library, embedded: (file name, source).
pub const STDLIB: &[(&str, &str)] = &[("stdlib/merge.fuse", include_str!("../../stdlib/merge.fuse"))];

/// Every function name a recipe can call: the natives and the standard
/// library's `fn`s (for completion and did-you-means).
pub fn function_names() -> Vec<String> {
    let mut v: Vec<String> = natives::all().map(|n| n.name.to_string()).collect();
    v.extend(stdlib_fns().into_iter().map(|f| f.name));
    v
}

/// A function of the standard library, as its source declares it.
pub struct StdlibFn {
    pub name: String,
    /// Parameter names, `..rest` left out.
    pub params: Vec<String>,
    /// The source of the signature: `ties(..models, weight=1.0, ...)`.
    pub signature: String,
    /// The comment lines right above the `fn`.
    pub doc: String,
}

/// The standard library's functions.
pub fn stdlib_fns() -> Vec<StdlibFn> {
    let mut out = Vec::new();
    for (name, text) in STDLIB {
        let mut sources = Sources::default();
        let Ok(p) = syntax::parse(text, sources.add(*name, *text)) else { continue };
        for s in p.stmts {
            if let syntax::StmtKind::Fn { name, params, body } = s.kind {
                let head = &text[s.span.start..body.span.start];
                // A parenthesized body's span starts inside its parentheses.
                let head = head.trim_end_matches(|c: char| c == '(' || c.is_whitespace());
                let signature = head.trim_start_matches("fn").trim().trim_end_matches('=').trim().to_string();
                let doc: Vec<&str> = text[..s.span.start].lines().rev().take_while(|l| l.starts_with('#')).collect();
                let doc: Vec<&str> = doc.into_iter().rev().map(|l| l.trim_start_matches('#').trim()).collect();
                out.push(StdlibFn {
                    name: name.name,
                    params: params.into_iter().filter(|p| !p.variadic).map(|p| p.name.name).collect(),
                    signature: signature.split_whitespace().collect::<Vec<_>>().join(" "),
                    doc: doc.join(" "),
                });
            }
        }
    }
    out
}

/// Named arguments a function takes (for completion and hover).
pub fn parameters_of(function: &str) -> Vec<String> {
    if let Some(n) = natives::native(function) {
        return n.params.iter().map(|p| p.name.to_string()).collect();
    }
    stdlib_fns().into_iter().find(|f| f.name == function).map(|f| f.params).unwrap_or_default()
}

/// Documentation of a native or standard-library function, in Markdown.
pub fn docs_of(name: &str) -> Option<String> {
    if let Some(n) = natives::native(name) {
        return Some(n.markdown());
    }
    stdlib_fns().into_iter().find(|f| f.name == name).map(|f| format!("**{}** — {}", f.signature, f.doc))
}

/// What the REPL and the language server ask of a check beyond the recipe.
#[derive(Default, Clone, Copy)]
pub struct Want {
    /// The last bare expression may be any value (the REPL shows it).
    pub any_result: bool,
    /// Record the type of every expression evaluated (hover).
    pub types: bool,
}

/// The last bare expression, described for people.
#[derive(Debug, Clone)]
pub struct Described {
    pub type_name: String,
    /// For tensor values: architecture, layers, parameters.
    pub summary: Option<String>,
    pub value: Option<TVal>,
    /// For a list: the tensor values in it.
    pub values: Vec<TVal>,
}

/// Everything a check found.
pub struct Analysis {
    pub recipe: Option<Recipe>,
    pub diags: Vec<Diagnostic>,
    pub last: Option<Described>,
    /// (file, span, type) of every evaluated expression, when asked for.
    pub types: Vec<(FileId, Span, String)>,
    /// Where each name the recipe (and its imports) binds is defined.
    pub defs: Vec<(String, FileId, Span)>,
}

/// Checks the recipe in `path` (already read into `text`). `overrides` are
/// `--set name=value` pairs, the value as recipe source text. Returns the
/// recipe when there were no errors, and every diagnostic (warnings too).
pub fn check(
    path: &Path,
    text: &str,
    overrides: &[(String, String)],
    sources: &mut Sources,
) -> (Option<Recipe>, Vec<Diagnostic>) {
    let a = analyze(path, text, overrides, sources, Want::default());
    (a.recipe, a.diags)
}

/// [`check`], with what the REPL and the language server need.
pub fn analyze(path: &Path, text: &str, overrides: &[(String, String)], sources: &mut Sources, want: Want) -> Analysis {
    let file = sources.add(path.display().to_string(), text);
    let program = match syntax::parse(text, file) {
        Ok(p) => p,
        Err(d) => return Analysis { recipe: None, diags: vec![d], last: None, types: Vec::new(), defs: Vec::new() },
    };
    let mut checker = eval::Checker::new(sources, overrides);
    checker.want = want;
    checker.load_stdlib();
    checker.run_main(&program, file, path);
    let diags = std::mem::take(&mut checker.diags);
    let types = std::mem::take(&mut checker.types);
    let last = checker.last.take();
    let defs = checker.definitions();
    let ok = !diags.iter().any(Diagnostic::is_error);
    Analysis { recipe: ok.then(|| checker.finish(file)), diags, last, types, defs }
}
