//! PyTorch `.bin` checkpoints (zip archives holding a pickle): tensor data
//! only. The pickle is parsed by candle-core's reader, which never runs
//! code, and every class it names must be one a plain state dict uses; a
//! pickle that would call anything else (`os.system`, `eval`, ...) is
//! refused. Tensor bytes are located inside the archive and read like
//! safetensors data.

use super::safetensors::{DType, TensorInfo};
use candle_core::pickle::{Object, Stack};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;

/// Classes a state dict's pickle may name: containers, tensor rebuilding,
/// storages.
fn allowed(module: &str, class: &str) -> bool {
    match module {
        "collections" => class == "OrderedDict",
        "torch._utils" => matches!(class, "_rebuild_tensor_v2" | "_rebuild_parameter"),
        "torch._tensor" => class == "_rebuild_from_type_v2",
        "torch" => class.ends_with("Storage") || class == "Size",
        "__torch__" => class == "Module",
        _ => false,
    }
}

fn classes(o: &Object, out: &mut Vec<(String, String)>) {
    match o {
        Object::Class { module_name, class_name } => out.push((module_name.clone(), class_name.clone())),
        Object::Tuple(xs) | Object::List(xs) => xs.iter().for_each(|x| classes(x, out)),
        Object::Dict(kv) => kv.iter().for_each(|(k, v)| {
            classes(k, out);
            classes(v, out)
        }),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            classes(callable, out);
            classes(args, out)
        }
        Object::PersistentLoad(x) => classes(x, out),
        _ => {}
    }
}

/// Reads the tensor table of a PyTorch zip checkpoint. The error says what
/// is wrong in words (the caller adds the file name).
pub fn read_bin(path: &Path) -> Result<BTreeMap<String, TensorInfo>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| format!("not a PyTorch zip checkpoint ({e}); legacy pre-1.6 pickles are not supported"))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect();
    let pkl = names.iter().find(|n| n.ends_with("data.pkl")).ok_or("the archive holds no data.pkl")?.clone();
    {
        let entry = zip.by_name(&pkl).map_err(|e| format!("cannot read {pkl}: {e}"))?;
        let mut stack = Stack::empty();
        let first_line = |e: candle_core::Error| e.to_string().lines().next().unwrap_or_default().to_string();
        stack
            .read_loop(&mut BufReader::new(entry))
            .map_err(|e| format!("the pickle cannot be parsed: {}", first_line(e)))?;
        let obj = stack.finalize().map_err(|e| format!("the pickle cannot be parsed: {}", first_line(e)))?;
        let mut found = Vec::new();
        classes(&obj, &mut found);
        if let Some((m, c)) = found.iter().find(|(m, c)| !allowed(m, c)) {
            return Err(format!(
                "its pickle would call `{m}.{c}`; fuse reads only tensor data and refuses pickles that run code (convert it to safetensors)"
            ));
        }
    }
    let infos = candle_core::pickle::read_pth_tensor_info(path, false, None)
        .map_err(|e| format!("cannot read its tensors: {}", e.to_string().lines().next().unwrap_or_default()))?;
    let mut out = BTreeMap::new();
    for info in infos {
        let dtype = match info.dtype {
            candle_core::DType::F32 => DType::F32,
            candle_core::DType::F16 => DType::F16,
            candle_core::DType::BF16 => DType::BF16,
            candle_core::DType::F64 => DType::F64,
            candle_core::DType::I64 => DType::I64,
            candle_core::DType::I32 => DType::I32,
            candle_core::DType::U8 => DType::U8,
            other => return Err(format!("tensor `{}` has unsupported dtype {other:?}", info.name)),
        };
        if !info.layout.is_contiguous() {
            return Err(format!("tensor `{}` is not contiguous in its storage", info.name));
        }
        let entry = zip
            .by_name(&info.path)
            .map_err(|e| format!("tensor `{}`: storage `{}` is missing: {e}", info.name, info.path))?;
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(format!(
                "tensor `{}`: storage `{}` is compressed; torch.save stores it plainly",
                info.name, info.path
            ));
        }
        let data = entry.data_start().ok_or_else(|| format!("tensor `{}`: cannot locate its storage", info.name))?;
        let shape = info.layout.shape().dims().to_vec();
        let bytes = shape.iter().product::<usize>() as u64 * dtype.size() as u64;
        let start = data + info.layout.start_offset() as u64;
        if start + bytes > data + entry.size() {
            return Err(format!("tensor `{}` reaches past the end of its storage", info.name));
        }
        out.insert(info.name.clone(), TensorInfo { dtype, shape, start, end: start + bytes });
    }
    if out.is_empty() {
        return Err("it holds no tensors (is it a state dict?)".into());
    }
    Ok(out)
}
