//! File-driven diagnostics tests. Each `tests/diagnostics/*.fuse` states what
//! it must produce in its header:
//!
//! ```text
//! # expect: E0201 at 5:14      (code, and line:col of the primary label)
//! # set: name=value            (a --set override)
//! ```
//!
//! The recipes run from a scratch directory holding the mergekit fixture
//! models (`mergekit/`), a model of another shape (`wide/`) and a corrupt
//! checkpoint. Rendered output is snapshot-tested with insta (bless with
//! `INSTA_UPDATE=always cargo test` or `cargo insta review`); `FUSE_BLESS=1`
//! rewrites the `# expect:` lines from what the checker reports.

use crate::common::*;
use fuse::diag::{render, Code, Sources};
use fuse::testmodel::TinyLlama;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The scratch directory, made once per test run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(fixtures().join("models"), d.path().join("mergekit")).unwrap();
        let wide = TinyLlama {
            hidden: 48,
            intermediate: 64,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            vocab: 96,
            ..Default::default()
        };
        wide.write(&d.path().join("wide"), &[(7, 0.02)]).unwrap();
        // The fixtures' shape with a larger vocabulary.
        TinyLlama { vocab: 100, ..Default::default() }.write(&d.path().join("vocab100"), &[(7, 0.02)]).unwrap();
        // A model of a family moe does not support.
        wide.write(&d.path().join("gpt2"), &[(7, 0.02)]).unwrap();
        let cfg = std::fs::read_to_string(d.path().join("gpt2/config.json"))
            .unwrap()
            .replace("LlamaForCausalLM", "GPT2LMHeadModel");
        std::fs::write(d.path().join("gpt2/config.json"), cfg).unwrap();
        // A header length far beyond the file.
        let mut bad = 1_000_000u64.to_le_bytes().to_vec();
        bad.extend_from_slice(b"{}");
        std::fs::write(d.path().join("corrupt.safetensors"), bad).unwrap();
        for e in std::fs::read_dir(root().join("tests/diagnostics")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        d
    })
    .path()
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/diagnostics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "fuse"))
        .collect();
    v.sort();
    v
}

struct Expect {
    code: String,
    at: Option<(usize, usize)>,
}

fn header(text: &str) -> (Vec<Expect>, Vec<(String, String)>) {
    let mut expects = Vec::new();
    let mut sets = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# ")) {
        if let Some(rest) = line.strip_prefix("expect: ") {
            let mut parts = rest.split(" at ");
            let code = parts.next().unwrap().trim().to_string();
            let at = parts.next().map(|lc| {
                let (l, c) = lc.trim().split_once(':').unwrap();
                (l.parse().unwrap(), c.parse().unwrap())
            });
            expects.push(Expect { code, at });
        } else if let Some(rest) = line.strip_prefix("set: ") {
            let (k, v) = rest.split_once('=').unwrap();
            sets.push((k.to_string(), v.to_string()));
        }
    }
    (expects, sets)
}

/// Checks one case; returns the rendered diagnostics.
fn run_case(case: &Path) -> String {
    let name = case.file_name().unwrap().to_str().unwrap();
    let text = std::fs::read_to_string(case).unwrap();
    let (expects, sets) = header(&text);
    assert!(!expects.is_empty(), "{name} has no `# expect:` line");
    let path = scratch().join(name);
    let mut sources = Sources::default();
    let (recipe, diags) = fuse::check::check(&path, &text, &sets, &mut sources);
    assert!(recipe.is_none(), "{name}: expected errors, got none");
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    if std::env::var_os("FUSE_BLESS").is_some() {
        bless(case, &text, &errors, &sources);
        return render::render_plain(&diags, &sources)
            .replace(&scratch().display().to_string(), "$DIR")
            .replace(&root().display().to_string(), "$ROOT");
    }
    let got: Vec<String> = errors.iter().map(|d| d.code.to_string()).collect();
    let want: Vec<String> = expects.iter().map(|e| e.code.clone()).collect();
    assert_eq!(got, want, "{name}: error codes\n{}", render::render_plain(&diags, &sources));
    for (d, e) in errors.iter().zip(&expects) {
        if let Some(at) = e.at {
            let l = d.labels.first().unwrap_or_else(|| panic!("{name}: {} has no label", d.code));
            assert_eq!(
                sources.line_col(l.file, l.span.start),
                at,
                "{name}: position of {}\n{}",
                d.code,
                render::render_plain(&diags, &sources)
            );
        }
    }
    render::render_plain(&diags, &sources)
        .replace(&scratch().display().to_string(), "$DIR")
        .replace(&root().display().to_string(), "$ROOT")
}

/// Rewrites the case's `# expect:` lines to what was reported.
fn bless(case: &Path, text: &str, errors: &[&fuse::diag::Diagnostic], sources: &Sources) {
    let mut lines: Vec<String> = Vec::new();
    let mut done = false;
    for line in text.lines() {
        if line.starts_with("# expect: ") {
            if !done {
                for d in errors {
                    match d.labels.first() {
                        Some(l) => {
                            let (ln, col) = sources.line_col(l.file, l.span.start);
                            lines.push(format!("# expect: {} at {ln}:{col}", d.code));
                        }
                        None => lines.push(format!("# expect: {}", d.code)),
                    }
                }
                done = true;
            }
            continue;
        }
        lines.push(line.to_string());
    }
    std::fs::write(case, lines.join("\n") + "\n").unwrap();
}

#[test]
fn every_case_reports_what_it_expects() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for case in cases() {
            let rendered = run_case(&case);
            insta::assert_snapshot!(case.file_stem().unwrap().to_str().unwrap(), rendered);
        }
    });
}

/// Codes that only a run can produce are asserted on in `cli.rs`.
const RUNTIME_CODES: &[&str] = &["E0402", "E0403", "E0404", "E0405"];

#[test]
fn every_code_is_tested() {
    let names: Vec<String> = cases().iter().map(|p| p.file_stem().unwrap().to_str().unwrap().to_string()).collect();
    let cli = std::fs::read_to_string(root().join("tests/cli.rs")).unwrap()
        + &std::fs::read_to_string(root().join("tests/reliability.rs")).unwrap();
    for code in Code::ALL {
        let c = code.as_str();
        let covered = if RUNTIME_CODES.contains(&c) {
            cli.contains(&format!("\"{c}\""))
        } else {
            names.iter().any(|n| n.starts_with(c))
        };
        assert!(covered, "{c} ({}) has no test: add tests/diagnostics/{c}.fuse", code.summary());
    }
}
