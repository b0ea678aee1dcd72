//! The dtype codec: little-endian tensor bytes to f32 and back. Every
//! computation runs in f32; inputs are widened as they are read and results
//! rounded (to nearest even) as they are written.

use super::DType;

/// Little-endian `dtype` bytes to f32.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
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
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
pub fn encode(vals: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    match dtype {
        DType::F32 => vals.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::BF16 => {
            // half's rounding (to nearest even; NaN stays NaN, made quiet),
            // in a loop that vectorizes.
            out.resize(vals.len() * 2, 0);
            for (o, v) in out.chunks_exact_mut(2).zip(vals) {
                let x = v.to_bits();
                let round = (x & 0x8000 != 0 && x & 0x17fff != 0) as u32;
                let b = if x & 0x7fff_ffff > 0x7f80_0000 { (x >> 16) | 0x40 } else { (x >> 16) + round };
                o.copy_from_slice(&(b as u16).to_le_bytes());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_halfs() {
        // Ties to even both ways, carries into the exponent, overflow to
        // infinity, subnormals, signed zeros, NaNs with payloads, and a
        // spread of bit patterns: every one as the `half` crate rounds it.
        let mut bits: Vec<u32> = vec![
            0,
            0x8000_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_8001,
            0x3f80_7fff,
            0x3fff_ffff,
            0x7f7f_ffff,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0xffc0_0000,
            0x7fff_ffff,
            0x0000_8000,
            0x0001_8000,
            0x807f_ffff,
        ];
        let mut z = 0x1234_5678_9abc_def0u64;
        for _ in 0..100_000 {
            z = z.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            bits.push((z >> 32) as u32);
        }
        let vals: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let ours = encode(&vals, DType::BF16);
        for (i, v) in vals.iter().enumerate() {
            let theirs = half::bf16::from_f32(*v).to_le_bytes();
            assert_eq!(ours[2 * i..2 * i + 2], theirs, "{:#010x}", bits[i]);
        }
    }
}
