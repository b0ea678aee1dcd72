//! Sparsifying task vectors: magnitude trimming (TIES), outlier trimming
//! (Model Breadcrumbs), random dropping (DARE) and magnitude-ranked random
//! dropping (DELLA), with mergekit's L1 rescale.

use crate::graph::{Sparsify, F};
use rayon::prelude::*;

pub fn apply(x: &mut [f32], how: &Sparsify<F>, rescale: bool, key: u64, shape: &[usize]) -> Result<(), String> {
    let original = rescale.then(|| l1(x));
    match how {
        Sparsify::Magnitude { density } => magnitude(x, density.get()),
        Sparsify::Outliers { density, gamma } => outliers(x, density.get(), gamma.get()),
        Sparsify::Random { density } => {
            if density.get() >= 1.0 {
                return Ok(());
            }
            let p = density.get();
            x.par_iter_mut().enumerate().for_each(|(i, v)| {
                if uniform(key, i as u64) >= p {
                    *v = 0.0;
                }
            });
        }
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
    }
    if let Some(before) = original {
        let after = l1(x);
        if before >= 1e-7 && after >= 1e-7 {
            let s = (before / after) as f32;
            x.iter_mut().for_each(|v| *v *= s);
        }
    }
    Ok(())
}

fn l1(x: &[f32]) -> f64 {
    x.par_iter().map(|v| v.abs() as f64).sum()
}

/// Keeps the `int(density * n)` entries of largest magnitude (at least one).
/// Entries equal to the threshold are kept in index order so that exactly k
/// survive.
pub fn magnitude(x: &mut [f32], density: f64) {
    if density >= 1.0 {
        return;
    }
    if density <= 0.0 {
        x.fill(0.0);
        return;
    }
    let n = x.len();
    let k = ((density * n as f64) as usize).clamp(1, n);
    let threshold = kth_largest_magnitude(x, k);
    let above = x.par_iter().filter(|v| v.abs() > threshold).count();
    let mut equal_budget = k - above;
    for v in x.iter_mut() {
        let m = v.abs();
        if m > threshold {
            continue;
        }
        if m == threshold && equal_budget > 0 {
            equal_budget -= 1;
            continue;
        }
        *v = 0.0;
    }
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

/// The k-th largest |x| (1-based). Non-negative floats order like their
/// bits, so a histogram of the high 16 bits finds the bucket, and one of the
/// low 16 bits inside it finds the value: O(n), no sort, no copy.
pub fn kth_largest_magnitude(x: &[f32], k: usize) -> f32 {
    let bits = |v: &f32| v.to_bits() & 0x7fff_ffff;
    let histogram = |select: &(dyn Fn(u32) -> Option<usize> + Sync)| -> Vec<usize> {
        x.par_chunks(1 << 20)
            .map(|c| {
                let mut h = vec![0usize; 1 << 16];
                for v in c {
                    if let Some(b) = select(bits(v)) {
                        h[b] += 1;
                    }
                }
                h
            })
            .reduce(
                || vec![0usize; 1 << 16],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            )
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
    let high = histogram(&|b| Some((b >> 16) as usize));
    let (hb, k_in) = find(&high, k);
    let low = histogram(&|b| ((b >> 16) as usize == hb).then_some((b & 0xffff) as usize));
    let (lb, _) = find(&low, k_in);
    f32::from_bits(((hb as u32) << 16) | lb as u32)
}

/// The random stream of one tensor: from the seed, the tensor's name and
/// which input it is, never from thread or visiting order.
pub fn stream_key(seed: u64, tensor: &str, stream: u64) -> u64 {
    let mut h = mix(seed ^ 0x243F_6A88_85A3_08D3);
    for b in tensor.bytes() {
        h = mix(h ^ b as u64);
    }
    mix(h ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// A uniform number in [0, 1) for element `i` of a stream (counter-based,
/// so any element can be drawn on any thread).
pub fn uniform(key: u64, i: u64) -> f64 {
    (mix(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 11) as f64 / (1u64 << 53) as f64
}

/// splitmix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_keeps_exactly_k() {
        let mut x = vec![0.1, -3.0, 2.0, 0.5, -0.5, 1.0];
        magnitude(&mut x, 0.5);
        assert_eq!(x, vec![0.0, -3.0, 2.0, 0.0, 0.0, 1.0]);
        let mut y = vec![1.0, -1.0, 1.0, 1.0];
        magnitude(&mut y, 0.5);
        assert_eq!(y.iter().filter(|v| **v != 0.0).count(), 2);
    }

    #[test]
    fn radix_select_matches_a_sort() {
        let x: Vec<f32> =
            (0..5000).map(|i| ((i * 7919) % 1013) as f32 * if i % 3 == 0 { -0.01 } else { 0.013 }).collect();
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for k in [1, 2, 17, 2500, 4999, 5000] {
            assert_eq!(kth_largest_magnitude(&x, k), sorted[k - 1], "k = {k}");
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
        let key = stream_key(7, "w", 0);
        let mean: f64 = (0..100_000).map(|i| uniform(key, i)).sum::<f64>() / 1e5;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
