//! The one seeded random generator: counter-based (splitmix64's finalizer
//! over a key and an index), so any element of a stream can be drawn on any
//! thread in any order and the result depends only on the seed, the tensor's
//! name and the stream. DARE/DELLA masks, random MoE routers and the
//! synthetic test models all draw from it.

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
    draw(key, i) as f64 / (1u64 << 53) as f64
}

/// Element `i` of a stream as a 53-bit integer: `uniform` is it over 2^53.
#[inline(always)]
pub fn draw(key: u64, i: u64) -> u64 {
    mix(key ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 11
}

/// `keep[j] = draw(key, start + j) < below` for each `j`: the random
/// keep-or-drop of DARE, a chunk at a time. Where the CPU has AVX-512's
/// 64-bit multiply the same integer arithmetic runs eight lanes wide (the
/// same results: nothing here rounds).
pub fn draws_below(key: u64, start: u64, below: u64, keep: &mut [bool]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512dq") && std::arch::is_x86_feature_detected!("avx512vl") {
        // SAFETY: the features the function is compiled for are present.
        unsafe { draws_below_avx512(key, start, below, keep) };
        return;
    }
    draws_below_generic(key, start, below, keep);
}

#[inline(always)]
fn draws_below_generic(key: u64, start: u64, below: u64, keep: &mut [bool]) {
    for (j, k) in keep.iter_mut().enumerate() {
        *k = draw(key, start + j as u64) < below;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn draws_below_avx512(key: u64, start: u64, below: u64, keep: &mut [bool]) {
    draws_below_generic(key, start, below, keep);
}

/// `out[j] = draw(key, start + j)` for each `j`, eight lanes wide where
/// AVX-512 has a 64-bit multiply (as `draws_below`).
pub fn draws(key: u64, start: u64, out: &mut [u64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512dq") && std::arch::is_x86_feature_detected!("avx512vl") {
        // SAFETY: the features the function is compiled for are present.
        unsafe { draws_avx512(key, start, out) };
        return;
    }
    draws_generic(key, start, out);
}

#[inline(always)]
fn draws_generic(key: u64, start: u64, out: &mut [u64]) {
    for (j, d) in out.iter_mut().enumerate() {
        *d = draw(key, start + j as u64);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn draws_avx512(key: u64, start: u64, out: &mut [u64]) {
    draws_generic(key, start, out);
}

/// The integer `t` with `draw(key, i) < t` exactly when `uniform(key, i) < p`:
/// the draw over 2^53 is exact, so comparing with `p 2^53` (also exact) is
/// the same test, and for an integer that is comparing with its ceiling.
/// NaN and negative `p` give 0 (never below).
pub fn threshold(p: f64) -> u64 {
    (p * (1u64 << 53) as f64).ceil() as u64
}

/// splitmix64's finalizer.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal number for element `i` of a stream (Box-Muller over
/// elements `2i` and `2i + 1` of the uniform stream).
pub fn normal(key: u64, i: u64) -> f64 {
    let (u, v) = (uniform(key, 2 * i), uniform(key, 2 * i + 1));
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_below_are_uniform_below_p() {
        // The integer test against the float one it replaces, at densities
        // that are and are not multiples of 2^-53, and the ends.
        let key = stream_key(5, "t", 2);
        for p in [0.0, 1e-300, 0.1, 0.3, 0.5, 0.5 + 2f64.powi(-53), 0.999_999_9, 1.0, 1.5, -0.2, f64::NAN] {
            let mut keep = vec![false; 5000];
            draws_below(key, 1000, threshold(p), &mut keep);
            for (j, k) in keep.iter().enumerate() {
                assert_eq!(*k, uniform(key, 1000 + j as u64) < p, "p = {p}, j = {j}");
            }
        }
        // Exactly at a draw: u < u is false, and the next float up keeps it.
        let u = uniform(key, 7);
        let mut keep = [false];
        draws_below(key, 7, threshold(u), &mut keep);
        assert!(!keep[0]);
        draws_below(key, 7, threshold(f64::from_bits(u.to_bits() + 1)), &mut keep);
        assert!(keep[0]);
    }

    #[test]
    fn draws_are_the_stream() {
        let key = stream_key(5, "t", 2);
        let mut out = vec![0u64; 1001];
        draws(key, 12345, &mut out);
        for (j, d) in out.iter().enumerate() {
            assert_eq!(*d, draw(key, 12345 + j as u64), "j = {j}");
        }
    }
}
