//! Sparsifying task vectors: magnitude trimming (TIES), outlier trimming
//! (Model Breadcrumbs), random dropping (DARE) and magnitude-ranked random
//! dropping (DELLA), with mergekit's L1 rescale.

use super::{partials, Prepared, Source, CHUNK};
use crate::graph::F;
use crate::ir::Sparsify;
use crate::rng::uniform;
use rayon::prelude::*;

/// Magnitude trimming's statistics: the k-th largest magnitude, how many
/// entries equal to it each chunk may keep, and the L1 rescale.
pub fn prepare_magnitude(src: &dyn Source, density: f64, rescale: bool) -> Result<Prepared, String> {
    if density >= 1.0 {
        return Ok(Prepared::None);
    }
    if density <= 0.0 {
        return Ok(Prepared::Zero);
    }
    let n = src.len();
    let k = ((density * n as f64) as usize).clamp(1, n);
    let (threshold, above, equal) = select(src, k)?;
    // Without a rescale, and when every entry equal to the threshold is kept,
    // the two selection passes are all it takes.
    if !rescale && k - above >= equal {
        return Ok(Prepared::Magnitude { threshold, equal_budget: Vec::new(), scale: 1.0 });
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

/// Random dropping's statistics: the stream and, with rescale, the L1 ratio.
pub fn prepare_random(src: &dyn Source, density: f64, rescale: bool, key: u64) -> Result<Prepared, String> {
    if density >= 1.0 {
        return Ok(Prepared::None);
    }
    let scale = if rescale {
        let sums = partials(src, 1, |c, b| {
            let (mut all, mut kept) = (0f64, 0f64);
            for (j, v) in b[0].iter().enumerate() {
                all += v.abs() as f64;
                if uniform(key, (c * CHUNK + j) as u64) < density {
                    kept += v.abs() as f64;
                }
            }
            (all, kept)
        })?;
        l1_ratio(sums.iter().map(|s| s.0).sum(), sums.iter().map(|s| s.1).sum())
    } else {
        1.0
    };
    Ok(Prepared::Random { p: density, key, scale })
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
pub fn apply(prep: &Prepared, start: usize, x: &[f32], out: &mut [f32]) {
    match prep {
        Prepared::None => out.copy_from_slice(x),
        Prepared::Zero => out.fill(0.0),
        Prepared::Magnitude { threshold, equal_budget, scale } => {
            // No budgets: every entry equal to the threshold is kept.
            let mut budget = equal_budget.get(start / CHUNK).copied().unwrap_or(usize::MAX);
            for (o, v) in out.iter_mut().zip(x) {
                let m = v.abs();
                let keep = m > *threshold
                    || (m == *threshold && budget > 0 && {
                        budget -= 1;
                        true
                    });
                *o = if keep { v * scale } else { 0.0 };
            }
        }
        Prepared::Random { p, key, scale } => {
            for (j, (o, v)) in out.iter_mut().zip(x).enumerate() {
                *o = if uniform(*key, (start + j) as u64) < *p { v * scale } else { 0.0 };
            }
        }
        other => unreachable!("{other:?} is not a sparsify"),
    }
}

/// The sparsifiers that need the whole tensor at once: outliers and DELLA.
pub fn whole(x: &mut [f32], how: &Sparsify<F>, rescale: bool, key: u64, shape: &[usize]) -> Result<(), String> {
    let original = rescale.then(|| l1(x));
    match how {
        Sparsify::Outliers { density, gamma } => outliers(x, density.get(), gamma.get()),
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
            della(x, d, e, key, super::row_len(shape));
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

/// Breadcrumbs: sort by magnitude ascending, keep positions
/// `[bottom, bottom + keep)` where `keep = int(density n)`,
/// `top = int(gamma n)`, `bottom = n - keep - top`.
pub fn outliers(x: &mut [f32], density: f64, gamma: f64) {
    let n = x.len();
    let keep = ((density * n as f64) as usize).min(n);
    let mut top = (gamma * n as f64) as i64;
    let mut bottom = n as i64 - keep as i64 - top;
    if bottom < 0 {
        top += bottom;
        bottom = 0;
    }
    let _ = top;
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.par_sort_by(|&a, &b| x[a as usize].abs().total_cmp(&x[b as usize].abs()).then(a.cmp(&b)));
    let mut kept = vec![false; n];
    for &i in &order[bottom as usize..bottom as usize + keep] {
        kept[i as usize] = true;
    }
    x.iter_mut().zip(kept).for_each(|(v, k)| {
        if !k {
            *v = 0.0
        }
    });
}

/// DELLA: within each row, keep probability rises linearly with the
/// magnitude's rank from `density - eps` to `density + eps`.
fn della(x: &mut [f32], density: f64, eps: f64, key: u64, row: usize) {
    x.par_chunks_mut(row.max(1)).enumerate().for_each(|(r, row_vals)| {
        let c = row_vals.len();
        let mut order: Vec<u32> = (0..c as u32).collect();
        order.sort_by(|&a, &b| row_vals[a as usize].abs().total_cmp(&row_vals[b as usize].abs()).then(a.cmp(&b)));
        let mut rank = vec![0usize; c];
        for (pos, &i) in order.iter().enumerate() {
            rank[i as usize] = pos;
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

/// The k-th largest |x| (1-based) of input 0. Non-negative floats order like
/// their bits, so a histogram of the high 16 bits finds the bucket and one
/// of the low 16 bits inside it the value: two passes, no sort, no copy.
pub fn kth_largest_magnitude(src: &dyn Source, k: usize) -> Result<f32, String> {
    select(src, k).map(|(t, _, _)| t)
}

/// The k-th largest magnitude, with how many entries lie strictly above it
/// and how many equal it (both read off the histograms).
fn select(src: &dyn Source, k: usize) -> Result<(f32, usize, usize), String> {
    let bits = |v: &f32| v.to_bits() & 0x7fff_ffff;
    let n = src.len();
    let chunks = n.div_ceil(CHUNK);
    // A fixed number of blocks of chunks, each with one histogram: memory per
    // thread stays the same whatever the tensor size. Integer counts add up
    // the same in any order.
    let blocks = (rayon::current_num_threads() * 4).max(1);
    let per_block = chunks.div_ceil(blocks).max(1);
    let histogram = |select: &(dyn Fn(u32) -> Option<usize> + Sync)| -> Result<Vec<usize>, String> {
        let parts = (0..chunks.div_ceil(per_block))
            .into_par_iter()
            .map(|blk| {
                let mut h = vec![0u32; 1 << 16];
                let mut buf = vec![0f32; CHUNK];
                for c in blk * per_block..((blk + 1) * per_block).min(chunks) {
                    let len = CHUNK.min(n - c * CHUNK);
                    src.fill(0, c * CHUNK, &mut buf[..len])?;
                    for v in &buf[..len] {
                        if let Some(i) = select(bits(v)) {
                            h[i] += 1;
                        }
                    }
                }
                Ok(h)
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut total = vec![0usize; 1 << 16];
        for h in parts {
            total.iter_mut().zip(h).for_each(|(t, c)| *t += c as usize);
        }
        Ok(total)
    };
    // Walk buckets from the top until k elements are covered.
    let find = |h: &[usize], mut k: usize| -> (usize, usize) {
        for b in (0..h.len()).rev() {
            if h[b] >= k {
                return (b, k);
            }
            k -= h[b];
        }
        (0, k)
    };
    let high = histogram(&|b| Some((b >> 16) as usize))?;
    let (hb, k_in) = find(&high, k);
    let low = histogram(&|b| ((b >> 16) as usize == hb).then_some((b & 0xffff) as usize))?;
    let (lb, _) = find(&low, k_in);
    let above = high[hb + 1..].iter().sum::<usize>() + low[lb + 1..].iter().sum::<usize>();
    Ok((f32::from_bits(((hb as u32) << 16) | lb as u32), above, low[lb]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::Slices;

    fn magnitude(x: &[f32], density: f64) -> Vec<f32> {
        let owned = vec![x.to_vec()];
        let src = Slices(&owned);
        let prep = prepare_magnitude(&src, density, false).unwrap();
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

    #[test]
    fn radix_select_matches_a_sort() {
        let x: Vec<f32> =
            (0..5000).map(|i| ((i * 7919) % 1013) as f32 * if i % 3 == 0 { -0.01 } else { 0.013 }).collect();
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let src = Slices(std::slice::from_ref(&x));
        for k in [1, 2, 17, 2500, 4999, 5000] {
            assert_eq!(kth_largest_magnitude(&src, k).unwrap(), sorted[k - 1], "k = {k}");
        }
    }

    #[test]
    fn outliers_drop_both_ends() {
        let mut x: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        outliers(&mut x, 0.5, 0.2);
        // keep 5, drop the top 2 and the bottom 3.
        assert_eq!(x, vec![0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0]);
    }

    #[test]
    fn uniform_is_uniform() {
        let key = crate::rng::stream_key(7, "w", 0);
        let mean: f64 = (0..100_000).map(|i| uniform(key, i)).sum::<f64>() / 1e5;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
