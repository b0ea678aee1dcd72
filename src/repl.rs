//! `fuse repl`: statements and expressions against a growing session.
//!
//! Each input is checked together with the session so far (the recipe given
//! on the command line, then every accepted statement); an expression prints
//! its type and a one-line summary, and nothing is computed until a command
//! asks (`:stats`, `:cos`, `:save`). Errors are rendered against the input.

use crate::check::{self, Described, TVal};
use crate::complete::{self, Completion};
use crate::diag::{render, Diagnostic, FileId, Label, Sources};
use crate::{exec, graph};
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const COMMANDS: &[(&str, &str)] = &[
    (":help [NAME]", "this list, or the docs of a function"),
    (":type EXPR", "the type of an expression"),
    (":inspect EXPR", "a value's architecture: layers, tensors, parameters"),
    (":stats EXPR", "a task vector's norm and sparsity per layer (computes)"),
    (":cos A B", "cosine similarity of two task vectors per layer (computes)"),
    (":save EXPR DIR", "write a model (computes)"),
    (":eval EXPR FILE", "perplexity of a model or ensemble on a text (computes; Ctrl-C stops)"),
    (":load FILE", "import a recipe's bindings"),
    (":complete TEXT", "what tab completion offers for TEXT"),
    (":quit", "leave (also Ctrl-D)"),
];

/// The REPL's state: where relative paths start and the accepted statements.
pub struct Session {
    dir: PathBuf,
    text: String,
    names: Arc<Mutex<Vec<String>>>,
    out: Box<dyn Write>,
}

impl Session {
    /// A session whose model paths are relative to `dir`, starting from `recipe`'s bindings.
    pub fn new(dir: &Path, recipe: Option<&Path>, out: Box<dyn Write>) -> Result<Session, String> {
        let mut s = Session { dir: dir.to_path_buf(), text: String::new(), names: Default::default(), out };
        if let Some(r) = recipe {
            let text = std::fs::read_to_string(r).map_err(|e| format!("cannot read `{}`: {e}", r.display()))?;
            // Keep the bindings; a final bare expression becomes a binding the user can name.
            let program = crate::syntax::parse(&text, FileId(0)).map_err(|d| d.message)?;
            let mut kept = String::new();
            for st in &program.stmts {
                let src = &text[st.span.start..st.span.end];
                match st.kind {
                    crate::syntax::StmtKind::Expr(_) => kept.push_str(&format!("result = {src}\n")),
                    crate::syntax::StmtKind::Save { .. } => {}
                    _ => kept.push_str(&format!("{src}\n")),
                }
            }
            s.dir = r.parent().map(Path::to_path_buf).unwrap_or_default();
            if !s.try_extend(&kept) {
                return Err(format!("`{}` does not check", r.display()));
            }
        }
        s.refresh_names();
        Ok(s)
    }

    fn path(&self) -> PathBuf {
        self.dir.join("<repl>.fuse")
    }

    /// Checks the session plus `input`; prints errors against the input.
    fn analyze(&mut self, input: &str) -> Option<(check::Analysis, Sources)> {
        let text = format!("{}{input}\n", self.text);
        let mut sources = Sources::default();
        let want = check::Want { any_result: true, types: false };
        let a = check::analyze(&self.path(), &text, &[], &mut sources, want);
        if a.diags.is_empty() {
            return Some((a, sources));
        }
        // Re-point labels from the combined text to the input (or the session).
        let offset = self.text.len();
        let input_file = sources.add("<input>", format!("{input}\n"));
        let session_file = sources.add("<session>", self.text.clone());
        let main = FileId(0);
        let diags: Vec<Diagnostic> = a
            .diags
            .iter()
            .cloned()
            .map(|mut d| {
                d.labels = d
                    .labels
                    .into_iter()
                    .map(|l| match l {
                        Label { file, span, message } if file == main && span.start >= offset => Label {
                            file: input_file,
                            span: crate::syntax::Span::new(span.start - offset, span.end - offset),
                            message,
                        },
                        Label { file, span, message } if file == main => Label { file: session_file, span, message },
                        other => other,
                    })
                    .collect();
                d
            })
            .collect();
        let color = std::io::stdout().is_terminal();
        for d in &diags {
            render::render(d, &sources, color, &mut self.out);
        }
        a.recipe.is_some().then_some((a, sources))
    }

    /// Accepts `stmts` into the session when they check.
    fn try_extend(&mut self, stmts: &str) -> bool {
        let ok = self.analyze(stmts).is_some();
        if ok {
            self.text.push_str(stmts);
            self.text.push('\n');
        }
        ok
    }

    fn refresh_names(&mut self) {
        let mut sources = Sources::default();
        let a =
            check::analyze(&self.path(), &self.text, &[], &mut sources, check::Want { any_result: true, types: false });
        let mut names: Vec<String> = a.defs.into_iter().map(|(n, _, _)| n).collect();
        names.sort();
        *self.names.lock().unwrap() = names;
    }

    /// Handles one input (a statement, an expression or a command); false to quit.
    pub fn handle(&mut self, input: &str) -> bool {
        let input = input.trim();
        if input.is_empty() || input.starts_with('#') {
            return true;
        }
        if let Some(cmd) = input.strip_prefix(':') {
            return self.command(cmd);
        }
        let ends_in_expr = matches!(
            crate::syntax::parse(input, FileId(0))
                .ok()
                .and_then(|p| p.stmts.last().map(|s| matches!(s.kind, crate::syntax::StmtKind::Expr(_)))),
            Some(true)
        );
        if !ends_in_expr {
            if self.try_extend(input) {
                self.refresh_names();
            }
            return true;
        }
        if let Some((a, _)) = self.analyze(input) {
            // Statements before the expression join the session.
            let program = crate::syntax::parse(input, FileId(0)).unwrap();
            let last = program.stmts.last().unwrap().span;
            let before = input[..last.start].trim();
            if !before.is_empty() {
                self.text.push_str(before);
                self.text.push('\n');
                self.refresh_names();
            }
            if let Some(d) = a.last {
                self.print(&describe(&d));
            }
        }
        true
    }

    fn print(&mut self, s: &str) {
        let _ = writeln!(self.out, "{s}");
    }

    /// The value of an expression, with the recipe it lives in.
    fn value(&mut self, expr: &str) -> Option<(check::Recipe, Described)> {
        let (a, _) = self.analyze(expr)?;
        Some((a.recipe?, a.last?))
    }

    fn command(&mut self, cmd: &str) -> bool {
        let (name, arg) = cmd.split_once(char::is_whitespace).map_or((cmd, ""), |(n, a)| (n, a.trim()));
        match name {
            "q" | "quit" | "exit" => return false,
            "help" | "h" if !arg.is_empty() => match check::docs_of(arg) {
                Some(doc) => self.print(&doc.replace("**", "")),
                None => self.print(&format!("no function `{arg}`; :help lists them")),
            },
            "help" | "h" => {
                let lines: Vec<String> = COMMANDS.iter().map(|(c, d)| format!("  {c:<16} {d}")).collect();
                let functions = check::function_names().join(" ");
                self.print(&format!(
                    "Enter statements (`x = ...`) or expressions; commands:\n{}\nfunctions (`:help NAME` for one): {functions}",
                    lines.join("\n")
                ));
            }
            "type" | "t" => {
                if let Some((_, d)) = self.value(arg) {
                    self.print(&d.type_name);
                }
            }
            "inspect" | "i" => {
                if let Some((_, d)) = self.value(arg) {
                    let text = match &d.value {
                        Some(t) => {
                            let dtypes: BTreeMap<String, usize> =
                                t.arch.tensors.iter().fold(BTreeMap::new(), |mut m, s| {
                                    *m.entry(s.dtype.to_string()).or_default() += 1;
                                    m
                                });
                            let dt: Vec<String> = dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect();
                            format!("{}: {}\n  tensors: {}", d.type_name, t.arch.summary(), dt.join(", "))
                        }
                        None => d.type_name.clone(),
                    };
                    self.print(&text);
                }
            }
            "stats" => self.stats(arg),
            "eval" => self.eval(arg),
            "cos" => self.cos(arg),
            "save" => {
                let Some((expr, dir)) = arg.rsplit_once(char::is_whitespace) else {
                    self.print("usage: :save EXPR DIR");
                    return true;
                };
                if let Some((r, Described { value: Some(t), .. })) = self.value(expr) {
                    let plan = graph::lower(&r, &t, None, crate::io::writer::DEFAULT_SHARD);
                    let opts = exec::Options {
                        engine: exec::Engine::Stream,
                        max_memory: 1 << 30,
                        progress: None,
                        strict: false,
                        quant: None,
                    };
                    let target = self.dir.join(dir);
                    if let Some(mut d) = check::output_conflict(&r, &target, None, "") {
                        d.labels.clear();
                        let text = render::render_plain(&[d], &Sources::default());
                        self.print(text.trim_end());
                        return true;
                    }
                    match exec::run_plan(&plan, &target, false, &self.text, &opts) {
                        Ok(rep) => self.print(&format!("wrote {} ({} tensors)", target.display(), rep.tensors)),
                        Err(e) => self.print(&interrupted_or(e)),
                    }
                }
            }
            "load" => {
                let stmt = format!("import \"{}\"", arg.trim_matches('"'));
                if self.try_extend(&stmt) {
                    self.refresh_names();
                    self.print(&format!("loaded {arg}"));
                }
            }
            "complete" => {
                let names = self.names.lock().unwrap().clone();
                let (_, c) = completions(&names, arg, arg.len());
                self.print(&c.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" "));
            }
            other => self.print(&format!("unknown command `:{other}`; :help lists them")),
        }
        true
    }

    /// Perplexity and bits per byte of a model or an ensemble on a text file
    /// (windows as `fuse eval`'s defaults).
    fn eval(&mut self, arg: &str) {
        let Some((expr, file)) = arg.rsplit_once(char::is_whitespace) else {
            self.print("usage: :eval EXPR FILE");
            return;
        };
        let Some((r, d)) = self.value(expr) else { return };
        let target = match (d.value, d.ensemble) {
            (Some(t), _) if d.type_name == "Model" => crate::eval::Target::model(expr.to_string(), t),
            (_, Some(e)) => crate::eval::Target { name: expr.to_string(), ensemble: e },
            _ => {
                self.print(&format!(":eval takes a model or an ensemble, not {}", d.type_name));
                return;
            }
        };
        let path = self.dir.join(file.trim_matches('"'));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.print(&format!("error: cannot read the text `{}`: {e}", path.display()));
                return;
            }
        };
        let opts = crate::eval::Options {
            context: None,
            max_tokens: None,
            device: candle_core::Device::Cpu,
            max_memory: exec::default_max_memory() * 3,
        };
        let result = crate::eval::prepare(&r, &target, &text, &opts).and_then(|p| {
            let bar = crate::progress::tokens(p.work());
            let tick = |n: u64| {
                if let Some(b) = &bar {
                    b.inc(n);
                }
            };
            let score = crate::eval::run(&p, &opts, &tick);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            score.map(|s| (s, p.windows.len(), p.context))
        });
        match result {
            Ok((s, w, c)) => self.print(&format!(
                "perplexity {:.4}  bits/byte {:.4}  ({} tokens scored in {w} window{} of {c})",
                s.perplexity(),
                s.bits_per_byte(),
                s.tokens,
                if w == 1 { "" } else { "s" }
            )),
            Err(_) if exec::interrupted() => self.print(&interrupted_or(String::new())),
            Err(d) => {
                let text = render::render_plain(&[d], &Sources::default());
                self.print(text.trim_end());
            }
        }
    }

    /// Per-layer L2 norm and fraction of zeros of a task vector.
    fn stats(&mut self, expr: &str) {
        let Some((r, d)) = self.value(expr) else { return };
        let Some(t) = d.value.filter(|_| d.type_name == "Delta") else {
            self.print(&format!(":stats takes a task vector (Delta), not {}", d.type_name));
            return;
        };
        let per = Mutex::new(BTreeMap::<Option<usize>, (f64, usize, usize)>::new());
        let plan = graph::lower(&r, &t, None, u64::MAX);
        let bar = crate::progress::bar(plan.layout.total_bytes(), plan.outputs.len());
        let res = exec::compute_all(&plan, 1 << 30, &|i, v| {
            if let Some(b) = &bar {
                b.inc(plan.layout.tensors[i].bytes());
            }
            let sq: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum();
            let zeros = v.iter().filter(|x| **x == 0.0).count();
            let mut m = per.lock().unwrap();
            let e = m.entry(plan.outputs[i].layer).or_default();
            *e = (e.0 + sq, e.1 + zeros, e.2 + v.len());
            Ok(())
        });
        if let Err(e) = res {
            self.print(&interrupted_or(e));
            return;
        }
        let mut lines = vec![format!("{:>8} {:>12} {:>9}", "layer", "L2 norm", "zeros")];
        for (l, (sq, z, n)) in per.into_inner().unwrap() {
            let layer = l.map_or("other".to_string(), |l| l.to_string());
            lines.push(format!("{layer:>8} {:>12.4e} {:>8.2}%", sq.sqrt(), 100.0 * z as f64 / n.max(1) as f64));
        }
        self.print(&lines.join("\n"));
    }

    /// Per-layer cosine similarity of two task vectors.
    fn cos(&mut self, arg: &str) {
        let Some((r, d)) = self.value(&format!("[{}]", split_two(arg).join(", "))) else { return };
        let vals: Vec<TVal> = d.values;
        if vals.len() != 2 || vals.iter().any(|v| v.weight.as_const() != Some(0.0)) {
            self.print("usage: :cos A B, with A and B task vectors (e.g. `math - base`)");
            return;
        }
        let plans: Vec<graph::Plan> = vals.iter().map(|v| graph::lower(&r, v, None, u64::MAX)).collect();
        let per = Mutex::new(BTreeMap::<Option<usize>, [f64; 3]>::new());
        let a_vals = Mutex::new(vec![None; plans[0].outputs.len()]);
        let bar = crate::progress::bar(2 * plans[0].layout.total_bytes(), 2 * plans[0].outputs.len());
        let tick = |p: &graph::Plan, i: usize| {
            if let Some(b) = &bar {
                b.inc(p.layout.tensors[i].bytes());
            }
        };
        let res = exec::compute_all(&plans[0], 1 << 30, &|i, v| {
            tick(&plans[0], i);
            a_vals.lock().unwrap()[i] = Some(v);
            Ok(())
        })
        .and_then(|_| {
            let a_vals = a_vals.lock().unwrap();
            exec::compute_all(&plans[1], 1 << 30, &|i, b| {
                tick(&plans[1], i);
                let Some(a) = a_vals[i].as_ref() else { return Ok(()) };
                let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
                for (x, y) in a.iter().zip(&b) {
                    ab += *x as f64 * *y as f64;
                    aa += (*x as f64).powi(2);
                    bb += (*y as f64).powi(2);
                }
                let mut m = per.lock().unwrap();
                let e = m.entry(plans[1].outputs[i].layer).or_default();
                e[0] += ab;
                e[1] += aa;
                e[2] += bb;
                Ok(())
            })
        });
        if let Err(e) = res {
            self.print(&interrupted_or(e));
            return;
        }
        let cos = |e: &[f64; 3]| if e[1] > 0.0 && e[2] > 0.0 { e[0] / (e[1] * e[2]).sqrt() } else { 0.0 };
        let per = per.into_inner().unwrap();
        let mut total = [0f64; 3];
        let mut lines = vec![format!("{:>8} {:>8}", "layer", "cos")];
        for (l, e) in &per {
            (0..3).for_each(|k| total[k] += e[k]);
            lines.push(format!("{:>8} {:>8.4}", l.map_or("other".to_string(), |l| l.to_string()), cos(e)));
        }
        lines.push(format!("{:>8} {:>8.4}", "all", cos(&total)));
        self.print(&lines.join("\n"));
    }
}

fn interrupted_or(e: String) -> String {
    if exec::interrupted() {
        exec::interrupt_flag().store(false, std::sync::atomic::Ordering::Relaxed);
        "interrupted".into()
    } else {
        format!("error: {e}")
    }
}

/// `A B` split into two expressions at the top-level space between them.
fn split_two(arg: &str) -> Vec<String> {
    let mut depth = 0i32;
    for (i, c) in arg.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ' ' if depth == 0 => {
                let (a, b) = arg.split_at(i);
                if !a.trim().is_empty()
                    && !b.trim().is_empty()
                    && !a.trim_end().ends_with(['+', '-', '*', '/'])
                    && !b.trim_start().starts_with(['+', '-', '*', '/'])
                {
                    return vec![a.trim().to_string(), b.trim().to_string()];
                }
            }
            _ => {}
        }
    }
    vec![arg.to_string()]
}

fn describe(d: &Described) -> String {
    match &d.summary {
        Some(s) => format!("{}  ({s})", d.type_name),
        None => d.type_name.clone(),
    }
}

/// What tab completion offers for `line` at `pos`: commands after a `:`,
/// otherwise names, functions and named arguments ([`complete::complete`]).
fn completions(names: &[String], line: &str, pos: usize) -> (usize, Vec<Completion>) {
    let before = &line[..pos];
    let start = before.rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).map_or(0, |i| i + 1);
    let word = &before[start..];
    if !word.starts_with(':') {
        return complete::complete(names, line, pos);
    }
    let mut cmds: Vec<Completion> = COMMANDS
        .iter()
        .map(|(c, _)| c.split(' ').next().unwrap())
        .filter(|c| c.starts_with(word))
        .map(|c| Completion { text: c.to_string(), kind: complete::Kind::Command })
        .collect();
    cmds.sort_by(|a, b| a.text.cmp(&b.text));
    (start, cmds)
}

/// rustyline's view of the session: completion and hints.
struct ReplHelper {
    names: Arc<Mutex<Vec<String>>>,
}

impl Completer for ReplHelper {
    type Candidate = Pair;
    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, c) = completions(&self.names.lock().unwrap(), line, pos);
        Ok((start, c.into_iter().map(|c| Pair { display: c.text.clone(), replacement: c.text }).collect()))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
    fn hint(&self, line: &str, pos: usize, _: &Context<'_>) -> Option<String> {
        if pos < line.len() {
            return None;
        }
        let (start, c) = completions(&self.names.lock().unwrap(), line, pos);
        let only = c.first().filter(|_| c.len() == 1)?;
        Some(only.text[pos - start..].to_string())
    }
}

impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

/// How many brackets `s` leaves open.
fn open_brackets(s: &str) -> i32 {
    let mut depth = 0;
    let mut in_str = false;
    for line in s.lines() {
        for c in line.split('#').next().unwrap_or("").chars() {
            match c {
                '"' => in_str = !in_str,
                '(' | '[' | '{' if !in_str => depth += 1,
                ')' | ']' | '}' if !in_str => depth -= 1,
                _ => {}
            }
        }
    }
    depth
}

/// Runs the REPL on the terminal (or on piped standard input).
pub fn run(recipe: Option<&Path>) -> Result<(), String> {
    let dir = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut session = Session::new(&dir, recipe, Box::new(std::io::stdout()))?;
    let mut rl =
        rustyline::Editor::<ReplHelper, rustyline::history::DefaultHistory>::new().map_err(|e| e.to_string())?;
    rl.set_helper(Some(ReplHelper { names: session.names.clone() }));
    let history = std::env::var_os("FUSE_HISTORY")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".fuse_history")));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let tty = std::io::stdin().is_terminal();
    if tty {
        println!("fuse repl: statements, expressions, :help for commands, Ctrl-D to leave");
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "fuse> " } else { "  ... " };
        match rl.readline(if tty { prompt } else { "" }) {
            Ok(line) => {
                buffer.push_str(&line);
                buffer.push('\n');
                if open_brackets(&buffer) > 0 {
                    continue;
                }
                let input = std::mem::take(&mut buffer);
                let _ = rl.add_history_entry(input.trim());
                if !session.handle(&input) {
                    break;
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => buffer.clear(),
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_commands_names_functions_and_arguments() {
        let names = vec!["base".to_string(), "math".to_string()];
        let words =
            |line: &str| completions(&names, line, line.len()).1.into_iter().map(|c| c.text).collect::<Vec<_>>();
        assert_eq!(words("ba"), ["base"]);
        assert!(words("ti").contains(&"ties".to_string()));
        assert!(words("ties(math, dens").contains(&"density=".to_string()));
        assert_eq!(words(":st"), [":stats"]);
        assert_eq!(words(":type ba"), ["base"]);
    }

    #[test]
    fn brackets_continue_lines() {
        assert_eq!(open_brackets("ties(a,\n"), 1);
        assert_eq!(open_brackets("ties(a, \"(\")"), 0);
    }
}
