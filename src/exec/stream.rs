//! The CPU engine: streams each output tensor in chunks.
//!
//! Elementwise work (loads, linear combinations) is evaluated chunk by chunk
//! straight from the memory-mapped inputs into the output file, so it holds
//! a few chunks per thread whatever the model size, and large tensors are
//! split across threads. Nodes that need a whole tensor at once (the
//! task-vector merges) are materialized first, under the memory budget.

use super::{kernels, Budget, Inputs};
use crate::graph::{NodeId, Op, Plan};
use crate::io::writer::OutputDir;
use crate::io::DType;
use rayon::prelude::*;
use std::collections::HashMap;

/// Elements per chunk: large enough to amortize dispatch, small enough to
/// stay in cache.
const CHUNK: usize = 1 << 15;

/// Whole tensors computed ahead of the streaming pass.
type Materialized = HashMap<NodeId, Vec<f32>>;

/// Computes output tensor `i` of the plan and writes it into `out`.
pub fn write_output(plan: &Plan, inputs: &Inputs, budget: &Budget, i: usize, out: &OutputDir) -> Result<(), String> {
    let o = &plan.outputs[i];
    let numel: usize = plan.nodes[o.node].shape.iter().product();
    let whole = whole_nodes(plan, o.node);
    let need: u64 = whole.iter().map(|&n| working_set(plan, n)).sum();
    let _permit = budget.acquire(need);
    let mut mat = Materialized::new();
    for n in whole {
        let v = materialize(plan, inputs, &mat, n)?;
        mat.insert(n, v);
    }
    let dtype = plan.layout.tensors[i].dtype;
    let slot = plan.layout.slots[i];
    let size = dtype.size() as u64;
    (0..numel.div_ceil(CHUNK)).into_par_iter().try_for_each(|c| {
        let range = c * CHUNK..((c + 1) * CHUNK).min(numel);
        let mut buf = vec![0f32; range.len()];
        eval(plan, inputs, &mat, o.node, range.start, &mut buf)?;
        let bytes = super::encode(&buf, dtype);
        out.write_at(slot.shard, slot.offset + range.start as u64 * size, &bytes)
            .map_err(|e| format!("writing `{}`: {e}", o.name))
    })?;
    inputs.release(plan, o.node);
    Ok(())
}

/// The nodes under `root` that must be computed whole, in dependency order.
fn whole_nodes(plan: &Plan, root: NodeId) -> Vec<NodeId> {
    fn visit(plan: &Plan, n: NodeId, seen: &mut Vec<NodeId>, out: &mut Vec<NodeId>) {
        if seen.contains(&n) {
            return;
        }
        seen.push(n);
        for c in super::children(&plan.nodes[n].op) {
            visit(plan, c, seen, out);
        }
        if matches!(&plan.nodes[n].op, Op::Kernel { kernel, .. } if !kernel.is_elementwise()) {
            out.push(n);
        }
    }
    let (mut seen, mut out) = (Vec::new(), Vec::new());
    visit(plan, root, &mut seen, &mut out);
    out
}

/// Bytes a whole node holds while it is computed: its inputs and its
/// result, in f32.
pub fn working_set(plan: &Plan, n: NodeId) -> u64 {
    let numel: u64 = plan.nodes[n].shape.iter().product::<usize>() as u64;
    let inputs = super::children(&plan.nodes[n].op).len() as u64;
    (inputs + 1) * numel * 4
}

fn materialize(plan: &Plan, inputs: &Inputs, mat: &Materialized, n: NodeId) -> Result<Vec<f32>, String> {
    let numel: usize = plan.nodes[n].shape.iter().product();
    let whole_input = |c: NodeId| -> Result<Vec<f32>, String> {
        let mut v = vec![0f32; numel];
        v.par_chunks_mut(CHUNK).enumerate().try_for_each(|(i, chunk)| eval(plan, inputs, mat, c, i * CHUNK, chunk))?;
        Ok(v)
    };
    let Op::Kernel { kernel, inputs: ins } = &plan.nodes[n].op else { unreachable!("only kernels are whole") };
    let ins = ins.iter().map(|&c| whole_input(c)).collect::<Result<Vec<_>, _>>()?;
    let name = tensor_name(plan, n);
    kernels::whole(kernel, ins, &kernels::TensorInfo { name: &name, shape: &plan.nodes[n].shape })
}

/// The tensor a node computes a piece of: the name its loads read.
pub fn tensor_name(plan: &Plan, n: NodeId) -> String {
    let mut stack = vec![n];
    while let Some(m) = stack.pop() {
        if let Op::Load { tensor, .. } = &plan.nodes[m].op {
            return tensor.clone();
        }
        stack.extend(super::children(&plan.nodes[m].op));
    }
    String::new()
}

/// Evaluates elements `start .. start + out.len()` of node `n` into `out`.
fn eval(
    plan: &Plan,
    inputs: &Inputs,
    mat: &Materialized,
    n: NodeId,
    start: usize,
    out: &mut [f32],
) -> Result<(), String> {
    if let Some(v) = mat.get(&n) {
        out.copy_from_slice(&v[start..start + out.len()]);
        return Ok(());
    }
    match &plan.nodes[n].op {
        Op::Load { model, tensor } => {
            let (bytes, dtype) = inputs.bytes(plan, *model, tensor)?;
            let size = dtype.size();
            decode(&bytes[start * size..(start + out.len()) * size], dtype, out)
        }
        Op::Lin(terms) => {
            let mut scratch = vec![0f32; out.len()];
            for (k, (c, x)) in terms.iter().enumerate() {
                let c = c.get() as f32;
                if k == 0 {
                    eval(plan, inputs, mat, *x, start, out)?;
                    if c != 1.0 {
                        out.iter_mut().for_each(|v| *v *= c);
                    }
                } else {
                    eval(plan, inputs, mat, *x, start, &mut scratch)?;
                    if c == 1.0 {
                        out.iter_mut().zip(&scratch).for_each(|(o, s)| *o += s);
                    } else {
                        out.iter_mut().zip(&scratch).for_each(|(o, s)| *o += s * c);
                    }
                }
            }
            Ok(())
        }
        Op::Kernel { kernel, inputs: ins } => {
            let mut bufs = Vec::with_capacity(ins.len());
            for &c in ins {
                let mut b = vec![0f32; out.len()];
                eval(plan, inputs, mat, c, start, &mut b)?;
                bufs.push(b);
            }
            let refs: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
            kernels::chunk(kernel, &refs, out);
            Ok(())
        }
    }
}

/// Little-endian `dtype` bytes to f32.
fn decode(bytes: &[u8], dtype: DType, out: &mut [f32]) -> Result<(), String> {
    match dtype {
        DType::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::BF16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        DType::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::F64 => out
            .iter_mut()
            .zip(bytes.chunks_exact(8))
            .for_each(|(o, b)| *o = f64::from_le_bytes(b.try_into().unwrap()) as f32),
        other => return Err(format!("{other} tensors cannot be merged")),
    }
    Ok(())
}
