//! The `fuse` command line: run, check, inspect, graph and demo.

use clap::{Args, Parser, Subcommand};
use fuse::check::{self, Recipe};
use fuse::diag::{render, Code, Diagnostic, Sources};
use fuse::exec::Engine;
use fuse::io::Checkpoint;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod eval_cmd;

#[derive(Parser)]
#[command(name = "fuse", version, about = "A typed language for neural-network merge recipes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `fuse run`'s arguments.
#[derive(Args)]
struct RunArgs {
    /// The .fuse recipe.
    recipe: PathBuf,
    /// Where to write the recipe's result (its last expression).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Override a `param`: --set lam=0.5 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Replace output directories that exist and are not empty.
    #[arg(long)]
    force: bool,
    /// Where to compute (cuda needs the `cuda` build feature).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Bound on whole tensors held in memory at once, e.g. 2GB (default: a quarter of RAM).
    #[arg(long)]
    max_memory: Option<String>,
    /// Fail (instead of warning) when an input tensor holds NaN or infinity.
    #[arg(long)]
    strict: bool,
    /// The dtype of the -o output: bf16, f16 or f32 (default: the inputs'),
    /// or q8_0 for a .gguf output. `save(..., dtype=...)` sets it per save.
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a recipe, then compute and write its outputs.
    Run(RunArgs),
    /// Perplexity and bits per byte of a recipe's models (and ensembles) on a text.
    Eval {
        recipe: PathBuf,
        /// A plain-text (UTF-8) file, tokenized with each model's tokenizer.json.
        #[arg(long)]
        text: PathBuf,
        /// Tokens per window (default: the model's maximum, capped at 1024).
        #[arg(long)]
        context: Option<usize>,
        /// Evaluate at most this many tokens of the text.
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Also evaluate every model the recipe reads, for comparison.
        #[arg(long)]
        inputs: bool,
        /// One JSON array of {name, perplexity, bits_per_byte, tokens, ...} on stdout.
        #[arg(long)]
        json: bool,
        /// Evaluate for each value of a `param`: lam=0.1,0.3,0.5 or lam=0:1:0.25.
        #[arg(long, value_name = "NAME=VALUES")]
        sweep: Option<String>,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// Where to run the models (cuda needs the `cuda` build feature).
        #[arg(long, value_enum, default_value_t = EvalDevice::Cpu)]
        device: EvalDevice,
        /// Refuse to start when the evaluation would need more, e.g. 8GB (default: 3/4 of memory).
        #[arg(long)]
        max_memory: Option<String>,
    },
    /// Check a recipe against its models' headers without computing anything.
    Check {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Summarize a checkpoint: architecture, layers, tensors, dtypes.
    Inspect {
        /// A checkpoint directory, a .safetensors file, or hf:org/name.
        model: String,
        /// List every tensor with its shape and dtype.
        #[arg(long)]
        tensors: bool,
    },
    /// Print the planned tensor graph of a recipe's outputs.
    Graph {
        recipe: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// A language server over stdio, for editors.
    Lsp,
    /// Explore models and try merges interactively.
    Repl {
        /// A recipe whose bindings to start from.
        recipe: Option<PathBuf>,
    },
    /// Write a synthetic Llama-layout checkpoint (for tests and benchmarks).
    GenModel {
        dir: PathBuf,
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        #[arg(long, default_value_t = 3)]
        layers: usize,
        #[arg(long, default_value_t = 96)]
        vocab: usize,
        /// Intermediate (MLP) size; default 2.75 x hidden, as Llama.
        #[arg(long)]
        intermediate: Option<usize>,
        #[arg(long, value_enum, default_value_t = GenDType::F32)]
        dtype: GenDType,
        /// Noise terms `seed:scale`; a fine-tune repeats the base's and adds one.
        #[arg(long = "term", default_values_t = vec!["1:0.02".to_string()])]
        terms: Vec<String>,
        /// Shard size, e.g. 100MB.
        #[arg(long)]
        shard: Option<String>,
    },
    /// Generate small models, write a recipe for them and run it.
    Demo {
        /// Where to put the models, the recipe and the merged output.
        #[arg(default_value = "fuse-demo")]
        dir: PathBuf,
    },
}

/// Where `fuse run` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    /// The streaming engine on CPU threads.
    Cpu,
    /// candle-core's CUDA backend (build with `--features cuda`).
    Cuda,
    /// The candle engine on CPU: slower, for cross-checking the streaming engine.
    CandleCpu,
}

/// Where `fuse eval` runs the models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum EvalDevice {
    Cpu,
    Cuda,
}

/// The dtypes `fuse gen-model` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum GenDType {
    F32,
    Bf16,
    F16,
}

/// Stack for the command's thread and for rayon's workers. Lowering and
/// evaluation recurse once per named step of a recipe (`s2 = s1 + d`, ...),
/// so a generated recipe of thousands of such steps needs more than the
/// default 8 MiB (2 MiB for workers); the reservation is virtual, pages are
/// touched only as deep as a recipe goes.
const MAIN_STACK: usize = 1 << 30;
const WORKER_STACK: usize = 256 << 20;

fn main() -> ExitCode {
    keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new().stack_size(WORKER_STACK).build_global();
    match std::thread::Builder::new().name("fuse".into()).stack_size(MAIN_STACK).spawn(run_cli) {
        Ok(t) => t.join().unwrap_or(ExitCode::FAILURE),
        Err(_) => run_cli(),
    }
}

/// glibc maps each allocation over 128 KiB (a chunk's f32 buffer is
/// exactly that) on its own and unmaps it when freed, and trims the heap's
/// top as soon as it is free: a streaming run would then fault in fresh
/// zeroed pages for buffers it frees and takes again thousands of times a
/// second. Allocations up to 32 MiB come from the heap instead, and freed
/// memory stays for reuse (peak memory is unchanged: it is what was in use
/// at once).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    // The first SIGINT or SIGTERM asks a run to stop and clean up; a second exits at once.
    let flag = fuse::exec::interrupt_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    let result = match cli.command {
        Command::Run(args) => cmd_run(&args),
        Command::Check { recipe, set } => cmd_check(&recipe, &set),
        Command::Eval { recipe, text, context, max_tokens, inputs, json, sweep, set, device, max_memory } => {
            let how = eval_cmd::How {
                text,
                context,
                max_tokens,
                inputs,
                json,
                sweep,
                set,
                cuda: device == EvalDevice::Cuda,
                max_memory,
            };
            eval_cmd::run(&recipe, &how)
        }
        Command::Inspect { model, tensors } => cmd_inspect(&model, tensors),
        Command::Graph { recipe, set } => cmd_graph(&recipe, &set),
        Command::Demo { dir } => cmd_demo(&dir),
        Command::Lsp => fuse::lsp::run().or_else(|e| fail(Diagnostic::error(Code::E0403, e))),
        Command::Repl { recipe } => {
            fuse::repl::run(recipe.as_deref()).or_else(|e| fail(Diagnostic::error(Code::E0403, e)))
        }
        Command::GenModel { dir, hidden, layers, vocab, intermediate, dtype, terms, shard } => {
            cmd_gen_model(&dir, hidden, layers, vocab, intermediate, dtype, &terms, shard.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

type CmdResult = Result<(), ()>;

fn report(diags: &[Diagnostic], sources: &Sources) {
    let color = std::io::stderr().is_terminal();
    let mut err = std::io::stderr().lock();
    for d in diags {
        render::render(d, sources, color, &mut err);
    }
}

fn fail(d: Diagnostic) -> CmdResult {
    report(&[d], &Sources::default());
    Err(())
}

fn parse_sets(set: &[String]) -> Result<Vec<(String, String)>, Diagnostic> {
    set.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(Diagnostic::error(Code::E0109, format!("--set `{s}` is not NAME=VALUE"))
                .with_help("write e.g. --set lam=0.5")),
        })
        .collect()
}

/// Reads and checks a recipe, printing every diagnostic.
fn load(recipe: &Path, set: &[String], sources: &mut Sources) -> Result<(Recipe, String), ()> {
    let overrides = parse_sets(set).or_else(|d| fail(d).map(|_| Vec::new()))?;
    let text = std::fs::read_to_string(recipe).or_else(|e| {
        fail(Diagnostic::error(Code::E0303, format!("cannot read `{}`: {e}", recipe.display()))).map(|_| String::new())
    })?;
    let (checked, diags) = check::check(recipe, &text, &overrides, sources);
    report(&diags, sources);
    match checked {
        Some(r) => Ok((r, text)),
        None => {
            let n = diags.iter().filter(|d| d.is_error()).count();
            eprintln!("{n} error{} in `{}`", if n == 1 { "" } else { "s" }, recipe.display());
            Err(())
        }
    }
}

fn cmd_check(recipe: &Path, set: &[String]) -> CmdResult {
    let mut sources = Sources::default();
    let (r, _) = load(recipe, set, &mut sources)?;
    if let Some(res) = &r.result {
        println!("result: Model ({})", res.value.arch.summary());
    }
    if let Some(e) = &r.ensemble {
        println!("result: Ensemble ({})", fuse::check::ensemble_summary(&e.value));
    }
    for s in &r.saves {
        println!("save: {} ({})", s.dir.display(), s.value.arch.summary());
    }
    println!("ok: `{}` checks", recipe.display());
    Ok(())
}

/// `--dtype NAME` for the -o output `t`: a safetensors dtype, or a GGUF
/// encoding (q8_0 too) when the output is a `.gguf` file.
fn set_output_dtype(t: &mut fuse::ir::Output, name: &str) -> Result<(), Diagnostic> {
    use fuse::io::{gguf_write::Quant, safetensors::DType};
    let gguf = t.dir.extension().is_some_and(|e| e == "gguf");
    let lower = name.to_ascii_lowercase();
    let dtype = match lower.as_str() {
        "f32" => Some(DType::F32),
        "f16" => Some(DType::F16),
        "bf16" => Some(DType::BF16),
        _ => None,
    };
    match (dtype, gguf) {
        (Some(d), _) => t.dtype = Some(d),
        (None, true) if lower == "q8_0" => t.quant = Quant::parse(&lower),
        _ => {
            let allowed = if gguf { "bf16, f16, f32 or q8_0" } else { "bf16, f16 or f32 (q8_0 needs a .gguf output)" };
            return Err(Diagnostic::error(Code::E0401, format!("--dtype `{name}` is not an output dtype"))
                .with_help(format!("write one of {allowed}")));
        }
    }
    Ok(())
}

fn cmd_run(args: &RunArgs) -> CmdResult {
    let (recipe, output, set, force) = (&args.recipe, args.output.as_deref(), &args.set, args.force);
    let (device, max_memory, strict, dtype) =
        (args.device, args.max_memory.as_deref(), args.strict, args.dtype.as_deref());
    if dtype.is_some() && output.is_none() {
        return fail(
            Diagnostic::error(Code::E0401, "--dtype sets the dtype of the -o output, and -o was not given")
                .with_help("pass -o DIR, or write `save(expr, \"dir\", dtype=bf16)` in the recipe"),
        );
    }
    let max_memory = match max_memory {
        None => fuse::exec::default_max_memory(),
        Some(m) => fuse::io::writer::parse_size(m).unwrap_or(0),
    };
    let Some(max_memory) = (max_memory > 0).then_some(max_memory) else {
        return fail(
            Diagnostic::error(Code::E0401, format!("--max-memory `{max_memory}` is not a size"))
                .with_help("write e.g. --max-memory 2GB"),
        );
    };
    let engine = match device {
        Device::Cpu => Engine::Stream,
        Device::CandleCpu => Engine::Candle(candle_core::Device::Cpu),
        Device::Cuda => match candle_core::Device::new_cuda(0) {
            Ok(d) => Engine::Candle(d),
            Err(e) => {
                return fail(
                    Diagnostic::error(Code::E0403, format!("cannot use CUDA: {e}"))
                        .with_help("build with `--features cuda` on a machine with an NVIDIA GPU, or use --device cpu"),
                )
            }
        },
    };
    let mut sources = Sources::default();
    let (r, text) = load(recipe, set, &mut sources)?;
    let mut targets = r.outputs(output).or_else(|d| fail(d).map(|_| Vec::new()))?;
    if let (Some(d), Some(o)) = (dtype, output) {
        let t = targets.iter_mut().find(|t| t.dir == o).expect("-o is an output");
        if let Err(d) = set_output_dtype(t, d) {
            return fail(d);
        }
    }
    // Refuse before computing anything, so a late output cannot fail after an early one was written.
    for t in &targets {
        let how = if output == Some(t.dir.as_path()) {
            format!("this result is written to `{}` (-o)", t.dir.display())
        } else {
            "written here".to_string()
        };
        if let Some(d) = check::output_conflict(&r, &t.dir, Some((t.file, t.span)), &how) {
            report(&[d], &sources);
            return Err(());
        }
        if let Err(refusal) = fuse::io::target::may_replace(&t.dir, force) {
            let mut d = Diagnostic::error(Code::E0402, format!("`{}` {refusal}", t.dir.display()))
                .with_label(t.file, t.span, how)
                .with_help(refusal.help());
            if matches!(refusal, fuse::io::target::Refusal::Foreign(_)) {
                d = d.with_note("nothing was written or removed");
            }
            report(&[d], &sources);
            return Err(());
        }
    }
    for t in &targets {
        let dir = &t.dir;
        let start = Instant::now();
        let plan = fuse::graph::lower(&r, &t.value, t.dtype, t.shard);
        let bar = fuse::progress::bar(plan.layout.total_bytes(), plan.outputs.len());
        let tick = |bytes: u64| {
            if let Some(b) = &bar {
                b.inc(bytes);
            }
        };
        let opts =
            fuse::exec::Options { engine: engine.clone(), max_memory, progress: Some(&tick), strict, quant: t.quant };
        if let Some(lora) = t.lora {
            let rank = lora.rank;
            let result = fuse::exec::run_lora(&plan, dir, force, rank, lora.base, &text, &opts);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            match result {
                Ok(rep) => print_lora(dir, rank, &rep),
                Err(_) if fuse::exec::interrupted() => interrupted(dir),
                Err(e) => {
                    return fail(
                        Diagnostic::error(Code::E0403, format!("writing `{}` failed: {e}", dir.display()))
                            .with_note("nothing was left at the output path"),
                    )
                }
            }
            continue;
        }
        let result = fuse::exec::run_plan(&plan, dir, force, &text, &opts);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if let Ok(rep) = &result {
            let notes: Vec<Diagnostic> = rep
                .notes
                .iter()
                .map(|n| {
                    Diagnostic::warning(Code::E0407, format!("in `{}`: {n}", dir.display()))
                        .with_help("check the output's files before publishing it")
                })
                .collect();
            report(&notes, &Sources::default());
        }
        match result {
            Ok(rep) if !rep.non_finite.is_empty() => {
                let (ck, t) = &rep.non_finite[0];
                let more = rep.non_finite.len() - 1;
                report(
                    &[Diagnostic::warning(Code::E0404, format!("tensor `{t}` of `{ck}` holds NaN or infinity"))
                        .with_note(if more > 0 {
                            format!("{more} more input tensors do")
                        } else {
                            "no other input tensor does".into()
                        })
                        .with_help(
                            "the merged values there are NaN or infinite too; pass --strict to refuse such inputs",
                        )],
                    &Sources::default(),
                );
                eprintln!("wrote {} ({} tensors)", dir.display(), rep.tensors);
            }
            Ok(rep) => eprintln!(
                "wrote {} ({} tensors, {:.1} MB in {} shard{}) in {:.2}s",
                dir.display(),
                rep.tensors,
                rep.bytes as f64 / 1e6,
                rep.shards,
                if rep.shards == 1 { "" } else { "s" },
                start.elapsed().as_secs_f64()
            ),
            Err(_) if fuse::exec::interrupted() => interrupted(dir),
            Err(e) => {
                return fail(
                    Diagnostic::error(Code::E0403, format!("writing `{}` failed: {e}", dir.display()))
                        .with_note("nothing was left at the output path"),
                )
            }
        }
    }
    Ok(())
}

fn interrupted(dir: &Path) -> ! {
    let _ = fail(
        Diagnostic::error(Code::E0405, format!("interrupted; nothing was written at `{}`", dir.display()))
            .with_note("outputs appear only when complete; run again to write it"),
    );
    std::process::exit(130);
}

/// The energy each layer's tensors keep in an extracted LoRA.
fn print_lora(dir: &Path, rank: usize, rep: &fuse::exec::LoraReport) {
    eprintln!("wrote LoRA adapter {} (rank {rank}, {} tensors)", dir.display(), rep.kept.len());
    let mut layers: std::collections::BTreeMap<usize, Vec<&fuse::exec::Kept>> = Default::default();
    for k in &rep.kept {
        layers.entry(k.layer.unwrap_or(0)).or_default().push(k);
    }
    for (l, ks) in layers {
        let min = ks.iter().min_by(|a, b| a.energy.total_cmp(&b.energy)).unwrap();
        let mean = ks.iter().map(|k| k.energy).sum::<f64>() / ks.len() as f64;
        let short = min.tensor.rsplit('.').nth(1).unwrap_or(&min.tensor);
        eprintln!(
            "  layer {l:>3}: {:6.2}% of the energy kept (least: {short}, {:.2}%)",
            100.0 * mean,
            100.0 * min.energy
        );
    }
    if !rep.dropped.is_empty() {
        let names: Vec<&str> = rep.dropped.iter().map(|(n, _)| n.as_str()).collect();
        eprintln!("  left out (a LoRA holds only 2-D layer tensors): {}", names.join(", "));
    }
}

fn cmd_graph(recipe: &Path, set: &[String]) -> CmdResult {
    let mut sources = Sources::default();
    let (r, _) = load(recipe, set, &mut sources)?;
    let targets =
        r.outputs(Some(Path::new("<-o>"))).or_else(|_| r.outputs(None)).or_else(|d| fail(d).map(|_| Vec::new()))?;
    for t in &targets {
        let (dir, plan) = (&t.dir, fuse::graph::lower(&r, &t.value, t.dtype, t.shard));
        println!(
            "# output {}: {} tensors, {:.1} MB, {} shard(s)",
            dir.display(),
            plan.outputs.len(),
            plan.layout.total_bytes() as f64 / 1e6,
            plan.layout.shards.len()
        );
        let est = fuse::exec::estimate(&plan);
        let threads = rayon::current_num_threads() as u64;
        println!(
            "# working memory: about {:.1} MB ({threads} threads x {:.1} MB of chunks, plus {:.1} MB of whole tensors)",
            (threads * est.per_thread + est.largest_whole) as f64 / 1e6,
            est.per_thread as f64 / 1e6,
            est.largest_whole as f64 / 1e6
        );
        print!("{plan}");
    }
    Ok(())
}

fn cmd_inspect(model: &str, tensors: bool) -> CmdResult {
    let ck = match Checkpoint::open(model, Path::new(".")) {
        Ok(ck) => ck,
        Err(fuse::io::OpenError::NotFound { what, help }) => {
            return fail(Diagnostic::error(Code::E0301, format!("model not found: {what}")).with_help(help))
        }
        Err(fuse::io::OpenError::Bad { file, what }) => {
            return fail(Diagnostic::error(Code::E0302, format!("bad checkpoint `{}`: {what}", file.display())))
        }
    };
    let arch = check::Arch::from_checkpoint(&ck, 0);
    println!("{}", ck.root.display());
    println!("  architecture: {}", arch.name.as_deref().unwrap_or("unknown (no config.json)"));
    println!("  layers:       {}", arch.n_layers);
    println!("  tensors:      {}", arch.tensors.len());
    println!("  parameters:   {}", fuse::check::value::human_count(arch.params()));
    let dtypes: Vec<String> =
        ck.dtype_counts().iter().map(|(d, n)| format!("{d} ({})", fuse::check::value::human_count(*n))).collect();
    println!("  dtypes:       {}", dtypes.join(", "));
    println!("  files:        {}", ck.files.len());
    if tensors {
        for t in &arch.tensors {
            println!("  {:60} {:>16} {}", t.name, format!("{:?}", t.shape), t.dtype);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn cmd_gen_model(
    dir: &Path,
    hidden: usize,
    layers: usize,
    vocab: usize,
    intermediate: Option<usize>,
    dtype: GenDType,
    terms: &[String],
    shard: Option<&str>,
) -> CmdResult {
    let bad = |what: String| fail(Diagnostic::error(Code::E0401, what));
    let dtype = match dtype {
        GenDType::F32 => fuse::io::DType::F32,
        GenDType::Bf16 => fuse::io::DType::BF16,
        GenDType::F16 => fuse::io::DType::F16,
    };
    let mut parsed = Vec::new();
    for t in terms {
        match t.split_once(':').and_then(|(s, c)| Some((s.parse().ok()?, c.parse().ok()?))) {
            Some(p) => parsed.push(p),
            None => return bad(format!("--term `{t}` is not SEED:SCALE")),
        }
    }
    let max_shard = match shard {
        Some(s) => match fuse::io::writer::parse_size(s) {
            Some(n) => n,
            None => return bad(format!("`{s}` is not a size")),
        },
        None => u64::MAX,
    };
    let heads = (hidden / 64).max(1).min(hidden);
    let shape = fuse::testmodel::TinyLlama {
        hidden,
        intermediate: intermediate.unwrap_or(hidden * 11 / 4),
        layers,
        heads,
        kv_heads: heads,
        vocab,
        dtype,
        max_shard,
    };
    shape.write(dir, &parsed).or_else(|e| bad(format!("cannot write `{}`: {e}", dir.display())))?;
    eprintln!("wrote {} ({} parameters, {dtype})", dir.display(), fuse::check::value::human_count(shape.params()));
    Ok(())
}

const DEMO_RECIPE: &str = r#"# The design-card recipe: a task vector, plus a TIES merge of two more.
base = model("models/base")
ft_a = model("models/ft-math")
ft_b = model("models/ft-code")
ft_c = model("models/ft-chat")

param lam = 0.3

base + lam*(ft_a - base) + ties(ft_b, ft_c, k=0.2)
"#;

fn cmd_demo(dir: &Path) -> CmdResult {
    let shape =
        fuse::testmodel::TinyLlama { hidden: 64, intermediate: 128, layers: 4, vocab: 256, ..Default::default() };
    let models = dir.join("models");
    let gen = |name: &str, terms: &[(u64, f32)]| {
        shape.write(&models.join(name), terms).map_err(|e| {
            let _ = fail(Diagnostic::error(Code::E0403, format!("cannot write demo model `{name}`: {e}")));
        })
    };
    gen("base", &[(1, 0.02)])?;
    gen("ft-math", &[(1, 0.02), (11, 0.002)])?;
    gen("ft-code", &[(1, 0.02), (12, 0.002)])?;
    gen("ft-chat", &[(1, 0.02), (13, 0.002)])?;
    let recipe = dir.join("merge.fuse");
    std::fs::write(&recipe, DEMO_RECIPE).map_err(|e| {
        let _ = fail(Diagnostic::error(Code::E0403, format!("cannot write `{}`: {e}", recipe.display())));
    })?;
    eprintln!("generated 4 Llama-layout models ({} parameters each) in {}", shape.params(), models.display());
    eprintln!("recipe: {}\n{DEMO_RECIPE}", recipe.display());
    let out = dir.join("merged");
    let args = RunArgs {
        recipe,
        output: Some(out.clone()),
        set: Vec::new(),
        force: true,
        device: Device::Cpu,
        max_memory: None,
        strict: false,
        dtype: None,
    };
    cmd_run(&args)?;
    cmd_inspect(&out.display().to_string(), false)?;
    println!("merged model: {}", out.display());
    Ok(())
}
