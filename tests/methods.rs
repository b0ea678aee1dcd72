//! The random methods (DARE, DELLA) cannot match mergekit bit for bit, so
//! their statistics are checked: kept fraction against density, the L1
//! rescale, DELLA's rank-dependent keep probabilities, and reproducibility
//! across runs and thread counts. Also: every standard-library method
//! type-checks on real models.

use crate::common::*;
use std::collections::BTreeMap;

pub(crate) const MODELS: &str = "tests/fixtures/mergekit/models";

/// Runs a recipe body (after bindings of base, ft0..ft2) and returns `out - base` per tensor.
pub(crate) fn delta_of(body: &str, threads: &str) -> (BTreeMap<String, Vec<f32>>, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = format!(
        "base = model(\"{r}/{MODELS}/base\")\nft0 = model(\"{r}/{MODELS}/ft0\")\nft1 = model(\"{r}/{MODELS}/ft1\")\nft2 = model(\"{r}/{MODELS}/ft2\")\n{body}\n",
        r = root().display()
    );
    let path = write_recipe(tmp.path(), "r.fuse", &recipe);
    let out = tmp.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fuse"))
        .env("RAYON_NUM_THREADS", threads)
        .args(["run", path.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = read_model(&out);
    let base = read_model(&root().join(MODELS).join("base"));
    let d = merged
        .iter()
        .map(|(n, t)| (n.clone(), t.data.iter().zip(&base[n].data).map(|(m, b)| m - b).collect()))
        .collect();
    (d, std::fs::read(out.join("model.safetensors")).unwrap())
}

pub(crate) fn task_vector(name: &str) -> BTreeMap<String, Vec<f32>> {
    let ft = read_model(&root().join(MODELS).join(name));
    let base = read_model(&root().join(MODELS).join("base"));
    ft.iter().map(|(n, t)| (n.clone(), t.data.iter().zip(&base[n].data).map(|(f, b)| f - b).collect())).collect()
}

#[test]
fn dare_keeps_density_and_rescales_l1() {
    let tv = task_vector("ft0");
    let (plain, _) = delta_of("base + dare_linear(ft0, density=0.3, rescale=false, seed=1)", "2");
    let (kept, total) = plain.iter().fold((0, 0), |(k, t), (n, d)| {
        (
            k + d.iter().zip(&tv[n]).filter(|(x, y)| **x != 0.0 && **y != 0.0).count(),
            t + tv[n].iter().filter(|y| **y != 0.0).count(),
        )
    });
    let frac = kept as f64 / total as f64;
    assert!((frac - 0.3).abs() < 0.02, "kept {frac}");
    // Kept entries are the task vector's own, unscaled.
    for (n, d) in &plain {
        for (x, y) in d.iter().zip(&tv[n]) {
            assert!(*x == 0.0 || (x - y).abs() <= 1e-6 * y.abs().max(1.0), "{n}: {x} vs {y}");
        }
    }
    // With rescale, each tensor's L1 norm is the task vector's.
    let (scaled, _) = delta_of("base + dare_linear(ft0, density=0.3, seed=1)", "2");
    for (n, d) in &scaled {
        let (a, b): (f64, f64) = (d.iter().map(|v| v.abs() as f64).sum(), tv[n].iter().map(|v| v.abs() as f64).sum());
        assert!((a - b).abs() <= 1e-3 * b, "{n}: L1 {a} vs {b}");
    }
}

#[test]
fn della_keeps_large_magnitudes_more_often() {
    let tv = task_vector("ft1");
    let (d, _) = delta_of("base + della_linear(ft1, density=0.5, epsilon=0.4, rescale=false, seed=3)", "2");
    // Bucket entries by their magnitude rank within their row.
    let (mut low, mut high) = ((0usize, 0usize), (0usize, 0usize));
    let shapes = read_model(&root().join(MODELS).join("base"));
    for (n, t) in &tv {
        let row = *shapes[n].shape.last().unwrap();
        for (r, chunk) in t.chunks(row).enumerate() {
            let mut order: Vec<usize> = (0..chunk.len()).collect();
            order.sort_by(|&a, &b| chunk[a].abs().total_cmp(&chunk[b].abs()));
            for (rank, &j) in order.iter().enumerate() {
                let f = rank as f64 / (chunk.len() - 1).max(1) as f64;
                let kept = d[n][r * row + j] != 0.0;
                if f < 0.2 {
                    low = (low.0 + usize::from(kept), low.1 + 1);
                } else if f > 0.8 {
                    high = (high.0 + usize::from(kept), high.1 + 1);
                }
            }
        }
    }
    // Expected keep probability: 0.1 + 0.8 * rank fraction, so about 0.18 and 0.82.
    let (pl, ph) = (low.0 as f64 / low.1 as f64, high.0 as f64 / high.1 as f64);
    assert!((pl - 0.18).abs() < 0.04 && (ph - 0.82).abs() < 0.04, "low {pl}, high {ph}");
}

#[test]
fn random_methods_are_reproducible_across_threads_and_seeded() {
    for body in [
        "base + dare_ties(ft0, ft1, ft2, weight=[1, 0.7, 0.5], density=0.4, seed=7)",
        "base + della(ft0, ft1, density=0.5, epsilon=0.1, seed=7)",
    ] {
        let (_, one) = delta_of(body, "1");
        let (_, two) = delta_of(body, "2");
        assert_eq!(one, two, "{body}: thread count changed the output");
        let (_, other) = delta_of(&body.replace("seed=7", "seed=8"), "2");
        assert_ne!(one, other, "{body}: the seed changed nothing");
    }
}

/// Every function of the standard library checks on real models.
#[test]
fn the_whole_stdlib_type_checks() {
    let mut sources = fuse::diag::Sources::default();
    let stdlib = fuse::check::STDLIB[0].1;
    let program = fuse::syntax::parse(stdlib, sources.add("stdlib/merge.fuse", stdlib)).unwrap();
    let mut calls = String::new();
    for s in &program.stmts {
        if let fuse::syntax::StmtKind::Fn { name, .. } = &s.kind {
            let call = if name.name == "linear" {
                "linear(ft0, ft1)".to_string()
            } else if name.name == "lines" {
                "base + lines(ft0 - base, alpha=0.5, beta=1)".to_string()
            } else {
                format!("base + {}(ft0, ft1, density=0.5)", name.name)
            };
            let call =
                if matches!(name.name.as_str(), "task_arithmetic") { call.replace(", density=0.5", "") } else { call };
            calls.push_str(&format!("x_{} = {call}\n", name.name));
        }
    }
    assert_eq!(calls.lines().count(), 10, "{calls}");
    let text = format!(
        "base = model(\"{MODELS}/base\")\nft0 = model(\"{MODELS}/ft0\")\nft1 = model(\"{MODELS}/ft1\")\n{calls}save(x_ties, \"unused\")\n"
    );
    let (recipe, diags) = fuse::check::check(&root().join("stdlib_check.fuse"), &text, &[], &mut sources);
    assert!(recipe.is_some(), "{}", fuse::diag::render::render_plain(&diags, &sources));
}

/// docs/natives.md is generated from the table of natives: the committed page
/// must equal what the table says (`FUSE_BLESS=1` rewrites it).
#[test]
fn the_function_reference_is_generated_from_the_table() {
    let page = root().join("docs/natives.md");
    let generated = fuse::check::natives::reference();
    if std::env::var_os("FUSE_BLESS").is_some() {
        std::fs::write(&page, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&page).unwrap_or_default();
    assert!(committed == generated, "docs/natives.md is out of date: run `FUSE_BLESS=1 cargo test`");
    for name in fuse::check::function_names() {
        assert!(generated.contains(&format!("### `{name}(")), "`{name}` is missing from the reference");
        assert!(fuse::check::docs_of(&name).is_some(), "`{name}` has no docs");
    }
}

#[test]
fn the_repl_help_comes_from_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = crate::repl::repl(tmp.path(), &[], ":help slerp\n:help\n:help nope\n");
    assert!(out.contains("slerp(..models, t)") && out.contains("Example: `slerp(base, chat, t=0.3)`"), "{out}");
    assert!(out.contains("functions (`:help NAME` for one): model over_layers"), "{out}");
    assert!(out.contains(" ties ") && out.contains("no function `nope`"), "{out}");
}

/// MagMax's closed form: per entry the task-vector value of largest
/// magnitude (the last on ties), times lambda, computed here from the files.
#[test]
fn magmax_takes_the_largest_magnitude_per_entry() {
    let tvs = ["ft0", "ft1", "ft2"].map(task_vector);
    let (got, _) = delta_of("base + magmax(ft0, ft1, ft2, lambda=0.5)", "2");
    let mut checked = 0;
    for (name, d) in &got {
        for (i, v) in d.iter().enumerate() {
            let mut best = 0f32;
            for tv in &tvs {
                if tv[name][i].abs() >= best.abs() {
                    best = tv[name][i];
                }
            }
            // base + 0.5*best rounded to f32, then minus base: about an ulp of
            // the base's value (|base| <= 1 on the fixtures).
            assert!((v - 0.5 * best).abs() <= 2.5e-7 + 1e-6 * best.abs(), "{name}[{i}]: {v} vs {}", 0.5 * best);
            checked += 1;
        }
    }
    assert!(checked > 10_000, "{checked}");
}

/// Singular values of a row-major `[rows, cols]` matrix, in f64 (nalgebra:
/// an SVD independent of the faer one fuse uses).
pub(crate) fn singular_values(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let m = nalgebra::DMatrix::<f64>::from_row_iterator(rows, cols, x.iter().map(|&v| v as f64));
    m.singular_values().iter().copied().collect()
}

/// Iso-C's closed form: every matrix of the merged task vector has a flat
/// spectrum at lambda times the mean singular value of the summed task
/// vectors; vectors (the norms) get lambda times the mean task vector.
#[test]
fn iso_c_flattens_the_spectrum_of_the_summed_task_vectors() {
    let tvs = ["ft0", "ft1", "ft2"].map(task_vector);
    let shapes = read_model(&root().join(MODELS).join("base"));
    let (got, _) = delta_of("base + iso_c(ft0, ft1, ft2, lambda=0.5)", "2");
    let mut matrices = 0;
    for (name, d) in &got {
        let sum: Vec<f32> = (0..d.len()).map(|i| tvs.iter().map(|tv| tv[name][i]).sum()).collect();
        match shapes[name].shape[..] {
            [rows, cols] => {
                let s = singular_values(&sum, rows, cols);
                let want = 0.5 * s.iter().sum::<f64>() / s.len() as f64;
                // The output is rounded to f32 around the base (|base| <= 1),
                // so allow a few ulps of 1 per entry, summed over a row.
                let tol = 1e-6 * (rows.max(cols) as f64) + 1e-4 * want;
                // The check means something: the input spectrum is far from
                // flat, and the tolerance far below its spread.
                let spread = s[0] - s[s.len() - 1];
                assert!(spread > 0.2 * s[0] && tol < 0.01 * spread, "{name}: {s:?}, tol {tol}");
                for got in singular_values(d, rows, cols) {
                    assert!((got - want).abs() <= tol, "{name}: singular value {got} vs {want}");
                }
                matrices += 1;
            }
            _ => {
                for (i, v) in d.iter().enumerate() {
                    let want = 0.5 * sum[i] / 3.0;
                    assert!((v - want).abs() <= 2.5e-7 + 1e-5 * want.abs(), "{name}[{i}]: {v} vs {want}");
                }
            }
        }
    }
    assert!(matrices >= 10, "{matrices}");
}

/// TSV-M of one task vector keeps all of its singular triplets, whose
/// singular vectors are orthonormal already: the task vector itself.
#[test]
fn tsv_m_of_one_model_is_its_task_vector() {
    let tv = task_vector("ft0");
    let (got, _) = delta_of("base + tsv_m(ft0, lambda=2.0)", "2");
    for (name, d) in &got {
        for (i, v) in d.iter().enumerate() {
            let want = 2.0 * tv[name][i];
            assert!((v - want).abs() <= 1e-5 + 1e-4 * want.abs(), "{name}[{i}]: {v} vs {want}");
        }
    }
}

/// The SVD methods give the same bytes whatever the thread count (each SVD
/// runs on one thread; tensors run in parallel).
#[test]
fn svd_methods_are_reproducible_across_threads() {
    for body in [
        "base + iso_c(ft0, ft1, ft2)",
        "base + tsv_m(ft0, ft1, ft2)",
        "base + iso_cts(ft0, ft1, ft2)",
        "cart(ft0, ft1, ft2, rank=0.3)",
        "base + ramplus_tl(ft0, ft1, ft2)",
    ] {
        assert!(delta_of(body, "1").1 == delta_of(body, "3").1, "{body}");
    }
}
