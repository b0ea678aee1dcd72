//! LoRA extraction: each 2-D layer tensor of a task vector is factored by a
//! truncated SVD (faer) into PEFT's `lora_B` [out, r] and `lora_A`
//! [r, in] with `B A` the best rank-r approximation, and written as a PEFT
//! adapter directory, atomically like every output.

use super::{stream, Budget, Options};
use crate::graph::Plan;
use crate::io::writer::{Layout, OutTensor, OutputDir};
use crate::io::DType;
use rayon::prelude::*;
use std::path::Path;
use std::sync::Mutex;

/// How much of one tensor's task vector the adapter keeps.
#[derive(Debug, Clone)]
pub struct Kept {
    pub tensor: String,
    pub layer: Option<usize>,
    /// Sum of the kept squared singular values over all of them (1 for a zero delta).
    pub energy: f64,
}

/// What an extraction wrote and what it could not express.
#[derive(Debug, Clone)]
pub struct LoraReport {
    pub kept: Vec<Kept>,
    /// Changed tensors a LoRA cannot hold (1-D, or outside the layer stack), with their delta's L2 norm.
    pub dropped: Vec<(String, f64)>,
}

/// The PEFT name prefix for a base tensor `X.weight`.
fn module(name: &str) -> String {
    format!("base_model.model.{}", name.strip_suffix(".weight").unwrap_or(name))
}

/// Extracts a rank-`rank` adapter from the plan's delta into `target`.
/// `base` is the recipe model the adapter applies to.
#[allow(clippy::too_many_arguments)]
pub fn run_lora(
    plan: &Plan,
    target: &Path,
    force: bool,
    rank: usize,
    base: usize,
    recipe_text: &str,
    opts: &Options,
) -> Result<LoraReport, String> {
    let inputs = super::open_inputs(plan, opts.max_memory)?;
    let budget = Budget::new(opts.max_memory);
    let targets: Vec<usize> = (0..plan.outputs.len())
        .filter(|&i| plan.outputs[i].layer.is_some() && plan.nodes[plan.outputs[i].node].shape.len() == 2)
        .collect();
    let whole = |i: usize| -> Result<Vec<f32>, String> {
        let n: usize = plan.nodes[plan.outputs[i].node].shape.iter().product();
        let out = Mutex::new(vec![0f32; n]);
        stream::compute(plan, &inputs, &budget, plan.outputs[i].node, &|start, vals| {
            out.lock().unwrap()[start..start + vals.len()].copy_from_slice(vals);
            Ok(())
        })?;
        Ok(out.into_inner().unwrap())
    };
    // Factor every target tensor (largest first keeps the threads busy).
    let factors: Vec<(usize, Vec<f32>, Vec<f32>, f64)> = targets
        .par_iter()
        .map(|&i| {
            let shape = &plan.nodes[plan.outputs[i].node].shape;
            let (b, a, energy) = factor(&whole(i)?, shape[0], shape[1], rank);
            if let Some(p) = opts.progress {
                p(plan.layout.tensors[i].bytes());
            }
            Ok((i, b, a, energy))
        })
        .collect::<Result<_, String>>()?;
    let mut dropped = Vec::new();
    for i in (0..plan.outputs.len()).filter(|i| !targets.contains(i)) {
        let v = whole(i)?;
        let norm = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            dropped.push((plan.outputs[i].name.clone(), norm));
        }
    }
    let mut tensors = Vec::new();
    for (i, _, _, _) in &factors {
        let shape = &plan.nodes[plan.outputs[*i].node].shape;
        let m = module(&plan.outputs[*i].name);
        tensors.push(OutTensor { name: format!("{m}.lora_A.weight"), shape: vec![rank, shape[1]], dtype: DType::F32 });
        tensors.push(OutTensor { name: format!("{m}.lora_B.weight"), shape: vec![shape[0], rank], dtype: DType::F32 });
    }
    let layout = Layout::plan_named(tensors, u64::MAX, "adapter_model");
    let out = OutputDir::create(target, force, &layout)?;
    for (k, (_, b, a, _)) in factors.iter().enumerate() {
        for (j, vals) in [(2 * k, a), (2 * k + 1, b)] {
            let slot = layout.slots[j];
            out.write_at(slot.shard, slot.offset, &crate::io::codec::encode(vals, DType::F32))
                .map_err(|e| format!("writing the adapter: {e}"))?;
        }
    }
    let mut modules: Vec<String> = factors
        .iter()
        .filter_map(|(i, ..)| plan.outputs[*i].name.strip_suffix(".weight")?.rsplit('.').next().map(str::to_string))
        .collect();
    modules.sort();
    modules.dedup();
    let origin = plan.models[base].root.display().to_string();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "inference_mode": true,
        "target_modules": modules,
        "base_model_name_or_path": origin,
    });
    out.write_file("adapter_config.json", (serde_json::to_string_pretty(&config).unwrap() + "\n").as_bytes())?;
    let kept: Vec<Kept> = factors
        .iter()
        .map(|(i, _, _, e)| Kept { tensor: plan.outputs[*i].name.clone(), layer: plan.outputs[*i].layer, energy: *e })
        .collect();
    let mut card = format!("# LoRA adapter (rank {rank})\n\nExtracted by fuse from a task vector over `{origin}`.\n\n| tensor | energy kept |\n|---|---|\n");
    for k in &kept {
        card.push_str(&format!("| `{}` | {:.2}% |\n", k.tensor, 100.0 * k.energy));
    }
    if !dropped.is_empty() {
        card.push_str("\nChanged tensors a LoRA cannot hold (left out):\n\n");
        for (t, n) in &dropped {
            card.push_str(&format!("- `{t}` (delta L2 norm {n:.3e})\n"));
        }
    }
    card.push_str(&format!("\n## Recipe\n\n```\n{}\n```\n", recipe_text.trim_end()));
    out.write_file("README.md", card.as_bytes())?;
    out.commit()?;
    Ok(LoraReport { kept, dropped })
}

/// The best rank-`rank` factorization `B A` of a row-major [out, inn]
/// matrix: B = U_r S_r, A = V_r^T, padded with zeros up to `rank`. Returns
/// B, A and the fraction of the squared singular values kept.
fn factor(m: &[f32], out: usize, inn: usize, rank: usize) -> (Vec<f32>, Vec<f32>, f64) {
    // f64: the kept-energy fraction is reported, and small singular values
    // of a near-low-rank delta are what decide it.
    let mat = faer::Mat::<f64>::from_fn(out, inn, |i, j| m[i * inn + j] as f64);
    let svd = mat.thin_svd().expect("the SVD of a finite matrix converges");
    let (u, v) = (svd.U(), svd.V());
    let s: Vec<f64> = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    let k = rank.min(s.len());
    let mut b = vec![0f32; out * rank];
    let mut a = vec![0f32; rank * inn];
    for j in 0..k {
        for i in 0..out {
            b[i * rank + j] = (u[(i, j)] * s[j]) as f32;
        }
        for c in 0..inn {
            a[j * inn + c] = v[(c, j)] as f32;
        }
    }
    let total: f64 = s.iter().map(|x| x * x).sum();
    let kept: f64 = s.iter().take(k).map(|x| x * x).sum();
    (b, a, if total > 0.0 { kept / total } else { 1.0 })
}

#[cfg(test)]
mod tests {
    use super::factor;

    #[test]
    fn a_rank_one_matrix_is_recovered() {
        // [1 2 3; 2 4 6] = [1; 2] [1 2 3]
        let m = [1.0, 2.0, 3.0, 2.0, 4.0, 6.0];
        let (b, a, e) = factor(&m, 2, 3, 1);
        for i in 0..2 {
            for j in 0..3 {
                assert!((b[i] * a[j] - m[i * 3 + j]).abs() < 1e-5);
            }
        }
        assert!((e - 1.0).abs() < 1e-12);
    }
}
