//! The parser and checker never panic: random and mutated recipes (seeded
//! from every recipe in the repository, grown deep and long as well) must
//! give diagnostics or success. The same function is the body of the
//! cargo-fuzz target in `fuzz/`. Recipes that are very long (a sum of
//! 100,000 terms) check and run; ones nested past the limit get E0002 from
//! `fuse check`, and at the limit every entry point fits a small stack.

use crate::common::*;
use fuse::diag::{render, Sources};
use fuse::syntax::MAX_DEPTH;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Checks and renders one recipe text as if it were at `path`.
pub fn check_text(path: &std::path::Path, text: &str) {
    let mut sources = Sources::default();
    let (_, diags) = fuse::check::check(path, text, &[("lam".into(), "0.5".into())], &mut sources);
    let _ = render::render_plain(&diags, &sources);
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    "=",
    "..",
    "\"",
    "*",
    "/",
    "-",
    "+",
    "match",
    "fn",
    "param",
    "import",
    "none",
    "tensor",
    "layer",
    "depth",
    "base",
    "[",
    "]",
    "{",
    "}",
    "=>",
    "_",
    "1e999",
    "0",
    "-1",
    "0.5",
    "é",
    "\n",
    "#",
    "save(",
    "model(\"",
    "ties(",
    "over_layers(",
    "slerp(",
    "k=",
    "weight=[",
    "true",
    "bf16",
    ".layers[0..2]",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as usize
    }
}

/// Openings (and their closings) that nest, for growing deep recipes.
const NESTS: &[(&str, &str)] = &[
    ("(", ")"),
    ("[", "]"),
    ("-", ""),
    ("- ", ""),
    ("f(", ")"),
    ("ties(", ", b)"),
    ("xs[", "]"),
    ("m.layers[0..", "]"),
    ("match tensor { _ => ", " }"),
    ("(base + ", ")"),
];

/// Pieces that repeat without nesting, for growing long recipes.
const RUNS: &[&str] = &[" + base", " - (base - base)", ", 0.5", ", base", " * 2", " # ,\n", ".layers", "()"];

/// Text nested `depth` deep around `inner`, with one kind or a mix.
fn nest(rng: &mut Rng, depth: usize, inner: &str) -> String {
    let mixed = rng.next().is_multiple_of(2);
    let fixed = rng.next() % NESTS.len();
    let (mut open, mut close) = (String::new(), String::new());
    for _ in 0..depth {
        let (o, c) = NESTS[if mixed { rng.next() % NESTS.len() } else { fixed }];
        open.push_str(o);
        close.insert_str(0, c);
    }
    format!("{open}{inner}{close}")
}

/// A depth near the limit (either side of it) or far past it.
fn depth(rng: &mut Rng) -> usize {
    match rng.next() % 3 {
        0 => MAX_DEPTH - 2 + rng.next() % 5,
        1 => rng.next() % (2 * MAX_DEPTH),
        _ => 1 + rng.next() % 20_000,
    }
}

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.next() % 4 {
        let mut at = if s.is_empty() { 0 } else { rng.next() % s.len() };
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        // Now and then grow the text deep or long at `at`.
        if rng.next().is_multiple_of(16) {
            let grown = if rng.next().is_multiple_of(2) {
                let inner = TOKENS[rng.next() % TOKENS.len()];
                let d = depth(rng);
                nest(rng, d, inner)
            } else {
                RUNS[rng.next() % RUNS.len()].repeat(1 + rng.next() % 500)
            };
            s.insert_str(at, &grown);
            continue;
        }
        match rng.next() % 4 {
            0 => {
                let mut end = (at + 1 + rng.next() % 12).min(s.len());
                while !s.is_char_boundary(end) {
                    end += 1;
                }
                s.replace_range(at..end, "");
            }
            1 | 2 => s.insert_str(at, TOKENS[rng.next() % TOKENS.len()]),
            _ => {
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let l = lines[rng.next() % lines.len()].to_string();
                    s.insert_str(at, &format!("\n{l}\n"));
                }
            }
        }
    }
    s
}

fn seeds() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for dir in ["tests/golden", "tests/diagnostics", "examples"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn mutated_recipes_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut runs = 0;
    // FUSE_FUZZ_ROUNDS runs a longer campaign locally.
    let rounds = std::env::var("FUSE_FUZZ_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(60);
    for round in 0..rounds {
        for (path, text) in &seeds {
            let t = if round == 0 { text.clone() } else { mutate(text, &mut rng) };
            let r = std::panic::catch_unwind(|| check_text(path, &t));
            assert!(r.is_ok(), "panic on this recipe (from {}):\n{t}", path.display());
            runs += 1;
        }
    }
    assert!(runs > 2000, "{runs}");
}

#[test]
fn random_token_soup_never_panics() {
    let mut rng = Rng(7);
    for _ in 0..3000 {
        let n = rng.next() % 30;
        let t: String = (0..n).map(|_| TOKENS[rng.next() % TOKENS.len()]).collect::<Vec<_>>().join(" ");
        let r = std::panic::catch_unwind(|| check_text(&root().join("tests/golden/soup.fuse"), &t));
        assert!(r.is_ok(), "panic on:\n{t}");
    }
}

#[test]
fn deep_and_long_token_soup_never_panics() {
    let mut rng = Rng(11);
    for _ in 0..300 {
        let inner: String = (0..rng.next() % 8).map(|_| TOKENS[rng.next() % TOKENS.len()]).collect();
        let d = depth(&mut rng);
        let deep = nest(&mut rng, d, &inner);
        // Long, but not thousands of errors on one line: each diagnostic renders the line.
        let long = RUNS[rng.next() % RUNS.len()].repeat(rng.next() % 3_000);
        let texts = [format!("x = {deep}\n"), format!("x = base{long}\n"), format!("x = {deep}{long}\n")];
        for t in texts.map(|t| format!("base = model(\"base\")\n{t}")) {
            let r = std::panic::catch_unwind(|| check_text(&root().join("tests/golden/soup.fuse"), &t));
            assert!(r.is_ok(), "panic on:\n{}", &t[..t.len().min(2000)]);
        }
    }
}

/// Recipes nested exactly as deep as the limit allows, one per way of
/// nesting, and calls whose bodies reach the checker's limit. `m` is a
/// model, `f` a `fn`, `xs` a list.
fn at_the_limit() -> Vec<(&'static str, String)> {
    let pre = "m = model(\"m\")\nfn f(x) = x\nxs = [0, 1]\n";
    let n = MAX_DEPTH;
    let nested =
        |open: &str, inner: &str, close: &str, k: usize| format!("{}{inner}{}", open.repeat(k), close.repeat(k));
    let mut v = vec![
        ("parentheses", nested("(", "1", ")", n)),
        ("brackets", nested("[", "1", "]", n)),
        ("minus signs", nested("-", "1", "", n)),
        ("minus and parentheses", nested("-(", "m", ")", n / 2)),
        ("builtin calls", nested("over_layers(", "1", ")", n / 2)),
        ("fn calls", nested("f(", "m", ")", n / 2)),
        ("merges", nested("ties(", "m", ", m)", n / 2)),
        ("indexes", nested("xs[", "0", "]", n / 2)),
        ("matches", nested("match tensor { _ => ", "1", " }", n)),
        ("sums in parentheses", nested("(m + ", "m", " - m)", n)),
        ("members", format!("m{}", ".layers".repeat(n))),
    ];
    for (_, t) in &mut v {
        *t = format!("{pre}x = {t}\nm\n");
    }
    // Bodies within the limit (`g(x)` is two levels) that call themselves:
    // evaluation reaches its own limit and is cut off there.
    for (what, body) in [
        ("recursive calls", nested("over_layers(", "g(x)", ")", n / 2 - 1)),
        ("recursive matches", nested("match tensor { _ => ", "g(x)", " }", n - 2)),
    ] {
        v.push((what, format!("{pre}fn g(x) = {body}\nx = g(1)\nm\n")));
    }
    v
}

/// Runs `f` on a thread with half the stack rayon's workers and test
/// threads get by default (2 MiB): a stack overflow aborts the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(1 << 20).spawn(f).unwrap().join().unwrap()
}

#[test]
fn every_entry_point_fits_a_small_stack_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    TinyLlama::default().write(&d.join("m"), &[(1, 0.02)]).unwrap();
    for (what, text) in at_the_limit() {
        let path = d.join("limit.fuse");
        let codes = {
            let (path, text) = (path.clone(), text.clone());
            on_small_stack(move || {
                let mut sources = Sources::default();
                let (_, diags) = fuse::check::check(&path, &text, &[], &mut sources);
                let _ = render::render_plain(&diags, &sources);
                diags.iter().map(|d| d.code.to_string()).collect::<Vec<_>>()
            })
        };
        // Within the limit: no E0002, except where calls nest their bodies deeper.
        assert_eq!(codes.contains(&"E0002".to_string()), what.starts_with("recursive"), "{what}: {codes:?}");
        if what.starts_with("recursive") {
            let d = fuse::check::check(&path, &text, &[], &mut Sources::default()).1;
            assert!(d[0].message.starts_with("evaluation nested"), "{what}: {}", d[0].message);
        }
        // The language server (which also records every expression's type).
        let uri = format!("file://{}", path.display());
        let (t, u) = (text.clone(), uri.clone());
        let diags = on_small_stack(move || fuse::lsp::diagnostics(&u, &t));
        assert_eq!(diags.iter().filter_map(|d| d["code"].as_str()).collect::<Vec<_>>(), codes, "{what}");
        // The REPL, given it as a recipe and as input.
        std::fs::write(&path, &text).unwrap();
        let (dir, p) = (d.clone(), path.clone());
        let line = text.lines().nth(3).unwrap().to_string();
        on_small_stack(move || {
            if let Ok(mut s) = fuse::repl::Session::new(&dir, Some(&p), Box::new(std::io::sink())) {
                s.handle(&line);
            }
            let mut s = fuse::repl::Session::new(&dir, None, Box::new(std::io::sink())).unwrap();
            for l in text.lines() {
                s.handle(l);
            }
        });
    }
}

/// `m = model("m")`, `a`, `b`: small-integer tensors, so that sums of them
/// are exact in f32 and the closed form can be compared bit for bit.
fn integer_models(d: &Path) -> [BTreeMap<String, T>; 3] {
    let shape =
        TinyLlama { hidden: 8, intermediate: 16, layers: 1, heads: 2, kv_heads: 1, vocab: 16, ..Default::default() };
    shape.write(&d.join("m"), &[(1, 0.02)]).unwrap();
    let like = read_model(&d.join("m"));
    let models = [7, 5, 3].map(|k| {
        like.iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    T { data: (0..t.data.len()).map(|i| ((i * 31 + n.len()) % k) as f32).collect(), ..t.clone() },
                )
            })
            .collect::<BTreeMap<_, _>>()
    });
    for (name, m) in ["m", "a", "b"].iter().zip(&models) {
        write_model(&d.join(name), m, &shape.config_json());
    }
    models
}

#[test]
fn a_sum_of_100000_terms_checks_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let [m, a, b] = integer_models(d);
    // m + (a - b) - (b - a) + (a - b) - ...: each term adds a - b.
    let n = 100_000;
    let mut text = String::from("m = model(\"m\")\na = model(\"a\")\nb = model(\"b\")\nm");
    for k in 0..n {
        text.push_str(if k % 2 == 0 { " + (a - b)" } else { " - (b - a)" });
    }
    text.push('\n');
    write_recipe(d, "long.fuse", &text);
    let started = std::time::Instant::now();
    fuse_ok(d, &["check", "long.fuse"]);
    let checked = started.elapsed();
    fuse_ok(d, &["run", "long.fuse", "-o", "out"]);
    eprintln!("100,000 terms: check {:.2?}, run {:.2?}", checked, started.elapsed() - checked);
    let out = read_model(&d.join("out"));
    assert_eq!(out.len(), m.len());
    for (name, t) in &out {
        let want: Vec<f32> =
            (0..t.data.len()).map(|i| m[name].data[i] + n as f32 * (a[name].data[i] - b[name].data[i])).collect();
        assert_eq!(t.data, want, "{name}");
    }
}

/// A generated recipe of 10,000 named steps, each built on the last: lowering
/// and evaluation recurse once per step, on the command's large stack.
#[test]
fn a_chain_of_10000_statements_checks_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let [m, a, b] = integer_models(d);
    let n = 10_000;
    let mut text = String::from("m = model(\"m\")\na = model(\"a\")\nb = model(\"b\")\nd = a - b\ns0 = m\n");
    for k in 1..=n {
        text.push_str(&format!("s{k} = s{} + d\n", k - 1));
    }
    text.push_str(&format!("s{n}\n"));
    write_recipe(d, "steps.fuse", &text);
    fuse_ok(d, &["check", "steps.fuse"]);
    fuse_ok(d, &["run", "steps.fuse", "-o", "out"]);
    for (name, t) in &read_model(&d.join("out")) {
        let want: Vec<f32> =
            (0..t.data.len()).map(|i| m[name].data[i] + n as f32 * (a[name].data[i] - b[name].data[i])).collect();
        assert_eq!(t.data, want, "{name}");
    }
}

#[test]
fn nesting_past_the_limit_is_e0002_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let n = 100_000;
    for (name, text) in [
        ("parens.fuse", format!("x = {}1{}\n", "(".repeat(n), ")".repeat(n))),
        ("minus.fuse", format!("x = {}1\n", "-".repeat(n))),
    ] {
        write_recipe(d, name, &text);
        let o = fuse(d, &["check", name]);
        assert_eq!(o.status.code(), Some(1), "{name}: {:?}\n{}", o.status, &stderr(&o)[..stderr(&o).len().min(2000)]);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("[E0002] Error: expression nested {n} levels deep; the limit is {MAX_DEPTH}")),
            "{name}"
        );
        assert!(err.contains(&format!("{name}:1:{}", 5 + MAX_DEPTH)) && err.contains("Help: "), "{name}");
    }
}
