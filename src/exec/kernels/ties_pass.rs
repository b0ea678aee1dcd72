//! TIES's (and Breadcrumbs') one-read pass over a bf16 chunk in one loop.
//!
//! The one read (`stream/one_read.rs`) needs, per chunk: each trim's keys
//! counted above its interval and the entries inside some interval marked,
//! and the output written as if every trim kept the keys above its
//! interval (a Breadcrumbs window: between its two intervals, one per
//! end). For the shape TIES merges almost always have (bf16 fine-tunes
//! and base, task vectors `ft c0 + base c1`, a consensus of their trims,
//! the output a linear combination of the consensus and a leaf, written as
//! bf16), this does all of it with each entry's values in registers: the
//! inputs are read as stored (no f32 copy), the task vectors are made once,
//! and the output is rounded to bf16 as it is made.
//!
//! Every entry goes through the operations, in the order, that the separate
//! kernels do (`io::codec`'s decode and encode, the linear combinations,
//! `combine::consensus_of_trims`); no multiply-add is fused. The keys
//! strictly inside an interval are not collected here: they are all marked,
//! and the one read takes them from the marked entries it keeps anyway.

/// A term of the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Term {
    /// The values of leaf `l`.
    Leaf(usize),
    /// The consensus of the trims.
    Consensus,
}

/// One TIES output over `N` task vectors; leaves are indices into the
/// chunk's bf16 inputs.
#[derive(Clone, Debug)]
pub struct TiesPass<const N: usize> {
    /// Task vector `j` is `leaf a[j] * c0[j] + leaf b[j] * c1[j]`.
    pub a: [usize; N],
    pub c0: [f32; N],
    pub b: [usize; N],
    pub c1: [f32; N],
    /// Trim `j`'s interval of magnitude keys `[lo, hi]`: its keys above `hi`
    /// are kept for now, the others dropped.
    pub lo: [u32; N],
    pub hi: [u32; N],
    /// For windows (Breadcrumbs), each one's upper end's interval: the keys
    /// above `hi` and below this interval are kept for now.
    pub upper: Option<[(u32, u32); N]>,
    /// The consensus.
    pub w: [f32; N],
    pub elect_sign: bool,
    pub normalize: bool,
    /// The output: `t0 r0 + t1 r1`, in this order.
    pub root: [(Term, f32); 2],
}

/// What a chunk's pass found besides its output and marks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PassCounts<const N: usize> {
    /// Per trim, keys above `hi`; for windows, also above the upper
    /// interval.
    pub above: [usize; N],
    pub above_upper: [usize; N],
    /// Whether some task vector entry is NaN or infinite (the one read then
    /// leaves the tensor to the plain passes).
    pub non_finite: bool,
}

impl<const N: usize> TiesPass<N> {
    /// Whether [`TiesPass::run`] runs sixteen entries a step here (AVX-512);
    /// else it goes an entry at a time.
    pub fn vectorized() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// The pass over one chunk: `leaves[l]` holds leaf `l`'s bf16 bits,
    /// `out` receives the output's bf16 bits, and bit `i % 16` of
    /// `marks[i / 16]` is set for each entry `i` whose key lies inside some
    /// trim's interval (`marks` cleared by the caller).
    pub fn run(&self, leaves: &[&[u16]], marks: &mut [u16], out: &mut [u16]) -> PassCounts<N> {
        let len = out.len();
        assert!(leaves.len() <= MAX_LEAVES, "at most {MAX_LEAVES} leaves");
        assert!(leaves.iter().all(|l| l.len() >= len), "every leaf covers the chunk");
        assert!(marks.len() >= len.div_ceil(16), "a mark word for every sixteen entries");
        let used = self.a.iter().chain(&self.b).chain(self.root.iter().filter_map(|(t, _)| match t {
            Term::Leaf(l) => Some(l),
            Term::Consensus => None,
        }));
        assert!(used.into_iter().all(|&l| l < leaves.len()), "every leaf named is given");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature the function is compiled for is present,
            // and the lengths were checked above.
            return unsafe {
                match (self.plain_ties(), self.upper.is_some()) {
                    (Some(base), false) => self.run_plain_avx512::<false>(leaves, base, marks, out),
                    (Some(base), true) => self.run_plain_avx512::<true>(leaves, base, marks, out),
                    (None, false) => self.run_avx512::<false>(leaves, marks, out),
                    (None, true) => self.run_avx512::<true>(leaves, marks, out),
                }
            };
        }
        let mut counts = PassCounts { above: [0; N], above_upper: [0; N], non_finite: false };
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.entry(leaves, i, &mut counts, &mut marks[i / 16], i % 16);
        }
        counts
    }

    /// Entry `i`, one at a time: the reference the vector loop matches
    /// (and the rest of a chunk after its whole steps of sixteen).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `j` indexes every per-trim array
    fn entry(&self, leaves: &[&[u16]], i: usize, counts: &mut PassCounts<N>, mark: &mut u16, bit: usize) -> u16 {
        let v = |l: usize| f32::from_bits((leaves[l][i] as u32) << 16);
        let mut t = [0f32; N];
        for j in 0..N {
            let x = v(self.a[j]) * self.c0[j] + v(self.b[j]) * self.c1[j];
            let key = x.to_bits() & 0x7fff_ffff;
            counts.above[j] += (key > self.hi[j]) as usize;
            counts.non_finite |= key >= 0x7f80_0000;
            *mark |= ((key >= self.lo[j] && key <= self.hi[j]) as u16) << bit;
            let mut kept = key > self.hi[j];
            if let Some(upper) = &self.upper {
                let (lo, hi) = upper[j];
                counts.above_upper[j] += (key > hi) as usize;
                *mark |= ((key >= lo && key <= hi) as u16) << bit;
                kept &= key < lo;
            }
            t[j] = if kept { x } else { 0.0 };
        }
        let cons = if self.elect_sign {
            let mut sum = 0f32;
            for j in 0..N {
                sum += t[j] * self.w[j];
            }
            let (mut mixed, mut divisor) = (0f32, 0f32);
            for j in 0..N {
                let wd = t[j] * self.w[j];
                let agrees = if sum >= 0.0 { wd > 0.0 } else { wd < 0.0 };
                mixed += if agrees { wd } else { 0.0 };
                divisor += if agrees { self.w[j] } else { 0.0 };
            }
            match (self.normalize, divisor == 0.0) {
                (false, _) => mixed,
                (true, true) => mixed / 1.0,
                (true, false) => mixed / divisor,
            }
        } else {
            let mut mixed = 0f32;
            for j in 0..N {
                mixed += t[j] * self.w[j];
            }
            match self.normalize {
                true => mixed / self.plain_divisor(),
                false => mixed,
            }
        };
        let term = |(t, c): (Term, f32)| {
            c * match t {
                Term::Leaf(l) => v(l),
                Term::Consensus => cons,
            }
        };
        let y = term(self.root[0]) + term(self.root[1]);
        to_bf16(y)
    }

    /// The divisor of a consensus without sign election: the summed weights,
    /// 1 when they cancel.
    fn plain_divisor(&self) -> f32 {
        let mut d = 0f32;
        for w in self.w {
            d += w;
        }
        if d.abs() < 1e-8 {
            1.0
        } else {
            d
        }
    }

    /// When this is TIES (or Breadcrumbs-TIES) as merges write it most
    /// (task vectors `ft - base` of one base, unit weights, sign election,
    /// the output `base + consensus`): the base's leaf.
    fn plain_ties(&self) -> Option<usize> {
        let base = self.b[0];
        let unit = self.c0.iter().all(|&c| c == 1.0)
            && self.c1.iter().all(|&c| c == -1.0)
            && self.w.iter().all(|&w| w == 1.0)
            && self.b.iter().all(|&b| b == base)
            && self.elect_sign
            && self.root.iter().all(|&(_, c)| c == 1.0)
            && self.root.iter().any(|&(t, _)| t == Term::Leaf(base))
            && self.root.iter().any(|&(t, _)| t == Term::Consensus);
        unit.then_some(base)
    }

    /// [`TiesPass::run_avx512`] for [`TiesPass::plain_ties`], with what the
    /// unit coefficients make exact left out, so the same bits:
    /// - `ft 1 + base (-1)` is `ft - base`;
    /// - a trimmed entry times 1 is itself; the sums of kept entries (all
    ///   nonzero) are never -0, so adding +0 for a dropped one changes
    ///   nothing, and a masked add is the same;
    /// - a kept entry agrees with the sum's sign exactly when their sign
    ///   bits match (the sum is never -0), and the summed unit weights of
    ///   the agreeing entries are their count;
    /// - `base 1 + consensus 1` is `base + consensus`, in either order.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_plain_avx512<const W: bool>(
        &self,
        leaves: &[&[u16]],
        base: usize,
        marks: &mut [u16],
        out: &mut [u16],
    ) -> PassCounts<N> {
        use std::arch::x86_64::*;
        let len = out.len();
        let steps = len / 16;
        let ft: [*const u16; N] = std::array::from_fn(|j| leaves[self.a[j]].as_ptr());
        let b = leaves[base].as_ptr();
        let zero = _mm512_setzero_ps();
        let one = _mm512_set1_ps(1.0);
        let sign = _mm512_set1_epi32(i32::MIN);
        let widen = |p: *const u16| {
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())), 16))
        };
        let mut lanes = Lanes::new(self);
        for i in 0..steps {
            let vb = widen(b.add(16 * i));
            let mut x = [zero; N];
            let mut kept: [__mmask16; N] = [0; N];
            let mut mark: __mmask16 = 0;
            for j in 0..N {
                x[j] = _mm512_sub_ps(widen(ft[j].add(16 * i)), vb);
                kept[j] = lanes.scan::<W>(j, x[j], &mut mark);
            }
            *marks.get_unchecked_mut(i) |= mark;
            let mut sum = _mm512_maskz_mov_ps(kept[0], x[0]);
            for j in 1..N {
                sum = _mm512_mask_add_ps(sum, kept[j], sum, x[j]);
            }
            let sum_sign = _mm512_castps_si512(sum);
            let (mut mixed, mut count) = (zero, zero);
            for j in 0..N {
                let same = _mm512_xor_si512(_mm512_castps_si512(x[j]), sum_sign);
                let agrees = _mm512_mask_testn_epi32_mask(kept[j], same, sign);
                mixed = _mm512_mask_add_ps(mixed, agrees, mixed, x[j]);
                count = _mm512_mask_add_ps(count, agrees, count, one);
            }
            let cons = match self.normalize {
                true => {
                    let none = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(count, zero);
                    _mm512_div_ps(mixed, _mm512_mask_mov_ps(count, none, one))
                }
                false => mixed,
            };
            let y = _mm512_castps_si512(_mm512_add_ps(vb, cons));
            _mm256_storeu_si256(out.as_mut_ptr().add(16 * i).cast(), bf16_x16(y));
        }
        self.finish(&lanes, 16 * steps, leaves, marks, out)
    }

    /// The counts of the vector loop's lanes, and the entries from `from`
    /// (the rest after its whole steps) one at a time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish(
        &self,
        lanes: &Lanes<N>,
        from: usize,
        leaves: &[&[u16]],
        marks: &mut [u16],
        out: &mut [u16],
    ) -> PassCounts<N> {
        use std::arch::x86_64::*;
        let mut counts = PassCounts {
            above: std::array::from_fn(|j| _mm512_reduce_add_epi32(lanes.above[j]) as u32 as usize),
            above_upper: std::array::from_fn(|j| _mm512_reduce_add_epi32(lanes.above_upper[j]) as u32 as usize),
            non_finite: _mm512_reduce_max_epu32(lanes.max_key) >= 0x7f80_0000,
        };
        for i in from..out.len() {
            out[i] = self.entry(leaves, i, &mut counts, &mut marks[i / 16], i % 16);
        }
        counts
    }

    /// [`TiesPass::run`] sixteen entries a step.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512<const W: bool>(&self, leaves: &[&[u16]], marks: &mut [u16], out: &mut [u16]) -> PassCounts<N> {
        use std::arch::x86_64::*;
        let len = out.len();
        let steps = len / 16;
        let nl = leaves.len();
        let ptr: [*const u16; MAX_LEAVES] =
            std::array::from_fn(|l| leaves.get(l).map_or(std::ptr::null(), |s| s.as_ptr()));
        let zero = _mm512_setzero_ps();
        let c0: [__m512; N] = std::array::from_fn(|j| _mm512_set1_ps(self.c0[j]));
        let c1: [__m512; N] = std::array::from_fn(|j| _mm512_set1_ps(self.c1[j]));
        let w: [__m512; N] = std::array::from_fn(|j| _mm512_set1_ps(self.w[j]));
        let divisor = _mm512_set1_ps(self.plain_divisor());
        let r: [__m512; 2] = std::array::from_fn(|k| _mm512_set1_ps(self.root[k].1));
        let mut lanes = Lanes::new(self);
        for i in 0..steps {
            // Each leaf's sixteen bf16 values widened to f32 (the high half).
            let mut v = [zero; MAX_LEAVES];
            for l in 0..nl {
                let h = _mm256_loadu_si256(ptr[l].add(16 * i).cast());
                v[l] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            }
            let mut t = [zero; N];
            let mut mark: __mmask16 = 0;
            for j in 0..N {
                let x = _mm512_add_ps(_mm512_mul_ps(v[self.a[j]], c0[j]), _mm512_mul_ps(v[self.b[j]], c1[j]));
                t[j] = _mm512_maskz_mov_ps(lanes.scan::<W>(j, x, &mut mark), x);
            }
            *marks.get_unchecked_mut(i) |= mark;
            let cons = if self.elect_sign {
                let mut sum = zero;
                for j in 0..N {
                    sum = _mm512_add_ps(sum, _mm512_mul_ps(t[j], w[j]));
                }
                let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(sum, zero);
                let (mut mixed, mut div) = (zero, zero);
                for j in 0..N {
                    let wd = _mm512_mul_ps(t[j], w[j]);
                    let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(wd, zero);
                    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(wd, zero);
                    let agrees = (positive & gt) | (!positive & lt);
                    mixed = _mm512_add_ps(mixed, _mm512_maskz_mov_ps(agrees, wd));
                    div = _mm512_add_ps(div, _mm512_maskz_mov_ps(agrees, w[j]));
                }
                match self.normalize {
                    // A zero divisor divides by 1.
                    true => {
                        let none = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(div, zero);
                        _mm512_div_ps(mixed, _mm512_mask_mov_ps(div, none, _mm512_set1_ps(1.0)))
                    }
                    false => mixed,
                }
            } else {
                let mut mixed = zero;
                for j in 0..N {
                    mixed = _mm512_add_ps(mixed, _mm512_mul_ps(t[j], w[j]));
                }
                match self.normalize {
                    true => _mm512_div_ps(mixed, divisor),
                    false => mixed,
                }
            };
            let term = |k: usize| {
                let x = match self.root[k].0 {
                    Term::Leaf(l) => v[l],
                    Term::Consensus => cons,
                };
                _mm512_mul_ps(r[k], x)
            };
            let y = _mm512_castps_si512(_mm512_add_ps(term(0), term(1)));
            _mm256_storeu_si256(out.as_mut_ptr().add(16 * i).cast(), bf16_x16(y));
        }
        self.finish(&lanes, 16 * steps, leaves, marks, out)
    }
}

/// The trims' intervals and the counts of the vector loops, a lane per
/// entry of a step.
#[cfg(target_arch = "x86_64")]
struct Lanes<const N: usize> {
    lo: [std::arch::x86_64::__m512i; N],
    hi: [std::arch::x86_64::__m512i; N],
    up_lo: [std::arch::x86_64::__m512i; N],
    up_hi: [std::arch::x86_64::__m512i; N],
    above: [std::arch::x86_64::__m512i; N],
    above_upper: [std::arch::x86_64::__m512i; N],
    max_key: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl<const N: usize> Lanes<N> {
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn new(p: &TiesPass<N>) -> Lanes<N> {
        use std::arch::x86_64::*;
        let upper = p.upper.unwrap_or([(0, 0); N]);
        let splat = |k: u32| _mm512_set1_epi32(k as i32);
        Lanes {
            lo: std::array::from_fn(|j| splat(p.lo[j])),
            hi: std::array::from_fn(|j| splat(p.hi[j])),
            up_lo: std::array::from_fn(|j| splat(upper[j].0)),
            up_hi: std::array::from_fn(|j| splat(upper[j].1)),
            above: [_mm512_setzero_si512(); N],
            above_upper: [_mm512_setzero_si512(); N],
            max_key: _mm512_setzero_si512(),
        }
    }

    /// Task vector `j`'s sixteen values `x`: their keys counted above each
    /// interval, the lanes inside one marked in `mark`; returns the lanes
    /// kept for now (above `hi`, and for windows below the upper interval).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn scan<const W: bool>(
        &mut self,
        j: usize,
        x: std::arch::x86_64::__m512,
        mark: &mut std::arch::x86_64::__mmask16,
    ) -> std::arch::x86_64::__mmask16 {
        use std::arch::x86_64::*;
        let one = _mm512_set1_epi32(1);
        let key = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fff_ffff));
        let mut kept = _mm512_cmpgt_epu32_mask(key, self.hi[j]);
        self.above[j] = _mm512_mask_add_epi32(self.above[j], kept, self.above[j], one);
        self.max_key = _mm512_max_epu32(self.max_key, key);
        *mark |= _mm512_mask_cmple_epu32_mask(_mm512_cmpge_epu32_mask(key, self.lo[j]), key, self.hi[j]);
        if W {
            let over = _mm512_cmpgt_epu32_mask(key, self.up_hi[j]);
            self.above_upper[j] = _mm512_mask_add_epi32(self.above_upper[j], over, self.above_upper[j], one);
            let from = _mm512_cmpge_epu32_mask(key, self.up_lo[j]);
            *mark |= from & !over;
            kept &= !from;
        }
        kept
    }
}

/// Sixteen f32 values (as bits) rounded to bf16 as `io::codec::encode`
/// rounds them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn bf16_x16(y: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let high = _mm512_srli_epi32(y, 16);
    let round =
        _mm512_test_epi32_mask(y, _mm512_set1_epi32(0x8000)) & _mm512_test_epi32_mask(y, _mm512_set1_epi32(0x17fff));
    let rounded = _mm512_mask_add_epi32(high, round, high, _mm512_set1_epi32(1));
    let nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(y, _mm512_set1_epi32(0x7fff_ffff)), _mm512_set1_epi32(0x7f80_0000));
    _mm512_cvtepi32_epi16(_mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40)))
}

/// Leaves a pass reads at most.
pub const MAX_LEAVES: usize = 8;

/// `io::codec::encode`'s bf16 rounding of one value.
#[inline(always)]
fn to_bf16(v: f32) -> u16 {
    let x = v.to_bits();
    let round = (x & 0x8000 != 0 && x & 0x17fff != 0) as u32;
    let b = if x & 0x7fff_ffff > 0x7f80_0000 { (x >> 16) | 0x40 } else { (x >> 16) + round };
    b as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::kernels::{consensus_of_trims, Trim};
    use crate::io::{codec, DType};

    /// bf16 values with many ties, both signs, zeros and a few large ones.
    fn leaf(n: usize, seed: u64) -> Vec<u16> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = match s % 23 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => 3.0e38,
                    _ => ((s >> 8) % 61) as f32 / 64.0 - 0.45,
                };
                (v.to_bits() >> 16) as u16
            })
            .collect()
    }

    /// The separate kernels: decode, the task vectors, the trims of the
    /// provisional thresholds, the consensus, the output, encode.
    fn separately<const N: usize>(
        p: &TiesPass<N>,
        leaves: &[Vec<u16>],
        len: usize,
    ) -> (Vec<u16>, Vec<u16>, [usize; N], [usize; N]) {
        let f: Vec<Vec<f32>> = leaves
            .iter()
            .map(|l| {
                let bytes: Vec<u8> = l[..len].iter().flat_map(|h| h.to_le_bytes()).collect();
                let mut v = vec![0f32; len];
                codec::decode(&bytes, DType::BF16, &mut v).unwrap();
                v
            })
            .collect();
        let tv: Vec<Vec<f32>> =
            (0..N).map(|j| (0..len).map(|i| f[p.a[j]][i] * p.c0[j] + f[p.b[j]][i] * p.c1[j]).collect()).collect();
        let mut marks = vec![0u16; len.div_ceil(16)];
        let (mut above, mut above_upper) = ([0usize; N], [0usize; N]);
        for j in 0..N {
            for (i, x) in tv[j].iter().enumerate() {
                let key = x.to_bits() & 0x7fff_ffff;
                above[j] += (key > p.hi[j]) as usize;
                marks[i / 16] |= ((key >= p.lo[j] && key <= p.hi[j]) as u16) << (i % 16);
                if let Some(upper) = p.upper {
                    let (lo, hi) = upper[j];
                    above_upper[j] += (key > hi) as usize;
                    marks[i / 16] |= ((key >= lo && key <= hi) as u16) << (i % 16);
                }
            }
        }
        let refs: Vec<&[f32]> = tv.iter().map(|t| &t[..]).collect();
        let w: Vec<f64> = p.w.iter().map(|&w| w as f64).collect();
        let mut cons = vec![0f32; len];
        match p.upper {
            None => {
                let trims: Vec<Trim> = (0..N)
                    .map(|j| Trim { threshold: f32::from_bits(p.hi[j]), keep_equal: false, scale: 1.0 })
                    .collect();
                consensus_of_trims(&refs, &trims, &w, p.elect_sign, p.normalize, &mut cons);
            }
            // Windows: the entries strictly between the intervals, as the
            // window's mask keeps them, then the consensus.
            Some(upper) => {
                let kept: Vec<Vec<f32>> = (0..N)
                    .map(|j| {
                        let keep = |k: u32| k > p.hi[j] && k < upper[j].0;
                        tv[j].iter().map(|&x| if keep(x.to_bits() & 0x7fff_ffff) { x } else { 0.0 }).collect()
                    })
                    .collect();
                let refs: Vec<&[f32]> = kept.iter().map(|t| &t[..]).collect();
                crate::exec::kernels::combine::consensus(&refs, &w, p.elect_sign, p.normalize, &mut cons);
            }
        }
        let term = |k: usize, i: usize| {
            let (t, c) = p.root[k];
            c * match t {
                Term::Leaf(l) => f[l][i],
                Term::Consensus => cons[i],
            }
        };
        let y: Vec<f32> = (0..len).map(|i| term(0, i) + term(1, i)).collect();
        let out = codec::encode(&y, DType::BF16).chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        (out, marks, above, above_upper)
    }

    fn check<const N: usize>(p: &TiesPass<N>, leaves: &[Vec<u16>]) {
        for len in [0usize, 1, 15, 16, 17, 250, 4096] {
            let (want, want_marks, want_above, want_upper) = separately(p, leaves, len);
            let refs: Vec<&[u16]> = leaves.iter().map(|l| &l[..len]).collect();
            let mut out = vec![0u16; len];
            let mut marks = vec![0u16; len.div_ceil(16)];
            let got = p.run(&refs, &mut marks, &mut out);
            assert_eq!(out, want, "{len} entries, {p:?}");
            assert_eq!(marks, want_marks, "{len} entries");
            assert_eq!(got.above, want_above, "{len} entries");
            assert_eq!(got.above_upper, want_upper, "{len} entries");
            // The one-at-a-time reference agrees too.
            let mut one = PassCounts { above: [0; N], above_upper: [0; N], non_finite: false };
            let mut marks1 = vec![0u16; len.div_ceil(16)];
            let out1: Vec<u16> = (0..len).map(|i| p.entry(&refs, i, &mut one, &mut marks1[i / 16], i % 16)).collect();
            assert_eq!((out1, marks1, one), (out.clone(), marks, got));
        }
    }

    /// The pass gives the bits, marks and counts of the separate kernels,
    /// for every consensus setting, weights, coefficients and root order.
    #[test]
    fn one_loop_matches_the_separate_kernels() {
        let leaves: Vec<Vec<u16>> = (0..4).map(|s| leaf(4096, s + 1)).collect();
        let key = |v: f32| v.to_bits();
        for (elect_sign, normalize) in [(true, true), (true, false), (false, true), (false, false)] {
            for (w, r) in [([1.0f32, 1.0, 1.0], 1.0f32), ([0.3, -0.5, 1.7], 0.7)] {
                let p = TiesPass::<3> {
                    a: [1, 2, 3],
                    c0: [1.0; 3],
                    b: [0; 3],
                    c1: [-1.0; 3],
                    lo: [key(0.1), key(0.05), 0],
                    hi: [key(0.2), key(0.3), u32::MAX],
                    upper: None,
                    w,
                    elect_sign,
                    normalize,
                    root: [(Term::Leaf(0), 1.0), (Term::Consensus, r)],
                };
                check(&p, &leaves);
                // TIES as written most: the loop that leaves out what unit
                // coefficients make exact, the base on either side.
                assert_eq!(p.plain_ties().is_some(), w[0] == 1.0 && r == 1.0 && elect_sign);
                let swapped = TiesPass { root: [(Term::Consensus, r), (Term::Leaf(0), 1.0)], ..p.clone() };
                check(&swapped, &leaves);
                // Breadcrumbs' windows: kept between two intervals (one
                // empty, one overlapping the lower).
                let upper = Some([(key(0.4), key(0.45)), (key(0.3), key(0.35)), (key(0.6), key(0.6))]);
                let window =
                    TiesPass { upper, lo: [key(0.1), key(0.05), 0], hi: [key(0.2), key(0.3), key(0.02)], ..p.clone() };
                check(&window, &leaves);
                let swapped = TiesPass { root: [(Term::Consensus, r), (Term::Leaf(0), 1.0)], ..window.clone() };
                check(&swapped, &leaves);
                let q = TiesPass { root: [(Term::Consensus, r), (Term::Leaf(0), 0.5)], c0: [0.5, 1.0, 2.0], ..p };
                check(&q, &leaves);
            }
        }
        let two = TiesPass::<2> {
            a: [0, 2],
            c0: [1.0; 2],
            b: [1, 1],
            c1: [-1.0; 2],
            lo: [key(0.0), key(0.1)],
            hi: [key(0.15), key(0.1)],
            upper: None,
            w: [0.5, 0.5],
            elect_sign: true,
            normalize: true,
            root: [(Term::Leaf(1), 1.0), (Term::Consensus, 1.0)],
        };
        check(&two, &leaves);
    }

    /// A NaN or infinite task vector entry is reported.
    #[test]
    fn non_finite_task_vectors_are_reported() {
        let mut leaves: Vec<Vec<u16>> = (0..2).map(|s| leaf(64, s + 7)).collect();
        let p = TiesPass::<1> {
            a: [1],
            c0: [1.0],
            b: [0],
            c1: [-1.0],
            lo: [0],
            hi: [0.2f32.to_bits()],
            upper: None,
            w: [1.0],
            elect_sign: true,
            normalize: true,
            root: [(Term::Leaf(0), 1.0), (Term::Consensus, 1.0)],
        };
        let run = |leaves: &[Vec<u16>]| {
            let refs: Vec<&[u16]> = leaves.iter().map(|l| &l[..]).collect();
            p.run(&refs, &mut [0u16; 4], &mut [0u16; 64]).non_finite
        };
        // 3e38 - (-3e38) overflows to infinity: reported.
        leaves[0][5] = ((-3.0e38f32).to_bits() >> 16) as u16;
        leaves[1][5] = (3.0e38f32.to_bits() >> 16) as u16;
        assert!(run(&leaves));
        leaves[1][5] = 0;
        leaves[0][5] = 0;
        assert!(!run(&leaves));
        leaves[1][40] = 0x7fc0;
        assert!(run(&leaves));
    }
}
