//! Methods published after mergekit 0.1.5 (Iso-CTS, CART, LiNeS, RAM),
//! checked on the fixture models against closed forms and against the same
//! formulas computed here with nalgebra's SVD (independent of the faer one
//! fuse uses). bench/reference/methods.py checks them against FusionBench and
//! mergekit on real fine-tunes.

use crate::common::*;
use crate::methods::{delta_of, singular_values, task_vector, MODELS};
use nalgebra::DMatrix;
use std::collections::BTreeMap;

fn shapes() -> BTreeMap<String, Vec<usize>> {
    read_model(&root().join(MODELS).join("base")).into_iter().map(|(n, t)| (n, t.shape)).collect()
}

fn mat(x: &[f32], rows: usize, cols: usize) -> DMatrix<f64> {
    DMatrix::from_row_iterator(rows, cols, x.iter().map(|&v| v as f64))
}

fn sum_of(xs: &[&BTreeMap<String, Vec<f32>>], name: &str) -> Vec<f32> {
    (0..xs[0][name].len()).map(|i| xs.iter().map(|x| x[name][i]).sum()).collect()
}

/// Iso-CTS's closed form: every matrix of the result has one singular value,
/// lambda times the mean of the kept spectrum: the summed task vector's top
/// `c` singular values and each task vector's top `k` after projecting out
/// the common left subspace, with FusionBench's split of the rank (here
/// computed with nalgebra). The mean differs from Iso-C's, so the check
/// tells the two apart.
#[test]
fn iso_cts_flattens_the_common_and_task_spectrum() {
    let tvs = ["ft0", "ft1", "ft2"].map(task_vector);
    let (got, _) = delta_of("base + iso_cts(ft0, ft1, ft2, lambda=0.5, common=0.8)", "2");
    let mut matrices = 0;
    for (name, shape) in shapes() {
        let [rows, cols] = shape[..] else { continue };
        let r = rows.min(cols);
        // FusionBench: c = int(0.8 r), then the rest split evenly over the 3
        // tasks with Python's round (no half-way cases at these sizes).
        let c0 = (0.8 * r as f64) as usize;
        let share = (r - c0) as f64 / 3.0;
        assert!(share.fract() != 0.5);
        let k = share.round() as usize;
        let c = r - 3 * k;
        assert!(k >= 1 && c >= 1, "{name}: c {c}, k {k}");
        let sum = mat(&sum_of(&[&tvs[0], &tvs[1], &tvs[2]], &name), rows, cols);
        let svd = sum.svd(true, false);
        let uc = svd.u.unwrap().columns(0, c).into_owned();
        let mut kept: f64 = svd.singular_values.iter().take(c).sum();
        for tv in &tvs {
            let w = mat(&tv[&name], rows, cols);
            let residual = &w - &uc * (uc.transpose() * &w);
            kept += residual.singular_values().iter().take(k).sum::<f64>();
        }
        let want = 0.5 * kept / r as f64;
        let iso_c = 0.5 * svd.singular_values.mean();
        let tol = 1e-6 * (rows.max(cols) as f64) + 1e-4 * want;
        assert!((want - iso_c).abs() > 4.0 * tol, "{name}: Iso-CTS {want} vs Iso-C {iso_c}");
        for s in singular_values(&got[&name], rows, cols) {
            assert!((s - want).abs() <= tol, "{name}: singular value {s} vs {want}");
        }
        matrices += 1;
    }
    assert!(matrices >= 10, "{matrices}");
    // Vectors: the mean task vector.
    for (name, shape) in shapes().into_iter().filter(|(_, s)| s.len() == 1) {
        let sum = sum_of(&[&tvs[0], &tvs[1], &tvs[2]], &name);
        for (i, v) in got[&name].iter().enumerate() {
            let want = 0.5 * sum[i] / 3.0;
            assert!((v - want).abs() <= 2.5e-7 + 1e-5 * want.abs(), "{name}{shape:?}[{i}]: {v} vs {want}");
        }
    }
}

/// With the whole rank common there is no task-specific part: Iso-CTS is
/// Iso-C.
#[test]
fn iso_cts_with_everything_common_is_iso_c() {
    let (cts, _) = delta_of("base + iso_cts(ft0, ft1, ft2, common=1.0)", "2");
    let (c, _) = delta_of("base + iso_c(ft0, ft1, ft2)", "2");
    for (name, d) in &cts {
        for (i, (a, b)) in d.iter().zip(&c[name]).enumerate() {
            assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{name}[{i}]: {a} vs {b}");
        }
    }
}

/// The fixture models as full tensors (not task vectors).
fn weights(name: &str) -> BTreeMap<String, Vec<f32>> {
    read_model(&root().join(MODELS).join(name)).into_iter().map(|(n, t)| (n, t.data)).collect()
}

/// CART's result minus the base, per tensor, from nalgebra: the mean plus
/// lambda times the sum of each deviation's top `floor(rank r)` triplets.
fn cart_reference(models: &[&str], rank: f64, lambda: f64) -> BTreeMap<String, Vec<f64>> {
    let ws: Vec<_> = models.iter().map(|m| weights(m)).collect();
    let base = weights("base");
    let mut out = BTreeMap::new();
    for (name, shape) in shapes() {
        let n = ws.len() as f64;
        let avg: Vec<f64> =
            (0..base[&name].len()).map(|i| ws.iter().map(|w| w[&name][i] as f64).sum::<f64>() / n).collect();
        let mut res = avg.clone();
        if let [rows, cols] = shape[..] {
            let k = (rank * rows.min(cols) as f64).floor() as usize;
            let center = DMatrix::from_row_slice(rows, cols, &avg);
            for w in &ws {
                let svd = (mat(&w[&name], rows, cols) - &center).svd(true, true);
                let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
                for j in 0..k {
                    let term = u.column(j) * vt.row(j) * svd.singular_values[j];
                    for (i, x) in res.iter_mut().enumerate() {
                        *x += lambda * term[(i / cols, i % cols)];
                    }
                }
            }
        }
        out.insert(name.clone(), res.iter().zip(&base[&name]).map(|(x, b)| x - *b as f64).collect());
    }
    out
}

fn assert_near(got: &BTreeMap<String, Vec<f32>>, want: &BTreeMap<String, Vec<f64>>, what: &str) {
    for (name, w) in want {
        for (i, (g, w)) in got[name].iter().zip(w).enumerate() {
            // The output is rounded to f32 around weights of |x| <= 1.
            assert!((*g as f64 - w).abs() <= 1e-6 + 1e-5 * w.abs(), "{what}: {name}[{i}]: {g} vs {w}");
        }
    }
}

/// CART against nalgebra on three models, and its closed forms: with two
/// models the deviations are +-(a - b)/2, whose truncations cancel, so the
/// result is the mean at any rank; at full rank the deviations sum to zero,
/// so it is the mean again.
#[test]
fn cart_matches_the_formula_and_its_closed_forms() {
    let (got, _) = delta_of("cart(ft0, ft1, ft2, rank=0.25, lambda=1.5)", "2");
    let want = cart_reference(&["ft0", "ft1", "ft2"], 0.25, 1.5);
    // The check discriminates: the low-rank sum moves the result off the mean.
    let mean = cart_reference(&["ft0", "ft1", "ft2"], 0.0, 0.0);
    let moved = want.iter().flat_map(|(n, w)| w.iter().zip(&mean[n]).map(|(a, b)| (a - b).abs())).fold(0.0, f64::max);
    assert!(moved > 1e-2, "{moved}");
    assert_near(&got, &want, "rank 0.25");
    let (two, _) = delta_of("cart(ft0, ft1, rank=0.3, lambda=2)", "2");
    assert_near(&two, &cart_reference(&["ft0", "ft1"], 0.0, 0.0), "two models");
    let (full, _) = delta_of("cart(ft0, ft1, ft2, rank=1.0)", "2");
    assert_near(&full, &mean, "full rank");
}

/// LiNeS: layer l of L scales by alpha + beta l / (L - 1), everything outside
/// the layers by alpha; with beta = 0 it is alpha times the task vector.
#[test]
fn lines_scales_by_depth() {
    let tv = task_vector("ft0");
    for (alpha, beta) in [(0.5, 1.0), (0.7, 0.0)] {
        let (got, _) = delta_of(&format!("base + lines(ft0 - base, alpha={alpha}, beta={beta})"), "2");
        let mut layers = std::collections::BTreeSet::new();
        for (name, d) in &got {
            let layer = (0..3).find(|i| name.contains(&format!(".{i}.")));
            layers.insert(layer);
            let scale = alpha + beta * layer.map_or(0.0, |l| l as f64 / 2.0);
            for (i, v) in d.iter().enumerate() {
                let want = (scale * tv[name][i] as f64) as f32;
                assert!((v - want).abs() <= 2.5e-7 + 1e-5 * want.abs(), "{name}[{i}]: {v} vs {want}");
            }
        }
        assert_eq!(layers.len(), 4, "{layers:?}");
    }
}

/// RAM of one model is its task vector where it exceeds epsilon; RAM of a
/// model with itself is the same (every changed entry shared, the mean of
/// equal values); RAM+ of one model has no shared entries, so no boost.
#[test]
fn ram_of_one_model_is_its_thresholded_task_vector() {
    let tv = task_vector("ft1");
    let eps = 2e-3f32;
    // A threshold that actually removes entries.
    let small = tv.values().flatten().filter(|x| x.abs() <= eps && **x != 0.0).count();
    assert!(small > 100, "{small}");
    for body in [
        format!("base + ram(ft1, epsilon={eps})"),
        format!("base + ram(ft1, ft1, epsilon={eps})"),
        format!("base + ramplus_tl(ft1, epsilon={eps}, r=1, alpha=1)"),
    ] {
        let (got, _) = delta_of(&body, "2");
        for (name, d) in &got {
            for (i, v) in d.iter().enumerate() {
                let x = tv[name][i];
                let want = if x.abs() > eps { x } else { 0.0 };
                assert!((v - want).abs() <= 2.5e-7, "{body}: {name}[{i}]: {v} vs {want}");
            }
        }
    }
}

/// RAM+ on two fine-tunes: entries both change (beyond epsilon) take the
/// mean; an entry only model m changes is scaled by
/// `1 + r * min(shared_m / unique_m, alpha)`, counted here per tensor.
#[test]
fn ramplus_boosts_unique_entries_by_the_shared_ratio() {
    let (a, b) = (task_vector("ft1"), task_vector("ft2"));
    let eps = 1e-3f32;
    // alpha 2 caps the ratio on some tensors (ratios here run from 0.7 to 3.3).
    let (got, _) = delta_of(&format!("base + ramplus_tl(ft1, ft2, epsilon={eps}, r=1, alpha=2)"), "2");
    let (mut boosted, mut capped) = (0, 0);
    for (name, d) in &got {
        let changed = |x: f32| x.abs() > eps;
        let (mut shared, mut unique) = ([0f64; 2], [0f64; 2]);
        for (x, y) in a[name].iter().zip(&b[name]) {
            for (m, (me, other)) in [(*x, *y), (*y, *x)].into_iter().enumerate() {
                if changed(me) {
                    if changed(other) {
                        shared[m] += 1.0;
                    } else {
                        unique[m] += 1.0;
                    }
                }
            }
        }
        let boost: Vec<f64> = (0..2).map(|m| 1.0 + (shared[m] / unique[m].max(eps as f64)).min(2.0)).collect();
        // The check means something: boosts well above 1 on unique entries.
        if boost[0].min(boost[1]) > 1.2 && unique[0].min(unique[1]) > 0.0 {
            boosted += 1;
        }
        capped += usize::from(boost.contains(&3.0));
        for (i, v) in d.iter().enumerate() {
            let (x, y) = (a[name][i], b[name][i]);
            let want = match (changed(x), changed(y)) {
                (true, true) => (x as f64 + y as f64) / 2.0,
                (true, false) => x as f64 * boost[0],
                (false, true) => y as f64 * boost[1],
                _ => 0.0,
            };
            assert!((*v as f64 - want).abs() <= 1e-6 + 1e-5 * want.abs(), "{name}[{i}]: {v} vs {want}");
        }
    }
    assert!(boosted >= 10 && capped >= 2, "{boosted} boosted, {capped} capped");
}
