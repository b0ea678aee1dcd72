//! The kernels on f32 data. Loads and linear combinations go through
//! candle-core tensors (the candle engine); the native merge kernels work on
//! flat slices, shared by both engines: `sparsify.rs` (trimming and
//! dropping), `combine.rs` (sign consensus and the base-relative methods),
//! `sphere.rs` (the spherical interpolations).

mod combine;
mod sparsify;
mod sphere;

pub use sparsify::kth_largest_magnitude;

use crate::graph::{Kernel, F};
use crate::io::DType;
use candle_core::{Device, Tensor};

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

/// What a whole-tensor kernel knows about the tensor it computes.
pub struct TensorInfo<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
}

/// Runs a kernel on whole input tensors.
pub fn whole(kernel: &Kernel<F>, mut inputs: Vec<Vec<f32>>, t: &TensorInfo) -> std::result::Result<Vec<f32>, String> {
    if kernel.is_elementwise() {
        let n = inputs.first().map_or(0, Vec::len);
        let mut out = vec![0f32; n];
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        chunk(kernel, &refs, &mut out);
        return Ok(out);
    }
    Ok(match kernel {
        Kernel::Sparsify { how, rescale, seed, stream } => {
            let mut x = inputs.pop().ok_or("sparsify takes one input")?;
            sparsify::apply(&mut x, how, *rescale, sparsify::stream_key(*seed, t.name, *stream), t.shape)?;
            x
        }
        Kernel::Slerp { t: s } => sphere::slerp(&inputs[0], &inputs[1], s.get()),
        Kernel::NuSlerp { t: s, flatten, row_wise } => {
            sphere::nuslerp(&inputs[0], &inputs[1], s.get(), *flatten, *row_wise, t.shape)
        }
        Kernel::MultiSlerp { weights, eps } => sphere::multislerp(&inputs, &get(weights), eps.get()),
        Kernel::Karcher { max_iter, tol } => sphere::karcher(&inputs, *max_iter as usize, tol.get()),
        Kernel::ModelStock { filter_wise } => combine::model_stock(&inputs[0], &inputs[1..], *filter_wise, t.shape),
        Kernel::ArceeFusion => combine::arcee_fusion(&inputs[0], &inputs[1], t.shape),
        Kernel::Sce { select_topk } => combine::sce(&inputs, select_topk.get()),
        Kernel::Consensus { .. } | Kernel::NearSwap { .. } => unreachable!("elementwise"),
    })
}

/// Runs an elementwise kernel on one chunk of its inputs.
pub fn chunk(kernel: &Kernel<F>, inputs: &[&[f32]], out: &mut [f32]) {
    match kernel {
        Kernel::Consensus { weights, elect_sign, normalize } => {
            combine::consensus(inputs, &get(weights), *elect_sign, *normalize, out)
        }
        Kernel::NearSwap { t } => combine::nearswap(inputs[0], inputs[1], t.get(), out),
        other => unreachable!("{other:?} is not elementwise"),
    }
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

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn norm(a: &[f32]) -> f64 {
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
        chunk(&k, &d, &mut out);
        assert_eq!(out, vec![2.0, 2.0, -2.0]);
    }
}
