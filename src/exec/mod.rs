//! Execution: a [`Plan`] in, a checkpoint on disk out. Output tensors are
//! computed in parallel with rayon, embeddings first and then layer by
//! layer; each input tensor is read through a memory map only when a node
//! needs it, and every intermediate is dropped after its last use, so memory
//! holds a few tensors per worker, never a model.
//!
//! Two engines share the plan: [`Engine::Stream`] (the CPU default,
//! `stream.rs`) streams elementwise work in chunks; [`Engine::Candle`]
//! materializes every node as a candle-core tensor on a device (CUDA with
//! the `cuda` feature; on CPU it serves to cross-check the streaming engine).

pub mod kernels;
mod stream;

use crate::graph::{NodeId, Op, Plan};
use crate::io::writer::OutputDir;
use crate::io::DType;
use candle_core::{Device, Tensor};
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// What a finished run wrote.
#[derive(Debug, Clone)]
pub struct Report {
    pub tensors: usize,
    pub bytes: u64,
    pub shards: usize,
}

/// Which engine computes the plan.
pub enum Engine {
    Stream,
    Candle(Device),
}

/// Bounds the bytes of whole tensors held at once by concurrent workers. A
/// request larger than the budget still runs, alone.
pub struct Budget {
    cap: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

pub struct Permit<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(cap: u64) -> Budget {
        Budget { cap, used: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() }
    }
    pub fn acquire(&self, bytes: u64) -> Permit<'_> {
        let mut used = self.used.lock().unwrap();
        while bytes > 0 && *used > 0 && *used + bytes > self.cap {
            used = self.freed.wait(used).unwrap();
        }
        *used += bytes;
        Permit { budget: self, bytes }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.budget.used.lock().unwrap() -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// The input files of a plan, mapped once.
pub struct Inputs {
    maps: Vec<Vec<Mmap>>,
}

impl Inputs {
    fn open(plan: &Plan) -> Result<Inputs, String> {
        let used: Vec<bool> = (0..plan.models.len())
            .map(|m| plan.nodes.iter().any(|n| matches!(&n.op, Op::Load { model, .. } if *model == m)))
            .collect();
        let mut maps = Vec::new();
        for (m, ck) in plan.models.iter().enumerate() {
            let mut files = Vec::new();
            if used[m] {
                for f in &ck.files {
                    let file = File::open(f).map_err(|e| format!("cannot open `{}`: {e}", f.display()))?;
                    // SAFETY: the map is read-only; a checkpoint changed on disk
                    // during a run gives wrong numbers, not memory unsafety in
                    // our code, which only copies out of it after bounds checks.
                    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map `{}`: {e}", f.display()))?;
                    files.push(map);
                }
            }
            maps.push(files);
        }
        Ok(Inputs { maps })
    }

    fn bytes(&self, plan: &Plan, model: usize, tensor: &str) -> Result<(&[u8], DType), String> {
        let ck = &plan.models[model];
        let entry = ck
            .tensors
            .get(tensor)
            .ok_or_else(|| format!("tensor `{tensor}` is missing from `{}`", ck.root.display()))?;
        let map = &self.maps[model][entry.file];
        let (s, e) = (entry.info.start as usize, entry.info.end as usize);
        let bytes = map.get(s..e).ok_or_else(|| {
            format!("`{}` is shorter than its header says (tensor `{tensor}`)", ck.files[entry.file].display())
        })?;
        Ok((bytes, entry.info.dtype))
    }

    /// Drops the mapped pages of every input under `root` from this
    /// process's memory once its output is written; they stay in the page
    /// cache, so nothing is lost but resident size.
    fn release(&self, plan: &Plan, root: NodeId) {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if let Op::Load { model, tensor } = &plan.nodes[n].op {
                if let Some(entry) = plan.models[*model].tensors.get(tensor) {
                    let map = &self.maps[*model][entry.file];
                    let (s, e) = (entry.info.start as usize, entry.info.end as usize);
                    // SAFETY: a read-only file mapping; DONTNEED only drops
                    // pages, which are read again from the file if touched.
                    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s) };
                }
            }
            stack.extend(children(&plan.nodes[n].op));
        }
    }
}

/// Computes every output tensor of `plan` and writes it into `out`, holding
/// at most about `max_memory` bytes of whole tensors at once.
pub fn execute(plan: &Plan, out: &OutputDir, engine: &Engine, max_memory: u64) -> Result<Report, String> {
    let inputs = Inputs::open(plan)?;
    let budget = Budget::new(max_memory);
    let device = match engine {
        Engine::Stream => {
            plan.outputs
                .par_iter()
                .enumerate()
                .try_for_each(|(i, _)| stream::write_output(plan, &inputs, &budget, i, out))?;
            return Ok(Report {
                tensors: plan.outputs.len(),
                bytes: plan.layout.total_bytes(),
                shards: plan.layout.shards.len(),
            });
        }
        Engine::Candle(device) => device,
    };
    plan.outputs.par_iter().enumerate().try_for_each(|(i, o)| {
        let _permit = budget.acquire(plan.nodes[o.node].shape.iter().product::<usize>() as u64 * 4 * 4);
        let t = eval_output(plan, &inputs, o.node, device).map_err(|e| format!("computing `{}`: {e}", o.name))?;
        let vals =
            t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| format!("computing `{}`: {e}", o.name))?;
        let bytes = encode(&vals, plan.layout.tensors[i].dtype);
        let slot = plan.layout.slots[i];
        out.write_at(slot.shard, slot.offset, &bytes).map_err(|e| format!("writing `{}`: {e}", o.name))
    })?;
    Ok(Report { tensors: plan.outputs.len(), bytes: plan.layout.total_bytes(), shards: plan.layout.shards.len() })
}

/// Evaluates the subgraph under `root`, freeing each intermediate after its
/// last use.
fn eval_output(plan: &Plan, inputs: &Inputs, root: NodeId, device: &Device) -> Result<Tensor, String> {
    // Post-order of the subgraph, and how many times each node is used in it.
    let mut order = Vec::new();
    let mut uses: HashMap<NodeId, usize> = HashMap::new();
    let mut stack = vec![(root, false)];
    while let Some((n, expanded)) = stack.pop() {
        if expanded {
            order.push(n);
            continue;
        }
        let first = !uses.contains_key(&n);
        *uses.entry(n).or_default() += 1;
        if !first {
            continue;
        }
        stack.push((n, true));
        for c in children(&plan.nodes[n].op) {
            stack.push((c, false));
        }
    }
    let mut values: HashMap<NodeId, Tensor> = HashMap::new();
    let ce = |e: candle_core::Error| e.to_string();
    for &n in &order {
        let node = &plan.nodes[n];
        let t = match &node.op {
            Op::Load { model, tensor } => {
                let (bytes, dtype) = inputs.bytes(plan, *model, tensor)?;
                kernels::load(bytes, dtype, &node.shape, device).map_err(ce)?
            }
            Op::Lin(terms) => {
                let ts: Vec<(f64, &Tensor)> = terms.iter().map(|(c, x)| (c.get(), &values[x])).collect();
                kernels::lin(&ts).map_err(ce)?
            }
            Op::Kernel { kernel, inputs: ins } => {
                let xs = ins
                    .iter()
                    .map(|d| values[d].flatten_all().and_then(|t| t.to_vec1::<f32>()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ce)?;
                let name = stream::tensor_name(plan, n);
                let v = kernels::whole(kernel, xs, &kernels::TensorInfo { name: &name, shape: &node.shape })?;
                Tensor::from_vec(v, node.shape.as_slice(), device).map_err(ce)?
            }
        };
        // Children are done with once their last parent has been computed.
        for c in children(&node.op) {
            let u = uses.get_mut(&c).unwrap();
            *u -= 1;
            if *u == 0 {
                values.remove(&c);
            }
        }
        values.insert(n, t);
    }
    values.remove(&root).ok_or_else(|| "internal error: root not computed".to_string())
}

fn children(op: &Op) -> Vec<NodeId> {
    match op {
        Op::Load { .. } => Vec::new(),
        Op::Lin(terms) => terms.iter().map(|(_, x)| *x).collect(),
        Op::Kernel { inputs, .. } => inputs.clone(),
    }
}

/// f32 values to little-endian bytes of `dtype` (round to nearest even).
pub fn encode(vals: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    match dtype {
        DType::F32 => vals.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::BF16 => vals.iter().for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        DType::F16 => vals.iter().for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::F64 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
        DType::I64 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i64).to_le_bytes())),
        DType::I32 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i32).to_le_bytes())),
        DType::I16 => vals.iter().for_each(|v| out.extend_from_slice(&(*v as i16).to_le_bytes())),
        DType::I8 => vals.iter().for_each(|v| out.push(*v as i8 as u8)),
        DType::U8 | DType::Bool => vals.iter().for_each(|v| out.push(*v as u8)),
    }
    out
}

/// Files copied from the origin model next to the weights.
const COPIED: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];

/// Runs a plan into `target`: weights, index, config.json (dtype patched),
/// tokenizer files and a model card. The directory appears only when
/// everything is written; on any failure nothing is left behind.
pub fn run_plan(
    plan: &Plan,
    target: &Path,
    force: bool,
    recipe_text: &str,
    engine: &Engine,
    max_memory: u64,
) -> Result<Report, String> {
    let out = OutputDir::create(target, force, &plan.layout)?;
    let report = execute(plan, &out, engine, max_memory)?;
    if let Some(index) = plan.layout.index_json() {
        out.write_file("model.safetensors.index.json", index.as_bytes())?;
    }
    let origin = &plan.models[plan.origin];
    if let Some(mut config) = origin.config.clone() {
        if let (Some(obj), Some(d)) =
            (config.as_object_mut(), plan.dtype.or_else(|| plan.layout.tensors.first().map(|t| t.dtype)))
        {
            obj.insert("torch_dtype".into(), d.torch_name().into());
            if obj.contains_key("dtype") {
                obj.insert("dtype".into(), d.torch_name().into());
            }
        }
        out.write_file("config.json", (serde_json::to_string_pretty(&config).unwrap() + "\n").as_bytes())?;
    }
    if let Some(dir) = &origin.dir {
        for name in COPIED {
            let p = dir.join(name);
            if p.is_file() {
                out.copy_file(&p, name)?;
            }
        }
    }
    out.write_file("README.md", model_card(plan, recipe_text).as_bytes())?;
    out.commit()?;
    Ok(report)
}

fn model_card(plan: &Plan, recipe: &str) -> String {
    let models: Vec<String> = plan.models.iter().map(|m| format!("- `{}`", m.root.display())).collect();
    format!(
        "---\nlibrary_name: transformers\ntags:\n- merge\n- fuse\n---\n# Merged model\n\nThis model was merged with fuse from these checkpoints:\n\n{}\n\n## Recipe\n\n```\n{}\n```\n",
        models.join("\n"),
        recipe.trim_end()
    )
}
