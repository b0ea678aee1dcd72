//! One open document and what the checker found in it: its diagnostics, and
//! the analysis that hover, completion and go-to-definition read.
//!
//! A document that does not parse still gets hover, completion and
//! definitions: it is analysed with the lines that stop it parsing blanked
//! out (each byte replaced by a space, so that offsets into the analysed
//! text are offsets into the editor's), while its diagnostics are the syntax
//! error alone, as `fuse check` reports it.

use super::convert::{self, path_of, range, uri_of};
use super::docs_of;
use crate::check::{self, Analysis};
use crate::complete::{self, Completion};
use crate::diag::{Diagnostic, FileId, Sources};
use crate::syntax::{self, FnParam, Ident, Program, Span, StmtKind};
use lsp_types::{Location, Range, Uri};
use std::path::{Path, PathBuf};

/// An open document, analysed when it was opened or last changed.
pub struct Document {
    uri: Uri,
    path: PathBuf,
    text: String,
    /// The analysis of `text`, or of `text` with its unparseable lines blanked.
    analysis: Analysis,
    sources: Sources,
    /// The main file's AST, of the same text as `analysis`.
    program: Program,
    /// The lines blanked out to make the document parse.
    blanked: Vec<Span>,
    bindings: Vec<Binding>,
    diagnostics: Vec<lsp_types::Diagnostic>,
}

/// A name bound at the top level of the document or of a file it imports,
/// and what hovering it says.
struct Binding {
    name: String,
    file: FileId,
    span: Span,
    /// `**f**(a, b=0.5) — doc` for a `fn`, `` `name`: Type `` for the others.
    hover: String,
    is_fn: bool,
}

impl Document {
    /// Checks `text`, the content of the document at `uri`.
    pub fn open(uri: Uri, text: String) -> Document {
        let path = path_of(&uri);
        let (analysed, program, blanked, syntax_error) = parseable(&text);
        let mut sources = Sources::default();
        let want = check::Want { any_result: false, types: true };
        let analysis = check::analyze(&path, &analysed, &[], &mut sources, want);
        let diags: Vec<&Diagnostic> = match &syntax_error {
            Some(d) => vec![d],
            None => analysis.diags.iter().collect(),
        };
        let diagnostics = diags.into_iter().map(|d| convert::diagnostic(d, &uri, &text, &sources)).collect();
        let bindings = bindings(&program, &analysis, &sources);
        Document { uri, path, text, analysis, sources, program, blanked, bindings, diagnostics }
    }

    /// The text as the editor holds it (positions are converted against it).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What to publish for the document.
    pub fn diagnostics(&self) -> &[lsp_types::Diagnostic] {
        &self.diagnostics
    }

    /// Markdown for the cursor at byte `at`: the docs of a function named
    /// there, and the type of the innermost expression under it, or of the
    /// binding when the cursor is on a name being defined.
    pub fn hover(&self, at: usize) -> Option<String> {
        let word = word_at(&self.text, at);
        let mut parts = Vec::new();
        let user_fn = self.bindings.iter().find(|b| b.is_fn && b.name == word);
        if let Some(doc) = docs_of(&word).or_else(|| user_fn.map(|b| b.hover.clone())) {
            parts.push(doc);
        }
        let ty = self
            .analysis
            .types
            .iter()
            .filter(|(f, s, _)| *f == FileId(0) && s.start <= at && at <= s.end)
            .min_by_key(|(_, s, _)| s.end - s.start);
        match ty {
            Some((_, s, t)) => {
                let src = &self.text[s.start..s.end];
                let src = if src.len() > 60 { &src[..src.floor_char_boundary(60)] } else { src };
                parts.push(format!("`{src}`: {t}"));
            }
            None => {
                if let Some(b) = self.binding_at(at, &word).filter(|b| !b.is_fn) {
                    parts.push(b.hover.clone());
                }
            }
        }
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// The binding named at `at` with no expression type there: where it is
    /// defined, or a use of it on a line that had to be blanked to parse.
    fn binding_at(&self, at: usize, word: &str) -> Option<&Binding> {
        let defining = |b: &&Binding| b.file == FileId(0) && b.span.start <= at && at <= b.span.end;
        let broken = self.blanked.iter().any(|s| s.start <= at && at <= s.end);
        self.bindings.iter().find(defining).or_else(|| self.bindings.iter().find(|b| broken && b.name == word))
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

/// `text` made to parse by blanking, one at a time, the line each syntax
/// error is on (or the last non-blank line before it, for an error at the
/// end of the input), with the AST, the blanked lines and the first error.
fn parseable(text: &str) -> (String, Program, Vec<Span>, Option<Diagnostic>) {
    let mut text = text.to_string();
    let mut blanked = Vec::new();
    let mut first_error = None;
    loop {
        match syntax::parse(&text, FileId(0)) {
            Ok(program) => return (text, program, blanked, first_error),
            Err(d) => {
                let at = d.labels.first().map_or(text.len(), |l| l.span.start);
                first_error.get_or_insert(d);
                // Each round blanks a line that was not blank, so this ends.
                match blank_line(&mut text, at) {
                    Some(line) => blanked.push(line),
                    None => return (text, Program { stmts: Vec::new() }, blanked, first_error),
                }
            }
        }
    }
}

/// Replaces the line holding byte `at` (or the nearest non-blank one before
/// it) by as many spaces as it has bytes; returns its span.
fn blank_line(text: &mut String, at: usize) -> Option<Span> {
    let mut end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    loop {
        let start = text[..end].rfind('\n').map_or(0, |i| i + 1);
        if !text[start..end].trim().is_empty() {
            text.replace_range(start..end, &" ".repeat(end - start));
            return Some(Span::new(start, end));
        }
        if start == 0 {
            return None;
        }
        end = start - 1;
    }
}

/// The top-level bindings of every file that defines a name the analysis
/// saw (the document and its imports), with their hover text.
fn bindings(main: &Program, analysis: &Analysis, sources: &Sources) -> Vec<Binding> {
    let mut files: Vec<FileId> = analysis.defs.iter().map(|(_, f, _)| *f).collect();
    files.sort_by_key(|f| f.0);
    files.dedup();
    let mut out = Vec::new();
    for file in files {
        let text = sources.text(file);
        let parsed;
        let program = if file == FileId(0) {
            main
        } else {
            let Ok(p) = syntax::parse(text, file) else { continue };
            parsed = p;
            &parsed
        };
        for st in &program.stmts {
            let (name, hover, is_fn) = match &st.kind {
                StmtKind::Let { name, value } | StmtKind::Param { name, value } => {
                    let ty = analysis.types.iter().find(|(f, s, _)| *f == file && *s == value.span);
                    let Some((_, _, ty)) = ty else { continue };
                    (name, format!("`{}`: {ty}", name.name), false)
                }
                StmtKind::Fn { name, params, .. } => (name, signature(text, name, params, st.span.start), true),
                _ => continue,
            };
            out.push(Binding { name: name.name.clone(), file, span: name.span, hover, is_fn });
        }
    }
    out
}

/// A user `fn`'s hover: its parameters as written and the comment above it.
fn signature(text: &str, name: &Ident, params: &[FnParam], at: usize) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|p| {
            let dots = if p.variadic { ".." } else { "" };
            match &p.default {
                Some(d) => format!("{dots}{}={}", p.name.name, &text[d.span.start..d.span.end]),
                None => format!("{dots}{}", p.name.name),
            }
        })
        .collect();
    let doc = super::comment_above(text, at);
    let doc = if doc.is_empty() { String::new() } else { format!(" — {doc}") };
    format!("**{}**({}){doc}", name.name, params.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparseable_lines_are_blanked_in_place() {
        let text = "a = 1\nb = ties(a,, 2)\nc = é\nd = (a\n\n";
        let (t, p, blanked, err) = parseable(text);
        assert_eq!(t.len(), text.len());
        assert_eq!(t, format!("a = 1\n{}\n{}\n{}\n\n", " ".repeat(15), " ".repeat(6), " ".repeat(6)));
        assert_eq!(p.stmts.len(), 1);
        assert_eq!(blanked.len(), 3);
        // The first error is the one reported.
        assert_eq!(err.unwrap().labels[0].span.start, 17);
    }
}
