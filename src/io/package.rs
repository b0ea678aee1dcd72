//! What an output checkpoint holds besides its weights, in Hugging Face
//! layout: the shard index, config.json (taken from the origin model, dtype
//! and layer count patched, per-layer fields rebuilt by `layer_config.rs`),
//! the tokenizer, processor and generation files copied from the origin
//! model, its sentence-transformers module folders, and a model card
//! holding the recipe.

use super::writer::{Layout, OutputDir};
use super::{Checkpoint, DType};
use std::sync::Arc;

/// Everything needed to write an output's files around its weights.
pub struct Package<'a> {
    /// Every model the recipe read (listed in the model card).
    pub models: &'a [Arc<Checkpoint>],
    /// The model whose config.json and tokenizer the output takes.
    pub origin: usize,
    /// The output's dtype, for config.json's `torch_dtype`.
    pub dtype: Option<DType>,
    /// The output's layer count (`num_hidden_layers`).
    pub n_layers: usize,
    /// Further config.json fields to set.
    pub config: &'a [(String, serde_json::Value)],
    /// Where each output layer came from: (model, layer).
    pub layers: &'a [(usize, usize)],
    /// The recipe's text, for the model card.
    pub recipe: &'a str,
}

impl Package<'_> {
    /// Writes the index, config.json, copied files and the model card.
    /// Returns notes on what could not be carried exactly (warnings).
    pub fn write(&self, out: &OutputDir, layout: &Layout) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        if let Some(index) = layout.index_json() {
            out.write_file("model.safetensors.index.json", index.as_bytes())?;
        }
        let origin = &self.models[self.origin];
        if let Some(config) = self.config_json(origin, &mut notes) {
            out.write_file("config.json", (serde_json::to_string_pretty(&config).unwrap() + "\n").as_bytes())?;
        }
        if let Some(dir) = &origin.dir {
            for name in super::COPIED_FILES {
                let p = dir.join(name);
                if p.is_file() {
                    out.copy_file(&p, name)?;
                }
            }
            self.copy_module_folders(out, dir)?;
        } else if origin.root.extension().is_some_and(|e| e == "gguf") {
            match super::gguf_tokenizer::files(&origin.root) {
                Ok(files) => {
                    for (name, bytes) in files {
                        out.write_file(name, &bytes)?;
                    }
                }
                Err(why) => notes.push(format!(
                    "no tokenizer was written: `{}` holds its tokenizer as GGUF metadata, and {why}",
                    origin.root.display()
                )),
            }
        }
        out.write_file("README.md", self.model_card().as_bytes())?;
        Ok(notes)
    }

    /// Sentence-transformers module folders (`1_Pooling/config.json` ...),
    /// all but their weights, which the plan writes (merged or copied).
    fn copy_module_folders(&self, out: &OutputDir, dir: &std::path::Path) -> Result<(), String> {
        // A bad modules.json was reported when the model was opened.
        for folder in super::modules::folders(dir).unwrap_or_default() {
            let entries = std::fs::read_dir(dir.join(&folder))
                .map_err(|e| format!("cannot list `{}`: {e}", dir.join(&folder).display()))?;
            let mut files: Vec<std::path::PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            let weights = super::modules::weight_file(&dir.join(&folder)).is_some();
            if files.is_empty() && !weights {
                out.make_dir(&folder)?;
            }
            for p in files {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                if !super::modules::WEIGHT_FILES.contains(&name.as_str()) {
                    out.copy_file(&p, &format!("{folder}/{name}"))?;
                }
            }
        }
        Ok(())
    }

    /// The origin's config.json with the output's dtype, layer count and fields.
    pub fn config_json(&self, origin: &Checkpoint, notes: &mut Vec<String>) -> Option<serde_json::Value> {
        let mut config = origin.config.clone()?;
        // Layers cut, repeated or taken from other models: per-layer fields follow them.
        let identity = self.layers.iter().enumerate().all(|(i, &l)| l == (self.origin, i));
        if !(identity && self.layers.len() == origin.n_layers()) && self.layers.len() == self.n_layers {
            notes.extend(super::layer_config::rebuild(&mut config, self.models, self.layers));
        }
        if let (Some(obj), Some(d)) = (config.as_object_mut(), self.dtype) {
            obj.insert("torch_dtype".into(), d.torch_name().into());
            if obj.contains_key("dtype") {
                obj.insert("dtype".into(), d.torch_name().into());
            }
            if obj.contains_key("num_hidden_layers") {
                obj.insert("num_hidden_layers".into(), self.n_layers.into());
            }
            for (k, v) in self.config {
                obj.insert(k.clone(), v.clone());
            }
        }
        Some(config)
    }

    fn model_card(&self) -> String {
        let models: Vec<String> = self.models.iter().map(|m| format!("- `{}`", m.root.display())).collect();
        format!(
            "---\nlibrary_name: transformers\ntags:\n- merge\n- fuse\n---\n# Merged model\n\nThis model was merged with fuse from these checkpoints:\n\n{}\n\n## Recipe\n\n```\n{}\n```\n",
            models.join("\n"),
            self.recipe.trim_end()
        )
    }
}
