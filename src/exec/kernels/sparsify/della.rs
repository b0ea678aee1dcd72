//! DELLA: within each row, keep each entry with a probability rising
//! linearly with its magnitude's rank, then rescale by the L1 ratio.

use super::{l1, l1_ratio};
use crate::exec::kernels::{Prepared, Source, CHUNK};
use rayon::prelude::*;

/// What the streaming pass needs to keep or drop each entry. Entry `i` is
/// kept when `draw(key, i) < threshold(p(rank))`, and the thresholds rise
/// (or fall) with the rank, so an entry whose draw is below all of them
/// (`lo`) is kept and one at or above all of them (`hi`) dropped whatever
/// its rank: only the entries in between (a `2 |epsilon|` share) needed their
/// row ranked, and only their keep bits are held, one run of bits per chunk
/// in index order. The streaming pass draws again and fills in the rest.
#[derive(Debug, Clone)]
pub struct Keeps {
    key: u64,
    lo: u64,
    hi: u64,
    /// Chunk `c`'s undecided entries' keep bits (bit `b % 64` of word
    /// `b / 64` for the `b`-th of them).
    chunks: Vec<Vec<u64>>,
}

/// DELLA's statistics: the keep bits of the entries whose draw does not
/// decide them (`Keeps`) and, with rescale, the L1 ratio. Each row is
/// ranked on its own (1-D tensors are one row), by the worker of the chunk
/// where it starts, which reads the chunks the row spans; rows are
/// independent, so the bits are the same on any thread count. The L1 sums
/// are then added in index order, as the whole-tensor code added them, in
/// one pass.
pub fn prepare_della(
    src: &dyn Source,
    density: f64,
    eps: f64,
    key: u64,
    row: usize,
    rescale: bool,
) -> Result<Prepared, String> {
    if density >= 1.0 {
        return Ok(Prepared::None);
    }
    if density - eps <= 0.0 || density + eps >= 1.0 {
        return Err(format!(
            "della needs 0 < density - epsilon and density + epsilon < 1 (density {density}, epsilon {eps})"
        ));
    }
    let n = src.len();
    let row = row.max(1);
    let ends = (rank_threshold(density, eps, row, 0), rank_threshold(density, eps, row, row - 1));
    let (lo, hi) = (ends.0.min(ends.1), ends.0.max(ends.1));
    let scratch = || (Vec::<f32>::new(), Row::default());
    // The undecided entries' bits of the rows starting in each chunk, in
    // pieces split at chunk ends; with rescale, their L1 sums on the way
    // (each row's in index order) and their span, for when the sums are
    // exact.
    let parts = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(scratch, |(buf, scratch), c| {
            // The rows starting in chunk `c`, read from its start to the end
            // of the last of them, a chunk at a time.
            let s = c * CHUNK;
            let (r0, r1) = (s.div_ceil(row), (s + CHUNK).min(n).div_ceil(row));
            let mut part = (Vec::new(), (0f64, 0f64), (0u32, u32::MAX));
            if r0 >= r1 {
                return Ok(part);
            }
            buf.resize(r1 * row - s, 0.0);
            for (k, piece) in buf.chunks_mut(CHUNK).enumerate() {
                src.fill(0, s + k * CHUNK, piece)?;
            }
            for r in r0..r1 {
                let vals = &buf[r * row - s..(r + 1) * row - s];
                della_row(vals, r * row, density, eps, key, scratch);
                record(&mut part.0, r * row, &scratch.draws, &scratch.keep, lo, hi);
                if rescale {
                    let (max, low) = l1::span(vals);
                    part.1 = l1::add(vals, &scratch.keep, part.1);
                    part.2 = (part.2 .0.max(max), part.2 .1.min(low));
                }
            }
            Ok::<_, String>(part)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let span = parts.iter().fold((0, u32::MAX), |(m, l), p| (m.max(p.2 .0), l.min(p.2 .1)));
    let sums = parts.iter().fold((0f64, 0f64), |(b, a), p| (b + p.1 .0, a + p.1 .1));
    // Each chunk's pieces, joined in index order: a chunk's first piece
    // comes from the worker of the row reaching into it, the rest from its
    // own worker, and the workers' results are in chunk order.
    let mut chunks: Vec<(Vec<u64>, usize)> = (0..n.div_ceil(CHUNK)).map(|_| (Vec::new(), 0)).collect();
    for piece in parts.into_iter().flat_map(|p| p.0) {
        let (words, len) = &mut chunks[piece.chunk];
        append(words, len, piece);
    }
    let keeps = Keeps { key, lo, hi, chunks: chunks.into_iter().map(|c| c.0).collect() };
    let scale = if rescale && l1::exact_from_zero(n, span) {
        // Every partial sum of these terms is a double: the chain's value,
        // whatever the grouping, so no pass of its own.
        Some(l1_ratio(sums.0, sums.1))
    } else if rescale {
        // Index order, as `||x||_1` and `||masked||_1` were summed over the
        // whole tensor: chunks read side by side, a batch at a time, and
        // added one after another. A dropped entry added +0 before, which
        // leaves the sum as it is.
        let chunks = n.div_ceil(CHUNK);
        let batch = (rayon::current_num_threads() * 4).max(1);
        let (mut before, mut after) = (0f64, 0f64);
        for b0 in (0..chunks).step_by(batch) {
            let bufs: Vec<Vec<f32>> = (b0..(b0 + batch).min(chunks))
                .into_par_iter()
                .map(|c| {
                    let mut v = vec![0f32; CHUNK.min(n - c * CHUNK)];
                    src.fill(0, c * CHUNK, &mut v).map(|_| v)
                })
                .collect::<Result<_, _>>()?;
            let mut keep = [false; l1::BLOCK];
            for (k, v) in bufs.iter().enumerate() {
                let c = b0 + k;
                let mut words = Words::new(&keeps, c);
                for (b, x) in v.chunks(l1::BLOCK).enumerate() {
                    let keep = &mut keep[..x.len()];
                    keeps_of(&mut words, c * CHUNK + b * l1::BLOCK, keep);
                    (before, after) = l1::add(x, keep, (before, after));
                }
            }
        }
        Some(l1_ratio(before, after))
    } else {
        None
    };
    Ok(Prepared::Della { keeps, scale })
}

/// One chunk of the streaming pass: `x` (starting at entry `start`, a
/// multiple of `CHUNK`) with the dropped entries +0, times `scale`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn apply(keeps: &Keeps, scale: Option<f32>, start: usize, x: &[f32], out: &mut [f32]) {
    let mut words = Words::new(keeps, start / CHUNK);
    for (b, (out, x)) in out.chunks_mut(l1::BLOCK).zip(x.chunks(l1::BLOCK)).enumerate() {
        words.block(start + b * l1::BLOCK, x.len(), |j, word| {
            // Each entry kept as `v` or +0 by a mask.
            let range = 64 * j..(64 * j + 64).min(x.len());
            let (out, x) = (&mut out[range.clone()], &x[range]);
            for (t, (o, v)) in out.iter_mut().zip(x).enumerate() {
                *o = f32::from_bits(v.to_bits() & 0u32.wrapping_sub((word >> t & 1) as u32));
            }
            if let Some(s) = scale {
                out.iter_mut().for_each(|o| *o *= s);
            }
        });
    }
}

/// Whether each of the entries from `start` on is kept (a block of `words`).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn keeps_of(words: &mut Words, start: usize, keep: &mut [bool]) {
    words.block(start, keep.len(), |j, word| {
        for (t, k) in keep[64 * j..].iter_mut().take(64).enumerate() {
            *k = word >> t & 1 == 1;
        }
    });
}

/// The keep words of one chunk, a block of entries at a time: the draws
/// decide most entries, the held bits the rest, in order.
struct Words<'a> {
    keeps: &'a Keeps,
    bits: &'a [u64],
    /// How many of `bits` are used.
    used: usize,
    fast: bool,
    /// A block's draws (32 KB, so not on the stack).
    draws: Box<[u64; l1::BLOCK]>,
}

impl<'a> Words<'a> {
    fn new(keeps: &'a Keeps, chunk: usize) -> Words<'a> {
        let bits = keeps.chunks.get(chunk).map_or(&[][..], Vec::as_slice);
        Words { keeps, bits, used: 0, fast: fast_bits(), draws: Box::new([0; l1::BLOCK]) }
    }

    /// Calls `f(j, word)` for the `j`-th 64 entries of the `len` (at most
    /// `l1::BLOCK`) from entry `start` on, in order: bit `t` of `word` says
    /// whether entry `start + 64 j + t` is kept. The held bits are taken in
    /// order, so the blocks of a chunk must come in index order.
    #[inline(always)]
    fn block(&mut self, start: usize, len: usize, mut f: impl FnMut(usize, u64)) {
        let Keeps { key, lo, hi, .. } = *self.keeps;
        let draws = &mut self.draws[..len];
        crate::rng::draws(key, start as u64, draws);
        for (j, d) in draws.chunks(64).enumerate() {
            let mut kept = 0u64;
            for (t, &d) in d.iter().enumerate() {
                kept |= ((d < lo) as u64) << t;
            }
            let open = open_mask(d, lo, hi);
            if open != 0 {
                kept |= deposit(read(self.bits, self.used), open, self.fast);
                self.used += open.count_ones() as usize;
            }
            f(j, kept);
        }
    }
}

/// The 64 bits of `words` from bit `at` on (zeros past the end).
fn read(words: &[u64], at: usize) -> u64 {
    let (w, b) = (at / 64, at % 64);
    let first = words.get(w).copied().unwrap_or(0) >> b;
    match b {
        0 => first,
        _ => first | words.get(w + 1).copied().unwrap_or(0) << (64 - b),
    }
}

/// Whether BMI2's `pdep` and `pext` are there and fast (they are
/// microcoded on the CPUs before AVX-512 among AMD's).
fn fast_bits() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("bmi2") && std::arch::is_x86_feature_detected!("avx512f");
    #[allow(unreachable_code)]
    false
}

/// The low bits of `bits` placed, in order, at the set bits of `mask`
/// (`pdep` where `fast`).
#[inline(always)]
fn deposit(bits: u64, mask: u64, fast: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` says the feature is present.
        return unsafe { pdep(bits, mask) };
    }
    let (mut bits, mut mask, mut out) = (bits, mask, 0u64);
    while mask != 0 {
        out |= mask & mask.wrapping_neg() & 0u64.wrapping_sub(bits & 1);
        bits >>= 1;
        mask &= mask - 1;
    }
    out
}

/// The bits of `bits` at the set bits of `mask`, in order, as the low bits
/// (`pext` where `fast`): `deposit` undone.
#[inline(always)]
fn extract(bits: u64, mask: u64, fast: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` says the feature is present.
        return unsafe { pext(bits, mask) };
    }
    let (mut mask, mut out, mut k) = (mask, 0u64, 0);
    while mask != 0 {
        out |= (bits >> mask.trailing_zeros() & 1) << k;
        k += 1;
        mask &= mask - 1;
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn pdep(bits: u64, mask: u64) -> u64 {
    std::arch::x86_64::_pdep_u64(bits, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn pext(bits: u64, mask: u64) -> u64 {
    std::arch::x86_64::_pext_u64(bits, mask)
}

/// The undecided entries' keep bits of a run of entries inside one chunk.
struct Piece {
    chunk: usize,
    words: Vec<u64>,
    len: usize,
}

/// Adds the undecided entries of one row (its first entry at `first`) to
/// `pieces`, a new piece at each chunk's start: 64 entries at a time, as
/// masks, without branches on the draws (they are random).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn record(pieces: &mut Vec<Piece>, first: usize, draws: &[u64], keep: &[bool], lo: u64, hi: u64) {
    let fast = fast_bits();
    let mut i = first;
    let end = first + draws.len();
    while i < end {
        let chunk = i / CHUNK;
        let stop = ((chunk + 1) * CHUNK).min(end);
        if pieces.last().is_none_or(|p| p.chunk != chunk) {
            pieces.push(Piece { chunk, words: Vec::new(), len: 0 });
        }
        let p = pieces.last_mut().expect("pushed");
        // Whole words stay in `p.words`; a partial one is taken back.
        let mut fill = p.len % 64;
        let mut word = if fill == 0 { 0 } else { p.words.pop().expect("a partial word") };
        let (draws, keep) = (&draws[i - first..stop - first], &keep[i - first..stop - first]);
        for (d, k) in draws.chunks(64).zip(keep.chunks(64)) {
            let open = open_mask(d, lo, hi);
            let mut kept = 0u64;
            for (t, &k) in k.iter().enumerate() {
                kept |= (k as u64) << t;
            }
            let (bits, count) = (extract(kept, open, fast), open.count_ones() as usize);
            p.len += count;
            word |= bits << fill;
            if fill + count >= 64 {
                p.words.push(word);
                word = if fill == 0 { 0 } else { bits >> (64 - fill) };
            }
            fill = (fill + count) % 64;
        }
        if fill > 0 {
            p.words.push(word);
        }
        i = stop;
    }
}

/// Bit `t` set where `lo <= d[t] < hi`: the entries whose draws leave them
/// open.
#[inline(always)]
fn open_mask(d: &[u64], lo: u64, hi: u64) -> u64 {
    let mut open = 0u64;
    for (t, &d) in d.iter().enumerate() {
        open |= ((d.wrapping_sub(lo) < hi - lo) as u64) << t;
    }
    open
}

/// Appends `piece`'s bits to a chunk's `len` bits in `words`.
fn append(words: &mut Vec<u64>, len: &mut usize, piece: Piece) {
    let b = *len % 64;
    if b == 0 {
        words.truncate(*len / 64);
        words.extend(piece.words);
    } else {
        for w in piece.words {
            *words.last_mut().expect("a partial word") |= w << b;
            words.push(w >> (64 - b));
        }
    }
    *len += piece.len;
    words.truncate(len.div_ceil(64));
}

/// The draw below which the entry of rank `rank` in a row of `c` is kept:
/// its keep probability rises linearly with the rank from `density - eps`
/// to `density + eps`, and `uniform(key, i) < p` is
/// `draw(key, i) < threshold(p)`.
fn rank_threshold(density: f64, eps: f64, c: usize, rank: usize) -> u64 {
    let frac = if c > 1 { rank as f64 / (c - 1) as f64 } else { 0.5 };
    crate::rng::threshold(density - eps + 2.0 * eps * frac)
}

/// A worker's scratch for ranking DELLA's rows.
#[derive(Default)]
struct Row {
    /// (magnitude bits, index) keys, sorted.
    order: Vec<u64>,
    /// The row's draws.
    draws: Vec<u64>,
    /// Whether each entry of the row is kept.
    keep: Vec<bool>,
    /// The draw threshold of each rank, for rows of `thresholds.len()`.
    thresholds: Vec<u64>,
    /// The radix sort's other buffer and its counts.
    spare: Vec<u64>,
    counts: Vec<u32>,
}

/// Sorts keys whose low halves ascend as they stand: a stable LSD radix
/// sort by the high halves, which puts equal high halves in the order of
/// their low halves, as sorting the whole keys does. Only the bits that
/// vary between the keys' high halves are sorted on (magnitudes in a row
/// share their top exponent bits, and bf16 task vectors have zeros at the
/// bottom), in as few passes of at most 11 bits as they need.
#[inline(always)]
fn radix_sort(keys: &mut [u64], spare: &mut Vec<u64>, counts: &mut Vec<u32>) {
    debug_assert!(keys.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)));
    let (all, any) = keys.iter().fold((u32::MAX, 0u32), |(a, o), &k| (a & (k >> 32) as u32, o | (k >> 32) as u32));
    let varying = all ^ any;
    if varying == 0 {
        return;
    }
    let low = varying.trailing_zeros();
    let bits = 32 - varying.leading_zeros() - low;
    let most = (usize::BITS - keys.len().leading_zeros()).clamp(8, 11);
    let passes = bits.div_ceil(most);
    let width = bits.div_ceil(passes);
    let buckets = 1usize << width;
    let digit = |k: u64, p: u32| (k >> (32 + low + p * width)) as usize & (buckets - 1);
    spare.resize(keys.len(), 0);
    // Slices, not the vectors: their lengths stay in registers.
    let (mut from, mut to): (&mut [u64], &mut [u64]) = (keys, spare);
    let mut swapped = false;
    for p in 0..passes {
        // The two halves counted and placed side by side, each with its own
        // counts (the first half's entries of a bucket before the
        // second's): two chains of increments, not one that stalls when
        // neighbours share a bucket.
        let (first, second) = from.split_at(from.len() / 2);
        let (head, tail) = second.split_at(first.len());
        counts.clear();
        counts.resize(2 * buckets, 0);
        let (a, b) = counts.split_at_mut(buckets);
        for (x, y) in first.iter().zip(head) {
            a[digit(*x, p)] += 1;
            b[digit(*y, p)] += 1;
        }
        for y in tail {
            b[digit(*y, p)] += 1;
        }
        // Where each half's share of each bucket starts, in place of counts.
        let mut sum = 0;
        for (x, y) in a.iter_mut().zip(b.iter_mut()) {
            let (nx, ny) = (*x, *y);
            (*x, *y) = (sum, sum + nx);
            sum += nx + ny;
        }
        for (x, y) in first.iter().zip(head) {
            let (dx, dy) = (digit(*x, p), digit(*y, p));
            to[a[dx] as usize] = *x;
            a[dx] += 1;
            to[b[dy] as usize] = *y;
            b[dy] += 1;
        }
        for y in tail {
            let dy = digit(*y, p);
            to[b[dy] as usize] = *y;
            b[dy] += 1;
        }
        std::mem::swap(&mut from, &mut to);
        swapped = !swapped;
    }
    if swapped {
        to.copy_from_slice(from);
    }
}

/// Rows up to this long get a table of their ranks' thresholds (rows of a
/// tensor are one length); longer ones compute them as they go.
const RANK_TABLE: usize = 1 << 16;

/// One row of DELLA (its first entry at index `first` of the tensor): keep
/// probability rises linearly with the magnitude's rank from
/// `density - eps` to `density + eps`; leaves its draws and keeps in
/// `row.draws` and `row.keep`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn della_row(vals: &[f32], first: usize, density: f64, eps: f64, key: u64, row: &mut Row) {
    let c = vals.len();
    let threshold = |rank: usize| rank_threshold(density, eps, c, rank);
    if c <= RANK_TABLE && row.thresholds.len() != c {
        row.thresholds.clear();
        row.thresholds.extend((0..c).map(threshold));
    }
    // Ranks by magnitude, equal ones in index order: magnitudes order as
    // their bits do (as `total_cmp` orders them), so one sort of
    // (bits, index) keys, all distinct, gives the stable order.
    let order = &mut row.order;
    order.clear();
    order.extend(vals.iter().enumerate().map(|(j, v)| ((v.to_bits() & 0x7fff_ffff) as u64) << 32 | j as u64));
    if (256..=RANK_TABLE).contains(&c) {
        radix_sort(order, &mut row.spare, &mut row.counts);
    } else {
        order.sort_unstable();
    }
    row.draws.resize(c, 0);
    crate::rng::draws(key, first as u64, &mut row.draws);
    row.keep.resize(c, false);
    // In rank order, without branches (a random keep mispredicts).
    let (draws, keep) = (&row.draws, &mut row.keep);
    if c <= RANK_TABLE {
        for (&k, &t) in order.iter().zip(&row.thresholds) {
            let j = (k & 0xffff_ffff) as usize;
            keep[j] = draws[j] < t;
        }
    } else {
        for (rank, &k) in order.iter().enumerate() {
            let j = (k & 0xffff_ffff) as usize;
            keep[j] = draws[j] < threshold(rank);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::sparsify::tests::{apply_chunks, l1, same_bits};
    use crate::exec::kernels::Slices;
    use crate::graph::F;
    use crate::ir::Sparsify;
    use crate::rng::uniform;

    /// DELLA as fuse computed it on whole tensors before it streamed: the
    /// reference the streamed DELLA matches bit for bit.
    fn whole(x: &mut [f32], how: &Sparsify<F>, rescale: bool, key: u64, shape: &[usize]) -> Result<(), String> {
        let original = rescale.then(|| l1(x));
        match how {
            Sparsify::Della { density, epsilon } => {
                let (d, e) = (density.get(), epsilon.get());
                if d >= 1.0 {
                    return Ok(());
                }
                if d - e <= 0.0 || d + e >= 1.0 {
                    return Err(format!(
                        "della needs 0 < density - epsilon and density + epsilon < 1 (density {d}, epsilon {e})"
                    ));
                }
                della(x, d, e, key, crate::exec::kernels::row_len(shape));
            }
            other => unreachable!("{other:?} streams"),
        }
        if let Some(before) = original {
            let s = l1_ratio(before, l1(x));
            x.iter_mut().for_each(|v| *v *= s);
        }
        Ok(())
    }

    /// DELLA: within each row, keep probability rises linearly with the
    /// magnitude's rank from `density - eps` to `density + eps`.
    fn della(x: &mut [f32], density: f64, eps: f64, key: u64, row: usize) {
        let scratch = || (Vec::<u64>::new(), Vec::<usize>::new());
        x.par_chunks_mut(row.max(1)).enumerate().for_each_init(scratch, |(order, rank), (r, row_vals)| {
            let c = row_vals.len();
            // Ranks by magnitude, equal ones in index order: magnitudes order as
            // their bits do (as `total_cmp` orders them), so one sort of
            // (bits, index) keys, all distinct, gives the stable order.
            order.clear();
            order.extend(
                row_vals.iter().enumerate().map(|(j, v)| ((v.to_bits() & 0x7fff_ffff) as u64) << 32 | j as u64),
            );
            order.sort_unstable();
            rank.resize(c, 0);
            for (pos, &key) in order.iter().enumerate() {
                rank[(key & 0xffff_ffff) as usize] = pos;
            }
            for (j, v) in row_vals.iter_mut().enumerate() {
                let frac = if c > 1 { rank[j] as f64 / (c - 1) as f64 } else { 0.5 };
                let p = density - eps + 2.0 * eps * frac;
                if uniform(key, (r * c + j) as u64) >= p {
                    *v = 0.0;
                }
            }
        });
    }

    /// DELLA as fuse computed it before ranking by one sort of keys.
    fn della_by_sort(x: &mut [f32], density: f64, eps: f64, key: u64, row: usize) {
        for (r, row_vals) in x.chunks_mut(row).enumerate() {
            let c = row_vals.len();
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&a, &b| row_vals[a].abs().total_cmp(&row_vals[b].abs()).then(a.cmp(&b)));
            let mut rank = vec![0usize; c];
            for (pos, &i) in order.iter().enumerate() {
                rank[i] = pos;
            }
            for (j, v) in row_vals.iter_mut().enumerate() {
                let frac = if c > 1 { rank[j] as f64 / (c - 1) as f64 } else { 0.5 };
                if uniform(key, (r * c + j) as u64) >= density - eps + 2.0 * eps * frac {
                    *v = 0.0;
                }
            }
        }
    }

    #[test]
    fn della_ranks_like_a_stable_sort() {
        // Rows of coarse values (many equal magnitudes, both signs, -0),
        // NaN and infinities, and a row of one entry.
        let mut x: Vec<f32> = (0..40 * 97).map(|i| ((i * 7919 % 13) as f32 - 6.0) * 0.25).collect();
        x[3] = -0.0;
        x[100] = f32::NAN;
        x[101] = f32::NEG_INFINITY;
        x[500] = -f32::NAN;
        let key = crate::rng::stream_key(5, "w", 2);
        for row in [97, 1, 40 * 97] {
            let (mut ours, mut sorted) = (x.clone(), x.clone());
            della(&mut ours, 0.4, 0.3, key, row);
            della_by_sort(&mut sorted, 0.4, 0.3, key, row);
            assert!(same_bits(&ours, &sorted), "row {row}");
            assert!(ours.iter().zip(&x).any(|(a, b)| a.to_bits() != b.to_bits()), "row {row}: nothing dropped");
        }
    }

    #[test]
    fn rows_keep_as_a_stable_sort_ranks_them() {
        // Rows of continuous values, of coarse ones (bf16-like: few
        // magnitudes, many equal), half zeros, all equal, a wide spread of
        // exponents, one crowded value among spread ones, and NaN, -0 and
        // infinities; lengths either side of where the radix sort starts (256).
        let mut state = 3u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let kinds: [&dyn Fn(usize, f64) -> f32; 7] = [
            &|_, u| ((u - 0.5) * 3.0) as f32,
            &|_, u| (((u * 40.0) as i32 - 20) as f32) * 0.0078125,
            &|i, u| if i % 2 == 0 { 0.0 } else { (u - 0.5) as f32 },
            &|_, _| -0.25,
            &|_, u| ((u - 0.5) * 2f64.powi((u * 60.0) as i32 - 30)) as f32,
            &|i, u| if i % 3 == 0 { (u * 4.0) as f32 } else { 1.5 },
            &|i, u| match i % 50 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 => -0.0,
                _ => (u - 0.5) as f32,
            },
        ];
        let key = crate::rng::stream_key(4, "w", 0);
        for (kind, f) in kinds.iter().enumerate() {
            for c in [2, 255, 256, 300, 1024, 2816, 5000] {
                let vals: Vec<f32> = (0..c).map(|i| f(i, next())).collect();
                for (d, e) in [(0.45, 0.2), (0.5, 0.49), (0.3, 0.0), (0.5, -0.3)] {
                    let first = 7 * c;
                    // The stable sort's ranks, and each entry's uniform.
                    let mut order: Vec<usize> = (0..c).collect();
                    order.sort_by(|&a, &b| vals[a].abs().total_cmp(&vals[b].abs()).then(a.cmp(&b)));
                    let mut expected = vec![false; c];
                    for (rank, &j) in order.iter().enumerate() {
                        let p = d - e + 2.0 * e * rank as f64 / (c - 1) as f64;
                        expected[j] = uniform(key, (first + j) as u64) < p;
                    }
                    let mut row = Row::default();
                    della_row(&vals, first, d, e, key, &mut row);
                    let case = format!("kind {kind}, row {c}, density {d}, epsilon {e}");
                    assert_eq!(row.keep, expected, "{case}");
                }
            }
        }
    }

    #[test]
    fn della_streams_as_the_whole_tensor_code_computed_it() {
        // Rows shorter than a chunk (straddling chunk ends), rows longer
        // than a chunk, one row (a 1-D tensor) and rows of one entry; coarse
        // values (equal magnitudes), -0, NaN and infinities; with and
        // without rescale, on one thread and several; epsilons leaving a
        // share of the draws open (their bits held), nearly all of them,
        // none (0), and a negative one (keep falling with the rank).
        let n = 3 * CHUNK + 1234;
        let clean: Vec<f32> = (0..n).map(|i| ((i * 7919 % 61) as f32 - 30.0) * 0.125 + (i % 7) as f32 * 1e-3).collect();
        let mut x = clean.clone();
        x[3] = -0.0;
        x[CHUNK - 1] = f32::NAN;
        x[CHUNK + 5] = f32::NEG_INFINITY;
        // Rescaled, the clean values' sums are exact (summed with the keep
        // bits), the others' take the pass in index order.
        assert!(l1::exact_from_zero(n, l1::span(&clean)));
        assert!(!l1::exact_from_zero(n, l1::span(&x)));
        let key = crate::rng::stream_key(9, "w", 1);
        let rows = [1000, 1, CHUNK + 4321, n, (n / 2) + 1];
        for (row, x) in rows.iter().map(|r| (*r, &x)).chain([(1000, &clean), (n, &clean), (1, &clean)]) {
            let len = n / row * row;
            let xs = vec![x[..len].to_vec()];
            let shape = if row == len { vec![len] } else { vec![len / row, row] };
            for (rescale, (d, e)) in [false, true]
                .into_iter()
                .flat_map(|r| [(0.45, 0.2), (0.5, 0.49), (0.3, 0.0), (0.5, -0.3)].into_iter().map(move |de| (r, de)))
            {
                let mut reference = xs[0].clone();
                let how = Sparsify::Della { density: F::new(d), epsilon: F::new(e) };
                whole(&mut reference, &how, rescale, key, &shape).unwrap();
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let prep = pool
                        .install(|| {
                            prepare_della(&Slices(&xs), d, e, key, crate::exec::kernels::row_len(&shape), rescale)
                        })
                        .unwrap();
                    let ours = apply_chunks(&prep, &xs[0]);
                    let case = format!("row {row}, rescale {rescale}, density {d}, epsilon {e}, {threads} threads");
                    assert!(same_bits(&ours, &reference), "{case}");
                }
                let dropped = reference.iter().zip(&xs[0]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert!(dropped > 0, "row {row}: nothing dropped");
            }
        }
        let e = prepare_della(&Slices(&[x]), 0.5, 0.5, key, 10, false).unwrap_err();
        assert!(e.contains("epsilon"), "{e}");
    }

    #[test]
    fn deposit_and_extract_place_bits_in_order() {
        let mut state = 11u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state
        };
        for _ in 0..1000 {
            let (bits, mask) = (next(), next() & next());
            // Bit by bit: the k-th set bit of the mask takes bit k of `bits`.
            let mut expected = 0u64;
            let mut k = 0;
            for t in 0..64 {
                if mask >> t & 1 == 1 {
                    expected |= (bits >> k & 1) << t;
                    k += 1;
                }
            }
            for fast in [false, fast_bits()] {
                assert_eq!(deposit(bits, mask, fast), expected, "{bits:x} {mask:x} {fast}");
                let low = if mask == u64::MAX { bits } else { bits & ((1 << mask.count_ones()) - 1) };
                assert_eq!(extract(expected, mask, fast), low, "{bits:x} {mask:x} {fast}");
            }
        }
        for fast in [false, fast_bits()] {
            assert_eq!(deposit(u64::MAX, u64::MAX, fast), u64::MAX);
            assert_eq!(extract(u64::MAX, u64::MAX, fast), u64::MAX);
            assert_eq!(deposit(u64::MAX, 0, fast), 0);
        }
    }

    #[test]
    fn radix_sort_sorts_like_a_sort() {
        // High halves with few distinct values (equal magnitudes), bytes
        // all alike in some places, and spread over all bits.
        let mut state = 7u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        for len in [0, 1, 2, 3, 255, 256, 257, 1000, 4099] {
            for spread in [0u64, 0x3, 0xff00, 0x7f00_0ff0, 0x0fff_ff00, 0x7fff_ffff] {
                let mut keys: Vec<u64> = (0..len as u64).map(|j| (next() & spread) << 32 | j).collect();
                let mut sorted = keys.clone();
                sorted.sort_unstable();
                radix_sort(&mut keys, &mut Vec::new(), &mut Vec::new());
                assert_eq!(keys, sorted, "len {len}, spread {spread:x}");
            }
        }
    }
}
