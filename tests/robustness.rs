//! The parser and checker never panic: random and mutated recipes (seeded
//! from every recipe in the repository) must give diagnostics or success.
//! The same function is the body of the cargo-fuzz target in `fuzz/`.

use crate::common::*;
use fuse::diag::{render, Sources};
use std::path::PathBuf;

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

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut s = text.to_string();
    for _ in 0..1 + rng.next() % 4 {
        let mut at = if s.is_empty() { 0 } else { rng.next() % s.len() };
        while !s.is_char_boundary(at) {
            at -= 1;
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
