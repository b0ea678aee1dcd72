//! Whether operands can be merged (E0201), and what the merged value's
//! architecture is: the operands' common tensors plus the integer buffers
//! any of them has (copied, never merged) and a head where one ties it to
//! its embedding. A mismatch is told in terms of what differs, at the
//! operands as the user wrote them, even when found inside the stdlib.

use super::eval::Checker;
use crate::diag::{Code, Diagnostic, FileId};
use crate::ir::{Arch, TVal, TensorSig};
use crate::syntax::Span;
use std::sync::Arc;

/// How many tensor names a message lists before "and N more".
const LISTED: usize = 3;

impl Checker<'_> {
    /// The architecture of a value combining `a` and `b`, or None after
    /// reporting E0201 when they cannot be combined.
    pub fn same_arch(&mut self, a: &TVal, b: &TVal, la: Span, lb: Span, file: FileId) -> Option<Arc<Arch>> {
        let (aa, ba) = (&a.arch, &b.arch);
        if Arc::ptr_eq(aa, ba) {
            return Some(aa.clone());
        }
        let Some(why) = aa.mismatch(ba) else {
            self.saw_buffers(aa, ba, self.site(a, file, la));
            return Some(aa.union(ba).map_or_else(|| aa.clone(), Arc::new));
        };
        let ((fa, la), (fb, lb)) = (self.site(a, file, la), self.site(b, file, lb));
        if aa.differs_only_in_vocab(ba) {
            self.vocab_mismatch(aa, ba, (fa, la), (fb, lb));
            return None;
        }
        let (na, nb) = (self.snippet(fa, la), self.snippet(fb, lb));
        let why = why.replace("on the left", &format!("in `{na}`")).replace("on the right", &format!("in `{nb}`"));
        let diff = aa.diff(ba);
        let (sa, sb) = (summary(aa), summary(ba));
        let help = "every operand of an operator or merge must have the same tensor names and shapes: fine-tunes of one base model";
        let d = if sa != sb {
            // Point first at the operand that differs from the recipe's first model.
            let a_is_odd =
                self.archs.first().is_some_and(|first| first.mismatch(aa).is_some() && first.mismatch(ba).is_none());
            let ((odd, s_odd), (other, s_other)) =
                if a_is_odd { (((fa, la), sa), ((fb, lb), sb)) } else { (((fb, lb), sb), ((fa, la), sa)) };
            Diagnostic::error(Code::E0201, "operands have different architectures")
                .with_label(odd.0, odd.1, format!("this is {s_odd}"))
                .with_label(other.0, other.1, format!("but this is {s_other}"))
                .with_note(why)
                .with_help(help)
        } else if diff.only_left.is_empty() && diff.only_right.is_empty() {
            let (x, y) = diff.shapes[0];
            let more = match diff.shapes.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more tensor{} differ)", plural(n)),
            };
            Diagnostic::error(Code::E0201, format!("`{na}` and `{nb}` differ in the shape of `{}`{more}", x.name))
                .with_label(fa, la, format!("`{}` is {:?} here", x.name, x.shape))
                .with_label(fb, lb, format!("but {:?} here", y.shape))
                .with_help(help)
        } else {
            // One lacks tensors the other has: say which, first at the one that lacks them.
            let (lacker, holder, missing, extra) = if diff.only_right.is_empty() {
                (((fb, lb), &nb, ba), ((fa, la), &na, aa), &diff.only_left, &diff.only_right)
            } else {
                (((fa, la), &na, aa), ((fb, lb), &nb, ba), &diff.only_right, &diff.only_left)
            };
            let n = missing.len();
            let first = missing[0];
            let holder_says = format!(
                "this has {} tensors, including `{}` ({} {:?})",
                holder.2.tensors.len(),
                first.name,
                first.dtype.as_str(),
                first.shape
            );
            let holder_says = if extra.is_empty() { holder_says } else { format!("lacks {}", names(extra)) };
            Diagnostic::error(
                Code::E0201,
                format!("`{}` lacks {n} tensor{} that `{}` has: {}", lacker.1, plural(n), holder.1, names(missing)),
            )
            .with_label(lacker.0 .0, lacker.0 .1, format!("this lacks {}", names(missing)))
            .with_label(holder.0 .0, holder.0 .1, holder_says)
            .with_note(format!("both are {sa}"))
            .with_help(format!(
                "merge only what every operand has: `drop({}, \"{}\")` removes them, on each model that has them (the base too); `keep(m, \"pattern\")` keeps only what matches",
                holder.1,
                glob_for(missing)
            ))
        };
        self.report(d);
        None
    }

    fn vocab_mismatch(&mut self, a: &Arch, b: &Arch, sa: (FileId, Span), sb: (FileId, Span)) {
        // Resize the operand that differs from the recipe's first model.
        let a_is_odd = self.archs.first().is_some_and(|f| f.vocab() != a.vocab() && f.vocab() == b.vocab());
        let ((odd, lo), (other, lother)) = if a_is_odd { ((a, sa), (b, sb)) } else { ((b, sb), (a, sa)) };
        let (vo, vt) = (odd.vocab().unwrap_or(0), other.vocab().unwrap_or(0));
        let (so, st) = (self.snippet(lo.0, lo.1), self.snippet(lother.0, lother.1));
        self.report(
            Diagnostic::error(Code::E0201, format!("vocabulary sizes differ: {vt} in `{st}`, {vo} in `{so}`"))
                .with_label(lo.0, lo.1, format!("{vo} tokens"))
                .with_label(lother.0, lother.1, format!("{vt} tokens"))
                .with_note("every other tensor agrees; only the embedding and the head differ in rows")
                .with_help(format!(
                    "resize one to the other: `resize_vocab({so}, like={st})` pads new rows with the mean embedding or crops extra ones"
                )),
        );
    }

    /// Where the user wrote operand `t`: the span given, or, when that lies
    /// in the standard library, the user's expression that gave `t`.
    fn site(&self, t: &TVal, file: FileId, span: Span) -> (FileId, Span) {
        if self.stdlib_files.contains(&file) {
            if let Some(&at) = self.origins.get(&t.expr) {
                return at;
            }
        }
        (file, span)
    }

    /// Records the integer buffers of merged operands, for the note at the end.
    fn saw_buffers(&mut self, a: &Arch, b: &Arch, at: (FileId, Span)) {
        let before = self.buffers.0.len();
        self.buffers.0.extend(a.buffers().chain(b.buffers()).map(|t| t.name.clone()));
        if self.buffers.0.len() > before && self.buffers.1.is_none() {
            self.buffers.1 = Some(at);
        }
    }

    /// One warning per recipe: which integer tensors are copied rather than merged.
    pub fn note_buffers(&mut self) {
        let (names_seen, at) = std::mem::take(&mut self.buffers);
        let Some((file, span)) = at else { return };
        let all: Vec<&String> = names_seen.iter().collect();
        let n = all.len();
        let listed: Vec<String> = all.iter().take(LISTED).map(|s| format!("`{s}`")).collect();
        let more = if n > LISTED { format!(" and {} more", n - LISTED) } else { String::new() };
        self.report(
            Diagnostic::warning(
                Code::E0207,
                format!("{n} integer tensor{} copied, not merged: {}{more}", plural(n), listed.join(", ")),
            )
            .with_label(file, span, "first merged here")
            .with_note("integer and boolean tensors (buffers such as `position_ids`) are taken from the base, else from the first model that has them"),
        );
    }
}

fn summary(a: &Arch) -> String {
    let name = a.name.as_deref().unwrap_or("unknown architecture");
    let hidden = a.tensors.iter().find(|t| t.shape.len() == 1).map_or("?".into(), |t| t.shape[0].to_string());
    format!("{name} with {} layers, hidden size {hidden}", a.n_layers)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `a`, `b`, `c` and 4 more.
fn names(ts: &[&TensorSig]) -> String {
    let listed: Vec<String> = ts.iter().take(LISTED).map(|t| format!("`{}`", t.name)).collect();
    match ts.len().saturating_sub(LISTED) {
        0 => listed.join(", "),
        more => format!("{} and {more} more", listed.join(", ")),
    }
}

/// A glob matching the tensors: their name when one, else their common prefix and `*`.
fn glob_for(ts: &[&TensorSig]) -> String {
    let first = &ts[0].name;
    if ts.len() == 1 {
        return first.clone();
    }
    let common = ts
        .iter()
        .fold(first.len(), |n, t| first.bytes().zip(t.name.bytes()).take(n).take_while(|(x, y)| x == y).count());
    format!("{}*", &first[..common])
}
