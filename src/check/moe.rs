//! Mixture-of-experts upcycling: `moe(experts=[...], base=..., top_k=2,
//! gate=...)` builds a Mixtral-layout model from Llama/Mistral-layout dense
//! models: attention, norms and embeddings from the base, each expert's MLP
//! from its model, router weights from the gate mode (as mergekit-moe).

use super::eval::{Checker, Ctx};
use super::value::*;
use crate::diag::{Code, Diagnostic};
use crate::ir::RouterMode;
use crate::syntax::{Arg, Span};
use std::collections::HashMap;
use std::sync::Arc;

/// Dense MLP projections and their Mixtral expert names.
const EXPERT_WEIGHTS: &[(&str, &str)] = &[("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")];

impl Checker<'_> {
    pub fn call_moe(&mut self, args: &[Arg], span: Span, ctx: Ctx) -> Value {
        let params = ["experts", "base", "top_k", "gate", "prompts", "seed"];
        let Some(mut b) = self.bind_args("moe", &params, 0, 0, args, span, ctx) else { return Value::Poison };
        if b.values().any(|(v, _)| matches!(v, Value::Poison)) {
            return Value::Poison;
        }
        let Some((ev, espan)) = b.remove("experts") else {
            return self.err(
                Diagnostic::error(Code::E0105, "`moe` needs `experts`")
                    .with_label(ctx.file, span, "no experts given")
                    .with_help("e.g. `moe(experts=[math, code], base=base, top_k=2)`"),
            );
        };
        let items = match ev {
            Value::List(items) => items,
            other => vec![other],
        };
        let mut experts = Vec::new();
        for item in items {
            match self.settle_value(item, espan, ctx.file) {
                Value::Tensor(t) if self.kind(&t) == Some(Kind::Model) && t.arch.slice_of.is_none() => experts.push(t),
                Value::Poison => return Value::Poison,
                other => {
                    return self.err(
                        Diagnostic::error(Code::E0106, format!("experts must be models, found {}", other.type_name()))
                            .with_label(ctx.file, espan, "expected a list of models"),
                    )
                }
            }
        }
        if experts.len() < 2 {
            return self.err(
                Diagnostic::error(Code::E0105, format!("`moe` needs at least 2 experts, got {}", experts.len()))
                    .with_label(ctx.file, espan, "too few experts")
                    .with_help("a mixture of one expert is the expert itself"),
            );
        }
        let Some(base) = self.base_model(b.remove("base"), span, "moe", ctx) else { return Value::Poison };
        let family = base.arch.name.clone().unwrap_or_default();
        let has_mlp = base.arch.tensors.iter().any(|t| t.name.ends_with(".mlp.gate_proj.weight"));
        if !matches!(family.as_str(), "LlamaForCausalLM" | "MistralForCausalLM") || !has_mlp {
            let what =
                if family.is_empty() { "a model without config.json".to_string() } else { format!("`{family}`") };
            return self.err(
                Diagnostic::error(
                    Code::E0206,
                    format!("`moe` builds Mixtral from Llama or Mistral models; the base is {what}"),
                )
                .with_label(ctx.file, span, "unsupported model family")
                .with_note("experts need Llama's MLP (mlp.gate_proj, mlp.up_proj, mlp.down_proj)"),
            );
        }
        for e in &experts {
            if self.same_arch(&base.clone(), &e.clone(), span, espan, ctx.file).is_none() {
                return Value::Poison;
            }
        }
        let n = experts.len();
        let top_k = match b.remove("top_k") {
            None => 2.min(n),
            Some((Value::Num(Sched::Const(k)), _)) if k >= 1.0 && k.fract() == 0.0 && (k as usize) <= n => k as usize,
            Some((_, s)) => {
                return self.err(
                    Diagnostic::error(Code::E0106, format!("`top_k` must be a whole number from 1 to {n}"))
                        .with_label(ctx.file, s, "experts chosen per token")
                        .with_help("e.g. `top_k=2`"),
                )
            }
        };
        let seed = match b.remove("seed") {
            None => 0,
            Some((Value::Num(Sched::Const(s)), _)) if s >= 0.0 && s.fract() == 0.0 => s as u64,
            Some((_, s)) => {
                return self.err(Diagnostic::error(Code::E0106, "`seed` must be a whole number").with_label(
                    ctx.file,
                    s,
                    "e.g. `seed=42`",
                ))
            }
        };
        let prompts = b.remove("prompts");
        let gate = match b.remove("gate") {
            None => if prompts.is_some() { "cheap_embed" } else { "random" }.to_string(),
            Some((Value::Str(g), _)) if matches!(g.as_str(), "random" | "uniform" | "cheap_embed") => g,
            Some((v, s)) => {
                let d = Diagnostic::error(
                    Code::E0106,
                    format!(
                        "unknown gate mode {}",
                        match v {
                            Value::Str(g) => format!("`{g}`"),
                            other => other.type_name(),
                        }
                    ),
                )
                .with_label(ctx.file, s, "expected \"random\", \"uniform\" or \"cheap_embed\"");
                return self
                    .err(d.with_note("mergekit's \"hidden\" mode needs a forward pass, which fuse does not run"));
            }
        };
        let embed = base.arch.tensors.iter().find(|t| t.name.contains("embed_tokens")).cloned();
        let Some(embed) = embed else {
            return self.err(Diagnostic::error(Code::E0206, "the base has no embed_tokens tensor").with_label(
                ctx.file,
                span,
                "in this moe",
            ));
        };
        let (vocab, hidden) = (embed.shape[0], embed.shape[1]);
        let mode = match gate.as_str() {
            "random" => RouterMode::Random { seed },
            "uniform" => RouterMode::Uniform,
            _ => {
                let Some(tokens) = self.prompt_tokens(prompts, n, vocab, base.arch.origin, span, ctx) else {
                    return Value::Poison;
                };
                RouterMode::CheapEmbed { model: base.arch.origin, tensor: embed.name.clone(), tokens }
            }
        };
        let router = self.push(TExpr::Router { experts: n, hidden, mode });
        // Output tensors: the base's non-MLP tensors, every expert's MLP, a router per layer.
        let mut parts: Vec<(TId, usize)> = vec![(base.expr, base.arch.n_layers)];
        parts.extend(experts.iter().map(|e| (e.expr, e.arch.n_layers)));
        parts.push((router, base.arch.n_layers));
        let mut map = HashMap::new();
        let mut tensors = Vec::new();
        for t in &base.arch.tensors {
            if !t.name.contains(".mlp.") {
                map.insert(t.name.clone(), (0, t.name.clone()));
                tensors.push(t.clone());
            }
        }
        for l in 0..base.arch.n_layers {
            for (e, _) in experts.iter().enumerate() {
                for (dense, w) in EXPERT_WEIGHTS {
                    let src = format!("model.layers.{l}.mlp.{dense}.weight");
                    let Some(sig) = base.arch.tensors.iter().find(|t| t.name == src) else { continue };
                    let name = format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight");
                    map.insert(name.clone(), (1 + e, src));
                    tensors.push(TensorSig { name, ..sig.clone() });
                }
            }
            let name = format!("model.layers.{l}.block_sparse_moe.gate.weight");
            map.insert(name.clone(), (n + 1, name.clone()));
            tensors.push(TensorSig { name, shape: vec![n, hidden], dtype: embed.dtype, layer: Some(l) });
        }
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let expr = self.push(TExpr::Select { parts, map: Arc::new(map) });
        let config = vec![
            ("architectures".to_string(), serde_json::json!(["MixtralForCausalLM"])),
            ("model_type".to_string(), "mixtral".into()),
            ("num_local_experts".to_string(), n.into()),
            ("num_experts_per_tok".to_string(), top_k.into()),
            ("router_aux_loss_coef".to_string(), 0.001.into()),
            ("output_router_logits".to_string(), false.into()),
        ];
        let arch = Arch {
            tensors,
            n_layers: base.arch.n_layers,
            name: Some("MixtralForCausalLM".into()),
            origin: base.arch.origin,
            slice_of: None,
            config,
            layers: base.arch.layers.clone(),
        };
        Value::Tensor(TVal { expr, arch: Arc::new(arch), weight: Sched::Const(1.0) })
    }

    /// Each expert's prompts tokenized with the base's tokenizer.json.
    fn prompt_tokens(
        &mut self,
        prompts: Option<(Value, Span)>,
        n: usize,
        vocab: usize,
        base: usize,
        span: Span,
        ctx: Ctx,
    ) -> Option<Vec<Vec<u32>>> {
        let Some((pv, pspan)) = prompts else {
            self.report(
                Diagnostic::error(Code::E0105, "the cheap_embed gate needs `prompts`, one per expert")
                    .with_label(ctx.file, span, "no prompts")
                    .with_help("e.g. `prompts=[\"solve the equation\", \"write a function\"]`"),
            );
            return None;
        };
        let Value::List(items) = pv else {
            self.report(Diagnostic::error(Code::E0106, "`prompts` must be a list, one entry per expert").with_label(
                ctx.file,
                pspan,
                "expected a list",
            ));
            return None;
        };
        if items.len() != n {
            self.report(
                Diagnostic::error(Code::E0108, format!("`prompts` has {} entries for {n} experts", items.len()))
                    .with_label(ctx.file, pspan, "one prompt (or list of prompts) per expert"),
            );
            return None;
        }
        let dir = self.models[base].dir.clone().unwrap_or_default();
        let path = dir.join("tokenizer.json");
        let tok = match tokenizers::Tokenizer::from_file(&path) {
            Ok(t) => t,
            Err(e) => {
                self.report(
                    Diagnostic::error(
                        Code::E0302,
                        format!("cannot load the base's tokenizer `{}`: {e}", path.display()),
                    )
                    .with_label(ctx.file, pspan, "these prompts need the base model's tokenizer"),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            let texts: Vec<String> = match item {
                Value::Str(s) => vec![s],
                Value::List(xs) => {
                    xs.into_iter().filter_map(|x| if let Value::Str(s) = x { Some(s) } else { None }).collect()
                }
                _ => Vec::new(),
            };
            let mut ids = Vec::new();
            for t in &texts {
                match tok.encode(t.as_str(), false) {
                    Ok(enc) => ids.extend(enc.get_ids().iter().copied().filter(|id| (*id as usize) < vocab)),
                    Err(e) => {
                        self.report(Diagnostic::error(Code::E0106, format!("cannot tokenize `{t}`: {e}")).with_label(
                            ctx.file,
                            pspan,
                            "in these prompts",
                        ));
                        return None;
                    }
                }
            }
            if ids.is_empty() {
                self.report(Diagnostic::error(Code::E0106, "an expert's prompts give no tokens").with_label(
                    ctx.file,
                    pspan,
                    "every expert needs at least one non-empty prompt",
                ));
                return None;
            }
            out.push(ids);
        }
        Some(out)
    }
}
