//! Syntax: recipe text in, [`Program`] (our AST with byte spans) out.
//! `grammar/fuse.pest` is the grammar; only `parse.rs` sees pest, and only
//! after `nesting.rs` has bounded how deeply the text nests.

mod ast;
mod nesting;
mod parse;

pub use ast::*;
pub use nesting::MAX_DEPTH;
pub use parse::{parse, parse_expr};
