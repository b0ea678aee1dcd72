//! Between our values and the protocol's: byte offsets and LSP positions
//! (lines and UTF-16 columns), file paths and `file:` URIs, and our
//! [`Diagnostic`]s as LSP diagnostics.

use crate::diag::{Diagnostic, FileId, Severity, Sources};
use crate::syntax::Span;
use lsp_types::{Code, DiagnosticRelatedInformation, DiagnosticSeverity, Location, Position, Range, Uri};
use std::path::{Path, PathBuf};

/// The file a document URI names. A URI that is not a `file:` one (an
/// unsaved buffer) gets its path part, so that the document still checks;
/// relative model paths in it then resolve against nothing useful.
pub fn path_of(uri: &Uri) -> PathBuf {
    uri.to_file_path().unwrap_or_else(|()| PathBuf::from(uri.path()))
}

/// The `file:` URI of a source the checker read, or `None` for one that is
/// not a file on disk (the embedded standard library).
pub fn uri_of(path: &Path) -> Option<Uri> {
    Uri::from_file_path(path).ok()
}

/// LSP position (line, UTF-16 column) of a byte offset.
pub fn position(text: &str, offset: usize) -> Position {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count();
    let col: usize = before.rsplit('\n').next().unwrap_or("").chars().map(char::len_utf16).sum();
    Position::new(line as u32, col as u32)
}

/// The LSP range of a byte span.
pub fn range(text: &str, span: Span) -> Range {
    Range::new(position(text, span.start), position(text, span.end.max(span.start)))
}

/// Byte offset of an LSP position.
pub fn offset(text: &str, pos: Position) -> usize {
    let (line, character) = (pos.line as usize, pos.character as usize);
    let mut off = 0;
    for (i, l) in text.split('\n').enumerate() {
        if i == line {
            let mut units = 0;
            for (b, c) in l.char_indices() {
                if units >= character {
                    return off + b;
                }
                units += c.len_utf16();
            }
            return off + l.len();
        }
        off += l.len() + 1;
    }
    text.len()
}

/// One of our diagnostics as LSP's, for the document `uri` with `text` (file
/// 0 of `sources`). Labels after the first become related information, each
/// with the URI of the file it points into.
pub fn diagnostic(d: &Diagnostic, uri: &Uri, text: &str, sources: &Sources) -> lsp_types::Diagnostic {
    let main = FileId(0);
    let span = d.labels.iter().find(|l| l.file == main).map_or(Span::new(0, 0), |l| l.span);
    let mut message = d.message.clone();
    if let Some(l) = d.labels.first().filter(|l| !l.message.is_empty()) {
        message.push_str(&format!(": {}", l.message));
    }
    for n in &d.notes {
        message.push_str(&format!("\nnote: {n}"));
    }
    for h in &d.help {
        message.push_str(&format!("\nhelp: {h}"));
    }
    let related: Vec<DiagnosticRelatedInformation> = d
        .labels
        .iter()
        .skip(1)
        .filter(|l| !l.message.is_empty())
        .filter_map(|l| {
            let (uri, text) = if l.file == main {
                (uri.clone(), text)
            } else {
                (uri_of(Path::new(sources.name(l.file)))?, sources.text(l.file))
            };
            Some(DiagnosticRelatedInformation::new(Location::new(uri, range(text, l.span)), l.message.clone()))
        })
        .collect();
    lsp_types::Diagnostic {
        range: range(text, span),
        severity: Some(if d.severity == Severity::Error {
            DiagnosticSeverity::Error
        } else {
            DiagnosticSeverity::Warning
        }),
        code: Some(Code::String(d.code.as_str().into())),
        code_description: None,
        source: Some("fuse".into()),
        message: message.into(),
        tags: None,
        related_information: (!related.is_empty()).then_some(related),
        data: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let t = "ab\ncdé\nf";
        assert_eq!(position(t, 4), Position::new(1, 1));
        assert_eq!(offset(t, Position::new(1, 1)), 4);
        assert_eq!(offset(t, Position::new(2, 0)), 8);
        assert_eq!(position(t, 7), Position::new(1, 3));
    }

    #[test]
    fn paths_and_uris_round_trip_with_escapes() {
        let path = "/tmp/mes modèles #1/100%/merge.fuse";
        let uri = uri_of(Path::new(path)).unwrap();
        assert_eq!(uri.as_str(), "file:///tmp/mes%20mod%C3%A8les%20%231/100%25/merge.fuse");
        assert_eq!(path_of(&uri), PathBuf::from(path));
        // What an editor sends may escape differently; the path is the same.
        let sent: Uri = "file:///tmp/mes%20mod%c3%a8les%20%231/100%25/merge.fuse".parse().unwrap();
        assert_eq!(path_of(&sent), PathBuf::from(path));
        assert_eq!(uri_of(Path::new("stdlib/merge.fuse")), None);
    }
}
