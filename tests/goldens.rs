//! mergekit 0.1.5 goldens: each `tests/golden/NAME.fuse` is the port of
//! `tests/fixtures/mergekit/cases/NAME/mergekit.yml`; its output must match
//! mergekit's within the fixtures' tolerance.

use crate::common::*;

fn golden(name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let recipe = root().join("tests/golden").join(format!("{name}.fuse"));
    fuse_ok(&root(), &["run", recipe.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let ours = read_model(&out);
    let expected = read_model(&fixtures().join("cases").join(name).join("expected"));
    assert_close(&ours, &expected, 1e-5);
}

#[test]
fn linear() {
    golden("linear");
}

#[test]
fn linear_unnormalized() {
    golden("linear_unnormalized");
}

#[test]
fn task_arithmetic() {
    golden("task_arithmetic");
}

#[test]
fn task_arithmetic_gradient() {
    golden("task_arithmetic_gradient");
}

#[test]
fn ties() {
    golden("ties");
}

#[test]
fn ties_unnormalized_lambda() {
    golden("ties_unnormalized_lambda");
}

/// Every golden port in tests/golden has a test above, and names a real case.
#[test]
fn every_port_names_a_case() {
    for e in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(fixtures().join("cases").join(&name).is_dir(), "{name} is not a mergekit case");
        let src = std::fs::read_to_string(root().join("tests/goldens.rs")).unwrap();
        assert!(src.contains(&format!("golden(\"{name}\")")), "{name}.fuse has no test");
    }
}
