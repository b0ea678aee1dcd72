//! Any text given to the parser and checker yields diagnostics or a recipe,
//! never a panic or a stack overflow, and every diagnostic renders.
//! libFuzzer mutates bytes, which seldom makes text nested hundreds deep or
//! thousands of terms long; an input can ask for that (see `grow`).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// An input whose first byte `k` is below 16 reads `k OPEN \x1f INNER \x1f
/// CLOSE`: OPEN repeated 2^k times (1 to 32,768; at most 1 MB in all), then
/// INNER, then CLOSE as many times. `\x09(\x1f1\x1f)` is 1 nested in 512
/// parentheses, `\x0e + m\x1fm` a sum of 16,385 terms. Other inputs are
/// used as they are.
fn grow(data: &[u8]) -> Vec<u8> {
    let Some((&k, rest)) = data.split_first().filter(|(k, _)| **k < 16) else { return data.to_vec() };
    let mut parts = rest.splitn(3, |&b| b == 0x1f);
    let (open, inner, close) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    let n = (1usize << k).min((1 << 20) / (open.len() + close.len()).max(1));
    let mut out = open.repeat(n);
    out.extend_from_slice(inner);
    out.extend_from_slice(&close.repeat(n));
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(&grow(data)) {
        let mut sources = fuse::diag::Sources::default();
        let path = std::path::Path::new("fuzz/corpus/recipe.fuse");
        let (_, diags) = fuse::check::check(path, text, &[], &mut sources);
        let _ = fuse::diag::render::render_plain(&diags, &sources);
    }
});
