//! `fuse lsp`: a language server over stdio (lsp-server for the transport).
//!
//! Every open document is checked on open and change with the same checker
//! and the same [`Diagnostic`] values as the command line, converted here:
//! diagnostics (syntax, types, architecture checks against the models'
//! headers), hover (the type of the expression under the cursor and the docs
//! of functions), completion (names, functions, named arguments) and
//! go-to-definition (bindings, params, `fn`s and imports).

use crate::check::{self, Analysis};
use crate::diag::{Diagnostic, FileId, Severity, Sources};
use lsp_server::{Connection, Message, Notification, Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;

/// Serves until the client asks to shut down.
pub fn run() -> Result<(), String> {
    let (conn, threads) = Connection::stdio();
    let caps = json!({
        "textDocumentSync": 1,
        "hoverProvider": true,
        "definitionProvider": true,
        "completionProvider": { "triggerCharacters": ["(", ",", " "] },
    });
    conn.initialize(caps).map_err(|e| e.to_string())?;
    let mut docs: HashMap<String, String> = HashMap::new();
    for msg in &conn.receiver {
        match msg {
            Message::Request(req) => {
                if conn.handle_shutdown(&req).map_err(|e| e.to_string())? {
                    break;
                }
                let result = answer(&req, &docs);
                conn.sender.send(Message::Response(Response::new_ok(req.id, result))).map_err(|e| e.to_string())?;
            }
            Message::Notification(n) => {
                if let Some((uri, text)) = changed(&n) {
                    let diags = diagnostics(&uri, &text);
                    docs.insert(uri.clone(), text);
                    let note = Notification::new(
                        "textDocument/publishDiagnostics".into(),
                        json!({ "uri": uri, "diagnostics": diags }),
                    );
                    conn.sender.send(Message::Notification(note)).map_err(|e| e.to_string())?;
                }
            }
            Message::Response(_) => {}
        }
    }
    drop(conn);
    threads.join().map_err(|e| e.to_string())
}

/// The document a didOpen or didChange carries (full sync).
fn changed(n: &Notification) -> Option<(String, String)> {
    let p = &n.params;
    match n.method.as_str() {
        "textDocument/didOpen" => {
            Some((p["textDocument"]["uri"].as_str()?.into(), p["textDocument"]["text"].as_str()?.into()))
        }
        "textDocument/didChange" => {
            let text = p["contentChanges"].as_array()?.last()?["text"].as_str()?;
            Some((p["textDocument"]["uri"].as_str()?.into(), text.into()))
        }
        _ => None,
    }
}

fn path_of(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri).replace("%20", " "))
}

fn analyze(uri: &str, text: &str) -> (Analysis, Sources) {
    let mut sources = Sources::default();
    let want = check::Want { any_result: false, types: true };
    let a = check::analyze(&path_of(uri), text, &[], &mut sources, want);
    (a, sources)
}

/// LSP position (line, UTF-16 column) of a byte offset.
fn position(text: &str, offset: usize) -> Value {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count();
    let col: usize = before.rsplit('\n').next().unwrap_or("").chars().map(char::len_utf16).sum();
    json!({ "line": line, "character": col })
}

/// Byte offset of an LSP position.
fn offset(text: &str, line: usize, character: usize) -> usize {
    let mut off = 0;
    for (i, l) in text.split('\n').enumerate() {
        if i == line {
            let mut units = 0;
            for (b, c) in l.char_indices() {
                if units >= character {
                    return off + b;
                }
                units += c.len_utf16();
            }
            return off + l.len();
        }
        off += l.len() + 1;
    }
    text.len()
}

/// Our diagnostics as LSP's, for the document (file 0 of the analysis).
pub fn diagnostics(uri: &str, text: &str) -> Vec<Value> {
    let (a, sources) = analyze(uri, text);
    a.diags.iter().map(|d| convert(d, text, &sources)).collect()
}

fn convert(d: &Diagnostic, text: &str, sources: &Sources) -> Value {
    let main = FileId(0);
    let (start, end) =
        d.labels.iter().find(|l| l.file == main).map_or((0, 0), |l| (l.span.start, l.span.end.max(l.span.start)));
    let mut message = d.message.clone();
    if let Some(l) = d.labels.first().filter(|l| !l.message.is_empty()) {
        message.push_str(&format!(": {}", l.message));
    }
    for n in &d.notes {
        message.push_str(&format!("\nnote: {n}"));
    }
    for h in &d.help {
        message.push_str(&format!("\nhelp: {h}"));
    }
    let related: Vec<Value> = d
        .labels
        .iter()
        .skip(1)
        .filter(|l| !l.message.is_empty())
        .map(|l| {
            let (uri, t) = if l.file == main {
                (String::new(), text.to_string())
            } else {
                (format!("file://{}", sources.name(l.file)), sources.text(l.file).to_string())
            };
            json!({
                "location": { "uri": uri, "range": { "start": position(&t, l.span.start), "end": position(&t, l.span.end) } },
                "message": l.message,
            })
        })
        .collect();
    json!({
        "range": { "start": position(text, start), "end": position(text, end) },
        "severity": if d.severity == Severity::Error { 1 } else { 2 },
        "code": d.code.as_str(),
        "source": "fuse",
        "message": message,
        "relatedInformation": related,
    })
}

fn answer(req: &Request, docs: &HashMap<String, String>) -> Value {
    let p = &req.params;
    let uri = p["textDocument"]["uri"].as_str().unwrap_or_default();
    let Some(text) = docs.get(uri) else { return Value::Null };
    let (line, ch) = (
        p["position"]["line"].as_u64().unwrap_or(0) as usize,
        p["position"]["character"].as_u64().unwrap_or(0) as usize,
    );
    let at = offset(text, line, ch);
    match req.method.as_str() {
        "textDocument/hover" => hover(uri, text, at),
        "textDocument/completion" => {
            let (a, _) = analyze(uri, text);
            let names: Vec<String> = a.defs.into_iter().map(|(n, _, _)| n).collect();
            let (_, items) = crate::complete::complete(&names, text, at);
            Value::Array(items.into_iter().map(|c| json!({ "label": c.text, "kind": 3 })).collect())
        }
        "textDocument/definition" => {
            let word = word_at(text, at);
            let (a, sources) = analyze(uri, text);
            match a.defs.iter().find(|(n, _, _)| *n == word) {
                Some((_, file, span)) => {
                    let (u, t) = if *file == FileId(0) {
                        (uri.to_string(), text.clone())
                    } else {
                        (format!("file://{}", sources.name(*file)), sources.text(*file).to_string())
                    };
                    json!({ "uri": u, "range": { "start": position(&t, span.start), "end": position(&t, span.end) } })
                }
                None => Value::Null,
            }
        }
        _ => Value::Null,
    }
}

fn word_at(text: &str, at: usize) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let start = text[..at].rfind(|c: char| !is_word(c)).map_or(0, |i| i + 1);
    let end = text[at..].find(|c: char| !is_word(c)).map_or(text.len(), |i| at + i);
    text[start..end].to_string()
}

/// The type of the innermost expression under the cursor, and the docs of a
/// function name there.
fn hover(uri: &str, text: &str, at: usize) -> Value {
    let (a, _) = analyze(uri, text);
    let ty = a
        .types
        .iter()
        .filter(|(f, s, _)| *f == FileId(0) && s.start <= at && at <= s.end)
        .min_by_key(|(_, s, _)| s.end - s.start)
        .map(|(_, s, t)| (text[s.start..s.end].to_string(), t.clone()));
    let word = word_at(text, at);
    let mut parts = Vec::new();
    if let Some(doc) = docs_of(&word) {
        parts.push(doc);
    }
    if let Some((src, t)) = ty {
        parts.push(format!("`{}`: {t}", if src.len() > 60 { &src[..src.floor_char_boundary(60)] } else { &src }));
    }
    if parts.is_empty() {
        return Value::Null;
    }
    json!({ "contents": { "kind": "markdown", "value": parts.join("\n\n") } })
}

/// Documentation of a builtin, native method or standard-library function.
pub fn docs_of(name: &str) -> Option<String> {
    if let Some(m) = check::methods::method(name) {
        let params: Vec<String> = m.params.iter().map(|p| format!("- `{}`: {}", p.name, p.doc)).collect();
        return Some(format!("**{}** — {}\n\n{}\n\nExample: `{}`", m.name, m.doc, params.join("\n"), m.example));
    }
    let params = check::parameters_of(name);
    let stdlib = check::STDLIB[0].1;
    // The comment lines right above `fn name(` in the standard library.
    if let Some(pos) = stdlib.find(&format!("fn {name}(")) {
        let doc: Vec<&str> = stdlib[..pos].lines().rev().take_while(|l| l.starts_with('#')).collect();
        let doc: Vec<&str> = doc.into_iter().rev().map(|l| l.trim_start_matches('#').trim()).collect();
        return Some(format!("**{name}**({}) — {}", params.join(", "), doc.join(" ")));
    }
    (!params.is_empty()).then(|| format!("**{name}**({})", params.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        let t = "ab\ncdé\nf";
        assert_eq!(position(t, 4), json!({"line": 1, "character": 1}));
        assert_eq!(offset(t, 1, 1), 4);
        assert_eq!(offset(t, 2, 0), 8);
        assert_eq!(position(t, 7), json!({"line": 1, "character": 3}));
    }

    #[test]
    fn stdlib_functions_have_docs() {
        assert!(docs_of("ties").unwrap().contains("TIES"));
        assert!(docs_of("slerp").unwrap().contains("Spherical"));
    }
}
