//! Execution: a [`Plan`] in, a checkpoint on disk out. Output tensors are
//! computed in parallel with rayon, embeddings first and then layer by
//! layer; each input tensor is read (positioned reads, a chunk at a time in
//! the streaming engine) only when a node needs it, and every intermediate is
//! dropped after its last use, so memory never holds a model.
//!
//! Two engines share the plan: [`Engine::Stream`] (the CPU default,
//! `stream.rs`) streams elementwise work in chunks; [`Engine::Candle`]
//! materializes every node as a candle-core tensor on a device (CUDA with
//! the `cuda` feature; on CPU it serves to cross-check the streaming engine).

pub mod kernels;
mod lora;
mod stream;

pub use lora::{run_lora, Kept, LoraReport};

use crate::graph::{NodeId, Op, Plan};
use crate::io::codec::encode;
use crate::io::gguf_write::{self, GgufFile, Quant};
use crate::io::package::Package;
pub use crate::io::read::Inputs;
use crate::io::writer::OutputDir;
use crate::io::DType;
use crate::ir::RouterMode;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What a finished run wrote.
#[derive(Debug, Clone)]
pub struct Report {
    pub tensors: usize,
    pub bytes: u64,
    pub shards: usize,
    /// Input tensors holding NaN or infinity: (checkpoint, tensor).
    pub non_finite: Vec<(String, String)>,
    /// What the files around the weights could not carry exactly (config.json's
    /// per-layer fields, module weights copied unmerged): warnings.
    pub notes: Vec<String>,
}

/// What a plan needs in memory beyond the input files' page cache.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    /// Chunk buffers one worker thread holds while streaming.
    pub per_thread: u64,
    /// The largest set of whole tensors one output needs (non-streaming kernels).
    pub largest_whole: u64,
}

/// Estimates the working memory of the streaming engine.
pub fn estimate(plan: &Plan) -> Estimate {
    let chunk = kernels::CHUNK as u64 * 4;
    let per_thread = plan.nodes.iter().map(|n| children(&n.op).len() as u64 + 1).max().unwrap_or(1) * chunk * 2;
    let largest_whole = plan
        .outputs
        .iter()
        .map(|o| {
            let mut stack = vec![o.node];
            let mut total = 0;
            while let Some(n) = stack.pop() {
                if let Op::Kernel { kernel, .. } = &plan.nodes[n].op {
                    if !kernels::is_streamable(kernel, &plan.nodes[n].shape) {
                        total += stream::working_set(plan, n);
                    }
                }
                stack.extend(children(&plan.nodes[n].op));
            }
            total
        })
        .max()
        .unwrap_or(0);
    Estimate { per_thread, largest_whole }
}

/// How to run a plan.
pub struct Options<'a> {
    pub engine: Engine,
    /// Bound on the bytes of whole tensors held at once.
    pub max_memory: u64,
    /// Called with the bytes of each output tensor once it is written.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// NaN or infinity in an input fails the run instead of warning.
    pub strict: bool,
    /// For a `.gguf` output: the tensor type (`save(..., dtype="q8_0")`);
    /// `None` follows the output's dtype.
    pub quant: Option<Quant>,
}

/// Which engine computes the plan.
#[derive(Clone)]
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
    pub const fn new(cap: u64) -> Budget {
        Budget { cap, used: std::sync::Mutex::new(0), freed: std::sync::Condvar::new() }
    }
    /// The bytes it bounds.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// `bytes` of the budget if they are free now, without waiting.
    pub fn try_acquire(&self, bytes: u64) -> Option<Permit<'_>> {
        let mut used = self.used.lock().unwrap();
        if *used + bytes > self.cap {
            return None;
        }
        *used += bytes;
        Some(Permit { budget: self, bytes })
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

/// Set by SIGINT or SIGTERM (see `main.rs`); a run stops at its next
/// chunk and removes what it wrote.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))).clone()
}

pub fn interrupted() -> bool {
    interrupt_flag().load(Ordering::Relaxed)
}

/// The default `--max-memory`: a quarter of the memory this process may
/// use, the smaller of physical memory and the cgroup's limit (a container
/// limited to less than a quarter of its host's RAM is not the host); 4 GB
/// where neither is known.
pub fn default_max_memory() -> u64 {
    let physical = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    });
    let cgroup =
        std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| cgroup_limit(&c, Path::new("/sys/fs/cgroup")));
    match (physical, cgroup) {
        (Some(p), Some(c)) => p.min(c) / 4,
        (Some(x), None) | (None, Some(x)) => x / 4,
        (None, None) => 4 << 30,
    }
}

/// The memory limit of this process's cgroup, given `/proc/self/cgroup` and
/// where the cgroup filesystem is mounted: v2's `memory.max` (walking up to
/// the root, since a parent's limit binds too), else v1's
/// `memory.limit_in_bytes`. `None` when unlimited or unknown.
pub fn cgroup_limit(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let read = |p: &Path| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    let mut limit: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let rel = path.trim_start_matches('/');
        let found = if controllers.is_empty() {
            // v2: the unified hierarchy.
            let mut dir = root.join(rel);
            let mut min: Option<u64> = None;
            loop {
                if let Some(v) = read(&dir.join("memory.max")) {
                    min = Some(min.map_or(v, |m: u64| m.min(v)));
                }
                if dir == root || !dir.pop() {
                    break;
                }
            }
            min
        } else if controllers.split(',').any(|c| c == "memory") {
            // v1 (the group's own directory, else the mount's root when the
            // container sees only its own group); huge values mean "no limit".
            read(&root.join("memory").join(rel).join("memory.limit_in_bytes"))
                .or_else(|| read(&root.join("memory/memory.limit_in_bytes")))
                .filter(|&v| v < (1u64 << 60))
        } else {
            None
        };
        if let Some(v) = found {
            limit = Some(limit.map_or(v, |l| l.min(v)));
        }
    }
    limit
}

/// Opens the files of the models the plan loads from. A quarter of the
/// memory budget holds dequantized GGUF tensors between chunked reads.
fn open_inputs(plan: &Plan, max_memory: u64) -> Result<Inputs, String> {
    let used: Vec<bool> = (0..plan.models.len())
        .map(|m| plan.nodes.iter().any(|n| matches!(&n.op, Op::Load { model, .. } if *model == m)))
        .collect();
    // Loads with several parents (the base under each task vector) are read
    // for each of them, chunk by chunk in a row.
    let mut parents = vec![0usize; plan.nodes.len()];
    for n in &plan.nodes {
        for c in children(&n.op) {
            parents[c] += 1;
        }
    }
    let shared = plan.nodes.iter().zip(&parents).filter_map(|(n, &p)| match &n.op {
        Op::Load { model, tensor } if p > 1 => Some((*model, tensor.clone())),
        _ => None,
    });
    Ok(Inputs::open(&plan.models, &used)?.with_cache_limit(max_memory / 4).with_shared(shared))
}

/// Computes every output tensor of `plan` and writes it into `out`, holding
/// at most about `max_memory` bytes of whole tensors at once.
pub fn execute(plan: &Plan, out: &OutputDir, opts: &Options) -> Result<Report, String> {
    let inputs = open_inputs(plan, opts.max_memory)?;
    let budget = Budget::new(opts.max_memory);
    let done = |i: usize| {
        if let Some(p) = opts.progress {
            p(plan.layout.tensors[i].bytes());
        }
    };
    let device = match &opts.engine {
        Engine::Stream => {
            plan.outputs.par_iter().enumerate().try_for_each(|(i, _)| {
                if !copy_buffer(plan, &inputs, i, out)? {
                    stream::write_output(plan, &inputs, &budget, i, out)?;
                }
                done(i);
                Ok::<(), String>(())
            })?;
            return Ok(report(plan, &inputs));
        }
        Engine::Candle(device) => device,
    };
    plan.outputs.par_iter().enumerate().try_for_each(|(i, o)| {
        if interrupted() {
            return Err("interrupted".to_string());
        }
        if copy_buffer(plan, &inputs, i, out)? {
            return Ok(());
        }
        let _permit = budget.acquire(plan.nodes[o.node].shape.iter().product::<usize>() as u64 * 4 * 4);
        let t = eval_output(plan, &inputs, o.node, device).map_err(|e| format!("computing `{}`: {e}", o.name))?;
        let vals =
            t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| format!("computing `{}`: {e}", o.name))?;
        let bytes = encode(&vals, plan.layout.tensors[i].dtype);
        let slot = plan.layout.slots[i];
        out.write_at(slot.shard, slot.offset, &bytes).map_err(|e| format!("writing `{}`: {e}", o.name))
    })?;
    Ok(report(plan, &inputs))
}

/// Writes output tensor `i` as the bytes of the input it loads when it is an
/// integer buffer (never merged, and not representable in f32 beyond 2^24).
/// Returns whether it did.
fn copy_buffer(plan: &Plan, inputs: &Inputs, i: usize, out: &OutputDir) -> Result<bool, String> {
    let t = &plan.layout.tensors[i];
    let (false, Op::Load { model, tensor }) = (t.dtype.is_float(), &plan.nodes[plan.outputs[i].node].op) else {
        return Ok(false);
    };
    let (bytes, dtype) = inputs.bytes(*model, tensor)?;
    if dtype != t.dtype {
        return Ok(false);
    }
    let slot = plan.layout.slots[i];
    out.write_at(slot.shard, slot.offset, &bytes).map_err(|e| format!("writing `{}`: {e}", t.name))?;
    Ok(true)
}

/// Computes every float output tensor of `plan` whole (in parallel, under
/// the memory budget; integer buffers are skipped) and hands each to `f`
/// with its index: for statistics
/// over a value rather than a checkpoint (the REPL's `:stats`, `:cos`).
pub fn compute_all(
    plan: &Plan,
    max_memory: u64,
    f: &(dyn Fn(usize, Vec<f32>) -> Result<(), String> + Sync),
) -> Result<(), String> {
    let inputs = open_inputs(plan, max_memory)?;
    let budget = Budget::new(max_memory);
    plan.outputs.par_iter().enumerate().try_for_each(|(i, o)| {
        // Integer buffers (`position_ids`) are copied, never computed: no
        // f32 values to give, and nothing a task vector or a statistic has.
        if !plan.layout.tensors[i].dtype.is_float() {
            return Ok(());
        }
        let n: usize = plan.nodes[o.node].shape.iter().product();
        let out = Mutex::new(vec![0f32; n]);
        stream::compute(plan, &inputs, &budget, o.node, &|start, vals| {
            out.lock().unwrap()[start..start + vals.len()].copy_from_slice(vals);
            Ok(())
        })?;
        f(i, out.into_inner().unwrap())
    })
}

/// A router weight [experts, hidden] (see [`RouterMode`]).
pub fn router(inputs: &Inputs, mode: &RouterMode, tensor: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let (experts, hidden) = (shape[0], shape[1]);
    Ok(match mode {
        RouterMode::Uniform => vec![0.0; experts * hidden],
        RouterMode::Random { seed } => {
            let key = kernels::stream_key(*seed, tensor, 0);
            (0..experts * hidden).map(|i| crate::rng::normal(key, i as u64) as f32).collect()
        }
        RouterMode::CheapEmbed { model, tensor: embed, tokens } => {
            let mut out = vec![0f32; experts * hidden];
            let mut row = vec![0f32; hidden];
            for (e, ids) in tokens.iter().enumerate() {
                let mut sum = vec![0f64; hidden];
                for &id in ids {
                    inputs.read(*model, embed, id as usize * hidden, &mut row)?;
                    sum.iter_mut().zip(&row).for_each(|(s, r)| *s += *r as f64);
                }
                for (o, s) in out[e * hidden..(e + 1) * hidden].iter_mut().zip(sum) {
                    *o = (s / ids.len().max(1) as f64) as f32;
                }
            }
            out
        }
    })
}

fn report(plan: &Plan, inputs: &Inputs) -> Report {
    Report {
        tensors: plan.outputs.len(),
        bytes: plan.layout.total_bytes(),
        shards: plan.layout.shards.len(),
        non_finite: inputs.non_finite(),
        notes: Vec::new(),
    }
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
                let (bytes, dtype) = inputs.bytes(*model, tensor)?;
                kernels::load(&bytes, dtype, &node.shape, device).map_err(ce)?
            }
            Op::Lin(terms) => {
                let ts: Vec<(f64, &Tensor)> = terms.iter().map(|(c, x)| (c.get(), &values[x])).collect();
                kernels::lin(&ts).map_err(ce)?
            }
            Op::Zeros => Tensor::zeros(node.shape.as_slice(), candle_core::DType::F32, device).map_err(ce)?,
            Op::Router { mode, tensor } => {
                let v = router(inputs, mode, tensor, &node.shape)?;
                Tensor::from_vec(v, node.shape.as_slice(), device).map_err(ce)?
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
        Op::Zeros | Op::Router { .. } => Vec::new(),
    }
}

/// Runs a plan into `target`: weights, index, config.json (dtype patched),
/// tokenizer files and a model card. The directory appears only when
/// everything is written; on any failure nothing is left behind.
pub fn run_plan(plan: &Plan, target: &Path, force: bool, recipe_text: &str, opts: &Options) -> Result<Report, String> {
    if target.extension().is_some_and(|e| e == "gguf") {
        return run_gguf(plan, target, force, recipe_text, opts);
    }
    let out = OutputDir::create(target, force, &plan.layout)?;
    let report = execute(plan, &out, opts)?;
    if opts.strict && !report.non_finite.is_empty() {
        let (ck, t) = &report.non_finite[0];
        return Err(format!(
            "tensor `{t}` of `{ck}` holds NaN or infinity ({} input tensors do), and --strict is set",
            report.non_finite.len()
        ));
    }
    let package = Package {
        models: &plan.models,
        origin: plan.origin,
        dtype: plan.dtype.or_else(|| plan.layout.tensors.first().map(|t| t.dtype)),
        n_layers: plan.n_layers,
        config: &plan.config,
        layers: &plan.layers,
        recipe: recipe_text,
    };
    let mut report = report;
    report.notes.extend(plan.notes.iter().cloned());
    report.notes.extend(package.write(&out, &plan.layout)?);
    out.commit()?;
    Ok(report)
}

/// The GGUF type of an output saved with `dtype` (f32 when none is given
/// and the inputs are not all 16-bit).
pub fn gguf_quant(plan: &Plan) -> Quant {
    match plan.dtype.or_else(|| plan.layout.tensors.first().map(|t| t.dtype)) {
        Some(DType::F16) => Quant::F16,
        Some(DType::BF16) => Quant::BF16,
        _ => Quant::F32,
    }
}

/// Runs a plan into one GGUF file at `target` (see `io::gguf_write`): each
/// output tensor is computed whole, encoded and written at the offset the
/// header gives it; the file appears only when complete.
fn run_gguf(plan: &Plan, target: &Path, force: bool, recipe_text: &str, opts: &Options) -> Result<Report, String> {
    let quant = opts.quant.unwrap_or_else(|| gguf_quant(plan));
    let package = Package {
        models: &plan.models,
        origin: plan.origin,
        dtype: plan.dtype,
        n_layers: plan.n_layers,
        config: &plan.config,
        layers: &plan.layers,
        recipe: recipe_text,
    };
    let mut notes = plan.notes.clone();
    let config = package.config_json(&plan.models[plan.origin], &mut notes).unwrap_or(serde_json::Value::Null);
    let source = plan.models.iter().map(|m| m.root.as_path()).find(|p| p.extension().is_some_and(|e| e == "gguf"));
    let origin_dir = plan.models[plan.origin].dir.as_deref();
    let layout = gguf_write::plan(&plan.layout.tensors, &config, source, origin_dir, quant)?;
    let out = GgufFile::create(target, force, &layout)?;
    let inputs = open_inputs(plan, opts.max_memory)?;
    let budget = Budget::new(opts.max_memory);
    plan.outputs.par_iter().enumerate().try_for_each(|(i, o)| {
        if interrupted() {
            return Err("interrupted".to_string());
        }
        let shape = &plan.nodes[o.node].shape;
        let n: usize = shape.iter().product();
        let _permit = budget.acquire(n as u64 * 4);
        let vals = Mutex::new(vec![0f32; n]);
        stream::compute(plan, &inputs, &budget, o.node, &|start, v| {
            vals.lock().unwrap()[start..start + v.len()].copy_from_slice(v);
            Ok(())
        })?;
        let t = &layout.tensors[i];
        let bytes = gguf_write::encode(t, &vals.into_inner().unwrap(), shape.first().copied().unwrap_or(1));
        out.write_at(t.offset, &bytes).map_err(|e| format!("writing `{}`: {e}", o.name))?;
        if let Some(p) = opts.progress {
            p(plan.layout.tensors[i].bytes());
        }
        Ok(())
    })?;
    let mut report = report(plan, &inputs);
    if opts.strict && !report.non_finite.is_empty() {
        let (ck, t) = &report.non_finite[0];
        return Err(format!("tensor `{t}` of `{ck}` holds NaN or infinity, and --strict is set"));
    }
    report.bytes = layout.size;
    report.shards = 1;
    report.notes = notes;
    out.commit()?;
    Ok(report)
}

#[cfg(test)]
mod memory_tests {
    use super::cgroup_limit;

    #[test]
    fn cgroup_limits_are_read_for_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // v2: the tightest limit on the way up counts; "max" is no limit.
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.join("a/memory.max"), "3000000000\n").unwrap();
        std::fs::write(root.join("a/b/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_limit("0::/a/b\n", root), Some(3_000_000_000));
        assert_eq!(cgroup_limit("0::/\n", root), None);
        // v1: the memory controller's group; the "unlimited" sentinel is no limit.
        std::fs::create_dir_all(root.join("memory/job")).unwrap();
        std::fs::write(root.join("memory/job/memory.limit_in_bytes"), "2147483648\n").unwrap();
        std::fs::write(root.join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_limit("5:cpu:/\n4:memory:/job\n", root), Some(2 << 30));
        assert_eq!(cgroup_limit("4:memory:/elsewhere\n", root), None);
    }
}
