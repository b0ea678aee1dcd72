//! Combining task vectors and base-relative methods: sign consensus (TIES,
//! DARE-TIES, ...), SCE, Model Stock, NearSwap and Arcee Fusion, as mergekit
//! 0.1.5 computes them; RAM and RAM+ (tensor-local), as mergekit's newer
//! `ram.py` does.

use super::{dot, partials, row_len, Prepared, Source, CHUNK};
use rayon::prelude::*;

/// Per entry: `sum_i w_i d_i` over all inputs, or with `elect_sign` over the
/// inputs whose weighted sign matches the sign of that sum (zeros never
/// match); divided by the summed weights of those inputs when `normalize`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn consensus(deltas: &[&[f32]], weights: &[f64], elect_sign: bool, normalize: bool, out: &mut [f32]) {
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    // Blocks of entries, each input's loop over a block at a time, so that
    // the loops vectorize; every entry sees the same operations in the same
    // order as a loop over inputs per entry would do.
    for (b, out) in out.chunks_mut(B).enumerate() {
        let (s, len) = (b * B, out.len());
        consensus_block(&|i| &deltas[i][s..s + len], deltas.len(), &w, elect_sign, normalize, out);
    }
}

/// A magnitude trim where a chunk keeps all or none of its entries equal to
/// the threshold: `x * scale` where `|x| > threshold`, or equal to it with
/// `keep_equal`; else 0.
#[derive(Clone, Copy, Debug)]
pub struct Trim {
    pub threshold: f32,
    pub keep_equal: bool,
    pub scale: f32,
}

/// [`consensus`] of the trims of `deltas` (`trims[i]` of `deltas[i]`), a
/// block at a time without writing the trimmed inputs out: the same
/// operations on each entry as trimming, then [`consensus`].
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn consensus_of_trims(
    deltas: &[&[f32]],
    trims: &[Trim],
    weights: &[f64],
    elect_sign: bool,
    normalize: bool,
    out: &mut [f32],
) {
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    // Two to four inputs (TIES merges most often), an entry at a time with
    // every input's work in registers.
    let len = out.len();
    macro_rules! per_entry {
        ($n:literal) => {{
            let d: [&[f32]; $n] = std::array::from_fn(|j| &deltas[j][..len]);
            return trims_per_entry::<$n>(|j, i| d[j][i], trims, &w, elect_sign, normalize, out);
        }};
    }
    match (deltas.len(), w.len()) {
        (2, 2..) => per_entry!(2),
        (3, 3..) => per_entry!(3),
        (4, 4..) => per_entry!(4),
        _ => {}
    }
    let mut trimmed = vec![[0f32; B]; deltas.len()];
    for (b, out) in out.chunks_mut(B).enumerate() {
        let (s, len) = (b * B, out.len());
        for ((t, d), trim) in trimmed.iter_mut().zip(deltas).zip(trims) {
            let (th, keep, sc) = (trim.threshold, trim.keep_equal, trim.scale);
            for (t, &x) in t[..len].iter_mut().zip(&d[s..s + len]) {
                let m = x.abs();
                *t = if m > th || (keep && m == th) { x * sc } else { 0.0 };
            }
        }
        consensus_block(&|i| &trimmed[i][..len], deltas.len(), &w, elect_sign, normalize, out);
    }
}

/// [`consensus_of_trims`] of task vectors made as they are read: input `j`
/// is `a_j c0_j + b_j c1_j` (a fine-tune and its base), never written out.
/// The same bits as computing each sum (as `stream`'s linear combinations
/// do: a product by 1 is exact) and then [`consensus_of_trims`].
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn consensus_of_trimmed_sums(
    sums: &[Sum<'_>],
    trims: &[Trim],
    weights: &[f64],
    elect_sign: bool,
    normalize: bool,
    out: &mut [f32],
) {
    let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
    let len = out.len();
    macro_rules! per_entry {
        ($n:literal) => {{
            let a: [&[f32]; $n] = std::array::from_fn(|j| &sums[j].a[..len]);
            let b: [&[f32]; $n] = std::array::from_fn(|j| &sums[j].b[..len]);
            let c0: [f32; $n] = std::array::from_fn(|j| sums[j].c0);
            let c1: [f32; $n] = std::array::from_fn(|j| sums[j].c1);
            return trims_per_entry::<$n>(
                |j, i| a[j][i] * c0[j] + b[j][i] * c1[j],
                trims,
                &w,
                elect_sign,
                normalize,
                out,
            );
        }};
    }
    match (sums.len(), w.len()) {
        (2, 2..) => per_entry!(2),
        (3, 3..) => per_entry!(3),
        (4, 4..) => per_entry!(4),
        _ => {}
    }
    let deltas: Vec<Vec<f32>> =
        sums.iter().map(|s| s.a[..len].iter().zip(&s.b[..len]).map(|(a, b)| a * s.c0 + b * s.c1).collect()).collect();
    let refs: Vec<&[f32]> = deltas.iter().map(|d| &d[..]).collect();
    consensus_of_trims(&refs, trims, weights, elect_sign, normalize, out);
}

/// `a c0 + b c1`, entry by entry.
#[derive(Clone, Copy, Debug)]
pub struct Sum<'a> {
    pub a: &'a [f32],
    pub c0: f32,
    pub b: &'a [f32],
    pub c1: f32,
}

/// [`consensus_of_trims`] for `N` inputs, an entry at a time: per entry,
/// the operations of the blocks, in their order (the sums start at +0 and
/// add the inputs' terms in turn).
#[inline(always)]
fn trims_per_entry<const N: usize>(
    delta: impl Fn(usize, usize) -> f32,
    trims: &[Trim],
    w: &[f32],
    elect_sign: bool,
    normalize: bool,
    out: &mut [f32],
) {
    let th: [f32; N] = std::array::from_fn(|j| trims[j].threshold);
    let keep: [bool; N] = std::array::from_fn(|j| trims[j].keep_equal);
    let sc: [f32; N] = std::array::from_fn(|j| trims[j].scale);
    let w: [f32; N] = std::array::from_fn(|j| w[j]);
    for (i, o) in out.iter_mut().enumerate() {
        let t: [f32; N] = std::array::from_fn(|j| {
            let x = delta(j, i);
            let m = x.abs();
            if m > th[j] || (keep[j] && m == th[j]) {
                x * sc[j]
            } else {
                0.0
            }
        });
        if elect_sign {
            let mut sum = 0f32;
            for j in 0..N {
                sum += t[j] * w[j];
            }
            let (mut mixed, mut divisor) = (0f32, 0f32);
            for j in 0..N {
                let wd = t[j] * w[j];
                let agrees = if sum >= 0.0 { wd > 0.0 } else { wd < 0.0 };
                mixed += if agrees { wd } else { 0.0 };
                divisor += if agrees { w[j] } else { 0.0 };
            }
            *o = if !normalize {
                mixed
            } else if divisor == 0.0 {
                mixed / 1.0
            } else {
                mixed / divisor
            };
        } else {
            let (mut mixed, mut divisor) = (0f32, 0f32);
            for j in 0..N {
                mixed += t[j] * w[j];
                divisor += w[j];
            }
            let divisor = if divisor.abs() < 1e-8 { 1.0 } else { divisor };
            *o = if normalize { mixed / divisor } else { mixed };
        }
    }
}

/// Entries a block of [`consensus`] works on.
const B: usize = 256;

/// [`consensus`] on one block of at most [`B`] entries; `delta(i)` is input
/// `i`'s block.
#[inline(always)]
fn consensus_block<'a>(
    delta: &dyn Fn(usize) -> &'a [f32],
    inputs: usize,
    w: &[f32],
    elect_sign: bool,
    normalize: bool,
    out: &mut [f32],
) {
    let len = out.len();
    let (mut mixed, mut divisor) = ([0f32; B], [0f32; B]);
    if elect_sign {
        // Only the sum's sign is used (`>= 0` for either zero).
        let mut sum = [0f32; B];
        for (i, &w) in w.iter().enumerate().take(inputs) {
            for (acc, x) in sum[..len].iter_mut().zip(delta(i)) {
                *acc += x * w;
            }
        }
        // An entry counts when its weighted sign matches the majority
        // (zero and NaN never do).
        for (i, &w) in w.iter().enumerate().take(inputs) {
            let entries = mixed[..len].iter_mut().zip(&mut divisor[..len]).zip(&sum[..len]).zip(delta(i));
            for (((m, dv), &sum), &x) in entries {
                let wd = x * w;
                let agrees = if sum >= 0.0 { wd > 0.0 } else { wd < 0.0 };
                // Adding +0 leaves the sums as they are: neither is ever
                // -0 (they start at +0 and take nonzero terms of one sign
                // or weights, whose exact cancellation gives +0). Written
                // as a select of the term, not of the sum, it vectorizes.
                *m += if agrees { wd } else { 0.0 };
                *dv += if agrees { w } else { 0.0 };
            }
        }
        for (o, (m, d)) in out.iter_mut().zip(mixed.iter().zip(&divisor)) {
            *o = if !normalize {
                *m
            } else if *d == 0.0 {
                m / 1.0
            } else {
                m / d
            };
        }
    } else {
        for (i, &w) in w.iter().enumerate().take(inputs) {
            for (acc, x) in mixed[..len].iter_mut().zip(delta(i)) {
                *acc += x * w;
            }
            for acc in &mut divisor[..len] {
                *acc += w;
            }
        }
        for (o, (m, d)) in out.iter_mut().zip(mixed.iter().zip(&divisor)) {
            let d = if d.abs() < 1e-8 { 1.0 } else { *d };
            *o = if normalize { m / d } else { *m };
        }
    }
}

/// Per entry the delta of largest magnitude, times `lambda`. On equal
/// magnitudes the later model wins, as in MagMax's reference code (and
/// FusionBench's): on real fine-tunes a few entries have `d_1 = -d_2`.
pub fn magmax(deltas: &[&[f32]], lambda: f32, out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let mut best = 0f32;
        for d in deltas {
            if d[i].abs() >= best.abs() {
                best = d[i];
            }
        }
        *o = lambda * best;
    }
}

/// RAM (Reinforced Agent Merging), per entry: the task vectors whose
/// magnitude exceeds `epsilon` contribute; an entry only one of them changes
/// takes that value times its model's `boost`; one that several change takes
/// their mean. `boost` is 1 for plain RAM.
pub fn ram(deltas: &[&[f32]], epsilon: f32, boost: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        let changed = |d: &[f32]| d[i].abs() > epsilon;
        *o = match deltas.iter().filter(|d| changed(d)).count() {
            0 => 0.0,
            1 => deltas.iter().zip(boost).find(|(d, _)| changed(d)).map_or(0.0, |(d, b)| d[i] * b),
            // Each divided, then summed: mergekit's order of operations.
            n => deltas.iter().filter(|d| changed(d)).map(|d| d[i] / n as f32).sum(),
        };
    }
}

/// RAM+'s per-model boost of the entries only that model changes:
/// `1 + r * clamp(shared / max(unique, epsilon), 0, alpha)`, where `shared`
/// counts the model's changed entries that another model changes too and
/// `unique` those it changes alone, over the whole tensor.
pub fn prepare_ramplus(src: &dyn Source, r: f64, alpha: f64, epsilon: f64) -> Result<Prepared, String> {
    let k = src.inputs();
    let eps = epsilon as f32;
    let parts = partials(src, k, |_, b| {
        let (mut shared, mut unique) = (vec![0u64; k], vec![0u64; k]);
        for i in 0..b[0].len() {
            let count = b.iter().filter(|d| d[i].abs() > eps).count();
            for (m, d) in b.iter().enumerate() {
                if d[i].abs() > eps {
                    if count > 1 {
                        shared[m] += 1;
                    } else {
                        unique[m] += 1;
                    }
                }
            }
        }
        (shared, unique)
    })?;
    let (mut shared, mut unique) = (vec![0u64; k], vec![0u64; k]);
    for (s, u) in parts {
        shared.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        unique.iter_mut().zip(u).for_each(|(a, b)| *a += b);
    }
    let boost = shared
        .iter()
        .zip(&unique)
        // torch's clamp: max then min, so a negative alpha gives alpha.
        .map(|(&s, &u)| (1.0 + r * (s as f64 / (u as f64).max(epsilon)).max(0.0).min(alpha)) as f32)
        .collect();
    Ok(Prepared::Ram { boost })
}

/// `w b + (1 - w) a` with `w = clamp(t / max(|a - b|, 1e-6), 0, 1)`.
pub fn nearswap(a: &[f32], b: &[f32], t: f64, out: &mut [f32]) {
    let t = t as f32;
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        let w = (t / (x - y).abs().max(1e-6)).clamp(0.0, 1.0);
        *o = w * y + (1.0 - w) * x;
    }
}

/// SCE on deltas: keep the `select_topk` fraction of positions with the
/// highest variance across deltas, elect signs (unweighted sum), weight each
/// delta by its mean square, and average the agreeing entries. Its
/// statistics: the variances' threshold (a radix selection over variances
/// computed chunk by chunk), and the weights.
pub fn prepare_sce(src: &dyn Source, select_topk: f64) -> Result<Prepared, String> {
    let n = src.len();
    let m = src.inputs();
    let chunks = n.div_ceil(CHUNK);
    // The threshold on the variances, and how many entries equal to it may
    // be kept in all (in index order), and in each chunk's share.
    let (mut threshold, mut budget) = (f32::INFINITY, 0usize);
    let mut equal_per_chunk = None;
    let select = select_topk < 1.0;
    if select {
        let vars = Variances(src);
        // k is the `select_topk` share of the nonzero variances, counted by
        // the selection's own pass.
        if let Some((k, sel)) = super::select::kth_largest_of_nonzero(&vars, select_topk)? {
            let t = sel.threshold;
            // Entries compared as floats: NaN is never above, so with
            // entries that are not finite (the selection then has no
            // per-chunk counts) they are counted.
            let above = match sel.equal_per_chunk {
                Some(per_chunk) => {
                    equal_per_chunk = Some(per_chunk);
                    sel.above
                }
                None => partials(&vars, 1, |_, b| b[0].iter().filter(|v| **v > t).count())?.iter().sum(),
            };
            (threshold, budget) = (t, k - above);
            if budget > 0 && equal_per_chunk.is_none() {
                equal_per_chunk = Some(partials(&vars, 1, |_, b| b[0].iter().filter(|v| **v == t).count())?);
            }
        }
    }
    // The budget of entries equal to the threshold left at each chunk's
    // start (they are kept in index order).
    let budgets: Vec<usize> = match equal_per_chunk {
        Some(equal) => equal
            .iter()
            .scan(budget, |left, &e| {
                let at_start = *left;
                *left = left.saturating_sub(e);
                Some(at_start)
            })
            .collect(),
        None => vec![budget; chunks],
    };
    // Each task vector's energy, masked: per chunk in parallel (f64 sums in
    // index order within a chunk), the chunks' sums added in chunk order,
    // so the same on any thread count.
    let per_chunk: Vec<Vec<f64>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let len = CHUNK.min(n - c * CHUNK);
            let mut bufs = vec![vec![0f32; len]; m];
            for (i, b) in bufs.iter_mut().enumerate() {
                src.fill(i, c * CHUNK, b)?;
            }
            if select {
                let mut var = vec![0f32; len];
                let mut ds: Vec<&mut [f32]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
                sce_mask(&mut ds, threshold, &budgets, c, &mut var);
            }
            Ok(energies(&bufs))
        })
        .collect::<Result<_, String>>()?;
    let energy: Vec<f64> = (0..m).map(|j| per_chunk.iter().fold(-0f64, |a, c| a + c[j])).collect();
    let energy: Vec<f64> = energy.iter().map(|e| e / n as f64).collect();
    let total: f64 = energy.iter().sum();
    let mf = m as f64;
    let weights = energy.iter().map(|e| if total.abs() < 1e-6 { 1.0 / mf } else { e / total } as f32).collect();
    Ok(Prepared::Sce { select, threshold, budgets, weights })
}

/// Per entry, the variance of the task vectors' values, as SCE selects by.
/// Blocks of entries, each input's loop over a block at a time so that the
/// loops vectorize: every entry sees the same operations in the same order
/// as a loop over the inputs per entry (sums start at -0, as `Sum` does).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn sce_variances(ds: &[&mut [f32]], out: &mut [f32]) {
    const B: usize = 256;
    let m = ds.len() as f64;
    for (b, out) in out.chunks_mut(B).enumerate() {
        let (s, len) = (b * B, out.len());
        let mut mean = [-0f64; B];
        for d in ds {
            for (acc, x) in mean[..len].iter_mut().zip(&d[s..s + len]) {
                *acc += *x as f64;
            }
        }
        mean[..len].iter_mut().for_each(|v| *v /= m);
        let mut var = [-0f64; B];
        for d in ds {
            for ((acc, x), mean) in var[..len].iter_mut().zip(&d[s..s + len]).zip(&mean) {
                *acc += (*x as f64 - mean).powi(2);
            }
        }
        for (o, v) in out.iter_mut().zip(&var) {
            *o = (v / m) as f32;
        }
    }
}

/// Zeroes the entries SCE does not select in chunk `c` of the task
/// vectors: kept where the variance is above `threshold`, or equal to it
/// while the chunk's budget lasts (in index order; `budgets` holds what is
/// left at each chunk's start).
fn sce_mask(ds: &mut [&mut [f32]], threshold: f32, budgets: &[usize], c: usize, var: &mut [f32]) {
    sce_variances(ds, var);
    let budget = budgets[c];
    // The next chunk's budget is left over: this one keeps all its entries
    // equal to the threshold.
    let all_equal = budgets.get(c + 1).is_some_and(|&b| b > 0);
    if budget == 0 || all_equal {
        for d in ds.iter_mut() {
            mask_by_variance(d, var, threshold, budget > 0);
        }
        return;
    }
    let mut budget = budget;
    for (i, v) in var.iter().enumerate() {
        let keep = *v > threshold
            || (*v == threshold && budget > 0 && {
                budget -= 1;
                true
            });
        if !keep {
            ds.iter_mut().for_each(|d| d[i] = 0.0);
        }
    }
}

/// Zeroes the entries of `d` whose variance is below `threshold` (and those
/// equal to it unless `keep_equal`).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn mask_by_variance(d: &mut [f32], var: &[f32], threshold: f32, keep_equal: bool) {
    for (x, v) in d.iter_mut().zip(var) {
        let keep = *v > threshold || (keep_equal && *v == threshold);
        *x = if keep { *x } else { 0.0 };
    }
}

/// Each task vector's sum of squares in f64, in index order: four
/// independent chains side by side (each task vector's additions in its
/// own order), so that one does not wait on another's.
fn energies(bufs: &[Vec<f32>]) -> Vec<f64> {
    let len = bufs.first().map_or(0, Vec::len);
    let zero = vec![0f32; len];
    let mut out = Vec::with_capacity(bufs.len());
    for group in bufs.chunks(4) {
        let s: [&[f32]; 4] = std::array::from_fn(|k| group.get(k).map_or(&zero[..], |b| &b[..]));
        let mut e = [-0f64; 4];
        for (((a, b), c), d) in s[0].iter().zip(s[1]).zip(s[2]).zip(s[3]) {
            e[0] += (*a as f64).powi(2);
            e[1] += (*b as f64).powi(2);
            e[2] += (*c as f64).powi(2);
            e[3] += (*d as f64).powi(2);
        }
        out.extend_from_slice(&e[..group.len()]);
    }
    out
}

/// One chunk of SCE: select by variance, then per entry the weighted mean
/// of the task vectors whose sign matches the majority's.
pub fn apply_sce(prep: &Prepared, start: usize, inputs: &[&[f32]], out: &mut [f32]) {
    let Prepared::Sce { select, threshold, budgets, weights } = prep else { unreachable!("{prep:?}") };
    let mut owned: Vec<Vec<f32>> = inputs.iter().map(|d| d.to_vec()).collect();
    let mut ds: Vec<&mut [f32]> = owned.iter_mut().map(|d| &mut d[..]).collect();
    if *select {
        let mut var = vec![0f32; out.len()];
        sce_mask(&mut ds, *threshold, budgets, start / CHUNK, &mut var);
    }
    let ds: Vec<&[f32]> = ds.iter().map(|d| &d[..]).collect();
    sce_mix(&ds, weights, out);
}

/// Per entry the weighted mean of the task vectors whose sign matches the
/// majority's (the sign of their sum), in blocks of entries as
/// [`consensus`] does: the term added, not the sum, is selected, and adding
/// +0 leaves the sums as they are (they are never -0).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn sce_mix(ds: &[&[f32]], weights: &[f32], out: &mut [f32]) {
    const B: usize = 256;
    for (b, out) in out.chunks_mut(B).enumerate() {
        let (s, len) = (b * B, out.len());
        let mut sum = [-0f32; B];
        for d in ds {
            for (acc, x) in sum[..len].iter_mut().zip(&d[s..s + len]) {
                *acc += x;
            }
        }
        let (mut mixed, mut divisor) = ([0f32; B], [0f32; B]);
        for (d, &w) in ds.iter().zip(weights) {
            let entries = mixed[..len].iter_mut().zip(&mut divisor[..len]).zip(&sum[..len]).zip(&d[s..s + len]);
            for (((m, dv), &sum), &x) in entries {
                let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
                let agrees = x != 0.0 && x.signum() == majority;
                *m += if agrees { x * w } else { 0.0 };
                *dv += if agrees { w } else { 0.0 };
            }
        }
        for (o, (m, d)) in out.iter_mut().zip(mixed.iter().zip(&divisor)) {
            *o = m / d.max(1e-6);
        }
    }
}

/// Per-entry variances of a source's inputs, as a source of one input.
struct Variances<'a>(&'a dyn Source);

impl Source for Variances<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn inputs(&self) -> usize {
        1
    }
    fn fill(&self, _: usize, start: usize, out: &mut [f32]) -> Result<(), String> {
        let mut bufs = vec![vec![0f32; out.len()]; self.0.inputs()];
        for (i, b) in bufs.iter_mut().enumerate() {
            self.0.fill(i, start, b)?;
        }
        let ds: Vec<&mut [f32]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        sce_variances(&ds, out);
        Ok(())
    }
}

/// Model Stock's interpolation factor from the mean pairwise cosine of N
/// task vectors: `t = N cos / (1 + (N - 1) cos)`, 0 where that is undefined.
fn stock_t(norms: &[f64], dots: &[f64], n: usize) -> f32 {
    let (mut cos_sum, mut pairs, mut k) = (0.0, 0.0, 0);
    for i in 0..n {
        for j in i + 1..n {
            cos_sum += (dots[k] / (norms[i].sqrt() * norms[j].sqrt()).max(1e-6)).clamp(-1.0, 1.0);
            pairs += 1.0;
            k += 1;
        }
    }
    let cos = cos_sum / pairs;
    let nm = n as f64;
    let denom = 1.0 + (nm - 1.0) * cos;
    (if denom.abs() < 1e-6 { 0.0 } else { nm * cos / denom }) as f32
}

/// The squared norms and pairwise dot products of the deltas `m_i - base`.
fn stock_stats(base: &[f32], models: &[&[f32]]) -> (Vec<f64>, Vec<f64>) {
    let deltas: Vec<Vec<f32>> = models.iter().map(|m| m.iter().zip(base).map(|(x, b)| x - b).collect()).collect();
    let norms = deltas.iter().map(|d| dot(d, d)).collect();
    let mut dots = Vec::new();
    for i in 0..deltas.len() {
        for j in i + 1..deltas.len() {
            dots.push(dot(&deltas[i], &deltas[j]));
        }
    }
    (norms, dots)
}

/// Model Stock over the whole tensor: one pass for norms and dots.
pub fn prepare_stock(src: &dyn Source) -> Result<Prepared, String> {
    let k = src.inputs();
    let parts = partials(src, k, |_, b| {
        let ms: Vec<&[f32]> = b[1..].iter().map(Vec::as_slice).collect();
        stock_stats(&b[0], &ms)
    })?;
    let (mut norms, mut dots) = (vec![0.0; k - 1], vec![0.0; (k - 1) * (k - 2) / 2]);
    for (n, d) in parts {
        norms.iter_mut().zip(n).for_each(|(a, b)| *a += b);
        dots.iter_mut().zip(d).for_each(|(a, b)| *a += b);
    }
    Ok(Prepared::Stock { t: stock_t(&norms, &dots, k - 1) })
}

/// `t mean(models) + (1 - t) base` on one chunk (inputs: base, then models).
pub fn apply_stock(t: f32, inputs: &[&[f32]], out: &mut [f32]) {
    let nm = (inputs.len() - 1) as f64;
    for (k, o) in out.iter_mut().enumerate() {
        let mean = (inputs[1..].iter().map(|m| m[k] as f64).sum::<f64>() / nm) as f32;
        *o = t * mean + (1.0 - t) * inputs[0][k];
    }
}

/// Model Stock with one factor per row (`filter_wise`).
pub fn model_stock_rows(base: &[f32], models: &[Vec<f32>], shape: &[usize]) -> Vec<f32> {
    let row = row_len(shape).max(1);
    let mut out = vec![0f32; base.len()];
    for start in (0..base.len()).step_by(row) {
        let end = (start + row).min(base.len());
        let ms: Vec<&[f32]> = models.iter().map(|m| &m[start..end]).collect();
        let (norms, dots) = stock_stats(&base[start..end], &ms);
        let t = stock_t(&norms, &dots, models.len());
        let mut ins = vec![&base[start..end]];
        ins.extend(ms);
        apply_stock(t, &ins, &mut out[start..end]);
    }
    out
}

/// Arcee Fusion: importance `|b - a| * KL(softmax(b) || softmax(a))` per row
/// (softmax on the last dimension, plus 1e-8), threshold `median + 1.5 IQR`
/// of the importance with mergekit's quantiles (the sorted value at index
/// `int(q (n - 1))`), and `a + (b - a)` where the importance reaches it.
///
/// The KL divergence of two nearly equal rows is tiny, so mergekit's float32
/// arithmetic decides borderline entries by rounding noise; we compute it in
/// f64 and so agree with it everywhere but on such entries.
pub fn arcee_fusion(a: &[f32], b: &[f32], shape: &[usize]) -> Vec<f32> {
    let row = row_len(shape).max(1);
    let mut importance = vec![0f64; a.len()];
    for ((ra, rb), imp) in a.chunks(row).zip(b.chunks(row)).zip(importance.chunks_mut(row)) {
        let p = softmax(rb);
        let q = softmax(ra);
        let kl: f64 = p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum();
        for ((x, y), m) in ra.iter().zip(rb).zip(imp.iter_mut()) {
            *m = (*y as f64 - *x as f64).abs() * kl;
        }
    }
    let mut sorted = importance.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let at = |q: f64| sorted[(q * (sorted.len() - 1) as f64) as usize];
    let threshold = at(0.5) + 1.5 * (at(0.75) - at(0.25));
    a.iter().zip(b).zip(&importance).map(|((x, y), m)| if *m >= threshold { x + (y - x) } else { *x }).collect()
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|v| (*v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s + 1e-8).collect()
}

#[cfg(test)]
mod tests {
    /// Task vectors made as they are read give the bits of making them
    /// first, as a linear combination does (products by 1 left out there),
    /// for 2 to 5 inputs and coefficients 1, -1 and others.
    #[test]
    fn consensus_of_trimmed_sums_matches_making_the_sums_first() {
        use super::{consensus_of_trimmed_sums, consensus_of_trims, Sum, Trim};
        let v = |i: usize, j: usize| ((i * 37 + j * 101) % 89) as f32 / 64.0 - 0.7;
        for (len, inputs) in [(257usize, 2), (1000, 3), (999, 4), (300, 5)] {
            let a: Vec<Vec<f32>> = (0..inputs).map(|j| (0..len).map(|i| v(i, j + 1)).collect()).collect();
            let base: Vec<f32> = (0..len).map(|i| v(i, 0)).collect();
            for (c0, c1) in [(1.0f32, -1.0f32), (0.5, -1.0), (1.0, 1.0), (2.0, 0.25)] {
                let made: Vec<Vec<f32>> = a
                    .iter()
                    .map(|a| {
                        a.iter()
                            .zip(&base)
                            .map(|(x, b)| match (c0 == 1.0, c1 == 1.0) {
                                (true, true) => x + b,
                                (true, false) => x + b * c1,
                                (false, true) => x * c0 + b,
                                (false, false) => x * c0 + b * c1,
                            })
                            .collect()
                    })
                    .collect();
                let refs: Vec<&[f32]> = made.iter().map(|m| &m[..]).collect();
                let sums: Vec<Sum> = a.iter().map(|a| Sum { a, c0, b: &base, c1 }).collect();
                let trims = vec![Trim { threshold: 0.25, keep_equal: true, scale: 1.0 }; inputs];
                let weights = [1.0, 0.7, 0.3, 1.5, 0.25][..inputs].to_vec();
                let (mut want, mut got) = (vec![0f32; len], vec![0f32; len]);
                consensus_of_trims(&refs, &trims, &weights, true, true, &mut want);
                consensus_of_trimmed_sums(&sums, &trims, &weights, true, true, &mut got);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{inputs} inputs, {c0} {c1}");
            }
        }
    }

    /// The fused kernel gives the bits of trimming each input (as
    /// `sparsify::apply` does) and then taking the consensus, on lengths
    /// around a block, with ties at the thresholds, zeros, -0, NaN and
    /// infinity, every combination of sign election and normalization, and
    /// uneven weights.
    #[test]
    fn consensus_of_trims_matches_trimming_then_consensus() {
        use super::{consensus, consensus_of_trims, Trim};
        use crate::exec::kernels::{sparsify, Prepared};
        let value = |i: usize, j: usize| -> f32 {
            match (i * 31 + j * 17) % 97 {
                0 => 0.0,
                1 => -0.0,
                2 if j == 1 => f32::NAN,
                3 if j == 2 => f32::INFINITY,
                h => ((h as i64 * 7 + i as i64) % 23 - 11) as f32 / 8.0,
            }
        };
        for (len, inputs) in [(1usize, 3), (255, 3), (256, 2), (257, 3), (1000, 3), (1000, 2), (999, 4), (300, 5)] {
            let deltas: Vec<Vec<f32>> = (0..inputs).map(|j| (0..len).map(|i| value(i, j)).collect()).collect();
            let refs: Vec<&[f32]> = deltas.iter().map(|d| &d[..]).collect();
            for (threshold, keep_equal, scale) in
                [(0.5, true, 1.0), (0.5, false, 1.0), (0.0, false, 1.5), (1.25, true, 0.5)]
            {
                let trims = vec![Trim { threshold, keep_equal, scale }; inputs];
                // Budgets that keep all (or none) of a chunk's equal entries.
                let budget = if keep_equal { vec![usize::MAX, 1] } else { vec![0, 0] };
                let prep = Prepared::Magnitude { threshold, equal_budget: budget, scale };
                let trimmed: Vec<Vec<f32>> = deltas
                    .iter()
                    .map(|d| {
                        let mut t = vec![0f32; len];
                        sparsify::apply(&prep, 0, d, &mut t);
                        t
                    })
                    .collect();
                let trimmed: Vec<&[f32]> = trimmed.iter().map(|t| &t[..]).collect();
                for (elect, normalize) in [(true, true), (true, false), (false, true), (false, false)] {
                    let weights = [1.0, 0.7, 0.3, 1.5, 0.25][..inputs].to_vec();
                    let (mut want, mut got) = (vec![0f32; len], vec![0f32; len]);
                    consensus(&trimmed, &weights, elect, normalize, &mut want);
                    consensus_of_trims(&refs, &trims, &weights, elect, normalize, &mut got);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "len {len}, trim {threshold} {keep_equal} {scale}, {elect} {normalize}"
                    );
                }
            }
        }
    }

    /// SCE on whole deltas, as fuse computed it before it streamed: keep the `select_topk` fraction of positions with the
    /// highest variance across deltas, elect signs (unweighted sum), weight each
    /// delta by its mean square, and average the agreeing entries.
    fn sce_whole(deltas: &[Vec<f32>], select_topk: f64) -> Vec<f32> {
        let n = deltas[0].len();
        let m = deltas.len() as f64;
        let mut ds: Vec<Vec<f32>> = deltas.to_vec();
        if select_topk < 1.0 {
            let var: Vec<f32> = (0..n)
                .map(|i| {
                    let mean = ds.iter().map(|d| d[i] as f64).sum::<f64>() / m;
                    (ds.iter().map(|d| (d[i] as f64 - mean).powi(2)).sum::<f64>() / m) as f32
                })
                .collect();
            let nonzero = var.iter().filter(|v| **v != 0.0).count();
            let k = (nonzero as f64 * select_topk.max(0.0)) as usize;
            let mut keep = vec![false; n];
            if k > 0 {
                let threshold = crate::exec::kernels::kth_largest_magnitude(
                    &crate::exec::kernels::Slices(std::slice::from_ref(&var)),
                    k,
                )
                .expect("in-memory source");
                let mut budget = k - var.iter().filter(|v| **v > threshold).count();
                for (i, v) in var.iter().enumerate() {
                    if *v > threshold
                        || (*v == threshold && budget > 0 && {
                            budget -= 1;
                            true
                        })
                    {
                        keep[i] = true;
                    }
                }
            }
            for d in ds.iter_mut() {
                d.iter_mut().zip(&keep).for_each(|(v, k)| {
                    if !k {
                        *v = 0.0
                    }
                });
            }
        }
        let energy: Vec<f64> =
            ds.iter().map(|d| d.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).collect();
        let total: f64 = energy.iter().sum();
        let w: Vec<f32> = energy.iter().map(|e| if total.abs() < 1e-6 { 1.0 / m } else { e / total } as f32).collect();
        (0..n)
            .map(|i| {
                let sum: f32 = ds.iter().map(|d| d[i]).sum();
                let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
                let (mut mixed, mut divisor) = (0f32, 0f32);
                for (d, w) in ds.iter().zip(&w) {
                    if d[i] != 0.0 && d[i].signum() == majority {
                        mixed += d[i] * w;
                        divisor += w;
                    }
                }
                mixed / divisor.max(1e-6)
            })
            .collect()
    }

    use super::*;

    /// SCE streamed (statistics in passes, then chunk by chunk) against the
    /// whole-tensor computation: many entries share the threshold's
    /// variance across chunk boundaries; one input set holds NaN and
    /// infinities (compared as floats, they take the counting pass).
    #[test]
    fn streamed_sce_matches_the_whole_tensor() {
        let n = 3 * CHUNK + 321;
        let coarse = |seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104729) % 7) as f32 * 0.25 - if i % 5 == seed { 1.0 } else { 0.0 })
                .collect()
        };
        let plain = vec![coarse(0), coarse(1), coarse(2)];
        let mut odd = plain.clone();
        odd[0][10] = f32::NAN;
        odd[1][CHUNK + 3] = f32::INFINITY;
        odd[2][2 * CHUNK] = -f32::INFINITY;
        for (name, ds) in [("plain", &plain), ("odd", &odd)] {
            for topk in [0.3, 0.55, 1e-5, 0.0, 1.0] {
                let prep = prepare_sce(&super::super::Slices(ds), topk).unwrap();
                let mut ours = vec![0f32; n];
                for (c, o) in ours.chunks_mut(CHUNK).enumerate() {
                    let s = c * CHUNK;
                    let ins: Vec<&[f32]> = ds.iter().map(|d| &d[s..s + o.len()]).collect();
                    apply_sce(&prep, s, &ins, o);
                }
                let whole = sce_whole(ds, topk);
                let same = ours.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{name}, select_topk {topk}");
            }
        }
    }

    /// Sign consensus entry by entry, as mergekit writes it.
    fn consensus_per_entry(deltas: &[Vec<f32>], w: &[f32], elect_sign: bool, normalize: bool) -> Vec<f32> {
        (0..deltas[0].len())
            .map(|i| {
                let (mut mixed, mut divisor) = (0f32, 0f32);
                let sum: f32 = deltas.iter().zip(w).map(|(d, w)| d[i] * w).sum();
                let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
                for (d, w) in deltas.iter().zip(w) {
                    let wd = d[i] * w;
                    if !elect_sign || (wd != 0.0 && wd.signum() == majority) {
                        mixed += wd;
                        divisor += w;
                    }
                }
                let floor = if elect_sign { divisor == 0.0 } else { divisor.abs() < 1e-8 };
                if floor {
                    divisor = 1.0;
                }
                if normalize {
                    mixed / divisor
                } else {
                    mixed
                }
            })
            .collect()
    }

    #[test]
    fn consensus_matches_the_per_entry_formula() {
        // Blocks and a ragged end, zeros, sign ties, a negative weight.
        let n = 1000;
        let deltas: Vec<Vec<f32>> = (0..3)
            .map(|j| (0..n).map(|i| if (i + j) % 7 == 0 { 0.0 } else { ((i * (j + 3)) as f32 * 0.71).sin() }).collect())
            .collect();
        let refs: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
        for weights in [[1.0, 1.0, 1.0], [0.5, 0.3, 0.2], [1.0, -0.5, 0.7]] {
            let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
            for (elect, normalize) in [(true, true), (true, false), (false, true), (false, false)] {
                let mut out = vec![0f32; n];
                consensus(&refs, &weights, elect, normalize, &mut out);
                let expected = consensus_per_entry(&deltas, &w, elect, normalize);
                for i in 0..n {
                    assert_eq!(out[i].to_bits(), expected[i].to_bits(), "{weights:?} {elect} {normalize} entry {i}");
                }
            }
        }
    }
}
