//! Spherical interpolation: slerp, nuslerp (whole, per row or per column),
//! multislerp and the Karcher mean, as mergekit 0.1.5 computes them. Norms
//! and dot products accumulate in f64; elementwise work stays f32.

use super::{dot, norm, partials, row_len, Prepared, Source};

/// slerp's coefficients from `|a|^2`, `|b|^2` and `a . b`: with mergekit's
/// slerp, linear where |cos| > 0.9995; with nuslerp's (`exact`), linear only
/// where sin theta vanishes.
pub fn coefficients(aa: f64, bb: f64, ab: f64, t: f64, exact: bool) -> (f32, f32) {
    let (na, nb) = (aa.sqrt(), bb.sqrt());
    let (s0, s1) = if exact {
        let cos = (ab / (na.max(1e-7) * nb.max(1e-7))).clamp(-1.0, 1.0);
        let theta = cos.acos();
        let s = theta.sin();
        if s.abs() < 1e-8 {
            (1.0 - t, t)
        } else {
            (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
        }
    } else {
        let unit = |n: f64| if n > 1e-8 { n } else { 1.0 };
        let d = ab / (unit(na) * unit(nb));
        if d.abs() > 0.9995 {
            (1.0 - t, t)
        } else {
            let theta = d.acos();
            let s = theta.sin();
            (((1.0 - t) * theta).sin() / s, (t * theta).sin() / s)
        }
    };
    (s0 as f32, s1 as f32)
}

/// slerp (and flattened nuslerp) over a whole tensor: one pass for the
/// norms and the dot product, then `s0 a + s1 b` chunk by chunk.
pub fn prepare_slerp(src: &dyn Source, t: f64, exact: bool) -> Result<Prepared, String> {
    let parts = partials(src, 2, |_, b| {
        let (a, c) = (&b[0], &b[1]);
        (dot(a, a), dot(c, c), dot(a, c))
    })?;
    let (aa, bb, ab) = parts.iter().fold((0.0, 0.0, 0.0), |s, p| (s.0 + p.0, s.1 + p.1, s.2 + p.2));
    let (s0, s1) = coefficients(aa, bb, ab, t, exact);
    Ok(Prepared::Mix { s0, s1 })
}

/// nuslerp of each row (`row_wise`) or each column.
pub fn nuslerp_rows(a: &[f32], b: &[f32], t: f64, row_wise: bool, shape: &[usize]) -> Vec<f32> {
    let n = a.len();
    let cols = row_len(shape);
    let rows = n / cols;
    let mix = |x: &[f32], y: &[f32]| {
        let (s0, s1) = coefficients(dot(x, x), dot(y, y), dot(x, y), t, true);
        x.iter().zip(y).map(|(p, q)| s0 * p + s1 * q).collect::<Vec<f32>>()
    };
    if row_wise {
        return a.chunks(cols).zip(b.chunks(cols)).flat_map(|(x, y)| mix(x, y)).collect();
    }
    let mut out = vec![0f32; n];
    for c in 0..cols {
        let x: Vec<f32> = (0..rows).map(|r| a[r * cols + c]).collect();
        let y: Vec<f32> = (0..rows).map(|r| b[r * cols + c]).collect();
        for (r, v) in mix(&x, &y).into_iter().enumerate() {
            out[r * cols + c] = v;
        }
    }
    out
}

/// multislerp: unit vectors, their weighted mean direction, the weighted
/// sum of their tangents there, mapped back to the sphere and scaled by the
/// weighted mean norm. Weights arrive normalized when asked.
pub fn multislerp(xs: &[Vec<f32>], weights: &[f64], eps: f64) -> Vec<f32> {
    let n = xs[0].len();
    let norms: Vec<f64> = xs.iter().map(|x| norm(x)).collect();
    let units: Vec<Vec<f64>> =
        xs.iter().zip(&norms).map(|(x, nx)| x.iter().map(|v| *v as f64 / (nx + eps)).collect()).collect();
    let mut mean = vec![0f64; n];
    for (u, w) in units.iter().zip(weights) {
        mean.iter_mut().zip(u).for_each(|(m, v)| *m += w * v);
    }
    let mean_norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
    let avg_norm: f64 = norms.iter().zip(weights).map(|(n, w)| n * w).sum();
    if mean_norm < eps {
        // Directions cancel: fall back to the weighted linear mean.
        return (0..n).map(|i| xs.iter().zip(weights).map(|(x, w)| x[i] as f64 * w).sum::<f64>() as f32).collect();
    }
    mean.iter_mut().for_each(|v| *v /= mean_norm);
    let mut tangent = vec![0f64; n];
    for (u, w) in units.iter().zip(weights) {
        let d: f64 = u.iter().zip(&mean).map(|(a, b)| a * b).sum();
        tangent.iter_mut().zip(u.iter().zip(&mean)).for_each(|(t, (ui, m))| *t += w * (ui - d * m));
    }
    let tn = tangent.iter().map(|v| v * v).sum::<f64>().sqrt() + eps;
    let (c, s) = (tn.cos(), tn.sin() / tn);
    mean.iter().zip(&tangent).map(|(m, t)| ((m * c + t * s) * avg_norm) as f32).collect()
}

/// The Karcher mean of the directions with equal weights, times the mean norm.
pub fn karcher(xs: &[Vec<f32>], max_iter: usize, tol: f64) -> Vec<f32> {
    let n = xs[0].len();
    let a = 1.0 / xs.len() as f64;
    let norms: Vec<f64> = xs.iter().map(|x| norm(x)).collect();
    let units: Vec<Vec<f64>> = xs
        .iter()
        .zip(&norms)
        .map(|(x, nx)| x.iter().map(|v| if *nx > tol { *v as f64 / nx } else { *v as f64 }).collect())
        .collect();
    let mut u = vec![0f64; n];
    for ui in &units {
        u.iter_mut().zip(ui).for_each(|(m, v)| *m += a * v);
    }
    let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
    if un < tol {
        return vec![0.0; n];
    }
    u.iter_mut().for_each(|v| *v /= un);
    for _ in 0..max_iter {
        let mut t = vec![0f64; n];
        for ui in &units {
            let cos = ui.iter().zip(&u).map(|(x, y)| x * y).sum::<f64>().clamp(-1.0, 1.0);
            let theta = cos.acos();
            if theta < tol {
                continue;
            }
            let f = a * theta / theta.sin();
            t.iter_mut().zip(ui.iter().zip(&u)).for_each(|(tv, (x, y))| *tv += f * (x - cos * y));
        }
        let tn = t.iter().map(|v| v * v).sum::<f64>().sqrt();
        if tn < tol {
            break;
        }
        let (c, s) = (tn.cos(), tn.sin() / tn);
        u.iter_mut().zip(&t).for_each(|(x, tv)| *x = *x * c + tv * s);
        let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
        u.iter_mut().for_each(|v| *v /= un);
    }
    let scale: f64 = norms.iter().map(|n| a * n).sum();
    u.iter().map(|v| (v * scale) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_ends_and_middle() {
        // Orthogonal unit vectors: t = 0 is the first, t = 0.5 the bisector.
        assert_eq!(coefficients(1.0, 1.0, 0.0, 0.0, false), (1.0, 0.0));
        let (s0, s1) = coefficients(1.0, 1.0, 0.0, 0.5, false);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((s0 - h).abs() < 1e-6 && (s1 - h).abs() < 1e-6);
        // Nearly parallel: linear.
        assert_eq!(coefficients(1.0, 1.0, 0.99999, 0.25, false), (0.75, 0.25));
    }

    #[test]
    fn karcher_of_orthogonal_units_is_their_bisector() {
        let k = karcher(&[vec![1.0, 0.0], vec![0.0, 1.0]], 10, 1e-5);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((k[0] - h).abs() < 1e-5 && (k[1] - h).abs() < 1e-5, "{k:?}");
    }
}
