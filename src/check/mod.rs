//! Checking: AST in, [`Recipe`] out. Resolves names, imports and calls, reads
//! each model's architecture (config.json and safetensors headers, never
//! tensor data), types the affine arithmetic, checks that operands agree, and
//! collects every error it can find in one pass.

mod builtins;
mod call;
mod eval;
mod lora;
pub mod methods;
mod moe;
mod structure;
pub mod value;

pub use eval::fmt_num;
pub use value::{Arch, Kind, Sched, TExpr, TId, TVal, TensorCtx};

use crate::diag::{Diagnostic, FileId, Sources};
use crate::io::{Checkpoint, DType};
use crate::syntax::{self, Span};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The standard library, embedded: (file name, source).
pub const STDLIB: &[(&str, &str)] = &[("stdlib/merge.fuse", include_str!("../../stdlib/merge.fuse"))];

/// A checked recipe: the models it reads, the symbolic expressions over
/// them, and what to write where.
#[derive(Debug)]
pub struct Recipe {
    pub models: Vec<Arc<Checkpoint>>,
    pub exprs: Vec<TExpr>,
    pub saves: Vec<Output>,
    pub result: Option<ResultValue>,
    pub main_file: FileId,
}

/// A `save(...)` statement.
#[derive(Debug, Clone)]
pub struct Output {
    pub value: TVal,
    pub dir: PathBuf,
    pub dtype: Option<DType>,
    pub shard: u64,
    /// `save_lora`: extract a LoRA adapter instead of writing a model.
    pub lora: Option<LoraOut>,
    pub file: FileId,
    pub span: Span,
}

/// What `save_lora` asks for: the rank, and the base model (recipe model index).
#[derive(Debug, Clone, Copy)]
pub struct LoraOut {
    pub rank: usize,
    pub base: usize,
}

/// The recipe's final bare expression, written by `fuse run -o DIR`.
#[derive(Debug, Clone)]
pub struct ResultValue {
    pub value: TVal,
    pub file: FileId,
    pub span: Span,
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
    let file = sources.add(path.display().to_string(), text);
    let program = match syntax::parse(text, file) {
        Ok(p) => p,
        Err(d) => return (None, vec![d]),
    };
    let mut checker = eval::Checker::new(sources, overrides);
    checker.load_stdlib();
    checker.run_main(&program, file, path);
    let diags = std::mem::take(&mut checker.diags);
    let ok = !diags.iter().any(Diagnostic::is_error);
    (ok.then(|| checker.finish(file)), diags)
}
