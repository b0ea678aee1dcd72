//! One open document and what the checker found in it: its diagnostics, and
//! the analysis that hover, completion and go-to-definition read.

use super::convert::{self, path_of, range, uri_of};
use super::docs_of;
use crate::check::{self, Analysis};
use crate::complete::{self, Completion};
use crate::diag::{FileId, Sources};
use crate::syntax::{self, Program, StmtKind};
use lsp_types::{Location, Range, Uri};
use std::path::{Path, PathBuf};

/// An open document, analysed when it was opened or last changed.
pub struct Document {
    uri: Uri,
    path: PathBuf,
    text: String,
    analysis: Analysis,
    sources: Sources,
    /// The main file's AST (empty when it does not parse).
    program: Program,
    diagnostics: Vec<lsp_types::Diagnostic>,
}

impl Document {
    /// Checks `text`, the content of the document at `uri`.
    pub fn open(uri: Uri, text: String) -> Document {
        let path = path_of(&uri);
        let program = syntax::parse(&text, FileId(0)).unwrap_or(Program { stmts: Vec::new() });
        let mut sources = Sources::default();
        let want = check::Want { any_result: false, types: true };
        let analysis = check::analyze(&path, &text, &[], &mut sources, want);
        let diagnostics = analysis.diags.iter().map(|d| convert::diagnostic(d, &uri, &text, &sources)).collect();
        Document { uri, path, text, analysis, sources, program, diagnostics }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// What to publish for the document.
    pub fn diagnostics(&self) -> Vec<lsp_types::Diagnostic> {
        self.diagnostics.clone()
    }

    /// Markdown for the cursor at byte `at`: the docs of a function named
    /// there, and the type of the innermost expression under it.
    pub fn hover(&self, at: usize) -> Option<String> {
        let word = word_at(&self.text, at);
        let mut parts = Vec::new();
        if let Some(doc) = docs_of(&word) {
            parts.push(doc);
        }
        let ty = self
            .analysis
            .types
            .iter()
            .filter(|(f, s, _)| *f == FileId(0) && s.start <= at && at <= s.end)
            .min_by_key(|(_, s, _)| s.end - s.start);
        if let Some((_, s, t)) = ty {
            let src = &self.text[s.start..s.end];
            let src = if src.len() > 60 { &src[..src.floor_char_boundary(60)] } else { src };
            parts.push(format!("`{src}`: {t}"));
        }
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// Completions for the word ending at byte `at`.
    pub fn completion(&self, at: usize) -> Vec<Completion> {
        let names: Vec<String> = self.analysis.defs.iter().map(|(n, _, _)| n.clone()).collect();
        complete::complete(&names, &self.text, at).1
    }

    /// Where the name at `at` is defined; on an `import`'s path, the file.
    pub fn definition(&self, at: usize) -> Option<Location> {
        for st in &self.program.stmts {
            if let StmtKind::Import { path, path_span } = &st.kind {
                if path_span.start <= at && at <= path_span.end {
                    let file = self.path.parent().unwrap_or(Path::new("")).join(path);
                    if !file.is_file() {
                        return None;
                    }
                    return Some(Location::new(uri_of(&file)?, Range::default()));
                }
            }
        }
        let word = word_at(&self.text, at);
        let (_, file, span) = self.analysis.defs.iter().find(|(n, _, _)| *n == word)?;
        if *file == FileId(0) {
            Some(Location::new(self.uri.clone(), range(&self.text, *span)))
        } else {
            let uri = uri_of(Path::new(self.sources.name(*file)))?;
            Some(Location::new(uri, range(self.sources.text(*file), *span)))
        }
    }
}

fn word_at(text: &str, at: usize) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let start = text[..at].rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    let end = text[at..].find(|c: char| !is_word(c)).map_or(text.len(), |i| at + i);
    text[start..end].to_string()
}
