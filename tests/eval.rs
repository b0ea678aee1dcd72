//! `fuse eval` on generated Llama models, against independent results: a
//! closed form (all-zero weights predict the uniform distribution), and a
//! Llama forward pass written here in plain f64 over the weights read back
//! with the `safetensors` crate, tokenized by splitting the text (the
//! generated models' tokenizer is word-level over `tok3 .. tokN`).
//! Ensembles are combined here from that forward's distributions.

use crate::common::*;
use fuse::testmodel::TinyLlama;
use std::collections::BTreeMap;
use std::path::Path;

const SHAPE: TinyLlama = TinyLlama {
    hidden: 32,
    intermediate: 48,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 40,
    dtype: fuse::io::DType::F32,
    max_shard: u64::MAX,
};

/// A text of `n` words `tokK`, K pseudo-random in 3..vocab, and its ids.
fn text(n: usize, vocab: usize) -> (String, Vec<usize>) {
    let mut x = 12345u64;
    let ids: Vec<usize> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            3 + (x >> 33) as usize % (vocab - 3)
        })
        .collect();
    (ids.iter().map(|i| format!("tok{i}")).collect::<Vec<_>>().join(" "), ids)
}

/// Next-token log-probabilities of every position of `ids`, by a Llama
/// forward in f64 (transformers' modeling_llama, step by step).
fn forward(w: &BTreeMap<String, T>, s: &TinyLlama, ids: &[usize]) -> Vec<Vec<f64>> {
    let (h, hd, t) = (s.hidden, s.hidden / s.heads, ids.len());
    let get = |n: &str| w[n].data.iter().map(|x| *x as f64).collect::<Vec<f64>>();
    // y[i] = sum_j W[o][j] x[i][j]
    let lin = |x: &[Vec<f64>], n: &str| -> Vec<Vec<f64>> {
        let m = get(n);
        let cols = w[n].shape[1];
        x.iter().map(|r| m.chunks(cols).map(|row| row.iter().zip(r).map(|(a, b)| a * b).sum()).collect()).collect()
    };
    let norm = |x: &[Vec<f64>], n: &str| -> Vec<Vec<f64>> {
        let g = get(n);
        x.iter()
            .map(|r| {
                let inv = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64 + 1e-6).sqrt();
                r.iter().zip(&g).map(|(v, g)| v * inv * g).collect()
            })
            .collect()
    };
    let rope = |v: &mut [f64], pos: usize| {
        for i in 0..hd / 2 {
            let a = pos as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
            let (x1, x2) = (v[i], v[i + hd / 2]);
            v[i] = x1 * a.cos() - x2 * a.sin();
            v[i + hd / 2] = x2 * a.cos() + x1 * a.sin();
        }
    };
    let emb = get("model.embed_tokens.weight");
    let mut x: Vec<Vec<f64>> = ids.iter().map(|&i| emb[i * h..(i + 1) * h].to_vec()).collect();
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        let a = norm(&x, &format!("{p}.input_layernorm.weight"));
        let (mut q, mut k) =
            (lin(&a, &format!("{p}.self_attn.q_proj.weight")), lin(&a, &format!("{p}.self_attn.k_proj.weight")));
        let v = lin(&a, &format!("{p}.self_attn.v_proj.weight"));
        for pos in 0..t {
            q[pos].chunks_mut(hd).for_each(|c| rope(c, pos));
            k[pos].chunks_mut(hd).for_each(|c| rope(c, pos));
        }
        let mut att = vec![vec![0.0; h]; t];
        for head in 0..s.heads {
            let kv = head / (s.heads / s.kv_heads);
            for i in 0..t {
                let sc: Vec<f64> = (0..=i)
                    .map(|j| (0..hd).map(|d| q[i][head * hd + d] * k[j][kv * hd + d]).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in sc.iter().enumerate() {
                    for d in 0..hd {
                        att[i][head * hd + d] += (s - m).exp() / z * v[j][kv * hd + d];
                    }
                }
            }
        }
        let o = lin(&att, &format!("{p}.self_attn.o_proj.weight"));
        x.iter_mut().zip(&o).for_each(|(x, o)| x.iter_mut().zip(o).for_each(|(x, o)| *x += o));
        let a = norm(&x, &format!("{p}.post_attention_layernorm.weight"));
        let (g, u) = (lin(&a, &format!("{p}.mlp.gate_proj.weight")), lin(&a, &format!("{p}.mlp.up_proj.weight")));
        let act: Vec<Vec<f64>> =
            g.iter().zip(&u).map(|(g, u)| g.iter().zip(u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()).collect();
        let d = lin(&act, &format!("{p}.mlp.down_proj.weight"));
        x.iter_mut().zip(&d).for_each(|(x, o)| x.iter_mut().zip(o).for_each(|(x, o)| *x += o));
    }
    let logits = lin(&norm(&x, "model.norm.weight"), "lm_head.weight");
    logits
        .into_iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            r.iter().map(|v| v - lse).collect()
        })
        .collect()
}

/// For each scored token (windows of `context`, not overlapping, first token
/// of each window context only): the full next-token distribution (log).
fn distributions(w: &BTreeMap<String, T>, ids: &[usize], context: usize) -> Vec<(Vec<f64>, usize)> {
    let mut out = Vec::new();
    for start in (0..ids.len()).step_by(context) {
        let win = &ids[start..(start + context).min(ids.len())];
        if win.len() < 2 {
            continue;
        }
        let lp = forward(w, &SHAPE, win);
        for i in 0..win.len() - 1 {
            out.push((lp[i].clone(), win[i + 1]));
        }
    }
    out
}

fn json(o: &std::process::Output) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&stdout(o)).unwrap().as_array().unwrap().clone()
}

fn nll(v: &serde_json::Value) -> f64 {
    v["nll"].as_f64().unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-300)
}

/// Two models with sharp distributions (large weights), a base and a fine-tune.
fn models(d: &Path) {
    SHAPE.write(&d.join("base"), &[(1, 0.3)]).unwrap();
    SHAPE.write(&d.join("ft"), &[(1, 0.3), (2, 0.2)]).unwrap();
}

#[test]
fn perplexity_matches_an_independent_forward_and_ensembles_combine_as_defined() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(d);
    let (txt, ids) = text(70, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), &txt).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nft = model(\"ft\")\nparam lam = 0.4\nbase + lam*(ft - base)\n");
    let o = fuse_ok(d, &["eval", "r.fuse", "--text", "t.txt", "--context", "16", "--inputs", "--json"]);
    let rows = json(&o);
    assert_eq!(rows.len(), 3, "{}", stdout(&o));
    // 70 tokens in windows of 16: 16, 16, 16, 16, 6; 65 scored.
    assert!(stderr(&o).contains("5 windows of 16 tokens"), "{}", stderr(&o));
    let (base, ft) = (read_model(&d.join("base")), read_model(&d.join("ft")));
    // The merged weights, computed here.
    let merged: BTreeMap<String, T> = base
        .iter()
        .map(|(n, b)| {
            let data = b.data.iter().zip(&ft[n].data).map(|(b, f)| (*b as f64 + 0.4 * (*f as f64 - *b as f64)) as f32);
            (n.clone(), T { data: data.collect(), ..b.clone() })
        })
        .collect();
    let (db, df) = (distributions(&base, &ids, 16), distributions(&ft, &ids, 16));
    let nll_of = |ds: &[(Vec<f64>, usize)]| -ds.iter().map(|(lp, t)| lp[*t]).sum::<f64>();
    for (row, want) in rows.iter().zip([nll_of(&db), nll_of(&df), nll_of(&distributions(&merged, &ids, 16))]) {
        assert_eq!(row["tokens"], 65);
        assert!(close(nll(row), want, 1e-5), "{row}: nll {} vs independent {want}", nll(row));
        // Bytes: each scored token `tokK` and the space before it.
        let bytes: usize = [0, 16, 32, 48, 64]
            .iter()
            .flat_map(|&s| (s + 1..(s + 16).min(70)).map(|i| 1 + format!("tok{}", ids[i]).len()))
            .sum();
        assert_eq!(row["bytes"], bytes);
        let bpb = want / std::f64::consts::LN_2 / bytes as f64;
        assert!(close(row["bits_per_byte"].as_f64().unwrap(), bpb, 1e-5));
        assert!(close(row["perplexity"].as_f64().unwrap(), (want / 65.0).exp(), 1e-5));
    }
    // Ensembles: the same members; weights normalized.
    write_recipe(
        d,
        "e.fuse",
        "base = model(\"base\")\nft = model(\"ft\")\nsave(base, \"unused\")\nensemble(base, ft, weight=[3, 1])\n",
    );
    write_recipe(d, "same.fuse", "base = model(\"base\")\nensemble(base, base)\n");
    write_recipe(d, "max.fuse", "base = model(\"base\")\nft = model(\"ft\")\nensemble(base, ft, mode=\"max\")\n");
    let eval = |r: &str| json(&fuse_ok(d, &["eval", r, "--text", "t.txt", "--context", "16", "--json"]));
    let mean = eval("e.fuse");
    let want_mean =
        -db.iter().zip(&df).map(|((a, t), (b, _))| (0.75 * a[*t].exp() + 0.25 * b[*t].exp()).ln()).sum::<f64>();
    assert!(close(nll(&mean[1]), want_mean, 1e-5), "{} vs {want_mean}", nll(&mean[1]));
    // Mixing probabilities never does worse than the weighted mean of log-likelihoods (Jensen).
    assert!(nll(&mean[1]) <= 0.75 * nll_of(&db) + 0.25 * nll_of(&df));
    // ensemble(m, m) is m, exactly.
    assert_eq!(nll(&eval("same.fuse")[0]), nll(&rows[0]));
    // max: per-token maximum of the two distributions, renormalized.
    let want_max = -db
        .iter()
        .zip(&df)
        .map(|((a, t), (b, _))| {
            let m: Vec<f64> = a.iter().zip(b).map(|(x, y)| x.exp().max(y.exp())).collect();
            (m[*t] / m.iter().sum::<f64>()).ln()
        })
        .sum::<f64>();
    assert!(close(nll(&eval("max.fuse")[0]), want_max, 1e-5), "{} vs {want_max}", nll(&eval("max.fuse")[0]));
}

#[test]
fn zero_weights_give_the_uniform_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // No noise terms: every weight 0 but the norms, so every logit is 0.
    SHAPE.write(&d.join("zero"), &[]).unwrap();
    let (txt, _) = text(50, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), txt).unwrap();
    write_recipe(d, "r.fuse", "model(\"zero\")\n");
    let rows = json(&fuse_ok(d, &["eval", "r.fuse", "--text", "t.txt", "--context", "8", "--json"]));
    let ppl = rows[0]["perplexity"].as_f64().unwrap();
    assert!(close(ppl, SHAPE.vocab as f64, 1e-6), "{ppl}");
    let want_nll = rows[0]["tokens"].as_f64().unwrap() * (SHAPE.vocab as f64).ln();
    assert!(close(nll(&rows[0]), want_nll, 1e-6));
}

#[test]
fn sweeps_print_a_table_with_the_best_value_marked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(d);
    let (txt, _) = text(40, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), txt).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nft = model(\"ft\")\nparam lam = 0.4\nbase + lam*(ft - base)\n");
    let args = ["eval", "r.fuse", "--text", "t.txt", "--context", "20"];
    let o = fuse_ok(d, &[&args[..], &["--sweep", "lam=0:1:0.5"]].concat());
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].trim_start().starts_with("lam") && lines[0].contains("perplexity"), "{out}");
    assert_eq!(out.matches("* best").count(), 1, "{out}");
    // Each row is the recipe run with --set; the best is the lowest.
    let ppl = |set: &str| {
        json(&fuse_ok(d, &[&args[..], &["--set", set, "--json"]].concat()))[0]["perplexity"].as_f64().unwrap()
    };
    let ppls: Vec<f64> = ["lam=0", "lam=0.5", "lam=1"].iter().map(|s| ppl(s)).collect();
    let best = (0..3).min_by(|&a, &b| ppls[a].total_cmp(&ppls[b])).unwrap();
    assert!(lines[1 + best].ends_with("* best"), "{out}\n{ppls:?}");
    for (l, p) in lines[1..].iter().zip(&ppls) {
        assert!(l.contains(&format!("{p:.4}")), "{l} vs {p}");
    }
}

#[test]
fn bad_input_is_a_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(d);
    let (txt, _) = text(30, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), txt).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nbase\n");
    let run = |args: &[&str]| {
        let o = fuse(d, &[&["eval", "r.fuse"][..], args].concat());
        assert!(!o.status.success());
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        stderr(&o)
    };
    let e = run(&["--text", "t.txt"]);
    expect_code(&e, "E0502");
    assert!(e.contains("30 tokens, fewer than one window of 128") && e.contains("--context 30"), "{e}");
    let e = run(&["--text", "t.txt", "--context", "8", "--max-memory", "10KB"]);
    expect_code(&e, "E0504");
    assert!(e.contains("more than --max-memory"), "{e}");
    expect_code(&run(&["--text", "t.txt", "--sweep", "lam=1:0:1"]), "E0505");
    expect_code(&run(&["--text", "t.txt", "--context", "1"]), "E0505");
    expect_code(&run(&["--text", "missing.txt"]), "E0506");
    if !cfg!(feature = "cuda") {
        let e = run(&["--text", "t.txt", "--context", "8", "--device", "cuda"]);
        assert!(e.contains("[E0506]") && e.contains("cannot use CUDA"), "{e}");
    }
    // A family without a forward pass.
    let cfg = std::fs::read_to_string(d.join("base/config.json")).unwrap();
    std::fs::write(d.join("base/config.json"), cfg.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap();
    let e = run(&["--text", "t.txt", "--context", "8"]);
    expect_code(&e, "E0501");
    assert!(e.contains("GPT2LMHeadModel") && e.contains("LlamaForCausalLM"), "{e}");
    std::fs::write(d.join("base/config.json"), cfg).unwrap();
    // No tokenizer; then one that tokenizes differently from the other member's.
    std::fs::remove_file(d.join("base/tokenizer.json")).unwrap();
    let e = run(&["--text", "t.txt", "--context", "8"]);
    expect_code(&e, "E0503");
    assert!(e.contains("no tokenizer.json"), "{e}");
    let tok = std::fs::read_to_string(d.join("ft/tokenizer.json")).unwrap();
    std::fs::write(
        d.join("base/tokenizer.json"),
        tok.replace("\"tok5\":5", "\"tok5\":6").replace("\"tok6\":6", "\"tok6\":5"),
    )
    .unwrap();
    write_recipe(d, "e.fuse", "base = model(\"base\")\nft = model(\"ft\")\nensemble(base, ft)\n");
    let o = fuse(d, &["check", "e.fuse"]);
    expect_code(&stderr(&o), "E0210");
    // An ensemble is not written.
    std::fs::write(d.join("base/tokenizer.json"), &tok).unwrap();
    let o = fuse(d, &["run", "e.fuse", "-o", "out"]);
    assert!(!o.status.success() && !d.join("out").exists());
    assert!(stderr(&o).contains("[E0208]"), "{}", stderr(&o));
}

#[test]
fn the_repl_evaluates_expressions_and_ensembles() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(d);
    // Long enough for the default window (the models' maximum, 128).
    let (txt, _) = text(300, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), txt).unwrap();
    write_recipe(d, "r.fuse", "base = model(\"base\")\nft = model(\"ft\")\nbase\n");
    let want = json(&fuse_ok(d, &["eval", "r.fuse", "--text", "t.txt", "--json"]))[0]["perplexity"].as_f64().unwrap();
    let input = ":eval base t.txt\ne = ensemble(base, ft)\ne\n:eval e t.txt\n:eval base missing.txt\n";
    let (out, _) = crate::repl::repl(d, &["r.fuse"], input);
    assert!(out.contains(&format!("perplexity {want:.4}")), "{out}\n{want}");
    assert!(out.contains("Ensemble  (2 models, mean, weights 0.5/0.5)"), "{out}");
    assert_eq!(out.matches("perplexity ").count(), 2, "{out}");
    assert!(out.contains("cannot read the text"), "{out}");
}

#[test]
fn a_mixtral_of_identical_experts_evaluates_as_its_dense_model() {
    // Routing weights are renormalized over the chosen experts, so experts
    // that are all the same MLP give the dense model's output.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(d);
    let (txt, _) = text(60, SHAPE.vocab);
    std::fs::write(d.join("t.txt"), txt).unwrap();
    write_recipe(
        d,
        "r.fuse",
        "base = model(\"base\")\nmoe(experts=[base, base, base], base=base, top_k=2, gate=\"random\")\n",
    );
    write_recipe(d, "dense.fuse", "model(\"base\")\n");
    let eval = |r: &str| json(&fuse_ok(d, &["eval", r, "--text", "t.txt", "--context", "20", "--json"]))[0].clone();
    let (moe, dense) = (eval("r.fuse"), eval("dense.fuse"));
    assert!(close(nll(&moe), nll(&dense), 1e-5), "{moe} vs {dense}");
}

#[test]
fn a_gguf_without_tokenizer_json_is_tokenized_from_its_metadata() {
    // fuse writes a GGUF with the tokenizer.json's vocabulary and merges as
    // metadata; eval of that file (no tokenizer.json beside it) rebuilds the
    // tokenizer, and must split the text as the `tokenizers` library does
    // with the original: same tokens, same scores.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    SHAPE.write(&d.join("st"), &[(1, 0.3)]).unwrap();
    let tok = r#"{"version": "1.0", "truncation": null, "padding": null, "normalizer": null, "post_processor": null,
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false,
                  "vocab": {"<|end|>": 0, "a": 3, "b": 4, "ab": 5, "ba": 6}, "merges": ["a b", "b a"]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "added_tokens": [{"id": 0, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}]}"#;
    std::fs::write(d.join("st/tokenizer.json"), tok).unwrap();
    write_recipe(d, "w.fuse", "save(model(\"st\"), \"out.gguf\", dtype=f32)\n");
    fuse_ok(d, &["run", "w.fuse"]);
    std::fs::write(d.join("t.txt"), "aabbabaababbbaab<|end|>abba").unwrap();
    write_recipe(d, "st.fuse", "model(\"st\")\n");
    write_recipe(d, "g.fuse", "model(\"out.gguf\")\n");
    let eval = |r: &str| fuse_ok(d, &["eval", r, "--text", "t.txt", "--context", "4", "--json"]);
    let (st, g) = (eval("st.fuse"), eval("g.fuse"));
    assert!(stderr(&g).contains("tokenizer the metadata of"), "{}", stderr(&g));
    let ids = tokenizers::Tokenizer::from_file(d.join("st/tokenizer.json"))
        .unwrap()
        .encode("aabbabaababbbaab<|end|>abba", true)
        .unwrap();
    assert!(stderr(&g).contains(&format!("{} tokens", ids.get_ids().len())), "{}", stderr(&g));
    assert_eq!(json(&st)[0]["nll"], json(&g)[0]["nll"]);
}
