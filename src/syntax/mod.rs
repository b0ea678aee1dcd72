//! Syntax: recipe text in, [`Program`] (our AST with byte spans) out.
//! `grammar/fuse.pest` is the grammar; only `parse.rs` sees pest.

mod ast;
mod parse;

pub use ast::*;
pub use parse::{parse, parse_expr};
