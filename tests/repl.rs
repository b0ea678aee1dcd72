//! The REPL through its standard input (non-terminal mode): types, rendered
//! errors, computed statistics and completion.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::io::Write;
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
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
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
