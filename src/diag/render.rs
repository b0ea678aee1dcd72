//! Renders diagnostics for people: the only module that knows ariadne.

use super::{Diagnostic, FileId, Severity, Sources};
use ariadne::{Color, Config, IndexType, Label, Report, ReportKind, Source};
use std::io::Write;

/// Writes one diagnostic. `color` is off when the output is not a terminal.
pub fn render(diag: &Diagnostic, sources: &Sources, color: bool, out: &mut dyn Write) {
    let kind = match diag.severity {
        Severity::Error => ReportKind::Error,
        Severity::Warning => ReportKind::Warning,
    };
    let Some(first) = diag.labels.first() else {
        // No place in a recipe to point at (a file on disk, the command line).
        let word = if diag.is_error() { "error" } else { "warning" };
        let _ = writeln!(out, "{word}[{}]: {}", diag.code, diag.message);
        for note in &diag.notes {
            let _ = writeln!(out, "  = note: {note}");
        }
        for help in &diag.help {
            let _ = writeln!(out, "  = help: {help}");
        }
        return;
    };
    let config = Config::default().with_index_type(IndexType::Byte).with_color(color);
    let span_of = |file: FileId, span: crate::codemap::Span| (file.0, visible(sources.text(file), span));
    let mut report = Report::build(kind, span_of(first.file, first.span))
        .with_config(config)
        .with_code(diag.code)
        .with_message(&diag.message);
    for (i, label) in diag.labels.iter().enumerate() {
        let colour = if i == 0 { Color::Red } else { Color::Blue };
        let mut l = Label::new(span_of(label.file, label.span)).with_order(i as i32);
        if !label.message.is_empty() {
            l = l.with_message(&label.message);
        }
        if color {
            l = l.with_color(colour);
        }
        report = report.with_label(l);
    }
    for note in &diag.notes {
        report = report.with_note(note);
    }
    for help in &diag.help {
        report = report.with_help(help);
    }
    let cache = FileCache { sources, cached: Vec::new() };
    let _ = report.finish().write(cache, out);
}

/// Renders many diagnostics to a string without colour (tests, the LSP, logs).
pub fn render_plain(diags: &[Diagnostic], sources: &Sources) -> String {
    let mut out = Vec::new();
    for d in diags {
        render(d, sources, false, &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// ariadne's view of [`Sources`].
struct FileCache<'a> {
    sources: &'a Sources,
    cached: Vec<(u32, Source<String>)>,
}

impl ariadne::Cache<u32> for FileCache<'_> {
    type Storage = String;

    fn fetch(&mut self, id: &u32) -> Result<&Source<String>, impl std::fmt::Debug> {
        if let Some(pos) = self.cached.iter().position(|(i, _)| i == id) {
            return Ok::<_, String>(&self.cached[pos].1);
        }
        let text = self.sources.text(FileId(*id)).to_string();
        self.cached.push((*id, Source::from(text)));
        Ok(&self.cached.last().unwrap().1)
    }

    fn display<'b>(&self, id: &'b u32) -> Option<impl std::fmt::Display + 'b> {
        Some(self.sources.name(FileId(*id)).to_string())
    }
}

/// A byte range inside `text`, on character boundaries, never empty unless
/// the text is: zero-width spans (end of input) are widened to one character.
fn visible(text: &str, span: crate::codemap::Span) -> std::ops::Range<usize> {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let mut start = floor(span.start);
    let mut end = floor(span.end).max(start);
    if end == start {
        if start == text.len() {
            // Past the end: point at the last character instead.
            start = text[..start].char_indices().last().map_or(0, |(i, _)| i);
            end = text.len();
        } else {
            end = start + text[start..].chars().next().map_or(0, char::len_utf8);
        }
    }
    start..end
}
