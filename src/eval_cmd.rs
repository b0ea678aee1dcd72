//! `fuse eval`: the command line around `fuse::eval`: options, sweeps over a
//! `param`, the memory statement, the progress bar and the table or JSON.

use super::{fail, load, report, CmdResult};
use fuse::diag::{Code, Diagnostic, Sources};
use fuse::eval::{self, Prepared, Score};
use std::path::{Path, PathBuf};

/// `fuse eval`'s options.
pub struct How {
    pub text: PathBuf,
    pub context: Option<usize>,
    pub max_tokens: Option<usize>,
    pub inputs: bool,
    pub json: bool,
    pub sweep: Option<String>,
    pub set: Vec<String>,
    pub cuda: bool,
    pub max_memory: Option<String>,
}

/// `lam=0.1,0.3,0.5` or `lam=lo:hi:step` as (name, values as recipe text).
pub fn parse_sweep(s: &str) -> Result<(String, Vec<String>), Diagnostic> {
    let bad = |why: &str| {
        Diagnostic::error(Code::E0505, format!("--sweep `{s}`: {why}"))
            .with_help("write --sweep lam=0.1,0.3,0.5 or --sweep lam=0:1:0.25 (from:to:step, both ends included)")
    };
    let (name, vals) = s.split_once('=').ok_or_else(|| bad("expected NAME=VALUES"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(bad("no parameter name"));
    }
    let vals = vals.trim();
    let values = if let [lo, hi, step] = vals.split(':').collect::<Vec<_>>()[..] {
        let num = |x: &str| x.trim().parse::<f64>().map_err(|_| bad(&format!("`{x}` is not a number")));
        let (lo, hi, step) = (num(lo)?, num(hi)?, num(step)?);
        if step.is_nan() || step <= 0.0 || hi < lo {
            return Err(bad("from:to:step needs from <= to and a step > 0"));
        }
        let n = ((hi - lo) / step + 1e-9).floor() as usize + 1;
        if n > 1000 {
            return Err(bad(&format!("{n} values; at most 1000")));
        }
        (0..n).map(|k| fuse::check::fmt_num(lo + k as f64 * step)).collect()
    } else if vals.contains(':') {
        return Err(bad("a range is from:to:step"));
    } else {
        vals.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect::<Vec<_>>()
    };
    if values.is_empty() {
        return Err(bad("no values"));
    }
    Ok((name.to_string(), values))
}

/// One evaluated expression, for the table and JSON.
struct Row {
    param: Option<(String, String)>,
    name: String,
    score: Score,
}

pub fn run(recipe: &Path, how: &How) -> CmdResult {
    let max_memory = match &how.max_memory {
        None => fuse::exec::default_max_memory() * 3,
        Some(m) => match fuse::io::writer::parse_size(m) {
            Some(n) if n > 0 => n,
            _ => {
                return fail(
                    Diagnostic::error(Code::E0505, format!("--max-memory `{m}` is not a size"))
                        .with_help("write e.g. --max-memory 8GB"),
                )
            }
        },
    };
    let device = if how.cuda {
        match candle_core::Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                return fail(
                    Diagnostic::error(Code::E0506, format!("cannot use CUDA: {e}"))
                        .with_help("build with `--features cuda` on a machine with an NVIDIA GPU, or use --device cpu"),
                )
            }
        }
    } else {
        candle_core::Device::Cpu
    };
    let text = match std::fs::read_to_string(&how.text) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                Diagnostic::error(Code::E0506, format!("cannot read the text `{}`: {e}", how.text.display()))
                    .with_help("--text takes a plain UTF-8 file"),
            )
        }
    };
    let opts = eval::Options { context: how.context, max_tokens: how.max_tokens, device, max_memory };
    let sweep = match &how.sweep {
        None => None,
        Some(s) => Some(parse_sweep(s).or_else(|d| fail(d).map(|_| (String::new(), Vec::new())))?),
    };
    // Every run planned and checked before any weights are computed.
    let mut runs: Vec<(Option<(String, String)>, Prepared)> = Vec::new();
    let settings: Vec<Option<(String, String)>> = match &sweep {
        None => vec![None],
        Some((name, vals)) => vals.iter().map(|v| Some((name.clone(), v.clone()))).collect(),
    };
    for (k, setting) in settings.into_iter().enumerate() {
        let mut set = how.set.clone();
        if let Some((n, v)) = &setting {
            set.push(format!("{n}={v}"));
        }
        let mut sources = Sources::default();
        let (r, _) = load(recipe, &set, &mut sources)?;
        let targets = eval::targets(&r, &sources);
        if targets.is_empty() {
            return fail(
                Diagnostic::error(Code::E0111, "the recipe has nothing to evaluate")
                    .with_help("end it with a model or `ensemble(...)` expression, or `save(...)` one"),
            );
        }
        // The inputs do not depend on a param: once, first.
        if how.inputs && k == 0 {
            for t in &eval::inputs(&r) {
                runs.push((None, eval::prepare(&r, t, &text, &opts).map_err(|d| report(&[d], &sources))?));
            }
        }
        for t in &targets {
            let p = eval::prepare(&r, t, &text, &opts).map_err(|d| report(&[d], &sources))?;
            runs.push((setting.clone(), p));
        }
    }
    let first = &runs[0].1;
    let (scored, bytes) = first.scored();
    eprintln!(
        "text: `{}`, {} tokens (tokenizer {}), {} window{} of {} tokens, not overlapping; \
         the first token of each window is context only: {scored} tokens ({bytes} bytes) scored",
        how.text.display(),
        first.tokens.ids.len(),
        first.tokenizer,
        first.windows.len(),
        if first.windows.len() == 1 { "" } else { "s" },
        first.context,
    );
    let peak = runs.iter().max_by_key(|(_, p)| p.memory.total()).map(|(_, p)| p.memory).unwrap();
    eprintln!("memory: {peak}; --max-memory {}", eval::mb(max_memory));
    let total: u64 = runs.iter().map(|(_, p)| p.work()).sum();
    let bar = fuse::progress::tokens(total);
    let mut rows = Vec::new();
    for (setting, p) in &runs {
        if let Some(b) = &bar {
            let at = setting.as_ref().map(|(n, v)| format!("{n}={v}: ")).unwrap_or_default();
            b.set_message(format!("{at}{}", p.target.name));
        }
        let tick = |n: u64| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        };
        match eval::run(p, &opts, &tick) {
            Ok(score) => rows.push(Row { param: setting.clone(), name: p.target.name.clone(), score }),
            Err(d) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let interrupted = d.code == Code::E0405;
                fail(d)?;
                if interrupted {
                    std::process::exit(130);
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if how.json {
        print_json(&rows);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn print_json(rows: &[Row]) {
    let v: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::json!({
                "name": r.name,
                "perplexity": r.score.perplexity(),
                "bits_per_byte": r.score.bits_per_byte(),
                "tokens": r.score.tokens,
                "bytes": r.score.bytes,
                "nll": r.score.nll,
            });
            if let Some((n, v)) = &r.param {
                o["param"] =
                    serde_json::json!({ n: v.parse::<f64>().map(serde_json::Value::from).unwrap_or(v.clone().into()) });
            }
            o
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
}

/// The table; in a sweep, `*` marks each expression's lowest perplexity
/// (inputs, evaluated once, show `-`).
fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|r| r.name.chars().count()).max().unwrap_or(10).max(10);
    let sweep = rows.iter().find_map(|r| r.param.as_ref()).map(|(n, _)| n.clone());
    let best = |r: &Row| {
        let same: Vec<&Row> = rows.iter().filter(|o| o.name == r.name && o.param.is_some()).collect();
        r.param.is_some() && same.len() > 1 && same.iter().all(|o| o.score.perplexity() >= r.score.perplexity())
    };
    let mut head = String::new();
    if let Some(n) = &sweep {
        head.push_str(&format!("{n:>8}  "));
    }
    head.push_str(&format!("{:<width$}  {:>12}  {:>9}  {:>8}", "expression", "perplexity", "bits/byte", "tokens"));
    println!("{head}");
    for r in rows {
        let mut line = String::new();
        match (&r.param, &sweep) {
            (Some((_, v)), _) => line.push_str(&format!("{v:>8}  ")),
            (None, Some(_)) => line.push_str(&format!("{:>8}  ", "-")),
            (None, None) => {}
        }
        line.push_str(&format!(
            "{:<width$}  {:>12.4}  {:>9.4}  {:>8}",
            r.name,
            r.score.perplexity(),
            r.score.bits_per_byte(),
            r.score.tokens
        ));
        if best(r) {
            line.push_str("  * best");
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::parse_sweep;

    #[test]
    fn sweeps_are_lists_or_inclusive_ranges() {
        assert_eq!(
            parse_sweep("lam=0.1,0.3, 0.5").unwrap(),
            ("lam".into(), vec!["0.1".into(), "0.3".into(), "0.5".into()])
        );
        assert_eq!(parse_sweep("lam=0:1:0.25").unwrap().1, ["0", "0.25", "0.5", "0.75", "1"]);
        assert_eq!(parse_sweep("k=0.1:0.3:0.1").unwrap().1.len(), 3);
        for bad in ["lam", "=1", "lam=1:0:0.1", "lam=0:1", "lam=a:1:0.1", "lam=0:1:0"] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }
}
