//! L1 sums of magnitudes for the rescales: `sum |x|` and `sum |x| * keep`
//! as f64 additions in index order, the same bits as that loop, but in
//! lanes where the order provably does not matter.
//!
//! If every term (and the running sum it starts from) is an integer
//! multiple of `2^L` and their total is below `2^(L + 53)`, every partial
//! sum of any subset of them is a double, so each addition is exact and any
//! grouping gives the same value as the sequential chain. A block is
//! checked for that first (integer operations in a loop that vectorizes:
//! the largest magnitude bounds the total, the lowest set bit gives `L`);
//! blocks that fail it (NaN, infinities, or magnitudes too far apart, as in
//! f32 checkpoints) take the sequential loop.

/// Entries checked and summed at a time: small enough for the stack.
pub const BLOCK: usize = 4096;

/// `(a, b)` plus `|x[i]| as f64` to `a` and, where `keep[i]`, to `b` (+0
/// where not, which leaves a sum of non-negative terms as it is), in index
/// order: bit for bit what
/// `for i { a += |x[i]|; b += if keep[i] { |x[i]| } else { 0.0 } }` gives.
pub fn add(x: &[f32], keep: &[bool], mut acc: (f64, f64)) -> (f64, f64) {
    assert_eq!(x.len(), keep.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        for (x, keep) in x.chunks(BLOCK).zip(keep.chunks(BLOCK)) {
            // SAFETY: the features the functions are compiled for are present.
            acc = unsafe {
                if exact_avx512(x, acc) {
                    lanes_avx512(x, keep, acc)
                } else {
                    sequential(x, keep, acc)
                }
            };
        }
        return acc;
    }
    sequential(x, keep, acc)
}

/// The chain itself.
#[inline(always)]
pub fn sequential(x: &[f32], keep: &[bool], (mut a, mut b): (f64, f64)) -> (f64, f64) {
    for (v, &k) in x.iter().zip(keep) {
        let m = v.abs() as f64;
        a += m;
        // +0 for a dropped entry, without a branch (a random keep
        // mispredicts).
        b += f64::from_bits(m.to_bits() & 0u64.wrapping_sub(k as u64));
    }
    (a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn exact_avx512(x: &[f32], acc: (f64, f64)) -> bool {
    exact(x, acc)
}

/// Four registers of eight partial sums each, added together at the end:
/// the same value as the chain when `exact` holds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn lanes_avx512(x: &[f32], keep: &[bool], (a, b): (f64, f64)) -> (f64, f64) {
    use std::arch::x86_64::*;
    let whole = x.len() / 32 * 32;
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let (mut sa, mut sb) = ([_mm512_setzero_pd(); 4], [_mm512_setzero_pd(); 4]);
    for i in (0..whole).step_by(32) {
        // SAFETY: `i + 32 <= whole <= x.len() == keep.len()`, and a bool
        // is one byte.
        let kept = unsafe { _mm256_loadu_si256(keep.as_ptr().add(i) as *const __m256i) };
        let mask = _mm256_test_epi8_mask(kept, kept);
        for u in 0..4 {
            // SAFETY: as above.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i + 8 * u)) };
            let m = _mm512_cvtps_pd(_mm256_and_ps(v, abs));
            sa[u] = _mm512_add_pd(sa[u], m);
            sb[u] = _mm512_mask_add_pd(sb[u], (mask >> (8 * u)) as u8, sb[u], m);
        }
    }
    let total = |s: [__m512d; 4]| {
        let mut lanes = [0f64; 32];
        for (u, r) in s.iter().enumerate() {
            // SAFETY: eight doubles into eight of `lanes`.
            unsafe { _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * u), *r) };
        }
        lanes.iter().sum::<f64>()
    };
    let (ra, rb) = sequential(&x[whole..], &keep[whole..], (0.0, 0.0));
    (a + total(sa) + ra, b + total(sb) + rb)
}

/// Whether every addition of `x`'s magnitudes onto the running sums `acc`
/// is exact, whatever their grouping: all finite, all (with `acc`)
/// multiples of `2^L`, and `acc.0 + sum |x| < 2^(L + 53)` (`acc.1` is at
/// most `acc.0` plus the same terms, and is checked alike).
#[inline(always)]
pub fn exact(x: &[f32], acc: (f64, f64)) -> bool {
    let (max, low) = span_generic(x);
    if max >= 0x7f80_0000 || !acc.0.is_finite() || !acc.1.is_finite() {
        return false;
    }
    if low == u32::MAX {
        // All zeros: adding +0 leaves the sums as they are, in any order.
        return true;
    }
    // The running sums' own lowest set bits count too: `L` is the lowest
    // of all.
    let parts = |s: f64| {
        // `s` (positive) as a multiple of its lowest set bit, and below
        // 2^(its exponent + 1).
        let bits = s.to_bits();
        let e = (bits >> 52) as i32;
        let sig = (bits & ((1 << 52) - 1)) | ((e > 0) as u64) << 52;
        (e.max(1) - 1075 + sig.trailing_zeros() as i32, e.max(1) - 1022)
    };
    let mut l = low as i32 - 277;
    for s in [acc.0, acc.1] {
        if s != 0.0 {
            l = l.min(parts(s).0);
        }
    }
    // Each magnitude is below 2^(max(e, 1) - 126), so their sum is below
    // 2^(that + ceil(log2 len)); with a running sum, the total is below
    // 2^(the larger of the two + 1).
    let terms = ((max >> 23).max(1) as i32 - 126) + x.len().next_power_of_two().trailing_zeros() as i32;
    [acc.0, acc.1].iter().all(|&s| {
        let top = if s == 0.0 { terms } else { terms.max(parts(s).1) + 1 };
        s >= 0.0 && top <= l + 53
    })
}

/// The largest magnitude bits of `x`, and the smallest
/// `max(e, 1) + 127 + tz(significand)` of its non-zero entries (`u32::MAX`
/// when there are none): their lowest set bits are at least
/// `2^(that - 277)`.
pub fn span(x: &[f32]) -> (u32, u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the features the function is compiled for are present.
        return unsafe { span_avx512(x) };
    }
    span_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw")]
unsafe fn span_avx512(x: &[f32]) -> (u32, u32) {
    span_generic(x)
}

#[inline(always)]
fn span_generic(x: &[f32]) -> (u32, u32) {
    // With `a` the magnitude bits and `e` the biased exponent. The
    // trailing zeros come from the exponent of the isolated lowest bit as
    // an f32 (exact: at most 2^23), which vectorizes where `trailing_zeros`
    // may not.
    let (mut max, mut low) = (0u32, u32::MAX);
    for v in x {
        let a = v.to_bits() & 0x7fff_ffff;
        let e = a >> 23;
        let sig = (a & 0x7f_ffff) | ((e > 0) as u32) << 23;
        let iso = sig & sig.wrapping_neg();
        let key = e.max(1) + ((iso as f32).to_bits() >> 23);
        max = max.max(a);
        low = low.min(if a == 0 { u32::MAX } else { key });
    }
    (max, low)
}

/// Whether the L1 sums of `len` magnitudes with `span` (over all of them)
/// are exact from zero in any grouping: then sums of parts, each summed
/// in any way, added in any order, give the chain's bits.
pub fn exact_from_zero(len: usize, (max, low): (u32, u32)) -> bool {
    if max >= 0x7f80_0000 {
        return false;
    }
    if low == u32::MAX {
        return true;
    }
    let terms = ((max >> 23).max(1) as i32 - 126) + len.next_power_of_two().trailing_zeros() as i32;
    terms <= low as i32 - 277 + 53
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: (f64, f64), b: (f64, f64)) -> bool {
        a.0.to_bits() == b.0.to_bits() && a.1.to_bits() == b.1.to_bits()
    }

    /// The loop the rescales ran before, with a branch.
    fn reference(x: &[f32], keep: &[bool], (mut a, mut b): (f64, f64)) -> (f64, f64) {
        for (v, &k) in x.iter().zip(keep) {
            a += v.abs() as f64;
            if k {
                b += v.abs() as f64;
            }
        }
        (a, b)
    }

    #[test]
    fn lanes_give_the_chains_bits() {
        let n = 3 * BLOCK + 77;
        let keep: Vec<bool> = (0..n).map(|i| (i * 2654435761usize) % 7 < 3).collect();
        // bf16-like task vectors (few significant bits: the fast path), f32
        // noise spanning many binades (the chain), and the odd values.
        let coarse: Vec<f32> = (0..n).map(|i| ((i * 7919 % 251) as f32 - 125.0) * 2f32.powi(-12)).collect();
        let wide: Vec<f32> = (0..n).map(|i| (i as f32 * 0.618).sin() * 10f32.powi(i as i32 % 13 - 8)).collect();
        let tiny: Vec<f32> = (0..n).map(|i| f32::from_bits(i as u32 % 300)).collect();
        let mut odd = coarse.clone();
        odd[5] = -0.0;
        odd[BLOCK + 3] = f32::INFINITY;
        odd[2 * BLOCK + 9] = -f32::NAN;
        let mut neg_inf = coarse.clone();
        neg_inf[BLOCK - 1] = f32::NEG_INFINITY;
        let zeros = vec![-0.0f32; n];
        let big: Vec<f32> = (0..n).map(|i| f32::MAX / (1 + i % 3) as f32).collect();
        // One large entry among small ones: exact in one block only if the
        // small ones are multiples of its lowest bit's neighbourhood.
        let mut spike = coarse.clone();
        spike[BLOCK + 100] = 3.0e9;
        let mut fast = 0;
        for (name, x) in [
            ("coarse", &coarse),
            ("wide", &wide),
            ("tiny", &tiny),
            ("odd", &odd),
            ("neg_inf", &neg_inf),
            ("zeros", &zeros),
            ("big", &big),
            ("spike", &spike),
        ] {
            for acc in [(0.0, 0.0), (1.0, 0.5), (3.0e-3, 1.5e-3), (1.0e12, 2.0), (0.1, 0.0), (f64::NAN, 1.0)] {
                for len in [0, 1, 15, 17, BLOCK, n] {
                    let (x, k) = (&x[..len], &keep[..len]);
                    let ours = add(x, k, acc);
                    let theirs = reference(x, k, acc);
                    assert!(
                        same(ours, theirs) || (ours.0.is_nan() && theirs.0.is_nan()),
                        "{name}, acc {acc:?}, len {len}: {ours:?} != {theirs:?}"
                    );
                    fast += x.chunks(BLOCK).all(|b| exact(b, acc)) as usize;
                }
            }
        }
        assert!(fast > 20, "the lanes ran only {fast} times");
    }

    #[test]
    fn random_blocks_give_the_chains_bits() {
        // Values with few significant bits over a varying span of binades,
        // so that the check passes and fails near its edge, onto running
        // sums of all sizes.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 11
        };
        let mut paths = [0, 0];
        for trial in 0..400 {
            let len = [1, 31, 32, 33, 1000, BLOCK, 2 * BLOCK + 5][trial % 7];
            let span = (next() % 40) as i32;
            let bits = 1 + next() % 24;
            let x: Vec<f32> = (0..len)
                .map(|_| {
                    let sig = (next() % (1 << bits)) as f32;
                    let v = sig * 2f32.powi(-((next() % (span as u64 + 1)) as i32) - 20);
                    if next() % 2 == 0 {
                        v
                    } else {
                        -v
                    }
                })
                .collect();
            let keep: Vec<bool> = (0..len).map(|_| next() % 3 == 0).collect();
            let a = (next() % (1 << 40)) as f64 * 2f64.powi(-((next() % 80) as i32));
            let acc = [(0.0, 0.0), (a, a / 4.0)][trial % 2];
            let (ours, theirs) = (add(&x, &keep, acc), reference(&x, &keep, acc));
            assert!(same(ours, theirs), "trial {trial}: {ours:?} != {theirs:?}");
            paths[exact(&x[..len.min(BLOCK)], acc) as usize] += 1;
        }
        assert!(paths[0] > 50 && paths[1] > 50, "{paths:?}");
    }

    #[test]
    fn exactness_is_checked_at_the_edge() {
        // 2^53 + 1 is not a double: ones onto 2^53 - 1 stop being exact.
        let acc = ((1u64 << 53) as f64 - 1.0, 0.0);
        assert!(exact(&[1.0], ((1u64 << 51) as f64, 0.0)));
        assert!(!exact(&[1.0, 1.0], acc));
        let x = [1.0f32, 1.0];
        assert!(same(add(&x, &[true, true], acc), reference(&x, &[true, true], acc)));
        // Terms a lowest bit apart that the total's precision cannot hold.
        assert!(!exact(&[1.0e9, 2f32.powi(-40)], (0.0, 0.0)));
        assert!(exact(&[1.0, 2f32.powi(-40)], (0.0, 0.0)));
        // A running sum with bits below the terms' lowest.
        assert!(!exact(&[1.0e9], (2f64.powi(-30), 0.0)));
        // Subnormal terms.
        assert!(exact(&[f32::from_bits(1), f32::from_bits(3)], (0.0, 0.0)));
        assert!(!exact(&[f32::from_bits(1), 1.0], (0.0, 0.0)));
    }
}
