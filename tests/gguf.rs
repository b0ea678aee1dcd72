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

/// A TinyLlama at `dir/st` saved by one recipe as safetensors (`plain`, f32)
/// and as GGUF (`out.gguf`, `dtype`).
fn save_both(dir: &Path, dtype: &str) -> BTreeMap<String, T> {
    TinyLlama::default().write(&dir.join("st"), &[(1, 0.02)]).unwrap();
    // A byte-level BPE tokenizer of four tokens, one merge and a special token.
    let tok = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "pre_tokenizer": {"type": "ByteLevel"},
        "added_tokens": [{"id": 3, "content": "<|end|>", "special": true}]}"#;
    std::fs::write(dir.join("st/tokenizer.json"), tok).unwrap();
    write_recipe(
        dir,
        "w.fuse",
        &format!("m = model(\"st\")\nsave(m, \"plain\", dtype=f32)\nsave(m, \"out.gguf\", dtype={dtype})\n"),
    );
    fuse_ok(dir, &["run", "w.fuse"]);
    read_model(&dir.join("plain"))
}

/// `out.gguf` read back through fuse's GGUF reader.
fn read_back(dir: &Path) -> BTreeMap<String, T> {
    write_recipe(dir, "r.fuse", "model(\"out.gguf\")\n");
    fuse_ok(dir, &["run", "r.fuse", "-o", "back", "--force"]);
    read_model(&dir.join("back"))
}

#[test]
fn gguf_output_has_llama_cpp_names_types_and_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let plain = save_both(d, "f16");
    let bytes = std::fs::read(d.join("out.gguf")).unwrap();
    let p = gguf::parse(&bytes);
    assert_eq!(p.version, 3);
    assert_eq!(p.meta["general.architecture"], "llama");
    assert!(p.meta["general.fuse.written_by"].starts_with("fuse "));
    assert_eq!(p.meta["general.file_type"], "1");
    for (k, v) in [
        ("llama.block_count", "3"),
        ("llama.embedding_length", "32"),
        ("llama.feed_forward_length", "64"),
        ("llama.attention.head_count", "4"),
        ("llama.attention.head_count_kv", "2"),
    ] {
        assert_eq!(p.meta.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(p.meta.contains_key("llama.rope.freq_base") && p.meta.contains_key("llama.context_length"));
    assert_eq!(p.meta["tokenizer.ggml.model"], "gpt2");
    assert_eq!(p.meta["tokenizer.ggml.tokens"], "[4 items]");
    assert_eq!(p.meta["tokenizer.ggml.token_type"], "[4 items]");
    assert_eq!(p.meta["tokenizer.ggml.merges"], "[1 items]");
    assert_eq!(p.tensors.len(), plain.len());
    let shape = TinyLlama::default();
    for (hf, t) in &plain {
        let (dims, ty, off) = &p.tensors[&gguf::gguf_name(hf)];
        let want: Vec<u64> = t.shape.iter().rev().map(|&x| x as u64).collect();
        assert_eq!(dims, &want, "{hf}");
        assert_eq!(*ty, if t.shape.len() == 1 { 0 } else { 1 }, "{hf}");
        assert_eq!(off % 32, 0);
        // The stored data, decoded here: f16 of the permuted rows for q/k.
        if t.shape.len() == 2 {
            let heads = if hf.contains("q_proj") {
                Some(shape.heads)
            } else if hf.contains("k_proj") {
                Some(shape.kv_heads)
            } else {
                None
            };
            let vals = heads.map_or(t.data.clone(), |h| gguf::permute(&t.data, h, t.shape[0]));
            let off = *off as usize;
            for (i, v) in vals.iter().enumerate() {
                let s = half::f16::from_le_bytes([bytes[off + 2 * i], bytes[off + 2 * i + 1]]);
                assert_eq!(s, half::f16::from_f32(*v), "{hf}[{i}]");
            }
        }
    }
    // And fuse reads it back as the model it was written from, within f16 rounding.
    let back = read_back(d);
    for (name, t) in &plain {
        let want = |b: f32| if t.shape.len() == 1 { b } else { half::f16::from_f32(b).to_f32() };
        for (a, b) in back[name].data.iter().zip(&t.data) {
            assert_eq!(*a, want(*b), "{name}");
        }
    }
}

#[test]
fn gguf_output_in_q8_0_reads_back_within_its_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let plain = save_both(d, "\"q8_0\"");
    let p = gguf::parse(&std::fs::read(d.join("out.gguf")).unwrap());
    assert_eq!(p.meta["general.file_type"], "7");
    let back = read_back(d);
    for (name, t) in &plain {
        assert_eq!(p.tensors[&gguf::gguf_name(name)].1, if t.shape.len() == 1 { 0 } else { 8 }, "{name}");
        // q8_0 works on stored rows; the q/k permutation moves whole rows, so
        // quantizing the Hugging Face rows gives the same values.
        let want = if t.shape.len() == 1 { t.data.clone() } else { gguf::q8_0(&t.data).1 };
        for (a, b) in back[name].data.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6, "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn gguf_output_from_a_gguf_input_keeps_its_metadata_and_replaces_only_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let expected = tiny(d);
    write_recipe(d, "w.fuse", "save(model(\"tiny.gguf\"), \"out.gguf\", dtype=f32)\n");
    fuse_ok(d, &["run", "w.fuse"]);
    let p = gguf::parse(&std::fs::read(d.join("out.gguf")).unwrap());
    let src = gguf::parse(&std::fs::read(d.join("tiny.gguf")).unwrap());
    for (k, v) in &src.meta {
        assert_eq!(p.meta.get(k), Some(v), "{k}");
    }
    let back = read_back(d);
    for (name, t) in &expected {
        assert_eq!(back[name].data, t.data, "{name}");
    }
    // A second run needs --force, and --force replaces only a GGUF file fuse wrote.
    let o = fuse(d, &["run", "w.fuse"]);
    assert!(!o.status.success() && stderr(&o).contains("exists"), "{}", stderr(&o));
    fuse_ok(d, &["run", "w.fuse", "--force"]);
    std::fs::copy(d.join("tiny.gguf"), d.join("other.gguf")).unwrap();
    write_recipe(d, "w2.fuse", "save(model(\"st2\"), \"other.gguf\", dtype=f32)\n");
    TinyLlama::default().write(&d.join("st2"), &[(1, 0.02)]).unwrap();
    let o = fuse(d, &["run", "w2.fuse", "--force"]);
    assert!(!o.status.success() && stderr(&o).contains("not a GGUF file fuse wrote"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("other.gguf")).unwrap(), std::fs::read(d.join("tiny.gguf")).unwrap());
    // Nothing partial is left beside the outputs.
    let hidden: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty());
}

#[test]
fn gguf_output_refuses_unmapped_architectures() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("st"), &[(1, 0.02)]).unwrap();
    let cfg = std::fs::read_to_string(d.join("st/config.json")).unwrap().replace("\"llama\"", "\"phi3\"");
    std::fs::write(d.join("st/config.json"), cfg).unwrap();
    write_recipe(d, "w.fuse", "save(model(\"st\"), \"out.gguf\")\n");
    let o = fuse(d, &["run", "w.fuse"]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("`phi3`") && e.contains("llama"), "{e}");
    assert!(!d.join("out.gguf").exists());
}

/// `fuse run -o X --dtype D` writes what `save(m, "X", dtype=D)` writes, and
/// refuses a dtype the output cannot hold.
#[test]
fn run_dtype_flag_sets_the_output_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    save_both(d, "\"q8_0\"");
    write_recipe(d, "m.fuse", "model(\"st\")\n");
    fuse_ok(d, &["run", "m.fuse", "-o", "flag.gguf", "--dtype", "q8_0"]);
    assert_eq!(std::fs::read(d.join("flag.gguf")).unwrap(), std::fs::read(d.join("out.gguf")).unwrap());
    fuse_ok(d, &["run", "m.fuse", "-o", "half", "--dtype", "bf16"]);
    assert!(read_header_dtypes(&d.join("half")).iter().all(|t| t == "BF16"));
    let e = stderr(&fuse(d, &["run", "m.fuse", "-o", "dir", "--dtype", "q8_0"]));
    expect_code(&e, "E0401");
    assert!(e.contains("q8_0 needs a .gguf output") && !d.join("dir").exists(), "{e}");
    let e = stderr(&fuse(d, &["run", "m.fuse", "--dtype", "f16"]));
    expect_code(&e, "E0401");
    assert!(e.contains("-o was not given"), "{e}");
}

/// The dtypes in the header of `dir/model.safetensors`.
fn read_header_dtypes(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap().to_string())
        .collect()
}

/// A GGUF's tokenizer lives in its metadata. A safetensors output written
/// from one gets `tokenizer.json` and `tokenizer_config.json` built from it
/// (byte-level BPE), which the tokenizers library loads and encodes with;
/// a vocabulary kind fuse does not convert (WordPiece) is noted.
#[test]
fn gguf_tokenizer_becomes_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let hf = {
        TinyLlama::default().write(&d.join("twin"), &[(1, 0.02)]).unwrap();
        read_model(&d.join("twin"))
    };
    let shape = TinyLlama::default();
    let with_vocab = |model: &str| {
        let (mut g, _) = gguf::llama(&hf, shape.heads, shape.kv_heads, |_| Enc::F32);
        let tokens = ["<|end|>", "a", "b", "ab", "\u{120}", "\u{120}a", "<think>"];
        g.meta("tokenizer.ggml.model", Meta::Str(model.into()))
            .meta("tokenizer.ggml.tokens", Meta::Strs(tokens.iter().map(|t| t.to_string()).collect()))
            .meta("tokenizer.ggml.token_type", Meta::U32s(vec![3, 1, 1, 1, 1, 1, 4]))
            .meta("tokenizer.ggml.merges", Meta::Strs(vec!["a b".into(), "\u{120} a".into()]))
            .meta("tokenizer.ggml.eos_token_id", Meta::U32(0))
            .meta("tokenizer.ggml.add_bos_token", Meta::Bool(false))
            .meta("tokenizer.chat_template", Meta::Str("{{ messages }}".into()));
        g.bytes()
    };
    std::fs::write(d.join("bpe.gguf"), with_vocab("gpt2")).unwrap();
    write_recipe(d, "r.fuse", "model(\"bpe.gguf\")\n");
    fuse_ok(d, &["run", "r.fuse", "-o", "out"]);
    let tok = tokenizers::Tokenizer::from_file(d.join("out/tokenizer.json")).unwrap();
    // "ab" and " a" are words of GPT-2's split; each is one merged token,
    // and the special and user-defined tokens stay whole.
    let enc = tok.encode("ab a<|end|><think>", false).unwrap();
    assert_eq!(enc.get_ids(), &[3, 5, 0, 6]);
    assert_eq!(tok.decode(&[3, 5], false).unwrap(), "ab a");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["eos_token"], "<|end|>");
    assert_eq!(config["chat_template"], "{{ messages }}");
    assert_eq!(config["add_bos_token"], false);
    let manifest = std::fs::read_to_string(d.join("out/fuse-output.json")).unwrap();
    assert!(manifest.contains("\"tokenizer.json\""), "{manifest}");

    std::fs::write(d.join("wp.gguf"), with_vocab("bert")).unwrap();
    write_recipe(d, "s.fuse", "model(\"wp.gguf\")\n");
    let o = fuse_ok(d, &["run", "s.fuse", "-o", "wp"]);
    let e = stderr(&o);
    assert!(e.contains("no tokenizer was written") && e.contains("`bert`"), "{e}");
    assert!(!d.join("wp/tokenizer.json").exists());
}

/// config.json as transformers 5 writes it: `rope_theta` inside
/// `rope_parameters` (per attention type for Gemma 3), text-only Gemma 3 as
/// `gemma3_text`, Mistral as `mistral`. The GGUF names llama.cpp's
/// architecture (`gemma3`, `llama`) and keeps the rope base and the window.
#[test]
fn gguf_output_reads_transformers_5_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("st"), &[(1, 0.02)]).unwrap();
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("st/config.json")).unwrap()).unwrap();
    for (model_type, rope, arch) in [
        ("mistral", serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"}), "llama"),
        (
            "gemma3_text",
            serde_json::json!({"full_attention": {"rope_theta": 500000.0}, "sliding_attention": {"rope_theta": 10000.0}}),
            "gemma3",
        ),
    ] {
        let mut c = base.clone();
        let o = c.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.insert("model_type".into(), model_type.into());
        o.insert("rope_parameters".into(), rope);
        o.insert("sliding_window".into(), 16.into());
        std::fs::write(d.join("st/config.json"), c.to_string()).unwrap();
        write_recipe(d, "m.fuse", "model(\"st\")\n");
        fuse_ok(d, &["run", "m.fuse", "-o", "out.gguf", "--force"]);
        let p = gguf::parse(&std::fs::read(d.join("out.gguf")).unwrap());
        assert_eq!(p.meta["general.architecture"], arch, "{model_type}");
        assert_eq!(p.meta[&format!("{arch}.rope.freq_base")], "500000", "{model_type}");
        assert_eq!(p.meta[&format!("{arch}.attention.sliding_window")], "16", "{model_type}");
        assert_eq!(p.meta[&format!("{arch}.vocab_size")], "96", "{model_type}");
    }
}

/// An instruct model's chat template and BOS rule reach the GGUF from
/// tokenizer_config.json (a named-template list: its `default`), or from
/// `chat_template.jinja`, which newer transformers saves instead.
#[test]
fn gguf_output_carries_the_chat_template() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    save_both(d, "f32");
    let config = r#"{"add_bos_token": true, "chat_template": [
        {"name": "tool_use", "template": "{{ tools }}"}, {"name": "default", "template": "{{ messages }}"}]}"#;
    std::fs::write(d.join("st/tokenizer_config.json"), config).unwrap();
    write_recipe(d, "m.fuse", "model(\"st\")\n");
    fuse_ok(d, &["run", "m.fuse", "-o", "a.gguf"]);
    let p = gguf::parse(&std::fs::read(d.join("a.gguf")).unwrap());
    assert_eq!(p.meta["tokenizer.chat_template"], "{{ messages }}");
    assert_eq!(p.meta["tokenizer.ggml.add_bos_token"], "true");
    std::fs::write(d.join("st/tokenizer_config.json"), "{}").unwrap();
    std::fs::write(d.join("st/chat_template.jinja"), "{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    fuse_ok(d, &["run", "m.fuse", "-o", "b.gguf"]);
    let p = gguf::parse(&std::fs::read(d.join("b.gguf")).unwrap());
    assert_eq!(p.meta["tokenizer.chat_template"], "{% for m in messages %}{{ m.content }}{% endfor %}");
    assert!(!p.meta.contains_key("tokenizer.ggml.add_bos_token"));
}

/// A SentencePiece model (Llama 2, Mistral, Gemma): the GGUF's vocabulary
/// comes from `tokenizer.model`, with the scores and piece types that
/// llama.cpp's tokenizer needs and `tokenizer.json` lacks, checked against
/// what the sentencepiece library itself reports for the fixture; added
/// tokens follow, then unused padding up to the model's vocabulary.
#[test]
fn gguf_output_takes_a_sentencepiece_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let st = d.join("st");
    TinyLlama { vocab: 402, ..TinyLlama::default() }.write(&st, &[(1, 0.02)]).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sentencepiece");
    std::fs::copy(fixtures.join("tokenizer.model"), st.join("tokenizer.model")).unwrap();
    // The fast tokenizer beside it: not byte-level, one added special token.
    let tok = r#"{"model": {"type": "BPE", "vocab": {}, "merges": [], "byte_fallback": true},
        "pre_tokenizer": {"type": "Metaspace"},
        "added_tokens": [{"id": 400, "content": "<|im_end|>", "special": true}]}"#;
    std::fs::write(st.join("tokenizer.json"), tok).unwrap();
    write_recipe(d, "m.fuse", "model(\"st\")\n");
    fuse_ok(d, &["run", "m.fuse", "-o", "out.gguf"]);
    let p = gguf::parse(&std::fs::read(d.join("out.gguf")).unwrap());
    assert_eq!(p.meta["tokenizer.ggml.model"], "llama");
    assert_eq!(p.meta["tokenizer.ggml.add_space_prefix"], "true");
    assert_eq!(p.meta["tokenizer.ggml.unknown_token_id"], "0");
    let pieces: Vec<(String, f32, i32)> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("pieces.json")).unwrap()).unwrap();
    let (tokens, scores, types) = (
        &p.arrays["tokenizer.ggml.tokens"],
        &p.arrays["tokenizer.ggml.scores"],
        &p.arrays["tokenizer.ggml.token_type"],
    );
    assert_eq!(tokens.len(), 402);
    for (i, (text, score, kind)) in pieces.iter().enumerate() {
        assert_eq!(&tokens[i], text, "piece {i}");
        assert_eq!(scores[i].parse::<f32>().unwrap(), *score, "score of {text}");
        assert_eq!(types[i], kind.to_string(), "type of {text}");
    }
    assert_eq!((tokens[400].as_str(), types[400].as_str()), ("<|im_end|>", "3"));
    assert_eq!((tokens[401].as_str(), types[401].as_str()), ("[PAD401]", "5"));

    // And back: a directory written from that GGUF has a tokenizer.json
    // that encodes as transformers' tokenizer built from the same GGUF
    // (`encoded.json`): merges derived from the scores, byte fallback, BOS.
    write_recipe(d, "b.fuse", "model(\"out.gguf\")\n");
    fuse_ok(d, &["run", "b.fuse", "-o", "back"]);
    let tok = tokenizers::Tokenizer::from_file(d.join("back/tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("encoded.json")).unwrap()).unwrap();
    for c in &cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let enc = tok.encode(text, true).unwrap();
        assert_eq!(enc.get_ids(), want.as_slice(), "{text:?}");
        assert_eq!(tok.decode(&want[1..], false).unwrap(), text);
    }
}
