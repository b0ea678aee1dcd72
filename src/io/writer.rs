//! Writing a checkpoint: plan the shard layout before any data exists, then
//! let workers write each tensor straight to its final offset, and make the
//! directory appear atomically at the end.
//!
//! Everything is written into a hidden sibling directory
//! (`.NAME.fuse-partial-PID-...`), locked while in use, that is renamed onto
//! the target only when complete; an unfinished one is removed on drop, and
//! stale ones left by a killed run (their lock gone with it) are cleaned by
//! the next run to the same target. What may be
//! replaced is decided in `target.rs`; every output lists the files it holds
//! in its manifest, written last.

use super::safetensors::DType;
use super::target;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The largest shard an output is split into unless `save(..., shard=...)`
/// says otherwise (Hugging Face's `max_shard_size` default).
pub const DEFAULT_SHARD: u64 = 5_000_000_000;

/// One tensor of the output: its name, shape and stored dtype.
#[derive(Clone, Debug, PartialEq)]
pub struct OutTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl OutTensor {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// Where tensor `i` of the plan goes: shard index and absolute byte offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slot {
    pub shard: usize,
    pub offset: u64,
}

/// The whole output layout: shard files with their headers, and a slot per tensor.
#[derive(Clone, Debug)]
pub struct Layout {
    pub shards: Vec<Shard>,
    pub slots: Vec<Slot>,
    pub tensors: Vec<OutTensor>,
}

#[derive(Clone, Debug)]
pub struct Shard {
    pub file_name: String,
    pub header: Vec<u8>,
    pub size: u64,
    pub tensors: Vec<usize>,
}

impl Layout {
    /// Splits `tensors` (in order) into shards of at most `max_shard` bytes of
    /// data (a single larger tensor gets a shard of its own).
    pub fn plan(tensors: Vec<OutTensor>, max_shard: u64) -> Layout {
        Layout::plan_named(tensors, max_shard, "model")
    }

    /// As [`Layout::plan`], with files named `STEM.safetensors` (PEFT writes
    /// `adapter_model.safetensors`). Tensors named `FOLDER/name`
    /// (sentence-transformers module weights, see `modules.rs`) go, as
    /// `name`, into one `FOLDER/model.safetensors` per folder.
    pub fn plan_named(tensors: Vec<OutTensor>, max_shard: u64, stem: &str) -> Layout {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        let mut folders: Vec<(String, Vec<usize>)> = Vec::new();
        let mut used = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            if let Some(folder) = super::modules::folder_of(&t.name) {
                match folders.iter_mut().find(|(f, _)| f == folder) {
                    Some((_, members)) => members.push(i),
                    None => folders.push((folder.to_string(), vec![i])),
                }
                continue;
            }
            if used > 0 && used + t.bytes() > max_shard {
                groups.push(Vec::new());
                used = 0;
            }
            groups.last_mut().unwrap().push(i);
            used += t.bytes();
        }
        let n = groups.len();
        let named = groups.into_iter().enumerate().map(|(s, members)| {
            let file_name = if n == 1 {
                format!("{stem}.safetensors")
            } else {
                format!("{stem}-{:05}-of-{:05}.safetensors", s + 1, n)
            };
            (file_name, members)
        });
        let folders = folders.into_iter().map(|(f, members)| (format!("{f}/model.safetensors"), members));
        let mut slots = vec![Slot { shard: 0, offset: 0 }; tensors.len()];
        let shards = named
            .chain(folders)
            .enumerate()
            .map(|(s, (file_name, members))| {
                let mut json = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
                let mut off = 0u64;
                for &i in &members {
                    let t = &tensors[i];
                    let end = off + t.bytes();
                    let name = t.name.split_once('/').map_or(t.name.as_str(), |(_, n)| n);
                    json.push_str(&format!(
                        ",{}:{{\"dtype\":\"{}\",\"shape\":{:?},\"data_offsets\":[{off},{end}]}}",
                        serde_json::Value::String(name.to_string()),
                        t.dtype.as_str(),
                        t.shape
                    ));
                    off = end;
                }
                json.push('}');
                // Pad so that the data section starts 8-byte aligned.
                while (json.len() + 8) % 8 != 0 {
                    json.push(' ');
                }
                let data_start = 8 + json.len() as u64;
                let mut header = (json.len() as u64).to_le_bytes().to_vec();
                header.extend_from_slice(json.as_bytes());
                let mut pos = data_start;
                for &i in &members {
                    slots[i] = Slot { shard: s, offset: pos };
                    pos += tensors[i].bytes();
                }
                Shard { file_name, header, size: pos, tensors: members }
            })
            .collect();
        Layout { shards, slots, tensors }
    }

    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(OutTensor::bytes).sum()
    }

    /// model.safetensors.index.json, for outputs of more than one shard.
    pub fn index_json(&self) -> Option<String> {
        let main: Vec<&Shard> = self.shards.iter().filter(|s| !s.file_name.contains('/')).collect();
        if main.len() < 2 {
            return None;
        }
        let mut map = serde_json::Map::new();
        for shard in main {
            for &i in &shard.tensors {
                map.insert(self.tensors[i].name.clone(), shard.file_name.clone().into());
            }
        }
        let total: u64 = self.tensors.iter().filter(|t| !t.name.contains('/')).map(OutTensor::bytes).sum();
        let v = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": map });
        Some(serde_json::to_string_pretty(&v).unwrap())
    }
}

/// An output directory being written. Dropped without [`OutputDir::commit`],
/// it removes everything it wrote.
pub struct OutputDir {
    target: PathBuf,
    partial: PathBuf,
    /// Held while the partial directory exists: it tells other runs'
    /// clean-up that the directory is in use (see [`clean_stale`]).
    lock: Option<File>,
    files: Vec<File>,
    /// Every file written so far, for the manifest.
    names: Mutex<Vec<String>>,
    committed: bool,
}

impl OutputDir {
    /// Checks the target, creates the partial directory and every shard file
    /// at its final size with its header written.
    pub fn create(target: &Path, force: bool, layout: &Layout) -> Result<OutputDir, String> {
        target::may_replace(target, force).map_err(|r| format!("`{}` {r}", target.display()))?;
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
        let name = target.file_name().and_then(|n| n.to_str()).ok_or("the output path has no directory name")?;
        clean_stale(parent, name);
        let (partial, lock) = create_locked(parent, name, |p| fs::create_dir(p))?;
        let mut out = OutputDir {
            target: target.to_path_buf(),
            partial,
            lock: Some(lock),
            files: Vec::new(),
            names: Mutex::new(Vec::new()),
            committed: false,
        };
        for shard in &layout.shards {
            let path = out.partial.join(&shard.file_name);
            out.make_parent(&path)?;
            // Read too: a tensor written in one read of its inputs patches
            // what it wrote (see `exec/stream/one_read.rs`).
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| format!("cannot create `{}`: {e}", path.display()))?;
            reserve(&f, shard.size)
                .map_err(|e| format!("cannot reserve {} bytes for `{}`: {e}", shard.size, path.display()))?;
            f.write_all_at(&shard.header, 0).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            out.files.push(f);
            out.names.get_mut().unwrap().push(shard.file_name.clone());
        }
        Ok(out)
    }

    /// Writes bytes at an absolute offset of a shard. Safe to call from many
    /// threads at once for disjoint ranges.
    pub fn write_at(&self, shard: usize, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.files[shard].write_all_at(bytes, offset)
    }

    /// Reads bytes back from an absolute offset of a shard.
    pub fn read_at(&self, shard: usize, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.files[shard].read_exact_at(buf, offset)
    }

    /// Starts writing a finished range of a shard to disk, without waiting:
    /// the flush at the end then has only the last tensors left to wait for,
    /// instead of the whole output after the last byte is computed.
    pub fn start_writeback(&self, shard: usize, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open descriptor; failure only
            // means the final flush does the work.
            unsafe {
                libc::sync_file_range(
                    self.files[shard].as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (shard, offset, len);
    }

    /// Creates the folders above `path` (a file in the partial directory):
    /// module outputs such as `2_Dense/model.safetensors`.
    fn make_parent(&self, path: &Path) -> Result<(), String> {
        match path.parent() {
            Some(dir) if dir != self.partial => {
                fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// Writes a whole small file (config.json, the model card ...); `name`
    /// may name a file in a folder (`1_Pooling/config.json`).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), String> {
        let p = self.partial.join(name);
        self.make_parent(&p)?;
        fs::write(&p, contents).map_err(|e| format!("cannot write `{}`: {e}", p.display()))?;
        self.names.lock().unwrap().push(name.to_string());
        Ok(())
    }

    /// Creates an empty folder (a module folder that holds no files, such as
    /// sentence-transformers' `2_Normalize`); the manifest lists it as `name/`.
    pub fn make_dir(&self, name: &str) -> Result<(), String> {
        let p = self.partial.join(name);
        fs::create_dir_all(&p).map_err(|e| format!("cannot create `{}`: {e}", p.display()))?;
        self.names.lock().unwrap().push(format!("{name}/"));
        Ok(())
    }

    /// Copies a file in, under `name` (which may name a file in a folder).
    pub fn copy_file(&self, from: &Path, name: &str) -> Result<(), String> {
        let p = self.partial.join(name);
        self.make_parent(&p)?;
        fs::copy(from, &p).map_err(|e| format!("cannot copy `{}`: {e}", from.display()))?;
        self.names.lock().unwrap().push(name.to_string());
        Ok(())
    }

    /// Flushes everything and moves the finished directory onto the target.
    pub fn commit(mut self) -> Result<PathBuf, String> {
        let names = std::mem::take(self.names.get_mut().unwrap());
        self.write_file(target::MARKER, target::manifest(&names).as_bytes())?;
        for f in &self.files {
            f.sync_all().map_err(|e| format!("cannot flush output: {e}"))?;
        }
        // Another run may replace the target at the same time: move whatever
        // is there aside and retry, so that the last run to finish wins and
        // the target is always one complete output.
        let name = self.target.file_name().unwrap().to_string_lossy().into_owned();
        let mut moved_aside = Vec::new();
        let mut result = Err(String::new());
        for attempt in 0..16 {
            match fs::rename(&self.partial, &self.target) {
                Ok(()) => {
                    self.lock = None;
                    result = Ok(self.target.clone());
                    break;
                }
                Err(e) if self.target.exists() => {
                    // Checked again here: files may have appeared since `create`.
                    if let Err(r) = target::may_replace(&self.target, true) {
                        result = Err(format!("`{}` {r}; nothing was replaced", self.target.display()));
                        break;
                    }
                    let old = self.partial.with_file_name(format!(".{name}.fuse-old-{}-{attempt}", unique()));
                    // Locked before it is moved, so no clean-up removes it while we may still put it back.
                    let held = lock(&self.target).ok();
                    match fs::rename(&self.target, &old) {
                        Ok(()) => moved_aside.push((old, held)),
                        Err(e2) if e2.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e2) => {
                            result =
                                Err(format!("cannot move the old `{}` aside: {e2} (after {e})", self.target.display()));
                            break;
                        }
                    }
                }
                Err(e) => {
                    result = Err(format!("cannot move the output into place at `{}`: {e}", self.target.display()));
                    break;
                }
            }
        }
        if let Ok(p) = &result {
            self.committed = true;
            for (old, _held) in moved_aside {
                let _ = fs::remove_dir_all(old);
            }
            return Ok(p.clone());
        }
        // Put back what we moved, if the target is still free.
        if let Some((old, _held)) = moved_aside.pop() {
            let _ = fs::rename(old, &self.target);
        }
        Err(result.unwrap_err())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// Sizes a shard and reserves its blocks, so that a full disk is reported
/// before anything is computed rather than halfway through.
fn reserve(f: &File, size: u64) -> std::io::Result<()> {
    f.set_len(size)?;
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor and a non-negative range.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) };
    match rc {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Removes partial outputs for `name` that no run holds any more. A run
/// holds an exclusive `flock` on its partial directory (and on an old output
/// it moves aside) for as long as it uses it; a lock dies with its process,
/// whatever PID namespace or machine that process ran in, so a directory
/// whose lock can be taken is stale. (Checking PIDs instead would delete a
/// live run's directory seen from another PID namespace on a shared volume.)
pub(crate) fn clean_stale(parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let f = file_name.to_string_lossy();
        let ours = [".fuse-partial-", ".fuse-old-"].iter().any(|tag| f.starts_with(&format!(".{name}{tag}")));
        if ours {
            if let Ok(_held) = lock(&e.path()) {
                // A GGUF output's partial is a file, not a directory.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir_all(e.path());
                } else {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Takes an exclusive lock on a directory without waiting; fails when
/// another open file description holds one.
pub(crate) fn lock(dir: &Path) -> std::io::Result<File> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir)?;
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

/// Creates `.NAME.fuse-partial-UNIQUE` in `parent` with `make` and locks it.
/// Another run's clean-up may take an unlocked partial path between the two
/// steps and remove it; then the lock fails and a fresh name is tried.
pub(crate) fn create_locked(
    parent: &Path,
    name: &str,
    make: impl Fn(&Path) -> std::io::Result<()>,
) -> Result<(PathBuf, File), String> {
    let mut last = None;
    for _ in 0..16 {
        let partial = parent.join(format!(".{name}.fuse-partial-{}", unique()));
        make(&partial).map_err(|e| format!("cannot create `{}`: {e}", partial.display()))?;
        match lock(&partial) {
            Ok(held) => return Ok((partial, held)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::WouldBlock => {
                last = Some(e);
            }
            Err(e) => return Err(format!("cannot lock `{}`: {e}", partial.display())),
        }
    }
    Err(format!("cannot lock a partial output beside `{name}`: {}", last.map_or(String::new(), |e| e.to_string())))
}

/// A name part unique to this run: the PID alone repeats across PID namespaces.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed))
}

/// Parses a size such as `5GB`, `500MB`, `2GiB` or a plain byte count.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = n * mult;
    (v >= 1.0 && v.is_finite()).then_some(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn shards_split_by_size_and_align() {
        let t = |n: &str, k| OutTensor { name: n.into(), shape: vec![k], dtype: DType::F32 };
        let l = Layout::plan(vec![t("a", 10), t("b", 10), t("c", 30)], 80);
        assert_eq!(l.shards.len(), 2);
        assert_eq!(l.shards[0].file_name, "model-00001-of-00002.safetensors");
        assert_eq!(l.shards[0].tensors, vec![0, 1]);
        assert_eq!(l.slots[0].offset % 8, 0);
        assert_eq!(l.slots[1].offset, l.slots[0].offset + 40);
        assert!(l.index_json().unwrap().contains("\"c\": \"model-00002-of-00002.safetensors\""));
    }
}
