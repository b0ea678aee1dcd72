//! The merge kernels on f32 data. Loading and linear combinations go through
//! candle-core tensors; the task-vector family works on flat slices because
//! it needs selection and per-entry masks candle has no kernels for.

use crate::check::Sparsify;
use crate::io::DType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub type Result<T> = candle_core::Result<T>;

/// Bytes of a stored tensor to an f32 tensor.
pub fn load(bytes: &[u8], dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
    let cd = match dtype {
        DType::F32 => candle_core::DType::F32,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
        DType::F64 => candle_core::DType::F64,
        DType::I64 => candle_core::DType::I64,
        DType::I32 => candle_core::DType::I32,
        DType::I16 => candle_core::DType::I16,
        DType::U8 | DType::Bool => candle_core::DType::U8,
        DType::I8 => candle_core::bail!("int8 tensors are not supported"),
    };
    Tensor::from_raw_buffer(bytes, cd, shape, device)?.to_dtype(candle_core::DType::F32)
}

/// `sum_i c_i * x_i`.
pub fn lin(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (c, x) in terms {
        let scaled = if *c == 1.0 { (*x).clone() } else { x.affine(*c, 0.0)? };
        acc = Some(match acc {
            None => scaled,
            Some(a) => (a + scaled)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty linear combination".into()))
}

/// Parameters of the task-vector merge family.
pub struct TaskMerge<'a> {
    pub weights: &'a [f64],
    pub densities: &'a [f64],
    pub sparsify: Sparsify,
    pub sign_election: bool,
    pub normalize: bool,
    pub lambda: f64,
}

/// mergekit's generalized task arithmetic on flat deltas: sparsify each,
/// weight, elect a sign per entry (sum method), sum the agreeing entries,
/// divide by the agreeing weights if normalizing, scale by lambda.
pub fn task_merge(mut deltas: Vec<Vec<f32>>, p: &TaskMerge) -> Vec<f32> {
    for (d, &density) in deltas.iter_mut().zip(p.densities) {
        match p.sparsify {
            Sparsify::None => {}
            Sparsify::Magnitude => magnitude(d, density),
        }
    }
    let n = deltas.first().map_or(0, Vec::len);
    let w: Vec<f32> = p.weights.iter().map(|&w| w as f32).collect();
    let lambda = p.lambda as f32;
    let mut out = vec![0f32; n];
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = c * CHUNK;
        for (j, o) in chunk.iter_mut().enumerate() {
            let i = base + j;
            let (mut mixed, mut divisor) = (0f32, 0f32);
            if p.sign_election {
                let sum: f32 = deltas.iter().zip(&w).map(|(d, w)| d[i] * w).sum();
                let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
                for (d, w) in deltas.iter().zip(&w) {
                    let wd = d[i] * w;
                    if sign(wd) == majority {
                        mixed += wd;
                        divisor += w;
                    }
                }
                if divisor == 0.0 {
                    divisor = 1.0;
                }
            } else {
                for (d, w) in deltas.iter().zip(&w) {
                    mixed += d[i] * w;
                    divisor += w;
                }
                if divisor.abs() < 1e-8 {
                    divisor = 1.0;
                }
            }
            if p.normalize {
                mixed /= divisor;
            }
            *o = mixed * lambda;
        }
    });
    out
}

fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Keeps the `int(density * n)` entries of largest magnitude (at least one),
/// zeroing the rest. The threshold is found by a two-pass radix select on
/// the magnitudes' bits: O(n), no sort and no copy of the tensor. Entries
/// equal to the threshold are kept in index order so that exactly k survive.
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

/// The k-th largest |x| (1-based). Non-negative floats order like their
/// bits, so a histogram of the high 16 bits finds the bucket, and one of the
/// low 16 bits inside it finds the value.
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
    fn ties_closed_form() {
        // Two deltas, full density: where signs agree the weighted mean, else
        // the majority's entries only.
        let d = vec![vec![1.0, 2.0, -1.0], vec![3.0, -1.0, -3.0]];
        let p = TaskMerge {
            weights: &[1.0, 1.0],
            densities: &[1.0, 1.0],
            sparsify: Sparsify::Magnitude,
            sign_election: true,
            normalize: true,
            lambda: 1.0,
        };
        assert_eq!(task_merge(d, &p), vec![2.0, 2.0, -2.0]);
    }
}
