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
