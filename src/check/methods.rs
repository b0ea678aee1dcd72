//! The merge methods' signatures: parameter names, kinds and defaults, as
//! mergekit 0.1.5 names them, so that recipes port one to one.

/// How an argument is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PKind {
    /// One number per input model, or one number for all (`weight=[1, 0.5]`).
    PerModel,
    Num,
    Bool,
    /// A model (the `base=` of task-vector methods).
    Model,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    Num(f64),
    Bool(bool),
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

/// Which computation a method lowers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Linear,
    TaskArithmetic,
    Ties,
}

#[derive(Clone, Copy, Debug)]
pub struct MethodSpec {
    pub name: &'static str,
    pub family: Family,
    /// Takes task vectors (models are turned into `model - base`) and returns a Delta.
    pub task_vectors: bool,
    pub min_inputs: usize,
    pub params: &'static [ParamSpec],
    pub doc: &'static str,
}

const fn p(name: &'static str, kind: PKind, default: Default, doc: &'static str) -> ParamSpec {
    ParamSpec { name, kind, default, doc }
}

const BASE: ParamSpec =
    p("base", PKind::Model, Default::Absent, "the model task vectors are taken against (default: the binding `base`)");
const WEIGHT: ParamSpec = p("weight", PKind::PerModel, Default::Num(1.0), "weight of each input");
const LAMBDA: ParamSpec = p("lambda", PKind::Num, Default::Num(1.0), "scale of the merged task vector");

pub const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "linear",
        family: Family::Linear,
        task_vectors: false,
        min_inputs: 1,
        params: &[WEIGHT, p("normalize", PKind::Bool, Default::Bool(true), "divide by the sum of the weights")],
        doc: "Weighted average of models (or of task vectors): sum_i w_i x_i / sum_i w_i.",
    },
    MethodSpec {
        name: "task_arithmetic",
        family: Family::TaskArithmetic,
        task_vectors: true,
        min_inputs: 1,
        params: &[WEIGHT, p("normalize", PKind::Bool, Default::Bool(false), "divide by the sum of the weights"), LAMBDA, BASE],
        doc: "Weighted sum of task vectors, times lambda: lambda * sum_i w_i (m_i - base).",
    },
    MethodSpec {
        name: "ties",
        family: Family::Ties,
        task_vectors: true,
        min_inputs: 1,
        params: &[
            WEIGHT,
            p("density", PKind::PerModel, Default::Num(1.0), "fraction of each task vector kept, by magnitude (alias `k`)"),
            p("normalize", PKind::Bool, Default::Bool(true), "divide by the sum of the weights that agree with the elected sign"),
            LAMBDA,
            BASE,
        ],
        doc: "TIES-merging: trim each task vector to its largest-magnitude entries, elect a sign per entry, and average the agreeing entries.",
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
