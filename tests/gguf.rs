//! GGUF input: files written here byte by byte (tests/common/gguf.rs), with
//! llama.cpp's names, reversed dimensions, q/k row permutation and q8_0
//! quantization, read back through `fuse run` and compared with the Hugging
//! Face tensors they were made from; plus the errors for broken files.

use crate::common::gguf::{self, Enc, Meta};
use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::path::Path;

/// A TinyLlama safetensors twin at `dir/twin` and its GGUF at
/// `dir/tiny.gguf` (f32 norms and embedding, f16 k/o projections, the rest
/// q8_0); returns the values fuse should read from the GGUF.
fn tiny(dir: &Path) -> BTreeMap<String, T> {
    let shape = TinyLlama::default();
    shape.write(&dir.join("twin"), &[(1, 0.02)]).unwrap();
    let hf = read_model(&dir.join("twin"));
    let (g, expected) = gguf::llama(&hf, shape.heads, shape.kv_heads, |name| {
        if name.contains("norm") || name.contains("embed") {
            Enc::F32
        } else if name.contains("k_proj") || name.contains("o_proj") {
            Enc::F16
        } else {
            Enc::Q8_0
        }
    });
    std::fs::write(dir.join("tiny.gguf"), g.bytes()).unwrap();
    expected
}

#[test]
fn gguf_reads_as_its_hugging_face_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = tiny(tmp.path());
    write_recipe(tmp.path(), "r.fuse", "model(\"tiny.gguf\")\n");
    fuse_ok(tmp.path(), &["run", "r.fuse", "-o", "out"]);
    let out = read_model(&tmp.path().join("out"));
    assert_close(&out, &expected, 0.0);
    // And within q8_0's rounding of the original: half a step of amax/127.
    let twin = read_model(&tmp.path().join("twin"));
    for (name, t) in &twin {
        let amax = t.data.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in out[name].data.iter().zip(&t.data) {
            assert!((a - b).abs() <= amax / 127.0 * 0.51 + 1e-3 * amax, "{name}: {a} vs {b}");
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("out/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["num_key_value_heads"], 2);
    assert_eq!(config["hidden_size"], 32);
    assert_eq!(config["vocab_size"], 96);
}

#[test]
fn gguf_mixes_with_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = tiny(tmp.path());
    write_recipe(
        tmp.path(),
        "r.fuse",
        "g = model(\"tiny.gguf\")\ns = model(\"twin\")\nsave(0.5*g + 0.5*s, \"mix\", dtype=f32)\n",
    );
    fuse_ok(tmp.path(), &["run", "r.fuse"]);
    let out = read_model(&tmp.path().join("mix"));
    let twin = read_model(&tmp.path().join("twin"));
    for (name, e) in &expected {
        for (i, o) in out[name].data.iter().enumerate() {
            let want = 0.5 * e.data[i] + 0.5 * twin[name].data[i];
            assert!((o - want).abs() <= 1e-6 * want.abs().max(1.0), "{name}[{i}]: {o} vs {want}");
        }
    }
}

#[test]
fn gguf_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    tiny(d);
    let whole = std::fs::read(d.join("tiny.gguf")).unwrap();
    let run = |file: &str, bytes: &[u8]| {
        std::fs::write(d.join(file), bytes).unwrap();
        write_recipe(d, "r.fuse", &format!("model(\"{file}\")\n"));
        let o = fuse(d, &["check", "r.fuse"]);
        assert!(!o.status.success());
        let e = stderr(&o);
        expect_code(&e, "E0302");
        e
    };
    // Cut inside the tensor data: the last tensor's bytes are missing.
    let e = run("cut.gguf", &whole[..whole.len() - 100]);
    assert!(e.contains("truncated") && e.contains("cut.gguf"), "{e}");
    // Cut inside the header.
    let e = run("short.gguf", &whole[..40]);
    assert!(e.contains("not a readable GGUF file"), "{e}");

    let mut g = gguf::Gguf::default();
    g.meta("general.architecture", Meta::Str("rwkv7".into()));
    g.tensor("token_embd.weight", &[4, 32], &[0.0; 128], Enc::F32);
    let e = run("rwkv.gguf", &g.bytes());
    assert!(e.contains("`rwkv7`") && e.contains("llama"), "{e}");

    let llama = |code: u32, bytes: Vec<u8>| {
        let mut g = gguf::Gguf::default();
        g.meta("general.architecture", Meta::Str("llama".into())).meta("llama.attention.head_count", Meta::U32(1));
        g.tensor("token_embd.weight", &[4, 32], &[0.0; 128], Enc::F32);
        g.tensor("blk.0.ffn_up.weight", &[1, 32], &[], Enc::Raw(code, bytes));
        g.bytes()
    };
    // Q8_1 (type 9): known to candle's reader, not dequantized by it.
    let e = run("q81.gguf", &llama(9, vec![0; 36]));
    assert!(e.contains("`blk.0.ffn_up.weight`") && e.contains("Q8_1"), "{e}");
    // IQ4_NL (type 20): unknown to candle's reader; the tensor is still named.
    let e = run("iq4.gguf", &llama(20, vec![0; 18]));
    assert!(e.contains("`blk.0.ffn_up.weight`") && e.contains("IQ4_NL"), "{e}");
}

#[test]
fn output_never_overwrites_a_gguf_input() {
    let tmp = tempfile::tempdir().unwrap();
    tiny(tmp.path());
    let before = std::fs::read(tmp.path().join("tiny.gguf")).unwrap();
    write_recipe(tmp.path(), "r.fuse", "model(\"tiny.gguf\")\n");
    let o = fuse(tmp.path(), &["run", "r.fuse", "-o", "tiny.gguf", "--force"]);
    assert!(!o.status.success());
    expect_code(&stderr(&o), "E0406");
    assert_eq!(std::fs::read(tmp.path().join("tiny.gguf")).unwrap(), before);
}
