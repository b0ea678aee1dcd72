//! Where an output may go. Two rules keep a run from destroying files:
//!
//! - an output never overlaps what the recipe reads (a model, an adapter, an
//!   import, the recipe itself): not the same path, not a directory holding
//!   one, not a path inside one, after resolving symbolic links;
//! - `--force` replaces only what fuse wrote: an empty directory, or one whose
//!   every file, in it or in its folders, is listed in the [`MARKER`]
//!   manifest that fuse writes into each output (outputs written before the manifest existed are recognised
//!   by their model card and file names).
//!
//! An output path ending in `.gguf` is one file: `--force` replaces it only
//! when its metadata holds fuse's mark (`general.fuse.written_by`, see
//! `gguf_write.rs`).
//!
//! Both are checked before anything is computed, and the replacement rule
//! again just before the old output is swapped out (see `writer.rs`).

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The manifest fuse writes into every output: which files it wrote.
pub const MARKER: &str = "fuse-output.json";

/// The manifest's contents for an output made of `files` (itself included).
pub fn manifest(files: &[String]) -> String {
    let mut files: Vec<&str> = files.iter().map(String::as_str).chain([MARKER]).collect();
    files.sort_unstable();
    files.dedup();
    let v = serde_json::json!({
        "written_by": format!("fuse {}", env!("CARGO_PKG_VERSION")),
        "note": "fuse run --force replaces this directory only while it holds just these files",
        "files": files,
    });
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

/// `p` made absolute with every symbolic link resolved: the longest prefix
/// that exists is canonicalized, the rest (which does not exist yet) is
/// appended with `.` and `..` folded.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut out) = existing.canonicalize() {
            for part in rest.iter().rev() {
                push_lexical(&mut out, Path::new(part));
            }
            return out;
        }
        match existing.components().next_back() {
            Some(Component::Normal(_) | Component::CurDir | Component::ParentDir) => {
                rest.push(existing.components().next_back().unwrap().as_os_str().to_owned());
                existing.pop();
            }
            _ => return abs,
        }
    }
}

fn push_lexical(out: &mut PathBuf, part: &Path) {
    for c in part.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
}

/// How an output path relates to an input path (both resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// The output is the input.
    Same,
    /// The output is a directory above the input.
    Contains,
    /// The output would be inside the input's directory.
    Inside,
}

impl Overlap {
    pub fn of(output: &Path, input: &Path) -> Option<Overlap> {
        if output == input {
            Some(Overlap::Same)
        } else if input.starts_with(output) {
            Some(Overlap::Contains)
        } else if output.starts_with(input) {
            Some(Overlap::Inside)
        } else {
            None
        }
    }

    /// "is", "contains", "is inside", for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Overlap::Same => "is",
            Overlap::Contains => "contains",
            Overlap::Inside => "is inside",
        }
    }
}

/// Why an existing path may not be replaced.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Not empty, and `--force` was not given.
    NotEmpty,
    /// A file (or something else that is not a directory).
    NotADirectory,
    /// A symbolic link: fuse would replace the link, not what it points to.
    Link,
    /// Entries fuse did not write (names; directories end in `/`).
    Foreign(Vec<String>),
    /// A `.gguf` file exists, and `--force` was not given.
    FileExists,
    /// A `.gguf` file that fuse did not write (or a directory where one should go).
    ForeignFile,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotEmpty => write!(f, "exists and is not empty"),
            Refusal::FileExists => write!(f, "exists"),
            Refusal::ForeignFile => write!(f, "is not a GGUF file fuse wrote"),
            Refusal::NotADirectory => write!(f, "exists and is not a directory"),
            Refusal::Link => write!(f, "is a symbolic link"),
            Refusal::Foreign(names) => {
                write!(f, "holds {} that fuse did not write: {}", count(names.len()), list(names))
            }
        }
    }
}

impl Refusal {
    /// The way out, for a help line.
    pub fn help(&self) -> &'static str {
        match self {
            Refusal::NotEmpty => {
                "pass --force to replace it (only outputs fuse wrote are replaced), or choose another path"
            }
            Refusal::FileExists => {
                "pass --force to replace it (only GGUF files fuse wrote are replaced), or choose another path"
            }
            Refusal::NotADirectory | Refusal::Link | Refusal::ForeignFile => "choose another output path",
            Refusal::Foreign(_) => {
                "--force replaces only outputs fuse wrote; choose another output path, or remove those files yourself"
            }
        }
    }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

/// The first few names, then how many more.
pub fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Whether a run may write its output at `target`, replacing what is there.
pub fn may_replace(target: &Path, force: bool) -> Result<(), Refusal> {
    let Ok(meta) = fs::symlink_metadata(target) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(Refusal::Link);
    }
    if target.extension().is_some_and(|e| e == "gguf") {
        return match (meta.is_file(), force) {
            (true, false) => Err(Refusal::FileExists),
            (true, true) if super::gguf_write::written_by_fuse(target) => Ok(()),
            _ => Err(Refusal::ForeignFile),
        };
    }
    if !meta.is_dir() {
        return Err(Refusal::NotADirectory);
    }
    let entries = entries(target);
    if entries.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(Refusal::NotEmpty);
    }
    let foreign: Vec<String> = match written_by_fuse(target) {
        Some(ours) => entries.into_iter().filter(|e| !ours.contains(e)).collect(),
        None => entries,
    };
    if foreign.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Foreign(foreign))
    }
}

/// A directory's files, sorted, as paths relative to it (`1_Pooling/config.json`:
/// outputs hold sentence-transformers module folders); an empty folder is
/// listed as its name with a `/`. Links are entries, never followed.
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    collect(dir, "", &mut out);
    out.sort();
    out
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for e in read.flatten() {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let before = out.len();
            collect(&e.path(), &format!("{name}/"), out);
            if out.len() == before {
                out.push(name + "/");
            }
        } else {
            out.push(name);
        }
    }
}

/// The file names fuse wrote into `dir`, if it is a fuse output: from the
/// manifest, or, for outputs older than the manifest, from the model card.
fn written_by_fuse(dir: &Path) -> Option<BTreeSet<String>> {
    if let Ok(text) = fs::read_to_string(dir.join(MARKER)) {
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let files = v.get("files")?.as_array()?;
        return Some(files.iter().filter_map(|f| f.as_str()).map(str::to_string).collect());
    }
    let card = fs::read_to_string(dir.join("README.md")).ok()?;
    let ours = card.starts_with("---\nlibrary_name: transformers\ntags:\n- merge\n- fuse\n---\n# Merged model\n")
        || (card.starts_with("# LoRA adapter (rank ") && card.contains("Extracted by fuse"));
    if !ours {
        return None;
    }
    let known = |n: &str| {
        super::COPIED_FILES.contains(&n)
            || ["README.md", "config.json", "model.safetensors.index.json", "adapter_config.json"].contains(&n)
            || (n.ends_with(".safetensors") && (n.starts_with("model") || n.starts_with("adapter_model")))
    };
    Some(entries(dir).into_iter().filter(|e| known(e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_folds_parents_of_paths_that_do_not_exist() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        assert_eq!(resolve(&d.path().join("a/b/../c")), root.join("a/c"));
        assert_eq!(resolve(&d.path().join("x/..")), root);
        std::os::unix::fs::symlink(d.path(), d.path().join("link")).unwrap();
        assert_eq!(resolve(&d.path().join("link/new")), root.join("new"));
    }

    #[test]
    fn overlaps() {
        let (a, b) = (Path::new("/w/models"), Path::new("/w/models/base"));
        assert_eq!(Overlap::of(a, b), Some(Overlap::Contains));
        assert_eq!(Overlap::of(b, a), Some(Overlap::Inside));
        assert_eq!(Overlap::of(b, b), Some(Overlap::Same));
        assert_eq!(Overlap::of(Path::new("/w/models2"), b), None);
    }

    #[test]
    fn only_fuse_outputs_are_replaced() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("out");
        assert_eq!(may_replace(&t, false), Ok(()));
        fs::create_dir(&t).unwrap();
        assert_eq!(may_replace(&t, false), Ok(()));
        fs::write(t.join("notes.txt"), "mine").unwrap();
        assert_eq!(may_replace(&t, false), Err(Refusal::NotEmpty));
        assert_eq!(may_replace(&t, true), Err(Refusal::Foreign(vec!["notes.txt".into()])));
        fs::write(t.join(MARKER), manifest(&["notes.txt".into()])).unwrap();
        assert_eq!(may_replace(&t, true), Ok(()));
        fs::create_dir(t.join("base")).unwrap();
        assert_eq!(may_replace(&t, true), Err(Refusal::Foreign(vec!["base/".into()])));
        // Nested files count one by one: listed ones are fuse's, others are not.
        fs::write(t.join("base/config.json"), "{}").unwrap();
        fs::write(t.join(MARKER), manifest(&["notes.txt".into(), "base/config.json".into()])).unwrap();
        assert_eq!(may_replace(&t, true), Ok(()));
        fs::write(t.join("base/mine.txt"), "mine").unwrap();
        assert_eq!(may_replace(&t, true), Err(Refusal::Foreign(vec!["base/mine.txt".into()])));
    }
}
