//! Sparsifying task vectors: magnitude trimming (TIES), outlier trimming
//! (Model Breadcrumbs), random dropping (DARE) and magnitude-ranked random
//! dropping (DELLA), with mergekit's L1 rescale.

mod l1;

use super::select::{select, Selection};
use super::{partials, Prepared, Source, CHUNK};
use rayon::prelude::*;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

/// Magnitude trimming's statistics for each input of `src`, given its
/// (density, rescale): the k-th largest magnitude, how many entries equal to
/// it each chunk may keep, and the L1 rescale. The inputs are read together,
/// chunk by chunk, so that what they share (the base under several task
/// vectors) is read once per pass.
pub fn prepare_magnitudes(src: &dyn Source, members: &[(f64, bool)]) -> Result<Vec<Prepared>, String> {
    let n = src.len();
    let k = |density: f64| ((density * n as f64) as usize).clamp(1, n);
    // The members that need a threshold, as inputs of `src`.
    let selected: Vec<usize> = (0..members.len()).filter(|&j| members[j].0 > 0.0 && members[j].0 < 1.0).collect();
    let ks: Vec<usize> = selected.iter().map(|&j| k(members[j].0)).collect();
    let mut sels = select(src, &selected, &ks)?.into_iter();
    members
        .iter()
        .enumerate()
        .map(|(j, &(density, rescale))| {
            if density >= 1.0 {
                return Ok(Prepared::None);
            }
            if density <= 0.0 {
                return Ok(Prepared::Zero);
            }
            let sel = sels.next().expect("one selection per member");
            magnitude(&Input(src, j), k(density), rescale, sel)
        })
        .collect()
}

/// Input `1` of a source, as a source of one input.
struct Input<'a>(&'a dyn Source, usize);

impl Source for Input<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn inputs(&self) -> usize {
        1
    }
    fn fill(&self, _: usize, start: usize, out: &mut [f32]) -> Result<(), String> {
        self.0.fill(self.1, start, out)
    }
}

/// Outlier trimming's statistics for each input of `src`, given its
/// (density, gamma, rescale). Breadcrumbs keeps positions
/// `[bottom, bottom + keep)` of the magnitudes sorted ascending, equal
/// magnitudes in index order (`keep = int(density n)`, `top = int(gamma n)`,
/// `bottom = n - keep - top`, clamped at 0): two radix selections find the
/// magnitudes at positions `bottom` and `bottom + keep - 1`, and how many
/// entries equal to each lie before the window's ends, so each chunk is
/// masked on its own. Magnitudes are ordered by their bits, as a sort by
/// `total_cmp` orders them (NaN above infinity). The inputs are read
/// together, chunk by chunk.
pub fn prepare_outliers(src: &dyn Source, members: &[(f64, f64, bool)]) -> Result<Vec<Prepared>, String> {
    let n = src.len();
    let chunks = n.div_ceil(CHUNK);
    let windows: Vec<(usize, usize)> = members
        .iter()
        .map(|&(density, gamma, _)| {
            let keep = ((density * n as f64) as usize).min(n);
            let top = (gamma * n as f64) as i64;
            let bottom = (n as i64 - keep as i64 - top).max(0) as usize;
            (bottom, keep)
        })
        .collect();
    if let Some(&(density, gamma, _)) = members.iter().zip(&windows).find(|(_, w)| w.0 + w.1 > n).map(|(m, _)| m) {
        return Err(format!(
            "trim_outliers keeps {density} and drops the top {gamma} of the magnitudes: more than all of them (is gamma negative?)"
        ));
    }
    // Each member that keeps something but not everything as it is: the
    // (n - bottom)-th and (n - bottom - keep + 1)-th largest, its input
    // twice in a row (read once a chunk).
    let selected: Vec<usize> =
        (0..members.len()).filter(|&j| windows[j].1 > 0 && (windows[j].1 < n || members[j].2)).collect();
    let inputs: Vec<usize> = selected.iter().flat_map(|&j| [j, j]).collect();
    let ks: Vec<usize> =
        selected.iter().flat_map(|&j| [n - windows[j].0, n - windows[j].0 - windows[j].1 + 1]).collect();
    let mut sels = select(src, &inputs, &ks)?.into_iter();
    let mut out: Vec<Prepared> = Vec::with_capacity(members.len());
    // Members whose per-chunk counts of entries at either end are missing
    // (without rescale: counted in a pass of their own), and those rescaled
    // (L1 sums in index order, as the sort-based trim summed them, in one
    // pass that also counts).
    let (mut counted, mut summed) = (Vec::new(), Vec::new());
    for (j, &(_, _, rescale)) in members.iter().enumerate() {
        let (bottom, keep) = windows[j];
        if keep == 0 {
            out.push(Prepared::Zero);
            continue;
        }
        if keep == n && !rescale {
            out.push(Prepared::None);
            continue;
        }
        let (lo, hi) = (sels.next().expect("a selection"), sels.next().expect("a selection"));
        let key = |s: &Selection| s.threshold.to_bits();
        // Entries equal to the lower end skipped (those before position
        // `bottom`), and entries equal to the upper end kept (those before
        // position `bottom + keep`), in index order.
        let skip = bottom - (n - lo.above - lo.equal);
        let allow = bottom + keep - (n - hi.above - hi.equal);
        let per_chunk = match (&lo.equal_per_chunk, &hi.equal_per_chunk) {
            (Some(l), Some(h)) if !rescale => Some(l.iter().copied().zip(h.iter().copied()).collect::<Vec<_>>()),
            _ => None,
        };
        out.push(Prepared::Outliers { lo: key(&lo), hi: key(&hi), skip, allow, per_chunk: Vec::new(), scale: None });
        match per_chunk {
            Some(counts) => set_window_budgets(&mut out[j], &counts),
            None if rescale => summed.push(j),
            None => counted.push(j),
        }
    }
    if !counted.is_empty() {
        let picked = Picked(src, &counted);
        let ends: Vec<(u32, u32)> = counted.iter().map(|&j| window_ends(&out[j])).collect();
        let counts = partials(&picked, counted.len(), |_, b| {
            b.iter()
                .zip(&ends)
                .map(|(vals, &(lo, hi))| {
                    vals.iter().fold((0usize, 0usize), |(l, h), v| {
                        let k = v.to_bits() & 0x7fff_ffff;
                        (l + (k == lo) as usize, h + (k == hi) as usize)
                    })
                })
                .collect::<Vec<_>>()
        })?;
        for (s, &j) in counted.iter().enumerate() {
            let per: Vec<(usize, usize)> = counts.iter().map(|c| c[s]).collect();
            set_window_budgets(&mut out[j], &per);
        }
    }
    if !summed.is_empty() {
        // One thread, chunks in order: the sums are the same f64 additions
        // in the same order as over the whole tensor.
        let mut per = vec![Vec::with_capacity(chunks); summed.len()];
        let mut sums = vec![(0f64, 0f64); summed.len()];
        let mut seen = vec![(0usize, 0usize); summed.len()];
        let (mut buf, mut kept) = (vec![0f32; CHUNK], vec![0f32; CHUNK]);
        for c in 0..chunks {
            let len = CHUNK.min(n - c * CHUNK);
            for (s, &j) in summed.iter().enumerate() {
                src.fill(j, c * CHUNK, &mut buf[..len])?;
                let Prepared::Outliers { lo, hi, skip, allow, .. } = out[j] else { unreachable!() };
                let (skip, allow) = (skip.saturating_sub(seen[s].0), allow.saturating_sub(seen[s].1));
                let counts = mask_window(lo, hi, skip, allow, &buf[..len], &mut kept[..len]);
                seen[s] = (seen[s].0 + counts.0, seen[s].1 + counts.1);
                per[s].push(counts);
                // Both sums in one loop: two independent chains of additions
                // instead of one after the other (each waits on its adds).
                sums[s] = buf[..len]
                    .iter()
                    .zip(&kept[..len])
                    .fold(sums[s], |(a, b), (v, k)| (a + v.abs() as f64, b + k.abs() as f64));
            }
        }
        for (s, &j) in summed.iter().enumerate() {
            set_window_budgets(&mut out[j], &per[s]);
            if let Prepared::Outliers { scale, .. } = &mut out[j] {
                *scale = Some(l1_ratio(sums[s].0, sums[s].1));
            }
        }
    }
    Ok(out)
}

fn window_ends(p: &Prepared) -> (u32, u32) {
    match p {
        Prepared::Outliers { lo, hi, .. } => (*lo, *hi),
        other => unreachable!("{other:?}"),
    }
}

/// Each chunk's share of the window's ends, from how many entries equal to
/// the lower and the upper end each chunk holds.
fn set_window_budgets(p: &mut Prepared, counts: &[(usize, usize)]) {
    let Prepared::Outliers { skip, allow, per_chunk, .. } = p else { unreachable!("{p:?}") };
    let (mut skip_left, mut allow_left) = (*skip, *allow);
    per_chunk.clear();
    for &(l, h) in counts {
        per_chunk.push((skip_left, allow_left));
        skip_left = skip_left.saturating_sub(l);
        allow_left = allow_left.saturating_sub(h);
    }
}

/// Masks one chunk to the window `[lo, hi]` of magnitude bits, keeping the
/// entries equal to `lo` if `keep_lo` and those equal to `hi` if
/// `keep_hi` (an entry equal to both meets both rules).
fn mask_window_whole(lo: u32, hi: u32, keep_lo: bool, keep_hi: bool, x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        let k = v.to_bits() & 0x7fff_ffff;
        let keep = k >= lo && k <= hi && (k != lo || keep_lo) && (k != hi || keep_hi);
        *o = if keep { *v } else { 0.0 };
    }
}

/// Masks one chunk to the window `(lo, hi)` of magnitude bits: entries
/// strictly inside kept, those equal to `lo` kept after the first `skip`,
/// those equal to `hi` kept while `allow` lasts (an entry equal to both
/// ends meets both rules). Returns how many entries equal each end.
fn mask_window(lo: u32, hi: u32, skip: usize, allow: usize, x: &[f32], out: &mut [f32]) -> (usize, usize) {
    // The inside in a loop that vectorizes; the ends after, in index order.
    let (mut at_lo, mut at_hi) = (0usize, 0usize);
    for (o, v) in out.iter_mut().zip(x) {
        let k = v.to_bits() & 0x7fff_ffff;
        *o = if k > lo && k < hi { *v } else { 0.0 };
        at_lo += (k == lo) as usize;
        at_hi += (k == hi) as usize;
    }
    if at_lo + at_hi > 0 {
        let (mut skip, mut allow) = (skip, allow);
        for (o, v) in out.iter_mut().zip(x) {
            let k = v.to_bits() & 0x7fff_ffff;
            if k != lo && k != hi {
                continue;
            }
            let mut kept = true;
            if k == lo && skip > 0 {
                skip -= 1;
                kept = false;
            }
            if k == hi {
                if allow > 0 {
                    allow -= 1;
                } else {
                    kept = false;
                }
            }
            if kept {
                *o = *v;
            }
        }
    }
    (at_lo, at_hi)
}

/// A trim's statistics from its selection when they need no pass: without
/// a rescale, and with the entries equal to the threshold counted per chunk
/// (all inputs finite); `None` otherwise.
pub(in crate::exec) fn magnitude_without_pass(k: usize, sel: Selection) -> Option<Prepared> {
    let per_chunk = sel.equal_per_chunk.as_ref()?;
    if k - sel.above.min(k) >= sel.equal {
        return Some(Prepared::Magnitude { threshold: sel.threshold, equal_budget: Vec::new(), scale: 1.0 });
    }
    let mut remaining = k - sel.above.min(k);
    let mut equal_budget = Vec::with_capacity(per_chunk.len());
    for &e in per_chunk {
        equal_budget.push(remaining);
        remaining = remaining.saturating_sub(e);
    }
    Some(Prepared::Magnitude { threshold: sel.threshold, equal_budget, scale: 1.0 })
}

/// One member's statistics from its selection, with a counting pass when
/// the selection could not count the entries equal to the threshold per
/// chunk, or a rescale needs L1 sums.
fn magnitude(src: &dyn Source, k: usize, rescale: bool, sel: Selection) -> Result<Prepared, String> {
    let (threshold, above, equal) = (sel.threshold, sel.above, sel.equal);
    // Without a rescale, and when every entry equal to the threshold is kept,
    // the two selection passes are all it takes.
    if !rescale && k - above >= equal {
        return Ok(Prepared::Magnitude { threshold, equal_budget: Vec::new(), scale: 1.0 });
    }
    // Without a rescale, the second pass's per-chunk counts of entries equal
    // to the threshold give each chunk's budget (all entries were finite, so
    // the histograms' `above` is the count of `|x| > threshold`).
    if let (false, Some(per_chunk)) = (rescale, &sel.equal_per_chunk) {
        let mut remaining = k - above.min(k);
        let mut equal_budget = Vec::with_capacity(per_chunk.len());
        for &e in per_chunk {
            equal_budget.push(remaining);
            remaining = remaining.saturating_sub(e);
        }
        return Ok(Prepared::Magnitude { threshold, equal_budget, scale: 1.0 });
    }
    // Per chunk: entries above and equal to the threshold, and L1 sums.
    let counts = partials(src, 1, |_, b| {
        let (mut above, mut equal, mut l1, mut l1_above) = (0usize, 0usize, 0f64, 0f64);
        for v in &b[0] {
            let m = v.abs();
            l1 += m as f64;
            if m > threshold {
                above += 1;
                l1_above += m as f64;
            } else if m == threshold {
                equal += 1;
            }
        }
        (above, equal, l1, l1_above)
    })?;
    let above: usize = counts.iter().map(|c| c.0).sum();
    let mut remaining = k - above.min(k);
    let kept_equal = remaining.min(counts.iter().map(|c| c.1).sum());
    let mut equal_budget = Vec::with_capacity(counts.len());
    for c in &counts {
        equal_budget.push(remaining);
        remaining = remaining.saturating_sub(c.1);
    }
    let scale = if rescale {
        let before: f64 = counts.iter().map(|c| c.2).sum();
        let after: f64 = counts.iter().map(|c| c.3).sum::<f64>() + threshold as f64 * kept_equal as f64;
        l1_ratio(before, after)
    } else {
        1.0
    };
    Ok(Prepared::Magnitude { threshold, equal_budget, scale })
}

/// Random dropping's statistics for each input of `src`, given its
/// (density, rescale, stream key): the stream and, with rescale, the L1
/// ratio. The inputs that need L1 sums are read together, chunk by chunk.
pub fn prepare_randoms(src: &dyn Source, members: &[(f64, bool, u64)]) -> Result<Vec<Prepared>, String> {
    let summed: Vec<usize> = (0..members.len()).filter(|&j| members[j].0 < 1.0 && members[j].1).collect();
    let mut scales = vec![1f32; members.len()];
    if !summed.is_empty() {
        let picked = Picked(src, &summed);
        let sums = partials(&picked, summed.len(), |c, b| {
            b.iter()
                .zip(&summed)
                .map(|(vals, &j)| {
                    let (density, _, key) = members[j];
                    let below = crate::rng::threshold(density);
                    // The chunk's two sums as one chain each, a block of
                    // draws at a time.
                    let mut keep = [false; l1::BLOCK];
                    let mut sums = (0f64, 0f64);
                    for (b, x) in vals.chunks(l1::BLOCK).enumerate() {
                        let keep = &mut keep[..x.len()];
                        crate::rng::draws_below(key, (c * CHUNK + b * l1::BLOCK) as u64, below, keep);
                        sums = l1::add(x, keep, sums);
                    }
                    sums
                })
                .collect::<Vec<_>>()
        })?;
        for (s, &j) in summed.iter().enumerate() {
            scales[j] = l1_ratio(sums.iter().map(|c| c[s].0).sum(), sums.iter().map(|c| c[s].1).sum());
        }
    }
    Ok(members
        .iter()
        .zip(scales)
        .map(
            |(&(density, _, key), scale)| {
                if density >= 1.0 {
                    Prepared::None
                } else {
                    Prepared::Random { p: density, key, scale }
                }
            },
        )
        .collect())
}

/// Some inputs of a source, as a source of those inputs.
struct Picked<'a>(&'a dyn Source, &'a [usize]);

impl Source for Picked<'_> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn inputs(&self) -> usize {
        self.1.len()
    }
    fn fill(&self, input: usize, start: usize, out: &mut [f32]) -> Result<(), String> {
        self.0.fill(self.1[input], start, out)
    }
}

/// mergekit's rescale: `||x||_1 / ||kept||_1`, skipped when either is tiny.
fn l1_ratio(before: f64, after: f64) -> f32 {
    if before >= 1e-7 && after >= 1e-7 {
        (before / after) as f32
    } else {
        1.0
    }
}

/// One chunk of a streamed sparsify.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn apply(prep: &Prepared, start: usize, x: &[f32], out: &mut [f32]) {
    match prep {
        Prepared::None => out.copy_from_slice(x),
        Prepared::Zero => out.fill(0.0),
        Prepared::Magnitude { threshold, equal_budget, scale } => {
            let (t, s) = (*threshold, *scale);
            let c = start / CHUNK;
            let budget = equal_budget.get(c).copied().unwrap_or(usize::MAX);
            // Budget left for the next chunk: this one keeps all its
            // entries equal to the threshold (0 when unknown).
            let next = match equal_budget.len() {
                0 => usize::MAX,
                _ => equal_budget.get(c + 1).copied().unwrap_or(0),
            };
            if budget == 0 || next > 0 {
                // No entry equal to the threshold kept, or all of them: one
                // loop that vectorizes.
                let keep_equal = budget > 0;
                for (o, v) in out.iter_mut().zip(x) {
                    let m = v.abs();
                    *o = if m > t || (keep_equal && m == t) { v * s } else { 0.0 };
                }
                return;
            }
            // Entries above the threshold, in a loop that vectorizes; then
            // those equal to it, in index order while the chunk's budget
            // lasts.
            let mut equal = 0usize;
            for (o, v) in out.iter_mut().zip(x) {
                let m = v.abs();
                *o = if m > t { v * s } else { 0.0 };
                equal += (m == t) as usize;
            }
            let mut left = equal.min(budget);
            for (o, v) in out.iter_mut().zip(x) {
                if left == 0 {
                    break;
                }
                if v.abs() == t {
                    left -= 1;
                    *o = v * s;
                }
            }
        }
        Prepared::Random { p, key, scale } => {
            // Without branches: a random keep mispredicts often. The mask
            // gives `v * scale` or +0, as a select would.
            let below = crate::rng::threshold(*p);
            let mut keep = [false; l1::BLOCK];
            for (b, (out, x)) in out.chunks_mut(l1::BLOCK).zip(x.chunks(l1::BLOCK)).enumerate() {
                let keep = &mut keep[..x.len()];
                crate::rng::draws_below(*key, (start + b * l1::BLOCK) as u64, below, keep);
                for ((o, v), &k) in out.iter_mut().zip(x).zip(keep.iter()) {
                    let mask = 0u32.wrapping_sub(k as u32);
                    *o = f32::from_bits((v * scale).to_bits() & mask);
                }
            }
        }
        Prepared::Outliers { lo, hi, per_chunk, scale, .. } => {
            let c = start / CHUNK;
            let (skip, allow) = per_chunk[c];
            let next = per_chunk.get(c + 1).copied();
            // Whether this chunk keeps all its entries equal to each end, or
            // none: then one loop that vectorizes.
            let lo_all = match (skip, next) {
                (0, _) => Some(true),
                (_, Some((s, _))) if s > 0 => Some(false),
                _ => None,
            };
            let hi_all = match (allow, next) {
                (0, _) => Some(false),
                (_, Some((_, a))) if a > 0 => Some(true),
                _ => None,
            };
            match (lo_all, hi_all) {
                (Some(keep_lo), Some(keep_hi)) => mask_window_whole(*lo, *hi, keep_lo, keep_hi, x, out),
                _ => {
                    mask_window(*lo, *hi, skip, allow, x, out);
                }
            }
            if let Some(s) = scale {
                out.iter_mut().for_each(|v| *v *= s);
            }
        }
        Prepared::Della { bits, scale } => {
            // `start` is a multiple of 64: a word of bits per 64 entries,
            // each kept as `v` or +0 by a mask.
            debug_assert_eq!(start % 64, 0);
            let words = &bits[start / 64..];
            for ((out, x), &word) in out.chunks_mut(64).zip(x.chunks(64)).zip(words) {
                for (j, (o, v)) in out.iter_mut().zip(x).enumerate() {
                    *o = f32::from_bits(v.to_bits() & 0u32.wrapping_sub((word >> j & 1) as u32));
                }
                if let Some(s) = scale {
                    out.iter_mut().for_each(|o| *o *= s);
                }
            }
        }
        other => unreachable!("{other:?} is not a sparsify"),
    }
}

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

    fn l1(x: &[f32]) -> f64 {
        x.iter().map(|v| v.abs() as f64).sum()
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

    fn magnitude(x: &[f32], density: f64) -> Vec<f32> {
        let owned = vec![x.to_vec()];
        let src = Slices(&owned);
        let prep = prepare_magnitudes(&src, &[(density, false)]).unwrap().remove(0);
        let mut out = vec![0f32; x.len()];
        apply(&prep, 0, x, &mut out);
        out
    }

    #[test]
    fn magnitude_keeps_exactly_k() {
        assert_eq!(magnitude(&[0.1, -3.0, 2.0, 0.5, -0.5, 1.0], 0.5), vec![0.0, -3.0, 2.0, 0.0, 0.0, 1.0]);
        assert_eq!(magnitude(&[1.0, -1.0, 1.0, 1.0], 0.5), vec![1.0, -1.0, 0.0, 0.0]);
        assert_eq!(magnitude(&[1.0, 2.0], 0.0), vec![0.0, 0.0]);
    }

    /// Magnitude trimming by a sort: the k largest magnitudes, ties kept in
    /// index order.
    fn trimmed_by_sort(x: &[f32], density: f64) -> Vec<f32> {
        let k = ((density * x.len() as f64) as usize).clamp(1, x.len());
        let mut order: Vec<usize> = (0..x.len()).collect();
        order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
        let mut out = vec![0f32; x.len()];
        for &i in &order[..k] {
            out[i] = x[i];
        }
        out
    }

    /// Applies prepared trims chunk by chunk, as the streaming engine does.
    fn apply_chunks(prep: &Prepared, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (c, o) in out.chunks_mut(CHUNK).enumerate() {
            apply(prep, c * CHUNK, &x[c * CHUNK..c * CHUNK + o.len()], o);
        }
        out
    }

    #[test]
    fn trims_side_by_side_keep_exactly_k_across_chunks() {
        // Several chunks of coarse values (many equal to each threshold, as
        // task vectors of bf16 checkpoints are), one continuous input, and
        // one holding a NaN and an infinity (which takes the counting pass).
        let n = 3 * CHUNK + 1234;
        let coarse: Vec<f32> = (0..n).map(|i| ((i * 7919 % 23) as f32 - 11.0) * 0.125).collect();
        let fine: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin() * 3.0).collect();
        let mut odd = coarse.clone();
        odd[5] = f32::INFINITY;
        odd[CHUNK + 7] = f32::NAN;
        let inputs = vec![coarse, fine, odd];
        let members = [(0.3, false), (0.55, false), (0.4, false)];
        let preps = prepare_magnitudes(&Slices(&inputs), &members).unwrap();
        for (j, ((x, prep), &(density, _))) in inputs.iter().zip(&preps).zip(&members).enumerate() {
            let ours = apply_chunks(prep, x);
            let expected = trimmed_by_sort(x, density);
            let same =
                ours.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            // A NaN is never kept (it compares with nothing), so the input
            // holding one keeps k - 1 entries; the others keep the sort's.
            if j < 2 {
                assert!(same, "input {j}");
            } else {
                let kept = ours.iter().filter(|v| **v != 0.0).count();
                let k = (density * n as f64) as usize;
                assert!(kept == k - 1 || kept == k, "input {j}: {kept} kept of {k}");
            }
            // Prepared alone, each gives the same statistics.
            let alone = prepare_magnitudes(&Slices(std::slice::from_ref(x)), &[members[j]]).unwrap().remove(0);
            assert_eq!(format!("{alone:?}"), format!("{prep:?}"), "input {j}");
        }
    }

    #[test]
    fn random_drops_follow_the_uniform_stream() {
        let n = 2 * CHUNK + 77;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos()).collect();
        let key = crate::rng::stream_key(3, "w", 1);
        let prep = prepare_randoms(&Slices(std::slice::from_ref(&x)), &[(0.3, true, key)]).unwrap().remove(0);
        let Prepared::Random { scale, .. } = prep else { panic!("{prep:?}") };
        let kept: Vec<bool> = (0..n).map(|i| uniform(key, i as u64) < 0.3).collect();
        let l1: f64 = x.iter().map(|v| v.abs() as f64).sum();
        let l1_kept: f64 = x.iter().zip(&kept).filter(|(_, k)| **k).map(|(v, _)| v.abs() as f64).sum();
        assert!((scale as f64 - l1 / l1_kept).abs() < 1e-5 * scale as f64, "{scale}");
        let ours = apply_chunks(&prep, &x);
        for i in 0..n {
            assert_eq!(ours[i], if kept[i] { x[i] * scale } else { 0.0 }, "entry {i}");
        }
    }

    /// Breadcrumbs by a sort, as fuse computed it before it streamed: sort
    /// by magnitude ascending (`total_cmp`, equal ones in index order), keep
    /// positions `[bottom, bottom + keep)`, then with rescale multiply by the
    /// ratio of the L1 norms summed in index order.
    fn outliers_by_sort(x: &[f32], density: f64, gamma: f64, rescale: bool) -> Vec<f32> {
        let n = x.len();
        let keep = ((density * n as f64) as usize).min(n);
        let bottom = (n as i64 - keep as i64 - (gamma * n as f64) as i64).max(0) as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()).then(a.cmp(&b)));
        let mut out = vec![0f32; n];
        for &i in &order[bottom..bottom + keep] {
            out[i] = x[i];
        }
        if rescale {
            let s = l1_ratio(l1(x), l1(&out));
            out.iter_mut().for_each(|v| *v *= s);
        }
        out
    }

    fn outliers(x: &[f32], density: f64, gamma: f64, rescale: bool) -> Vec<f32> {
        let owned = vec![x.to_vec()];
        let prep = prepare_outliers(&Slices(&owned), &[(density, gamma, rescale)]).unwrap().remove(0);
        apply_chunks(&prep, x)
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn outliers_drop_both_ends() {
        let x: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        // keep 5, drop the top 2 and the bottom 3.
        assert_eq!(outliers(&x, 0.5, 0.2, false), vec![0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0]);
        // Equal magnitudes, ordered by index: positions 3..8 of ten ones.
        let ones: Vec<f32> = (0..10).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let kept = outliers(&ones, 0.5, 0.2, false);
        assert_eq!(kept, [0.0, 0.0, 0.0, -1.0, 1.0, 1.0, -1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn streamed_outliers_match_a_sort() {
        // Several chunks: coarse values (many equal magnitudes at both ends
        // of the window, across chunk boundaries, both signs, -0 and +0),
        // continuous values, a constant tensor (both ends one value), and
        // one holding NaNs and infinities (ordered above every number, as
        // `total_cmp` orders them; their equal counts take a counting pass).
        let n = 3 * CHUNK + 1234;
        let coarse: Vec<f32> = (0..n)
            .map(|i| match i % 29 {
                0 => -0.0,
                r => ((i * 7919 % 23) as f32 - 11.0) * 0.125 * if r % 2 == 0 { 1.0 } else { -1.0 },
            })
            .collect();
        let fine: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin() * 3.0).collect();
        let constant = vec![-0.5f32; n];
        let mut odd = coarse.clone();
        for i in [5, CHUNK + 7, 2 * CHUNK + 9] {
            odd[i] = f32::INFINITY;
            odd[i + 1] = -f32::NAN;
            odd[i + 2] = f32::NEG_INFINITY;
        }
        let cases =
            [(0.3, 0.01), (0.9, 0.05), (0.5, 0.0), (0.0, 0.1), (1.0, 0.01), (0.7, 0.5), (0.2, 0.9), (1e-5, 0.3)];
        for (name, x) in [("coarse", &coarse), ("fine", &fine), ("constant", &constant), ("odd", &odd)] {
            for &(density, gamma) in &cases {
                for rescale in [false, true] {
                    let ours = outliers(x, density, gamma, rescale);
                    let sorted = outliers_by_sort(x, density, gamma, rescale);
                    assert!(same_bits(&ours, &sorted), "{name}, density {density}, gamma {gamma}, rescale {rescale}");
                }
            }
        }
        // Side by side (each input read once a pass), as alone.
        let inputs = vec![coarse, fine, constant, odd];
        let members = [(0.3, 0.01, false), (0.55, 0.1, true), (0.4, 0.0, false), (0.6, 0.02, true)];
        let preps = prepare_outliers(&Slices(&inputs), &members).unwrap();
        for (j, (x, prep)) in inputs.iter().zip(&preps).enumerate() {
            let alone = prepare_outliers(&Slices(std::slice::from_ref(x)), &[members[j]]).unwrap().remove(0);
            assert_eq!(format!("{alone:?}"), format!("{prep:?}"), "input {j}");
            let (density, gamma, rescale) = members[j];
            assert!(same_bits(&apply_chunks(prep, x), &outliers_by_sort(x, density, gamma, rescale)), "input {j}");
        }
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

    #[test]
    fn outliers_that_keep_more_than_everything_are_an_error() {
        let x = vec![vec![1f32; 10]];
        let e = prepare_outliers(&Slices(&x), &[(0.5, -0.2, false)]).unwrap_err();
        assert!(e.contains("gamma"), "{e}");
    }

    #[test]
    fn uniform_is_uniform() {
        let key = crate::rng::stream_key(7, "w", 0);
        let mean: f64 = (0..100_000).map(|i| uniform(key, i)).sum::<f64>() / 1e5;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
