//! The kernels on f32 data. Loads and linear combinations go through
//! candle-core tensors (the candle engine); the native merge kernels work on
//! flat slices, shared by both engines: `sparsify.rs` (trimming and
//! dropping), `select.rs` (the k-th largest magnitude, for the trims), `combine.rs` (sign consensus, RAM and the base-relative
//! methods), `sphere.rs` (the spherical interpolations), `svd.rs` (the
//! SVD-based methods), `ties_pass.rs` (TIES's one-read pass over a bf16
//! chunk in one loop).

mod combine;
mod select;
mod sparsify;
mod sphere;
mod svd;
mod ties_pass;

pub use crate::rng::{stream_key, uniform};
pub(in crate::exec) use combine::{consensus_of_trimmed_sums, consensus_of_trims, Sum, Trim};
pub use select::kth_largest_magnitude;
pub(in crate::exec) use select::Selection;
pub(in crate::exec) use select::{Guide, Tally};
pub(in crate::exec) use sparsify::{
    chunk_trim, magnitude_without_pass, outlier_window, window_ranks, window_without_pass,
};
pub(in crate::exec) use ties_pass::{PassCounts, Term, TiesPass, MAX_LEAVES};

use crate::graph::F;
use crate::io::DType;
use crate::ir::Kernel;
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

/// Elements per chunk: large enough to amortize dispatch, small enough to
/// stay in cache. Streaming always works on chunks aligned to this.
pub const CHUNK: usize = 1 << 15;

/// What a whole-tensor kernel knows about the tensor it computes.
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
}

/// Where a kernel's inputs come from, one chunk at a time: slices in memory,
/// or subgraphs evaluated straight from the checkpoint files.
pub trait Source: Sync {
    /// Elements per input.
    fn len(&self) -> usize;
    /// How many inputs.
    fn inputs(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `out` with elements `start ..` of input `input`.
    fn fill(&self, input: usize, start: usize, out: &mut [f32]) -> std::result::Result<(), String>;
}

/// Whole-tensor inputs held in memory.
pub struct Slices<'a>(pub &'a [Vec<f32>]);

impl Source for Slices<'_> {
    fn len(&self) -> usize {
        self.0.first().map_or(0, Vec::len)
    }
    fn inputs(&self) -> usize {
        self.0.len()
    }
    fn fill(&self, input: usize, start: usize, out: &mut [f32]) -> std::result::Result<(), String> {
        out.copy_from_slice(&self.0[input][start..start + out.len()]);
        Ok(())
    }
}

/// The whole-tensor facts a streamable kernel needs before it can work a
/// chunk at a time: thresholds, norms, interpolation coefficients.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Nothing needed (elementwise kernels, or a no-op sparsify).
    None,
    /// Everything dropped (density 0).
    Zero,
    /// Keep `|x| > threshold`, and entries equal to it while the chunk's
    /// budget lasts (so exactly k survive, in index order); times `scale`.
    Magnitude { threshold: f32, equal_budget: Vec<usize>, scale: f32 },
    /// Keep the entries whose magnitude bits lie strictly between `lo` and
    /// `hi`, those equal to `lo` after the first `skip`, and those equal to
    /// `hi` while `allow` lasts (in index order); `per_chunk` holds what is
    /// left of `skip` and `allow` at each chunk's start. Times `scale`.
    Outliers { lo: u32, hi: u32, skip: usize, allow: usize, per_chunk: Vec<(usize, usize)>, scale: Option<f32> },
    /// DELLA: keep the entries `keeps` says (their draws, and the held bits
    /// of those the draws leave open); times `scale` when rescaled.
    Della { keeps: sparsify::Keeps, scale: Option<f32> },
    /// Keep where the element's uniform draw is below `p`; times `scale`.
    Random { p: f64, key: u64, scale: f32 },
    /// SCE: with `select`, keep entries whose variance across the task
    /// vectors is above `threshold`, or equal to it while the chunk's budget
    /// lasts; `weights` per task vector.
    Sce { select: bool, threshold: f32, budgets: Vec<usize>, weights: Vec<f32> },
    /// `s0 a + s1 b`.
    Mix { s0: f32, s1: f32 },
    /// `t mean(models) + (1 - t) base`.
    Stock { t: f32 },
    /// RAM's factor on each task vector's unique entries.
    Ram { boost: Vec<f32> },
}

/// Kernels that can stream: elementwise ones, and those that need only
/// whole-tensor statistics computed in passes over their inputs.
pub fn is_streamable(kernel: &Kernel<F>, shape: &[usize]) -> bool {
    match kernel {
        Kernel::Consensus { .. } | Kernel::NearSwap { .. } | Kernel::Slerp { .. } | Kernel::MagMax { .. } => true,
        Kernel::Ram { .. } | Kernel::RamPlusTl { .. } | Kernel::Sce { .. } => true,
        Kernel::Sparsify { .. } => true,
        Kernel::NuSlerp { flatten, .. } => *flatten || shape.len() < 2,
        Kernel::ModelStock { filter_wise } => !filter_wise,
        _ => false,
    }
}

/// Computes a streamable kernel's statistics with passes over `src`.
pub fn prepare(kernel: &Kernel<F>, src: &dyn Source, t: &TensorInfo) -> std::result::Result<Prepared, String> {
    use crate::ir::Sparsify as S;
    Ok(match kernel {
        Kernel::Consensus { .. } | Kernel::NearSwap { .. } | Kernel::MagMax { .. } => Prepared::None,
        Kernel::Sparsify { how: S::Magnitude { density }, rescale, .. } => {
            sparsify::prepare_magnitudes(src, &[(density.get(), *rescale)])?.remove(0)
        }
        Kernel::Sparsify { how: S::Outliers { density, gamma }, rescale, .. } => {
            sparsify::prepare_outliers(src, &[(density.get(), gamma.get(), *rescale)])?.remove(0)
        }
        Kernel::Sparsify { how: S::Random { density }, rescale, seed, stream } => {
            let key = crate::rng::stream_key(*seed, t.name, *stream);
            sparsify::prepare_randoms(src, &[(density.get(), *rescale, key)])?.remove(0)
        }
        Kernel::Sparsify { how: S::Della { density, epsilon }, rescale, seed, stream } => {
            let key = crate::rng::stream_key(*seed, t.name, *stream);
            sparsify::prepare_della(src, density.get(), epsilon.get(), key, row_len(t.shape), *rescale)?
        }
        Kernel::Slerp { t: x } => sphere::prepare_slerp(src, x.get(), false)?,
        Kernel::NuSlerp { t: x, .. } => sphere::prepare_slerp(src, x.get(), true)?,
        Kernel::ModelStock { .. } => combine::prepare_stock(src)?,
        Kernel::Sce { select_topk } => combine::prepare_sce(src, select_topk.get())?,
        Kernel::Ram { .. } => Prepared::Ram { boost: vec![1.0; src.inputs()] },
        Kernel::RamPlusTl { r, alpha, epsilon } => combine::prepare_ramplus(src, r.get(), alpha.get(), epsilon.get())?,
        other => return Err(format!("{other:?} does not stream")),
    })
}

/// Sparsifies whose statistics can be computed side by side, in shared
/// passes over their inputs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Magnitude,
    Outliers,
    Random,
}

/// Which family a sparsify belongs to; `None` for other kernels.
pub fn family(kernel: &Kernel<F>) -> Option<Family> {
    use crate::ir::Sparsify as S;
    match kernel {
        Kernel::Sparsify { how: S::Magnitude { .. }, .. } => Some(Family::Magnitude),
        Kernel::Sparsify { how: S::Outliers { .. }, .. } => Some(Family::Outliers),
        Kernel::Sparsify { how: S::Random { .. }, .. } => Some(Family::Random),
        _ => None,
    }
}

/// The statistics of several sparsifies of one family at once, one per
/// input of `src` (`kernels[j]` over input `j`, of tensor `names[j]`): each pass
/// reads every input's chunk in a row, so inputs sharing a load read it
/// once.
pub fn prepare_side_by_side(
    kernels: &[&Kernel<F>],
    names: &[String],
    src: &dyn Source,
) -> std::result::Result<Vec<Prepared>, String> {
    use crate::ir::Sparsify as S;
    let (mut magnitude, mut outliers, mut random) = (Vec::new(), Vec::new(), Vec::new());
    for (k, name) in kernels.iter().zip(names) {
        match k {
            Kernel::Sparsify { how: S::Magnitude { density }, rescale, .. } => {
                magnitude.push((density.get(), *rescale))
            }
            Kernel::Sparsify { how: S::Outliers { density, gamma }, rescale, .. } => {
                outliers.push((density.get(), gamma.get(), *rescale))
            }
            Kernel::Sparsify { how: S::Random { density }, rescale, seed, stream } => {
                random.push((density.get(), *rescale, crate::rng::stream_key(*seed, name, *stream)))
            }
            other => return Err(format!("{other:?} is not a sparsify of one family")),
        }
    }
    match (magnitude.len(), outliers.len(), random.len()) {
        (_, 0, 0) => sparsify::prepare_magnitudes(src, &magnitude),
        (0, _, 0) => sparsify::prepare_outliers(src, &outliers),
        (0, 0, _) => sparsify::prepare_randoms(src, &random),
        _ => Err("sparsifies of different families".to_string()),
    }
}

/// One chunk of a streamable kernel: `inputs` hold elements `start ..` of
/// each input, `start` a multiple of [`CHUNK`].
pub fn apply(kernel: &Kernel<F>, prep: &Prepared, start: usize, inputs: &[&[f32]], out: &mut [f32]) {
    match (kernel, prep) {
        (Kernel::Consensus { weights, elect_sign, normalize }, _) => {
            combine::consensus(inputs, &get(weights), *elect_sign, *normalize, out)
        }
        (Kernel::NearSwap { t }, _) => combine::nearswap(inputs[0], inputs[1], t.get(), out),
        (Kernel::MagMax { lambda }, _) => combine::magmax(inputs, lambda.get() as f32, out),
        (Kernel::Sparsify { .. }, p) => sparsify::apply(p, start, inputs[0], out),
        (Kernel::Ram { epsilon } | Kernel::RamPlusTl { epsilon, .. }, Prepared::Ram { boost }) => {
            combine::ram(inputs, epsilon.get() as f32, boost, out)
        }
        (_, Prepared::Mix { s0, s1 }) => {
            for ((o, a), b) in out.iter_mut().zip(inputs[0]).zip(inputs[1]) {
                *o = s0 * a + s1 * b;
            }
        }
        (_, Prepared::Stock { t }) => combine::apply_stock(*t, inputs, out),
        (Kernel::Sce { .. }, p) => combine::apply_sce(p, start, inputs, out),
        (k, p) => unreachable!("{k:?} with {p:?}"),
    }
}

/// Runs a kernel on whole input tensors (the candle engine, and kernels
/// that cannot stream).
pub fn whole(kernel: &Kernel<F>, inputs: Vec<Vec<f32>>, t: &TensorInfo) -> std::result::Result<Vec<f32>, String> {
    let n = inputs.first().map_or(0, Vec::len);
    if is_streamable(kernel, t.shape) {
        let src = Slices(&inputs);
        let prep = prepare(kernel, &src, t)?;
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let s = c * CHUNK;
            let ins: Vec<&[f32]> = inputs.iter().map(|x| &x[s..s + o.len()]).collect();
            apply(kernel, &prep, s, &ins, o);
        });
        return Ok(out);
    }
    Ok(match kernel {
        Kernel::NuSlerp { t: s, row_wise, .. } => {
            sphere::nuslerp_rows(&inputs[0], &inputs[1], s.get(), *row_wise, t.shape)
        }
        Kernel::MultiSlerp { weights, eps } => sphere::multislerp(&inputs, &get(weights), eps.get()),
        Kernel::Karcher { max_iter, tol } => sphere::karcher(&inputs, *max_iter as usize, tol.get()),
        Kernel::ModelStock { .. } => combine::model_stock_rows(&inputs[0], &inputs[1..], t.shape),
        Kernel::ArceeFusion => combine::arcee_fusion(&inputs[0], &inputs[1], t.shape),
        Kernel::IsoC { lambda } => svd::iso_c(&inputs, lambda.get() as f32, t.shape)?,
        Kernel::TsvM { lambda } => svd::tsv_m(&inputs, lambda.get() as f32, t.shape)?,
        Kernel::IsoCts { lambda, common } => svd::iso_cts(&inputs, lambda.get() as f32, common.get(), t.shape)?,
        Kernel::Cart { rank, lambda } => svd::cart(&inputs, rank.get(), lambda.get() as f32, t.shape)?,
        Kernel::LoraProduct { scale } => lora_product(&inputs[0], &inputs[1], scale.get() as f32, t.shape),
        Kernel::ResizeRows { from } => resize_rows(&inputs[0], *from as usize, t.shape),
        other => unreachable!("{other:?} streams"),
    })
}

/// Per-chunk partial results over a source's chunks, in chunk order: sums
/// of them are the same whatever the thread count.
pub fn partials<T: Send>(
    src: &dyn Source,
    inputs: usize,
    f: impl Fn(usize, &[Vec<f32>]) -> T + Sync + Send,
) -> std::result::Result<Vec<T>, String> {
    let n = src.len();
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let s = c * CHUNK;
            let len = CHUNK.min(n - s);
            let mut bufs = vec![vec![0f32; len]; inputs];
            for (i, b) in bufs.iter_mut().enumerate() {
                src.fill(i, s, b)?;
            }
            Ok(f(c, &bufs))
        })
        .collect()
}

/// `scale * B A` for B [out, r] and A [r, in] (row-major), each entry summed
/// in the same order on any thread count.
fn lora_product(b: &[f32], a: &[f32], scale: f32, shape: &[usize]) -> Vec<f32> {
    let (out, inn) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let r = a.len() / inn.max(1);
    let mut res = vec![0f32; out * inn];
    res.par_chunks_mut(inn.max(1)).enumerate().for_each(|(i, row)| {
        for k in 0..r {
            let bik = b[i * r + k] * scale;
            for (o, ak) in row.iter_mut().zip(&a[k * inn..(k + 1) * inn]) {
                *o += bik * ak;
            }
        }
    });
    res
}

/// `x` ([from, cols]) cut or padded to `shape[0]` rows; new rows are the mean row.
fn resize_rows(x: &[f32], from: usize, shape: &[usize]) -> Vec<f32> {
    let to = shape[0];
    let cols = x.len() / from.max(1);
    let mut out = Vec::with_capacity(to * cols);
    out.extend_from_slice(&x[..to.min(from) * cols]);
    if to > from {
        let mean: Vec<f32> =
            (0..cols).map(|j| (x.chunks(cols).map(|r| r[j] as f64).sum::<f64>() / from as f64) as f32).collect();
        for _ in from..to {
            out.extend_from_slice(&mean);
        }
    }
    out
}

fn get(v: &[F]) -> Vec<f64> {
    v.iter().map(|x| x.get()).collect()
}

/// Rows of a tensor for row-wise kernels: 1-D tensors are one row.
pub(crate) fn row_len(shape: &[usize]) -> usize {
    match shape {
        [] => 1,
        [n] => *n,
        [.., last] => *last,
    }
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

pub(crate) fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_closed_form() {
        // Two deltas: where signs agree the weighted mean, else the majority's entries only.
        let d: Vec<&[f32]> = vec![&[1.0, 2.0, -1.0], &[3.0, -1.0, -3.0]];
        let k = Kernel::Consensus { weights: vec![F::new(1.0), F::new(1.0)], elect_sign: true, normalize: true };
        let mut out = vec![0f32; 3];
        apply(&k, &Prepared::None, 0, &d, &mut out);
        assert_eq!(out, vec![2.0, 2.0, -2.0]);
    }

    /// RAM by hand: entry 0 nobody changes, 1 both (mean), 2 only the first
    /// (kept), 3 only the second but below epsilon (dropped), 4 only the
    /// second. RAM+ (r 0.1, alpha 0.2): the first model shares 1 entry and
    /// owns 1, ratio 1, capped at 0.2, boost 1.02; the second shares 1 and
    /// owns 1 (entry 4), the same boost.
    #[test]
    fn ram_by_hand() {
        let d: Vec<&[f32]> = vec![&[0.0, 2.0, 1.0, 0.0, 0.0], &[0.0, 4.0, 0.0, 1e-6, -3.0]];
        let src = Slices(&[d[0].to_vec(), d[1].to_vec()]);
        let info = TensorInfo { name: "x", shape: &[5] };
        let mut out = vec![0f32; 5];
        let ram = Kernel::Ram { epsilon: F::new(1e-5) };
        apply(&ram, &prepare(&ram, &src, &info).unwrap(), 0, &d, &mut out);
        assert_eq!(out, vec![0.0, 3.0, 1.0, 0.0, -3.0]);
        let plus = Kernel::RamPlusTl { r: F::new(0.1), alpha: F::new(0.2), epsilon: F::new(1e-5) };
        apply(&plus, &prepare(&plus, &src, &info).unwrap(), 0, &d, &mut out);
        assert_eq!(out, vec![0.0, 3.0, 1.02, 0.0, -3.0 * 1.02]);
        // Below the cap: r 1, alpha 5, so each boost is 1 + 1/1 = 2.
        let plus = Kernel::RamPlusTl { r: F::new(1.0), alpha: F::new(5.0), epsilon: F::new(1e-5) };
        apply(&plus, &prepare(&plus, &src, &info).unwrap(), 0, &d, &mut out);
        assert_eq!(out, vec![0.0, 3.0, 2.0, 0.0, -6.0]);
    }
}
