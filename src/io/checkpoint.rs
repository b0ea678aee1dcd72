//! Opening a checkpoint: resolve `model("...")` to files, read config.json and
//! the safetensors headers, and describe the architecture. Never reads tensor
//! data and never touches the network.

use super::safetensors::{read_header, DType, TensorInfo};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// One tensor of a checkpoint: which file holds it and where.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub file: usize,
    pub info: TensorInfo,
    /// For a GGUF tensor that is not plain bytes (quantized, or rows to
    /// reorder): how to turn its data into the Hugging Face tensor.
    pub gguf: Option<super::gguf::Stored>,
}

/// A checkpoint on disk, opened by its headers.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// What the user named, resolved (a directory, or a .safetensors, .bin or .gguf file).
    pub root: PathBuf,
    /// The directory holding config.json and tokenizer files, if any.
    pub dir: Option<PathBuf>,
    /// config.json, or for a GGUF file the equivalent built from its metadata.
    pub config: Option<Value>,
    /// The weight files, in shard order, then sentence-transformers module weights.
    pub files: Vec<PathBuf>,
    pub tensors: BTreeMap<String, TensorEntry>,
}

/// Why a checkpoint could not be opened. `NotFound` is the user's path being
/// wrong; `Bad` is a file that exists but is not what it should be.
#[derive(Debug, Clone)]
pub enum OpenError {
    NotFound { what: String, help: String },
    Bad { file: PathBuf, what: String },
}

impl Checkpoint {
    /// Opens `spec` (a path, or `hf:org/name[@revision]`) relative to `base_dir`.
    pub fn open(spec: &str, base_dir: &Path) -> Result<Checkpoint, OpenError> {
        let root = if let Some(repo) = spec.strip_prefix("hf:") {
            resolve_hf(repo)?
        } else {
            let p = base_dir.join(spec);
            if !p.exists() {
                return Err(OpenError::NotFound {
                    what: format!("no file or directory at `{}`", p.display()),
                    help: "model paths are relative to the recipe file; for a model in the local Hugging Face cache write `hf:org/name`".into(),
                });
            }
            p
        };
        Checkpoint::open_path(&root)
    }

    /// Opens a checkpoint directory or a single .safetensors file. Headers
    /// are cached per process and reread only when a file changes (the
    /// language server and the REPL check on every keystroke or line).
    pub fn open_path(root: &Path) -> Result<Checkpoint, OpenError> {
        type Cache = Mutex<HashMap<PathBuf, (Vec<(PathBuf, Option<(SystemTime, u64)>)>, Checkpoint)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let stamp =
            |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        let cache = CACHE.get_or_init(Default::default);
        if let Some((stamps, ck)) = cache.lock().unwrap().get(root) {
            if stamps.iter().all(|(p, s)| stamp(p) == *s) {
                return Ok(ck.clone());
            }
        }
        let ck = Checkpoint::read(root)?;
        let mut watched: Vec<PathBuf> = ck.files.clone();
        if let Some(d) = &ck.dir {
            let meta = ["config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"];
            watched.extend(meta.iter().map(|f| d.join(f)));
        }
        let stamps = watched.into_iter().map(|p| {
            let s = stamp(&p);
            (p, s)
        });
        cache.lock().unwrap().insert(root.to_path_buf(), (stamps.collect(), ck.clone()));
        Ok(ck)
    }

    fn read(root: &Path) -> Result<Checkpoint, OpenError> {
        let bad = |file: &Path, what: String| OpenError::Bad { file: file.to_path_buf(), what };
        let mut weight_map = None;
        let (dir, files) = if root.is_file() {
            (None, vec![root.to_path_buf()])
        } else {
            let index = root.join("model.safetensors.index.json");
            let single = root.join("model.safetensors");
            let bin = root.join("pytorch_model.bin");
            let bin_index = root.join("pytorch_model.bin.index.json");
            let files = if index.is_file() || bin_index.is_file() {
                // Safetensors first: a directory holding both formats is read once.
                let index = if index.is_file() { index } else { bin_index };
                let (files, map) = shard_files(&index)?;
                weight_map = Some((index, map));
                files
            } else if single.is_file() {
                vec![single]
            } else if bin.is_file() {
                vec![bin]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(root)
                    .map_err(|e| bad(root, format!("cannot list directory: {e}")))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                    .collect();
                found.sort();
                if found.is_empty() {
                    return Err(OpenError::NotFound {
                        what: format!(
                            "`{}` holds no model.safetensors, no model.safetensors.index.json, no pytorch_model.bin (or its index) and no .safetensors file",
                            root.display()
                        ),
                        help: "point model(...) at a Hugging Face checkpoint directory or a .safetensors file".into(),
                    });
                }
                found
            };
            (Some(root.to_path_buf()), files)
        };
        let mut config = match &dir {
            Some(d) if !d.join("config.json").exists() => {
                return Err(bad(&d.join("config.json"), "the checkpoint directory has no config.json".into()))
            }
            Some(d) => {
                let p = d.join("config.json");
                let text = std::fs::read_to_string(&p).map_err(|e| bad(&p, format!("cannot read: {e}")))?;
                let v: Value = serde_json::from_str(&text).map_err(|e| bad(&p, format!("not valid JSON: {e}")))?;
                if !v.is_object() {
                    return Err(bad(&p, "config.json is not a JSON object".into()));
                }
                Some(v)
            }
            _ => None,
        };
        // Sentence-transformers module weights, named `FOLDER/tensor` (see `modules.rs`).
        let mut files = files;
        let main_files = files.len();
        let mut prefixes = vec![String::new(); files.len()];
        if let Some(d) = &dir {
            let folders = super::modules::folders(d).map_err(|what| bad(&d.join("modules.json"), what))?;
            for folder in folders {
                if let Some(w) = super::modules::weight_file(&d.join(&folder)) {
                    files.push(w);
                    prefixes.push(format!("{folder}/"));
                }
            }
        }
        let mut tensors = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            if f.extension().is_some_and(|e| e == "gguf") {
                let read = super::gguf::read(f).map_err(|what| bad(f, what))?;
                config = config.or(Some(read.config));
                for (name, info, gguf) in read.tensors {
                    tensors.insert(name, TensorEntry { file: i, info, gguf });
                }
                continue;
            }
            let table = if f.extension().is_some_and(|e| e == "bin" || e == "pt" || e == "pth") {
                super::pickle::read_bin(f).map_err(|what| bad(f, what))?
            } else {
                read_header(f).map_err(|what| bad(f, what))?.tensors
            };
            for (name, info) in table {
                let name = format!("{}{name}", prefixes[i]);
                if tensors.contains_key(&name) {
                    return Err(bad(f, format!("tensor `{name}` appears in more than one shard")));
                }
                tensors.insert(name, TensorEntry { file: i, info, gguf: None });
            }
        }
        if let Some((index, map)) = weight_map {
            for (tensor, file) in map {
                let found = tensors
                    .get(&tensor)
                    .map(|t| t.file < main_files && files[t.file].file_name() == Some(std::ffi::OsStr::new(&file)));
                if found != Some(true) {
                    return Err(bad(
                        &index,
                        format!("says tensor `{tensor}` is in `{file}`, but that shard has no such tensor"),
                    ));
                }
            }
        }
        Ok(Checkpoint { root: root.to_path_buf(), dir, config, files, tensors })
    }

    /// Layer count: config.json's `num_hidden_layers`, else one past the
    /// highest layer index in the tensor names.
    pub fn n_layers(&self) -> usize {
        self.config
            .as_ref()
            .and_then(|c| c.get("num_hidden_layers"))
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or_else(|| self.tensors.keys().filter_map(|n| layer_of(n)).max().map_or(0, |m| m + 1))
    }

    /// The architecture name from config.json, e.g. `LlamaForCausalLM`.
    pub fn architecture(&self) -> Option<&str> {
        self.config.as_ref()?.get("architectures")?.get(0)?.as_str()
    }

    pub fn dtype_counts(&self) -> BTreeMap<DType, usize> {
        let mut m = BTreeMap::new();
        for t in self.tensors.values() {
            *m.entry(t.info.dtype).or_default() += t.info.numel();
        }
        m
    }
}

/// The tokenizer.json that goes with a checkpoint: in its directory, or for
/// a single file (a .gguf, a .safetensors) beside it. `None` when there is none.
pub fn tokenizer_path(ck: &Checkpoint) -> Option<PathBuf> {
    let dir = ck.dir.clone().or_else(|| ck.root.parent().map(Path::to_path_buf))?;
    Some(dir.join("tokenizer.json")).filter(|p| p.is_file())
}

/// Components that name the encoder towers of multimodal models (Gemma 3,
/// LLaVA, Qwen2-VL, Llama 4, audio models). Their blocks are not the layers
/// the recipe slices and stacks: those are the language model's, counted by
/// `text_config.num_hidden_layers`. A tower's tensors travel whole, like
/// embeddings, from the model that the output's non-layer tensors come from.
const TOWERS: &[&str] = &["vision_tower", "vision_model", "visual", "audio_tower", "audio_model", "vision_encoder"];

/// The layer index in a tensor name such as `model.layers.3.mlp.up_proj.weight`
/// (none for the blocks of a multimodal model's encoder towers, see `TOWERS`).
pub fn layer_of(name: &str) -> Option<usize> {
    if name.split('.').any(|p| TOWERS.contains(&p)) {
        return None;
    }
    let mut parts = name.split('.');
    let mut prev = parts.next()?;
    for p in parts {
        if matches!(prev, "layers" | "h" | "blocks" | "layer") {
            if let Ok(i) = p.parse() {
                return Some(i);
            }
        }
        prev = p;
    }
    None
}

/// An index's tensor-to-shard-file map.
type WeightMap = Vec<(String, String)>;

/// `name` with its layer index replaced (`model.layers.3.x` -> `model.layers.7.x`).
pub fn with_layer(name: &str, layer: usize) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let mut out: Vec<String> = Vec::with_capacity(parts.len());
    let mut done = false;
    for (i, p) in parts.iter().enumerate() {
        if !done && i > 0 && matches!(parts[i - 1], "layers" | "h" | "blocks" | "layer") && p.parse::<usize>().is_ok() {
            out.push(layer.to_string());
            done = true;
        } else {
            out.push(p.to_string());
        }
    }
    out.join(".")
}

/// The shard files an index names, and its tensor-to-file map.
fn shard_files(index: &Path) -> Result<(Vec<PathBuf>, WeightMap), OpenError> {
    let bad = |what: String| OpenError::Bad { file: index.to_path_buf(), what };
    let text = std::fs::read_to_string(index).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("no `weight_map` object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut names: Vec<&str> = Vec::new();
    let mut pairs = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| bad(format!("`{tensor}` maps to a non-string")))?;
        // A shard name is a plain file name: an index cannot point outside its directory.
        if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
            return Err(bad(format!("shard name `{file}` is not a plain file name in the checkpoint directory")));
        }
        if !names.contains(&file) {
            names.push(file);
        }
        pairs.push((tensor.clone(), file.to_string()));
    }
    names.sort();
    let files = names
        .into_iter()
        .map(|n| {
            let p = dir.join(n);
            if p.is_file() {
                Ok(p)
            } else {
                Err(bad(format!("names shard `{n}`, which does not exist")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((files, pairs))
}

/// Finds `org/name[@revision]` in the local Hugging Face hub cache.
fn resolve_hf(repo: &str) -> Result<PathBuf, OpenError> {
    let (name, rev) = repo.split_once('@').unwrap_or((repo, "main"));
    let cache = hf_cache_dir();
    let repo_dir = cache.join(format!("models--{}", name.replace('/', "--")));
    let not_found = |what: String| OpenError::NotFound {
        what,
        help: format!(
            "fuse never downloads; fetch it first, e.g. `huggingface-cli download {name}`, or set HF_HUB_CACHE"
        ),
    };
    if !repo_dir.is_dir() {
        return Err(not_found(format!("`{name}` is not in the local Hugging Face cache at `{}`", cache.display())));
    }
    let snapshots = repo_dir.join("snapshots");
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(rev))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| rev.to_string());
    let snap = snapshots.join(&commit);
    if snap.is_dir() {
        return Ok(snap);
    }
    Err(not_found(format!("revision `{rev}` of `{name}` is not in the cache at `{}`", repo_dir.display())))
}

/// HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// Tensors whose first dimension is the vocabulary: input embedding and output head.
pub fn is_vocab_tensor(name: &str) -> bool {
    name.contains("embed_tokens")
        || name.starts_with("lm_head")
        || name.contains("wte")
        || name.contains("output.weight")
}

#[cfg(test)]
mod tests {
    use super::{layer_of, with_layer};

    #[test]
    fn finds_layer_indices() {
        assert_eq!(layer_of("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_of("transformer.h.3.attn.c_attn.weight"), Some(3));
        assert_eq!(layer_of("model.embed_tokens.weight"), None);
        assert_eq!(layer_of("lm_head.weight"), None);
        assert_eq!(with_layer("model.layers.3.mlp.up_proj.weight", 12), "model.layers.12.mlp.up_proj.weight");
    }
}
