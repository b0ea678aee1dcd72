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
    /// The recipe's final expression when it is an [`Ensemble`]: evaluated
    /// by `fuse eval`, never written.
    pub ensemble: Option<EnsembleResult>,
}

/// `ensemble(m1, m2, ..., weight=[...], mode="mean")`: models run side by
/// side and their next-token distributions combined (see `crate::eval`).
/// It has no weights of its own, so it can be evaluated but not saved.
#[derive(Debug, Clone)]
pub struct Ensemble {
    pub members: Vec<TVal>,
    /// Each member's source text, for reports.
    pub names: Vec<String>,
    /// Normalized to sum to 1.
    pub weights: Vec<f64>,
    pub mode: EnsembleMode,
}

/// How an [`Ensemble`] combines its members' next-token distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsembleMode {
    /// `sum_m w_m p_m`: FusionBench's simple and weighted ensembles.
    Mean,
    /// `max_m w_m p_m`, renormalized over the vocabulary: FusionBench's max-model predictor.
    Max,
}

/// An [`Ensemble`] as the recipe's result, and where the recipe says it.
#[derive(Debug, Clone)]
pub struct EnsembleResult {
    pub value: Arc<Ensemble>,
    pub file: FileId,
    pub span: Span,
}

impl Recipe {
    /// The outputs a run writes: the recipe's saves, and its result where
    /// `-o` names a directory for it (E0111 when that does not add up).
    pub fn outputs(&self, result_dir: Option<&Path>) -> Result<Vec<Output>, Diagnostic> {
        let mut out: Vec<Output> = self.saves.clone();
        if let (Some(_), Some(_)) = (&self.ensemble, result_dir) {
            return Err(Diagnostic::error(Code::E0208, "the recipe's result is an Ensemble, which cannot be written")
                .with_note("an ensemble runs its members side by side and combines their predictions; it has no weights of its own")
                .with_help("measure it with `fuse eval RECIPE --text FILE`, or write a merged model instead (e.g. `linear(a, b)`)"));
        }
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
            (None, None) if out.is_empty() && self.ensemble.is_some() => {
                return Err(Diagnostic::error(
                    Code::E0208,
                    "the recipe's result is an Ensemble, which `fuse run` cannot write",
                )
                .with_help("measure it with `fuse eval RECIPE --text FILE`"))
            }
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
