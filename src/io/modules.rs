//! Sentence-transformers layout: a checkpoint directory whose `modules.json`
//! lists modules run after the transformer (`1_Pooling`, `2_Dense`,
//! `3_Normalize` ...), each a folder with its own config and, for some
//! (Dense), its own weights.
//!
//! Module weights join the checkpoint's tensor table under their folder's
//! name (`2_Dense/linear.weight`), so that a recipe merges them like any
//! other tensor; the name holds a `/`, which no Hugging Face tensor name
//! does, and the architecture the checker compares leaves them out (a model
//! with modules still merges with one without). The output writes them back
//! into `2_Dense/model.safetensors`; the folders' other files are copied from
//! the origin model.

use std::path::{Path, PathBuf};

/// Files at the top of a sentence-transformers checkpoint that describe its modules.
pub const FILES: &[&str] = &["modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"];

/// Weight files a module folder may hold, in the order sentence-transformers prefers them.
pub const WEIGHT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin"];

/// The module folders `modules.json` in `dir` names (the transformer itself,
/// path `""`, and folders that are absent left out), or none without the file. The error says in words
/// what is wrong with the file.
pub fn folders(dir: &Path) -> Result<Vec<String>, String> {
    let p = dir.join("modules.json");
    let Ok(text) = std::fs::read_to_string(&p) else { return Ok(Vec::new()) };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))?;
    let list = v.as_array().ok_or("modules.json is not a list of modules")?;
    let mut out = Vec::new();
    for m in list {
        let path = m.get("path").and_then(|p| p.as_str()).ok_or("a module has no string `path`")?;
        if path.is_empty() {
            continue;
        }
        // A module path is a folder in the checkpoint: it cannot point outside it.
        if path.contains(['/', '\\']) || path == "." || path == ".." {
            return Err(format!("module path `{path}` is not a plain folder name in the checkpoint directory"));
        }
        // A module without files (`Normalize`) may have no folder at all:
        // packaging drops empty folders, and sentence-transformers loads such
        // a module without one. There is nothing to read or copy from it.
        if !dir.join(path).is_dir() {
            continue;
        }
        out.push(path.to_string());
    }
    Ok(out)
}

/// The weight file of a module folder, if it has one.
pub fn weight_file(folder: &Path) -> Option<PathBuf> {
    WEIGHT_FILES.iter().map(|f| folder.join(f)).find(|p| p.is_file())
}

/// The module folder of a module tensor name (`2_Dense/linear.weight` -> `2_Dense`).
pub fn folder_of(tensor: &str) -> Option<&str> {
    tensor.split_once('/').map(|(f, _)| f)
}
