//! The dtype codec: little-endian tensor bytes to f32 and back. Every
//! computation runs in f32; inputs are widened as they are read and results
//! rounded (to nearest even) as they are written.

use super::DType;

/// Little-endian `dtype` bytes to f32.
pub fn decode(bytes: &[u8], dtype: DType, out: &mut [f32]) -> Result<(), String> {
    match dtype {
        DType::F32 => out
            .iter_mut()
            .zip(bytes.chunks_exact(4))
            .for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::BF16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        DType::F16 => out
            .iter_mut()
            .zip(bytes.chunks_exact(2))
            .for_each(|(o, b)| *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::F64 => out
            .iter_mut()
            .zip(bytes.chunks_exact(8))
            .for_each(|(o, b)| *o = f64::from_le_bytes(b.try_into().unwrap()) as f32),
        other => return Err(format!("{other} tensors cannot be merged")),
    }
    Ok(())
}

/// f32 values to little-endian bytes of `dtype` (round to nearest even).
pub fn encode(vals: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    match dtype {
        DType::F32 => vals.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::BF16 => vals.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        DType::F16 => vals.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::F64 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        DType::I64 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i64).to_le_bytes())),
        DType::I32 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i32).to_le_bytes())),
        DType::I16 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i16).to_le_bytes())),
        DType::I8 => vals.iter().for_each(|v| out.push(*v as i8 as u8)),
        DType::U8 | DType::Bool => vals.iter().for_each(|v| out.push(*v as u8)),
    }
    out
}
