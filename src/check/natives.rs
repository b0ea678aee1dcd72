//! The table of native functions: every builtin, primitive and native merge
//! method, with its parameters (names, kinds, defaults, docs), its docs and
//! example, and how the checker evaluates it. The checker's dispatch, name
//! lookup and did-you-means, the REPL's completion and `:help`, the language
//! server's hover and completion, and the generated `docs/natives.md` all
//! read this one table (jaq-std keeps its natives the same way). Adding a
//! native means adding one entry here, plus its kernel.
//!
//! Merge methods use mergekit 0.1.5's parameter names and defaults. The
//! task-vector family and `linear` are written in the language, over the
//! primitives below, in `stdlib/merge.fuse`.

use super::builtins::MethodCall;
use super::call::Bound;
use super::eval::{Checker, Ctx};
use super::value::{Sched, Value};
use crate::ir::Kernel;
use crate::syntax::{Arg, Span};

/// How an argument is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PKind {
    /// One number per input model, or one number for all (`weight=[1, 0.5]`).
    PerModel,
    Num,
    Bool,
    Str,
    /// A model (the `base=` of methods that use one).
    Model,
    /// A list of models or task vectors (or one).
    Tensors,
    /// Any value the function describes in its docs.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    Num(f64),
    Bool(bool),
    /// Must be given.
    Required,
    /// Absent unless given.
    Absent,
}

#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: PKind,
    pub default: Default,
    pub doc: &'static str,
}

/// How many models a method takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

/// What a method does with a base model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUse {
    /// Takes none.
    Never,
    /// Works on deltas against `base=` when given, on the models otherwise.
    Optional,
    /// Needs one: `base=`, else the recipe's binding `base`.
    Required,
}

/// A merge method computed by one native kernel: models by position,
/// parameters by name.
#[derive(Clone, Copy, Debug)]
pub struct MethodSpec {
    pub arity: Arity,
    pub base: BaseUse,
    /// Models become task vectors against the base and the result is a Delta.
    pub task_vectors: bool,
    /// Builds the method's kernel from the call (see `builtins.rs`).
    pub(super) kernel: KernelBuilder,
}

pub(super) type KernelBuilder = fn(&mut Checker<'_>, &mut MethodCall<'_>, Ctx<'_>) -> Option<Kernel<Sched>>;

/// How the checker evaluates a native.
#[derive(Clone, Copy)]
pub(super) enum How {
    /// Takes its arguments as written (positional lists, special forms);
    /// `params` are for docs and completion.
    Special(fn(&mut Checker<'_>, &[Arg], Span, Ctx<'_>) -> Value),
    /// Arguments bound to `params` (the first `required` must be given,
    /// positionally or by name), then evaluated.
    Bound { required: usize, eval: fn(&mut Checker<'_>, &'static Native, &mut Bound, Span, Ctx<'_>) -> Value },
    /// A merge method (see [`MethodSpec`]), evaluated by `Checker::call_method`.
    Method(MethodSpec),
}

/// One native function.
#[derive(Clone, Copy)]
pub struct Native {
    pub name: &'static str,
    /// Positional arguments collected before the parameters (`..models`).
    pub rest: Option<&'static str>,
    pub params: &'static [ParamSpec],
    pub doc: &'static str,
    pub example: &'static str,
    pub(super) how: How,
}

impl Native {
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The table's default for a numeric parameter (0 when it has none).
    pub fn num_default(&self, name: &str) -> f64 {
        match self.param(name).map(|p| p.default) {
            Some(Default::Num(x)) => x,
            _ => 0.0,
        }
    }

    /// The table's default for a flag (false when it has none).
    pub fn bool_default(&self, name: &str) -> bool {
        matches!(self.param(name).map(|p| p.default), Some(Default::Bool(true)))
    }

    pub fn method(&self) -> Option<&MethodSpec> {
        match &self.how {
            How::Method(m) => Some(m),
            _ => None,
        }
    }

    /// The signature as people read it: `ties(..models, density=1.0, ...)`.
    pub fn signature(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(rest) = self.rest {
            parts.push(format!("..{rest}"));
        }
        for p in self.params {
            parts.push(match p.default {
                Default::Required | Default::Absent => p.name.to_string(),
                Default::Num(x) => format!("{}={}", p.name, num(x)),
                Default::Bool(b) => format!("{}={b}", p.name),
            });
        }
        format!("{}({})", self.name, parts.join(", "))
    }

    /// Markdown for hover and `:help NAME`.
    pub fn markdown(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|p| format!("- `{}`: {}", p.name, p.doc)).collect();
        format!("**{}** — {}\n\n{}\n\nExample: `{}`", self.signature(), self.doc, params.join("\n"), self.example)
    }
}

/// A default as people write it: `0.01`, `1e-8`.
fn num(x: f64) -> String {
    if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

const fn p(name: &'static str, kind: PKind, default: Default, doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind, default, doc }
}

const fn method(arity: Arity, base: BaseUse, task_vectors: bool, kernel: KernelBuilder) -> How {
    How::Method(MethodSpec { arity, base, task_vectors, kernel })
}

const BASE: ParamSpec = p("base", PKind::Model, Default::Absent, "the base model");
const T: ParamSpec = p("t", PKind::Num, Default::Required, "interpolation factor; 0 gives the first model");

const DELTAS: ParamSpec = p("deltas", PKind::Tensors, Default::Required, "task vectors (one, or a list)");
const DENSITY: ParamSpec =
    p("density", PKind::PerModel, Default::Num(1.0), "fraction of each task vector's entries kept");
const SEED: ParamSpec =
    p("seed", PKind::Num, Default::Num(0.0), "random seed; draws depend on (seed, tensor name, input)");

const fn rescale(default: bool) -> ParamSpec {
    p("rescale", PKind::Bool, Default::Bool(default), "restore each task vector's L1 norm after dropping entries")
}

/// Builtins that shape models rather than merge them.
const BUILTINS: &[Native] = &[
    Native {
        name: "model",
        rest: None,
        params: &[p("path", PKind::Str, Default::Required, "a checkpoint directory or file, relative to the recipe, or `hf:org/name`")],
        doc: "A checkpoint, read from its config.json and safetensors headers (weights are read only when computing).",
        example: "model(\"models/base\")",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.native_model(n, b, span, ctx) },
    },
    Native {
        name: "over_layers",
        rest: Some("values"),
        params: &[],
        doc: "A number that varies with depth: piecewise linear through the values from the first layer to the last (mergekit's gradients).",
        example: "over_layers(0, 0.5, 1)",
        how: How::Special(|c, args, span, ctx| c.call_over_layers(args, span, ctx)),
    },
    Native {
        name: "stack",
        rest: Some("slices"),
        params: &[],
        doc: "A model from layer slices in order: embeddings from the first slice's model, final norm and head from the last's.",
        example: "stack(a.layers[0..24], b.layers[8..32])",
        how: How::Special(|c, args, span, ctx| c.call_stack(args, span, ctx)),
    },
    Native {
        name: "lora",
        rest: None,
        params: &[
            p("path", PKind::Str, Default::Required, "a PEFT adapter directory (adapter_config.json, adapter_model.safetensors)"),
            BASE,
        ],
        doc: "A PEFT LoRA adapter as a task vector on its base: alpha/r * B A on each tensor it adapts.",
        example: "base + lora(\"adapters/math\")",
        how: How::Special(|c, args, span, ctx| c.call_lora(args, span, ctx)),
    },
    Native {
        name: "moe",
        rest: None,
        params: &[
            p("experts", PKind::Tensors, Default::Required, "the expert models (Llama or Mistral layout)"),
            BASE,
            p("top_k", PKind::Num, Default::Num(2.0), "experts used per token"),
            p("gate", PKind::Str, Default::Absent, "router initialisation: \"random\", \"uniform\" or \"cheap_embed\""),
            p("prompts", PKind::Any, Default::Absent, "one prompt per expert, for the cheap_embed router"),
            SEED,
        ],
        doc: "Mixtral upcycling: attention, norms and embeddings from the base, each expert's MLP from its model.",
        example: "moe(experts=[math, code], base=base, top_k=2)",
        how: How::Special(|c, args, span, ctx| c.call_moe(args, span, ctx)),
    },
    Native {
        name: "ensemble",
        rest: Some("models"),
        params: &[
            p("weight", PKind::PerModel, Default::Num(1.0), "each member's weight (normalized to sum to 1)"),
            p("mode", PKind::Str, Default::Absent, "\"mean\" (default): average the next-token probabilities; \"max\": per-token maximum, renormalized"),
        ],
        doc: "Models run side by side, their next-token distributions combined; evaluated with `fuse eval` or `:eval`, never saved. Members must share a tokenizer.",
        example: "ensemble(math, code, weight=[0.7, 0.3])",
        how: How::Special(|c, args, span, ctx| c.call_ensemble(args, span, ctx)),
    },
    Native {
        name: "drop",
        rest: None,
        params: &[
            p("model", PKind::Model, Default::Required, "a model or task vector"),
            p("pattern", PKind::Any, Default::Required, "a tensor-name glob (`*`, `?`), or a list of them"),
        ],
        doc: "`model` without the tensors whose names match: to merge models that do not all have them.",
        example: "drop(base, \"pooler.*\")",
        how: How::Bound { required: 2, eval: |c, n, b, _, ctx| c.filter_tensors(n, b, ctx) },
    },
    Native {
        name: "keep",
        rest: None,
        params: &[
            p("model", PKind::Model, Default::Required, "a model or task vector"),
            p("pattern", PKind::Any, Default::Required, "a tensor-name glob (`*`, `?`), or a list of them"),
        ],
        doc: "`model` with only the tensors whose names match.",
        example: "keep(base, [\"embeddings.*\", \"encoder.*\"])",
        how: How::Bound { required: 2, eval: |c, n, b, _, ctx| c.filter_tensors(n, b, ctx) },
    },
    Native {
        name: "resize_vocab",
        rest: None,
        params: &[
            p("model", PKind::Model, Default::Required, "the model to resize"),
            p("like", PKind::Model, Default::Required, "the model whose vocabulary size to take"),
        ],
        doc: "`model` with its embedding and head cut or padded (new rows: the mean row) to `like`'s vocabulary size.",
        example: "resize_vocab(model(\"chat\"), like=base)",
        how: How::Special(|c, args, span, ctx| c.call_resize_vocab(args, span, ctx)),
    },
];

/// The primitives the standard library's methods are written in.
const PRIMITIVES: &[Native] = &[
    Native {
        name: "task_vectors",
        rest: None,
        params: &[p("models", PKind::Tensors, Default::Required, "models (task vectors pass through)"), BASE],
        doc: "Models as task vectors: `m - base`, base being `base=` or else the recipe's binding `base`.",
        example: "task_vectors([a, b], base)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.task_vectors(n, b, span, ctx) },
    },
    Native {
        name: "weighted_sum",
        rest: None,
        params: &[
            p("xs", PKind::Tensors, Default::Required, "models, or task vectors"),
            p("weight", PKind::PerModel, Default::Num(1.0), "weight of each"),
            p("normalize", PKind::Bool, Default::Bool(true), "divide by the sum of the weights"),
        ],
        doc: "sum_i w_i x_i, divided by sum_i w_i when normalizing.",
        example: "weighted_sum([a, b], weight=[0.7, 0.3])",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.weighted_sum(n, b, span, ctx) },
    },
    Native {
        name: "merge_deltas",
        rest: None,
        params: &[
            DELTAS,
            p("weight", PKind::PerModel, Default::Num(1.0), "weight of each task vector"),
            p("elect_sign", PKind::Bool, Default::Bool(false), "keep only entries agreeing with sign(sum_i w_i d_i) (TIES)"),
            p("normalize", PKind::Bool, Default::Bool(false), "divide by the sum of the (agreeing) weights"),
        ],
        doc: "Weighted sum of task vectors; with elect_sign, of the entries that agree with the elected sign.",
        example: "merge_deltas(ds, weight=[1, 1], elect_sign=true)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.merge_deltas(n, b, span, ctx) },
    },
    Native {
        name: "trim_magnitude",
        rest: None,
        params: &[DELTAS, DENSITY, rescale(false)],
        doc: "Keep the `density` fraction of largest magnitudes of each task vector (TIES's trim).",
        example: "trim_magnitude(ds, 0.2)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.sparsify(n, b, span, ctx) },
    },
    Native {
        name: "trim_outliers",
        rest: None,
        params: &[
            DELTAS,
            DENSITY,
            p("gamma", PKind::PerModel, Default::Num(0.01), "fraction of largest magnitudes dropped"),
            rescale(false),
        ],
        doc: "Drop the largest `gamma` and the smallest magnitudes, keeping `density` (Model Breadcrumbs).",
        example: "trim_outliers(ds, 0.9, 0.01)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.sparsify(n, b, span, ctx) },
    },
    Native {
        name: "drop_random",
        rest: None,
        params: &[DELTAS, DENSITY, rescale(true), SEED],
        doc: "Keep each entry with probability `density` (DARE).",
        example: "drop_random(ds, 0.5, seed=1)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.sparsify(n, b, span, ctx) },
    },
    Native {
        name: "drop_della",
        rest: None,
        params: &[
            DELTAS,
            DENSITY,
            p("epsilon", PKind::PerModel, Default::Num(0.15), "spread of keep probabilities around `density`"),
            rescale(true),
            SEED,
        ],
        doc: "Keep with probability ranked by magnitude within each row, from density - epsilon to density + epsilon (DELLA).",
        example: "drop_della(ds, 0.5, 0.1)",
        how: How::Bound { required: 1, eval: |c, n, b, span, ctx| c.sparsify(n, b, span, ctx) },
    },
];

/// The native merge methods (one kernel each).
const METHODS: &[Native] = &[
    Native {
        name: "slerp",
        rest: Some("models"),
        params: &[T],
        doc: "Spherical interpolation of two models, tensor by tensor; linear where they are nearly parallel.",
        example: "slerp(base, chat, t=0.3)",
        how: method(Arity::Exactly(2), BaseUse::Never, false, |c, m, ctx| c.kernel_slerp(m, ctx)),
    },
    Native {
        name: "nuslerp",
        rest: Some("models"),
        params: &[
            p("weight", PKind::PerModel, Default::Required, "relative weight of each model; t = w2 / (w1 + w2)"),
            p("nuslerp_flatten", PKind::Bool, Default::Bool(true), "slerp whole tensors"),
            p("nuslerp_row_wise", PKind::Bool, Default::Bool(false), "without flatten: rows (true) or columns"),
            BASE,
        ],
        doc: "Slerp by relative weights, of whole tensors, rows or columns; with a base, of the task vectors.",
        example: "nuslerp(a, b, weight=[0.7, 0.3])",
        how: method(Arity::Exactly(2), BaseUse::Optional, false, |c, m, ctx| c.kernel_nuslerp(m, ctx)),
    },
    Native {
        name: "multislerp",
        rest: Some("models"),
        params: &[
            p("weight", PKind::PerModel, Default::Required, "weight of each model"),
            p("normalize_weights", PKind::Bool, Default::Bool(true), "divide the weights by their sum"),
            p("eps", PKind::Num, Default::Num(1e-8), "numerical floor"),
            BASE,
        ],
        doc: "Spherical weighted mean of many models; with a base, of their task vectors.",
        example: "multislerp(a, b, c, weight=[1, 2, 1])",
        how: method(Arity::AtLeast(2), BaseUse::Optional, false, |c, m, ctx| c.kernel_multislerp(m, ctx)),
    },
    Native {
        name: "karcher",
        rest: Some("models"),
        params: &[
            p("max_iter", PKind::Num, Default::Num(10.0), "iterations at most"),
            p("tol", PKind::Num, Default::Num(1e-5), "stop when the update is this small"),
        ],
        doc: "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm.",
        example: "karcher(a, b, c)",
        how: method(Arity::AtLeast(2), BaseUse::Never, false, |c, m, ctx| c.kernel_karcher(m, ctx)),
    },
    Native {
        name: "model_stock",
        rest: Some("models"),
        params: &[p("filter_wise", PKind::Bool, Default::Bool(false), "one ratio per row instead of per tensor"), BASE],
        doc: "Model Stock: average the models and move towards the base by their task vectors' agreement.",
        example: "model_stock(a, b, c, base=base)",
        how: method(Arity::AtLeast(2), BaseUse::Required, false, |c, m, ctx| c.kernel_model_stock(m, ctx)),
    },
    Native {
        name: "nearswap",
        rest: Some("models"),
        params: &[p("t", PKind::Num, Default::Required, "similarity threshold")],
        doc: "Take the second model's values where they are within t of the first (the base).",
        example: "nearswap(base, chat, t=0.001)",
        how: method(Arity::Exactly(2), BaseUse::Never, false, |c, m, ctx| c.kernel_nearswap(m, ctx)),
    },
    Native {
        name: "arcee_fusion",
        rest: Some("models"),
        params: &[],
        doc: "Keep the second model's changes where their KL-weighted importance is an outlier.",
        example: "arcee_fusion(base, chat)",
        how: method(Arity::Exactly(2), BaseUse::Never, false, |c, m, ctx| c.kernel_arcee_fusion(m, ctx)),
    },
    Native {
        name: "sce",
        rest: Some("models"),
        params: &[p("select_topk", PKind::Num, Default::Num(1.0), "fraction of highest-variance positions kept"), BASE],
        doc: "SCE: select high-variance positions, elect signs, and weight task vectors by their energy.",
        example: "base + sce(a, b, c, select_topk=0.5)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_sce(m, ctx)),
    },
    Native {
        name: "magmax",
        rest: Some("models"),
        params: &[p("lambda", PKind::Num, Default::Num(1.0), "scale of the merged task vector"), BASE],
        doc: "MagMax (Marczak et al., ECCV 2024): per entry, the task-vector value of largest magnitude.",
        example: "base + magmax(a, b, c)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_magmax(m, ctx)),
    },
    Native {
        name: "iso_c",
        rest: Some("models"),
        params: &[p("lambda", PKind::Num, Default::Num(1.0), "scale of the merged task vector"), BASE],
        doc: "Iso-C (Marczak et al., ICML 2025): the summed task vector with a flat (isotropic) singular spectrum.",
        example: "base + iso_c(a, b, c)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_iso_c(m, ctx)),
    },
    Native {
        name: "tsv_m",
        rest: Some("models"),
        params: &[p("lambda", PKind::Num, Default::Num(1.0), "scale of the merged task vector"), BASE],
        doc: "TSV-M (Gargiulo et al., CVPR 2025): each task vector's top singular vectors, orthogonalized together.",
        example: "base + tsv_m(a, b, c)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_tsv_m(m, ctx)),
    },
    Native {
        name: "iso_cts",
        rest: Some("models"),
        params: &[
            p("lambda", PKind::Num, Default::Num(1.0), "scale of the merged task vector"),
            p("common", PKind::Num, Default::Num(0.8), "fraction of each matrix's rank given to the common subspace"),
            BASE,
        ],
        doc: "Iso-CTS (Marczak et al., ICML 2025): the summed task vector's top directions plus each task's own, orthogonalized, with a flat spectrum.",
        example: "base + iso_cts(a, b, c, common=0.8)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_iso_cts(m, ctx)),
    },
    Native {
        name: "cart",
        rest: Some("models"),
        params: &[
            p("rank", PKind::Num, Default::Num(0.08), "fraction of each deviation's singular triplets kept"),
            p("lambda", PKind::Num, Default::Num(1.0), "scale of the summed low-rank deviations"),
        ],
        doc: "CART (Choi et al., 2024): the models' mean plus the sum of their low-rank deviations from it.",
        example: "cart(a, b, c, rank=0.08)",
        how: method(Arity::AtLeast(2), BaseUse::Never, false, |c, m, ctx| c.kernel_cart(m, ctx)),
    },
    Native {
        name: "ram",
        rest: Some("models"),
        params: &[p("epsilon", PKind::Num, Default::Num(1e-5), "a task-vector entry counts as changed above this magnitude"), BASE],
        doc: "RAM (mergekit): entries one task vector changes keep its value; entries several change take their mean.",
        example: "base + ram(a, b, c)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_ram(m, ctx)),
    },
    Native {
        name: "ramplus_tl",
        rest: Some("models"),
        params: &[
            p("r", PKind::Num, Default::Num(0.1), "strength of the boost of unique entries"),
            p("alpha", PKind::Num, Default::Num(0.2), "cap on the shared-to-unique ratio"),
            p("epsilon", PKind::Num, Default::Num(1e-5), "a task-vector entry counts as changed above this magnitude"),
            BASE,
        ],
        doc: "RAM+ tensor-local (mergekit): RAM with each model's unique entries boosted by how much it shares.",
        example: "base + ramplus_tl(a, b, c, r=0.1, alpha=0.2)",
        how: method(Arity::AtLeast(1), BaseUse::Required, true, |c, m, ctx| c.kernel_ramplus_tl(m, ctx)),
    },
];

/// Every native, in the order people read them: builtins, primitives, methods.
pub fn all() -> impl Iterator<Item = &'static Native> {
    BUILTINS.iter().chain(PRIMITIVES).chain(METHODS)
}

/// The native called `name`.
pub fn native(name: &str) -> Option<&'static Native> {
    all().find(|n| n.name == name)
}

/// The reference page `docs/natives.md`: every native and standard-library
/// function with its signature, defaults and docs, generated from this table
/// (a test keeps the committed page equal to it).
pub fn reference() -> String {
    let mut out = String::from(
        "# Function reference\n\nGenerated from the table of natives (`src/check/natives.rs`) and the standard\n\
         library (`stdlib/merge.fuse`); `FUSE_BLESS=1 cargo test` rewrites it. The language\n\
         itself is described in [language.md](language.md).\n",
    );
    let sections: [(&str, &[Native]); 3] =
        [("Builtins", BUILTINS), ("Primitives", PRIMITIVES), ("Merge methods with a native kernel", METHODS)];
    for (title, natives) in sections {
        out.push_str(&format!("\n## {title}\n"));
        for n in natives {
            out.push_str(&format!("\n### `{}`\n\n{}\n", n.signature(), n.doc));
            if !n.params.is_empty() {
                out.push('\n');
            }
            for p in n.params {
                let default = match p.default {
                    Default::Required => " (required)".to_string(),
                    Default::Absent => String::new(),
                    Default::Num(x) => format!(" (default {})", num(x)),
                    Default::Bool(b) => format!(" (default {b})"),
                };
                out.push_str(&format!("- `{}`{default}: {}\n", p.name, p.doc));
            }
            out.push_str(&format!("\nExample: `{}`\n", n.example));
        }
    }
    out.push_str("\n## Merge methods written in the standard library\n");
    for f in super::stdlib_fns() {
        out.push_str(&format!("\n### `{}`\n\n{}\n", f.signature, f.doc));
    }
    out
}

/// Aliases users coming from papers write (`k` for TIES's density).
pub fn canonical_param(name: &str) -> &str {
    match name {
        "k" => "density",
        other => other,
    }
}
