//! Sentence-transformers module weights (`2_Dense/linear.weight`, see
//! `io/modules.rs`) in a plan: merged by the recipe's expression like any
//! other tensor when every model it reads has the same module tensor, else
//! copied from the origin model with a note. They are not part of the
//! architecture the checker compares, so this is decided here.

use super::{Builder, NodeId, Op};
use crate::ir::{TExpr, TId};
use std::collections::HashMap;

impl Builder<'_> {
    /// The node computing module tensor `name` (shape `shape`) of the value
    /// `expr` whose origin model is `origin`, or a copy of the origin's and
    /// the reason it is not merged.
    pub(super) fn module_tensor(
        &mut self,
        expr: TId,
        origin: usize,
        name: &str,
        shape: &[usize],
    ) -> (NodeId, Option<String>) {
        match self.unmergeable(expr, name, shape) {
            None => {
                let ctx = crate::ir::TensorCtx { name, layer: None, n_layers: 0 };
                (self.lower(expr, &ctx, shape, &mut HashMap::new()), None)
            }
            Some(why) => (self.node(Op::Load { model: origin, tensor: name.to_string() }, shape), Some(why)),
        }
    }

    /// Why `expr` cannot compute module tensor `name`, if it cannot.
    fn unmergeable(&self, expr: TId, name: &str, shape: &[usize]) -> Option<String> {
        match &self.recipe.exprs[expr] {
            TExpr::Load { model } => {
                let ck = &self.recipe.models[*model];
                match ck.tensors.get(name) {
                    Some(t) if t.info.shape == shape => None,
                    Some(t) => Some(format!("it is {:?} in `{}`", t.info.shape, ck.root.display())),
                    None => Some(format!("`{}` has no such module weight", ck.root.display())),
                }
            }
            TExpr::Lin(terms) => terms.iter().find_map(|(_, t)| self.unmergeable(*t, name, shape)),
            TExpr::Kernel { inputs, .. } => inputs.iter().find_map(|t| self.unmergeable(*t, name, shape)),
            TExpr::ResizeVocab { input, .. } => self.unmergeable(*input, name, shape),
            // An adapter holds no module weights: its delta there is zero.
            TExpr::Lora { .. } => None,
            TExpr::Select { .. } | TExpr::Router { .. } => {
                Some("the output's layers were rearranged (`stack`, slices or `moe`)".into())
            }
        }
    }
}
