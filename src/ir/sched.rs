//! Numbers that may vary per tensor: constants, `depth`, `layer`,
//! `over_layers(...)` gradients and `match tensor` globs. The checker builds
//! them; lowering evaluates them for each tensor name.

use crate::syntax::BinOp;

/// A number that may depend on the tensor it is used for.
#[derive(Clone, Debug, PartialEq)]
pub enum Sched {
    Const(f64),
    /// `layer / (n_layers - 1)`, 0 outside the layer stack.
    Depth,
    /// The layer index, 0 outside the layer stack.
    Layer,
    /// mergekit's gradient: piecewise linear in depth through the values.
    OverLayers(Vec<Sched>),
    /// `match tensor { "glob" => a, ..., _ => d }`: the first matching glob wins.
    Match(Vec<(String, Sched)>, Box<Sched>),
    /// Operators applied left to right: `Fold(a, [(+, b), (*, c)])` is
    /// `(a + b) * c`. One flat node, so that a long sum never nests deeply.
    Fold(Box<Sched>, Vec<(BinOp, Sched)>),
    Neg(Box<Sched>),
    /// `a / b`, or the fallback where `|b| < 1e-6` (nuslerp's weight ratio).
    Ratio(Box<Sched>, Box<Sched>, f64),
}

/// What a per-tensor number is evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct TensorCtx<'a> {
    pub name: &'a str,
    pub layer: Option<usize>,
    pub n_layers: usize,
}

impl TensorCtx<'_> {
    pub fn depth(&self) -> f64 {
        match self.layer {
            Some(l) if self.n_layers > 1 => l as f64 / (self.n_layers - 1) as f64,
            Some(_) => 1.0,
            None => 0.0,
        }
    }
}

impl Sched {
    pub fn as_const(&self) -> Option<f64> {
        match self {
            Sched::Const(c) => Some(*c),
            _ => None,
        }
    }

    /// Folds constants so that plain arithmetic stays a plain number, and
    /// extends a fold on the left in place (a long sum costs no copying).
    pub fn bin(op: BinOp, a: Sched, b: Sched) -> Sched {
        match (a, b) {
            (Sched::Const(x), Sched::Const(y)) => Sched::Const(op.apply(x, y)),
            (Sched::Fold(first, mut rest), b) => {
                rest.push((op, b));
                Sched::Fold(first, rest)
            }
            (a, b) => Sched::Fold(Box::new(a), vec![(op, b)]),
        }
    }

    pub fn negate(a: Sched) -> Sched {
        match a {
            Sched::Const(c) => Sched::Const(-c),
            other => Sched::Neg(Box::new(other)),
        }
    }

    pub fn eval(&self, ctx: &TensorCtx) -> f64 {
        match self {
            Sched::Const(c) => *c,
            Sched::Depth => ctx.depth(),
            Sched::Layer => ctx.layer.unwrap_or(0) as f64,
            Sched::OverLayers(vals) => {
                let t = ctx.depth();
                let m = vals.len();
                if m == 1 {
                    return vals[0].eval(ctx);
                }
                let x = t * (m - 1) as f64;
                let i = (x.floor() as usize).min(m - 2);
                let frac = x - i as f64;
                let (a, b) = (vals[i].eval(ctx), vals[i + 1].eval(ctx));
                a + (b - a) * frac
            }
            Sched::Match(arms, default) => {
                arms.iter().find(|(g, _)| glob_match(g, ctx.name)).map_or(&**default, |(_, v)| v).eval(ctx)
            }
            Sched::Fold(first, rest) => rest.iter().fold(first.eval(ctx), |x, (op, b)| op.apply(x, b.eval(ctx))),
            Sched::Neg(a) => -a.eval(ctx),
            Sched::Ratio(a, b, fallback) => {
                let d = b.eval(ctx);
                if d.abs() < 1e-6 {
                    *fallback
                } else {
                    a.eval(ctx) / d
                }
            }
        }
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*self_attn*", "model.layers.0.self_attn.q_proj.weight"));
        assert!(!glob_match("*mlp*", "model.layers.0.self_attn.q_proj.weight"));
        assert!(glob_match("model.layers.?.mlp*", "model.layers.3.mlp.up_proj.weight"));
        assert!(glob_match("lm_head.weight", "lm_head.weight"));
    }

    #[test]
    fn gradients_follow_mergekit() {
        let g = Sched::OverLayers(vec![Sched::Const(0.0), Sched::Const(0.5), Sched::Const(1.0)]);
        let at = |layer| g.eval(&TensorCtx { name: "x", layer, n_layers: 5 });
        assert_eq!(at(None), 0.0);
        assert_eq!(at(Some(0)), 0.0);
        assert!((at(Some(1)) - 0.25).abs() < 1e-12);
        assert_eq!(at(Some(4)), 1.0);
    }
}
