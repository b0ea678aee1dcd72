//! The abstract syntax tree: what the parser produces and the checker reads.
//! Every node carries the byte span it came from, so any later stage can
//! point a diagnostic at the exact text.

pub use crate::codemap::Span;
use std::fmt;

/// A name as written, with where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A parsed recipe file.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub stmts: Vec<Stmt>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `name = expr`
    Let { name: Ident, value: Expr },
    /// `param name = expr`: a binding the command line may override.
    Param { name: Ident, value: Expr },
    /// `fn name(a, b=default) = expr`
    Fn { name: Ident, params: Vec<FnParam>, body: Expr },
    /// `import "file.fuse"`
    Import { path: String, path_span: Span },
    /// `save(expr, "dir", ...)`, or `save_lora(delta, "dir", rank=r)` when `lora`.
    Save { args: Vec<Arg>, lora: bool },
    /// A bare expression: the recipe's result when it is the last statement.
    Expr(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub default: Option<Expr>,
    /// `..name`: collects the remaining positional arguments into a list.
    pub variadic: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// `x op y` on plain numbers.
    pub fn apply(self, x: f64, y: f64) -> f64 {
        match self {
            BinOp::Add => x + y,
            BinOp::Sub => x - y,
            BinOp::Mul => x * y,
            BinOp::Div => x / y,
        }
    }
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        })
    }
}

/// The element types a checkpoint can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DTypeLit {
    BF16,
    F16,
    F32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Num(f64),
    Str(String),
    Bool(bool),
    /// `none`: an absent optional argument.
    None,
    DType(DTypeLit),
    Ident(String),
    List(Vec<Expr>),
    Neg(Box<Expr>),
    /// Infix operators applied left to right: `a + b * c - d` is
    /// `Chain(a, [(Add, b * c), (Sub, d)])`, itself ((a + (b * c)) - d).
    /// Flat rather than a left-deep tree of pairs, so that a sum of many
    /// terms is one node and no stage recurses once per term.
    Chain(Box<Expr>, Vec<(BinOp, Expr)>),
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Member(Box<Expr>, Ident),
    Index(Box<Expr>, Box<Expr>),
    Slice {
        target: Box<Expr>,
        lo: Option<Box<Expr>>,
        hi: Option<Box<Expr>>,
    },
    Match {
        scrutinee: Box<Expr>,
        arms: Vec<MatchArm>,
    },
}

/// One argument of a call: positional (`name` is None) or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MatchArm {
    pub pattern: Pattern,
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Pattern {
    /// A glob on the tensor name (`*` any run of characters, `?` one).
    Glob(String, Span),
    /// `_`
    Wildcard(Span),
}
