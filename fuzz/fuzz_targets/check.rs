//! Any text given to the parser and checker yields diagnostics or a recipe,
//! never a panic, and every diagnostic renders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut sources = fuse::diag::Sources::default();
        let path = std::path::Path::new("fuzz/corpus/recipe.fuse");
        let (_, diags) = fuse::check::check(path, text, &[], &mut sources);
        let _ = fuse::diag::render::render_plain(&diags, &sources);
    }
});
