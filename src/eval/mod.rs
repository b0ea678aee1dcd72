//! Evaluation: a checked recipe's models (and ensembles) in, perplexity and
//! bits per byte on a text out. Each model is computed from the lazy graph
//! into memory by the exec engine (`exec::compute_all`: no checkpoint is
//! written), run by our forward pass on candle-core (`forward.rs`) over the
//! text's windows (`text.rs`), and scored in f64 (`combine.rs`). An ensemble
//! is run member by member, one model's weights in memory at a time, its
//! members' saved per-token scores combined at the end.

pub mod combine;
pub mod forward;
pub mod text;

use crate::diag::{Code, Diagnostic, Sources};
use crate::graph::{self, Plan};
use crate::io::package::Package;
use crate::ir::{Arch, Ensemble, EnsembleMode, Recipe, TExpr, TVal};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// The default window: the model's maximum, capped here.
pub const DEFAULT_CONTEXT: usize = 1024;

/// How to evaluate.
#[derive(Clone)]
pub struct Options {
    /// Tokens per window; default: the model's maximum, capped at [`DEFAULT_CONTEXT`].
    pub context: Option<usize>,
    /// Read at most this many tokens of the text.
    pub max_tokens: Option<usize>,
    pub device: Device,
    /// Refuse to start when the estimate exceeds this many bytes.
    pub max_memory: u64,
}

/// Something to evaluate: a model is an ensemble of one.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub ensemble: Arc<Ensemble>,
}

impl Target {
    pub fn model(name: String, value: TVal) -> Target {
        let ensemble =
            Ensemble { members: vec![value], names: vec![name.clone()], weights: vec![1.0], mode: EnsembleMode::Mean };
        Target { name, ensemble: Arc::new(ensemble) }
    }
}

/// Every model a recipe reads (`fuse eval --inputs`), named by its path.
pub fn inputs(recipe: &Recipe) -> Vec<Target> {
    let mut out = Vec::new();
    for (i, ck) in recipe.models.iter().enumerate() {
        let expr = recipe.exprs.iter().position(|e| matches!(e, TExpr::Load { model } if *model == i));
        if let Some(expr) = expr {
            let arch = Arc::new(Arch::from_checkpoint(ck, i));
            let value = TVal { expr, arch, weight: crate::ir::Sched::Const(1.0) };
            out.push(Target::model(format!("model(\"{}\")", ck.root.display()), value));
        }
    }
    out
}

/// What a recipe evaluates: its saves and its result (a model or an
/// ensemble), named by their directory or source text.
pub fn targets(recipe: &Recipe, sources: &Sources) -> Vec<Target> {
    // The expression's text, on one line.
    let snippet = |file, span: crate::codemap::Span| {
        let text = &sources.text(file)[span.start..span.end];
        let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if t.chars().count() > 48 {
            format!("{}…", t.chars().take(47).collect::<String>())
        } else {
            t
        }
    };
    let mut out = Vec::new();
    for s in &recipe.saves {
        if s.lora.is_none() {
            out.push(Target::model(s.dir.display().to_string(), s.value.clone()));
        }
    }
    if let Some(r) = &recipe.result {
        out.push(Target::model(snippet(r.file, r.span), r.value.clone()));
    }
    if let Some(e) = &recipe.ensemble {
        out.push(Target { name: snippet(e.file, e.span), ensemble: e.value.clone() });
    }
    out
}

/// Perplexity and bits per byte from the summed negative log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Sum over scored tokens of -ln p, in nats.
    pub nll: f64,
    pub tokens: usize,
    pub bytes: usize,
}

impl Score {
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.tokens as f64).exp()
    }
    pub fn bits_per_byte(&self) -> f64 {
        self.nll / std::f64::consts::LN_2 / self.bytes.max(1) as f64
    }
}

/// The memory an evaluation holds at its peak.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// The largest member's weights as f32.
    pub weights: u64,
    /// One window's activations and logits.
    pub activations: u64,
    /// Scores kept across members (the running maximum for `max`).
    pub saved: u64,
}

impl Memory {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.saved
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "about {} (weights of one model as f32: {}; one window's activations: {}; scores kept: {})",
            mb(self.total()),
            mb(self.weights),
            mb(self.activations),
            mb(self.saved)
        )
    }
}

pub fn mb(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

/// One member, planned but not computed.
struct Member {
    plan: Plan,
    cfg: forward::Config,
    weight: f64,
}

/// An evaluation ready to run: members planned, text tokenized and cut.
pub struct Prepared {
    pub target: Target,
    members: Vec<Member>,
    pub tokens: text::Tokens,
    pub windows: Vec<Range<usize>>,
    pub context: usize,
    pub tokenizer: text::Source,
    pub memory: Memory,
    vocab: usize,
}

impl Prepared {
    /// Tokens scored, and the tokens the run goes through (for progress).
    pub fn scored(&self) -> (usize, usize) {
        text::scored(&self.tokens, &self.windows)
    }
    pub fn work(&self) -> u64 {
        (self.scored().0 * self.members.len()) as u64
    }
}

fn err(code: Code, what: impl Into<String>) -> Diagnostic {
    Diagnostic::error(code, what)
}

/// Plans `target`'s members, reads their configs and tokenizers, tokenizes
/// `text` and checks that it fills a window and that memory suffices.
pub fn prepare(recipe: &Recipe, target: &Target, text: &str, opts: &Options) -> Result<Prepared, Diagnostic> {
    let e = &target.ensemble;
    let mut members = Vec::new();
    let mut tokenized: Option<(text::Source, text::Tokens)> = None;
    let mut max_positions = None;
    for (i, m) in e.members.iter().enumerate() {
        let plan = graph::lower(recipe, m, None, u64::MAX);
        let origin = &plan.models[plan.origin];
        let package = Package {
            models: &plan.models,
            origin: plan.origin,
            // With a dtype, config_json also sets the output's fields (a MoE's Mixtral ones).
            dtype: plan.dtype.or_else(|| plan.layout.tensors.first().map(|t| t.dtype)),
            n_layers: plan.n_layers,
            config: &plan.config,
            layers: &plan.layers,
            recipe: "",
        };
        let name = &e.names[i];
        let config = package.config_json(origin, &mut Vec::new()).ok_or_else(|| {
            err(Code::E0501, format!("`{name}` has no config.json, so its architecture is unknown"))
                .with_help(format!("put the model's config.json beside `{}`", origin.root.display()))
        })?;
        let mut cfg = forward::Config::from_json(&config).map_err(|why| {
            err(Code::E0501, format!("cannot evaluate `{name}`: {why}"))
                .with_note(format!("eval runs {}", forward::SUPPORTED.join(", ")))
        })?;
        let shape = |n: &str| plan.outputs.iter().find(|o| o.name == n).map(|o| plan.nodes[o.node].shape.clone());
        cfg.vocab = shape("model.embed_tokens.weight").map_or(cfg.vocab, |s| s[0]);
        cfg.layers = plan.n_layers;
        max_positions = max_positions.or(cfg.max_positions);
        let gguf = origin.root.extension().is_some_and(|e| e == "gguf");
        let path = match crate::io::checkpoint::tokenizer_path(origin) {
            Some(p) => text::Source::File(p),
            None if gguf => match crate::io::gguf_tokenizer::tokenizer_json(&origin.root) {
                Ok(json) => text::Source::Gguf(origin.root.clone(), json.to_string()),
                Err(why) => {
                    return Err(err(Code::E0503, format!("`{name}` has no tokenizer.json, and its GGUF file gives none: {why}"))
                        .with_help("put the model's tokenizer.json beside the .gguf file (e.g. saved with transformers' `tokenizer.save_pretrained(dir)`)"))
                }
            },
            None => {
                return Err(err(Code::E0503, format!("`{name}` has no tokenizer.json"))
                    .with_note(format!("eval tokenizes the text with the tokenizer.json of `{}` (beside it for a single file)", origin.root.display()))
                    .with_help("put the model's tokenizer.json there (e.g. saved with transformers' `tokenizer.save_pretrained(dir)`)"))
            }
        };
        let tokens = text::tokenize(&path, text, opts.max_tokens).map_err(|e| err(Code::E0503, e))?;
        if let Some(&bad) = tokens.ids.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(err(
                Code::E0503,
                format!(
                    "the tokenizer from {path} gives token id {bad}, outside the {} rows of `{name}`'s embedding",
                    cfg.vocab
                ),
            )
            .with_help("use the tokenizer that belongs to this model"));
        }
        match &tokenized {
            None => tokenized = Some((path, tokens)),
            Some((p0, t0)) if t0.ids != tokens.ids => {
                return Err(err(
                    Code::E0503,
                    format!("ensemble members tokenize the text differently: {p0} and {path}"),
                )
                .with_note(
                    "members' next-token distributions are combined token by token, so they must share a tokenizer",
                ))
            }
            Some(_) => {}
        }
        members.push(Member { plan, cfg, weight: e.weights[i] });
    }
    let (tokenizer, tokens) = tokenized.expect("an ensemble has members");
    let context = match opts.context {
        Some(c) if c < 2 => return Err(err(Code::E0505, format!("--context {c}: a window needs at least 2 tokens"))),
        Some(c) => c,
        None => max_positions.unwrap_or(DEFAULT_CONTEXT).min(DEFAULT_CONTEXT),
    };
    if tokens.ids.len() < context {
        return Err(err(
            Code::E0502,
            format!("the text has {} tokens, fewer than one window of {context}", tokens.ids.len()),
        )
        .with_help(format!("pass a longer text, or a smaller window: --context {}", tokens.ids.len().max(2))));
    }
    let windows = text::windows(tokens.ids.len(), context);
    let vocab = members[0].cfg.vocab;
    let scored = text::scored(&tokens, &windows).0;
    let weights = members
        .iter()
        .map(|m| m.plan.outputs.iter().map(|o| m.plan.nodes[o.node].shape.iter().product::<usize>() as u64 * 4).sum())
        .max()
        .unwrap_or(0);
    let activations = members
        .iter()
        .map(|m| {
            let c = &m.cfg;
            let t = context as u64;
            let inter = c.intermediate.max(c.hidden) as u64 * c.experts.map_or(1, |_| 2);
            // Logits (tensor and copy), attention scores and probabilities, MLP and residual stream.
            4 * (2 * t * c.vocab as u64 + 3 * c.heads as u64 * t * t + 3 * t * inter + 8 * t * c.hidden as u64)
        })
        .max()
        .unwrap_or(0);
    let saved = match e.mode {
        EnsembleMode::Max if members.len() > 1 => combine::MaxMode::bytes(scored, vocab),
        _ => (scored * 8 * members.len()) as u64,
    };
    let memory = Memory { weights, activations, saved };
    if memory.total() > opts.max_memory {
        let mut d = err(
            Code::E0504,
            format!(
                "evaluating `{}` needs {}, more than --max-memory {}",
                target.name,
                mb(memory.total()),
                mb(opts.max_memory)
            ),
        )
        .with_note(format!("{memory}"));
        if e.mode == EnsembleMode::Max && members.len() > 1 {
            d = d.with_note("`max` keeps every member's distribution over the vocabulary at every scored token: fewer tokens (--max-tokens) need less");
        }
        return Err(d.with_help("raise --max-memory, or lower --context or --max-tokens"));
    }
    Ok(Prepared { target: target.clone(), members, tokens, windows, context, tokenizer, memory, vocab })
}

/// Runs a prepared evaluation; `progress` is told the tokens scored as it goes.
pub fn run(p: &Prepared, opts: &Options, progress: &dyn Fn(u64)) -> Result<Score, Diagnostic> {
    let (scored, bytes) = p.scored();
    let targets: Vec<u32> = p.windows.iter().flat_map(|w| p.tokens.ids[w.start + 1..w.end].iter().copied()).collect();
    let max_mode = p.target.ensemble.mode == EnsembleMode::Max && p.members.len() > 1;
    let mut maxes = max_mode.then(|| combine::MaxMode::new(scored, p.vocab));
    let mut lps: Vec<Vec<f64>> = Vec::new();
    for (mi, m) in p.members.iter().enumerate() {
        let failed = |what: String| {
            if crate::exec::interrupted() {
                err(Code::E0405, "evaluation interrupted")
            } else {
                err(Code::E0506, format!("evaluating `{}`: {what}", p.target.ensemble.names[mi]))
            }
        };
        let model = load(m, &opts.device, opts.max_memory).map_err(failed)?;
        let mut own = Vec::with_capacity(scored);
        let mut k = 0;
        for w in &p.windows {
            if crate::exec::interrupted() {
                return Err(failed("interrupted".into()));
            }
            let logits = model.logits(&p.tokens.ids[w.clone()]).map_err(failed)?;
            for pos in 0..w.len() - 1 {
                let row = &logits[pos * p.vocab..(pos + 1) * p.vocab];
                match &mut maxes {
                    Some(mx) => mx.add(k, row, m.weight),
                    None => own.push(combine::log_prob(row, targets[k] as usize)),
                }
                k += 1;
            }
            progress((w.len() - 1) as u64);
        }
        if let Some(mx) = &mut maxes {
            mx.member_done();
        }
        lps.push(own);
    }
    let combined = match &maxes {
        Some(mx) => mx.finish(&targets),
        None => {
            let weights: Vec<f64> = p.members.iter().map(|m| m.weight).collect();
            combine::mean(&lps, &weights)
        }
    };
    Ok(Score { nll: -combined.iter().sum::<f64>(), tokens: scored, bytes })
}

/// Computes a member's weights into memory and puts them on `device`.
fn load(m: &Member, device: &Device, max_memory: u64) -> Result<forward::Model, String> {
    let weights = Mutex::new(HashMap::new());
    crate::exec::compute_all(&m.plan, max_memory, &|i, vals| {
        let o = &m.plan.outputs[i];
        let t = Tensor::from_vec(vals, m.plan.nodes[o.node].shape.as_slice(), device).map_err(|e| e.to_string())?;
        weights.lock().unwrap().insert(o.name.clone(), t);
        Ok(())
    })?;
    Ok(forward::Model { cfg: m.cfg.clone(), weights: weights.into_inner().unwrap(), device: device.clone() })
}
