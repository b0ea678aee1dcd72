//! fuse: a typed language and interpreter for neural-network merge recipes.
//!
//! The pipeline, one module per stage (see ARCHITECTURE.md):
//! `syntax` (text → AST) → `check` (AST + model headers → [`check::Recipe`])
//! → `graph` (recipe → per-tensor graph and output layout) → `exec` (graph →
//! tensors, streamed into the output) with `io` reading and writing
//! checkpoints and `diag` reporting problems.

pub mod check;
pub mod codemap;
pub mod complete;
pub mod diag;
pub mod eval;
pub mod exec;
pub mod graph;
pub mod io;
pub mod ir;
pub mod lsp;
pub mod progress;
pub mod repl;
pub mod rng;
pub mod syntax;
pub mod testmodel;
