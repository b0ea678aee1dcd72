//! TIES in one read of its inputs.
//!
//! A magnitude trim needs its threshold, a whole-tensor statistic, before it
//! can trim a chunk; read plainly, that costs a pass over the inputs to
//! select and another to stream. Here one pass does both:
//!
//! 1. A sample (pieces spread over the tensor) gives each trim an interval `[lo, hi]` of
//!    magnitude keys that holds its threshold (as in the selection's
//!    guided pass, `kernels::select::Guide`).
//! 2. One pass reads every chunk once. It tallies the selection, and it
//!    computes and writes the output as if each trim kept the keys above
//!    `hi` and dropped those below `lo`, which is what the final threshold
//!    does to them. The entries where some trim's key lies in `[lo, hi]`
//!    (a few percent) are undecided: their positions and the input values
//!    there are kept.
//! 3. Once the thresholds are known, the undecided entries are computed
//!    again from the kept values, in index order per chunk (so entries equal
//!    to a threshold are kept while the chunk's budget lasts, as in the
//!    plain pass), and written over the provisional ones.
//!
//! The bytes are those of the plain two-pass evaluation: every entry goes
//! through the same operations. When the sample misleads, the kept values
//! outgrow their bound, or an input is not finite, the tensor is computed
//! again the plain way.

use super::{add_scaled, kernel_inputs, scale, side_by_side, special_nodes, write_plain, GraphSource, Scratch, State};
use crate::exec::kernels::{self, Guide, PassCounts, Prepared, Tally, Term, TiesPass, CHUNK, MAX_LEAVES};
use crate::exec::{Budget, Inputs};
use crate::graph::{NodeId, Op, Plan};
use crate::io::writer::OutputDir;
use crate::io::DType;
use crate::ir::Kernel;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Bytes of undecided entries' values a tensor may keep (counted against
/// the run's memory budget, and [`IN_FLIGHT`]); past it, the tensor is
/// computed the plain way.
const KEPT_LIMIT: u64 = 32 << 20;

/// What the tensors written in one read at once may hold, kept entries and
/// held bytes, whatever the run's budget: resident memory stays flat.
static IN_FLIGHT: Budget = Budget::new(48 << 20);

/// Output bytes of a tensor held in memory until patched, rather than
/// written and read back.
const HOLD_LIMIT: u64 = 8 << 20;

/// Tensors of fewer chunks take the plain passes: their sample would be a
/// large part of them.
const MIN_CHUNKS: usize = 4;

/// Writes output tensor `i` in one read of its inputs when it is magnitude
/// trims under elementwise work (TIES); `false` when it is not, for the
/// plain evaluation. `FUSE_TRACE=1` tells, tensor by tensor, which way each
/// went.
pub(super) fn write(plan: &Plan, inputs: &Inputs, budget: &Budget, i: usize, out: &OutputDir) -> Result<bool, String> {
    let o = &plan.outputs[i];
    let dtype = plan.layout.tensors[i].dtype;
    let numel: usize = plan.nodes[o.node].shape.iter().product();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || numel.div_ceil(CHUNK) < MIN_CHUNKS {
        return Ok(false);
    }
    let Some(shape) = Shape::of(plan, inputs, o.node) else { return Ok(false) };
    let trace = |what: &str| {
        if std::env::var_os("FUSE_TRACE").is_some() {
            eprintln!("one read: `{}`: {what}", o.name);
        }
    };
    match one_read(plan, inputs, budget, i, out, &shape)? {
        Outcome::Done(undecided, fused) => {
            let how = if fused { " in one loop" } else { "" };
            trace(&format!("{undecided} of {numel} entries undecided, patched{how}"));
            Ok(true)
        }
        Outcome::Plain(why) => {
            trace(&format!("plain passes: {why}"));
            write_plain(plan, inputs, budget, i, out)?;
            Ok(true)
        }
    }
}

/// How a one-read attempt ended: written, with so many entries patched
/// (and whether the pass ran in one loop), or left to the plain passes
/// (why), whatever it wrote to be written over.
enum Outcome {
    Done(usize, bool),
    Plain(String),
}

/// The attempt itself: the sample, the pass and the patch.
fn one_read(
    plan: &Plan,
    inputs: &Inputs,
    budget: &Budget,
    i: usize,
    out: &OutputDir,
    shape: &Shape,
) -> Result<Outcome, String> {
    let o = &plan.outputs[i];
    let dtype = plan.layout.tensors[i].dtype;
    let root = o.node;
    let numel: usize = plan.nodes[root].shape.iter().product();
    let chunks = numel.div_ceil(CHUNK);
    let size = dtype.size() as u64;
    // 1. The sample, and what it predicts the undecided entries will hold.
    // The selections' members: each trim's ranks (one for a magnitude
    // trim, a window's two ends), in the trims' order.
    let members: Vec<(usize, usize)> =
        shape.selected.iter().enumerate().flat_map(|(t, s)| s.ranks(numel).into_iter().map(move |k| (t, k))).collect();
    let ks: Vec<usize> = members.iter().map(|m| m.1).collect();
    let xs: Vec<NodeId> = shape.selected.iter().map(|s| s.input).collect();
    let empty = State::default();
    let src = GraphSource { plan, inputs, st: &empty, nodes: &xs };
    let of_member: Vec<usize> = members.iter().map(|m| m.0).collect();
    let guide = Guide::of_kth(&src, &of_member, &ks, &sample(numel))?;
    let ends: Vec<(u32, u32)> = (0..members.len()).map(|j| guide.interval(j)).collect();
    let decided: f64 = (0..members.len()).map(|j| 1.0 - guide.share(j)).product();
    // What the undecided entries hold, and the keys strictly inside the
    // intervals that the tallies keep (4 bytes each), as the sample
    // predicts them.
    let keys: f64 = (0..members.len()).map(|j| guide.share(j)).sum::<f64>() * numel as f64 * 4.0;
    let predicted = (1.0 - decided) * numel as f64 * shape.bytes_per_entry() as f64 + keys;
    // What they may hold: the prediction and a margin, within a share of
    // the run's budget; and the held bytes of a small tensor.
    let limit = (predicted * 1.5) as u64 + (64 << 10);
    if limit > KEPT_LIMIT.min(budget.cap() / 4) {
        let kb = predicted / 1024.0;
        return Ok(Outcome::Plain(format!("about {kb:.0} KB of undecided entries and their keys expected")));
    }
    let bytes = numel as u64 * size;
    let need = limit + if bytes <= HOLD_LIMIT { bytes } else { 0 };
    let Some(_permits) = budget.try_acquire(need).zip(IN_FLIGHT.try_acquire(need)) else {
        return Ok(Outcome::Plain("no memory free for undecided entries".into()));
    };
    // A small tensor's provisional bytes are held, and written once patched;
    // a larger one's are written, and read back to be patched.
    let slot = plan.layout.slots[i];
    let at = |c: usize| slot.offset + (c * CHUNK) as u64 * size;
    let write_bytes = |c: usize, bytes: &[u8]| {
        out.write_at(slot.shard, at(c), bytes).map_err(|e| format!("writing `{}`: {e}", o.name))
    };
    let held: Vec<Mutex<Vec<u8>>> = match numel as u64 * size <= HOLD_LIMIT {
        true => (0..chunks).map(|_| Mutex::new(Vec::new())).collect(),
        false => Vec::new(),
    };
    let write = |c: usize, vals: &[f32]| {
        let bytes = crate::io::codec::encode(vals, dtype);
        match held.get(c) {
            Some(h) => {
                *h.lock().unwrap() = bytes;
                Ok(())
            }
            None => write_bytes(c, &bytes),
        }
    };
    let write_bf16 = |c: usize, bits: &[u16]| {
        // SAFETY: the bytes of the u16 slice; the fused pass runs only on
        // little-endian targets, so they are the stored bf16 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(bits.as_ptr().cast::<u8>(), bits.len() * 2) };
        match held.get(c) {
            Some(h) => {
                *h.lock().unwrap() = bytes.to_vec();
                Ok(())
            }
            None => write_bytes(c, bytes),
        }
    };
    // 2. The pass, the trims keeping the keys above `hi` for now: in one
    // loop when the output is TIES's usual shape over bf16.
    let fused = Fused::of(plan, shape, root, dtype, &ends);
    let mut provisional = State::default();
    provisional.prepared.extend(shape.fixed());
    let mut first = 0;
    for s in &shape.selected {
        let m = s.ranks(numel).len();
        provisional.prepared.insert(s.node, s.provisional(&ends[first..first + m], chunks));
        first += m;
    }
    let kept_bytes = AtomicU64::new(0);
    let overflow = AtomicBool::new(false);
    let blocks = (rayon::current_num_threads() * 4).max(1);
    let per_block = chunks.div_ceil(blocks).max(1);
    let results = Mutex::new(Vec::new());
    // Keeps a chunk's undecided entries, counting them and the keys its
    // tally kept against the bound; past it, nothing more is kept.
    let keep = |chunk: Kept, keys: usize, kept: &mut Vec<Kept>| {
        let bytes = chunk.bytes() + 4 * keys as u64;
        if kept_bytes.fetch_add(bytes, Relaxed) + bytes > limit {
            overflow.store(true, Relaxed);
            *kept = Vec::new();
        } else {
            kept.push(chunk);
        }
    };
    (0..chunks.div_ceil(per_block)).into_par_iter().try_for_each(|blk| -> Result<(), String> {
        let mut tally = guide.tally((per_block * CHUNK).min(numel));
        let mut kept = Vec::new();
        let mut marks = vec![0u16; CHUNK / 16];
        let mut raw = match &fused {
            Some(_) => vec![vec![0u16; CHUNK]; shape.leaves.len() + 1],
            None => Vec::new(),
        };
        for c in blk * per_block..((blk + 1) * per_block).min(chunks) {
            if crate::exec::interrupted() {
                return Err("interrupted".to_string());
            }
            // Past the bound, the plain passes write the tensor again.
            if overflow.load(Relaxed) {
                break;
            }
            let range = c * CHUNK..((c + 1) * CHUNK).min(numel);
            let len = range.len();
            let marks = &mut marks[..len.div_ceil(16)];
            marks.fill(0);
            if let Some(f) = &fused {
                // The whole pass in one loop over the stored bits.
                let (out16, leaves) = raw.split_last_mut().expect("an output buffer");
                for (leaf, b) in shape.leaves.iter().zip(leaves.iter_mut()) {
                    inputs.read_bf16(leaf.model, &leaf.tensor, range.start, &mut b[..len])?;
                }
                let leaves: Vec<&[u16]> = leaves.iter().map(|b| &b[..len]).collect();
                let counts = f.run(&leaves, marks, &mut out16[..len]);
                write_bf16(c, &out16[..len])?;
                let chunk = Kept::gather_bits(c, marks, &leaves);
                // The marked entries' keys complete the tally.
                let memo = chunk.memo(shape);
                let mut keys = 0;
                for (j, &(above, non_finite)) in counts.iter().enumerate() {
                    let (a, c0, b, c1) = f.task_vector(of_member[j]);
                    let vals = |l: usize| memo.get(shape.leaves[l].node).expect("every leaf kept");
                    let sum = kernels::Sum { a: vals(a), c0, b: vals(b), c1 };
                    keys += tally.record_marked(j, c, above, non_finite, &sum);
                }
                keep(chunk, keys, &mut kept);
                continue;
            }
            let mut memo = Memo::default();
            for leaf in &shape.leaves {
                let mut b = Scratch::take(len);
                inputs.read_fresh(leaf.model, &leaf.tensor, range.start, &mut b)?;
                memo.put(leaf.node, b);
            }
            // Other loads of a tensor read above (none when the graph shares
            // its loads, as it does) get copies.
            for &(node, l) in &shape.leaf_of {
                if node != shape.leaves[l].node {
                    let mut b = Scratch::take(len);
                    b.copy_from_slice(memo.get(shape.leaves[l].node).expect("read above"));
                    memo.put(node, b);
                }
            }
            let mut keys = 0;
            for (j, &(t, _)) in members.iter().enumerate() {
                let s = &shape.selected[t];
                // A task vector (a fine-tune less its base) is scanned as it
                // is made, never written out; other inputs are computed.
                if let Some(sum) = sum_of(plan, s.input, &memo) {
                    keys += tally.scan_sum_marking(j, c, &sum, marks);
                    continue;
                }
                if let Some(x) = memo.get(s.input) {
                    // A window's second end: its input computed above.
                    keys += tally.scan_marking(j, c, as_bits(x), marks);
                    continue;
                }
                let mut x = Scratch::take(len);
                eval_memo(plan, &empty, s.input, range.start, &memo, &mut x);
                keys += tally.scan_marking(j, c, as_bits(&x), marks);
                memo.put(s.input, x);
            }
            let mut vals = Scratch::take(len);
            eval_memo(plan, &provisional, root, range.start, &memo, &mut vals);
            write(c, &vals)?;
            keep(Kept::gather(c, marks, shape, &memo), keys, &mut kept);
        }
        results.lock().unwrap().push((tally, kept));
        Ok(())
    })?;
    let (tallies, kept): (Vec<Tally>, Vec<Vec<Kept>>) = results.into_inner().unwrap().into_iter().unzip();
    if overflow.load(Relaxed) {
        return Ok(Outcome::Plain(format!("undecided entries past {} KB", limit / 1024)));
    }
    // 3. The thresholds, and the undecided entries written again.
    let mut fin = State::default();
    fin.prepared.extend(shape.fixed());
    let mut sels = guide.selections(tallies).into_iter();
    for s in &shape.selected {
        let sel: Option<Vec<_>> = sels.by_ref().take(s.ranks(numel).len()).collect();
        match sel.and_then(|sel| s.prepared(numel, sel)) {
            Some(p) => fin.prepared.insert(s.node, p),
            None => return Ok(Outcome::Plain("a threshold outside its interval, or an input not finite".into())),
        };
    }
    let mut patched = vec![false; held.len()];
    for k in kept.iter().flatten() {
        if let Some(p) = patched.get_mut(k.chunk) {
            *p = true;
        }
    }
    kept.par_iter().flatten().try_for_each(|k| -> Result<(), String> {
        let memo = k.memo(shape);
        let mut vals = Scratch::take(k.pos.len());
        eval_memo(plan, &fin, root, k.chunk * CHUNK, &memo, &mut vals);
        let encoded = crate::io::codec::encode(&vals, dtype);
        let patch = |bytes: &mut [u8]| match size {
            // A fixed size, so each entry is one store rather than a call.
            2 => scatter::<2>(bytes, &k.pos, &encoded),
            4 => scatter::<4>(bytes, &k.pos, &encoded),
            s => {
                let s = s as usize;
                for (&p, v) in k.pos.iter().zip(encoded.chunks_exact(s)) {
                    bytes[p as usize * s..(p as usize + 1) * s].copy_from_slice(v);
                }
            }
        };
        if let Some(h) = held.get(k.chunk) {
            let mut bytes = h.lock().unwrap();
            patch(&mut bytes);
            return write_bytes(k.chunk, &bytes);
        }
        let len = CHUNK.min(numel - k.chunk * CHUNK);
        let mut bytes = vec![0u8; len * size as usize];
        out.read_at(slot.shard, at(k.chunk), &mut bytes).map_err(|e| format!("reading back `{}`: {e}", o.name))?;
        patch(&mut bytes);
        write_bytes(k.chunk, &bytes)
    })?;
    held.par_iter()
        .enumerate()
        .filter(|&(c, _)| !patched[c])
        .try_for_each(|(c, h)| write_bytes(c, &h.lock().unwrap()))?;
    out.start_writeback(slot.shard, slot.offset, numel as u64 * size);
    Ok(Outcome::Done(kept.iter().flatten().map(|k| k.pos.len()).sum(), fused.is_some()))
}

/// Entries read for the sample: a 32nd of the tensor, between 32K and
/// 256K (at most an eighth of it), in at least [`PIECES`] pieces spread
/// evenly, of 256 to 4096 entries. Pieces rather than whole chunks, and
/// many of them, because neighbouring entries resemble each other: a
/// fine-tune changes some rows much more than others, and a few long pieces
/// of a small tensor misplace its thresholds.
fn sample(n: usize) -> Vec<std::ops::Range<usize>> {
    let total = (n / 32).clamp(1 << 15, 1 << 18).min(n / 8);
    let piece = (total / PIECES).clamp(256, 4096);
    let pieces = (total / piece).max(1);
    (0..pieces).map(|i| (2 * i + 1) * n / (2 * pieces)).map(|s| s..(s + piece).min(n)).collect()
}

/// Pieces a sample is read in, at least (when the tensor is large enough).
const PIECES: usize = 16;

/// What an output tensor must be to be written in one read.
struct Shape {
    /// The trims that select, in the order of their side-by-side group.
    selected: Vec<Trim>,
    /// The trims that keep everything or nothing.
    others: Vec<(NodeId, Prepared)>,
    /// The loads under the output, one per tensor read; `leaf_of` maps
    /// every load node to its index here.
    leaves: Vec<Leaf>,
    leaf_of: Vec<(NodeId, usize)>,
}

/// A tensor the output reads.
struct Leaf {
    model: usize,
    tensor: String,
    /// The first load node that reads it.
    node: NodeId,
    /// Whether it is read from bf16 (so its values' low halves are zero).
    bf16: bool,
}

/// A trim that needs thresholds: a magnitude trim (TIES) or an outlier
/// window (Breadcrumbs), without rescale.
struct Trim {
    node: NodeId,
    input: NodeId,
    how: How,
}

#[derive(Clone, Copy)]
enum How {
    /// Keep the entries of the largest magnitudes, this share of them.
    Magnitude(f64),
    /// Drop the `bottom` smallest magnitudes, keep the `keep` above them.
    Window((usize, usize)),
}

impl Trim {
    /// The ranks (k-th largest magnitude of `n`) it selects: one for a
    /// magnitude trim, a window's two ends.
    fn ranks(&self, n: usize) -> Vec<usize> {
        match self.how {
            How::Magnitude(density) => vec![((density * n as f64) as usize).clamp(1, n)],
            How::Window(w) => kernels::window_ranks(n, w).to_vec(),
        }
    }

    /// What it keeps while its thresholds are unknown, from its members'
    /// intervals `ends`: the keys above the interval (magnitude), or
    /// between the two (window); keys at the intervals' ends are marked, so
    /// dropped for now.
    fn provisional(&self, ends: &[(u32, u32)], chunks: usize) -> Prepared {
        match self.how {
            How::Magnitude(_) => {
                Prepared::Magnitude { threshold: f32::from_bits(ends[0].1), equal_budget: Vec::new(), scale: 1.0 }
            }
            How::Window(_) => Prepared::Outliers {
                lo: ends[0].1,
                hi: ends[1].0,
                skip: usize::MAX,
                allow: 0,
                per_chunk: vec![(usize::MAX, 0); chunks],
                scale: None,
            },
        }
    }

    /// Its statistics from its members' selections; `None` when they need
    /// a pass.
    fn prepared(&self, n: usize, sels: Vec<kernels::Selection>) -> Option<Prepared> {
        match (self.how, &sels[..]) {
            (How::Magnitude(_), [sel]) => kernels::magnitude_without_pass(self.ranks(n)[0], sel.clone()),
            (How::Window(w), [lo, hi]) => kernels::window_without_pass(n, w, lo, hi),
            _ => None,
        }
    }
}

impl Shape {
    /// The shape of `root` when its only whole-tensor statistics are one
    /// side-by-side group of magnitude trims without rescale, and
    /// everything else under it is loads, linear combinations and kernels
    /// that work entry by entry whatever the entry's index.
    fn of(plan: &Plan, inputs: &Inputs, root: NodeId) -> Option<Shape> {
        use crate::ir::{Kernel, Sparsify};
        let special = special_nodes(plan, root);
        let group = side_by_side(plan, &special);
        if group.is_empty() || group.len() != special.len() {
            return None;
        }
        let n: usize = plan.nodes[root].shape.iter().product();
        let (mut selected, mut others) = (Vec::new(), Vec::new());
        for &g in &group {
            let Op::Kernel { kernel: Kernel::Sparsify { how, rescale: false, .. }, .. } = &plan.nodes[g].op else {
                return None;
            };
            let input = kernel_inputs(plan, g)[0];
            match how {
                Sparsify::Magnitude { density } => match density.get() {
                    d if d >= 1.0 => others.push((g, Prepared::None)),
                    d if d <= 0.0 => others.push((g, Prepared::Zero)),
                    d => selected.push(Trim { node: g, input, how: How::Magnitude(d) }),
                },
                Sparsify::Outliers { density, gamma } => match kernels::outlier_window(n, density.get(), gamma.get()) {
                    // More than all of them: the plain passes say so.
                    (bottom, keep) if bottom + keep > n => return None,
                    (_, 0) => others.push((g, Prepared::Zero)),
                    (_, keep) if keep == n => others.push((g, Prepared::None)),
                    w => selected.push(Trim { node: g, input, how: How::Window(w) }),
                },
                _ => return None,
            }
        }
        if selected.is_empty() {
            return None;
        }
        let (mut leaves, mut leaf_of) = (Vec::new(), Vec::new());
        let mut stack = vec![root];
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match &plan.nodes[n].op {
                Op::Load { model, tensor } => {
                    let l = match leaves.iter().position(|l: &Leaf| l.model == *model && l.tensor == *tensor) {
                        Some(l) => l,
                        None => {
                            let bf16 = inputs.read_as(*model, tensor) == Some(DType::BF16);
                            leaves.push(Leaf { model: *model, tensor: tensor.clone(), node: n, bf16 });
                            leaves.len() - 1
                        }
                    };
                    leaf_of.push((n, l));
                }
                Op::Lin(_) | Op::Zeros => {}
                Op::Kernel { kernel: Kernel::Consensus { .. } | Kernel::NearSwap { .. }, .. } => {}
                Op::Kernel { .. } if group.contains(&n) => {}
                _ => return None,
            }
            stack.extend(crate::exec::children(&plan.nodes[n].op));
        }
        Some(Shape { selected, others, leaves, leaf_of })
    }

    /// The trims whose statistics are known without a pass.
    fn fixed(&self) -> impl Iterator<Item = (NodeId, Prepared)> + '_ {
        self.others.iter().cloned()
    }

    /// Bytes an undecided entry takes: its position, and its leaves' values
    /// (two bytes for a bf16 leaf, four for others).
    fn bytes_per_entry(&self) -> usize {
        2 + self.leaves.iter().map(|l| if l.bf16 { 2 } else { 4 }).sum::<usize>()
    }
}

/// A chunk's undecided entries: their positions in the chunk, and each
/// leaf's values there, leaf after leaf, as halves of their bits: the high
/// half alone for a leaf read from bf16 (its low half is zero), both
/// halves for others.
struct Kept {
    chunk: usize,
    pos: Vec<u16>,
    halves: Vec<u16>,
}

impl Kept {
    /// The entries of chunk `chunk` marked in `marks` (bit `i % 16` of
    /// word `i / 16`), with the leaves' values there from `memo`.
    fn gather(chunk: usize, marks: &[u16], shape: &Shape, memo: &Memo) -> Kept {
        let n: usize = marks.iter().map(|m| m.count_ones() as usize).sum();
        let width: usize = shape.leaves.iter().map(|l| if l.bf16 { 1 } else { 2 }).sum();
        let mut pos: Vec<u16> = Vec::with_capacity(n);
        positions(marks, &mut pos);
        let mut halves: Vec<u16> = Vec::with_capacity(n * width);
        for leaf in &shape.leaves {
            let v = memo.get(leaf.node).expect("every leaf read");
            match leaf.bf16 {
                true => halves.extend(pos.iter().map(|&p| (v[p as usize].to_bits() >> 16) as u16)),
                false => halves.extend(pos.iter().flat_map(|&p| {
                    let b = v[p as usize].to_bits();
                    [b as u16, (b >> 16) as u16]
                })),
            }
        }
        Kept { chunk, pos, halves }
    }

    /// [`Kept::gather`] from the leaves' stored bf16 bits (every leaf
    /// bf16).
    fn gather_bits(chunk: usize, marks: &[u16], leaves: &[&[u16]]) -> Kept {
        let n: usize = marks.iter().map(|m| m.count_ones() as usize).sum();
        let mut pos: Vec<u16> = Vec::with_capacity(n);
        positions(marks, &mut pos);
        let mut halves: Vec<u16> = Vec::with_capacity(n * leaves.len());
        for v in leaves {
            halves.extend(pos.iter().map(|&p| v[p as usize]));
        }
        Kept { chunk, pos, halves }
    }

    fn bytes(&self) -> u64 {
        (self.pos.len() + self.halves.len()) as u64 * 2
    }

    /// The leaves' kept values as a memo, every load node given its leaf's.
    fn memo(&self, shape: &Shape) -> Memo {
        let n = self.pos.len();
        let mut leaves = Vec::with_capacity(shape.leaves.len());
        let mut from = 0;
        for leaf in &shape.leaves {
            let mut b = Scratch::take(n);
            match leaf.bf16 {
                true => {
                    let h = &self.halves[from..from + n];
                    b.iter_mut().zip(h).for_each(|(v, &h)| *v = f32::from_bits((h as u32) << 16));
                    from += n;
                }
                false => {
                    let h = &self.halves[from..from + 2 * n];
                    b.iter_mut()
                        .zip(h.chunks_exact(2))
                        .for_each(|(v, h)| *v = f32::from_bits(h[0] as u32 | (h[1] as u32) << 16));
                    from += 2 * n;
                }
            }
            leaves.push(b);
        }
        // Each leaf's buffer goes to its first load node; other loads of the
        // same tensor get copies.
        let mut memo = Memo::default();
        for &(node, l) in &shape.leaf_of {
            if node != shape.leaves[l].node {
                let mut b = Scratch::take(n);
                b.copy_from_slice(&leaves[l]);
                memo.put(node, b);
            }
        }
        for (leaf, b) in shape.leaves.iter().zip(leaves) {
            memo.put(leaf.node, b);
        }
        memo
    }
}

/// Writes entry `i` of `encoded` (`S` bytes each) at entry `pos[i]` of
/// `bytes`.
fn scatter<const S: usize>(bytes: &mut [u8], pos: &[u16], encoded: &[u8]) {
    for (&p, v) in pos.iter().zip(encoded.chunks_exact(S)) {
        let at = p as usize * S;
        bytes[at..at + S].copy_from_slice(&<[u8; S]>::try_from(v).expect("S bytes"));
    }
}

/// The entries marked in `marks` (bit `i % 16` of word `i / 16`), in
/// order: with AVX-512's 16-bit compress, 32 entries a step without a
/// branch; else a loop over set bits, four words at a time.
fn positions(marks: &[u16], out: &mut Vec<u16>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vbmi2") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features the function is compiled for are present.
        return unsafe { positions_avx512(marks, out) };
    }
    positions_generic(marks, out)
}

fn positions_generic(marks: &[u16], out: &mut Vec<u16>) {
    for (q, quad) in marks.chunks(4).enumerate() {
        let mut m = quad.iter().enumerate().fold(0u64, |acc, (k, &w)| acc | (w as u64) << (16 * k));
        while m != 0 {
            out.push((q * 64) as u16 + m.trailing_zeros() as u16);
            m &= m - 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi2")]
unsafe fn positions_avx512(marks: &[u16], out: &mut Vec<u16>) {
    use std::arch::x86_64::*;
    let n: usize = marks.iter().map(|m| m.count_ones() as usize).sum();
    // Each step stores 32 lanes at the write position: room for them.
    out.reserve(n + 32);
    let start = out.len();
    let dst = out.as_mut_ptr().add(start);
    let iota: [u16; 32] = std::array::from_fn(|i| i as u16);
    let iota = _mm512_loadu_si512(iota.as_ptr().cast());
    let pairs = marks.len() / 2;
    let mut w = 0usize;
    for p in 0..pairs {
        let m = marks[2 * p] as u32 | (marks[2 * p + 1] as u32) << 16;
        let lanes = _mm512_add_epi16(iota, _mm512_set1_epi16((32 * p) as i16));
        _mm512_storeu_si512(dst.add(w).cast(), _mm512_maskz_compress_epi16(m, lanes));
        w += m.count_ones() as usize;
    }
    out.set_len(start + w);
    // An odd last word, one at a time.
    if marks.len() % 2 == 1 {
        let mut m = marks[marks.len() - 1];
        while m != 0 {
            out.push((32 * pairs) as u16 + m.trailing_zeros() as u16);
            m &= m - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Both ways of listing marked positions list them all, in order, for
    /// even and odd word counts and dense and sparse marks.
    #[test]
    fn positions_list_every_mark_in_order() {
        for words in [0usize, 1, 2, 3, 64, 2048, 2047] {
            for every in [1usize, 3, 17, 40] {
                let marks: Vec<u16> = (0..words).map(|w| ((w * 2654435761) >> (w % every)) as u16).collect();
                let want: Vec<u16> =
                    (0..words * 16).filter(|&i| marks[i / 16] >> (i % 16) & 1 == 1).map(|i| i as u16).collect();
                let (mut a, mut b) = (vec![9u16], vec![9u16]);
                super::positions(&marks, &mut a);
                super::positions_generic(&marks, &mut b);
                assert_eq!(a[1..], want[..], "{words} words");
                assert_eq!(b[1..], want[..], "{words} words");
            }
        }
    }
}

/// The pass in one loop (`kernels::TiesPass`), for two to four task
/// vectors.
enum Fused {
    Two(TiesPass<2>),
    Three(TiesPass<3>),
    Four(TiesPass<4>),
}

impl Fused {
    /// The one-loop pass for output `dtype` under `shape` with the trims'
    /// intervals `ends`, when the output is TIES's usual shape: bf16 leaves
    /// and output, a linear combination of a leaf and a consensus of every
    /// trim (in their order), each trim's input a fine-tune and its base;
    /// and the loop runs on vectors here (else the separate kernels, which
    /// have AVX2 and baseline versions, are faster).
    fn of(plan: &Plan, shape: &Shape, root: NodeId, dtype: DType, ends: &[(u32, u32)]) -> Option<Fused> {
        let ok = cfg!(target_endian = "little")
            && TiesPass::<1>::vectorized()
            && dtype == DType::BF16
            && (shape.selected.iter().all(|s| matches!(s.how, How::Magnitude(_)))
                || shape.selected.iter().all(|s| matches!(s.how, How::Window(_))))
            && shape.others.is_empty()
            && shape.leaves.len() <= MAX_LEAVES
            && shape.leaves.iter().all(|l| l.bf16);
        if !ok {
            return None;
        }
        let leaf = |n: NodeId| shape.leaf_of.iter().find(|&&(m, _)| m == n).map(|&(_, l)| l);
        let Op::Lin(terms) = &plan.nodes[root].op else { return None };
        let [(r0, x0), (r1, x1)] = &terms[..] else { return None };
        let term = |x: NodeId| match &plan.nodes[x].op {
            Op::Load { .. } => leaf(x).map(Term::Leaf),
            Op::Kernel { kernel: Kernel::Consensus { .. }, .. } => Some(Term::Consensus),
            _ => None,
        };
        let (t0, t1) = (term(*x0)?, term(*x1)?);
        let cons = match (t0, t1) {
            (Term::Consensus, Term::Leaf(_)) => *x0,
            (Term::Leaf(_), Term::Consensus) => *x1,
            _ => return None,
        };
        let Op::Kernel { kernel: Kernel::Consensus { weights, elect_sign, normalize }, inputs: ins } =
            &plan.nodes[cons].op
        else {
            return None;
        };
        if ins.len() != shape.selected.len() || ins.iter().zip(&shape.selected).any(|(&i, s)| i != s.node) {
            return None;
        }
        let mut tv = Vec::with_capacity(ins.len());
        for s in &shape.selected {
            let Op::Lin(terms) = &plan.nodes[s.input].op else { return None };
            let [(c0, a), (c1, b)] = &terms[..] else { return None };
            tv.push((leaf(*a)?, c0.get() as f32, leaf(*b)?, c1.get() as f32));
        }
        let root = [(t0, r0.get() as f32), (t1, r1.get() as f32)];
        // A window's ends are two members in a row: its lower end's
        // interval, then its upper end's.
        let windows = matches!(shape.selected[0].how, How::Window(_));
        fn pass<const N: usize>(
            tv: &[(usize, f32, usize, f32)],
            ends: &[(u32, u32)],
            windows: bool,
            weights: &[f32],
            elect_sign: bool,
            normalize: bool,
            root: [(Term, f32); 2],
        ) -> TiesPass<N> {
            TiesPass {
                a: std::array::from_fn(|j| tv[j].0),
                c0: std::array::from_fn(|j| tv[j].1),
                b: std::array::from_fn(|j| tv[j].2),
                c1: std::array::from_fn(|j| tv[j].3),
                lo: std::array::from_fn(|j| ends[if windows { 2 * j } else { j }].0),
                hi: std::array::from_fn(|j| ends[if windows { 2 * j } else { j }].1),
                upper: windows.then(|| std::array::from_fn(|j| ends[2 * j + 1])),
                w: std::array::from_fn(|j| weights[j]),
                elect_sign,
                normalize,
                root,
            }
        }
        let w: Vec<f32> = weights.iter().map(|w| w.get() as f32).collect();
        let (e, n) = (*elect_sign, *normalize);
        match tv.len() {
            2 => Some(Fused::Two(pass(&tv, ends, windows, &w, e, n, root))),
            3 => Some(Fused::Three(pass(&tv, ends, windows, &w, e, n, root))),
            4 => Some(Fused::Four(pass(&tv, ends, windows, &w, e, n, root))),
            _ => None,
        }
    }

    /// The pass over a chunk; per member of the selection (a window's two
    /// ends in a row), its keys above its interval, and whether a task
    /// vector entry was not finite.
    fn run(&self, leaves: &[&[u16]], marks: &mut [u16], out: &mut [u16]) -> Vec<(usize, bool)> {
        fn each<const N: usize>(p: &TiesPass<N>, c: PassCounts<N>) -> Vec<(usize, bool)> {
            match p.upper {
                None => c.above.iter().map(|&a| (a, c.non_finite)).collect(),
                Some(_) => {
                    (0..N).flat_map(|j| [(c.above[j], c.non_finite), (c.above_upper[j], c.non_finite)]).collect()
                }
            }
        }
        match self {
            Fused::Two(p) => each(p, p.run(leaves, marks, out)),
            Fused::Three(p) => each(p, p.run(leaves, marks, out)),
            Fused::Four(p) => each(p, p.run(leaves, marks, out)),
        }
    }

    /// Task vector `j`: `(leaf a, c0, leaf b, c1)`.
    fn task_vector(&self, j: usize) -> (usize, f32, usize, f32) {
        match self {
            Fused::Two(p) => (p.a[j], p.c0[j], p.b[j], p.c1[j]),
            Fused::Three(p) => (p.a[j], p.c0[j], p.b[j], p.c1[j]),
            Fused::Four(p) => (p.a[j], p.c0[j], p.b[j], p.c1[j]),
        }
    }
}

/// Values of some nodes over the entries being computed.
#[derive(Default)]
struct Memo(Vec<(NodeId, Scratch)>);

impl Memo {
    fn put(&mut self, n: NodeId, v: Scratch) {
        self.0.push((n, v));
    }
    fn get(&self, n: NodeId) -> Option<&[f32]> {
        self.0.iter().find(|(m, _)| *m == n).map(|(_, v)| &v[..])
    }
}

/// Node `n` over the entries of `memo` (a chunk from `start`, or a chunk's
/// undecided entries), every load in the memo: the operations of the plain
/// evaluation, in its order.
fn eval_memo(plan: &Plan, st: &State, n: NodeId, start: usize, memo: &Memo, out: &mut [f32]) {
    if let Some(v) = memo.get(n) {
        out.copy_from_slice(v);
        return;
    }
    match &plan.nodes[n].op {
        Op::Load { .. } | Op::Router { .. } => unreachable!("loads are read ahead, routers are not one-read"),
        Op::Zeros => out.fill(0.0),
        Op::Lin(terms) => {
            // The first two terms in one loop, without copying the first:
            // the same operations as copying, scaling and adding. A term not
            // in the memo is computed first.
            let mut skip = 0;
            let mut scratch = Scratch::take(out.len());
            if let [(c0, x0), (c1, x1), ..] = &terms[..] {
                let mut second = Scratch::take(0);
                match (memo.get(*x0), memo.get(*x1)) {
                    (Some(a), Some(b)) => {
                        first_two(out, a, c0.get() as f32, b, c1.get() as f32);
                        skip = 2;
                    }
                    (Some(a), None) => {
                        second = Scratch::take(out.len());
                        eval_memo(plan, st, *x1, start, memo, &mut second);
                        first_two(out, a, c0.get() as f32, &second, c1.get() as f32);
                        skip = 2;
                    }
                    (None, Some(b)) => {
                        eval_memo(plan, st, *x0, start, memo, &mut scratch);
                        first_two(out, &scratch, c0.get() as f32, b, c1.get() as f32);
                        skip = 2;
                    }
                    (None, None) => {}
                }
                drop(second);
            }
            for (k, (c, x)) in terms.iter().enumerate().skip(skip) {
                let c = c.get() as f32;
                if k == 0 {
                    eval_memo(plan, st, *x, start, memo, out);
                    if c != 1.0 {
                        scale(out, c);
                    }
                } else if let Some(v) = memo.get(*x) {
                    add_scaled(out, v, c);
                } else {
                    eval_memo(plan, st, *x, start, memo, &mut scratch);
                    add_scaled(out, &scratch, c);
                }
            }
        }
        Op::Kernel { kernel: Kernel::Consensus { weights, elect_sign, normalize }, inputs: ins }
            if fused_trims(plan, st, ins, start, memo).is_some() =>
        {
            let (deltas, trims) = fused_trims(plan, st, ins, start, memo).expect("checked");
            let weights: Vec<f64> = weights.iter().map(|w| w.get()).collect();
            match deltas {
                Deltas::Memo(d) => kernels::consensus_of_trims(&d, &trims, &weights, *elect_sign, *normalize, out),
                Deltas::Sums(s) => {
                    kernels::consensus_of_trimmed_sums(&s, &trims, &weights, *elect_sign, *normalize, out)
                }
            }
        }
        Op::Kernel { kernel, inputs: ins } => {
            let mut bufs = Vec::with_capacity(ins.len());
            for &c in ins {
                if memo.get(c).is_none() {
                    let mut b = Scratch::take(out.len());
                    eval_memo(plan, st, c, start, memo, &mut b);
                    bufs.push((c, b));
                }
            }
            let refs: Vec<&[f32]> = ins
                .iter()
                .map(|&c| memo.get(c).unwrap_or_else(|| &bufs.iter().find(|(m, _)| *m == c).expect("evaluated").1))
                .collect();
            kernels::apply(kernel, st.prepared.get(&n).unwrap_or(&Prepared::None), start, &refs, out);
        }
    }
}

/// The trimmed inputs of a fused consensus: values in the memo, or sums of
/// two terms in the memo, made as they are read.
enum Deltas<'m> {
    Memo(Vec<&'m [f32]>),
    Sums(Vec<kernels::Sum<'m>>),
}

/// When every input of a consensus is a magnitude trim keeping all or none
/// of the chunk's entries equal to its threshold, of values in the memo
/// (or, for all of them, of sums of two terms in the memo): those values
/// and the trims, for the fused kernel.
fn fused_trims<'m>(
    plan: &Plan,
    st: &State,
    ins: &[NodeId],
    start: usize,
    memo: &'m Memo,
) -> Option<(Deltas<'m>, Vec<kernels::Trim>)> {
    let mut trims = Vec::with_capacity(ins.len());
    let mut xs = Vec::with_capacity(ins.len());
    for &c in ins {
        let Op::Kernel { kernel: Kernel::Sparsify { .. }, inputs } = &plan.nodes[c].op else { return None };
        trims.push(kernels::chunk_trim(st.prepared.get(&c)?, start)?);
        xs.push(inputs[0]);
    }
    if let Some(d) = xs.iter().map(|&x| memo.get(x)).collect::<Option<Vec<_>>>() {
        return Some((Deltas::Memo(d), trims));
    }
    let sums = xs.iter().map(|&x| sum_of(plan, x, memo)).collect::<Option<Vec<_>>>()?;
    Some((Deltas::Sums(sums), trims))
}

/// Node `n` as `a c0 + b c1` of two values in the memo (a task vector: a
/// fine-tune, and its base times -1).
fn sum_of<'m>(plan: &Plan, n: NodeId, memo: &'m Memo) -> Option<kernels::Sum<'m>> {
    let Op::Lin(terms) = &plan.nodes[n].op else { return None };
    let [(c0, a), (c1, b)] = &terms[..] else { return None };
    Some(kernels::Sum { a: memo.get(*a)?, c0: c0.get() as f32, b: memo.get(*b)?, c1: c1.get() as f32 })
}

/// `out = a c0 + b c1`, as `out = a; out *= c0; out += b c1` computes it
/// (the products by 1 left out, as there).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn first_two(out: &mut [f32], a: &[f32], c0: f32, b: &[f32], c1: f32) {
    let it = out.iter_mut().zip(a).zip(b);
    match (c0 == 1.0, c1 == 1.0) {
        (true, true) => it.for_each(|((o, a), b)| *o = a + b),
        (true, false) => it.for_each(|((o, a), b)| *o = a + b * c1),
        (false, true) => it.for_each(|((o, a), b)| *o = a * c0 + b),
        (false, false) => it.for_each(|((o, a), b)| *o = a * c0 + b * c1),
    }
}

/// A chunk's values as their bits.
fn as_bits(vals: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit
    // pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(vals.as_ptr().cast(), vals.len()) }
}
