//! What a recipe reads, and the rule that no output may overlap it: an
//! output that is, contains or sits inside a model, an adapter, an import or
//! the recipe itself is refused (E0406), with or without `--force`.

use super::eval::Checker;
use crate::codemap::{FileId, Span};
use crate::diag::{Code, Diagnostic};
use crate::io::target::{self, Overlap};
use crate::ir::{Input, Recipe};
use std::path::Path;

/// E0406 if an output at `dir` would be, contain or sit inside a path the
/// recipe reads. `at` is where the recipe names the output, if it does.
pub fn output_conflict(recipe: &Recipe, dir: &Path, at: Option<(FileId, Span)>, how: &str) -> Option<Diagnostic> {
    conflict(&recipe.inputs, dir, at, how)
}

/// The error for an output at `output` (named at `at`, `how` saying how,
/// e.g. "written here") that overlaps one of `inputs`; `None` if it is clear.
pub fn conflict(inputs: &[Input], output: &Path, at: Option<(FileId, Span)>, how: &str) -> Option<Diagnostic> {
    let out = target::resolve(output);
    let (input, path, overlap) =
        inputs.iter().find_map(|i| i.paths.iter().find_map(|p| Overlap::of(&out, p).map(|o| (i, p, o))))?;
    let mut d = Diagnostic::error(
        Code::E0406,
        format!("the output `{}` {} {}, which this recipe reads", output.display(), overlap.verb(), input.what),
    );
    if let Some((file, span)) = at {
        d = d.with_label(file, span, how.to_string());
    }
    if let Some(span) = input.span {
        d = d.with_label(input.file, span, "read here");
    }
    d = d.with_note(format!("the output resolves to `{}`, the input to `{}`", out.display(), path.display()));
    Some(
        d.with_note("fuse never writes over what a recipe reads, with or without --force")
            .with_help("write the output somewhere outside the recipe's models, adapters and imports"),
    )
}

impl Checker<'_> {
    /// E0406 for every `save` that overlaps an input (run once the whole
    /// recipe is read, so that inputs named after the save count too).
    pub(super) fn check_outputs(&mut self) {
        let found: Vec<Diagnostic> = self
            .saves
            .iter()
            .filter_map(|s| conflict(&self.inputs, &s.dir, Some((s.file, s.span)), "written here"))
            .collect();
        for d in found {
            self.report(d);
        }
    }
}
