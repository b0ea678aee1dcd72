//! Checkpoints as people have them: integer buffers that only some operands
//! hold, float tensors one operand lacks, and heads tied to the embedding.
//! Real `fuse` processes; values checked against closed forms computed here
//! from the input files.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The raw dtype, shape and bytes of tensor `name` in `dir/model.safetensors`.
fn raw(dir: &Path, name: &str) -> (String, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    (format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec())
}

fn berts(d: &Path) {
    write_bert(&d.join("base"), Bert { seed: 0, position_ids: true, pooler: true });
    write_bert(&d.join("sre"), Bert { seed: 1, position_ids: false, pooler: true });
    write_bert(&d.join("resume"), Bert { seed: 2, position_ids: false, pooler: true });
    write_bert(&d.join("nopooler"), Bert { seed: 3, position_ids: false, pooler: false });
}

/// base + TIES(density) of the fine-tunes, tensor by tensor, for the float
/// tensors of `names`.
fn ties_expected(d: &Path, fts: &[&str], density: f64, keep: impl Fn(&str) -> bool) -> BTreeMap<String, T> {
    let base = read_model(&d.join("base"));
    let fts: Vec<BTreeMap<String, T>> = fts.iter().map(|f| read_model(&d.join(f))).collect();
    let mut out = BTreeMap::new();
    for (name, b) in base.iter().filter(|(n, t)| t.dtype == "F32" && keep(n)) {
        let deltas: Vec<Vec<f32>> = fts.iter().map(|f| sub(&f[name].data, &b.data)).collect();
        let merged = ties_reference(&deltas, density);
        let data = b.data.iter().zip(&merged).map(|(x, m)| x + m).collect();
        out.insert(name.clone(), T { shape: b.shape.clone(), dtype: "F32".into(), data });
    }
    out
}

#[test]
fn integer_buffers_only_the_base_has_are_copied_and_the_rest_merged() {
    let d = tempfile::tempdir().unwrap();
    berts(d.path());
    write_recipe(
        d.path(),
        "r.fuse",
        "base = model(\"base\")\nsre = model(\"sre\")\nresume = model(\"resume\")\nbase + ties(sre, resume, k=0.5)\n",
    );
    let check = fuse_ok(d.path(), &["check", "r.fuse"]);
    let note = stderr(&check);
    assert!(note.contains("[E0207]") && note.contains("`embeddings.position_ids`"), "{note}");
    fuse_ok(d.path(), &["run", "r.fuse", "-o", "out"]);
    let out = d.path().join("out");
    assert_eq!(raw(&out, "embeddings.position_ids"), raw(&d.path().join("base"), "embeddings.position_ids"));
    let mut ours = read_model(&out);
    ours.remove("embeddings.position_ids");
    assert_close(&ours, &ties_expected(d.path(), &["sre", "resume"], 0.5, |_| true), 1e-6);
}

#[test]
fn a_float_tensor_one_operand_lacks_is_named_at_that_operand() {
    let d = tempfile::tempdir().unwrap();
    berts(d.path());
    let text = "base = model(\"base\")\nsre = model(\"sre\")\nnopooler = model(\"nopooler\")\nbase + ties(sre, nopooler, k=0.5)\n";
    write_recipe(d.path(), "r.fuse", text);
    let o = fuse(d.path(), &["check", "r.fuse"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    expect_code(&err, "E0201");
    assert!(err.contains("`nopooler` lacks 2 tensors that `sre` has"), "{err}");
    assert!(err.contains("`pooler.dense.bias`, `pooler.dense.weight`"), "{err}");
    // The labels sit on the user's arguments, not inside the standard library.
    assert!(err.contains("r.fuse:4:18"), "{err}");
    assert!(!err.contains("merge.fuse"), "{err}");
    assert!(!err.contains("but this is"), "{err}");
}

#[test]
fn drop_merges_what_every_operand_has() {
    let d = tempfile::tempdir().unwrap();
    berts(d.path());
    let text = "base = drop(model(\"base\"), \"pooler.*\")\nsre = drop(model(\"sre\"), \"pooler.*\")\n\
                nopooler = model(\"nopooler\")\nbase + ties(sre, nopooler, k=0.5)\n";
    write_recipe(d.path(), "r.fuse", text);
    fuse_ok(d.path(), &["run", "r.fuse", "-o", "out"]);
    let mut ours = read_model(&d.path().join("out"));
    assert!(!ours.keys().any(|n| n.starts_with("pooler")), "{:?}", ours.keys());
    assert_eq!(
        raw(&d.path().join("out"), "embeddings.position_ids"),
        raw(&d.path().join("base"), "embeddings.position_ids")
    );
    ours.remove("embeddings.position_ids");
    let expected = ties_expected(d.path(), &["sre", "nopooler"], 0.5, |n| !n.starts_with("pooler"));
    assert_close(&ours, &expected, 1e-6);
}

#[test]
fn keep_and_drop_refuse_a_pattern_that_matches_nothing() {
    let d = tempfile::tempdir().unwrap();
    berts(d.path());
    write_recipe(d.path(), "r.fuse", "keep(model(\"base\"), [\"encoder.*\", \"poolr.*\"])\n");
    let o = fuse(d.path(), &["check", "r.fuse"]);
    let err = stderr(&o);
    expect_code(&err, "E0106");
    assert!(err.contains("`poolr.*` matches no tensor"), "{err}");
    write_recipe(
        d.path(),
        "k.fuse",
        "m = keep(model(\"base\"), \"encoder.*\")\n0.5*m + 0.5*keep(model(\"sre\"), \"encoder.*\")\n",
    );
    fuse_ok(d.path(), &["run", "k.fuse", "-o", "out"]);
    let ours = read_model(&d.path().join("out"));
    let names: Vec<&String> = ours.keys().collect();
    assert_eq!(names, ["encoder.layer.0.attention.self.query.weight", "encoder.layer.0.output.LayerNorm.weight"]);
}

/// A one-layer Llama with `tie_word_embeddings` (no head) or its own head.
fn llama(dir: &Path, seed: u64, tied: bool) {
    let t = |shape: Vec<usize>, salt: u64| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|i| ((i as u64 * 7919 + seed * 131 + salt) % 101) as f32 / 50.0 - 1.0).collect();
        T { shape, dtype: "F32".into(), data }
    };
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), t(vec![8, 4], 1));
    m.insert("model.layers.0.self_attn.q_proj.weight".to_string(), t(vec![4, 4], 2));
    m.insert("model.norm.weight".to_string(), t(vec![4], 3));
    if !tied {
        m.insert("lm_head.weight".to_string(), t(vec![8, 4], 4));
    }
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1, "hidden_size": 4, "tie_word_embeddings": {tied}}}"#
    );
    write_model(dir, &m, &config);
}

#[test]
fn a_tied_model_merges_with_an_untied_one_its_embedding_as_its_head() {
    let d = tempfile::tempdir().unwrap();
    llama(&d.path().join("tied"), 1, true);
    llama(&d.path().join("untied"), 2, false);
    let tied = read_model(&d.path().join("tied"));
    let untied = read_model(&d.path().join("untied"));
    for (recipe, first) in [("0.3*a + 0.7*b", "tied"), ("0.7*b + 0.3*a", "untied")] {
        let text = format!("a = model(\"tied\")\nb = model(\"untied\")\n{recipe}\n");
        write_recipe(d.path(), "r.fuse", &text);
        let out = d.path().join(format!("out-{first}"));
        fuse_ok(d.path(), &["run", "r.fuse", "-o", out.to_str().unwrap()]);
        let ours = read_model(&out);
        let mut expected = BTreeMap::new();
        for (name, u) in &untied {
            let a = &tied[if name == "lm_head.weight" { "model.embed_tokens.weight" } else { name.as_str() }];
            let data = a.data.iter().zip(&u.data).map(|(x, y)| 0.3 * x + 0.7 * y).collect();
            expected.insert(name.clone(), T { shape: u.shape.clone(), dtype: "F32".into(), data });
        }
        assert_close(&ours, &expected, 1e-6);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["tie_word_embeddings"], serde_json::json!(false), "{recipe}: {config}");
    }
}
