//! Signatures of the merge methods that are native kernels: parameter
//! names, kinds and defaults as mergekit 0.1.5 names them, how many models
//! they take and what they do with a base. The task-vector family and
//! `linear` are written in the language, in `stdlib/merge.fuse`.

/// How an argument is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PKind {
    /// One number per input model, or one number for all (`weight=[1, 0.5]`).
    PerModel,
    Num,
    Bool,
    /// A model (the `base=` of methods that use one).
    Model,
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

/// Which kernel a method lowers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Slerp,
    NuSlerp,
    MultiSlerp,
    Karcher,
    ModelStock,
    NearSwap,
    ArceeFusion,
    Sce,
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

#[derive(Clone, Copy, Debug)]
pub struct MethodSpec {
    pub name: &'static str,
    pub family: Family,
    pub arity: Arity,
    pub base: BaseUse,
    /// Models become task vectors against the base and the result is a Delta.
    pub task_vectors: bool,
    pub params: &'static [ParamSpec],
    pub doc: &'static str,
    pub example: &'static str,
}

const fn p(name: &'static str, kind: PKind, default: Default, doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind, default, doc }
}

const BASE: ParamSpec = p("base", PKind::Model, Default::Absent, "the base model");
const T: ParamSpec = p("t", PKind::Num, Default::Required, "interpolation factor; 0 gives the first model");

pub const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "slerp",
        family: Family::Slerp,
        arity: Arity::Exactly(2),
        base: BaseUse::Never,
        task_vectors: false,
        params: &[T],
        doc: "Spherical interpolation of two models, tensor by tensor; linear where they are nearly parallel.",
        example: "slerp(base, chat, t=0.3)",
    },
    MethodSpec {
        name: "nuslerp",
        family: Family::NuSlerp,
        arity: Arity::Exactly(2),
        base: BaseUse::Optional,
        task_vectors: false,
        params: &[
            p("weight", PKind::PerModel, Default::Required, "relative weight of each model; t = w2 / (w1 + w2)"),
            p("nuslerp_flatten", PKind::Bool, Default::Bool(true), "slerp whole tensors"),
            p("nuslerp_row_wise", PKind::Bool, Default::Bool(false), "without flatten: rows (true) or columns"),
            BASE,
        ],
        doc: "Slerp by relative weights, of whole tensors, rows or columns; with a base, of the task vectors.",
        example: "nuslerp(a, b, weight=[0.7, 0.3])",
    },
    MethodSpec {
        name: "multislerp",
        family: Family::MultiSlerp,
        arity: Arity::AtLeast(2),
        base: BaseUse::Optional,
        task_vectors: false,
        params: &[
            p("weight", PKind::PerModel, Default::Required, "weight of each model"),
            p("normalize_weights", PKind::Bool, Default::Bool(true), "divide the weights by their sum"),
            p("eps", PKind::Num, Default::Num(1e-8), "numerical floor"),
            BASE,
        ],
        doc: "Spherical weighted mean of many models; with a base, of their task vectors.",
        example: "multislerp(a, b, c, weight=[1, 2, 1])",
    },
    MethodSpec {
        name: "karcher",
        family: Family::Karcher,
        arity: Arity::AtLeast(2),
        base: BaseUse::Never,
        task_vectors: false,
        params: &[
            p("max_iter", PKind::Num, Default::Num(10.0), "iterations at most"),
            p("tol", PKind::Num, Default::Num(1e-5), "stop when the update is this small"),
        ],
        doc: "Riemannian (Karcher) mean of the models' directions, scaled by their mean norm.",
        example: "karcher(a, b, c)",
    },
    MethodSpec {
        name: "model_stock",
        family: Family::ModelStock,
        arity: Arity::AtLeast(2),
        base: BaseUse::Required,
        task_vectors: false,
        params: &[p("filter_wise", PKind::Bool, Default::Bool(false), "one ratio per row instead of per tensor"), BASE],
        doc: "Model Stock: average the models and move towards the base by their task vectors' agreement.",
        example: "model_stock(a, b, c, base=base)",
    },
    MethodSpec {
        name: "nearswap",
        family: Family::NearSwap,
        arity: Arity::Exactly(2),
        base: BaseUse::Never,
        task_vectors: false,
        params: &[p("t", PKind::Num, Default::Required, "similarity threshold")],
        doc: "Take the second model's values where they are within t of the first (the base).",
        example: "nearswap(base, chat, t=0.001)",
    },
    MethodSpec {
        name: "arcee_fusion",
        family: Family::ArceeFusion,
        arity: Arity::Exactly(2),
        base: BaseUse::Never,
        task_vectors: false,
        params: &[],
        doc: "Keep the second model's changes where their KL-weighted importance is an outlier.",
        example: "arcee_fusion(base, chat)",
    },
    MethodSpec {
        name: "sce",
        family: Family::Sce,
        arity: Arity::AtLeast(1),
        base: BaseUse::Required,
        task_vectors: true,
        params: &[p("select_topk", PKind::Num, Default::Num(1.0), "fraction of highest-variance positions kept"), BASE],
        doc: "SCE: select high-variance positions, elect signs, and weight task vectors by their energy.",
        example: "base + sce(a, b, c, select_topk=0.5)",
    },
];

pub fn method(name: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|m| m.name == name)
}

/// Aliases users coming from papers write (`k` for TIES's density).
pub fn canonical_param(name: &str) -> &str {
    match name {
        "k" => "density",
        other => other,
    }
}
