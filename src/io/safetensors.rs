//! The safetensors header: read and validated without touching tensor data.
//!
//! A header is untrusted input: its length, offsets and shapes are checked
//! against the file before anything is sized by them.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest header we accept; real ones are a few MB at most.
const MAX_HEADER: u64 = 100 << 20;

/// Element types of safetensors files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I64" => DType::I64,
            "I32" => DType::I32,
            "I16" => DType::I16,
            "I8" => DType::I8,
            "U8" => DType::U8,
            "BOOL" => DType::Bool,
            _ => return None,
        })
    }
    /// The name safetensors headers use.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U8 => "U8",
            DType::Bool => "BOOL",
        }
    }
    /// The name config.json's `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::F32 => "f32",
            other => other.as_str(),
        })
    }
}

/// Where one tensor's bytes are, as absolute offsets in its file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A validated header.
#[derive(Clone, Debug)]
pub struct Header {
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads and validates the header of the safetensors file at `path`.
/// The error says what is wrong in words (the caller adds the file name).
pub fn read_header(path: &Path) -> Result<Header, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let file_len = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if file_len < 8 {
        return Err(format!("file is {file_len} bytes, too short for a safetensors header"));
    }
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|e| format!("cannot read header length: {e}"))?;
    let n = u64::from_le_bytes(len_bytes);
    if n > file_len - 8 {
        return Err(format!("header claims {n} bytes but the file has only {} after the length", file_len - 8));
    }
    if n > MAX_HEADER {
        return Err(format!("header claims {n} bytes, more than the {MAX_HEADER} accepted"));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(|e| format!("cannot read header: {e}"))?;
    let data_start = 8 + n;
    parse_header(&buf, data_start, file_len - data_start)
}

fn parse_header(buf: &[u8], data_start: u64, data_len: u64) -> Result<Header, String> {
    let json: Value = serde_json::from_slice(buf).map_err(|e| format!("header is not valid JSON: {e}"))?;
    let Value::Object(map) = json else {
        return Err("header is not a JSON object".into());
    };
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in map {
        if name == "__metadata__" {
            if let Value::Object(m) = v {
                for (k, v) in m {
                    if let Value::String(s) = v {
                        metadata.insert(k, s);
                    }
                }
            }
            continue;
        }
        let info = tensor_entry(&name, &v, data_len).map_err(|e| format!("tensor `{name}`: {e}"))?;
        tensors.insert(name, info);
    }
    // Overlapping data would let two tensors alias each other's bytes.
    let mut ranges: Vec<(u64, u64, &str)> = tensors.iter().map(|(n, t)| (t.start, t.end, n.as_str())).collect();
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("tensors `{}` and `{}` overlap in the data section", w[0].2, w[1].2));
        }
    }
    let tensors = tensors
        .into_iter()
        .map(|(n, mut t)| {
            t.start += data_start;
            t.end += data_start;
            (n, t)
        })
        .collect();
    Ok(Header { tensors, metadata })
}

fn tensor_entry(_name: &str, v: &Value, data_len: u64) -> Result<TensorInfo, String> {
    let dtype_s = v.get("dtype").and_then(Value::as_str).ok_or("no `dtype`")?;
    let dtype = DType::parse(dtype_s).ok_or_else(|| format!("unknown dtype `{dtype_s}`"))?;
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or("no `shape`")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("shape has a non-integer dimension"))
        .collect::<Result<Vec<_>, _>>()?;
    let offs = v.get("data_offsets").and_then(Value::as_array).ok_or("no `data_offsets`")?;
    let (Some(start), Some(end)) = (offs.first().and_then(Value::as_u64), offs.get(1).and_then(Value::as_u64)) else {
        return Err("`data_offsets` is not two integers".into());
    };
    if start % dtype.size() as u64 != 0 {
        return Err(format!("data starts at byte {start}, not a multiple of the {dtype_s} element size"));
    }
    if start > end || end > data_len {
        return Err(format!("data_offsets [{start}, {end}] lie outside the {data_len}-byte data section"));
    }
    let numel = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or("shape overflows")?;
    let want = numel.checked_mul(dtype.size() as u64).ok_or("shape overflows")?;
    if end - start != want {
        return Err(format!("shape {shape:?} of {dtype_s} needs {want} bytes but data_offsets span {}", end - start));
    }
    Ok(TensorInfo { dtype, shape, start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str, data_len: u64) -> Result<Header, String> {
        parse_header(json.as_bytes(), 8 + json.len() as u64, data_len)
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(header("[1]", 0).unwrap_err().contains("not a JSON object"));
        assert!(header("{", 0).unwrap_err().contains("not valid JSON"));
        let e = header(r#"{"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, 1).unwrap_err();
        assert!(e.contains("unknown dtype `Q4`"), "{e}");
        let e = header(r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 4).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        let e = header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}"#, 8).unwrap_err();
        assert!(e.contains("not a multiple"), "{e}");
        let e = header(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        )
        .unwrap_err();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn offsets_become_absolute() {
        let json = r#"{"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#;
        let h = header(json, 8).unwrap();
        let a = &h.tensors["a"];
        assert_eq!((a.start, a.end), (8 + json.len() as u64, 16 + json.len() as u64));
        assert_eq!(h.metadata["format"], "pt");
    }
}
