//! The CPU engine: streams each output tensor in chunks.
//!
//! Elementwise work (loads, linear combinations, sign consensus, nearswap)
//! is evaluated chunk by chunk straight from the input files into the
//! output file, so it holds a few chunks per thread whatever the model
//! size, and large tensors are split across threads. Kernels that need
//! whole-tensor statistics (magnitude thresholds, norms, cosines) get them
//! in extra streaming passes first; only the few that need the whole tensor
//! at once (the multi-model spheres, arcee_fusion,
//! iso_c, iso_cts, tsv_m, cart) are
//! materialized, under the memory budget.

use super::kernels::{self, Prepared, Source, TensorInfo, CHUNK};
use super::{Budget, Inputs};
use crate::graph::{NodeId, Op, Plan};
use crate::io::writer::OutputDir;
use rayon::prelude::*;
use std::collections::HashMap;

mod one_read;

/// What is known ahead of the streaming pass: whole tensors and statistics.
#[derive(Default)]
struct State {
    whole: HashMap<NodeId, Vec<f32>>,
    prepared: HashMap<NodeId, Prepared>,
}

/// Computes output tensor `i` of the plan and writes it into `out`: TIES
/// in one read of its inputs (see `one_read.rs`), anything else with the
/// passes its statistics need, then a streaming pass.
pub fn write_output(plan: &Plan, inputs: &Inputs, budget: &Budget, i: usize, out: &OutputDir) -> Result<(), String> {
    if one_read::write(plan, inputs, budget, i, out)? {
        return Ok(());
    }
    write_plain(plan, inputs, budget, i, out)
}

/// Output tensor `i` the plain way: statistics passes, then the streaming
/// pass.
fn write_plain(plan: &Plan, inputs: &Inputs, budget: &Budget, i: usize, out: &OutputDir) -> Result<(), String> {
    let o = &plan.outputs[i];
    let dtype = plan.layout.tensors[i].dtype;
    let slot = plan.layout.slots[i];
    let size = dtype.size() as u64;
    compute(plan, inputs, budget, o.node, &|start, vals| {
        let bytes = crate::io::codec::encode(vals, dtype);
        out.write_at(slot.shard, slot.offset + start as u64 * size, &bytes)
            .map_err(|e| format!("writing `{}`: {e}", o.name))
    })?;
    let numel: u64 = plan.nodes[o.node].shape.iter().product::<usize>() as u64;
    out.start_writeback(slot.shard, slot.offset, numel * size);
    Ok(())
}

/// Receives computed chunks: (index of the first element, values).
pub type Sink<'a> = dyn Fn(usize, &[f32]) -> Result<(), String> + Sync + 'a;

/// Computes node `root` chunk by chunk, handing each chunk (and its first
/// element's index) to `sink`, possibly from several threads at once.
pub fn compute(plan: &Plan, inputs: &Inputs, budget: &Budget, root: NodeId, sink: &Sink<'_>) -> Result<(), String> {
    let numel: usize = plan.nodes[root].shape.iter().product();
    let special = special_nodes(plan, root);
    let need: u64 = special.iter().filter(|&&n| !streams(plan, n)).map(|&n| working_set(plan, n)).sum();
    let _permit = budget.acquire(need);
    let mut st = State::default();
    let mut rest = &special[..];
    while let Some(&n) = rest.first() {
        // Sparsifies side by side (TIES's, Breadcrumbs' or DARE's, one per
        // task vector)
        // share their passes, so what their inputs share is read once a pass.
        let group = side_by_side(plan, rest);
        if group.len() > 1 {
            let ins: Vec<NodeId> = group.iter().map(|&g| kernel_inputs(plan, g)[0]).collect();
            let ks: Vec<_> = group
                .iter()
                .map(|&g| match &plan.nodes[g].op {
                    Op::Kernel { kernel, .. } => kernel,
                    _ => unreachable!("a sparsify"),
                })
                .collect();
            let src = GraphSource { plan, inputs, st: &st, nodes: &ins };
            let names: Vec<String> = group.iter().map(|&g| tensor_name(plan, g)).collect();
            let preps = kernels::prepare_side_by_side(&ks, &names, &src)?;
            st.prepared.extend(group.iter().copied().zip(preps));
            rest = &rest[group.len()..];
            continue;
        }
        rest = &rest[1..];
        if let Op::Router { mode, tensor } = &plan.nodes[n].op {
            let v = super::router(inputs, mode, tensor, &plan.nodes[n].shape)?;
            st.whole.insert(n, v);
            continue;
        }
        let Op::Kernel { kernel, inputs: ins } = &plan.nodes[n].op else { unreachable!() };
        let shape = &plan.nodes[n].shape;
        let name = tensor_name(plan, n);
        let info = TensorInfo { name: &name, shape };
        let src = GraphSource { plan, inputs, st: &st, nodes: ins };
        if streams(plan, n) {
            let prep = kernels::prepare(kernel, &src, &info)?;
            st.prepared.insert(n, prep);
        } else {
            let whole_inputs = (0..ins.len()).map(|k| src.whole(k)).collect::<Result<Vec<_>, _>>()?;
            let v = kernels::whole(kernel, whole_inputs, &info)?;
            st.whole.insert(n, v);
        }
    }
    (0..numel.div_ceil(CHUNK)).into_par_iter().try_for_each(|c| {
        if super::interrupted() {
            return Err("interrupted".to_string());
        }
        let range = c * CHUNK..((c + 1) * CHUNK).min(numel);
        let mut buf = Scratch::take(range.len());
        eval(plan, inputs, &st, root, range.start, &mut buf)?;
        sink(range.start, &buf)
    })
}

/// The streaming sparsifies of one family at the head of `special` (in
/// dependency order) that can be prepared together: same shape, none reads
/// another.
fn side_by_side(plan: &Plan, special: &[NodeId]) -> Vec<NodeId> {
    let family = |n: NodeId| match &plan.nodes[n].op {
        Op::Kernel { kernel, .. } if streams(plan, n) => kernels::family(kernel),
        _ => None,
    };
    let mut group: Vec<NodeId> = Vec::new();
    for &n in special {
        let Some(f) = family(n) else { break };
        let like_first =
            group.first().is_none_or(|&g| family(g) == Some(f) && plan.nodes[g].shape == plan.nodes[n].shape);
        if !like_first || group.iter().any(|&g| reaches(plan, n, g)) {
            break;
        }
        group.push(n);
    }
    group
}

/// Whether `to` is in the subgraph under `from`.
fn reaches(plan: &Plan, from: NodeId, to: NodeId) -> bool {
    let mut stack = vec![from];
    let mut seen = std::collections::HashSet::new();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if seen.insert(n) {
            stack.extend(super::children(&plan.nodes[n].op));
        }
    }
    false
}

fn kernel_inputs(plan: &Plan, n: NodeId) -> &[NodeId] {
    match &plan.nodes[n].op {
        Op::Kernel { inputs, .. } => inputs,
        _ => &[],
    }
}

fn streams(plan: &Plan, n: NodeId) -> bool {
    matches!(&plan.nodes[n].op, Op::Kernel { kernel, .. } if kernels::is_streamable(kernel, &plan.nodes[n].shape))
}

/// The kernels under `root` that need work before streaming (statistics or
/// the whole tensor), in dependency order.
fn special_nodes(plan: &Plan, root: NodeId) -> Vec<NodeId> {
    fn visit(plan: &Plan, n: NodeId, seen: &mut Vec<NodeId>, out: &mut Vec<NodeId>) {
        if seen.contains(&n) {
            return;
        }
        seen.push(n);
        for c in super::children(&plan.nodes[n].op) {
            visit(plan, c, seen, out);
        }
        if matches!(&plan.nodes[n].op, Op::Kernel { kernel, .. } if !kernel.is_elementwise())
            || matches!(plan.nodes[n].op, Op::Router { .. })
        {
            out.push(n);
        }
    }
    let (mut seen, mut out) = (Vec::new(), Vec::new());
    visit(plan, root, &mut seen, &mut out);
    out
}

/// Bytes a materialized node holds while it is computed: its inputs and its
/// result, in f32 (and the SVD methods' factors).
pub fn working_set(plan: &Plan, n: NodeId) -> u64 {
    let numel: u64 = plan.nodes[n].shape.iter().product::<usize>() as u64;
    let inputs = super::children(&plan.nodes[n].op).len() as u64;
    // The SVD methods hold matrix-sized factors besides their inputs and
    // output: Iso-C the sum, U, V and U V^T; TSV-M each task's SVD, the
    // stacked singular vectors, their polar factors and the product;
    // Iso-CTS, in f64 (twice the bytes), the sum's SVD, one residual's, the
    // stacked vectors, their polar factors and the product; CART the mean,
    // the accumulated sum and one deviation's SVD.
    let factors = match &plan.nodes[n].op {
        Op::Kernel { kernel: crate::ir::Kernel::IsoC { .. }, .. } => 5,
        Op::Kernel { kernel: crate::ir::Kernel::TsvM { .. }, .. } => 8,
        Op::Kernel { kernel: crate::ir::Kernel::IsoCts { .. }, .. } => 24,
        Op::Kernel { kernel: crate::ir::Kernel::Cart { .. }, .. } => 6,
        _ => 0,
    };
    (inputs + 1 + factors) * numel * 4
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

/// A kernel's inputs as subgraphs, evaluated on demand from the inputs.
struct GraphSource<'a> {
    plan: &'a Plan,
    inputs: &'a Inputs,
    st: &'a State,
    nodes: &'a [NodeId],
}

impl GraphSource<'_> {
    fn whole(&self, k: usize) -> Result<Vec<f32>, String> {
        let mut v = vec![0f32; self.plan.nodes[self.nodes[k]].shape.iter().product()];
        v.par_chunks_mut(CHUNK).enumerate().try_for_each(|(c, chunk)| self.fill(k, c * CHUNK, chunk))?;
        Ok(v)
    }
}

impl Source for GraphSource<'_> {
    fn len(&self) -> usize {
        self.nodes.first().map_or(0, |&n| self.plan.nodes[n].shape.iter().product())
    }
    fn inputs(&self) -> usize {
        self.nodes.len()
    }
    fn fill(&self, input: usize, start: usize, out: &mut [f32]) -> Result<(), String> {
        eval(self.plan, self.inputs, self.st, self.nodes[input], start, out)
    }
}

/// Evaluates elements `start .. start + out.len()` of node `n` into `out`
/// (`start` a multiple of [`CHUNK`]).
fn eval(plan: &Plan, inputs: &Inputs, st: &State, n: NodeId, start: usize, out: &mut [f32]) -> Result<(), String> {
    if let Some(v) = st.whole.get(&n) {
        out.copy_from_slice(&v[start..start + out.len()]);
        return Ok(());
    }
    match &plan.nodes[n].op {
        Op::Load { model, tensor } => inputs.read(*model, tensor, start, out),
        Op::Lin(terms) => {
            let mut scratch = Scratch::take(out.len());
            for (k, (c, x)) in terms.iter().enumerate() {
                let c = c.get() as f32;
                if k == 0 {
                    eval(plan, inputs, st, *x, start, out)?;
                    if c != 1.0 {
                        scale(out, c);
                    }
                } else if let (Op::Load { model, tensor }, None) = (&plan.nodes[*x].op, st.whole.get(x)) {
                    // Added straight from the read chunk.
                    inputs.read_with(*model, tensor, start, out.len(), |v| add_scaled(out, v, c))?;
                } else {
                    eval(plan, inputs, st, *x, start, &mut scratch)?;
                    add_scaled(out, &scratch, c);
                }
            }
            Ok(())
        }
        Op::Zeros => {
            out.fill(0.0);
            Ok(())
        }
        Op::Router { .. } => unreachable!("routers are computed whole"),
        Op::Kernel { kernel: crate::ir::Kernel::Consensus { weights, elect_sign, normalize }, inputs: ins }
            if ins.iter().all(|c| trim_of(plan, st, *c, start).is_some()) =>
        {
            // The consensus of magnitude trims in one kernel, the trimmed
            // chunks never written out.
            let mut deltas = Vec::with_capacity(ins.len());
            let mut trims = Vec::with_capacity(ins.len());
            for &c in ins {
                let (x, trim) = trim_of(plan, st, c, start).expect("checked");
                let mut b = Scratch::take(out.len());
                eval(plan, inputs, st, x, start, &mut b)?;
                deltas.push(b);
                trims.push(trim);
            }
            let refs: Vec<&[f32]> = deltas.iter().map(|b| &b[..]).collect();
            let weights: Vec<f64> = weights.iter().map(|w| w.get()).collect();
            kernels::consensus_of_trims(&refs, &trims, &weights, *elect_sign, *normalize, out);
            Ok(())
        }
        Op::Kernel { kernel, inputs: ins } => {
            let mut bufs = Vec::with_capacity(ins.len());
            for &c in ins {
                let mut b = Scratch::take(out.len());
                eval(plan, inputs, st, c, start, &mut b)?;
                bufs.push(b);
            }
            let refs: Vec<&[f32]> = bufs.iter().map(|b| &b[..]).collect();
            kernels::apply(kernel, st.prepared.get(&n).unwrap_or(&Prepared::None), start, &refs, out);
            Ok(())
        }
    }
}

/// Node `n` as a magnitude trim of the chunk from `start` that keeps all or
/// none of its entries equal to the threshold: its input and the trim.
fn trim_of(plan: &Plan, st: &State, n: NodeId, start: usize) -> Option<(NodeId, kernels::Trim)> {
    let Op::Kernel { kernel: crate::ir::Kernel::Sparsify { .. }, inputs } = &plan.nodes[n].op else { return None };
    if st.whole.contains_key(&n) {
        return None;
    }
    Some((inputs[0], kernels::chunk_trim(st.prepared.get(&n)?, start)?))
}

/// `out *= c`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn scale(out: &mut [f32], c: f32) {
    out.iter_mut().for_each(|v| *v *= c);
}

/// `out += c x` (`out += x` when `c` is 1).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn add_scaled(out: &mut [f32], x: &[f32], c: f32) {
    if c == 1.0 {
        out.iter_mut().zip(x).for_each(|(o, s)| *o += s);
    } else {
        out.iter_mut().zip(x).for_each(|(o, s)| *o += s * c);
    }
}

/// A chunk-sized buffer from a per-thread pool, returned to it when
/// dropped: the streaming pass needs a few per node and chunk, and fresh
/// ones cost a zeroing (and, at this size, page faults) each time. Its
/// contents are left over from earlier use: every writer fills it whole.
struct Scratch {
    buf: Vec<f32>,
    len: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Scratch {
    fn take(len: usize) -> Scratch {
        let mut buf = POOL.with_borrow_mut(Vec::pop).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Scratch { buf, len }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A few dozen chunks a thread at most: deep graphs nest one per level.
        let buf = std::mem::take(&mut self.buf);
        POOL.with_borrow_mut(|pool| {
            if pool.len() < 64 {
                pool.push(buf)
            }
        });
    }
}
