//! `drop(m, "glob")` and `keep(m, "glob")`: a value with fewer tensors, so
//! that models which do not all have the same tensors (a pooler one lacks, a
//! head another adds) can be merged on what they share. The expression is
//! unchanged (it is the same for every tensor name); only the architecture,
//! which lists the tensors computed and written, loses names.

use super::call::Bound;
use super::eval::{Checker, Ctx};
use super::natives::Native;
use super::value::*;
use crate::diag::{Code, Diagnostic};
use crate::ir::glob_match;
use std::sync::Arc;

impl Checker<'_> {
    /// `keep` keeps the tensors matching one of the patterns, `drop` the others.
    pub(super) fn filter_tensors(&mut self, native: &'static Native, b: &mut Bound, ctx: Ctx) -> Value {
        let keep = native.name == "keep";
        let (m, mspan) = b.remove("model").unwrap();
        let (pat, pspan) = b.remove("pattern").unwrap();
        let t = match m {
            Value::Tensor(t) => t,
            Value::Poison => return Value::Poison,
            other => {
                return self.err(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`{}` takes a model, found {}", native.name, other.type_name()),
                    )
                    .with_label(ctx.file, mspan, "not a model"),
                )
            }
        };
        let patterns: Option<Vec<String>> = match pat {
            Value::Str(s) => Some(vec![s]),
            Value::List(items) => {
                items.into_iter().map(|v| if let Value::Str(s) = v { Some(s) } else { None }).collect()
            }
            Value::Poison => return Value::Poison,
            _ => None,
        };
        let Some(patterns) = patterns.filter(|p| !p.is_empty()) else {
            return self.err(
                Diagnostic::error(Code::E0106, format!("`{}` takes a tensor-name pattern", native.name))
                    .with_label(ctx.file, pspan, "expected a string or a list of strings")
                    .with_help(format!("for example `{}`", native.example)),
            );
        };
        if let Some(p) = patterns.iter().find(|p| !t.arch.tensors.iter().any(|s| glob_match(p, &s.name))) {
            return self.err(
                Diagnostic::error(
                    Code::E0106,
                    format!("`{p}` matches no tensor of `{}`", self.snippet(ctx.file, mspan)),
                )
                .with_label(ctx.file, pspan, "matches nothing")
                .with_note(format!("its tensors are named like `{}`", t.arch.tensors[0].name))
                .with_help("`*` matches any run of characters, `?` one character"),
            );
        }
        let mut arch = (*t.arch).clone();
        arch.tensors.retain(|s| patterns.iter().any(|p| glob_match(p, &s.name)) == keep);
        if arch.tensors.is_empty() {
            return self.err(Diagnostic::error(Code::E0106, format!("`{}` leaves no tensor", native.name)).with_label(
                ctx.file,
                pspan,
                if keep { "keeps nothing" } else { "matches every tensor" },
            ));
        }
        Value::Tensor(crate::ir::TVal { expr: t.expr, arch: Arc::new(arch), weight: t.weight })
    }
}
