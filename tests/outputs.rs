//! Outputs never destroy what fuse did not write: an output that overlaps an
//! input (the same path, an ancestor, a path inside it, through links) is
//! refused with or without `--force` (E0406), and `--force` replaces only
//! directories fuse wrote (E0402 otherwise). Every case asserts that every
//! byte of the user's files survives.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Every file, link and directory under `dir`, with its bytes (a link's target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if meta.file_type().is_symlink() {
                out.insert(rel, std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes());
            } else if meta.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The issue's layout: `work/` with two models, notes and a recipe merging them.
fn work(root: &Path) -> PathBuf {
    let w = root.join("work");
    let shape = TinyLlama::default();
    shape.write(&w.join("base"), &[(1, 0.02)]).unwrap();
    shape.write(&w.join("ft0"), &[(1, 0.02), (2, 0.01)]).unwrap();
    std::fs::write(w.join("notes.txt"), "what I tried\n").unwrap();
    write_recipe(&w, "r.fuse", "base = model(\"base\")\nft0 = model(\"ft0\")\nbase + 0.5*(ft0 - base)\n");
    w
}

/// Runs fuse and expects it to fail with `code`, every `words` in stderr, and `root` unchanged.
fn refused(cwd: &Path, args: &[&str], code: &str, words: &[&str], root: &Path) -> String {
    let before = snapshot(root);
    let o = fuse(cwd, args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "fuse {args:?}: {e}");
    expect_code(&e, code);
    for w in words {
        assert!(e.contains(w), "fuse {args:?}: expected `{w}` in\n{e}");
    }
    assert_eq!(snapshot(root), before, "fuse {args:?} changed files");
    e
}

#[test]
fn an_output_over_the_recipes_own_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let w = work(tmp.path());
    for force in [true, false] {
        let mut args = vec!["run", "r.fuse", "-o", "../work"];
        if force {
            args.push("--force");
        }
        let e = refused(&w, &args, "E0406", &["contains the model `base`", "read here", "r.fuse:3"], tmp.path());
        assert!(e.contains("with or without --force"), "{e}");
    }
    // `.` and a path that climbs back into the directory are the same directory.
    refused(&w, &["run", "r.fuse", "-o", ".", "--force"], "E0406", &["contains"], tmp.path());
    refused(&w, &["run", "r.fuse", "-o", "base/../../work", "--force"], "E0406", &["contains"], tmp.path());
}

#[test]
fn an_output_that_is_contains_or_lies_inside_an_input_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::default();
    shape.write(&d.join("models/base"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("models/ft0"), &[(1, 0.02), (2, 0.01)]).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"models/base\")\nft0 = model(\"models/ft0\")\nbase + 0.5*(ft0 - base)\n");
    let cases: &[(&str, &str)] = &[
        ("models", "contains the model `models/base`"),
        ("models/base", "is the model `models/base`"),
        ("models/ft0", "is the model `models/ft0`"),
        ("models/base/merged", "is inside the model `models/base`"),
        ("models/base/model.safetensors", "is inside the model `models/base`"),
        ("r.fuse", "is the recipe"),
    ];
    for (out, words) in cases {
        refused(d, &["run", "r.fuse", "-o", out, "--force"], "E0406", &[words], d);
    }
    // A single-file model and its directory.
    write_recipe(d, "file.fuse", "m = model(\"models/base/model.safetensors\")\nm\n");
    refused(d, &["run", "file.fuse", "-o", "models/base", "--force"], "E0406", &["contains the model"], d);
    // The same run elsewhere is fine.
    fuse_ok(d, &["run", "r.fuse", "-o", "merged"]);
}

#[test]
fn links_are_resolved_before_comparing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::default();
    shape.write(&d.join("store/base"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("store/ft0"), &[(1, 0.02), (2, 0.01)]).unwrap();
    std::os::unix::fs::symlink(d.join("store/base"), d.join("base")).unwrap();
    std::os::unix::fs::symlink(d.join("store"), d.join("alias")).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nft0 = model(\"store/ft0\")\nbase + 0.5*(ft0 - base)\n");
    // The model is read through a link; the output names the real directory, or another link to it.
    for out in ["store/base", "alias/base", "store", "alias", "base", "alias/ft0/x"] {
        refused(d, &["run", "r.fuse", "-o", out, "--force"], "E0406", &["resolves to"], d);
    }
}

#[test]
fn saves_and_imports_are_checked_too() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::default();
    shape.write(&d.join("base"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("ft0"), &[(1, 0.02), (2, 0.01)]).unwrap();
    std::fs::create_dir(d.join("lib")).unwrap();
    write_recipe(&d.join("lib"), "ops.fuse", "fn half(a, b) = 0.5*a + 0.5*b\n");
    write_recipe(d, "save.fuse", "base = model(\"base\")\nsave(base, \"base\")\n");
    // `fuse check` already refuses a save over an input.
    let e = refused(d, &["check", "save.fuse"], "E0406", &["is the model `base`", "save.fuse:2"], d);
    assert!(e.contains("written here"), "{e}");
    refused(d, &["run", "save.fuse", "--force"], "E0406", &["is the model `base`"], d);
    write_recipe(d, "imp.fuse", "import \"lib/ops.fuse\"\nhalf(model(\"base\"), model(\"ft0\"))\n");
    refused(d, &["run", "imp.fuse", "-o", "lib", "--force"], "E0406", &["contains the import `lib/ops.fuse`"], d);
    // A save before the model it overlaps is still caught.
    write_recipe(d, "late.fuse", "ft0 = model(\"ft0\")\nsave(ft0, \".\")\nbase = model(\"base\")\n");
    refused(d, &["check", "late.fuse"], "E0406", &["contains the model"], d);
}

#[test]
fn force_replaces_only_what_fuse_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nbase\n");
    // A directory of the user's files, with and without --force.
    std::fs::create_dir_all(d.join("mine/sub")).unwrap();
    std::fs::write(d.join("mine/keep.txt"), "precious").unwrap();
    std::fs::write(d.join("mine/sub/deep.bin"), [1u8, 2, 3]).unwrap();
    refused(d, &["run", "r.fuse", "-o", "mine"], "E0402", &["not empty", "--force"], d);
    refused(d, &["run", "r.fuse", "-o", "mine", "--force"], "E0402", &["2 entries", "`keep.txt`", "`sub/deep.bin`"], d);
    // A file and a link.
    std::fs::write(d.join("file"), "x").unwrap();
    refused(d, &["run", "r.fuse", "-o", "file", "--force"], "E0402", &["not a directory"], d);
    std::os::unix::fs::symlink(d.join("mine"), d.join("link")).unwrap();
    refused(d, &["run", "r.fuse", "-o", "link", "--force"], "E0402", &["symbolic link"], d);
    // An empty directory needs no --force.
    std::fs::create_dir(d.join("empty")).unwrap();
    fuse_ok(d, &["run", "r.fuse", "-o", "empty"]);
    // fuse's own output is replaced with --force, and lists what it holds.
    fuse_ok(d, &["run", "r.fuse", "-o", "out"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/fuse-output.json")).unwrap()).unwrap();
    let listed: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let mut present: Vec<String> =
        std::fs::read_dir(d.join("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    present.sort();
    assert_eq!(listed, present);
    refused(d, &["run", "r.fuse", "-o", "out"], "E0402", &["not empty"], d);
    fuse_ok(d, &["run", "r.fuse", "-o", "out", "--force"]);
    // Once the user adds a file, it is no longer fuse's to replace.
    std::fs::write(d.join("out/eval.md"), "scores").unwrap();
    refused(d, &["run", "r.fuse", "-o", "out", "--force"], "E0402", &["1 entry", "`eval.md`"], d);
    // An output written before the manifest existed is recognised by its model card.
    std::fs::remove_file(d.join("out/eval.md")).unwrap();
    std::fs::remove_file(d.join("out/fuse-output.json")).unwrap();
    fuse_ok(d, &["run", "r.fuse", "-o", "out", "--force"]);
    assert!(d.join("out/fuse-output.json").is_file());
    // ... but not a directory that only carries a card like it.
    std::fs::create_dir(d.join("fake")).unwrap();
    std::fs::copy(d.join("out/README.md"), d.join("fake/README.md")).unwrap();
    std::fs::write(d.join("fake/train.py"), "print()").unwrap();
    refused(d, &["run", "r.fuse", "-o", "fake", "--force"], "E0402", &["`train.py`"], d);
}

#[test]
fn a_failed_replacement_keeps_the_old_output() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nbase\n");
    fuse_ok(d, &["run", "r.fuse", "-o", "out"]);
    // A model holding NaN: with --strict the run fails after computing, before the swap.
    let mut data = Vec::new();
    for v in [1.0f32, f32::NAN] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    std::fs::create_dir(d.join("nan")).unwrap();
    let mut f = std::fs::File::create(d.join("nan/model.safetensors")).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.write_all(&data).unwrap();
    std::fs::write(d.join("nan/config.json"), TinyLlama::default().config_json()).unwrap();
    write_recipe(d, "nan.fuse", "m = model(\"nan\")\nm\n");
    refused(d, &["run", "nan.fuse", "-o", "out", "--force", "--strict"], "E0403", &["NaN"], d);
}

#[test]
fn the_repl_refuses_to_save_over_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    let before = snapshot(d);
    let (out, _) = crate::repl::repl(d, &[], "m = model(\"base\")\n:save m base\n:save m .\n");
    assert_eq!(out.matches("E0406").count(), 2, "{out}");
    assert!(out.contains("is the model `base`") && out.contains("contains the model `base`"), "{out}");
    let mut after = snapshot(d);
    after.remove(Path::new("history"));
    assert_eq!(after, before);
}

/// Leftovers of killed runs are recognised by their lock, not their PID: a
/// PID that is alive here may belong to another PID namespace (or be reused),
/// and a live run elsewhere must keep its partial output.
#[test]
fn stale_partial_outputs_are_found_by_lock_not_by_pid() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nbase\n");
    // Named after PID 1, which is always alive: only the missing lock says they are stale.
    for stale in [".out.fuse-partial-1-0-0", ".out.fuse-old-1-0-0-0"] {
        std::fs::create_dir(d.join(stale)).unwrap();
        std::fs::write(d.join(stale).join("model.safetensors"), "half").unwrap();
    }
    // A run in progress elsewhere: its directory is locked.
    let live = d.join(".out.fuse-partial-77-0-0");
    std::fs::create_dir(&live).unwrap();
    let held = std::fs::File::open(&live).unwrap();
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    fuse_ok(d, &["run", "r.fuse", "-o", "out"]);
    assert!(!d.join(".out.fuse-partial-1-0-0").exists() && !d.join(".out.fuse-old-1-0-0-0").exists());
    assert!(live.is_dir(), "a locked partial output was removed");
    drop(held);
    fuse_ok(d, &["run", "r.fuse", "-o", "out", "--force"]);
    assert!(!live.exists(), "an unlocked partial output was kept");
}
