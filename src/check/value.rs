//! The values a recipe evaluates to while it is checked. Tensor-valued ones
//! are symbolic ([`TExpr`] nodes over models, see `crate::ir`) and carry
//! their architecture; numbers may vary per tensor ([`Sched`]). Nothing here
//! holds weights.

use crate::codemap::{FileId, Span};
use crate::io::DType;
pub use crate::ir::{human_count, Arch, Sched, TExpr, TId, TVal, TensorCtx, TensorSig};
use std::sync::Arc;

/// Model or task vector, once a weighted sum has been settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Model,
    Delta,
}

/// A function value: a builtin by name, or a `fn` of the recipe.
#[derive(Clone, Debug)]
pub enum Func {
    Builtin(&'static str),
    User(Arc<UserFn>),
}

#[derive(Debug)]
pub struct UserFn {
    pub name: String,
    pub params: Vec<crate::syntax::FnParam>,
    pub body: crate::syntax::Expr,
    pub file: FileId,
    pub span: Span,
}

/// A value during checking.
#[derive(Clone, Debug)]
pub enum Value {
    Num(Sched),
    Bool(bool),
    Str(String),
    DType(DType),
    List(Vec<Value>),
    Tensor(TVal),
    /// `ensemble(...)`: evaluated, never saved (see `crate::ir::Ensemble`).
    Ensemble(Arc<crate::ir::Ensemble>),
    Func(Func),
    /// The `tensor` binding: the name of the tensor being computed.
    TensorName,
    /// `none`: an optional argument left out.
    None,
    /// An error was already reported for this value; uses stay quiet.
    Poison,
}

impl Value {
    /// The type's name as users read it in diagnostics.
    pub fn type_name(&self) -> String {
        match self {
            Value::Num(_) => "Num".into(),
            Value::Bool(_) => "Bool".into(),
            Value::Str(_) => "Str".into(),
            Value::DType(_) => "DType".into(),
            Value::List(items) => match items.first() {
                Some(v) => format!("[{}]", v.type_name()),
                None => "[]".into(),
            },
            Value::Tensor(t) if t.arch.slice_of.is_some() => "Layers".into(),
            Value::Tensor(t) => match t.weight.as_const() {
                Some(w) if (w - 1.0).abs() < 1e-9 => "Model".into(),
                Some(w) if w.abs() < 1e-9 => "Delta".into(),
                _ => "a weighted sum of models".into(),
            },
            Value::Ensemble(_) => "Ensemble".into(),
            Value::Func(_) => "a function".into(),
            Value::TensorName => "the tensor name".into(),
            Value::None => "none".into(),
            Value::Poison => "an erroneous value".into(),
        }
    }
}
