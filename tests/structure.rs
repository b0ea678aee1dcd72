//! Model structure: LoRA out and back in, stacked outputs.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;

/// A fine-tune whose task vector has rank `r` on every 2-D layer tensor.
fn low_rank_finetune(dir: &std::path::Path, r: usize) -> BTreeMap<String, T> {
    let shape = TinyLlama::demo();
    shape.write(&dir.join("base"), &[(1, 0.02)]).unwrap();
    let mut ft = read_model(&dir.join("base"));
    let mut seed = 12345u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for (name, t) in ft.iter_mut() {
        if t.shape.len() != 2 || !name.contains(".layers.") {
            continue;
        }
        let (out, inn) = (t.shape[0], t.shape[1]);
        let u: Vec<f32> = (0..out * r).map(|_| rnd()).collect();
        let v: Vec<f32> = (0..r * inn).map(|_| rnd()).collect();
        for i in 0..out {
            for j in 0..inn {
                t.data[i * inn + j] += 0.01 * (0..r).map(|k| u[i * r + k] * v[k * inn + j]).sum::<f32>();
            }
        }
    }
    write_model(&dir.join("ft"), &ft, &shape.config_json());
    ft
}

#[test]
fn lora_round_trip_reproduces_a_low_rank_finetune() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ft = low_rank_finetune(d, 4);
    write_recipe(
        d,
        "extract.fuse",
        "base = model(\"base\")\nft = model(\"ft\")\nsave_lora(ft - base, \"adapter\", rank=4)\n",
    );
    let o = fuse_ok(d, &["run", "extract.fuse"]);
    let e = stderr(&o);
    assert!(e.contains("layer   0: 100.00% of the energy kept"), "{e}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 4);
    assert!(cfg["base_model_name_or_path"].as_str().unwrap().ends_with("base"));
    let modules: Vec<&str> = cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(modules, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
    let adapter = read_model_file(&d.join("adapter/adapter_model.safetensors"));
    let a = &adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"];
    assert_eq!((a.shape.clone(), b.shape.clone()), (vec![4, 64], vec![64, 4]));
    // And back: base + lora(adapter) is the fine-tune.
    write_recipe(d, "apply.fuse", "base = model(\"base\")\nbase + lora(\"adapter\")\n");
    fuse_ok(d, &["run", "apply.fuse", "-o", "out"]);
    assert_close(&read_model(&d.join("out")), &ft, 1e-4);
}

#[test]
fn lora_shapes_are_checked_against_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    low_rank_finetune(d, 2);
    write_recipe(
        d,
        "extract.fuse",
        "base = model(\"base\")\nft = model(\"ft\")\nsave_lora(ft - base, \"adapter\", rank=2)\n",
    );
    fuse_ok(d, &["run", "extract.fuse"]);
    // Claim a different rank in the config: every module's shapes disagree.
    let p = d.join("adapter/adapter_config.json");
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("\"r\": 2", "\"r\": 3")).unwrap();
    write_recipe(d, "apply.fuse", "base = model(\"base\")\nbase + lora(\"adapter\")\n");
    let o = fuse(d, &["check", "apply.fuse"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("E0302") && e.contains("rank 3 needs lora_A [3, ") && e.contains("the adapter has [2, "), "{e}");
}

/// Reads one safetensors file (the adapter's is not named model.safetensors).
fn read_model_file(p: &std::path::Path) -> BTreeMap<String, T> {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(p, tmp.path().join("x.safetensors")).unwrap();
    read_model(tmp.path())
}

#[test]
fn moe_builds_a_mixtral_from_dense_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::demo();
    for (name, terms) in
        [("base", vec![(1, 0.02)]), ("math", vec![(1, 0.02), (2, 0.01)]), ("code", vec![(1, 0.02), (3, 0.01)])]
    {
        shape.write(&d.join(name), &terms).unwrap();
    }
    write_recipe(
        d,
        "moe.fuse",
        "base = model(\"base\")\nmath = model(\"math\")\ncode = model(\"code\")\nmoe(experts=[math, code], top_k=1, prompts=[\"tok5 tok7\", [\"tok9\", \"tok11 tok12\"]])\n",
    );
    fuse_ok(d, &["run", "moe.fuse", "-o", "out"]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "MixtralForCausalLM");
    assert_eq!(cfg["model_type"], "mixtral");
    assert_eq!((cfg["num_local_experts"].as_u64(), cfg["num_experts_per_tok"].as_u64()), (Some(2), Some(1)));
    assert_eq!(cfg["num_hidden_layers"], 4);
    let out = read_model(&d.join("out"));
    let (base, experts) = (read_model(&d.join("base")), [read_model(&d.join("math")), read_model(&d.join("code"))]);
    // Every expected tensor, and nothing else.
    let mut want = Vec::new();
    for name in base.keys().filter(|n| !n.contains(".mlp.")) {
        want.push(name.clone());
    }
    for l in 0..4 {
        want.push(format!("model.layers.{l}.block_sparse_moe.gate.weight"));
        for e in 0..2 {
            for w in ["w1", "w2", "w3"] {
                want.push(format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight"));
            }
        }
    }
    want.sort();
    assert_eq!(out.keys().cloned().collect::<Vec<_>>(), want);
    for l in 0..4 {
        assert_eq!(out[&format!("model.layers.{l}.block_sparse_moe.gate.weight")].shape, vec![2, 64]);
        for (e, ex) in experts.iter().enumerate() {
            for (dense, w) in [("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")] {
                let got = &out[&format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}.weight")];
                let src = &ex[&format!("model.layers.{l}.mlp.{dense}.weight")];
                assert_eq!(got.shape, src.shape);
                assert!(
                    got.data.iter().zip(&src.data).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "expert {e} {w} differs"
                );
            }
        }
    }
    for (name, t) in base.iter().filter(|(n, _)| !n.contains(".mlp.")) {
        assert!(
            out[name].data.iter().zip(&t.data).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} is not the base's"
        );
    }
    // cheap_embed: each router row is the mean embedding of its expert's prompt tokens.
    let embed = &base["model.embed_tokens.weight"];
    let row = |id: usize| &embed.data[id * 64..(id + 1) * 64];
    let gate = &out["model.layers.2.block_sparse_moe.gate.weight"];
    for (e, ids) in [vec![5, 7], vec![9, 11, 12]].iter().enumerate() {
        for j in 0..64 {
            let mean = ids.iter().map(|&i| row(i)[j] as f64).sum::<f64>() / ids.len() as f64;
            assert!((gate.data[e * 64 + j] as f64 - mean).abs() < 1e-6, "expert {e} column {j}");
        }
    }
    // Other gates: uniform is zeros; random is seeded and varies by layer.
    write_recipe(
        d,
        "uni.fuse",
        "base = model(\"base\")\nmoe(experts=[model(\"math\"), model(\"code\")], gate=\"uniform\")\n",
    );
    fuse_ok(d, &["run", "uni.fuse", "-o", "uni"]);
    assert!(read_model(&d.join("uni"))["model.layers.0.block_sparse_moe.gate.weight"].data.iter().all(|v| *v == 0.0));
    write_recipe(
        d,
        "rnd.fuse",
        "base = model(\"base\")\nmoe(experts=[model(\"math\"), model(\"code\")], gate=\"random\", seed=3)\n",
    );
    fuse_ok(d, &["run", "rnd.fuse", "-o", "rnd"]);
    let rnd = read_model(&d.join("rnd"));
    let (g0, g1) =
        (&rnd["model.layers.0.block_sparse_moe.gate.weight"], &rnd["model.layers.1.block_sparse_moe.gate.weight"]);
    assert_ne!(g0.data, g1.data);
    let var = g0.data.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / g0.data.len() as f64;
    assert!((0.5..1.6).contains(&var), "router entries should be standard normal, variance {var}");
}

#[test]
fn vocab_mismatches_name_both_sizes_and_resize_vocab_fixes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::demo().write(&d.join("a"), &[(1, 0.02)]).unwrap();
    TinyLlama { vocab: 260, ..TinyLlama::demo() }.write(&d.join("b"), &[(1, 0.02), (2, 0.01)]).unwrap();
    write_recipe(d, "bad.fuse", "a = model(\"a\")\nb = model(\"b\")\na + 0.5*(b - a)\n");
    let o = fuse(d, &["check", "bad.fuse"]);
    let e = stderr(&o);
    assert!(
        !o.status.success()
            && e.contains("vocabulary sizes differ: 256 in `a`, 260 in `b`")
            && e.contains("resize_vocab(b, like=a)"),
        "{e}"
    );
    // Crop b to a's vocabulary, and pad a to b's.
    write_recipe(d, "crop.fuse", "a = model(\"a\")\nb = resize_vocab(model(\"b\"), like=a)\na + 0.5*(b - a)\n");
    fuse_ok(d, &["run", "crop.fuse", "-o", "crop"]);
    write_recipe(d, "pad.fuse", "b = model(\"b\")\nresize_vocab(model(\"a\"), like=b)\n");
    fuse_ok(d, &["run", "pad.fuse", "-o", "pad"]);
    let (a, b) = (read_model(&d.join("a")), read_model(&d.join("b")));
    let crop = read_model(&d.join("crop"));
    let e = &crop["model.embed_tokens.weight"];
    assert_eq!(e.shape, vec![256, 64]);
    for i in 0..256 * 64 {
        let want = a["model.embed_tokens.weight"].data[i]
            + 0.5 * (b["model.embed_tokens.weight"].data[i] - a["model.embed_tokens.weight"].data[i]);
        assert!((e.data[i] - want).abs() < 1e-6);
    }
    let pad = read_model(&d.join("pad"));
    let (pe, ae) = (&pad["lm_head.weight"], &a["lm_head.weight"]);
    assert_eq!(pe.shape, vec![260, 64]);
    assert_eq!(&pe.data[..256 * 64], &ae.data[..]);
    for j in 0..64 {
        let mean = (0..256).map(|r| ae.data[r * 64 + j] as f64).sum::<f64>() / 256.0;
        for r in 256..260 {
            assert!((pe.data[r * 64 + j] as f64 - mean).abs() < 1e-6);
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("pad/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], 260);
}

#[test]
fn a_pytorch_bin_merges_like_its_safetensors_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::demo();
    shape.write(&d.join("base"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("ft"), &[(1, 0.02), (4, 0.01)]).unwrap();
    write_bin(&d.join("ft-bin"), &read_model(&d.join("ft")), &shape.config_json(), b"");
    let o = fuse_ok(d, &["inspect", "ft-bin"]);
    assert!(stdout(&o).contains("LlamaForCausalLM") && stdout(&o).contains("tensors:      39"), "{}", stdout(&o));
    for (name, m) in [("st", "ft"), ("bin", "ft-bin")] {
        write_recipe(
            d,
            &format!("{name}.fuse"),
            &format!("base = model(\"base\")\nft = model(\"{m}\")\nbase + ties(ft, density=0.4)\n"),
        );
        fuse_ok(d, &["run", &format!("{name}.fuse"), "-o", &format!("out-{name}")]);
    }
    assert_eq!(
        std::fs::read(d.join("out-st/model.safetensors")).unwrap(),
        std::fs::read(d.join("out-bin/model.safetensors")).unwrap()
    );
}

#[test]
fn a_pickle_that_would_run_code_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::demo();
    shape.write(&d.join("ft"), &[(1, 0.02)]).unwrap();
    let marker = d.join("pwned");
    // An item "x": os.system("touch <marker>"), evaluated as the pickle loads.
    let mut evil = b"X\x01\x00\x00\x00xcos\nsystem\n(X".to_vec();
    let cmd = format!("touch {}", marker.display());
    evil.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    evil.extend_from_slice(cmd.as_bytes());
    evil.extend_from_slice(b"tR");
    write_bin(&d.join("evil"), &read_model(&d.join("ft")), &shape.config_json(), &evil);
    write_recipe(d, "r.fuse", "m = model(\"evil\")\nm\n");
    let o = fuse(d, &["run", "r.fuse", "-o", "out"]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("evil/pytorch_model.bin")
            && e.contains("`os.system`")
            && e.contains("refuses pickles that run code"),
        "{e}"
    );
    assert!(!marker.exists(), "the pickle ran");
    assert!(!d.join("out").exists());
}
