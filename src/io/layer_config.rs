//! config.json fields that describe layers one by one, rebuilt for an
//! output whose layers were cut, repeated or taken from several models
//! (`stack`, slices). transformers refuses a config whose `layer_types` does
//! not have one entry per layer, and silently misreads counts such as
//! `max_window_layers` that no longer match the layers.
//!
//! Output layer `i` came from layer `l` of model `m` (`Arch::layers`). The rules:
//!
//! - **Per-layer lists**: a top-level array as long as the source's
//!   `num_hidden_layers` (`layer_types` of Gemma 3 and Qwen 3, Llama 4's
//!   `no_rope_layers`, Jamba's `layers_block_type` ...) gets entry `l` of
//!   model `m`'s list at position `i`. Token-id lists and `architectures`
//!   are never per-layer.
//! - **Layer-index lists** (`moe_layers`, `mlp_only_layers`): `i` is listed
//!   when `l` is listed in model `m`'s.
//! - **Leading counts** (`max_window_layers`: layers below it use full
//!   attention; `first_k_dense_replace`: layers below it are dense): each
//!   output layer is "inside" when its source layer was inside its model's
//!   count; the output count is the run of inside layers at the start. When
//!   an inside layer follows an outside one no count can say it (a note).
//! - **Periods** (`sliding_window_pattern`: layer `l` uses full attention when
//!   `(l + 1) % pattern == 0`): kept when the output still follows it;
//!   otherwise, unless the config has `layer_types`, an explicit
//!   `layer_types` list is written (transformers prefers it) with a note.
//! - `num_hidden_layers` is the output's layer count.
//!
//! The same is done inside `text_config` (multimodal Gemma 3, Llama 4),
//! where those models keep their language model's fields.

use super::Checkpoint;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Keys holding counts of leading layers (see the module docs).
const LEADING_COUNTS: &[&str] = &["max_window_layers", "first_k_dense_replace"];
/// Keys holding lists of layer indices.
const INDEX_LISTS: &[&str] = &["moe_layers", "mlp_only_layers"];

/// Rebuilds `config` (the origin model's, already holding the output's other
/// fields) for output layers `layers`. Returns notes on what could not be
/// carried exactly.
pub fn rebuild(config: &mut Value, models: &[Arc<Checkpoint>], layers: &[(usize, usize)]) -> Vec<String> {
    let mut notes = Vec::new();
    let sources: Vec<Option<&Value>> = models.iter().map(|m| m.config.as_ref()).collect();
    rebuild_object(config, &sources, layers, "", &mut notes);
    if let Some(text) = config.get_mut("text_config") {
        let inner: Vec<Option<&Value>> = sources.iter().map(|c| c.and_then(|c| c.get("text_config"))).collect();
        rebuild_object(text, &inner, layers, "text_config.", &mut notes);
    }
    notes
}

fn rebuild_object(
    obj: &mut Value,
    sources: &[Option<&Value>],
    layers: &[(usize, usize)],
    path: &str,
    notes: &mut Vec<String>,
) {
    let Some(obj) = obj.as_object_mut() else { return };
    let Some(n_src) = obj.get("num_hidden_layers").and_then(Value::as_u64) else { return };
    let n_src = n_src as usize;
    // The sources' objects and their layer counts, where they have them.
    let src = |m: usize| -> Option<(&Map<String, Value>, usize)> {
        let o = sources.get(m).copied().flatten()?.as_object()?;
        Some((o, o.get("num_hidden_layers")?.as_u64()? as usize))
    };
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        if is_per_layer(&key, &obj[&key], n_src) {
            let mut out = Vec::with_capacity(layers.len());
            let mut missing = false;
            for &(m, l) in layers {
                let entry = src(m).and_then(|(o, n)| o.get(&key)?.as_array().filter(|a| a.len() == n)?.get(l).cloned());
                out.push(entry.unwrap_or_else(|| {
                    missing = true;
                    obj[&key].as_array().and_then(|a| a.get(l.min(a.len() - 1))).cloned().unwrap_or(Value::Null)
                }));
            }
            if missing {
                notes.push(format!(
                    "`{path}{key}`: some source models have no per-layer `{key}`; their layers took the origin's entry at the same index"
                ));
            }
            obj.insert(key, Value::Array(out));
        } else if INDEX_LISTS.contains(&key.as_str()) && obj[&key].is_array() {
            let listed = |m: usize, l: usize| {
                src(m)
                    .and_then(|(o, _)| o.get(&key)?.as_array().cloned())
                    .is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(l as u64)))
            };
            let out: Vec<Value> =
                layers.iter().enumerate().filter(|(_, &(m, l))| listed(m, l)).map(|(i, _)| i.into()).collect();
            obj.insert(key, Value::Array(out));
        } else if LEADING_COUNTS.contains(&key.as_str()) && obj[&key].is_u64() {
            // A model without the field counts all its layers as inside.
            let inside =
                |m: usize, l: usize| src(m).and_then(|(o, _)| o.get(&key)?.as_u64()).is_none_or(|k| (l as u64) < k);
            let flags: Vec<bool> = layers.iter().map(|&(m, l)| inside(m, l)).collect();
            let lead = flags.iter().take_while(|f| **f).count();
            if flags[lead..].iter().any(|f| *f) {
                notes.push(format!(
                    "`{path}{key}`: output layers {} come from layers inside their model's `{key}` but follow one that does not; set to {lead}, the leading run",
                    flags.iter().enumerate().skip(lead).filter(|(_, f)| **f).map(|(i, _)| i.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
            let keep_all = lead == layers.len() && obj[&key].as_u64().is_some_and(|k| k as usize >= n_src);
            obj.insert(key, if keep_all { layers.len().into() } else { lead.into() });
        }
    }
    if let Some(p) = obj.get("sliding_window_pattern").and_then(Value::as_u64).filter(|p| *p > 0) {
        let full = |m: usize, l: usize| {
            let pm =
                src(m).and_then(|(o, _)| o.get("sliding_window_pattern")?.as_u64()).filter(|p| *p > 0).unwrap_or(p);
            (l as u64 + 1).is_multiple_of(pm)
        };
        let flags: Vec<bool> = layers.iter().map(|&(m, l)| full(m, l)).collect();
        let periodic = flags.iter().enumerate().all(|(i, f)| *f == (i as u64 + 1).is_multiple_of(p));
        if !periodic && !obj.contains_key("layer_types") {
            let types = flags.iter().map(|f| if *f { "full_attention" } else { "sliding_attention" });
            obj.insert("layer_types".into(), types.map(Value::from).collect());
            notes.push(format!(
                "`{path}sliding_window_pattern` no longer describes the layers; wrote `{path}layer_types` instead, which transformers 4.53 and later read"
            ));
        }
    }
    obj.insert("num_hidden_layers".into(), layers.len().into());
}

/// Whether `key` holds one entry per layer of a model with `n` layers.
fn is_per_layer(key: &str, v: &Value, n: usize) -> bool {
    let never = key == "architectures" || key.ends_with("_token_id") || key.ends_with("_token_ids");
    !never && !INDEX_LISTS.contains(&key) && v.as_array().is_some_and(|a| a.len() == n && n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ck(config: Value) -> Arc<Checkpoint> {
        Arc::new(Checkpoint {
            root: "x".into(),
            dir: None,
            config: Some(config),
            files: Vec::new(),
            tensors: Default::default(),
        })
    }

    #[test]
    fn gemma_frankenmerge_rebuilds_layer_types_from_sources() {
        let types: Vec<Value> =
            (0..18).map(|l| if (l + 1) % 6 == 0 { "full_attention" } else { "sliding_attention" }.into()).collect();
        let g = json!({"num_hidden_layers": 18, "layer_types": types, "sliding_window_pattern": 6, "eos_token_id": vec![1; 18]});
        let layers: Vec<(usize, usize)> = (0..12).chain(6..18).map(|l| (0, l)).collect();
        let mut out = g.clone();
        let notes = rebuild(&mut out, &[ck(g.clone())], &layers);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(out["num_hidden_layers"], 24);
        let got = out["layer_types"].as_array().unwrap();
        assert_eq!(got.len(), 24);
        for (i, &(_, l)) in layers.iter().enumerate() {
            assert_eq!(got[i], types[l]);
        }
        assert_eq!(out["eos_token_id"].as_array().unwrap().len(), 18);
    }

    #[test]
    fn counts_follow_their_layers() {
        let a =
            json!({"num_hidden_layers": 4, "max_window_layers": 2, "moe_layers": [1, 3], "sliding_window_pattern": 2});
        let mut out = a.clone();
        // Layers 0, 1 (inside max_window_layers), 3 (outside), 0 (inside again).
        let notes = rebuild(&mut out, &[ck(a)], &[(0, 0), (0, 1), (0, 3), (0, 0)]);
        assert_eq!(out["max_window_layers"], 2);
        assert_eq!(out["moe_layers"], json!([1, 2]));
        assert_eq!(
            out["layer_types"],
            json!(["sliding_attention", "full_attention", "full_attention", "sliding_attention"])
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
    }
}
