//! LoRA adapters in and out: `lora("dir")` reads a PEFT adapter as a task
//! vector on its base, and `save_lora(delta, "dir", rank=r)` asks for one to
//! be extracted from a task vector (the SVD runs in `exec/lora.rs`).

use super::eval::{Checker, Ctx};
use super::value::*;
use super::Output;
use crate::diag::{Code, Diagnostic};
use crate::io::Checkpoint;
use crate::syntax::{Arg, Span};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The PEFT adapter's settings that fuse reads.
pub struct AdapterConfig {
    pub r: usize,
    pub alpha: f64,
    pub rslora: bool,
}

/// Reads adapter_config.json.
pub fn adapter_config(dir: &Path) -> Result<AdapterConfig, String> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))?;
    let v: Json = serde_json::from_str(&text).map_err(|e| format!("`{}` is not valid JSON: {e}", p.display()))?;
    if let Some(t) = v.get("peft_type").and_then(Json::as_str) {
        if t != "LORA" {
            return Err(format!("`{}` describes a {t} adapter; fuse reads LORA adapters", p.display()));
        }
    }
    let r = v
        .get("r")
        .and_then(Json::as_u64)
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("`{}` has no positive `r`", p.display()))?;
    let alpha = v.get("lora_alpha").and_then(Json::as_f64).unwrap_or(r as f64);
    let rslora = v.get("use_rslora").and_then(Json::as_bool).unwrap_or(false);
    Ok(AdapterConfig { r: r as usize, alpha, rslora })
}

/// The base tensor a PEFT tensor name adapts, and whether it is A or B:
/// `base_model.model.X.lora_A[.default].weight` -> (`X.weight`, true).
pub fn adapted_tensor(name: &str) -> Option<(String, bool)> {
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    for (suffix, is_a) in [
        (".lora_A.weight", true),
        (".lora_B.weight", false),
        (".lora_A.default.weight", true),
        (".lora_B.default.weight", false),
    ] {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Some((format!("{module}.weight"), is_a));
        }
    }
    None
}

impl Checker<'_> {
    /// `lora("adapter_dir", base=...)`: the adapter's `alpha/r * B A` on each
    /// tensor it targets, zero elsewhere, as a Delta on the base.
    pub fn call_lora(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let Some(mut b) = self.bind_args("lora", &["path", "base"], 2, 1, args, span, ctx) else {
            return Value::Poison;
        };
        let (pv, pspan) = b.remove("path").unwrap();
        let Value::Str(rel) = pv else {
            return self.err(
                Diagnostic::error(Code::E0106, format!("`lora` takes a path string, found {}", pv.type_name()))
                    .with_label(ctx.file, pspan, "expected e.g. \"adapters/math\""),
            );
        };
        let dir = ctx.dir.join(&rel);
        let bad = |what: String| {
            Diagnostic::error(Code::E0302, format!("bad LoRA adapter: {what}")).with_label(
                ctx.file,
                pspan,
                "this adapter cannot be used",
            )
        };
        if !dir.join("adapter_model.safetensors").is_file() {
            return self.err(
                Diagnostic::error(Code::E0301, format!("no LoRA adapter at `{}`", dir.display()))
                    .with_label(ctx.file, pspan, "expected adapter_config.json and adapter_model.safetensors here")
                    .with_help("paths are relative to the recipe; PEFT's save_pretrained writes these two files"),
            );
        }
        let cfg = match adapter_config(&dir) {
            Ok(c) => c,
            Err(e) => return self.err(bad(e)),
        };
        let file = dir.join("adapter_model.safetensors");
        let ck = match Checkpoint::open_path(&file) {
            Ok(ck) => ck,
            Err(crate::io::OpenError::Bad { file, what }) => {
                return self.err(bad(format!("`{}`: {what}", file.display())))
            }
            Err(crate::io::OpenError::NotFound { what, .. }) => return self.err(bad(what)),
        };
        let Some(base) = self.base_model(b.remove("base"), span, "lora", ctx) else { return Value::Poison };
        let shapes: HashMap<&str, &Vec<usize>> =
            base.arch.tensors.iter().map(|t| (t.name.as_str(), &t.shape)).collect();
        let mut pairs: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        for name in ck.tensors.keys() {
            let Some((target, is_a)) = adapted_tensor(name) else { continue };
            let e = pairs.entry(target).or_default();
            if is_a {
                e.0 = Some(name.clone());
            } else {
                e.1 = Some(name.clone());
            }
        }
        if pairs.is_empty() {
            return self.err(bad(format!("`{}` holds no lora_A/lora_B tensors", file.display())));
        }
        let mut map = HashMap::new();
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort();
        for (target, (a, bm)) in pairs {
            let (Some(a), Some(bm)) = (a, bm) else {
                return self.err(bad(format!("`{target}` has only one of lora_A and lora_B")));
            };
            let Some(shape) = shapes.get(target.as_str()) else {
                return self.err(bad(format!("it adapts `{target}`, which the base model does not have")));
            };
            let (sa, sb) = (&ck.tensors[&a].info.shape, &ck.tensors[&bm].info.shape);
            let want_a = vec![cfg.r, shape.get(1).copied().unwrap_or(1)];
            let want_b = vec![shape[0], cfg.r];
            if shape.len() != 2 || *sa != want_a || *sb != want_b {
                return self.err(bad(format!(
                    "`{target}` is {shape:?} in the base, so rank {} needs lora_A {want_a:?} and lora_B {want_b:?}, but the adapter has {sa:?} and {sb:?}",
                    cfg.r
                )));
            }
            map.insert(target, (a, bm));
        }
        let what = format!("the LoRA adapter `{rel}`");
        let mut input = crate::ir::Input::checkpoint(what, &ck, ctx.file, pspan);
        input.paths.push(crate::io::target::resolve(&dir));
        self.inputs.push(input);
        let scale = if cfg.rslora { cfg.alpha / (cfg.r as f64).sqrt() } else { cfg.alpha / cfg.r as f64 };
        let adapter = self.models.len();
        self.archs.push(Arc::new(Arch::from_checkpoint(&ck, adapter)));
        self.models.push(Arc::new(ck));
        let expr = self.push(TExpr::Lora { adapter, map: Arc::new(map), scale });
        Value::Tensor(TVal { expr, arch: base.arch.clone(), weight: Sched::Const(0.0) })
    }

    /// `save_lora(delta, "dir", rank=r)`.
    pub fn save_lora(&mut self, args: &[Arg], span: Span, ctx: Ctx) {
        let Some(mut b) = self.bind_args("save_lora", &["delta", "dir", "rank"], 2, 3, args, span, ctx) else { return };
        let (dv, dspan) = b.remove("delta").unwrap();
        let value = match self.settle_value(dv, dspan, ctx.file) {
            Value::Tensor(t) if self.kind(&t) == Some(Kind::Delta) && t.arch.slice_of.is_none() => t,
            Value::Poison => return,
            other => {
                self.report(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`save_lora` extracts a task vector, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, dspan, "expected a Delta")
                    .with_help("pass a task vector, e.g. `save_lora(ft - base, \"adapter\", rank=16)`"),
                );
                return;
            }
        };
        let dir = match b.remove("dir").unwrap() {
            (Value::Str(s), _) => ctx.dir.join(s),
            (Value::Poison, _) => return,
            (other, s) => {
                self.report(
                    Diagnostic::error(
                        Code::E0106,
                        format!("the adapter directory must be a string, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, s, "expected a path"),
                );
                return;
            }
        };
        let rank = match b.remove("rank").unwrap() {
            (Value::Num(Sched::Const(r)), _) if r >= 1.0 && r.fract() == 0.0 => r as usize,
            (Value::Poison, _) => return,
            (other, s) => {
                self.report(
                    Diagnostic::error(
                        Code::E0106,
                        format!("`rank` must be a whole number of at least 1, found {}", other.type_name()),
                    )
                    .with_label(ctx.file, s, "expected e.g. `rank=16`"),
                );
                return;
            }
        };
        // The adapter's base: the recipe's `base`, else the model the delta came from.
        let base = match self.globals.get("base").map(|b| b.value.clone()) {
            Some(Value::Tensor(b)) if self.kind(&b) == Some(Kind::Model) => b.arch.origin,
            _ => value.arch.origin,
        };
        self.saves.push(Output {
            value,
            dir,
            dtype: None,
            quant: None,
            shard: u64::MAX,
            lora: Some(super::LoraOut { rank, base }),
            file: ctx.file,
            span,
        });
    }
}
