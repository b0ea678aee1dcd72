//! Sparsifying task vectors: magnitude trimming (TIES), outlier trimming
//! (Model Breadcrumbs), random dropping (DARE) and magnitude-ranked random
//! dropping (DELLA, in `della.rs`), with mergekit's L1 rescale.

mod della;
mod l1;

pub use della::{prepare_della, Keeps};

use super::select::{select, Selection};
use super::{partials, Prepared, Source, CHUNK};

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
    let windows: Vec<(usize, usize)> =
        members.iter().map(|&(density, gamma, _)| outlier_window(n, density, gamma)).collect();
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
    let ks: Vec<usize> = selected.iter().flat_map(|&j| window_ranks(n, windows[j])).collect();
    let mut sels = select(src, &inputs, &ks)?.into_iter();
    let mut out: Vec<Prepared> = Vec::with_capacity(members.len());
    // Members whose per-chunk counts of entries at either end are missing
    // (without rescale: counted in a pass of their own), and those rescaled
    // (L1 sums in index order, as the sort-based trim summed them, in one
    // pass that also counts).
    let (mut counted, mut summed) = (Vec::new(), Vec::new());
    for (j, &(_, _, rescale)) in members.iter().enumerate() {
        let keep = windows[j].1;
        if keep == 0 {
            out.push(Prepared::Zero);
            continue;
        }
        if keep == n && !rescale {
            out.push(Prepared::None);
            continue;
        }
        let (lo, hi) = (sels.next().expect("a selection"), sels.next().expect("a selection"));
        if !rescale {
            if let Some(p) = window_without_pass(n, windows[j], &lo, &hi) {
                out.push(p);
                continue;
            }
        }
        out.push(window_of_ends(n, windows[j], &lo, &hi));
        match rescale {
            true => summed.push(j),
            false => counted.push(j),
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

/// Breadcrumbs' window over `n` entries: how many of the smallest
/// magnitudes it drops (`bottom`), and how many above those it keeps.
pub(in crate::exec) fn outlier_window(n: usize, density: f64, gamma: f64) -> (usize, usize) {
    let keep = ((density * n as f64) as usize).min(n);
    let top = (gamma * n as f64) as i64;
    let bottom = (n as i64 - keep as i64 - top).max(0) as usize;
    (bottom, keep)
}

/// The ranks (k-th largest) of a window's lower and upper ends.
pub(in crate::exec) fn window_ranks(n: usize, (bottom, keep): (usize, usize)) -> [usize; 2] {
    [n - bottom, n - bottom - keep + 1]
}

/// A window from the selections of its ends, without its per-chunk
/// budgets: entries equal to the lower end skipped (those before position
/// `bottom`), and entries equal to the upper end kept (those before
/// position `bottom + keep`), in index order.
fn window_of_ends(n: usize, (bottom, keep): (usize, usize), lo: &Selection, hi: &Selection) -> Prepared {
    let key = |s: &Selection| s.threshold.to_bits();
    let skip = bottom - (n - lo.above - lo.equal);
    let allow = bottom + keep - (n - hi.above - hi.equal);
    Prepared::Outliers { lo: key(lo), hi: key(hi), skip, allow, per_chunk: Vec::new(), scale: None }
}

/// A window (without rescale) from the selections of its ends when they
/// counted the entries equal to each end per chunk (all inputs finite);
/// `None` otherwise.
pub(in crate::exec) fn window_without_pass(
    n: usize,
    window: (usize, usize),
    lo: &Selection,
    hi: &Selection,
) -> Option<Prepared> {
    let (l, h) = (lo.equal_per_chunk.as_ref()?, hi.equal_per_chunk.as_ref()?);
    let mut p = window_of_ends(n, window, lo, hi);
    set_window_budgets(&mut p, &l.iter().copied().zip(h.iter().copied()).collect::<Vec<_>>());
    Some(p)
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

/// A magnitude trim of the chunk from `start` as a [`Trim`], when the chunk
/// keeps all or none of its entries equal to the threshold (all but one
/// chunk of a tensor at most); `None` otherwise, or for other statistics.
pub(in crate::exec) fn chunk_trim(prep: &Prepared, start: usize) -> Option<super::combine::Trim> {
    let Prepared::Magnitude { threshold, equal_budget, scale } = prep else { return None };
    let c = start / CHUNK;
    let budget = equal_budget.get(c).copied().unwrap_or(usize::MAX);
    // Budget left for the next chunk: this one keeps all its entries equal
    // to the threshold (0 when unknown).
    let next = match equal_budget.len() {
        0 => usize::MAX,
        _ => equal_budget.get(c + 1).copied().unwrap_or(0),
    };
    (budget == 0 || next > 0).then_some(super::combine::Trim {
        threshold: *threshold,
        keep_equal: budget > 0,
        scale: *scale,
    })
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
            if let Some(trim) = chunk_trim(prep, start) {
                // No entry equal to the threshold kept, or all of them: one
                // loop that vectorizes.
                let (t, s, keep_equal) = (trim.threshold, trim.scale, trim.keep_equal);
                for (o, v) in out.iter_mut().zip(x) {
                    let m = v.abs();
                    *o = if m > t || (keep_equal && m == t) { v * s } else { 0.0 };
                }
                return;
            }
            let (t, s) = (*threshold, *scale);
            let budget = equal_budget.get(start / CHUNK).copied().unwrap_or(usize::MAX);
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
        Prepared::Della { keeps, scale } => della::apply(keeps, *scale, start, x, out),
        other => unreachable!("{other:?} is not a sparsify"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::Slices;
    use crate::rng::uniform;

    pub(super) fn l1(x: &[f32]) -> f64 {
        x.iter().map(|v| v.abs() as f64).sum()
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
    pub(super) fn apply_chunks(prep: &Prepared, x: &[f32]) -> Vec<f32> {
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

    pub(super) fn same_bits(a: &[f32], b: &[f32]) -> bool {
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
