//! The REPL through its standard input (non-terminal mode): types, rendered
//! errors, computed statistics and completion.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::io::Write;
use std::process::{Command, Stdio};

fn repl(dir: &std::path::Path, args: &[&str], input: &str) -> (String, String) {
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
    // :stats: two 20% trims leave most entries zero.
    assert!(out.contains("L2 norm") && out.contains("%"), "{out}");
    // Completion, and a multi-line expression.
    assert!(out.lines().any(|l| l.split_whitespace().any(|w| w == "ties")), "{out}");
    assert!(out.matches("Model  (LlamaForCausalLM").count() >= 1, "{out}");
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
