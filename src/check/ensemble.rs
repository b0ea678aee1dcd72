//! `ensemble(m1, m2, ..., weight=[...], mode="mean")`: an [`Ensemble`] of
//! models that share a tokenizer. It is evaluated (`fuse eval`, the REPL's
//! `:eval`), never saved: it has no weights of its own, so `save` and
//! arithmetic on one are type errors (E0208, E0209) that say so. Members
//! must tokenize alike (E0210): their vocabularies have the same size and
//! their tokenizer.json files, where both have one, the same vocabulary.

use super::eval::{Checker, Ctx};
use super::value::*;
use crate::codemap::FileId;
use crate::diag::{Code, Diagnostic};
use crate::ir::{Ensemble, EnsembleMode};
use crate::syntax::{Arg, Span};
use std::sync::Arc;

impl Checker<'_> {
    pub fn call_ensemble(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let mut members: Vec<(TVal, Span)> = Vec::new();
        let (mut weight, mut mode) = (None, None);
        let mut poisoned = false;
        for a in args {
            let v = self.eval(&a.value, ctx);
            let v = self.settle_value(v, a.value.span, ctx.file);
            match (&a.name, v) {
                (_, Value::Poison) => poisoned = true,
                (Some(n), v) if n.name == "weight" => weight = Some((v, a.value.span)),
                (Some(n), v) if n.name == "mode" => mode = Some((v, a.value.span)),
                (Some(n), _) => {
                    self.unknown_arg("ensemble", &n.name, n.span, &["weight", "mode"], ctx);
                    poisoned = true;
                }
                (None, Value::Tensor(t)) if self.kind(&t) == Some(Kind::Model) && t.arch.slice_of.is_none() => {
                    members.push((t, a.value.span))
                }
                (None, other) => {
                    let d = Diagnostic::error(
                        Code::E0106,
                        format!("ensemble members must be models, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, a.value.span, "not a model");
                    let d = match other {
                        Value::Ensemble(_) => {
                            d.with_help("list the inner ensemble's members in this one (weights multiply for `mean`)")
                        }
                        Value::Tensor(_) => d.with_help("add a task vector to a base first: `base + delta`"),
                        _ => d,
                    };
                    self.err(d);
                    poisoned = true;
                }
            }
        }
        if poisoned {
            return Value::Poison;
        }
        if members.is_empty() {
            return self.err(
                Diagnostic::error(Code::E0105, "`ensemble` needs at least one model")
                    .with_label(ctx.file, span, "no members")
                    .with_help("e.g. `ensemble(a, b, weight=[0.7, 0.3])`"),
            );
        }
        let mode = match mode {
            None => EnsembleMode::Mean,
            Some((Value::Str(s), _)) if s == "mean" => EnsembleMode::Mean,
            Some((Value::Str(s), _)) if s == "max" => EnsembleMode::Max,
            Some((v, s)) => {
                return self.err(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`mode` must be \"mean\" or \"max\", found {}", describe(&v)),
                    )
                    .with_label(ctx.file, s, "expected \"mean\" or \"max\""),
                )
            }
        };
        let n = members.len();
        let Some(ws) = self.per_model("weight", weight.clone(), n, 1.0, ctx) else { return Value::Poison };
        let mut weights = Vec::with_capacity(n);
        for w in ws {
            match w.as_const() {
                Some(x) if x.is_finite() && x >= 0.0 => weights.push(x),
                _ => {
                    let at = weight.as_ref().map_or(span, |(_, s)| *s);
                    return self.err(
                        Diagnostic::error(
                            Code::E0106,
                            "ensemble weights must be numbers >= 0, the same for every tensor",
                        )
                        .with_label(ctx.file, at, "not a constant >= 0")
                        .with_note("a weight scales a member's next-token probabilities, not its tensors"),
                    );
                }
            }
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            let at = weight.as_ref().map_or(span, |(_, s)| *s);
            return self.err(Diagnostic::error(Code::E0106, "ensemble weights add up to 0").with_label(
                ctx.file,
                at,
                "at least one weight must be positive",
            ));
        }
        weights.iter_mut().for_each(|w| *w /= total);
        if let Some(d) = self.tokenizers_differ(&members, ctx.file) {
            return self.err(d);
        }
        let names = members.iter().map(|(_, s)| self.snippet(ctx.file, *s)).collect();
        let members = members.into_iter().map(|(t, _)| t).collect();
        Value::Ensemble(Arc::new(Ensemble { members, names, weights, mode }))
    }

    /// E0209 at `span`, an Ensemble used as a model by `what`.
    pub fn ensemble_misuse(&mut self, span: Span, file: FileId, what: &str) -> Value {
        self.err(
            Diagnostic::error(Code::E0209, format!("{what} does not apply to an Ensemble"))
                .with_label(file, span, "this is an Ensemble")
                .with_note("an ensemble runs its members side by side and combines their next-token predictions; it has no weights to add or scale")
                .with_help("combine the models inside it instead (`ensemble(0.5*a + 0.5*b, c)`), or merge them (`linear(a, b)`)"),
        )
    }

    /// E0210 when two members cannot share a tokenizer: different vocabulary
    /// sizes, or tokenizer.json files with different vocabularies.
    fn tokenizers_differ(&self, members: &[(TVal, Span)], file: FileId) -> Option<Diagnostic> {
        let vocab = |t: &TVal| {
            t.arch.tensors.iter().find(|s| s.name == "model.embed_tokens.weight").and_then(|s| s.shape.first().copied())
        };
        let (first, fspan) = &members[0];
        for (m, s) in &members[1..] {
            if let (Some(a), Some(b)) = (vocab(first), vocab(m)) {
                if a != b {
                    return Some(
                        Diagnostic::error(Code::E0210, "ensemble members have different vocabularies")
                            .with_label(file, *fspan, format!("{a} tokens"))
                            .with_label(file, *s, format!("{b} tokens"))
                            .with_note("members' next-token distributions are combined token by token, so they must share a tokenizer"),
                    );
                }
            }
            let (ta, tb) = (self.tokenizer_vocab(first), self.tokenizer_vocab(m));
            if let (Some((pa, va)), Some((pb, vb))) = (ta, tb) {
                if va != vb {
                    return Some(
                        Diagnostic::error(Code::E0210, "ensemble members have different tokenizers")
                            .with_label(file, *fspan, format!("tokenizer `{}`", pa.display()))
                            .with_label(file, *s, format!("tokenizer `{}`", pb.display()))
                            .with_note("their tokenizer.json files map tokens to different ids"),
                    );
                }
            }
        }
        None
    }

    /// The tokenizer.json of a value's origin model (its vocabulary and added tokens).
    fn tokenizer_vocab(&self, t: &TVal) -> Option<(std::path::PathBuf, serde_json::Value)> {
        let ck = self.models.get(t.arch.origin)?;
        let path = crate::io::checkpoint::tokenizer_path(ck)?;
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        let key = serde_json::json!([
            json.pointer("/model/vocab"),
            json.get("added_tokens").map(|a| {
                a.as_array()
                    .map(|a| a.iter().map(|t| (t.get("id").cloned(), t.get("content").cloned())).collect::<Vec<_>>())
            })
        ]);
        Some((path, key))
    }
}

/// One line for the REPL: `Ensemble (2 models, mean, weights 0.5/0.5)`.
pub fn summary(e: &Ensemble) -> String {
    let mode = match e.mode {
        EnsembleMode::Mean => "mean",
        EnsembleMode::Max => "max",
    };
    let w: Vec<String> = e.weights.iter().map(|w| super::fmt_num(*w)).collect();
    format!("{} models, {mode}, weights {}", e.members.len(), w.join("/"))
}

fn describe(v: &Value) -> String {
    match v {
        Value::Str(s) => format!("\"{s}\""),
        other => other.type_name(),
    }
}
