//! What an output carries beside its weights, on checkpoints with the quirks
//! real ones have: per-layer config.json fields after `stack`, tokenizer and
//! processor files of every kind, sentence-transformers module folders, and
//! sharded PyTorch `.bin` inputs.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes a TinyLlama with `layers` layers whose config.json also holds `extra`.
fn llama_with(dir: &Path, layers: usize, seed: u64, extra: Value) {
    let shape = TinyLlama { layers, ..TinyLlama::default() };
    shape.write(dir, &[(seed, 0.02)]).unwrap();
    let mut config: Value = serde_json::from_str(&shape.config_json()).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn types(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn stacked_layers_carry_their_per_layer_config() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    llama_with(&d.join("a"), 6, 1, json!({"layer_types": types("a", 6), "max_window_layers": 4, "moe_layers": [1, 5]}));
    llama_with(&d.join("b"), 6, 2, json!({"layer_types": types("b", 6), "max_window_layers": 6, "moe_layers": [2]}));
    write_recipe(
        d,
        "r.fuse",
        "a = model(\"a\")\nb = model(\"b\")\nsave(stack(a.layers[0..4], b.layers[2..6]), \"out\")\n",
    );
    let o = fuse_ok(d, &["run", "r.fuse"]);
    assert!(!stderr(&o).contains("E0407"), "{}", stderr(&o));
    let c = config(&d.join("out"));
    assert_eq!(c["num_hidden_layers"], 8);
    assert_eq!(c["layer_types"], json!(["a0", "a1", "a2", "a3", "b2", "b3", "b4", "b5"]));
    // a's layers 0..4 are below its 4, b's below its 6: all eight use full attention.
    assert_eq!(c["max_window_layers"], 8);
    // a's layer 1 and b's layer 2 (output layer 4).
    assert_eq!(c["moe_layers"], json!([1, 4]));
    assert_eq!(c["eos_token_id"], 2);
    assert_eq!(read_model(&d.join("out")).keys().filter(|k| k.contains(".7.mlp.up_proj")).count(), 1);

    // A full-attention layer after a sliding one: no count can say it.
    write_recipe(
        d,
        "odd.fuse",
        "a = model(\"a\")\nb = model(\"b\")\nsave(stack(b.layers[0..2], a.layers[4..6], b.layers[0..2]), \"odd\")\n",
    );
    let o = fuse_ok(d, &["run", "odd.fuse"]);
    let e = stderr(&o);
    expect_code(&e, "E0407");
    assert!(e.contains("max_window_layers") && e.contains("output layers 4, 5"), "{e}");
    let c = config(&d.join("odd"));
    assert_eq!(c["layer_types"], json!(["b0", "b1", "a4", "a5", "b0", "b1"]));
    assert_eq!(c["max_window_layers"], 2);
}

#[test]
fn gemma_style_sliding_window_pattern_becomes_layer_types_when_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    llama_with(&d.join("g"), 6, 1, json!({"sliding_window_pattern": 3}));
    // Layers 0 1 2 | 1 2 3 4 5: full attention at source layers 2 and 5.
    write_recipe(d, "r.fuse", "g = model(\"g\")\nsave(stack(g.layers[0..3], g.layers[1..6]), \"out\")\n");
    let o = fuse_ok(d, &["run", "r.fuse"]);
    expect_code(&stderr(&o), "E0407");
    let c = config(&d.join("out"));
    let full: Vec<usize> = c["layer_types"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, t)| *t == "full_attention")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(full, [2, 4, 7]);
    assert_eq!(c["num_hidden_layers"], 8);
    // A plain merge leaves every field as it was.
    write_recipe(d, "same.fuse", "g = model(\"g\")\nsave(0.5 * g + 0.5 * g, \"same\")\n");
    fuse_ok(d, &["run", "same.fuse"]);
    let c = config(&d.join("same"));
    assert!(c.get("layer_types").is_none());
    assert_eq!(c["sliding_window_pattern"], 3);
}

#[test]
fn sharded_pytorch_bin_checkpoints_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("st"), &[(3, 0.02)]).unwrap();
    let all = read_model(&d.join("st"));
    let config = std::fs::read_to_string(d.join("st/config.json")).unwrap();
    // Two shards as transformers' `save_pretrained(safe_serialization=False)` writes them.
    let (first, second): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let mut map = serde_json::Map::new();
    for (k, part) in [first, second].into_iter().enumerate() {
        let name = format!("pytorch_model-{:05}-of-00002.bin", k + 1);
        let tensors = part.into_iter().map(|(_, (n, t))| (n.clone(), t.clone())).collect();
        write_bin(&d.join("part"), &tensors, &config, &[]);
        std::fs::rename(d.join("part/pytorch_model.bin"), d.join("st").join(&name)).unwrap();
        for n in tensors.keys() {
            map.insert(n.clone(), name.clone().into());
        }
    }
    std::fs::create_dir_all(d.join("bin")).unwrap();
    for f in std::fs::read_dir(d.join("st")).unwrap() {
        let p = f.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("model") {
            std::fs::rename(&p, d.join("bin").join(name)).unwrap();
        }
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(d.join("bin/pytorch_model.bin.index.json"), index.to_string()).unwrap();
    write_recipe(d, "r.fuse", "save(model(\"bin\") * 1.0, \"out\")\n");
    fuse_ok(d, &["run", "r.fuse"]);
    assert_close(&read_model(&d.join("out")), &all, 0.0);

    // An index naming a shard that is not there.
    std::fs::remove_file(d.join("bin/pytorch_model-00002-of-00002.bin")).unwrap();
    let o = fuse(d, &["check", "r.fuse"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("[E0302]"), "{e}");
    assert!(
        e.contains("pytorch_model.bin.index.json")
            && e.contains("names shard `pytorch_model-00002-of-00002.bin`, which does not exist"),
        "{e}"
    );
}

/// A sentence-transformers model: TinyLlama as the transformer, then
/// Pooling, a Dense module with weights (`scale` sets them), and Normalize.
fn sentence_model(dir: &Path, seed: u64, scale: f32) -> BTreeMap<String, T> {
    TinyLlama::default().write(dir, &[(seed, 0.02)]).unwrap();
    let modules = json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]);
    std::fs::write(dir.join("modules.json"), modules.to_string()).unwrap();
    std::fs::write(dir.join("config_sentence_transformers.json"), "{\"prompts\": {}}").unwrap();
    std::fs::write(dir.join("sentence_bert_config.json"), "{\"max_seq_length\": 128}").unwrap();
    std::fs::write(dir.join("vocab.txt"), "[PAD]\n[UNK]\nhello\n").unwrap();
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages }}").unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), "{\"pooling_mode_mean_tokens\": true}").unwrap();
    std::fs::create_dir_all(dir.join("3_Normalize")).unwrap();
    let mut dense = BTreeMap::new();
    let w: Vec<f32> = (0..4 * 32).map(|i| scale * ((i * 7 % 13) as f32 - 6.0)).collect();
    dense.insert("linear.weight".to_string(), T { shape: vec![4, 32], dtype: "F32".into(), data: w });
    dense.insert("linear.bias".to_string(), T { shape: vec![4], dtype: "F32".into(), data: vec![scale; 4] });
    write_model(&dir.join("2_Dense"), &dense, "{\"in_features\": 32, \"out_features\": 4, \"bias\": true}");
    dense
}

#[test]
fn sentence_transformers_modules_are_carried_and_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = sentence_model(&d.join("base"), 1, 0.1);
    let ft = sentence_model(&d.join("ft"), 2, 0.3);
    write_recipe(d, "r.fuse", "base = model(\"base\")\nft = model(\"ft\")\nsave(base + 0.5 * (ft - base), \"out\")\n");
    let o = fuse_ok(d, &["run", "r.fuse"]);
    assert!(!stderr(&o).contains("E0407"), "{}", stderr(&o));
    let out = d.join("out");
    for f in ["modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "vocab.txt"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(d.join("base").join(f)).unwrap(), "{f}");
    }
    assert!(out.join("chat_template.jinja").is_file() && out.join("3_Normalize").is_dir());
    assert_eq!(
        std::fs::read_to_string(out.join("1_Pooling/config.json")).unwrap(),
        "{\"pooling_mode_mean_tokens\": true}"
    );
    assert!(std::fs::read_to_string(out.join("2_Dense/config.json")).unwrap().contains("out_features"));
    // Module weights merged by the recipe: base + 0.5 (ft - base), entry by entry.
    let dense = read_model(&out.join("2_Dense"));
    for (name, b) in &base {
        let expected: Vec<f32> = b.data.iter().zip(&ft[name].data).map(|(x, y)| x + 0.5 * (y - x)).collect();
        assert_eq!(dense[name].shape, b.shape);
        for (o, e) in dense[name].data.iter().zip(&expected) {
            assert!((o - e).abs() <= 1e-6 * e.abs().max(1.0), "{name}: {o} vs {e}");
        }
    }
    assert!(read_model(&out).keys().all(|k| !k.contains("linear")), "module weights stay out of the main file");
    let manifest = std::fs::read_to_string(out.join("fuse-output.json")).unwrap();
    for f in ["2_Dense/model.safetensors", "1_Pooling/config.json", "3_Normalize/"] {
        assert!(manifest.contains(&format!("\"{f}\"")), "{f} not in {manifest}");
    }
    // --force replaces an output with folders, and only while it holds just fuse's files.
    fuse_ok(d, &["run", "r.fuse", "--force"]);
    std::fs::write(out.join("2_Dense/notes.txt"), "mine").unwrap();
    let o = fuse(d, &["run", "r.fuse", "--force"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("`2_Dense/notes.txt`"), "{e}");

    // A model without the module: the base's Dense weights are copied, with a warning.
    TinyLlama::default().write(&d.join("plain"), &[(5, 0.02)]).unwrap();
    write_recipe(
        d,
        "mix.fuse",
        "base = model(\"base\")\nplain = model(\"plain\")\nsave(0.5 * base + 0.5 * plain, \"mix\")\n",
    );
    let o = fuse_ok(d, &["run", "mix.fuse"]);
    let e = stderr(&o);
    expect_code(&e, "E0407");
    assert!(e.contains("module weights `2_Dense/` were copied from") && e.contains("has no such module weight"), "{e}");
    let dense = read_model(&d.join("mix/2_Dense"));
    assert_eq!(dense["linear.weight"].data, base["linear.weight"].data);
}

#[test]
fn a_module_path_outside_the_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sentence_model(&d.join("base"), 1, 0.1);
    std::fs::write(d.join("base/modules.json"), "[{\"idx\": 1, \"path\": \"../elsewhere\"}]").unwrap();
    write_recipe(d, "r.fuse", "save(model(\"base\") * 1.0, \"out\")\n");
    let o = fuse(d, &["check", "r.fuse"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("[E0302]"), "{e}");
    assert!(e.contains("module path `../elsewhere` is not a plain folder name"), "{e}");
    std::fs::write(d.join("base/modules.json"), "{\"not\": \"a list\"}").unwrap();
    let e = stderr(&fuse(d, &["check", "r.fuse"]));
    assert!(e.contains("[E0302]") && e.contains("modules.json is not a list of modules"), "{e}");
}

/// Published sentence-transformers models often lack the folder of a module
/// without files (`Normalize`): packaging drops empty folders. Such a model
/// is read, merged and written; the output has every folder the base has.
#[test]
fn a_module_folder_that_is_absent_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sentence_model(&d.join("base"), 1, 0.1);
    sentence_model(&d.join("ft"), 2, 0.3);
    for m in ["base", "ft"] {
        std::fs::remove_dir(d.join(m).join("3_Normalize")).unwrap();
    }
    std::fs::remove_dir_all(d.join("ft/1_Pooling")).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nsave(base + 0.5 * (model(\"ft\") - base), \"out\")\n");
    let o = fuse_ok(d, &["run", "r.fuse"]);
    assert!(!stderr(&o).contains("E0302"), "{}", stderr(&o));
    let out = d.join("out");
    assert!(out.join("1_Pooling/config.json").is_file() && !out.join("3_Normalize").exists());
    assert_eq!(std::fs::read(out.join("modules.json")).unwrap(), std::fs::read(d.join("base/modules.json")).unwrap());
}

/// A multimodal checkpoint (Gemma 3 style): the language model's layers under
/// `language_model.model.layers.N`, a vision tower with blocks of its own
/// (`vision_tower.vision_model.encoder.layers.N`) and the layer count in
/// `text_config`. Slices and `stack` act on the language model's layers; the
/// tower travels whole from the first model, and `text_config` is rebuilt.
#[test]
fn multimodal_stack_restacks_the_language_layers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama { layers: 4, ..TinyLlama::default() };
    shape.write(&d.join("plain"), &[(1, 0.02)]).unwrap();
    let mut tensors: BTreeMap<String, T> =
        read_model(&d.join("plain")).into_iter().map(|(k, v)| (format!("language_model.{k}"), v)).collect();
    for l in 0..2 {
        let data: Vec<f32> = (0..16).map(|i| (l * 16 + i) as f32).collect();
        let name = format!("vision_tower.vision_model.encoder.layers.{l}.mlp.fc1.weight");
        tensors.insert(name, T { shape: vec![4, 4], dtype: "F32".into(), data });
    }
    let mm_config = json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": {"num_hidden_layers": 4, "hidden_size": 32, "layer_types": types("t", 4)},
        "vision_config": {"num_hidden_layers": 2}
    });
    write_model(&d.join("mm"), &tensors, &mm_config.to_string());
    write_recipe(d, "r.fuse", "m = model(\"mm\")\nsave(stack(m.layers[0..3], m.layers[1..4]), \"out\")\n");
    let o = fuse_ok(d, &["run", "r.fuse"]);
    assert!(!stderr(&o).contains("E0201"), "{}", stderr(&o));
    let out = read_model(&d.join("out"));
    for (i, j) in [0, 1, 2, 1, 2, 3].into_iter().enumerate() {
        let name = |l: usize| format!("language_model.model.layers.{l}.mlp.up_proj.weight");
        assert_eq!(out[&name(i)].data, tensors[&name(j)].data, "output layer {i}");
    }
    for l in 0..2 {
        let name = format!("vision_tower.vision_model.encoder.layers.{l}.mlp.fc1.weight");
        assert_eq!(out[&name].data, tensors[&name].data);
    }
    assert!(!out.keys().any(|k| k.contains("encoder.layers.2")));
    let c = config(&d.join("out"));
    assert_eq!(c["text_config"]["num_hidden_layers"], 6);
    assert_eq!(c["text_config"]["layer_types"], json!(["t0", "t1", "t2", "t1", "t2", "t3"]));
    assert_eq!(c["vision_config"]["num_hidden_layers"], 2);
}
