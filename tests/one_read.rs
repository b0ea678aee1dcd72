//! TIES in one read of its inputs (`src/exec/stream/one_read.rs`): the
//! provisional output and its patched entries give what an independent TIES
//! computes, bit for bit, on tensors several chunks long whose task vectors
//! hold many equal magnitudes; and when the sample misleads or memory is
//! short, the plain passes take over with the same result. `FUSE_TRACE=1`
//! says which way each tensor went.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Rows of the two long tensors: 9.4 and 15.6 streaming chunks of 512
/// columns, neither a whole number of chunks.
const ROWS: [(&str, usize); 2] = [("model.embed_tokens.weight", 600), ("model.layers.0.mlp.up_proj.weight", 1000)];
const COLS: usize = 512;

/// A base and three fine-tunes. Values are multiples of 1/1024 (exact in
/// f32, as bf16 weights are), and each task vector takes one of 41 values,
/// so about 2.4% of its entries share each magnitude, the threshold's too.
/// `small_where(i)` makes task vectors tiny at the entries it names.
/// Stored as `dtype` (`F32`, or `BF16`: rounded, so the task vectors take
/// other values, still with many ties).
fn models(d: &Path, dtype: &str, small_where: impl Fn(usize, usize) -> bool) {
    let hash = |i: usize, j: usize| (i as u64 * 0x9e37_79b9 + j as u64 * 0x85eb_ca6b).wrapping_mul(0xc2b2_ae35) >> 29;
    for j in 0..4 {
        let mut m = BTreeMap::new();
        for (t, (name, rows)) in ROWS.iter().enumerate() {
            let n = rows * COLS;
            let data = (0..n)
                .map(|i| {
                    let base = ((i * 7919 + t) % 1000) as f32 / 1024.0 - 0.5;
                    let delta = match j {
                        0 => 0.0,
                        _ if small_where(t, i) => ((hash(i, j) % 3) as f32 - 1.0) / 1024.0,
                        _ => ((hash(i, j) % 41) as f32 - 20.0) / 1024.0,
                    };
                    base + delta
                })
                .collect();
            m.insert(name.to_string(), T { shape: vec![*rows, COLS], dtype: dtype.into(), data });
        }
        m.insert("model.norm.weight".into(), T { shape: vec![COLS], dtype: "F32".into(), data: vec![1.0; COLS] });
        let config = format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1, "hidden_size": {COLS}}}"#
        );
        write_model(&d.join(["base", "ft1", "ft2", "ft3"][j]), &m, &config);
    }
}

/// base + TIES(density 0.3) of the three fine-tunes, computed here in f32
/// and rounded as the models are stored.
fn expected(d: &Path) -> BTreeMap<String, Vec<f32>> {
    expected_of(d, &|deltas| ties_reference(deltas, 0.3))
}

/// base + `method` of the three fine-tunes' task vectors, computed here in
/// f32 and rounded as the models are stored.
fn expected_of(d: &Path, method: &dyn Fn(&[Vec<f32>]) -> Vec<f32>) -> BTreeMap<String, Vec<f32>> {
    let read = |m: &str| read_model(&d.join(m));
    let (base, fts) = (read("base"), [read("ft1"), read("ft2"), read("ft3")]);
    ROWS.iter()
        .map(|(name, _)| {
            let b = &base[*name].data;
            let deltas: Vec<Vec<f32>> = fts.iter().map(|f| sub(&f[*name].data, b)).collect();
            let merged = method(&deltas);
            let round = |v: f32| match base[*name].dtype.as_str() {
                "BF16" => half::bf16::from_f32(v).to_f32(),
                _ => v,
            };
            (name.to_string(), b.iter().zip(&merged).map(|(x, m)| round(x + m)).collect())
        })
        .collect()
}

/// Runs the TIES recipe into `out` with `extra` arguments; returns what the
/// trace said of each long tensor and the output.
fn run(d: &Path, out: &str, threads: &str, extra: &[&str]) -> (String, BTreeMap<String, T>) {
    run_method(d, "ties(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"), density=0.3)", out, threads, extra)
}

/// [`run`] of `base + method`.
fn run_method(d: &Path, method: &str, out: &str, threads: &str, extra: &[&str]) -> (String, BTreeMap<String, T>) {
    write_recipe(d, "ties.fuse", &format!("base = model(\"base\")\nbase + {method}\n"));
    let o = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .current_dir(d)
        .env("FUSE_TRACE", "1")
        .env("RAYON_NUM_THREADS", threads)
        .args(["run", "ties.fuse", "-o", out])
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (stderr(&o), read_model(&d.join(out)))
}

fn assert_bits(got: &BTreeMap<String, T>, want: &BTreeMap<String, Vec<f32>>, what: &str) {
    for (name, w) in want {
        let g = &got[name].data;
        let differ = g.iter().zip(w).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{what}: {differ} entries of `{name}` differ from the independent TIES");
    }
}

#[test]
fn ties_in_one_read_equals_an_independent_ties_and_the_plain_passes() {
    one_read_equals_an_independent_ties("F32", "undecided, patched");
}

/// bf16 models and output take the pass in one loop over the stored bits
/// (where AVX-512 runs it sixteen entries a step).
#[test]
fn ties_of_bf16_in_one_loop_equals_an_independent_ties_and_the_plain_passes() {
    match one_loop() {
        true => one_read_equals_an_independent_ties("BF16", "undecided, patched in one loop"),
        false => one_read_equals_an_independent_ties("BF16", "undecided, patched"),
    }
}

/// Whether bf16 TIES takes the one loop here: where AVX-512 runs it.
fn one_loop() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

fn one_read_equals_an_independent_ties(dtype: &str, how: &str) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    models(d, dtype, |_, _| false);
    let want = expected(d);
    for threads in ["1", "2"] {
        let (trace, got) = run(d, &format!("out{threads}"), threads, &[]);
        for (name, _) in ROWS {
            let line = trace.lines().find(|l| l.contains(&format!("`{name}`"))).unwrap_or_default();
            assert!(line.ends_with(how), "{name} was not written in one read ({how}):\n{trace}");
        }
        assert_bits(&got, &want, &format!("one read, {threads} threads"));
    }
    // A budget too small for the undecided entries: the plain passes.
    let (trace, got) = run(d, "budget", "2", &["--max-memory", "1KB"]);
    assert!(trace.contains("plain passes"), "{trace}");
    assert!(!trace.contains("patched"), "{trace}");
    assert_bits(&got, &want, "plain passes");
}

/// The sample reads pieces spread evenly over the tensor; where they read,
/// the task vectors here are tiny, so it places every threshold far too low.
/// The pass finds the thresholds outside their intervals and the plain
/// passes write the tensor again, right.
#[test]
fn a_misleading_sample_falls_back_to_the_plain_passes() {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    use fuse::exec::kernels::CHUNK;
    assert_eq!(CHUNK, 1 << 15, "the sample's layout below assumes 32K-entry chunks");
    // The sample's pieces: 16 of 2048 entries for these sizes, each
    // starting in the middle of its 16th of the tensor (see `sample` in
    // one_read.rs); the test marks the second half of every 16th. The
    // pieces all look alike, so their spread does not widen the intervals.
    let n = |t: usize| ROWS[t].1 * COLS;
    models(d, "F32", |t, i| (i % (n(t) / 16)) >= n(t) / 32);
    let want = expected(d);
    let (trace, got) = run(d, "out", "2", &[]);
    for (name, _) in ROWS {
        let line = trace.lines().find(|l| l.contains(&format!("`{name}`"))).unwrap_or_default();
        assert!(line.contains("plain passes: a threshold outside its interval"), "{name}:\n{trace}");
    }
    assert_bits(&got, &want, "after the fallback");
}

/// A NaN in a fine-tune (without `--strict`, a run goes on and warns): the
/// tensor holding it takes the plain passes, the others one read, and the
/// output is the plain passes' everywhere.
#[test]
fn an_input_holding_nan_takes_the_plain_passes() {
    nan_takes_the_plain_passes("F32");
    nan_takes_the_plain_passes("BF16");
}

fn nan_takes_the_plain_passes(dtype: &str) {
    let d = tempfile::tempdir().unwrap();
    let d = d.path();
    models(d, dtype, |_, _| false);
    let mut ft1 = read_model(&d.join("ft1"));
    ft1.get_mut(ROWS[0].0).unwrap().data[777] = f32::NAN;
    let config = std::fs::read_to_string(d.join("ft1/config.json")).unwrap();
    write_model(&d.join("ft1"), &ft1, &config);
    let (trace, _) = run(d, "out", "2", &[]);
    let line = |name: &str| trace.lines().find(|l| l.contains(&format!("`{name}`"))).unwrap_or_default().to_string();
    assert!(line(ROWS[0].0).contains("plain passes"), "{trace}");
    assert!(line(ROWS[1].0).contains("patched"), "{trace}");
    let (_, _) = run(d, "plain", "2", &["--max-memory", "1KB"]);
    let bytes = |o: &str| std::fs::read(d.join(o).join("model.safetensors")).unwrap();
    assert!(bytes("out") == bytes("plain"), "one read and the plain passes differ with a NaN input");
}

/// Breadcrumbs-TIES of task vectors as METHODS.md says, independently: per
/// task vector, the magnitudes sorted ascending (equal ones by index), the
/// `keep` entries above the `bottom` smallest kept; then the sign election
/// by the sum, and the sum of the agreeing entries (no normalization).
fn breadcrumbs_ties_reference(deltas: &[Vec<f32>], density: f64, gamma: f64) -> Vec<f32> {
    let trimmed: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| {
            let n = d.len();
            let keep = ((density * n as f64) as usize).min(n);
            let bottom = (n as i64 - keep as i64 - (gamma * n as f64) as i64).max(0) as usize;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs()).then(a.cmp(&b)));
            let mut t = vec![0f32; n];
            for &i in &order[bottom..bottom + keep] {
                t[i] = d[i];
            }
            t
        })
        .collect();
    (0..deltas[0].len())
        .map(|i| {
            let sum = trimmed.iter().fold(0f32, |s, t| s + t[i]);
            let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
            trimmed.iter().map(|t| t[i]).filter(|v| *v != 0.0 && v.signum() == majority).fold(0f32, |s, v| s + v)
        })
        .collect()
}

/// Breadcrumbs' windows (two thresholds per task vector) in one read: the
/// same bits as an independent Breadcrumbs-TIES, and as the plain passes.
#[test]
fn breadcrumbs_in_one_read_equals_an_independent_breadcrumbs() {
    for dtype in ["F32", "BF16"] {
        let d = tempfile::tempdir().unwrap();
        let d = d.path();
        models(d, dtype, |_, _| false);
        let want = expected_of(d, &|deltas| breadcrumbs_ties_reference(deltas, 0.3, 0.05));
        let method = "breadcrumbs_ties(model(\"ft1\"), model(\"ft2\"), model(\"ft3\"), density=0.3, gamma=0.05)";
        for threads in ["1", "2"] {
            let (trace, got) = run_method(d, method, &format!("out{threads}"), threads, &[]);
            for (name, _) in ROWS {
                let line = trace.lines().find(|l| l.contains(&format!("`{name}`"))).unwrap_or_default();
                assert!(line.contains("undecided, patched"), "{dtype}: {name} was not written in one read:\n{trace}");
                // bf16 in one loop over the stored bits.
                assert_eq!(line.ends_with("in one loop"), dtype == "BF16" && one_loop(), "{trace}");
            }
            assert_bits(&got, &want, &format!("{dtype}, one read, {threads} threads"));
        }
        let (trace, got) = run_method(d, method, "budget", "2", &["--max-memory", "1KB"]);
        assert!(!trace.contains("patched"), "{trace}");
        assert_bits(&got, &want, &format!("{dtype}, plain passes"));
    }
}
