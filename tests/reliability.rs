//! Bad input, faults and hostile files: every failure names the file and the
//! problem, exits non-zero, and leaves no output behind; interrupted runs
//! never leave a complete-looking output that differs from a full run; and
//! outputs do not depend on the thread count, the memory budget or the engine.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A safetensors file from a header and data.
fn st_bytes(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// A checkpoint directory `name` with a config.json and the given file.
fn checkpoint(dir: &Path, name: &str, file: &[u8]) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), TinyLlama::default().config_json()).unwrap();
    std::fs::write(d.join("model.safetensors"), file).unwrap();
    d
}

fn no_output_left(dir: &Path) {
    assert!(!dir.join("out").exists(), "an output directory was created");
    let partial: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".fuse-partial") || n.contains(".fuse-old"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

/// Runs `m = model("NAME")` to an output and expects a failure naming `file` and `problem`.
fn expect_bad(dir: &Path, name: &str, file: &str, problem: &str) {
    write_recipe(dir, "r.fuse", &format!("m = model(\"{name}\")\nm\n"));
    let o = fuse(dir, &["run", "r.fuse", "-o", "out"]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{name}: succeeded");
    assert!(e.contains(file) && e.contains(problem), "{name}: expected `{file}` and `{problem}` in:\n{e}");
    no_output_left(dir);
}

#[test]
fn malformed_safetensors_are_named_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ok = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let data = [0u8; 8];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not_json", st_bytes("{\"w\": nope}", &data), "not valid JSON"),
        (
            "too_long",
            {
                let mut v = st_bytes(ok, &data);
                v[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                v
            },
            "header claims",
        ),
        ("out_of_range", st_bytes(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, &data), "outside"),
        (
            "overlap",
            st_bytes(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0u8; 12],
            ),
            "overlap",
        ),
        ("unaligned", st_bytes(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#, &data), "not a multiple"),
        (
            "dtype",
            st_bytes(r#"{"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}}"#, &data),
            "unknown dtype `Q4_K`",
        ),
        ("truncated", st_bytes(ok, &data[..5]), "outside"),
        ("tiny", vec![1, 2, 3], "too short"),
    ];
    for (name, bytes, problem) in cases {
        checkpoint(d, name, &bytes);
        expect_bad(d, name, &format!("{name}/model.safetensors"), problem);
    }
}

#[test]
fn broken_checkpoint_directories_are_named_and_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sharded = TinyLlama { max_shard: 20_000, ..Default::default() };
    // An index naming a shard that is gone.
    let shards = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".safetensors"))
            .collect();
        v.sort();
        v
    };
    sharded.write(&d.join("lost_shard"), &[(1, 0.02)]).unwrap();
    let names = shards(&d.join("lost_shard"));
    assert!(names.len() > 2, "{names:?}");
    std::fs::remove_file(d.join("lost_shard").join(&names[1])).unwrap();
    expect_bad(d, "lost_shard", "model.safetensors.index.json", &names[1]);
    // An index placing a tensor in a shard that does not hold it.
    sharded.write(&d.join("misplaced"), &[(1, 0.02)]).unwrap();
    let index = d.join("misplaced/model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["lm_head.weight"] = names[0].clone().into();
    std::fs::write(&index, v.to_string()).unwrap();
    expect_bad(d, "misplaced", "model.safetensors.index.json", "no such tensor");
    // A shard path that climbs out of the checkpoint.
    sharded.write(&d.join("escape"), &[(1, 0.02)]).unwrap();
    let index = d.join("escape/model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace(&names[0], &format!("../escape/{}", names[0]));
    std::fs::write(&index, text).unwrap();
    expect_bad(d, "escape", "model.safetensors.index.json", "not a plain file name");
    // config.json missing, or not JSON.
    TinyLlama::default().write(&d.join("no_config"), &[(1, 0.02)]).unwrap();
    std::fs::remove_file(d.join("no_config/config.json")).unwrap();
    expect_bad(d, "no_config", "no_config/config.json", "no config.json");
    TinyLlama::default().write(&d.join("bad_config"), &[(1, 0.02)]).unwrap();
    std::fs::write(d.join("bad_config/config.json"), "{\"hidden_size\": ").unwrap();
    expect_bad(d, "bad_config", "bad_config/config.json", "not valid JSON");
    // A weights "file" that cannot be read (a directory in its place).
    std::fs::create_dir_all(d.join("unreadable/model.safetensors")).unwrap();
    std::fs::write(d.join("unreadable/config.json"), TinyLlama::default().config_json()).unwrap();
    expect_bad(d, "unreadable", "unreadable/model.safetensors", "cannot read");
}

#[test]
fn non_finite_inputs_warn_and_strict_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut data = Vec::new();
    for v in [1.0f32, f32::NAN, 2.0, 3.0] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    checkpoint(d, "nan", &st_bytes(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &data));
    write_recipe(d, "r.fuse", "m = model(\"nan\")\nm\n");
    let o = fuse(d, &["run", "r.fuse", "-o", "out"]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_code(&stderr(&o), "E0404");
    assert!(stderr(&o).contains("tensor `w`"), "{}", stderr(&o));
    let o = fuse(d, &["run", "r.fuse", "-o", "strict", "--strict"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("tensor `w`") && stderr(&o).contains("NaN"), "{}", stderr(&o));
    assert!(!d.join("strict").exists());
}

/// The TIES threshold's passes read without checking for NaN; the
/// streaming pass after them still finds it, in the base (read once a
/// chunk for every task vector) and in a fine-tune.
#[test]
fn non_finite_inputs_of_a_trim_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let header = r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    for (name, vals) in
        [("nan", [1.0f32, f32::NAN, 2.0, 3.0]), ("a", [1.5, 0.5, 2.5, 3.0]), ("b", [0.5, 1.0, 2.0, 4.0])]
    {
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        checkpoint(d, name, &st_bytes(header, &data));
    }
    for recipe in [
        "base = model(\"nan\")\nbase + ties(model(\"a\"), model(\"b\"), density=0.5)\n",
        "base = model(\"a\")\nbase + ties(model(\"nan\"), model(\"b\"), density=0.5)\n",
    ] {
        write_recipe(d, "r.fuse", recipe);
        let o = fuse(d, &["run", "r.fuse", "-o", "out", "--force"]);
        assert!(o.status.success(), "{}", stderr(&o));
        expect_code(&stderr(&o), "E0404");
        assert!(stderr(&o).contains("tensor `w`") && stderr(&o).contains("nan"), "{}", stderr(&o));
    }
}

/// A disk that fills up: a small tmpfs in a private mount namespace.
#[test]
fn a_full_disk_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama { hidden: 64, intermediate: 128, vocab: 512, ..Default::default() }
        .write(&d.join("m"), &[(1, 0.02)])
        .unwrap();
    write_recipe(d, "r.fuse", "m = model(\"m\")\nm\n");
    std::fs::create_dir(d.join("small")).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs small && {fuse} run r.fuse -o small/out; echo rc=$?; ls -A small",
        fuse = env!("CARGO_BIN_EXE_fuse")
    );
    let o = Command::new("unshare")
        .args(["--mount", "--map-root-user", "sh", "-c", &script])
        .current_dir(d)
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(out.contains("rc=1"), "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("No space left") && err.contains("small/out"), "{err}");
    // `ls -A small` printed nothing after the rc line: no output, no partial files.
    assert_eq!(out.lines().skip_while(|l| !l.starts_with("rc=")).count(), 1, "left behind:\n{out}");
}

/// Kills runs at several points; an output that exists must equal a full
/// run's, and no output means fuse stopped (exit 130, E0405) or was killed.
/// The test must see both happen part way through writing: a SIGINT or
/// SIGTERM that fuse handles, and a SIGKILL that leaves the hidden partial
/// directory for the next run to remove. Each signal is also sent as soon
/// as the partial directory appears; a machine fast enough to finish first
/// gets a larger model (a few times at most).
#[test]
fn interrupted_runs_leave_nothing_or_the_whole_thing() {
    let mut seen = Vec::new();
    for vocab in [8_000, 24_000, 64_000] {
        let (stopped, killed) = interrupt_runs(vocab);
        if stopped > 0 && killed > 0 {
            return;
        }
        seen.push(format!("vocab {vocab}: {stopped} stopped by fuse, {killed} killed while writing"));
    }
    panic!("no run was interrupted part way through:\n{}", seen.join("\n"));
}

/// Signals runs of a TIES merge with the given vocabulary; returns how many
/// fuse stopped cleanly and how many a SIGKILL ended while writing.
fn interrupt_runs(vocab: usize) -> (usize, usize) {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama { hidden: 256, intermediate: 704, layers: 4, vocab, ..Default::default() };
    shape.write(&d.join("a"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("b"), &[(1, 0.02), (2, 0.01)]).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"a\")\nb = model(\"b\")\nbase + ties(b, density=0.3)\n");
    fuse_ok(d, &["run", "r.fuse", "-o", "reference"]);
    let reference = std::fs::read(d.join("reference/model.safetensors")).unwrap();
    let hidden = |out: &str, tag: &str| -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".{out}.fuse-{tag}")))
            .collect()
    };
    // A delay after the start, or none: at once when the partial directory appears.
    let delays = [Some(1u64), Some(10), Some(25), Some(50), Some(100), Some(200), None, None, None];
    let (mut stopped, mut killed) = (0, 0);
    for (i, delay) in delays.iter().enumerate() {
        let signal = ["INT", "TERM", "KILL"][i % 3];
        let when = delay.map_or("when writing starts".to_string(), |ms| format!("at {ms} ms"));
        let out = format!("out{i}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
            .current_dir(d)
            .args(["run", "r.fuse", "-o", &out])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        match delay {
            Some(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            None => {
                while hidden(&out, "partial").is_empty() && child.try_wait().unwrap().is_none() {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        let done = child.wait_with_output().unwrap();
        let (status, err) = (done.status, stderr(&done));
        let target = d.join(&out);
        if target.exists() {
            assert_eq!(std::fs::read(target.join("model.safetensors")).unwrap(), reference, "{signal} {when}");
        } else if status.signal().is_some() {
            // SIGKILL, or a signal that landed before fuse installed its handlers.
            killed += usize::from(signal == "KILL" && !hidden(&out, "partial").is_empty());
        } else {
            assert_eq!(status.code(), Some(130), "{signal} {when}: {status:?}\n{err}");
            expect_code(&err, "E0405");
            assert!(hidden(&out, "").is_empty(), "{signal} {when}: fuse stopped but left {:?}", hidden(&out, ""));
            stopped += 1;
        }
        // Anything a killed run left is hidden, and the next run to that output removes it.
        if !target.exists() {
            fuse_ok(d, &["run", "r.fuse", "-o", &out]);
            assert_eq!(std::fs::read(target.join("model.safetensors")).unwrap(), reference);
        }
        let leftovers = hidden(&out, "");
        assert!(leftovers.is_empty(), "{signal} {when} left {leftovers:?}");
    }
    (stopped, killed)
}

#[test]
fn concurrent_runs_to_one_output_end_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama { hidden: 128, intermediate: 352, vocab: 4000, ..Default::default() };
    shape.write(&d.join("a"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("b"), &[(1, 0.02), (2, 0.01)]).unwrap();
    write_recipe(d, "r.fuse", "a = model(\"a\")\nb = model(\"b\")\nlinear(a, b)\n");
    fuse_ok(d, &["run", "r.fuse", "-o", "reference"]);
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_fuse"))
                .current_dir(d)
                .args(["run", "r.fuse", "-o", "out", "--force"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        std::fs::read(d.join("out/model.safetensors")).unwrap(),
        std::fs::read(d.join("reference/model.safetensors")).unwrap()
    );
    no_output_left_but(d, "out");
}

fn no_output_left_but(dir: &Path, keep: &str) {
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{keep}.fuse-")))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

/// Every golden recipe gives the same bytes with 1 or 2 threads and any memory budget.
#[test]
fn outputs_do_not_depend_on_threads_or_budget() {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let recipe = e.unwrap().path();
        let name = recipe.file_stem().unwrap().to_string_lossy().into_owned();
        let run = |tag: &str, threads: &str, extra: &[&str]| {
            let out = tmp.path().join(format!("{name}-{tag}"));
            let mut args =
                vec!["run".to_string(), recipe.display().to_string(), "-o".into(), out.display().to_string()];
            args.extend(extra.iter().map(|s| s.to_string()));
            let o = Command::new(env!("CARGO_BIN_EXE_fuse"))
                .env("RAYON_NUM_THREADS", threads)
                .args(&args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            std::fs::read(out.join("model.safetensors")).unwrap()
        };
        let one = run("1", "1", &[]);
        assert_eq!(one, run("2", "2", &[]), "{name}: threads");
        assert_eq!(one, run("budget", "2", &["--max-memory", "1KB"]), "{name}: memory budget");
    }
}

/// The same for tensors several streaming chunks long and not a multiple of
/// one, where the work of one tensor is split: per-chunk partial sums (norms,
/// L1, counts), TIES's selection histograms (one per block of chunks, and
/// the blocks depend on the thread count), per-chunk budgets for magnitudes
/// equal to the threshold (bf16 deltas have many), random streams and whole
/// tensors under the budget. The candle engine must agree as well.
#[test]
fn long_tensors_do_not_depend_on_threads_budget_or_engine() {
    use fuse::exec::kernels::CHUNK;
    use fuse::io::DType;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Embeddings 6.4 chunks, MLP weights 5.9, attention 1.1 and under one.
    // Above 4 chunks, one thread's 4 histogram blocks hold several chunks
    // each and two threads' 8 blocks one each.
    let shape = TinyLlama { hidden: 192, intermediate: 1000, layers: 1, vocab: 1100, ..Default::default() };
    let long: Vec<usize> = shape.tensors().iter().map(|(_, s)| s.iter().product()).filter(|n| *n > 4 * CHUNK).collect();
    assert!(long.len() >= 2 && long.iter().all(|n| n % CHUNK != 0), "{long:?}");
    for (name, terms) in
        [("base", &[(1, 0.02)][..]), ("ft0", &[(1, 0.02), (2, 0.01)]), ("ft1", &[(1, 0.02), (3, 0.01)])]
    {
        shape.write(&d.join(name), terms).unwrap();
        TinyLlama { dtype: DType::BF16, ..shape.clone() }.write(&d.join("bf16").join(name), terms).unwrap();
    }
    shape.write(&d.join("ft2"), &[(1, 0.02), (4, 0.01)]).unwrap();
    let merges = [
        ("ties", "base + ties(ft0, ft1, ft2, weight=[1.0, 0.7, 0.5], density=[0.2, 0.5, 0.8], rescale=true)"),
        ("ties_bf16", "bbase + ties(bft0, bft1, density=0.3, base=bbase)"),
        ("dare_ties", "base + dare_ties(ft0, ft1, density=0.4, seed=7)"),
        ("slerp", "slerp(base, ft0, t=0.3)"),
        ("nuslerp", "nuslerp(ft0, ft1, weight=[0.7, 0.3], base=base)"),
        ("model_stock", "model_stock(ft0, ft1, ft2)"),
        ("breadcrumbs_ties", "base + breadcrumbs_ties(ft0, ft1, density=0.8, gamma=0.1)"),
        ("sce", "base + sce(ft0, ft1, ft2, select_topk=0.5)"),
    ];
    let run = |tag: &str, threads: &str, extra: &[&str]| -> Vec<Vec<u8>> {
        let mut recipe = String::new();
        for m in ["base", "ft0", "ft1", "ft2"] {
            recipe += &format!("{m} = model(\"{m}\")\n");
        }
        for m in ["base", "ft0", "ft1"] {
            recipe += &format!("b{m} = model(\"bf16/{m}\")\n");
        }
        for (name, expr) in merges {
            recipe += &format!("save({expr}, \"{tag}/{name}\")\n");
        }
        let file = write_recipe(d, &format!("{tag}.fuse"), &recipe);
        let o = Command::new(env!("CARGO_BIN_EXE_fuse"))
            .current_dir(d)
            .env("RAYON_NUM_THREADS", threads)
            .arg("run")
            .arg(&file)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{tag}: {}", stderr(&o));
        merges
            .iter()
            .map(|(name, _)| std::fs::read(d.join(tag).join(name).join("model.safetensors")).unwrap())
            .collect()
    };
    let one = run("threads1", "1", &[]);
    for (tag, threads, extra) in [
        ("threads2", "2", &[][..]),
        ("budget", "2", &["--max-memory", "1KB"]),
        ("candle", "2", &["--device", "candle-cpu"]),
    ] {
        let other = run(tag, threads, extra);
        for ((name, _), (a, b)) in merges.iter().zip(one.iter().zip(&other)) {
            assert!(a == b, "{name}: one thread and {tag} differ");
        }
    }
}
