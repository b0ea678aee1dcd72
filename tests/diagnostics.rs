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
        // BERT checkpoints as people have them: a base with an int64 buffer,
        // fine-tunes without it, one without the pooler.
        let bert = d.path().join("bert");
        write_bert(&bert.join("base"), Bert { seed: 0, position_ids: true, pooler: true });
        write_bert(&bert.join("ft"), Bert { seed: 1, position_ids: false, pooler: true });
        write_bert(&bert.join("nopooler"), Bert { seed: 2, position_ids: false, pooler: false });
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
    let (_, diags) = fuse::check::check(&path, &text, &sets, &mut sources);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    // A warning's case checks: it is compared on its warnings.
    let errors = if errors.is_empty() { diags.iter().collect() } else { errors };
    assert!(!errors.is_empty(), "{name}: expected diagnostics, got none");
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

/// Codes that only a run can produce: tests assert them on a real process's
/// stderr with `expect_code` (cli.rs, outputs.rs, reliability.rs).
const RUNTIME_CODES: &[&str] =
    &["E0402", "E0403", "E0404", "E0405", "E0407", "E0501", "E0502", "E0503", "E0504", "E0505", "E0506"];

#[test]
fn every_code_is_tested() {
    if std::env::var_os(OBSERVED_CODES).is_some() {
        return; // the rerun below
    }
    let names: Vec<String> = cases().iter().map(|p| p.file_stem().unwrap().to_str().unwrap().to_string()).collect();
    for code in Code::ALL.iter().filter(|c| !RUNTIME_CODES.contains(&c.as_str())) {
        let c = code.as_str();
        assert!(
            names.iter().any(|n| n.starts_with(c)),
            "{c} ({}) has no test: add tests/diagnostics/{c}.fuse",
            code.summary()
        );
    }
    let (tests, observed) = observe_runtime_codes();
    for c in RUNTIME_CODES {
        assert!(
            observed.contains(*c),
            "{c} was never seen by a passing `expect_code` in these tests: {tests:?}; \
             assert it on a run's stderr with `expect_code(&stderr, \"{c}\")`"
        );
    }
}

/// Reruns, in a child process of this test binary, every test that names a
/// runtime code in its code (not its comments) or calls a function that
/// does, and returns those tests and the codes their `expect_code`
/// assertions saw pass.
fn observe_runtime_codes() -> (Vec<String>, std::collections::BTreeSet<String>) {
    // Top-level functions: (test name if a test, name, body). A body ends at
    // the first `}` in column 0 (rustfmt).
    let mut fns: Vec<(Option<String>, String, String)> = Vec::new();
    for e in std::fs::read_dir(root().join("tests")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path.file_stem().unwrap().to_str().unwrap().to_string();
        let code = strip_comments(&std::fs::read_to_string(&path).unwrap());
        let lines: Vec<&str> = code.lines().collect();
        let mut is_test = false;
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == "#[test]" {
                is_test = true;
            } else if let Some(rest) = line.strip_prefix("fn ").or_else(|| line.strip_prefix("pub fn ")) {
                let name = rest[..rest.find(['(', '<']).unwrap()].to_string();
                let body = lines[i + 1..].iter().take_while(|l| **l != "}").copied().collect::<Vec<_>>().join("\n");
                fns.push((is_test.then(|| format!("{module}::{name}")), name, body));
                is_test = false;
            }
        }
    }
    let mut naming: Vec<bool> =
        fns.iter().map(|(_, _, body)| RUNTIME_CODES.iter().any(|c| body.contains(&format!("\"{c}\"")))).collect();
    loop {
        let callers: Vec<bool> = fns
            .iter()
            .map(|(_, _, body)| {
                fns.iter().zip(&naming).any(|((_, n, _), named)| *named && body.contains(&format!("{n}(")))
            })
            .collect();
        let next: Vec<bool> = naming.iter().zip(&callers).map(|(a, b)| *a || *b).collect();
        if next == naming {
            break;
        }
        naming = next;
    }
    let mut tests: Vec<String> =
        fns.iter().zip(&naming).filter(|(_, named)| **named).filter_map(|((test, _, _), _)| test.clone()).collect();
    tests.sort();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("codes");
    let o = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "--quiet"])
        .args(&tests)
        .env(OBSERVED_CODES, &file)
        .output()
        .unwrap();
    assert!(o.status.success(), "rerunning {tests:?} failed:\n{}{}", stdout(&o), stderr(&o));
    let seen = std::fs::read_to_string(&file).unwrap_or_default();
    (tests, seen.lines().map(str::to_string).collect())
}

/// Rust source with its comments removed (string, raw string and character
/// literals kept whole, so a `//` inside one is not a comment).
fn strip_comments(src: &str) -> String {
    let s = src.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"//") {
            while i < s.len() && s[i] != b'\n' {
                i += 1;
            }
        } else if s[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < s.len() {
                if s[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if s[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if s[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
            }
        } else {
            let len = literal_len(s, i).unwrap_or(1).min(s.len() - i);
            out.extend_from_slice(&s[i..i + len]);
            i += len;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The length of the string, raw string or character literal at `s[i]`, if
/// one starts there (a `'` that starts none is a lifetime).
fn literal_len(s: &[u8], i: usize) -> Option<usize> {
    match s[i] {
        b'"' => {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            Some(j + 1 - i)
        }
        b'r' => {
            let hashes = s[i + 1..].iter().take_while(|b| **b == b'#').count();
            if s.get(i + 1 + hashes) != Some(&b'"') {
                return None;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let start = i + 2 + hashes;
            let end =
                s[start..].windows(close.len()).position(|w| w == close).map_or(s.len(), |k| start + k + close.len());
            Some(end - i)
        }
        b'\'' if s.get(i + 1) == Some(&b'\\') => {
            let end = s[i + 2..].iter().skip(1).position(|b| *b == b'\'').map_or(s.len(), |k| i + 3 + k + 1);
            Some(end - i)
        }
        b'\'' => {
            // One character, of 1 to 4 bytes, then the closing quote.
            let width = match s.get(i + 1).copied().unwrap_or(0) {
                b if b < 0x80 => 1,
                b if b >= 0xf0 => 4,
                b if b >= 0xe0 => 3,
                _ => 2,
            };
            (s.get(i + 1 + width) == Some(&b'\'')).then_some(width + 2)
        }
        _ => None,
    }
}
