//! SVD-based methods (Iso-C, Iso-CTS, TSV-M, CART) on row-major
//! `[rows, cols]` f32 slices, through faer's thin SVD. Tensors that are not
//! matrices get the plain mean of their inputs, as FusionBench does.

use faer::{Mat, MatRef};

/// The float types the SVD runs in: f32, or f64 where f32 loses too much
/// (Iso-CTS, whose residual subspaces faer's f32 SVD gets visibly less
/// accurately than LAPACK's f32 SVD: about 50 times FusionBench's f32 error
/// on MiniLM's output projections, against 1e-14 in f64).
trait Real: faer::traits::RealField + Copy {
    fn of(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Real for f32 {
    fn of(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Real for f64 {
    fn of(x: f32) -> Self {
        x as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// A row-major slice as a faer matrix.
fn matrix<T: Real>(x: &[f32], rows: usize, cols: usize) -> Mat<T> {
    Mat::from_fn(rows, cols, |i, j| T::of(x[i * cols + j]))
}

/// A faer matrix back to row-major f32, times `scale`.
fn row_major<T: Real>(m: MatRef<'_, T>, scale: T) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.nrows() * m.ncols());
    for i in 0..m.nrows() {
        out.extend((0..m.ncols()).map(|j| (scale * m[(i, j)]).to_f32()));
    }
    out
}

/// A thin SVD `x = U diag(s) V^T`: `min(rows, cols)` triplets, `s` descending.
type Svd<T> = (Mat<T>, Vec<T>, Mat<T>);

fn thin_svd<T: Real>(x: MatRef<'_, T>) -> Result<Svd<T>, String> {
    let svd = x.thin_svd().map_err(|e| format!("SVD of a {}x{} matrix: {e:?}", x.nrows(), x.ncols()))?;
    let s = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    Ok((svd.U().to_owned(), s, svd.V().to_owned()))
}

/// The nearest matrix with orthonormal columns (the polar factor `P Q^T` of
/// `x = P S Q^T`).
fn polar<T: Real>(x: MatRef<'_, T>) -> Result<Mat<T>, String> {
    let (p, _, q) = thin_svd(x)?;
    Ok(&p * q.transpose())
}

/// `lambda` times the mean of the deltas: what both methods do with tensors
/// that are not matrices.
fn mean(deltas: &[Vec<f32>], lambda: f32) -> Vec<f32> {
    let k = lambda / deltas.len() as f32;
    let mut out = deltas[0].clone();
    for d in &deltas[1..] {
        out.iter_mut().zip(d).for_each(|(o, x)| *o += x);
    }
    out.iter_mut().for_each(|o| *o *= k);
    out
}

/// Iso-C (Marczak et al., ICML 2025): the summed task vector `U diag(s) V^T`
/// with every singular value replaced by their mean, `lambda mean(s) U V^T`.
/// The sum is not divided by the model count, as in the paper: the flattened
/// spectrum sets the scale.
pub fn iso_c(deltas: &[Vec<f32>], lambda: f32, shape: &[usize]) -> Result<Vec<f32>, String> {
    let [rows, cols] = *shape else { return Ok(mean(deltas, lambda)) };
    let mut sum = matrix::<f32>(&deltas[0], rows, cols);
    for d in &deltas[1..] {
        sum += matrix::<f32>(d, rows, cols);
    }
    let (u, s, v) = thin_svd(sum.as_ref())?;
    let s_mean = s.iter().map(|&x| x as f64).sum::<f64>() / s.len().max(1) as f64;
    Ok(row_major((&u * v.transpose()).as_ref(), lambda * s_mean as f32))
}

/// TSV-M (Gargiulo et al., CVPR 2025): each of the T task vectors keeps its
/// top `min(rows, cols) / T` singular triplets; the kept left and right
/// singular vectors, side by side, are each replaced by their polar factor
/// (which removes the interference between tasks' subspaces) and the matrix
/// rebuilt with the kept singular values, times `lambda`.
pub fn tsv_m(deltas: &[Vec<f32>], lambda: f32, shape: &[usize]) -> Result<Vec<f32>, String> {
    let [rows, cols] = *shape else { return Ok(mean(deltas, lambda)) };
    // FusionBench's int(r / T): with more tasks than dimensions nothing is kept.
    let k = rows.min(cols) / deltas.len();
    if k == 0 {
        return Ok(vec![0.0; rows * cols]);
    }
    let width = k * deltas.len();
    let (mut us, mut vs, mut ss) = (Mat::<f32>::zeros(rows, width), Mat::<f32>::zeros(cols, width), vec![0f32; width]);
    for (t, d) in deltas.iter().enumerate() {
        let (u, s, v) = thin_svd(matrix(d, rows, cols).as_ref())?;
        for j in 0..k {
            us.col_mut(t * k + j).copy_from(u.col(j));
            vs.col_mut(t * k + j).copy_from(v.col(j));
            ss[t * k + j] = s[j];
        }
    }
    let mut pu = polar(us.as_ref())?;
    let pv = polar(vs.as_ref())?;
    for (j, s) in ss.iter().enumerate() {
        pu.col_mut(j).iter_mut().for_each(|x| *x *= s);
    }
    Ok(row_major((&pu * pv.transpose()).as_ref(), lambda))
}

/// Python's `round` (half to even), which FusionBench's Iso-CTS uses to
/// split the rank between tasks.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// How Iso-CTS splits the rank `r` of a matrix between the common subspace
/// and `tasks` task-specific blocks, as FusionBench does: the common part is
/// `int(r * common)`, then moved so that the rest divides evenly, rounding
/// the per-task share half to even. Returns (common, per task). Where that
/// rounding asks for more than `r` (only for tiny `common`), each task gets
/// one direction fewer.
pub fn iso_cts_split(r: usize, common: f64, tasks: usize) -> (usize, usize) {
    let c0 = (r as f64 * common).floor().clamp(0.0, r as f64) as usize;
    let mut per_task = round_half_even((r - c0) as f64 / tasks as f64) as usize;
    while per_task * tasks > r {
        per_task -= 1;
    }
    (r - per_task * tasks, per_task)
}

/// Iso-CTS (Marczak et al., ICML 2025), as FusionBench's `iso_cts`: the top
/// singular directions of the summed task vector span the common subspace;
/// each task vector, with that (left) subspace projected out, adds its own
/// top directions; the side-by-side left and right singular vectors are
/// replaced by their polar factors, every singular value by the mean of the
/// kept ones, times `lambda`. Computed in f64 (see [`Real`]).
pub fn iso_cts(deltas: &[Vec<f32>], lambda: f32, common: f64, shape: &[usize]) -> Result<Vec<f32>, String> {
    let [rows, cols] = *shape else { return Ok(mean(deltas, lambda)) };
    let r = rows.min(cols);
    let (c, k) = iso_cts_split(r, common, deltas.len());
    let mut sum = matrix::<f64>(&deltas[0], rows, cols);
    for d in &deltas[1..] {
        sum += matrix::<f64>(d, rows, cols);
    }
    let (u, s, v) = thin_svd(sum.as_ref())?;
    let (mut us, mut vs, mut ss) = (Mat::<f64>::zeros(rows, r), Mat::<f64>::zeros(cols, r), vec![0f64; r]);
    let uc = u.subcols(0, c);
    for (t, d) in deltas.iter().enumerate().filter(|_| k > 0) {
        let w = matrix::<f64>(d, rows, cols);
        let residual = &w - uc * (uc.transpose() * &w);
        let (ut, st, vt) = thin_svd(residual.as_ref())?;
        for j in 0..k {
            us.col_mut(t * k + j).copy_from(ut.col(j));
            vs.col_mut(t * k + j).copy_from(vt.col(j));
            ss[t * k + j] = st[j];
        }
    }
    let at = k * deltas.len();
    for j in 0..c {
        us.col_mut(at + j).copy_from(u.col(j));
        vs.col_mut(at + j).copy_from(v.col(j));
        ss[at + j] = s[j];
    }
    let s_mean = ss.iter().sum::<f64>() / r.max(1) as f64;
    let pu = polar(us.as_ref())?;
    let pv = polar(vs.as_ref())?;
    Ok(row_major((&pu * pv.transpose()).as_ref(), lambda as f64 * s_mean))
}

/// The rank CART keeps of an `r`-rank matrix: `floor(rank * r)`.
pub fn cart_rank(r: usize, rank: f64) -> usize {
    ((rank * r as f64).floor().max(0.0) as usize).min(r)
}

/// CART (Choi et al., "Revisiting Weight Averaging for Model Merging"): the
/// mean of the models plus `lambda` times the sum of each model's deviation
/// from that mean, truncated to its top `floor(rank * min(rows, cols))`
/// singular triplets. Full-rank deviations sum to zero, so other tensors
/// (and `rank` 0) get the mean.
pub fn cart(models: &[Vec<f32>], rank: f64, lambda: f32, shape: &[usize]) -> Result<Vec<f32>, String> {
    let avg = mean(models, 1.0);
    let [rows, cols] = *shape else { return Ok(avg) };
    let k = cart_rank(rows.min(cols), rank);
    if k == 0 {
        return Ok(avg);
    }
    let center = matrix::<f32>(&avg, rows, cols);
    let mut acc = Mat::<f32>::zeros(rows, cols);
    for m in models {
        let dev = matrix::<f32>(m, rows, cols) - &center;
        let (mut u, s, v) = thin_svd(dev.as_ref())?;
        for (j, s) in s.iter().enumerate().take(k) {
            u.col_mut(j).iter_mut().for_each(|x| *x *= s);
        }
        acc += u.subcols(0, k) * v.subcols(0, k).transpose();
    }
    let mut out = row_major(acc.as_ref(), lambda);
    out.iter_mut().zip(&avg).for_each(|(o, a)| *o += a);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x y^T` for columns `x` [rows] and `y` [cols], row-major.
    fn outer(x: &[f32], y: &[f32], scale: f32) -> Vec<f32> {
        x.iter().flat_map(|a| y.iter().map(move |b| scale * a * b)).collect()
    }

    /// Task vectors with mutually orthogonal row and column spaces do not
    /// interfere: TSV-M returns their sum. Each has rank r/T = 2, so the kept
    /// triplets are exactly its own (no zero singular values with arbitrary
    /// vectors).
    #[test]
    fn tsv_m_of_orthogonal_task_vectors_is_their_sum() {
        let e = |n: usize, i: usize| (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
        let add = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<f32>>();
        let (rows, cols) = (6, 4);
        let deltas = vec![
            add(outer(&e(rows, 0), &e(cols, 1), 3.0), outer(&e(rows, 1), &e(cols, 0), 0.5)),
            add(outer(&e(rows, 2), &e(cols, 3), -1.5), outer(&e(rows, 4), &e(cols, 2), 2.0)),
        ];
        let got = tsv_m(&deltas, 1.0, &[rows, cols]).unwrap();
        for (i, g) in got.iter().enumerate() {
            assert!((g - (deltas[0][i] + deltas[1][i])).abs() < 1e-5, "{i}: {g}");
        }
    }

    /// Iso-C of one rank-1 matrix: the spectrum (s, 0, 0, 0) becomes s/4 on
    /// every direction, `lambda s/4 U V^T`.
    #[test]
    fn iso_c_spreads_the_spectrum_evenly() {
        let x: Vec<f32> = (0..16).map(|i| if i == 5 { 8.0 } else { 0.0 }).collect();
        let got = iso_c(&[x], 0.5, &[4, 4]).unwrap();
        let svd = thin_svd(matrix::<f32>(&got, 4, 4).as_ref()).unwrap();
        assert!(svd.1.iter().all(|s| (s - 1.0).abs() < 1e-5), "{:?}", svd.1);
    }

    /// FusionBench's split of the rank (Python's round, half to even): r 10,
    /// common 0.8, 3 tasks: int(8) = 8, round(2/3) = 1, so 7 common and 1
    /// each; r 10, 4 tasks: round(0.5) = 0, everything common; r 10, 2
    /// tasks: round(1.0) = 1; r 6, common 0.25, 4 tasks: int(1.5) = 1,
    /// round(1.25) = 1, 2 common; r 5, common 0, 3 tasks: round(5/3) = 2
    /// would ask for 6 > 5 directions, so 1 each.
    #[test]
    fn iso_cts_splits_the_rank_as_fusion_bench() {
        assert_eq!(iso_cts_split(10, 0.8, 3), (7, 1));
        assert_eq!(iso_cts_split(10, 0.8, 4), (10, 0));
        assert_eq!(iso_cts_split(10, 0.8, 2), (8, 1));
        assert_eq!(iso_cts_split(6, 0.25, 4), (2, 1));
        assert_eq!(iso_cts_split(5, 0.0, 3), (2, 1));
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
    }

    /// The measurement that picked faer over nalgebra: thin SVD of square
    /// pseudo-random f32 matrices, sizes from `FUSE_SVD_BENCH` (default
    /// "1024"), for example
    /// `FUSE_SVD_BENCH="1024 2048 4096" cargo test --release --lib bench_svd -- --ignored --nocapture`.
    /// nalgebra takes minutes past 2048; `FUSE_SVD_BENCH_NALGEBRA=0` skips it.
    #[test]
    #[ignore]
    fn bench_svd() {
        let sizes = std::env::var("FUSE_SVD_BENCH").unwrap_or_else(|_| "1024".into());
        let with_nalgebra = std::env::var("FUSE_SVD_BENCH_NALGEBRA").map_or(true, |v| v != "0");
        for n in sizes.split_whitespace().map(|s| s.parse::<usize>().unwrap()) {
            let mut state = 0x1234_5678_9abc_def0u64;
            let x: Vec<f32> = (0..n * n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let t = std::time::Instant::now();
            let s = thin_svd(matrix::<f32>(&x, n, n).as_ref()).unwrap().1;
            println!("faer     {n}x{n}: {:.2}s (s_max {})", t.elapsed().as_secs_f64(), s[0]);
            let t = std::time::Instant::now();
            let s = thin_svd(matrix::<f64>(&x, n, n).as_ref()).unwrap().1;
            println!("faer f64 {n}x{n}: {:.2}s (s_max {}; Iso-CTS runs in f64)", t.elapsed().as_secs_f64(), s[0]);
            if with_nalgebra {
                let t = std::time::Instant::now();
                let svd = nalgebra::DMatrix::<f32>::from_row_slice(n, n, &x).svd(true, true);
                println!("nalgebra {n}x{n}: {:.2}s (s_max {})", t.elapsed().as_secs_f64(), svd.singular_values.max());
            }
        }
    }
}
