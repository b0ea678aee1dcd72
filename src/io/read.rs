//! Reading tensor data: positioned reads of the input checkpoints' files,
//! widened to f32, noting inputs that hold NaN or infinity. GGUF tensors
//! that are not plain bytes (quantized, or with rows to reorder) are
//! dequantized whole on first use and kept in a small cache, since a run
//! reads each tensor a chunk at a time.

use super::codec::decode;
use super::{Checkpoint, DType};
use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// The input checkpoints of a run, opened once and read with positioned
/// reads (see docs/notes/reading-inputs.md for why not memory maps).
pub struct Inputs {
    models: Vec<Arc<Checkpoint>>,
    files: Vec<Vec<File>>,
    /// Input tensors found holding NaN or infinity: (checkpoint, tensor).
    non_finite: Mutex<BTreeSet<(String, String)>>,
    /// Dequantized GGUF tensors, least recently used first.
    cache: Mutex<VecDeque<(TensorKey, Arc<Vec<f32>>)>>,
    /// Bytes the cache may hold; one tensor is kept even if larger.
    cache_limit: u64,
    /// Tells this set of inputs apart in the per-thread chunk cache.
    id: u64,
    /// Tensors read for several nodes (the base under each task vector):
    /// their chunks go through the per-thread cache, other reads do not.
    shared: std::collections::HashSet<TensorKey>,
}

/// Decoded chunks each thread keeps: a chunk read for several nodes in a
/// row (the base under each task vector) is read and decoded once.
const RECENT: usize = 4;

/// A decoded chunk: (inputs id, model, tensor, first element), values, and
/// whether they were checked for NaN and infinity.
type Recent = ((u64, usize, String, usize), Vec<f32>, bool);

thread_local! {
    static RECENT_CHUNKS: std::cell::RefCell<VecDeque<Recent>> = const { std::cell::RefCell::new(VecDeque::new()) };
    /// Whether reads on this thread check for NaN and infinity now.
    static CHECKING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// While alive, reads on this thread skip the check for NaN and infinity:
/// for passes that gather statistics ahead of the streaming pass, which
/// reads (and checks) every chunk they read.
pub struct Unchecked(bool);

impl Unchecked {
    pub fn new() -> Unchecked {
        Unchecked(CHECKING.replace(false))
    }
}

impl Default for Unchecked {
    fn default() -> Unchecked {
        Unchecked::new()
    }
}

impl Drop for Unchecked {
    fn drop(&mut self) {
        CHECKING.set(self.0);
    }
}

/// A tensor of one input model: (model index, tensor name).
type TensorKey = (usize, String);

/// The dequantization cache's size when the caller names no memory budget.
const DEFAULT_CACHE: u64 = 1 << 30;

impl Inputs {
    /// Opens the files of the models for which `used` is true.
    pub fn open(models: &[Arc<Checkpoint>], used: &[bool]) -> Result<Inputs, String> {
        let mut files = Vec::new();
        for (m, ck) in models.iter().enumerate() {
            let mut fs = Vec::new();
            if used[m] {
                for f in &ck.files {
                    fs.push(File::open(f).map_err(|e| format!("cannot open `{}`: {e}", f.display()))?);
                }
            }
            files.push(fs);
        }
        Ok(Inputs {
            models: models.to_vec(),
            files,
            non_finite: Mutex::new(BTreeSet::new()),
            cache: Mutex::new(VecDeque::new()),
            cache_limit: DEFAULT_CACHE,
            shared: Default::default(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        })
    }

    /// Names the tensors that several nodes read, chunk by chunk in a row.
    pub fn with_shared(mut self, shared: impl IntoIterator<Item = (usize, String)>) -> Inputs {
        self.shared = shared.into_iter().collect();
        self
    }

    /// Caps the bytes of dequantized GGUF tensors kept between reads.
    pub fn with_cache_limit(mut self, bytes: u64) -> Inputs {
        self.cache_limit = bytes;
        self
    }

    /// A GGUF tensor that must be dequantized, whole as f32; `None` for
    /// tensors read as bytes.
    fn dequantized(&self, model: usize, tensor: &str) -> Result<Option<Arc<Vec<f32>>>, String> {
        let ck = &self.models[model];
        let Some(entry) = ck.tensors.get(tensor) else { return Ok(None) };
        let Some(stored) = &entry.gguf else { return Ok(None) };
        let key = (model, tensor.to_string());
        {
            let mut cache = self.cache.lock().unwrap();
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(i).unwrap();
                let vals = hit.1.clone();
                cache.push_back(hit);
                return Ok(Some(vals));
            }
        }
        // Dequantized outside the lock: two workers needing one tensor at
        // once both compute it, which is rarer and cheaper than serializing.
        let vals = super::gguf::dequantize(&self.files[model][entry.file], &entry.info, stored)
            .map_err(|e| format!("cannot read tensor `{tensor}` from `{}`: {e}", ck.files[entry.file].display()))?;
        self.check_finite(model, tensor, &vals);
        let vals = Arc::new(vals);
        let mut cache = self.cache.lock().unwrap();
        let size = |v: &Arc<Vec<f32>>| v.len() as u64 * 4;
        let mut used: u64 = cache.iter().map(|(_, v)| size(v)).sum::<u64>() + size(&vals);
        while used > self.cache_limit && !cache.is_empty() {
            used -= size(&cache.pop_front().unwrap().1);
        }
        cache.push_back((key, vals.clone()));
        Ok(Some(vals))
    }

    /// Reads `len` bytes of a tensor from byte `offset` of its data.
    fn read_bytes(&self, model: usize, tensor: &str, offset: u64, buf: &mut [u8]) -> Result<DType, String> {
        let ck = &self.models[model];
        let entry = ck
            .tensors
            .get(tensor)
            .ok_or_else(|| format!("tensor `{tensor}` is missing from `{}`", ck.root.display()))?;
        self.files[model][entry.file]
            .read_exact_at(buf, entry.info.start + offset)
            .map_err(|e| format!("cannot read tensor `{tensor}` from `{}`: {e}", ck.files[entry.file].display()))?;
        Ok(entry.info.dtype)
    }

    /// A whole tensor's bytes and dtype.
    pub fn bytes(&self, model: usize, tensor: &str) -> Result<(Vec<u8>, DType), String> {
        if let Some(vals) = self.dequantized(model, tensor)? {
            return Ok((super::codec::encode(&vals, DType::F32), DType::F32));
        }
        let info = &self.models[model].tensors.get(tensor).map(|e| e.info.clone());
        let len = info.as_ref().map_or(0, |i| (i.end - i.start) as usize);
        let mut buf = vec![0u8; len];
        let dtype = self.read_bytes(model, tensor, 0, &mut buf)?;
        let mut vals = vec![0f32; buf.len() / dtype.size().max(1)];
        if dtype.is_float() && decode(&buf, dtype, &mut vals).is_ok() {
            self.check_finite(model, tensor, &vals);
        }
        Ok((buf, dtype))
    }

    /// Reads elements `start ..` of a tensor into `out` as f32.
    pub fn read(&self, model: usize, tensor: &str, start: usize, out: &mut [f32]) -> Result<(), String> {
        if self.is_shared(model, tensor) {
            return self.read_with(model, tensor, start, out.len(), |v| out.copy_from_slice(v));
        }
        if let Some(vals) = self.dequantized(model, tensor)? {
            let part = vals.get(start..start + out.len()).ok_or_else(|| format!("read past the end of `{tensor}`"))?;
            out.copy_from_slice(part);
            return Ok(());
        }
        self.read_direct(model, tensor, start, out)
    }

    /// Reads elements `start ..` of a tensor stored as bf16, as their bits,
    /// without decoding or checking them (the one read checks what it
    /// computes from them, and leaves non-finite values to the plain
    /// passes, which check as they read).
    pub fn read_bf16(&self, model: usize, tensor: &str, start: usize, out: &mut [u16]) -> Result<(), String> {
        if self.read_as(model, tensor) != Some(DType::BF16) {
            return Err(format!("tensor `{tensor}` is not stored as bf16"));
        }
        // SAFETY: the bytes of the u16 slice, which any bytes fill validly.
        let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 2) };
        self.read_bytes(model, tensor, start as u64 * 2, bytes)?;
        #[cfg(target_endian = "big")]
        out.iter_mut().for_each(|v| *v = u16::from_le(*v));
        Ok(())
    }

    /// Reads elements `start ..` of a tensor into `out` as f32, past the
    /// per-thread cache of shared chunks: for a reader that reads each
    /// chunk once.
    pub fn read_fresh(&self, model: usize, tensor: &str, start: usize, out: &mut [f32]) -> Result<(), String> {
        if let Some(vals) = self.dequantized(model, tensor)? {
            let part = vals.get(start..start + out.len()).ok_or_else(|| format!("read past the end of `{tensor}`"))?;
            out.copy_from_slice(part);
            return Ok(());
        }
        self.read_direct(model, tensor, start, out)
    }

    /// Hands elements `start .. start + len` of a tensor, as f32, to `f`:
    /// without a copy when they are a chunk read for several nodes.
    pub fn read_with<R>(
        &self,
        model: usize,
        tensor: &str,
        start: usize,
        len: usize,
        f: impl FnOnce(&[f32]) -> R,
    ) -> Result<R, String> {
        if let Some(vals) = self.dequantized(model, tensor)? {
            let part = vals.get(start..start + len).ok_or_else(|| format!("read past the end of `{tensor}`"))?;
            return Ok(f(part));
        }
        if !self.is_shared(model, tensor) {
            thread_local! {
                static VALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
            }
            return VALS.with_borrow_mut(|vals| {
                vals.resize(len, 0.0);
                self.read_direct(model, tensor, start, vals)?;
                Ok(f(vals))
            });
        }
        RECENT_CHUNKS.with_borrow_mut(|recent| {
            let hit = recent.iter().position(|((id, m, t, s), v, _)| {
                *id == self.id && *m == model && *s == start && v.len() == len && t == tensor
            });
            if let Some(i) = hit {
                let (_, vals, checked) = &mut recent[i];
                if !*checked && CHECKING.get() {
                    self.check_finite(model, tensor, vals);
                    *checked = true;
                }
                return Ok(f(vals));
            }
            let mut vals = match recent.len() {
                RECENT => recent.pop_front().map(|(_, v, _)| v).unwrap_or_default(),
                _ => Vec::new(),
            };
            vals.resize(len, 0.0);
            self.read_direct(model, tensor, start, &mut vals)?;
            recent.push_back(((self.id, model, tensor.to_string(), start), vals, CHECKING.get()));
            Ok(f(&recent.back().expect("just pushed").1))
        })
    }

    /// The dtype a tensor's chunks are decoded from (`None` when it is
    /// missing, or dequantized whole).
    pub fn read_as(&self, model: usize, tensor: &str) -> Option<DType> {
        let entry = self.models[model].tensors.get(tensor)?;
        entry.gguf.is_none().then_some(entry.info.dtype)
    }

    /// Whether several nodes read this tensor chunk by chunk in a row.
    fn is_shared(&self, model: usize, tensor: &str) -> bool {
        // Avoid allocating a key for the lookup: most runs share nothing.
        !self.shared.is_empty() && self.shared.contains(&(model, tensor.to_string()))
    }

    /// Reads and decodes elements `start ..` of a tensor stored as bytes,
    /// checking them for NaN and infinity unless [`Unchecked`].
    fn read_direct(&self, model: usize, tensor: &str, start: usize, out: &mut [f32]) -> Result<(), String> {
        let dtype = self.models[model].tensors.get(tensor).map_or(DType::F32, |e| e.info.dtype);
        let size = dtype.size();
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            buf.resize(out.len() * size, 0);
            self.read_bytes(model, tensor, (start * size) as u64, buf)?;
            decode(buf, dtype, out)
        })?;
        if CHECKING.get() {
            self.check_finite(model, tensor, out);
        }
        Ok(())
    }

    fn check_finite(&self, model: usize, tensor: &str, vals: &[f32]) {
        if any_non_finite(vals) {
            let ck = self.models[model].root.display().to_string();
            self.non_finite.lock().unwrap().insert((ck, tensor.to_string()));
        }
    }
}

/// Whether any value is NaN or infinite.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2"))]
fn any_non_finite(vals: &[f32]) -> bool {
    // Exponent bits all set means NaN or infinity. An or over blocks
    // without an early exit vectorizes; `any` stops per element and does not.
    vals.chunks(64).any(|block| block.iter().fold(0u32, |acc, v| acc | (!v.to_bits() & 0x7f80_0000 == 0) as u32) != 0)
}

impl Inputs {
    /// Input tensors seen holding NaN or infinity: (checkpoint, tensor).
    pub fn non_finite(&self) -> Vec<(String, String)> {
        self.non_finite.lock().unwrap().iter().cloned().collect()
    }
}
