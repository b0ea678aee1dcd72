//! How deeply a recipe nests, measured on the text before pest sees it.
//!
//! pest, the Pratt fold and the checker recurse once per level of nesting,
//! so a text nested many thousands deep would overflow the stack. This pass
//! is a loop over the bytes (skipping strings and comments) that refuses
//! such a text with a diagnostic first. Sums, lists, argument lists and
//! statements may be any length: they are flat, not nested.

use super::ast::Span;
use crate::diag::{Code, Diagnostic, FileId};

/// How many levels an expression may nest. Parentheses, brackets and braces
/// inside each other, unary minus signs in a row, and calls, indexes and
/// `.member`s chained on one value each add a level. Recipes nest a few
/// levels; at this limit parsing and checking stay well inside a 2 MiB thread
/// stack in the dev profile (see `docs/notes/nesting.md`).
pub const MAX_DEPTH: usize = 256;

/// Reports E0002 at the first place `text` nests deeper than [`MAX_DEPTH`].
pub fn check(text: &str, file: FileId) -> Result<(), Diagnostic> {
    let b = text.as_bytes();
    // Per open bracket: the level outside it and the operators on the
    // operand it belongs to, restored when it closes (`f(x)(y)` chains on).
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut base = 0;
    // Prefix `-` and postfix calls, indexes and members on the current operand.
    let mut ops = 0;
    // Whether the last token ended an operand (so `-` is binary, `(` a call).
    let mut after_operand = false;
    let (mut deepest, mut first_over) = (0, None);
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let level = match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'#' => {
                i = text[i..].find('\n').map_or(b.len(), |n| i + n);
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                after_operand = true;
                continue;
            }
            c @ (b'(' | b'[' | b'{') => {
                i += 1;
                if after_operand && c != b'{' {
                    ops += 1;
                }
                open.push((base, ops));
                base += ops + 1;
                ops = 0;
                after_operand = false;
                base
            }
            b')' | b']' | b'}' => {
                i += 1;
                (base, ops) = open.pop().unwrap_or((0, 0));
                after_operand = true;
                continue;
            }
            b'-' if !after_operand => {
                i += 1;
                ops += 1;
                base + ops
            }
            b'.' if b.get(i + 1) == Some(&b'.') => {
                i += 2;
                (ops, after_operand) = (0, false);
                continue;
            }
            b'.' if after_operand => {
                i += 1;
                ops += 1;
                after_operand = false;
                base + ops
            }
            c if c.is_ascii_digit() || c == b'.' => {
                i = number_end(b, i);
                after_operand = true;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                    i += 1;
                }
                // `match x {`: the scrutinee is an operand, `match` is not.
                after_operand = &b[start..i] != b"match";
                continue;
            }
            _ => {
                // Infix operators and separators start a new operand.
                i += 1;
                (ops, after_operand) = (0, false);
                continue;
            }
        };
        deepest = deepest.max(level);
        if level > MAX_DEPTH && first_over.is_none() {
            first_over = Some((Span::new(start, i), b[start] == b'-'));
        }
    }
    let Some((at, minus)) = first_over else { return Ok(()) };
    let help = if minus {
        "every `-` in a row is a level, and `- -x` is `x`: drop the minus signs in pairs"
    } else {
        "bind inner parts to names first (`inner = ...`) and use the names"
    };
    Err(Diagnostic::error(Code::E0002, format!("expression nested {deepest} levels deep; the limit is {MAX_DEPTH}"))
        .with_label(file, at, format!("level {} starts here", MAX_DEPTH + 1))
        .with_note("parentheses, brackets, unary minus signs in a row, and calls, indexes and members chained on one value each add a level")
        .with_help(help))
}

/// The end of the number starting at `i` (`1`, `2.5`, `.5`, `1e-3`; not the `..` of `1..3`).
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    i = digits(i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let j = if matches!(b.get(i + 1), Some(b'+' | b'-')) { i + 2 } else { i + 1 };
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            i = digits(j);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<(String, Span)> {
        check(text, FileId(0)).err().map(|d| (d.message, d.labels[0].span))
    }

    #[test]
    fn counts_each_kind_of_nesting() {
        // (opening, closing, levels each adds): a call or an index is an
        // operator on its operand and a bracket.
        let kinds = [("(", ")", 1), ("[", "]", 1), ("-", "", 1), ("f(", ")", 2), ("-(", ")", 2), ("x[", "]", 2)];
        for (open, close, levels) in kinds {
            let nest = |k: usize| format!("x = {}1{}", open.repeat(k), close.repeat(k));
            assert_eq!(depth_error(&nest(MAX_DEPTH / levels)), None, "{open} at the limit");
            let (msg, at) = depth_error(&nest(MAX_DEPTH / levels + 1)).unwrap_or_else(|| panic!("{open}"));
            assert!(msg.ends_with("the limit is 256"), "{msg}");
            assert!(at.start >= 4 + MAX_DEPTH / levels, "{open}: {at:?}");
        }
        // Chained postfix operators nest too: `m.a.b.c...`, `f()()()...`.
        assert!(depth_error(&format!("x = m{}", ".a".repeat(MAX_DEPTH))).is_none());
        assert!(depth_error(&format!("x = m{}", ".a".repeat(MAX_DEPTH + 1))).is_some());
        assert!(depth_error(&format!("x = f{}", "()".repeat(MAX_DEPTH + 1))).is_some());
    }

    #[test]
    fn flat_sequences_do_not_nest() {
        let many = 100_000;
        assert_eq!(depth_error(&format!("x = {}1", "1 - ".repeat(many))), None);
        assert_eq!(depth_error(&format!("x = [{}]", "(1), ".repeat(many))), None);
        assert_eq!(depth_error(&format!("x = f({})", "-1, ".repeat(many))), None);
        assert_eq!(depth_error(&"x = -(1)\n".repeat(many)), None);
        assert_eq!(depth_error(&format!("x = xs{}", "[1..2] + ys".repeat(many))), None);
    }

    #[test]
    fn strings_and_comments_do_not_count() {
        let deep = "(".repeat(MAX_DEPTH + 1);
        assert_eq!(depth_error(&format!("x = \"{deep}\" # {deep}\ny = \"\\\"{deep}\"\n")), None);
        // An unterminated string ends at the line.
        assert!(depth_error(&format!("x = \"abc\ny = {deep}")).is_some());
    }

    #[test]
    fn reports_the_deepest_level_and_where_the_limit_was_passed() {
        let n = 100_000;
        let text = format!("x = {}1{}", "(".repeat(n), ")".repeat(n));
        let (msg, at) = depth_error(&text).unwrap();
        assert_eq!(msg, format!("expression nested {n} levels deep; the limit is {MAX_DEPTH}"));
        assert_eq!(at, Span::new(4 + MAX_DEPTH, 5 + MAX_DEPTH));
        // A binary minus before the unary ones is not a level.
        let text = format!("x = 1 {}1", "-".repeat(MAX_DEPTH + 1));
        assert_eq!(depth_error(&text), None);
        let text = format!("x = 1 {}1", "- ".repeat(MAX_DEPTH + 2));
        let (msg, _) = depth_error(&text).unwrap();
        assert!(msg.contains(&format!("{} levels", MAX_DEPTH + 1)), "{msg}");
    }
}
