//! End to end through the real binary: the design card against a closed
//! form, outputs (atomic, sharded, config and tokenizer), overrides, the
//! local Hugging Face cache, determinism, and the examples.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::path::Path;

/// base, ft-math, ft-code, ft-chat under `dir/fuse-demo/models`, as `fuse demo` makes them.
fn demo_models(dir: &Path) -> std::path::PathBuf {
    let models = dir.join("fuse-demo/models");
    let shape = TinyLlama::demo();
    shape.write(&models.join("base"), &[(1, 0.02)]).unwrap();
    shape.write(&models.join("ft-math"), &[(1, 0.02), (11, 0.002)]).unwrap();
    shape.write(&models.join("ft-code"), &[(1, 0.02), (12, 0.002)]).unwrap();
    shape.write(&models.join("ft-chat"), &[(1, 0.02), (13, 0.002)]).unwrap();
    models
}

#[test]
fn design_card_equals_its_closed_form() {
    let tmp = tempfile::tempdir().unwrap();
    let models = demo_models(tmp.path());
    let recipe = root().join("examples/design_card.fuse");
    std::fs::create_dir_all(tmp.path().join("examples")).unwrap();
    std::fs::copy(&recipe, tmp.path().join("examples/design_card.fuse")).unwrap();
    fuse_ok(tmp.path(), &["run", "examples/design_card.fuse", "-o", "out"]);
    let out = read_model(&tmp.path().join("out"));
    let m: BTreeMap<&str, BTreeMap<String, T>> =
        ["base", "ft-math", "ft-code", "ft-chat"].iter().map(|n| (*n, read_model(&models.join(n)))).collect();
    let mut expected = BTreeMap::new();
    for (name, base) in &m["base"] {
        let b = &base.data;
        let ta = sub(&m["ft-math"][name].data, b);
        let tv = ties_reference(&[sub(&m["ft-code"][name].data, b), sub(&m["ft-chat"][name].data, b)], 0.2);
        let data = (0..b.len()).map(|i| b[i] + 0.3 * ta[i] + tv[i]).collect();
        expected.insert(name.clone(), T { data, ..base.clone() });
    }
    assert_close(&out, &expected, 1e-5);
    // The merge did something: the output is not the base.
    assert!(out.iter().any(|(n, t)| t.data != m["base"][n].data));
}

#[test]
fn set_overrides_a_param() {
    let tmp = tempfile::tempdir().unwrap();
    let models = demo_models(tmp.path());
    write_recipe(tmp.path(), "r.fuse", "base = model(\"fuse-demo/models/base\")\nft = model(\"fuse-demo/models/ft-math\")\nparam lam = 0.3\nbase + lam*(ft - base)\n");
    fuse_ok(tmp.path(), &["run", "r.fuse", "-o", "out", "--set", "lam=1"]);
    // lam = 1 gives the fine-tune itself.
    assert_close(&read_model(&tmp.path().join("out")), &read_model(&models.join("ft-math")), 1e-6);
    let o = fuse(tmp.path(), &["check", "r.fuse", "--set", "lam=\"x\""]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("E0106"), "{}", stderr(&o));
}

#[test]
fn check_points_at_the_mismatched_operand() {
    let tmp = tempfile::tempdir().unwrap();
    demo_models(tmp.path());
    TinyLlama { hidden: 48, ..TinyLlama::demo() }.write(&tmp.path().join("wide"), &[(3, 0.02)]).unwrap();
    write_recipe(
        tmp.path(),
        "r.fuse",
        "base = model(\"fuse-demo/models/base\")\nwide = model(\"wide\")\nbase + 0.5*(wide - base)\n",
    );
    let o = fuse(tmp.path(), &["check", "r.fuse"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("E0201") && e.contains("r.fuse:3:13"), "{e}");
    assert!(e.contains("[256, 48]") && e.contains("[256, 64]"), "{e}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn outputs_are_complete_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let models = demo_models(tmp.path());
    write_recipe(
        tmp.path(),
        "r.fuse",
        "base = model(\"fuse-demo/models/base\")\nft = model(\"fuse-demo/models/ft-chat\")\nsave(linear(base, ft), \"one\", dtype=bf16)\nsave(linear(base, ft), \"many\", shard=\"20KB\")\n",
    );
    fuse_ok(tmp.path(), &["run", "r.fuse"]);
    let one = tmp.path().join("one");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["num_hidden_layers"], 4);
    assert!(one.join("tokenizer.json").is_file() && one.join("generation_config.json").is_file());
    assert!(std::fs::read_to_string(one.join("README.md"))
        .unwrap()
        .contains("save(linear(base, ft), \"one\", dtype=bf16)"));
    assert!(read_model(&one).values().all(|t| t.dtype == "BF16"));
    // Sharded: an index naming every tensor, shards that read back to the same numbers.
    let many = tmp.path().join("many");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(many.join("model.safetensors.index.json")).unwrap()).unwrap();
    let shards: std::collections::BTreeSet<&str> =
        index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 1, "{shards:?}");
    let merged = read_model(&many);
    assert_eq!(merged.len(), index["weight_map"].as_object().unwrap().len());
    let (b, f) = (read_model(&models.join("base")), read_model(&models.join("ft-chat")));
    let expected = b
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                T { data: t.data.iter().zip(&f[n].data).map(|(x, y)| 0.5 * x + 0.5 * y).collect(), ..t.clone() },
            )
        })
        .collect();
    assert_close(&merged, &expected, 1e-6);
    // A sharded checkpoint is also read as an input.
    write_recipe(
        tmp.path(),
        "again.fuse",
        "m = model(\"many\")\nbase = model(\"fuse-demo/models/base\")\nbase + (m - base)\n",
    );
    fuse_ok(tmp.path(), &["run", "again.fuse", "-o", "again"]);
    assert_close(&read_model(&tmp.path().join("again")), &merged, 1e-6);
}

#[test]
fn existing_outputs_are_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    demo_models(tmp.path());
    write_recipe(tmp.path(), "r.fuse", "base = model(\"fuse-demo/models/base\")\nbase\n");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    std::fs::write(tmp.path().join("out/keep.txt"), "precious").unwrap();
    let o = fuse(tmp.path(), &["run", "r.fuse", "-o", "out"]);
    assert!(!o.status.success());
    expect_code(&stderr(&o), "E0402");
    assert_eq!(std::fs::read_to_string(tmp.path().join("out/keep.txt")).unwrap(), "precious");
    // --force replaces only outputs fuse wrote (tests/outputs.rs has every case).
    let o = fuse(tmp.path(), &["run", "r.fuse", "-o", "out", "--force"]);
    expect_code(&stderr(&o), "E0402");
    assert!(stderr(&o).contains("`keep.txt`"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(tmp.path().join("out/keep.txt")).unwrap(), "precious");
    std::fs::remove_file(tmp.path().join("out/keep.txt")).unwrap();
    fuse_ok(tmp.path(), &["run", "r.fuse", "-o", "out"]);
    fuse_ok(tmp.path(), &["run", "r.fuse", "-o", "out", "--force"]);
    assert!(tmp.path().join("out/model.safetensors").is_file());
}

#[test]
fn a_failed_run_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    demo_models(tmp.path());
    write_recipe(tmp.path(), "r.fuse", "base = model(\"fuse-demo/models/base\")\nbase\n");
    // The output's parent is a file: the run must fail cleanly.
    std::fs::write(tmp.path().join("blocker"), "").unwrap();
    let o = fuse(tmp.path(), &["run", "r.fuse", "-o", "blocker/out"]);
    assert!(!o.status.success());
    expect_code(&stderr(&o), "E0403");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("fuse-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn models_resolve_in_the_local_hugging_face_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let repo = hub.join("models--acme--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();
    TinyLlama::default().write(&repo.join("snapshots/0123abcd"), &[(1, 0.02)]).unwrap();
    write_recipe(tmp.path(), "r.fuse", "m = model(\"hf:acme/tiny\")\nm\n");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fuse"))
        .current_dir(tmp.path())
        .env("HF_HUB_CACHE", &hub)
        .args(["check", "r.fuse"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    write_recipe(tmp.path(), "missing.fuse", "m = model(\"hf:acme/absent\")\nm\n");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fuse"))
        .current_dir(tmp.path())
        .env("HF_HUB_CACHE", &hub)
        .args(["check", "missing.fuse"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("E0301") && e.contains("never downloads"), "{e}");
}

#[test]
fn thread_count_does_not_change_a_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = root().join("tests/golden/ties.fuse");
    let run = |threads: &str, out: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fuse"))
            .env("RAYON_NUM_THREADS", threads)
            .args(["run", recipe.to_str().unwrap(), "-o", tmp.path().join(out).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(tmp.path().join(out).join("model.safetensors")).unwrap()
    };
    assert_eq!(run("1", "a"), run("2", "b"));
}

#[test]
fn inspect_and_graph_describe_without_computing() {
    let tmp = tempfile::tempdir().unwrap();
    demo_models(tmp.path());
    let o = fuse_ok(tmp.path(), &["inspect", "fuse-demo/models/base", "--tensors"]);
    let s = stdout(&o);
    assert!(
        s.contains("LlamaForCausalLM")
            && s.contains("layers:       4")
            && s.contains("model.layers.3.mlp.down_proj.weight"),
        "{s}"
    );
    std::fs::create_dir_all(tmp.path().join("examples")).unwrap();
    std::fs::copy(root().join("examples/design_card.fuse"), tmp.path().join("examples/d.fuse")).unwrap();
    let o = fuse_ok(tmp.path(), &["graph", "examples/d.fuse"]);
    let s = stdout(&o);
    assert!(s.contains("Consensus") && s.contains("out lm_head.weight"), "{s}");
}

#[test]
fn every_example_runs() {
    let tmp = tempfile::tempdir().unwrap();
    demo_models(tmp.path());
    let ex = tmp.path().join("examples");
    std::fs::create_dir_all(&ex).unwrap();
    let mut examples: Vec<_> = std::fs::read_dir(root().join("examples")).unwrap().map(|e| e.unwrap().path()).collect();
    // In name order: lora_2_apply uses what lora_1_extract writes.
    examples.sort();
    for p in examples {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::copy(&p, ex.join(&name)).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let text = std::fs::read_to_string(&p).unwrap();
        let ends_in_expr =
            !text.lines().rfind(|l| !l.trim().is_empty() && !l.starts_with('#')).unwrap().starts_with("save");
        let mut args = vec!["run", name.as_str()];
        if ends_in_expr {
            args.extend(["-o", out.to_str().unwrap()]);
        }
        fuse_ok(&ex, &args);
    }
    assert!(tmp.path().join("fuse-demo/out/ties-bf16/model.safetensors.index.json").is_file());
}

#[test]
fn demo_runs_from_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let o = fuse_ok(tmp.path(), &["demo", "d"]);
    assert!(stdout(&o).contains("merged model: d/merged"), "{}", stdout(&o));
    assert!(tmp.path().join("d/merged/model.safetensors").is_file());
}

#[test]
fn engines_and_memory_budgets_agree_to_the_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for golden in ["ties", "task_arithmetic_gradient", "slerp", "model_stock", "nuslerp", "sce", "breadcrumbs_ties"] {
        let recipe = root().join("tests/golden").join(format!("{golden}.fuse"));
        let run = |out: &str, extra: &[&str]| {
            let dir = tmp.path().join(format!("{golden}-{out}"));
            let mut args = vec!["run", recipe.to_str().unwrap(), "-o", dir.to_str().unwrap()];
            args.extend(extra);
            fuse_ok(tmp.path(), &args);
            std::fs::read(dir.join("model.safetensors")).unwrap()
        };
        let streamed = run("stream", &[]);
        assert_eq!(streamed, run("candle", &["--device", "candle-cpu"]), "{golden}: candle engine differs");
        assert_eq!(streamed, run("tiny-budget", &["--max-memory", "1KB"]), "{golden}: memory budget changed bytes");
    }
}
