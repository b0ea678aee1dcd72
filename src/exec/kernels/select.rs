//! Selecting the k-th largest magnitude of a tensor that is read a chunk
//! at a time, for magnitude trimming (TIES), outlier trimming (Model
//! Breadcrumbs) and SCE: what it is, how many entries lie above it, and how
//! many equal it in each chunk (so each chunk can keep exactly its share of
//! the entries equal to the threshold, in index order).

use super::{Source, CHUNK};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;

/// The k-th largest |x| (1-based) of input 0. Non-negative floats order like
/// their bits, so it is found by counting keys (the bits with the sign
/// cleared), never by sorting: see [`select`].
pub fn kth_largest_magnitude(src: &dyn Source, k: usize) -> Result<f32, String> {
    Ok(select(src, &[0], &[k])?[0].threshold)
}

/// SCE's selection over input 0: the k-th largest magnitude where
/// `k = int(nonzero * fraction)` counts the entries that are not zero (known
/// only at the end of the pass that selects); `None` when k is 0. Returns k
/// with the selection.
pub(super) fn kth_largest_of_nonzero(src: &dyn Source, fraction: f64) -> Result<Option<(usize, Selection)>, String> {
    let sampled = select_sampled(src, &[0], &[Rank::OfNonzero(fraction)], SAMPLE_KEYS)?;
    let k = match &sampled.ks {
        Some(ks) => ks[0],
        None => {
            let nonzero: usize =
                super::partials(src, 1, |_, b| b[0].iter().filter(|v| **v != 0.0).count())?.iter().sum();
            k_of(Rank::OfNonzero(fraction), nonzero)
        }
    };
    if k == 0 {
        return Ok(None);
    }
    let sel = match sampled.found.into_iter().next().flatten() {
        Some(sel) => sel,
        None => select_radix(src, &[0], &[k])?.remove(0),
    };
    Ok(Some((k, sel)))
}

/// Which largest magnitude a member selects: the k-th, or the k-th with k
/// a fraction of the entries that are not zero (SCE).
#[derive(Clone, Copy, Debug)]
enum Rank {
    Kth(usize),
    OfNonzero(f64),
}

/// The k a rank names, given how many entries are not zero.
fn k_of(rank: Rank, nonzero: usize) -> usize {
    match rank {
        Rank::Kth(k) => k,
        Rank::OfNonzero(f) => (nonzero as f64 * f.max(0.0)) as usize,
    }
}

/// What [`select_sampled`] found: per member a selection (`None` for the
/// radix passes), and the k each member's rank named (`None` when the pass
/// stopped early, its counts unknown).
struct Sampled {
    found: Vec<Option<Selection>>,
    ks: Option<Vec<usize>>,
}

/// What a selection learns about the k-th largest magnitude.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::exec) struct Selection {
    pub threshold: f32,
    /// Entries whose magnitude's bits lie strictly above the threshold's.
    pub above: usize,
    /// Entries equal to it.
    pub equal: usize,
    /// Per chunk, how many entries equal it, when every entry was finite
    /// and the candidates fitted [`MAX_CANDIDATES`]; else `None` and a
    /// counting pass finds them.
    pub equal_per_chunk: Option<Vec<usize>>,
}

/// Bound on the (value, count) pairs the second selection pass keeps per
/// tensor to count, chunk by chunk, the entries equal to the threshold
/// (8 bytes each).
const MAX_CANDIDATES: usize = 1 << 19;

/// For each input `members[j]` of `src`, its `ks[j]`-th largest magnitude
/// (by the bits with the sign cleared, NaN above infinity), how many
/// entries lie strictly above it and how many equal it, in one pass over the
/// inputs when a sample predicts where the threshold lies (see
/// [`select_sampled`]), else in the radix selection's two.
pub(super) fn select(src: &dyn Source, members: &[usize], ks: &[usize]) -> Result<Vec<Selection>, String> {
    let ranks: Vec<Rank> = ks.iter().map(|&k| Rank::Kth(k)).collect();
    let mut found = select_sampled(src, members, &ranks, SAMPLE_KEYS)?.found;
    let missed: Vec<usize> = (0..members.len()).filter(|&j| found[j].is_none()).collect();
    if !missed.is_empty() {
        let again: Vec<usize> = missed.iter().map(|&j| members[j]).collect();
        let again_ks: Vec<usize> = missed.iter().map(|&j| ks[j]).collect();
        for (j, sel) in missed.into_iter().zip(select_radix(src, &again, &again_ks)?) {
            found[j] = Some(sel);
        }
    }
    Ok(found.into_iter().map(|s| s.expect("selected")).collect())
}

/// Keys of a sample kept per input: bounds the sample's memory (4 bytes a
/// key) whatever the tensor's size.
const SAMPLE_KEYS: usize = 1 << 19;

/// Bound on the keys all members keep as candidates in [`select_sampled`]
/// (4 bytes each); a tensor that would need more takes the radix passes.
const MAX_SAMPLED_CANDIDATES: usize = 1 << 21;

/// The selection in one pass, guided by a sample. The magnitude keys (bits
/// with the sign cleared) of chunks spread evenly over the tensor give, for
/// each member, an interval `[lo, hi]` of keys that holds the `k`-th
/// largest with a wide margin (six standard deviations of the sample's
/// rank, and more). One pass then counts the keys above `hi`, counts per
/// chunk those equal to `hi` and to `lo`, and keeps the keys strictly
/// between; when the k-th largest lies in `[lo, hi]`, it is `hi`, `lo` or
/// found among the kept keys, and so are the counts equal to it in each
/// chunk. A member whose threshold
/// falls outside its interval (the sample misled) gets `None`, for the
/// radix passes. Tensors of at most [`SAMPLE_CHUNKS`] chunks are sampled
/// whole, so the interval holds every key; sampled chunks whose keys are all
/// kept (at most `sample_keys` of them an input) are not read again.
fn select_sampled(src: &dyn Source, members: &[usize], ranks: &[Rank], sample_keys: usize) -> Result<Sampled, String> {
    let n = src.len();
    let m = members.len();
    let chunks = n.div_ceil(CHUNK);
    if m == 0 || n == 0 {
        return Ok(Sampled { found: vec![None; m], ks: None });
    }
    // The sampled chunks, spread evenly.
    let sampled: Vec<usize> = if chunks <= SAMPLE_CHUNKS {
        (0..chunks).collect()
    } else {
        spread(chunks, (chunks / 32).clamp(SAMPLE_CHUNKS, chunks))
    };
    let ranges: Vec<Range<usize>> = sampled.iter().map(|&c| c * CHUNK..((c + 1) * CHUNK).min(n)).collect();
    let (guide, samples) = Guide::sample(src, members, ranks, &ranges, sample_keys, true, 6.0)?;
    // Sampled chunks whose keys are all at hand are not read again.
    let kept_sample: std::collections::HashMap<usize, usize> = match &samples {
        Some(_) => sampled.iter().enumerate().map(|(i, &c)| (c, i)).collect(),
        None => Default::default(),
    };
    // The pass: per block of chunks, per member, the count above `hi`, the
    // keys inside the interval chunk by chunk, and whether any key was not
    // finite.
    let blocks = (rayon::current_num_threads() * 4).max(1);
    let per_block = chunks.div_ceil(blocks).max(1);
    let used = std::sync::atomic::AtomicUsize::new(0);
    let overflow = std::sync::atomic::AtomicBool::new(false);
    let parts = std::sync::Mutex::new(Vec::new());
    (0..chunks.div_ceil(per_block)).into_par_iter().try_for_each(|blk| -> Result<(), String> {
        let _unchecked = crate::io::read::Unchecked::new();
        let mut mine = guide.tally((per_block * CHUNK).min(n));
        let mut buf = vec![0f32; CHUNK];
        for c in blk * per_block..((blk + 1) * per_block).min(chunks) {
            if overflow.load(Relaxed) {
                return Ok(());
            }
            let len = CHUNK.min(n - c * CHUNK);
            let at_hand = kept_sample.get(&c).and_then(|&i| Some(&samples.as_ref()?[i]));
            for (j, &input) in members.iter().enumerate() {
                let chunk_keys = match at_hand {
                    Some(per) => &per[guide.slot[j]][..],
                    None => {
                        if j == 0 || members[j - 1] != input {
                            src.fill(input, c * CHUNK, &mut buf[..len])?;
                        }
                        as_bits(&buf[..len])
                    }
                };
                let added = mine.scan(j, c, chunk_keys);
                if used.fetch_add(added, Relaxed) + added > MAX_SAMPLED_CANDIDATES {
                    overflow.store(true, Relaxed);
                }
            }
        }
        parts.lock().unwrap().push(mine);
        Ok(())
    })?;
    if overflow.load(Relaxed) {
        return Ok(Sampled { found: vec![None; m], ks: None });
    }
    Ok(guide.finish(parts.into_inner().unwrap()))
}

/// `s` of `chunks` chunks, spread evenly (each in the middle of its share).
fn spread(chunks: usize, s: usize) -> Vec<usize> {
    let s = s.clamp(1, chunks.max(1));
    (0..s).map(|i| (2 * i + 1) * chunks / (2 * s)).collect()
}

/// What a sample says ahead of the pass that selects: for each member, an
/// interval `[lo, hi]` of magnitude keys that holds its threshold with a
/// wide margin.
pub(in crate::exec) struct Guide {
    n: usize,
    chunks: usize,
    ranks: Vec<Rank>,
    /// Per member: its interval, and the share of the sample inside it.
    intervals: Vec<((u32, u32), f64)>,
    /// Per member, which distinct input it reads (a member reading the same
    /// input as the one before shares its sample).
    slot: Vec<usize>,
}

/// Per sampled chunk, per distinct input, its keys.
type Samples = Vec<Vec<Vec<u32>>>;

impl Guide {
    /// For members reading inputs `members` of `src` with `ranks`, takes a
    /// sample of the entries in `sampled` (disjoint ranges; at most
    /// `sample_keys` keys an input) and sets each member's interval:
    /// `sigmas` standard deviations of the sample's rank, and more. With `thin`, the
    /// interval comes from a thinner sample, cheaper to rank. Returns the
    /// sampled keys too, when every key of the sampled ranges was kept. A
    /// sample of the whole tensor gives intervals that hold every key.
    fn sample(
        src: &dyn Source,
        members: &[usize],
        ranks: &[Rank],
        sampled: &[Range<usize>],
        sample_keys: usize,
        thin: bool,
        sigmas: f64,
    ) -> Result<(Guide, Option<Samples>), String> {
        let n = src.len();
        let m = members.len();
        let chunks = n.div_ceil(CHUNK);
        let sample_len: usize = sampled.iter().map(|r| r.len()).sum();
        let whole = sample_len == n;
        let stride = sample_len.div_ceil(sample_keys).max(1);
        let first_of = |j: usize| (0..=j).rev().take_while(|&i| members[i] == members[j]).last().unwrap_or(j);
        let distinct: Vec<usize> = (0..m).filter(|&j| first_of(j) == j).collect();
        let slot: Vec<usize> =
            (0..m).map(|j| distinct.iter().position(|&d| d == first_of(j)).expect("a distinct input")).collect();
        // Per sampled chunk, per distinct input, its keys (every `stride`-th).
        let samples: Samples = sampled
            .par_iter()
            .map(|r| {
                // The streaming pass reads (and checks) every chunk read here.
                let _unchecked = crate::io::read::Unchecked::new();
                let mut buf = vec![0f32; r.len()];
                distinct
                    .iter()
                    .map(|&j| {
                        src.fill(members[j], r.start, &mut buf)?;
                        Ok(thinned(as_bits(&buf), stride))
                    })
                    .collect::<Result<Vec<Vec<u32>>, String>>()
            })
            .collect::<Result<_, String>>()?;
        // Each member's interval, and the share of the sample inside it (to
        // size the lists of kept keys).
        let intervals: Vec<((u32, u32), f64)> = (0..m)
            .map(|j| {
                if whole && stride == 1 {
                    return ((0, u32::MAX), 1.0);
                }
                // The interval comes from a thinner sample (every `every`-th
                // key): ranking it costs a small part of the pass.
                let every = match thin {
                    true => (sample_len / stride).div_ceil((n / 32).clamp(4096, 1 << 19)).max(1),
                    false => 1,
                };
                let mut keys: Vec<u32> = Vec::with_capacity(sample_len / stride / every + samples.len());
                for per in &samples {
                    let v = &per[slot[j]];
                    match every {
                        1 => keys.extend_from_slice(v),
                        _ => keys.extend((0..v.len()).step_by(every).map(|i| v[i])),
                    }
                }
                let s = keys.len();
                // The k-th largest of n sits near rank r (from the top) of the
                // sample; the interval spans ranks r - d ..= r + d: six
                // standard deviations of that rank, and a little more for
                // samples of neighbouring entries that resemble each other.
                // A rank of the nonzero entries: their share estimated from the
                // sample too, its uncertainty added to the margin.
                let (r, extra) = match ranks[j] {
                    Rank::Kth(k) => (k as f64 * s as f64 / n as f64, 0.0),
                    Rank::OfNonzero(f) => {
                        let z = keys.iter().filter(|&&k| k == 0).count() as f64 / s as f64;
                        let f = f.clamp(0.0, 1.0);
                        (f * (1.0 - z) * s as f64, 6.0 * f * (s as f64 * z * (1.0 - z)).sqrt())
                    }
                };
                let spread = sigmas * (r * (1.0 - r / s as f64)).max(1.0).sqrt();
                // Pieces of neighbouring entries resemble each other (a
                // fine-tune changes some rows much more than others): the
                // spread of the pieces' own shares above the estimate bounds
                // the rank's uncertainty too, when it is the wider.
                // (For the one read's many short pieces; the selection's
                // whole chunks resemble each other.)
                let spread = match thin {
                    true => spread,
                    false => {
                        let pieces: Vec<&[u32]> = samples.iter().map(|per| &per[slot[j]][..]).collect();
                        spread.max(sigmas * between_pieces(&keys, r, &pieces) * s as f64)
                    }
                };
                let d = spread + extra + 0.0005 * s as f64 + 16.0;
                // Ascending positions of the ranks from the top; `hi` first,
                // so `lo` is looked for only among the keys below it.
                let at = |rank: f64| {
                    let rank = rank.round();
                    (rank >= 1.0 && rank <= s as f64).then(|| s - rank as usize)
                };
                let (i_hi, i_lo) = (at(r - d), at(r + d));
                let [at_hi, at_lo] = order_statistics(&keys, [i_hi.unwrap_or(0), i_lo.unwrap_or(0)]);
                let hi = i_hi.map_or(u32::MAX, |_| at_hi);
                let lo = i_lo.map_or(0, |i| match i < i_hi.unwrap_or(s) {
                    true => at_lo,
                    false => hi,
                });
                let inside = keys.iter().filter(|&&k| k >= lo && k <= hi).count();
                ((lo, hi), inside as f64 / s as f64)
            })
            .collect();
        let guide = Guide { n, chunks, ranks: ranks.to_vec(), intervals, slot };
        Ok((guide, (stride == 1).then_some(samples)))
    }

    /// The guide for members reading inputs `members` of `src`, member `j`
    /// selecting its `ks[j]`-th largest magnitude, from a sample of the
    /// entries in `sampled`, every one of them ranked, with intervals of
    /// four standard deviations (a miss costs a pass, not a wrong result).
    pub(in crate::exec) fn of_kth(
        src: &dyn Source,
        members: &[usize],
        ks: &[usize],
        sampled: &[Range<usize>],
    ) -> Result<Guide, String> {
        let ranks: Vec<Rank> = ks.iter().map(|&k| Rank::Kth(k)).collect();
        let keys = sampled.iter().map(|r| r.len()).sum();
        Ok(Guide::sample(src, members, &ranks, sampled, keys, false, 4.0)?.0)
    }

    /// Member `j`'s interval of keys, `(lo, hi)`.
    pub(in crate::exec) fn interval(&self, j: usize) -> (u32, u32) {
        self.intervals[j].0
    }

    /// The share of member `j`'s sample inside its interval.
    pub(in crate::exec) fn share(&self, j: usize) -> f64 {
        self.intervals[j].1
    }

    /// An empty tally for a block of about `entries` entries, with room for
    /// the keys it is expected to keep.
    pub(in crate::exec) fn tally(&self, entries: usize) -> Tally {
        let members = self
            .intervals
            .iter()
            .map(|&((lo, hi), share)| Candidates {
                lo,
                hi,
                keys: Vec::with_capacity(((share * 1.25 * entries as f64) as usize).min(self.n) + CHUNK),
                ..Candidates::default()
            })
            .collect();
        Tally { members }
    }

    /// The selections from the tallies of every chunk (each chunk in one
    /// tally): per member, `None` when its threshold fell outside its
    /// interval.
    fn finish(&self, tallies: Vec<Tally>) -> Sampled {
        let (n, chunks) = (self.n, self.chunks);
        let mut parts: Vec<Vec<Candidates>> = vec![Vec::with_capacity(tallies.len()); self.intervals.len()];
        for t in tallies {
            for (j, c) in t.members.into_iter().enumerate() {
                parts[j].push(c);
            }
        }
        let ks: Vec<usize> = parts
            .iter()
            .zip(&self.ranks)
            .map(|(parts, &rank)| k_of(rank, n - parts.iter().map(|p| p.zeros).sum::<usize>()))
            .collect();
        let found = parts
            .into_iter()
            .zip(&ks)
            .zip(&self.intervals)
            .map(|((mut parts, &k), &((lo, hi), _))| {
                // Blocks in chunk order, so the kept keys run in index order.
                parts.sort_by_key(|p| p.ends.first().map_or(usize::MAX, |e| e.chunk));
                let sum = |f: fn(&Candidates) -> usize| parts.iter().map(f).sum::<usize>();
                let (above, at_hi, at_lo) = (sum(|p| p.above), sum(|p| p.at_hi), sum(|p| p.at_lo));
                let inside = sum(|p| p.keys.len());
                let finite = !parts.iter().any(|p| p.non_finite);
                // Per chunk, how many entries equal the threshold, from the
                // per-chunk counts at either end or the kept keys.
                let per_chunk = |count: &dyn Fn(&ChunkEnd, &[u32]) -> usize| {
                    let mut per_chunk = vec![0usize; chunks];
                    for p in &parts {
                        let mut from = 0;
                        for e in &p.ends {
                            per_chunk[e.chunk] = count(e, &p.keys[from..e.end]);
                            from = e.end;
                        }
                    }
                    per_chunk
                };
                let (threshold, above_t, equal, equal_per_chunk) = if k == 0 || above >= k {
                    return None;
                } else if above + at_hi >= k {
                    (hi, above, at_hi, finite.then(|| per_chunk(&|e, _| e.at_hi)))
                } else if above + at_hi + inside >= k {
                    let mut all: Vec<u32> = Vec::with_capacity(inside);
                    parts.iter().for_each(|p| all.extend_from_slice(&p.keys));
                    let need = k - above - at_hi; // the need-th largest inside
                    let t = *all.select_nth_unstable(inside - need).1;
                    let above_t = above + at_hi + all.iter().filter(|&&x| x > t).count();
                    let equal = all.iter().filter(|&&x| x == t).count();
                    (t, above_t, equal, finite.then(|| per_chunk(&|_, keys| keys.iter().filter(|&&x| x == t).count())))
                } else if above + at_hi + inside + at_lo >= k {
                    (lo, above + at_hi + inside, at_lo, finite.then(|| per_chunk(&|e, _| e.at_lo)))
                } else {
                    return None;
                };
                Some(Selection { threshold: f32::from_bits(threshold), above: above_t, equal, equal_per_chunk })
            })
            .collect();
        Sampled { found, ks: Some(ks) }
    }

    /// The selections, for members ranked by `Kth` (see [`Guide::finish`]).
    pub(in crate::exec) fn selections(&self, tallies: Vec<Tally>) -> Vec<Option<Selection>> {
        self.finish(tallies).found
    }
}

/// The standard error of the share of keys above the key at rank `r` (from
/// the top) of `keys`, from how that share varies between the `pieces` the
/// keys were sampled in (keys above it, and keys at or above it, whichever
/// varies more); 0 with fewer than eight pieces.
fn between_pieces(keys: &[u32], r: f64, pieces: &[&[u32]]) -> f64 {
    let s = keys.len();
    if pieces.len() < 8 || s == 0 {
        return 0.0;
    }
    let at = s - (r.round() as usize).clamp(1, s);
    let [t] = order_statistics(keys, [at]);
    let error = |share: &dyn Fn(&[u32]) -> f64| {
        let shares: Vec<f64> = pieces.iter().filter(|p| !p.is_empty()).map(|p| share(p)).collect();
        let m = shares.len() as f64;
        let mean = shares.iter().sum::<f64>() / m;
        let var = shares.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (m - 1.0);
        (var / m).sqrt()
    };
    let above = |p: &[u32]| p.iter().filter(|&&k| k > t).count() as f64 / p.len() as f64;
    let from = |p: &[u32]| p.iter().filter(|&&k| k >= t).count() as f64 / p.len() as f64;
    error(&above).max(error(&from))
}

/// The `i`-th smallest of `keys` (from 0) for each `i` of `at`, as
/// `select_nth_unstable` finds it: a histogram of the keys' high 12 bits
/// (sign and exponent, and the mantissa's first 3) finds the bucket each
/// one lies in, and a selection among that bucket's keys the key. Sample
/// ranking costs a few ns a key with two full selections; this, about one
/// pass over the keys and one more per rank.
fn order_statistics<const M: usize>(keys: &[u32], at: [usize; M]) -> [u32; M] {
    if keys.is_empty() {
        return [0; M];
    }
    let mut hist = vec![0u32; 1 << 12];
    for &k in keys {
        hist[(k >> 20) as usize] += 1;
    }
    at.map(|i| {
        let i = i.min(keys.len() - 1);
        let (mut bucket, mut below) = (0, 0usize);
        while below + hist[bucket] as usize <= i {
            below += hist[bucket] as usize;
            bucket += 1;
        }
        let mut inside: Vec<u32> = keys.iter().copied().filter(|&k| (k >> 20) as usize == bucket).collect();
        *inside.select_nth_unstable(i - below).1
    })
}

/// One block of chunks' share of a guided pass: per member, what its scans
/// counted and kept.
pub(in crate::exec) struct Tally {
    members: Vec<Candidates>,
}

impl Tally {
    /// Scans member `j`'s magnitude keys of chunk `c` (its values' bits,
    /// the sign ignored); returns how many keys it kept.
    pub(in crate::exec) fn scan(&mut self, j: usize, c: usize, bits: &[u32]) -> usize {
        let m = &mut self.members[j];
        let (lo, hi) = (m.lo, m.hi);
        m.scan(c, bits, (lo, hi), None)
    }

    /// [`Tally::scan_marking`] of the values `a c0 + b c1` (see
    /// [`scan_sum_keys`]).
    pub(in crate::exec) fn scan_sum_marking(
        &mut self,
        j: usize,
        c: usize,
        s: &super::Sum<'_>,
        marks: &mut [u16],
    ) -> usize {
        let m = &mut self.members[j];
        let (lo, hi) = (m.lo, m.hi);
        let before = m.keys.len();
        let n = scan_sum_keys(s, lo, hi, &mut m.keys, Some(marks));
        m.record(c, n);
        m.keys.len() - before
    }

    /// Member `j`'s share of chunk `c` from a pass that counted its keys
    /// above the interval (`above`) and marked the entries inside some
    /// member's interval: `s` makes the marked entries' values, in index
    /// order, which are scanned here (keys above `hi` among them were
    /// counted by the pass). The zero keys are not counted: for
    /// [`Guide::of_kth`]'s ranks, which do not use them. Returns how many
    /// keys it kept.
    pub(in crate::exec) fn record_marked(
        &mut self,
        j: usize,
        c: usize,
        above: usize,
        non_finite: bool,
        s: &super::Sum<'_>,
    ) -> usize {
        let m = &mut self.members[j];
        let before = m.keys.len();
        let n = scan_sum_keys(s, m.lo, m.hi, &mut m.keys, None);
        let non_finite = non_finite || n.non_finite;
        m.record(c, Counts { above, at_hi: n.at_hi, at_lo: n.at_lo, zeros: 0, non_finite });
        m.keys.len() - before
    }

    /// [`Tally::scan`], also setting bit `i % 16` of `marks[i / 16]` for
    /// each key `i` inside the member's interval `[lo, hi]` (ends included):
    /// the entries whose fate the interval leaves open.
    pub(in crate::exec) fn scan_marking(&mut self, j: usize, c: usize, bits: &[u32], marks: &mut [u16]) -> usize {
        let m = &mut self.members[j];
        let (lo, hi) = (m.lo, m.hi);
        m.scan(c, bits, (lo, hi), Some(marks))
    }
}

/// Tensors of at most this many chunks are sampled whole.
const SAMPLE_CHUNKS: usize = 16;

/// One block's share of [`select_sampled`]'s pass, for one member.
#[derive(Default, Clone)]
struct Candidates {
    /// The interval `[lo, hi]` of keys scanned against.
    lo: u32,
    hi: u32,
    /// Keys above the interval, equal to its upper end, and equal to its
    /// lower end (when that is not the upper end too).
    above: usize,
    at_hi: usize,
    at_lo: usize,
    /// Keys that are zero.
    zeros: usize,
    /// Keys strictly inside it, chunk after chunk; `ends` says where each
    /// chunk's end, with the chunk's counts at either end.
    keys: Vec<u32>,
    ends: Vec<ChunkEnd>,
    /// Whether a key was NaN or infinite.
    non_finite: bool,
}

/// Where a chunk's kept keys end, and how many of its keys equal either
/// end of the interval.
#[derive(Clone)]
struct ChunkEnd {
    chunk: usize,
    end: usize,
    at_lo: usize,
    at_hi: usize,
}

impl Candidates {
    /// Scans chunk `c`'s magnitude keys (`bits` with the sign cleared)
    /// against `[lo, hi]`; returns how many it kept.
    fn scan(&mut self, c: usize, bits: &[u32], (lo, hi): (u32, u32), marks: Option<&mut [u16]>) -> usize {
        (self.lo, self.hi) = (lo, hi);
        let before = self.keys.len();
        let n = scan_keys(bits, lo, hi, &mut self.keys, marks);
        self.record(c, n);
        self.keys.len() - before
    }

    /// Adds chunk `c`'s counts, its kept keys already appended.
    fn record(&mut self, c: usize, n: Counts) {
        self.above += n.above;
        self.at_hi += n.at_hi;
        self.at_lo += n.at_lo;
        self.zeros += n.zeros;
        self.non_finite |= n.non_finite;
        self.ends.push(ChunkEnd { chunk: c, end: self.keys.len(), at_lo: n.at_lo, at_hi: n.at_hi });
    }
}

/// What a scan counts: keys above `hi`, equal to `hi`, equal to `lo` (when
/// `lo < hi`), equal to zero, and whether any is NaN or infinite.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Counts {
    above: usize,
    at_hi: usize,
    at_lo: usize,
    zeros: usize,
    non_finite: bool,
}

/// Every `every`-th of `bits` (from the first) as a magnitude key.
fn thinned(bits: &[u32], every: usize) -> Vec<u32> {
    match every {
        1 => bits.iter().map(|b| b & 0x7fff_ffff).collect(),
        _ => (0..bits.len()).step_by(every).map(|i| bits[i] & 0x7fff_ffff).collect(),
    }
}

/// A chunk's values as their bits.
fn as_bits(vals: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit
    // pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(vals.as_ptr().cast(), vals.len()) }
}

/// For magnitude keys (`bits` with the sign cleared): the [`Counts`], and
/// the keys strictly between `lo` and `hi` appended to `out`, in order.
/// Keys equal to an end are only counted: bf16 task vectors hold many equal
/// magnitudes, and a tensor left unchanged holds nothing but zeros. With
/// AVX-512, sixteen at a time (compare masks and a compress); else one at a
/// time without branches.
/// With `marks`, also ors bit `i % 16` of `marks[i / 16]` for each key `i`
/// in `[lo, hi]`.
fn scan_keys(bits: &[u32], lo: u32, hi: u32, out: &mut Vec<u32>, marks: Option<&mut [u16]>) -> Counts {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature the function is compiled for is present.
        return unsafe { scan_keys_avx512(bits, lo, hi, out, marks) };
    }
    scan_keys_generic(bits, lo, hi, out, marks)
}

fn scan_keys_generic(bits: &[u32], lo: u32, hi: u32, out: &mut Vec<u32>, marks: Option<&mut [u16]>) -> Counts {
    if let Some(marks) = marks {
        for (i, &b) in bits.iter().enumerate() {
            let k = b & 0x7fff_ffff;
            marks[i / 16] |= ((k >= lo && k <= hi) as u16) << (i % 16);
        }
    }
    let start = out.len();
    out.resize(start + bits.len(), 0);
    let (mut w, mut n) = (start, Counts::default());
    for &b in bits {
        let k = b & 0x7fff_ffff;
        out[w] = k;
        w += (k > lo && k < hi) as usize;
        n.above += (k > hi) as usize;
        n.at_hi += (k == hi) as usize;
        n.at_lo += (k == lo && lo < hi) as usize;
        n.zeros += (k == 0) as usize;
        n.non_finite |= k >= 0x7f80_0000;
    }
    out.truncate(w);
    n
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_keys_avx512(bits: &[u32], lo: u32, hi: u32, out: &mut Vec<u32>, marks: Option<&mut [u16]>) -> Counts {
    use std::arch::x86_64::*;
    let load = |i: usize| _mm512_loadu_si512(bits.as_ptr().add(16 * i).cast());
    let (n, marks) = scan_steps_avx512(bits.len(), load, lo, hi, out, marks);
    // The rest starts at a multiple of 16: its marks are a word's bits.
    let steps = bits.len() / 16;
    n.add(scan_keys_generic(&bits[16 * steps..], lo, hi, out, marks.map(|m| &mut m[steps..])))
}

/// [`scan_keys`] of the values `a c0 + b c1`, made as they are scanned (the
/// task vector of a fine-tune `a` over its base `b`, `c1 = -1`): their bits
/// are those of the sums a linear combination computes (a product by 1 is
/// exact).
fn scan_sum_keys(s: &super::Sum<'_>, lo: u32, hi: u32, out: &mut Vec<u32>, marks: Option<&mut [u16]>) -> Counts {
    let len = s.a.len().min(s.b.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature the function is compiled for is present.
        return unsafe { scan_sum_avx512(s, len, lo, hi, out, marks) };
    }
    let bits: Vec<u32> = (0..len).map(|i| (s.a[i] * s.c0 + s.b[i] * s.c1).to_bits()).collect();
    scan_keys_generic(&bits, lo, hi, out, marks)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_sum_avx512(
    s: &super::Sum<'_>,
    len: usize,
    lo: u32,
    hi: u32,
    out: &mut Vec<u32>,
    marks: Option<&mut [u16]>,
) -> Counts {
    use std::arch::x86_64::*;
    let (c0, c1) = (_mm512_set1_ps(s.c0), _mm512_set1_ps(s.c1));
    // The loads read whole steps of sixteen inside both slices.
    let load = |i: usize| {
        let a = _mm512_loadu_ps(s.a.as_ptr().add(16 * i));
        let b = _mm512_loadu_ps(s.b.as_ptr().add(16 * i));
        _mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(a, c0), _mm512_mul_ps(b, c1)))
    };
    let (n, marks) = scan_steps_avx512(len, load, lo, hi, out, marks);
    let steps = len / 16;
    let rest: Vec<u32> = (16 * steps..len).map(|i| (s.a[i] * s.c0 + s.b[i] * s.c1).to_bits()).collect();
    n.add(scan_keys_generic(&rest, lo, hi, out, marks.map(|m| &mut m[steps..])))
}

impl Counts {
    fn add(self, o: Counts) -> Counts {
        Counts {
            above: self.above + o.above,
            at_hi: self.at_hi + o.at_hi,
            at_lo: self.at_lo + o.at_lo,
            zeros: self.zeros + o.zeros,
            non_finite: self.non_finite || o.non_finite,
        }
    }
}

/// The whole steps of sixteen keys of a scan, each step's values from
/// `load(step)` (bits, the sign not yet cleared); returns their counts and
/// the marks left for the rest.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scan_steps_avx512<'m>(
    len: usize,
    load: impl Fn(usize) -> std::arch::x86_64::__m512i,
    lo: u32,
    hi: u32,
    out: &mut Vec<u32>,
    mut marks: Option<&'m mut [u16]>,
) -> (Counts, Option<&'m mut [u16]>) {
    use std::arch::x86_64::*;
    if let Some(m) = &marks {
        assert!(m.len() >= len.div_ceil(16), "a mark word for every sixteen keys");
    }
    let start = out.len();
    // Each step stores sixteen lanes at the write position: room for them.
    out.reserve(len + 16);
    let dst = out.as_mut_ptr().add(start);
    let sign = _mm512_set1_epi32(0x7fff_ffff);
    let (vlo, vhi) = (_mm512_set1_epi32(lo as i32), _mm512_set1_epi32(hi as i32));
    let inf = _mm512_set1_epi32(0x7f80_0000);
    let count_lo = lo < hi;
    let (mut w, mut non_finite) = (0usize, 0u16);
    // Counts a lane at a time (a chunk's counts fit in 32 bits), added up
    // at the end: one instruction a count and step.
    let zero = _mm512_setzero_si512();
    let one = _mm512_set1_epi32(1);
    let (mut above, mut at_hi_n, mut at_lo_n, mut zeros) = (zero, zero, zero, zero);
    let steps = len / 16;
    for i in 0..steps {
        let k = _mm512_and_si512(load(i), sign);
        above = _mm512_mask_add_epi32(above, _mm512_cmpgt_epu32_mask(k, vhi), above, one);
        let at_hi = _mm512_cmpeq_epi32_mask(k, vhi);
        at_hi_n = _mm512_mask_add_epi32(at_hi_n, at_hi, at_hi_n, one);
        let at_lo = _mm512_cmpeq_epi32_mask(k, vlo);
        at_lo_n = _mm512_mask_add_epi32(at_lo_n, at_lo, at_lo_n, one);
        zeros = _mm512_mask_add_epi32(zeros, _mm512_cmpeq_epi32_mask(k, zero), zeros, one);
        non_finite |= _mm512_cmpge_epu32_mask(k, inf);
        let inside = _mm512_cmpgt_epu32_mask(k, vlo) & _mm512_cmplt_epu32_mask(k, vhi);
        if let Some(marks) = marks.as_deref_mut() {
            // In [lo, hi]: inside, or at an end.
            *marks.get_unchecked_mut(i) |= inside | at_hi | at_lo;
        }
        _mm512_storeu_si512(dst.add(w).cast(), _mm512_maskz_compress_epi32(inside, k));
        w += inside.count_ones() as usize;
    }
    let sum = |v: __m512i| _mm512_reduce_add_epi32(v) as u32 as usize;
    let n = Counts {
        above: sum(above),
        at_hi: sum(at_hi_n),
        at_lo: if count_lo { sum(at_lo_n) } else { 0 },
        zeros: sum(zeros),
        non_finite: non_finite != 0,
    };
    out.set_len(start + w);
    (n, marks)
}

/// The radix selection, in two passes: a histogram of the keys' high 16
/// bits finds the threshold's bucket, and one of the low 16 bits inside it
/// the threshold.
fn select_radix(src: &dyn Source, members: &[usize], ks: &[usize]) -> Result<Vec<Selection>, String> {
    let n = src.len();
    let m = members.len();
    if m == 0 {
        return Ok(Vec::new());
    }
    let chunks = n.div_ceil(CHUNK);
    // A fixed number of blocks of chunks, each with one histogram per member:
    // memory per thread stays the same whatever the tensor size. Integer
    // counts add up the same in any order.
    let blocks = (rayon::current_num_threads() * 4).max(1);
    let per_block = chunks.div_ceil(blocks).max(1);
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
    // Each block's histograms are added to the totals as it finishes, so at
    // most about one block per thread is held at a time.
    let add = |total: &mut Vec<usize>, h: &[u32]| {
        if total.is_empty() {
            *total = vec![0usize; 1 << 16];
        }
        total.iter_mut().zip(h).for_each(|(t, &c)| *t += c as usize);
    };
    // Pass 1: the high 16 bits of every magnitude, once per input (a
    // member reading the input before it shares its histogram).
    let repeat = |j: usize| j > 0 && members[j - 1] == members[j];
    let highs = std::sync::Mutex::new(vec![Vec::new(); m]);
    blocks_of(
        src,
        members,
        chunks,
        per_block,
        |j, _, vals, h: &mut Vec<Vec<u32>>| {
            if repeat(j) {
                return;
            }
            if h.is_empty() {
                *h = vec![vec![0u32; 1 << 16]; m];
            }
            let h: &mut [u32; 1 << 16] = (&mut h[j][..]).try_into().expect("65536 buckets");
            for v in vals {
                h[((v.to_bits() & 0x7fff_ffff) >> 16) as usize] += 1;
            }
        },
        |h| {
            let mut totals = highs.lock().unwrap();
            for (total, h) in totals.iter_mut().zip(&h) {
                add(total, h);
            }
        },
    )?;
    let mut highs = highs.into_inner().unwrap();
    for j in 1..m {
        if repeat(j) {
            highs[j] = highs[j - 1].clone();
        }
    }
    let found: Vec<(usize, usize)> = highs.iter().zip(ks).map(|(h, &k)| find(h, k)).collect();
    // Pass 2: the low 16 bits inside each member's bucket, and per chunk the
    // distinct low halves seen there with their counts, from which the
    // entries equal to the threshold are counted per chunk without a third
    // pass (unless there are too many, or entries that are not finite).
    let used = std::sync::atomic::AtomicUsize::new(0);
    let full: Vec<std::sync::atomic::AtomicBool> =
        highs.iter().map(|h| std::sync::atomic::AtomicBool::new(h[0x7f80..].iter().any(|&c| c > 0))).collect();
    let lows = std::sync::Mutex::new(vec![(Vec::new(), Vec::new()); m]);
    blocks_of(
        src,
        members,
        chunks,
        per_block,
        |j, c, vals, parts: &mut Vec<LowPart>| {
            if parts.is_empty() {
                parts.resize_with(m, LowPart::default);
            }
            let (hb, part) = (found[j].0, &mut parts[j]);
            if part.hist.is_empty() {
                part.hist = vec![0u32; 1 << 16];
            }
            part.lows.clear();
            for v in vals {
                let b = v.to_bits() & 0x7fff_ffff;
                if (b >> 16) as usize == hb {
                    part.lows.push(b as u16);
                }
            }
            for &l in &part.lows {
                part.hist[l as usize] += 1;
            }
            if full[j].load(Relaxed) {
                part.pairs = Vec::new();
                return;
            }
            let before = part.pairs.len();
            distinct_counts(&mut part.lows, &mut part.pairs);
            let added = part.pairs.len() - before;
            if used.fetch_add(added, Relaxed) + added > MAX_CANDIDATES {
                full[j].store(true, Relaxed);
            }
            part.chunk_ends.push((c, part.pairs.len()));
        },
        |parts| {
            let mut totals = lows.lock().unwrap();
            for (j, (p, (total, lists))) in parts.into_iter().zip(totals.iter_mut()).enumerate() {
                add(total, &p.hist);
                if !full[j].load(Relaxed) {
                    lists.push((p.pairs, p.chunk_ends));
                }
            }
        },
    )?;
    let lows = lows.into_inner().unwrap();
    let mut out = Vec::with_capacity(m);
    for (j, (low, lists)) in lows.into_iter().enumerate() {
        let (hb, k_in) = found[j];
        let high = &highs[j];
        let (lb, _) = find(&low, k_in);
        let above = high[hb + 1..].iter().sum::<usize>() + low[lb + 1..].iter().sum::<usize>();
        let equal_per_chunk = (!full[j].load(Relaxed)).then(|| {
            let mut per_chunk = vec![0usize; chunks];
            for (pairs, ends) in &lists {
                let mut from = 0;
                for &(c, end) in ends {
                    per_chunk[c] = pairs[from..end].iter().find(|p| p.0 as usize == lb).map_or(0, |p| p.1 as usize);
                    from = end;
                }
            }
            per_chunk
        });
        out.push(Selection {
            threshold: f32::from_bits(((hb as u32) << 16) | lb as u32),
            above,
            equal: low[lb],
            equal_per_chunk,
        });
    }
    Ok(out)
}

/// One block's share of the second selection pass.
#[derive(Default)]
struct LowPart {
    hist: Vec<u32>,
    /// The low halves in the bucket, of the chunk being read.
    lows: Vec<u16>,
    /// (low half, count) for each chunk in turn; `chunk_ends` says where each
    /// chunk's pairs end.
    pairs: Vec<(u16, u32)>,
    chunk_ends: Vec<(usize, usize)>,
}

/// Appends to `pairs` the distinct values of `lows` with their counts
/// (reordering `lows`).
fn distinct_counts(lows: &mut [u16], pairs: &mut Vec<(u16, u32)>) {
    let Some(&first) = lows.first() else { return };
    if lows.iter().all(|&l| l == first) {
        pairs.push((first, lows.len() as u32));
        return;
    }
    lows.sort_unstable();
    for run in lows.chunk_by(|a, b| a == b) {
        pairs.push((run[0], run.len() as u32));
    }
}

/// Visits inputs `members` of `src` chunk by chunk (all members' chunk `c`
/// in a row), `per_block` chunks to a block (blocks in parallel), each block
/// folding its chunks into its own state, `f(member, chunk, values, state)`,
/// and handing it to `done` when finished.
fn blocks_of<T: Default + Send>(
    src: &dyn Source,
    members: &[usize],
    chunks: usize,
    per_block: usize,
    f: impl Fn(usize, usize, &[f32], &mut T) + Sync,
    done: impl Fn(T) + Sync,
) -> Result<(), String> {
    let n = src.len();
    (0..chunks.div_ceil(per_block)).into_par_iter().try_for_each(|blk| {
        // The streaming pass reads (and checks) every chunk read here.
        let _unchecked = crate::io::read::Unchecked::new();
        let mut state = T::default();
        let mut buf = vec![0f32; CHUNK];
        for c in blk * per_block..((blk + 1) * per_block).min(chunks) {
            let len = CHUNK.min(n - c * CHUNK);
            for (j, &input) in members.iter().enumerate() {
                // A member reading the input before it reuses its values.
                if j == 0 || members[j - 1] != input {
                    src.fill(input, c * CHUNK, &mut buf[..len])?;
                }
                f(j, c, &buf[..len], &mut state);
            }
        }
        done(state);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    /// The histogram's order statistics are those of a selection, on keys
    /// with many equal ones, spread over many or few buckets, at any rank.
    #[test]
    fn order_statistics_match_a_selection() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for (n, spread) in [(1usize, 30u32), (7, 30), (5000, 30), (5000, 4), (100_000, 24), (100_000, 2)] {
            let keys: Vec<u32> = (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    0x3c00_0000 + ((s >> 20) as u32 & ((1 << spread) - 1)) / 3 * 3
                })
                .collect();
            for at in [[0, n - 1], [n / 3, n / 2], [n - 1, n / 7], [n / 2, n / 2]] {
                let want = at.map(|i| *keys.clone().select_nth_unstable(i).1);
                assert_eq!(super::order_statistics(&keys, at), want, "{n} keys, ranks {at:?}");
            }
        }
    }

    use super::*;
    use crate::exec::kernels::Slices;

    #[test]
    fn radix_select_matches_a_sort() {
        let x: Vec<f32> =
            (0..5000).map(|i| ((i * 7919) % 1013) as f32 * if i % 3 == 0 { -0.01 } else { 0.013 }).collect();
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let src = Slices(std::slice::from_ref(&x));
        for k in [1, 2, 17, 2500, 4999, 5000] {
            assert_eq!(kth_largest_magnitude(&src, k).unwrap(), sorted[k - 1], "k = {k}");
        }
    }
    /// Values like a bf16 task vector's: coarse, so many entries share a
    /// magnitude, with rows of different scales.
    fn task_vector(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let u = crate::rng::uniform(seed, i as u64) as f32 - 0.5;
                let row_scale = 1.0 + ((i / 1024) % 7) as f32 * 0.3;
                let v = u * row_scale * 0.01;
                // bf16 precision
                f32::from_bits(v.to_bits() & 0xffff_0000)
            })
            .collect()
    }

    /// The sampled selection finds what the radix selection finds, with the
    /// whole tensor sampled, with sampled chunks kept and skipped, and with
    /// a sample thinned and re-read; a member whose sample misleads (its
    /// sampled chunks quieter than the rest) is left to the radix passes.
    #[test]
    fn the_sampled_selection_matches_the_radix_selection() {
        for (chunks, sample_keys) in [(3, 1 << 19), (3, 5000), (40, 1 << 19), (40, 1 << 16), (40, 1000)] {
            let n = chunks * CHUNK - 321;
            let a = task_vector(n, 1);
            let b = task_vector(n, 2);
            let mut odd = task_vector(n, 3);
            odd[17] = f32::NAN;
            odd[CHUNK + 3] = f32::NEG_INFINITY;
            let mut misled = task_vector(n, 4);
            if chunks > SAMPLE_CHUNKS {
                // The sampled chunks near zero: the sample puts the
                // threshold far below the true one.
                for i in 0..SAMPLE_CHUNKS {
                    let c = (2 * i + 1) * chunks / (2 * SAMPLE_CHUNKS);
                    misled[c * CHUNK..((c + 1) * CHUNK).min(n)].iter_mut().for_each(|v| *v *= 1e-3);
                }
            }
            // A tensor the fine-tune left unchanged, and one of two values.
            let zeros = vec![0f32; n];
            let two: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.5 } else { -0.25 }).collect();
            let inputs = vec![a, b, odd, misled, zeros, two];
            let src = Slices(&inputs);
            let members = [0, 0, 1, 2, 3, 4, 5, 5];
            let ks = [1, n / 5, n / 3, n / 2, n / 10, n / 5, n / 5, n / 2];
            let radix = select_radix(&src, &members, &ks).unwrap();
            let ranks: Vec<Rank> = ks.iter().map(|&k| Rank::Kth(k)).collect();
            let sampled = select_sampled(&src, &members, &ranks, sample_keys).unwrap().found;
            for (j, (r, s)) in radix.iter().zip(&sampled).enumerate() {
                match s {
                    Some(s) => assert_eq!(s, r, "member {j}, {chunks} chunks, {sample_keys} keys"),
                    None => assert!(j == 4 && chunks > SAMPLE_CHUNKS, "member {j} missed, {chunks} chunks"),
                }
            }
            if chunks > SAMPLE_CHUNKS {
                assert!(sampled[4].is_none(), "the misleading sample was not caught");
            }
            // Ties at the ends are counted, not kept: no fallback for them.
            assert!(sampled[5..].iter().all(Option::is_some), "{chunks} chunks, {sample_keys} keys");
            assert_eq!(select(&src, &members, &ks).unwrap(), radix);
        }
    }

    /// Scanning sums as they are made keeps, counts and marks what scanning
    /// the made values does, on lengths around a step of sixteen.
    #[test]
    fn scanning_sums_matches_scanning_their_values() {
        let a = task_vector(1000, 3);
        let b = task_vector(1000, 4);
        let (c0, c1) = (1.0f32, -1.0f32);
        let made: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y * c1).collect();
        let mut sorted: Vec<u32> = as_bits(&made).iter().map(|b| b & 0x7fff_ffff).collect();
        sorted.sort_unstable();
        for (lo, hi) in [(sorted[300], sorted[700]), (sorted[500], sorted[500]), (0, u32::MAX)] {
            for len in [0usize, 15, 16, 17, 999, 1000] {
                let (mut ka, mut kb) = (vec![7u32], vec![7u32]);
                let (mut ma, mut mb) = (vec![0u16; len.div_ceil(16)], vec![0u16; len.div_ceil(16)]);
                let s = crate::exec::kernels::Sum { a: &a[..len], c0, b: &b[..len], c1 };
                let got = scan_sum_keys(&s, lo, hi, &mut ka, Some(&mut ma));
                let want = scan_keys(&as_bits(&made)[..len], lo, hi, &mut kb, Some(&mut mb));
                assert_eq!((got, &ka, &ma), (want, &kb, &mb), "len {len}, [{lo}, {hi}]");
            }
        }
    }

    /// The vector scan keeps and counts what the scalar one does, on every
    /// length around a step of sixteen and with NaN, infinity and -0.
    #[test]
    fn the_vector_scan_matches_the_scalar_scan() {
        let mut x = task_vector(1000, 9);
        x[3] = f32::NAN;
        x[400] = f32::INFINITY;
        x[401] = -0.0;
        let bits = as_bits(&x);
        let mut sorted: Vec<u32> = bits.iter().map(|b| b & 0x7fff_ffff).collect();
        sorted.sort_unstable();
        for (lo, hi) in [(0, u32::MAX), (sorted[300], sorted[700]), (sorted[999], sorted[999]), (5, 3), (0, 0)] {
            for len in [0usize, 1, 15, 16, 17, 33, 999, 1000] {
                let (mut a, mut b) = (vec![7u32], vec![7u32]);
                let (mut ma, mut mb) = (vec![0u16; len.div_ceil(16)], vec![0u16; len.div_ceil(16)]);
                let got = scan_keys(&bits[..len], lo, hi, &mut a, Some(&mut ma));
                let want = scan_keys_generic(&bits[..len], lo, hi, &mut b, Some(&mut mb));
                assert_eq!((got, &a, &ma), (want, &b, &mb), "len {len}, [{lo}, {hi}]");
                // The marks by hand: the keys in [lo, hi], ends included.
                for (i, b) in bits[..len].iter().enumerate() {
                    let k = b & 0x7fff_ffff;
                    assert_eq!(ma[i / 16] >> (i % 16) & 1 == 1, k >= lo && k <= hi, "mark {i}, [{lo}, {hi}]");
                }
                // By hand: kept strictly inside, the ends counted.
                let keys = bits[..len].iter().map(|b| b & 0x7fff_ffff);
                let inside: Vec<u32> = keys.clone().filter(|&k| k > lo && k < hi).collect();
                assert_eq!(a[1..], inside[..]);
                assert_eq!(b[0], 7);
                let count = |f: &dyn Fn(u32) -> bool| keys.clone().filter(|&k| f(k)).count();
                assert_eq!(want.above, count(&|k| k > hi));
                assert_eq!(want.at_hi, count(&|k| k == hi));
                assert_eq!(want.at_lo, count(&|k| k == lo && lo < hi));
                assert_eq!(want.zeros, count(&|k| k == 0));
            }
        }
    }

    /// SCE's k, a share of the nonzero entries, found by the selecting pass:
    /// the same k and selection as counting first, with zeros in runs and
    /// scattered, a NaN, and shares that give k = 0.
    #[test]
    fn the_share_of_nonzero_entries_matches_counting_first() {
        let chunks = 40;
        let n = chunks * CHUNK - 5;
        let mut sparse = task_vector(n, 7);
        sparse.iter_mut().enumerate().filter(|(i, _)| i % 5 != 0 || (i / CHUNK) % 4 == 1).for_each(|(_, v)| *v = 0.0);
        let mut odd = task_vector(n, 8);
        odd[99] = f32::NAN;
        for x in [sparse, odd, task_vector(3 * CHUNK, 9), vec![0f32; 2 * CHUNK]] {
            let src = Slices(std::slice::from_ref(&x));
            let nonzero = x.iter().filter(|v| **v != 0.0).count();
            for fraction in [0.3, 0.9, 1e-9] {
                let k = (nonzero as f64 * fraction) as usize;
                let got = kth_largest_of_nonzero(&src, fraction).unwrap();
                match got {
                    None => assert_eq!(k, 0),
                    Some((kk, sel)) => {
                        assert_eq!(kk, k);
                        assert_eq!(sel, select_radix(&src, &[0], &[k]).unwrap().remove(0));
                    }
                }
            }
        }
    }
}
