//! The REPL through its standard input (non-terminal mode): types, rendered
//! errors, computed statistics and completion.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn repl(dir: &std::path::Path, args: &[&str], input: &str) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .current_dir(dir)
        .arg("repl")
        .args(args)
        .env("FUSE_HISTORY", dir.join("history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from a thread: a long input and long output would otherwise
    // fill both pipes and wait on each other.
    let (mut stdin, input) = (child.stdin.take().unwrap(), input.to_string());
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (stdout(&o), stderr(&o))
}

#[test]
fn repl_types_errors_statistics_and_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shape = TinyLlama::demo();
    shape.write(&d.join("base"), &[(1, 0.02)]).unwrap();
    shape.write(&d.join("math"), &[(1, 0.02), (2, 0.01)]).unwrap();
    shape.write(&d.join("code"), &[(1, 0.02), (3, 0.01)]).unwrap();
    write_recipe(d, "start.fuse", "base = model(\"base\")\nmath = model(\"math\")\n");
    let input = "code = model(\"code\")\n\
                 math - base\n\
                 0.7*math + 0.7*code\n\
                 :cos math - base math - base\n\
                 :cos math - base code - base\n\
                 :stats ties(math, code, density=0.2)\n\
                 :complete ti\n\
                 linear(math,\n  code)\n\
                 :quit\n";
    let (out, _) = repl(d, &["start.fuse"], input);
    // A printed type with its summary.
    assert!(out.contains("Delta  (LlamaForCausalLM, 4 layers, 39 tensors"), "{out}");
    // A rendered error, pointing into the input line.
    assert!(
        out.contains("[E0202] Error: the weights of this sum of models add up to 1.4") && out.contains("<input>:1:1"),
        "{out}"
    );
    // :cos of a task vector with itself is 1 everywhere; of two independent ones, near 0.
    let blocks: Vec<&str> = out.split("   layer      cos\n").skip(1).collect();
    assert_eq!(blocks.len(), 2, "{out}");
    let all = |b: &str| -> f64 {
        b.lines()
            .find(|l| l.trim_start().starts_with("all"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!((all(blocks[0]) - 1.0).abs() < 1e-4, "{}", blocks[0]);
    assert!(all(blocks[1]).abs() < 0.1, "{}", blocks[1]);
    // :stats: each layer's L2 norm and share of zeros, as TIES written
    // plainly gives them from the checkpoints' bytes (two 20% trims leave
    // about 0.8 * 0.8 of the entries zero).
    let stats: BTreeMap<String, (String, f64)> = out
        .split("   layer      L2 norm     zeros\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no :stats table in\n{out}"))
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .take_while(|w| w.len() == 3 && w[2].ends_with('%'))
        .map(|w| (w[0].to_string(), (w[1].to_string(), w[2].trim_end_matches('%').parse().unwrap())))
        .collect();
    let expected = ties_stats(d, 0.2);
    assert_eq!(stats.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{out}");
    for (layer, (norm, zeros)) in &stats {
        let (want_norm, want_zeros) = expected[layer];
        // Within the printed precision: half a unit of the last digit, and a little.
        let (mantissa, exp) = norm.split_once('e').unwrap();
        let (mantissa, exp): (f64, i32) = (mantissa.parse().unwrap(), exp.parse().unwrap());
        let unit = 10f64.powi(exp - 4);
        assert!(
            (mantissa * 10f64.powi(exp) - want_norm).abs() <= 0.6 * unit,
            "layer {layer}: L2 norm {norm}, expected {want_norm}"
        );
        assert!(
            (zeros - 100.0 * want_zeros).abs() <= 0.006,
            "layer {layer}: zeros {zeros}%, expected {}%",
            100.0 * want_zeros
        );
        assert!((0.6..0.7).contains(&want_zeros), "layer {layer}: {want_zeros}");
    }
    // Completion, and a multi-line expression.
    assert!(out.lines().any(|l| l.split_whitespace().any(|w| w == "ties")), "{out}");
    assert!(out.matches("Model  (LlamaForCausalLM").count() >= 1, "{out}");
}

/// Per layer ("other" for the rest), the L2 norm and the fraction of zeros
/// of `ties(math, code, density)` on `base`, computed with the plain TIES
/// of `common` from the checkpoints in `dir`.
fn ties_stats(dir: &Path, density: f64) -> BTreeMap<String, (f64, f64)> {
    let [base, math, code] = ["base", "math", "code"].map(|m| read_model(&dir.join(m)));
    let mut per: BTreeMap<String, (f64, usize, usize)> = BTreeMap::new();
    for (name, b) in &base {
        let merged = ties_reference(&[sub(&math[name].data, &b.data), sub(&code[name].data, &b.data)], density);
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .map_or("other".to_string(), str::to_string);
        let e = per.entry(layer).or_default();
        e.0 += merged.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        e.1 += merged.iter().filter(|v| **v == 0.0).count();
        e.2 += merged.len();
    }
    per.into_iter().map(|(l, (sq, z, n))| (l, (sq.sqrt(), z as f64 / n as f64))).collect()
}

/// `:complete` shows what tab completion offers: commands, bound names, and
/// no named arguments once their call is closed. (An open call cannot be
/// typed here: the REPL reads on until its brackets close.)
#[test]
fn repl_completes_commands_and_names_not_arguments_of_closed_calls() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::demo().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    let input = "bank = model(\"base\")\n\
                 :complete :co\n\
                 :complete ban\n\
                 :complete x = ties(bank, density=0.2) + dens\n\
                 :quit\n";
    let (out, _) = repl(d, &[], input);
    assert_eq!(out.lines().collect::<Vec<_>>(), [":complete :cos", "bank", ""], "{out}");
}

#[test]
fn repl_refuses_deep_input_and_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    let n = 100_000;
    let input = format!(
        "base = model(\"base\")\n{}1{}\n{}1\nbase{}\n:quit\n",
        "(".repeat(n),
        ")".repeat(n),
        "-".repeat(n),
        " + (base - base)".repeat(n)
    );
    let (out, _) = repl(d, &[], &input);
    // (Each input is checked after the session's text, whose last `)` makes
    // the input's first `(` a call and its first `-` a subtraction.)
    let deep = format!("levels deep; the limit is {}", fuse::syntax::MAX_DEPTH);
    assert_eq!(out.matches("[E0002] Error: expression nested ").count(), 2, "{}", &out[..out.len().min(3000)]);
    assert_eq!(out.matches(&deep).count(), 2, "{}", &out[..out.len().min(3000)]);
    // The long sum after them is a model.
    assert!(out.contains("Model  (LlamaForCausalLM"), "{}", &out[out.len().saturating_sub(3000)..]);
}

/// `:stats` and `:cos` on task vectors of models holding an integer buffer
/// (`position_ids`, which only one of them has): the buffer is no part of a
/// task vector, so the statistics are over the float tensors, computed
/// here from the files.
#[test]
fn repl_statistics_skip_integer_buffers() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_bert(&d.join("base"), Bert { seed: 0, position_ids: true, pooler: true });
    write_bert(&d.join("ft"), Bert { seed: 1, position_ids: false, pooler: true });
    let (out, err) =
        repl(d, &[], "base = model(\"base\")\nft = model(\"ft\")\n:stats ft - base\n:cos ft - base ft - base\n");
    assert!(!err.contains("cannot be merged") && !out.contains("cannot be merged"), "{out}\n{err}");
    let (base, ft) = (read_model(&d.join("base")), read_model(&d.join("ft")));
    let norm = |layer: bool| -> f64 {
        ft.iter()
            .filter(|(n, t)| t.dtype == "F32" && n.starts_with("encoder.") == layer)
            .flat_map(|(n, t)| t.data.iter().zip(&base[n].data).map(|(a, b)| ((a - b) as f64).powi(2)))
            .sum::<f64>()
            .sqrt()
    };
    let line = |name: &str| out.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default();
    let printed = |name: &str| -> f64 { line(name).split_whitespace().nth(1).unwrap().parse().unwrap() };
    for (name, layer) in [("0", true), ("other", false)] {
        let (p, want) = (printed(name), norm(layer));
        assert!((p - want).abs() <= 1e-4 * want, "{name}: printed {p}, computed {want}\n{out}");
    }
    assert!(line("all").contains("1.0000"), "{out}");
}
