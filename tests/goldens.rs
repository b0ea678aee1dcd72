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

#[test]
fn slerp() {
    golden("slerp");
}

#[test]
fn slerp_filtered_gradient() {
    golden("slerp_filtered_gradient");
}

#[test]
fn nuslerp() {
    golden("nuslerp");
}

#[test]
fn nuslerp_base() {
    golden("nuslerp_base");
}

#[test]
fn multislerp() {
    golden("multislerp");
}

#[test]
fn karcher() {
    golden("karcher");
}

#[test]
fn model_stock() {
    golden("model_stock");
}

#[test]
fn nearswap() {
    golden("nearswap");
}

/// Arcee Fusion keeps each entry of either the base or the fine-tune,
/// chosen by an importance whose KL factor is near float32's resolution on
/// these small models, so mergekit's rounding noise decides borderline
/// entries. Every entry must be exactly one of the two, the choice must
/// agree with mergekit's on all but a sliver of entries, and all else is
/// the fixtures' rule.
#[test]
fn arcee_fusion() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let recipe = root().join("tests/golden/arcee_fusion.fuse");
    fuse_ok(&root(), &["run", recipe.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let ours = read_model(&out);
    let expected = read_model(&fixtures().join("cases/arcee_fusion/expected"));
    let (base, ft) = (read_model(&fixtures().join("models/base")), read_model(&fixtures().join("models/ft2")));
    assert_eq!(ours.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    let (mut total, mut differ, mut kept) = (0usize, 0usize, 0usize);
    for (name, e) in &expected {
        let o = &ours[name];
        assert_eq!((&o.shape, &o.dtype), (&e.shape, &e.dtype), "{name}");
        for i in 0..e.data.len() {
            let (b, f) = (base[name].data[i], ft[name].data[i]);
            assert!(o.data[i] == b || o.data[i] == f, "{name}[{i}] is neither input");
            total += 1;
            kept += usize::from(o.data[i] == f && f != b);
            differ += usize::from((o.data[i] - e.data[i]).abs() > 1e-5 * e.data[i].abs().max(1.0));
        }
    }
    assert!(kept > total / 20, "the fusion kept almost nothing: {kept} of {total}");
    assert!(differ * 200 < total, "{differ} of {total} entries disagree with mergekit");
}

#[test]
fn sce() {
    golden("sce");
}

#[test]
fn breadcrumbs() {
    golden("breadcrumbs");
}

#[test]
fn breadcrumbs_ties() {
    golden("breadcrumbs_ties");
}

#[test]
fn passthrough_frankenmerge() {
    golden("passthrough_frankenmerge");
    // The output says it has four layers.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let recipe = root().join("tests/golden/passthrough_frankenmerge.fuse");
    fuse_ok(&root(), &["run", recipe.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let o = fuse_ok(&root(), &["inspect", out.to_str().unwrap()]);
    assert!(stdout(&o).contains("layers:       4"), "{}", stdout(&o));
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"num_hidden_layers\": 4"), "{config}");
}

/// Every golden port in tests/golden has a test above, and names a real case.
#[test]
fn every_port_names_a_case() {
    for e in std::fs::read_dir(root().join("tests/golden")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_str().unwrap().to_string();
        assert!(fixtures().join("cases").join(&name).is_dir(), "{name} is not a mergekit case");
        let src = std::fs::read_to_string(root().join("tests/goldens.rs")).unwrap();
        assert!(src.contains(&format!("fn {name}()")), "{name}.fuse has no test");
    }
}
