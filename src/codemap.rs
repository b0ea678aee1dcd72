//! Source positions, shared by every stage: byte [`Span`]s, the [`FileId`]
//! of the text they point into, and the [`Sources`] that hold those texts.
//! A leaf module: the parser produces spans, diagnostics point with them,
//! and neither needs the other for it (starlark-rust's `codemap.rs`).

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// Which source file a span points into; indexes [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// Every source text a run has read (the recipe, its imports), so that
/// diagnostics can be rendered against them.
#[derive(Default, Debug)]
pub struct Sources {
    files: Vec<(String, String)>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push((name.into(), text.into()));
        FileId(self.files.len() as u32 - 1)
    }
    pub fn name(&self, id: FileId) -> &str {
        &self.files[id.0 as usize].0
    }
    pub fn text(&self, id: FileId) -> &str {
        &self.files[id.0 as usize].1
    }
    /// 1-based line and column of a byte offset, for plain-text output.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        let text = self.text(id);
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}
