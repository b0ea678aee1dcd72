//! DELLA: within each row, keep each entry with a probability rising
//! linearly with its magnitude's rank, then rescale by the L1 ratio.

use super::{l1, l1_ratio};
use crate::exec::kernels::{Prepared, Source, CHUNK};
use rayon::prelude::*;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// DELLA's statistics: one keep bit per entry (bit `i % 64` of word
/// `i / 64`) and, with rescale, the L1 ratio. Each row is ranked on its own
/// (1-D tensors are one row), by the worker of the chunk where it starts,
/// which reads the chunks the row spans; rows are independent, so the bits
/// are the same on any thread count. The L1 sums are then added in index
/// order, as the whole-tensor code added them, in one pass.
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
    let words: Vec<AtomicU64> = (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    let scratch = || (Vec::<f32>::new(), Row::default());
    // With rescale, each chunk's rows' L1 sums on the way (each row's in
    // index order) and their span, for when the sums are exact.
    let parts = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map_init(scratch, |(buf, scratch), c| {
            // The rows starting in chunk `c`, read from its start to the end
            // of the last of them, a chunk at a time.
            let s = c * CHUNK;
            let (r0, r1) = (s.div_ceil(row), (s + CHUNK).min(n).div_ceil(row));
            let mut part = ((0f64, 0f64), (0u32, u32::MAX));
            if r0 >= r1 {
                return Ok(part);
            }
            buf.resize(r1 * row - s, 0.0);
            for (k, piece) in buf.chunks_mut(CHUNK).enumerate() {
                src.fill(0, s + k * CHUNK, piece)?;
            }
            for r in r0..r1 {
                let vals = &buf[r * row - s..(r + 1) * row - s];
                della_row(vals, r * row, density, eps, key, scratch, &words);
                if rescale {
                    let (max, low) = l1::span(vals);
                    part.0 = l1::add(vals, &scratch.keep, part.0);
                    part.1 = (part.1 .0.max(max), part.1 .1.min(low));
                }
            }
            Ok::<_, String>(part)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bits: Vec<u64> = words.into_iter().map(AtomicU64::into_inner).collect();
    let span = parts.iter().fold((0, u32::MAX), |(m, l), p| (m.max(p.1 .0), l.min(p.1 .1)));
    let scale = if rescale && l1::exact_from_zero(n, span) {
        // Every partial sum of these terms is a double: the chain's value,
        // whatever the grouping, so no pass of its own.
        let (before, after) = parts.iter().fold((0f64, 0f64), |(b, a), p| (b + p.0 .0, a + p.0 .1));
        Some(l1_ratio(before, after))
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
                // Chunks start at multiples of 64: whole words of bits.
                let words = &bits[(b0 + k) * CHUNK / 64..];
                for (x, words) in v.chunks(l1::BLOCK).zip(words.chunks(l1::BLOCK / 64)) {
                    let keep = &mut keep[..x.len()];
                    for (j, k) in keep.iter_mut().enumerate() {
                        *k = words[j / 64] >> (j % 64) & 1 == 1;
                    }
                    (before, after) = l1::add(x, keep, (before, after));
                }
            }
        }
        Some(l1_ratio(before, after))
    } else {
        None
    };
    Ok(Prepared::Della { bits, scale })
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
fn radix_sort(keys: &mut Vec<u64>, spare: &mut Vec<u64>, counts: &mut Vec<u32>) {
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
    let (mut from, mut to) = (keys, spare);
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
/// `density - eps` to `density + eps`; the kept entries' bits are set in
/// `words`.
fn della_row(vals: &[f32], first: usize, density: f64, eps: f64, key: u64, row: &mut Row, words: &[AtomicU64]) {
    let c = vals.len();
    // The probability of rank `rank`, and the draw below which an entry
    // is kept: `uniform(key, i) < p` is `draw(key, i) < threshold(p)`.
    let threshold = |rank: usize| {
        let frac = if c > 1 { rank as f64 / (c - 1) as f64 } else { 0.5 };
        crate::rng::threshold(density - eps + 2.0 * eps * frac)
    };
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
    // Bits gathered a word at a time; a word shared with a row of another
    // worker gets them by `fetch_or`.
    let mut word = 0u64;
    for (j, &k) in keep.iter().enumerate() {
        let i = first + j;
        word |= (k as u64) << (i % 64);
        if i % 64 == 63 || j + 1 == c {
            if word != 0 {
                words[i / 64].fetch_or(word, Relaxed);
            }
            word = 0;
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
    fn della_streams_as_the_whole_tensor_code_computed_it() {
        // Rows shorter than a chunk (straddling chunk ends), rows longer
        // than a chunk, one row (a 1-D tensor) and rows of one entry; coarse
        // values (equal magnitudes), -0, NaN and infinities; with and
        // without rescale, on one thread and several.
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
            for rescale in [false, true] {
                let mut reference = xs[0].clone();
                let how = Sparsify::Della { density: F::new(0.45), epsilon: F::new(0.2) };
                whole(&mut reference, &how, rescale, key, &shape).unwrap();
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let prep = pool
                        .install(|| {
                            prepare_della(&Slices(&xs), 0.45, 0.2, key, crate::exec::kernels::row_len(&shape), rescale)
                        })
                        .unwrap();
                    let ours = apply_chunks(&prep, &xs[0]);
                    assert!(same_bits(&ours, &reference), "row {row}, rescale {rescale}, {threads} threads");
                }
                let dropped = reference.iter().zip(&xs[0]).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                assert!(dropped > 0, "row {row}: nothing dropped");
            }
        }
        let e = prepare_della(&Slices(&[x]), 0.5, 0.5, key, 10, false).unwrap_err();
        assert!(e.contains("epsilon"), "{e}");
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
