//! The intermediate representation between checking and lowering: what the
//! checker writes and `graph` reads, so that neither imports the other
//! (PRQL keeps its IRs the same way, in `prqlc/src/ir/`).
//!
//! - [`Recipe`]: the models a recipe reads, the arena of symbolic tensor
//!   expressions over them ([`TExpr`]), and its outputs;
//! - [`Sched`]: numbers that may vary per tensor;
//! - [`Kernel`]: the vocabulary of native per-tensor kernels.

mod kernel;
mod sched;
mod texpr;

pub use kernel::{Kernel, RouterMode, Sparsify};
pub use sched::{glob_match, Sched, TensorCtx};
pub use texpr::{human_count, Arch, ArchDiff, TExpr, TId, TVal, TensorSig, HEAD, TIED_EMBED};

use crate::codemap::{FileId, Span};
use crate::diag::{Code, Diagnostic};
use crate::io::{target, Checkpoint, DType};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A checked recipe: the models it reads, the symbolic expressions over
/// them, and what to write where.
#[derive(Debug)]
pub struct Recipe {
    pub models: Vec<Arc<Checkpoint>>,
    pub exprs: Vec<TExpr>,
    pub saves: Vec<Output>,
    pub result: Option<ResultValue>,
    pub main_file: FileId,
    /// Every path the recipe reads: no output may overlap one (E0406).
    pub inputs: Vec<Input>,
    /// The model bound to the name `base`, whose integer buffers the outputs take.
    pub base: Option<usize>,
}

impl Recipe {
    /// The outputs a run writes: the recipe's saves, and its result where
    /// `-o` names a directory for it (E0111 when that does not add up).
    pub fn outputs(&self, result_dir: Option<&Path>) -> Result<Vec<Output>, Diagnostic> {
        let mut out: Vec<Output> = self.saves.clone();
        match (&self.result, result_dir) {
            (Some(res), Some(o)) => out.push(Output {
                value: res.value.clone(),
                dir: o.to_path_buf(),
                dtype: None,
                quant: None,
                shard: crate::io::writer::DEFAULT_SHARD,
                lora: None,
                file: res.file,
                span: res.span,
            }),
            (Some(_), None) if out.is_empty() => {
                return Err(Diagnostic::error(Code::E0111, "the recipe's result has nowhere to go")
                    .with_help("pass -o DIR to write it, or end the recipe with `save(expr, \"dir\")`"))
            }
            (None, Some(_)) => {
                return Err(Diagnostic::error(Code::E0111, "-o was given but the recipe has no result")
                    .with_help("end the recipe with the expression to write, e.g. `base + 0.5*(ft - base)`"))
            }
            _ => {}
        }
        if out.is_empty() {
            return Err(Diagnostic::error(Code::E0111, "the recipe writes nothing")
                .with_help("end it with an expression and pass -o DIR, or add `save(expr, \"dir\")`"));
        }
        Ok(out)
    }
}

/// A `save(...)` statement.
#[derive(Debug, Clone)]
pub struct Output {
    pub value: TVal,
    pub dir: PathBuf,
    pub dtype: Option<DType>,
    /// For a `.gguf` output: `dtype="q8_0"` (see `io::gguf_write`).
    pub quant: Option<crate::io::gguf_write::Quant>,
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

/// A path the recipe reads, and where the recipe names it.
#[derive(Debug, Clone)]
pub struct Input {
    /// What it is, for messages: "the model `models/base`".
    pub what: String,
    /// Every path it covers, resolved: a model's directory and each file.
    pub paths: Vec<PathBuf>,
    pub file: FileId,
    /// The argument or import naming it; `None` for the recipe file itself.
    pub span: Option<Span>,
}

impl Input {
    pub fn checkpoint(what: String, ck: &Checkpoint, file: FileId, span: Span) -> Input {
        let paths = std::iter::once(&ck.root).chain(&ck.dir).chain(&ck.files).map(|p| target::resolve(p)).collect();
        Input { what, paths, file, span: Some(span) }
    }

    pub fn file(what: String, path: &Path, file: FileId, span: Option<Span>) -> Input {
        Input { what, paths: vec![target::resolve(path)], file, span }
    }
}
