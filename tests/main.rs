//! The one integration-test binary: real `fuse` processes on real
//! safetensors checkpoints, checked against mergekit's goldens and closed forms.

mod checkpoints;
mod cli;
mod common;
mod diagnostics;
mod eval;
mod gguf;
mod goldens;
mod lsp;
mod methods;
mod one_read;
mod outputs;
mod packaging;
mod real;
mod recent_methods;
mod reliability;
mod repl;
mod robustness;
mod structure;
