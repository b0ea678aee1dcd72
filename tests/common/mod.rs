//! Shared helpers: running the real binary, reading checkpoints with the
//! `safetensors` crate (independently of fuse's own reader), and comparing
//! tensors with a tolerance or in units in the last place.

#![allow(dead_code)]

pub mod gguf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures/mergekit")
}

/// Runs the fuse binary with `args` in `cwd`.
pub fn fuse(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fuse")).current_dir(cwd).args(args).output().expect("fuse runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs fuse and panics with its stderr unless it succeeds.
pub fn fuse_ok(cwd: &Path, args: &[&str]) -> Output {
    let o = fuse(cwd, args);
    assert!(o.status.success(), "fuse {args:?} failed:\n{}", stderr(&o));
    o
}

/// The environment variable naming the file where [`expect_code`] records
/// the codes it saw (set by the meta-test in `diagnostics.rs`).
pub const OBSERVED_CODES: &str = "FUSE_TEST_OBSERVED_CODES";

/// Asserts that a process's `stderr` reports diagnostic `code`
/// (`[E0402] Error: ...`), and records the code where [`OBSERVED_CODES`]
/// says: the meta-test reruns the tests that name runtime codes and checks
/// that each was seen by a passing assertion.
pub fn expect_code(stderr: &str, code: &str) {
    assert!(stderr.contains(&format!("[{code}]")), "expected [{code}] in:\n{stderr}");
    if let Some(path) = std::env::var_os(OBSERVED_CODES) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        writeln!(f, "{code}").unwrap();
    }
}

/// A tensor read back from disk as f32.
#[derive(Debug, Clone)]
pub struct T {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub data: Vec<f32>,
}

/// Reads every tensor of a checkpoint directory (single file or sharded).
pub fn read_model(dir: &Path) -> BTreeMap<String, T> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no safetensors in {}", dir.display());
    let mut out = BTreeMap::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let data = decode(view.data(), view.dtype());
            out.insert(
                name.to_string(),
                T { shape: view.shape().to_vec(), dtype: format!("{:?}", view.dtype()), data },
            );
        }
    }
    out
}

fn decode(b: &[u8], dtype: safetensors::Dtype) -> Vec<f32> {
    use safetensors::Dtype;
    match dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Same tensor names, and each with the same shape and dtype.
pub fn assert_same_layout(ours: &BTreeMap<String, T>, expected: &BTreeMap<String, T>) {
    let a: Vec<&String> = ours.keys().collect();
    let b: Vec<&String> = expected.keys().collect();
    assert_eq!(a, b, "tensor sets differ");
    for (name, e) in expected {
        assert_eq!(ours[name].shape, e.shape, "shape of {name}");
        assert_eq!(ours[name].dtype, e.dtype, "dtype of {name}");
    }
}

/// Same tensor set, shapes and dtypes, and
/// |ours - expected| <= tol * max(1, |expected|) everywhere.
pub fn assert_close(ours: &BTreeMap<String, T>, expected: &BTreeMap<String, T>, tol: f32) {
    assert_same_layout(ours, expected);
    for (name, e) in expected {
        let o = &ours[name];
        for (i, (x, y)) in o.data.iter().zip(&e.data).enumerate() {
            assert!((x - y).abs() <= tol * y.abs().max(1.0), "{name}[{i}]: ours {x}, expected {y}");
        }
    }
}

/// The spacing of f32 numbers at |x| (one unit in the last place).
pub fn ulp(x: f32) -> f64 {
    let a = x.abs();
    (f32::from_bits(a.to_bits() + 1) - a) as f64
}

/// Same tensor set, shapes and dtypes, and every entry within `ulps` units
/// in the last place of its scale: the largest magnitude among the expected
/// value and the `inputs`' entries of the same tensor at the same index.
/// Rounding in a short f32 formula is bounded by the size of the values it
/// combines, not by the result (which cancellation can make tiny).
pub fn assert_ulps(
    ours: &BTreeMap<String, T>,
    expected: &BTreeMap<String, T>,
    inputs: &[BTreeMap<String, T>],
    ulps: f64,
) {
    assert_same_layout(ours, expected);
    for (name, e) in expected {
        let o = &ours[name];
        let ins: Vec<&[f32]> = inputs
            .iter()
            .filter_map(|m| m.get(name))
            .filter(|t| t.data.len() == e.data.len())
            .map(|t| &t.data[..])
            .collect();
        for (i, (x, y)) in o.data.iter().zip(&e.data).enumerate() {
            let scale = ins.iter().map(|t| t[i].abs()).fold(y.abs(), f32::max);
            let err = (*x as f64 - *y as f64).abs() / ulp(scale);
            assert!(err <= ulps, "{name}[{i}]: ours {x:e}, expected {y:e}: {err:.1} ulps of {scale:e}, over {ulps}");
        }
    }
}

/// TIES as the paper and mergekit describe it, written plainly with a full
/// sort: an independent check of the kernel's O(n) selection.
pub fn ties_reference(deltas: &[Vec<f32>], density: f64) -> Vec<f32> {
    let trimmed: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| {
            let k = ((density * d.len() as f64) as usize).max(1);
            let mut idx: Vec<usize> = (0..d.len()).collect();
            idx.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()));
            let mut t = vec![0f32; d.len()];
            for &i in &idx[..k] {
                t[i] = d[i];
            }
            t
        })
        .collect();
    (0..deltas[0].len())
        .map(|i| {
            let sum: f32 = trimmed.iter().map(|t| t[i]).sum();
            let majority = if sum >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f32> =
                trimmed.iter().map(|t| t[i]).filter(|v| *v != 0.0 && v.signum() == majority).collect();
            if agree.is_empty() {
                0.0
            } else {
                agree.iter().sum::<f32>() / agree.len() as f32
            }
        })
        .collect()
}

/// `a - b`, entry by entry, in f32 (as fuse subtracts).
pub fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Writes a recipe into `dir` and returns its path.
pub fn write_recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Writes tensors as a checkpoint directory with `config` as config.json:
/// as bf16 (rounded to nearest even) where their dtype says `BF16`, else as
/// f32.
pub fn write_model(dir: &Path, tensors: &BTreeMap<String, T>, config: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        let bf16 = t.dtype == "BF16";
        for v in &t.data {
            match bf16 {
                true => data.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes()),
                false => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        let dtype = if bf16 { "BF16" } else { "F32" };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
}

/// Writes f32 tensors as a PyTorch `pytorch_model.bin` (torch.save's zip
/// layout: a protocol-2 pickle of an OrderedDict of tensors rebuilt from
/// storages, each storage stored uncompressed), with `config` beside it.
/// `extra` is spliced into the pickle as the first dict items (for hostile pickles).
pub fn write_bin(dir: &Path, tensors: &BTreeMap<String, T>, config: &str, extra: &[u8]) {
    use std::io::Write;
    fn uni(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend_from_slice(&(v as i32).to_le_bytes());
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut p = vec![0x80, 2];
    p.extend_from_slice(b"ccollections\nOrderedDict\n)R");
    p.push(b'(');
    p.extend_from_slice(extra);
    for (i, (name, t)) in tensors.iter().enumerate() {
        uni(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        uni(&mut p, "storage");
        p.extend_from_slice(b"ctorch\nFloatStorage\n");
        uni(&mut p, &i.to_string());
        uni(&mut p, "cpu");
        int(&mut p, t.data.len());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        t.shape.iter().for_each(|d| int(&mut p, *d));
        p.extend_from_slice(b"t(");
        let mut stride = 1;
        let mut strides = vec![0; t.shape.len()];
        for k in (0..t.shape.len()).rev() {
            strides[k] = stride;
            stride *= t.shape[k];
        }
        strides.iter().for_each(|s| int(&mut p, *s));
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    let f = std::fs::File::create(dir.join("pytorch_model.bin")).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&p).unwrap();
    for (i, t) in tensors.values().enumerate() {
        z.start_file(format!("archive/data/{i}"), opts).unwrap();
        for v in &t.data {
            z.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    z.start_file("archive/version", opts).unwrap();
    z.write_all(b"3\n").unwrap();
    z.finish().unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
}

/// Writes tensors given as (name, safetensors dtype, shape, little-endian
/// bytes) as `model.safetensors`, with `config` beside it: for dtypes
/// [`write_model`] does not write (integer buffers).
pub fn write_raw(dir: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)], config: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
}

/// Which quirks a small BERT checkpoint (`write_bert`) has.
#[derive(Clone, Copy)]
pub struct Bert {
    /// Values differ by seed.
    pub seed: u64,
    /// Holds the int64 buffer `embeddings.position_ids` (older transformers saves).
    pub position_ids: bool,
    /// Holds `pooler.dense.weight` and `pooler.dense.bias`.
    pub pooler: bool,
}

/// Writes a one-layer BertModel with hidden size 4 and the quirks asked for.
pub fn write_bert(dir: &Path, b: Bert) {
    let f32s = |shape: &[usize], salt: u64| -> Vec<u8> {
        let n: usize = shape.iter().product();
        (0..n)
            .flat_map(|i| {
                let x = ((i as u64 * 2654435761 + b.seed * 97 + salt * 31) % 1000) as f32 / 500.0 - 1.0;
                x.to_le_bytes()
            })
            .collect()
    };
    let mut ts: Vec<(String, &str, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut float = |name: &str, shape: Vec<usize>| {
        let salt = name.len() as u64;
        ts.push((name.to_string(), "F32", shape.clone(), f32s(&shape, salt)));
    };
    float("embeddings.word_embeddings.weight", vec![10, 4]);
    float("encoder.layer.0.attention.self.query.weight", vec![4, 4]);
    float("encoder.layer.0.output.LayerNorm.weight", vec![4]);
    if b.pooler {
        float("pooler.dense.weight", vec![4, 4]);
        float("pooler.dense.bias", vec![4]);
    }
    if b.position_ids {
        let ids: Vec<u8> = (0..8i64).flat_map(i64::to_le_bytes).collect();
        ts.push(("embeddings.position_ids".into(), "I64", vec![1, 8], ids));
    }
    ts.sort_by(|x, y| x.0.cmp(&y.0));
    let config = r#"{"architectures": ["BertModel"], "model_type": "bert", "num_hidden_layers": 1, "hidden_size": 4}"#;
    write_raw(dir, &ts, config);
}
