//! Progress bars for long computations: on a terminal only, never in pipes or CI.

use std::io::IsTerminal;

/// A bar over `bytes` of output, or None when stderr is not a terminal.
pub fn bar(bytes: u64, tensors: usize) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(bytes);
    let style = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} ({binary_bytes_per_sec}, ETA {eta}) {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("{tensors} tensors"));
    Some(bar)
}

/// A bar over `tokens` scored by an evaluation, or None when stderr is not a terminal.
pub fn tokens(tokens: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(tokens);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tokens (ETA {eta}) {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
