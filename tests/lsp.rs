//! `fuse lsp` as a process speaking JSON-RPC: diagnostics with range and
//! code, hover, completion and go-to-definition, for documents under paths
//! that need escaping in URIs and for documents with errors.

use fuse::testmodel::TinyLlama;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

/// A `fuse lsp` process, initialized.
fn start() -> Client {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .arg("lsp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
    let mut c = Client { child, stdin, stdout, next_id: 100 };
    let init = c.request(1, "initialize", json!({"capabilities": {}, "processId": null, "rootUri": null}));
    assert_eq!(init["capabilities"]["hoverProvider"], true);
    c.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    c
}

impl Client {
    fn send(&mut self, v: Value) {
        let body = v.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some(n) = line.strip_prefix("Content-Length: ") {
                len = n.parse().unwrap();
            }
        }
        let mut buf = vec![0; len];
        self.stdout.read_exact(&mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    /// The next message that answers request `id` or has `method`.
    fn wait(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self.recv();
            if f(&m) {
                return m;
            }
        }
    }

    fn request(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.wait(|m| m["id"] == id)["result"].clone()
    }

    /// Opens (version 1) or replaces a document; returns the diagnostics published for it.
    fn open(&mut self, uri: &str, version: u32, text: &str) -> Value {
        let m = if version == 1 {
            json!({"jsonrpc": "2.0", "method": "textDocument/didOpen",
                "params": {"textDocument": {"uri": uri, "languageId": "fuse", "version": 1, "text": text}}})
        } else {
            json!({"jsonrpc": "2.0", "method": "textDocument/didChange",
                "params": {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text}]}})
        };
        self.send(m);
        self.wait(|m| m["method"] == "textDocument/publishDiagnostics")["params"].clone()
    }

    /// A position request on `uri`.
    fn at(&mut self, method: &str, uri: &str, line: u32, character: u32) -> Value {
        self.next_id += 1;
        let params = json!({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}});
        self.request(self.next_id, method, params)
    }

    /// The hover text at a position ("" for none).
    fn hover(&mut self, uri: &str, line: u32, character: u32) -> String {
        let h = self.at("textDocument/hover", uri, line, character);
        h["contents"]["value"].as_str().unwrap_or_default().to_string()
    }

    /// The completions at a position: (label, kind).
    fn complete(&mut self, uri: &str, line: u32, character: u32) -> Vec<(String, u64)> {
        let items = self.at("textDocument/completion", uri, line, character);
        let items = items.as_array().unwrap().iter();
        items.map(|i| (i["label"].as_str().unwrap().to_string(), i["kind"].as_u64().unwrap())).collect()
    }

    fn stop(mut self) {
        self.request(2, "shutdown", Value::Null);
        self.send(json!({"jsonrpc": "2.0", "method": "exit"}));
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn lsp_diagnoses_hovers_completes_and_finds_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::demo().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    TinyLlama::demo().write(&d.join("math"), &[(1, 0.02), (2, 0.01)]).unwrap();
    let mut c = start();
    let uri = format!("file://{}", d.join("merge.fuse").display());
    let text = "base = model(\"base\")\nmath = model(\"math\")\nbad = math * base\nbase + ties(math, k=0.5)\n";
    c.send(json!({"jsonrpc": "2.0", "method": "textDocument/didOpen",
        "params": {"textDocument": {"uri": uri, "languageId": "fuse", "version": 1, "text": text}}}));
    let diags = c.wait(|m| m["method"] == "textDocument/publishDiagnostics")["params"]["diagnostics"].clone();
    let diags = diags.as_array().unwrap();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0]["code"], "E0203");
    assert_eq!(diags[0]["range"]["start"], json!({"line": 2, "character": 6}));
    assert_eq!(diags[0]["range"]["end"], json!({"line": 2, "character": 17}));
    // Hover over `math` in the last line: its type; over `ties`: its docs.
    let h = c.request(
        2,
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": {"line": 3, "character": 13}}),
    );
    let h = h["contents"]["value"].as_str().unwrap().to_string();
    assert!(h.contains("`math`: Model"), "{h}");
    let h = c.request(
        3,
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": {"line": 3, "character": 8}}),
    );
    assert!(h["contents"]["value"].as_str().unwrap().contains("TIES"), "{h}");
    // Go to the definition of `math`.
    let def = c.request(
        6,
        "textDocument/definition",
        json!({"textDocument": {"uri": uri}, "position": {"line": 3, "character": 13}}),
    );
    assert_eq!(def["range"]["start"], json!({"line": 1, "character": 0}), "{def}");
    // Completion after `ba` on a new line, and named arguments inside the call.
    let changed = format!("{text}ba");
    c.send(json!({"jsonrpc": "2.0", "method": "textDocument/didChange",
        "params": {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": changed}]}}));
    c.wait(|m| m["method"] == "textDocument/publishDiagnostics");
    let items = c.request(
        4,
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": 4, "character": 2}}),
    );
    let labels: Vec<&str> = items.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert!(labels.contains(&"base") && labels.contains(&"bad"), "{labels:?}");
    let changed = format!("{text}y = ties(math, dens");
    c.send(json!({"jsonrpc": "2.0", "method": "textDocument/didChange",
        "params": {"textDocument": {"uri": uri, "version": 3}, "contentChanges": [{"text": changed}]}}));
    c.wait(|m| m["method"] == "textDocument/publishDiagnostics");
    let items = c.request(
        5,
        "textDocument/completion",
        json!({"textDocument": {"uri": uri}, "position": {"line": 4, "character": 19}}),
    );
    let labels: Vec<&str> = items.as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["density="]);
    c.stop();
}

/// Spaces, a non-ASCII letter and `#` in the directory: the URIs the editor
/// sends are decoded to the real paths (the models are found), and every URI
/// the server sends back (diagnostics, related information, definitions in
/// an imported file) names the real files.
#[test]
fn lsp_serves_documents_under_paths_that_need_escaping() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mes modèles #1");
    TinyLlama::demo().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    TinyLlama::demo().write(&d.join("math"), &[(1, 0.02), (2, 0.01)]).unwrap();
    std::fs::write(d.join("lib.fuse"), "# Task vector of m over b.\nfn tv(m, b) = m - b\nmath = model(\"math\")\n")
        .unwrap();
    let dir_uri = format!("file://{}/mes%20mod%C3%A8les%20%231", tmp.path().display());
    let (uri, lib_uri) = (format!("{dir_uri}/merge.fuse"), format!("{dir_uri}/lib.fuse"));
    let mut c = start();
    // `math` is bound again (first in lib.fuse), `base` too (first in this file).
    let text = "import \"lib.fuse\"\nbase = model(\"base\")\nmath = model(\"base\")\nbase = model(\"math\")\nbase + tv(math, base)\n";
    let published = c.open(&uri, 1, text);
    assert_eq!(published["uri"], uri.as_str());
    let diags = published["diagnostics"].as_array().unwrap().clone();
    let codes: Vec<&str> = diags.iter().map(|d| d["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["E0102", "E0102"], "{diags:?}");
    assert_eq!(diags[0]["range"]["start"], json!({"line": 2, "character": 0}));
    let related = &diags[0]["relatedInformation"][0];
    assert_eq!(related["message"], "first bound here");
    assert_eq!(related["location"]["uri"], lib_uri.as_str());
    assert_eq!(related["location"]["range"]["start"], json!({"line": 2, "character": 0}));
    assert_eq!(diags[1]["range"]["start"], json!({"line": 3, "character": 0}));
    let related = &diags[1]["relatedInformation"][0];
    assert_eq!(related["location"]["uri"], uri.as_str());
    assert_eq!(related["location"]["range"]["start"], json!({"line": 1, "character": 0}));
    // A `fn` defined in the import: its definition, and its docs on hover.
    let def = c.at("textDocument/definition", &uri, 4, 8);
    assert_eq!(def["uri"], lib_uri.as_str(), "{def}");
    assert_eq!(def["range"], json!({"start": {"line": 1, "character": 3}, "end": {"line": 1, "character": 5}}));
    assert!(c.hover(&uri, 4, 8).starts_with("**tv**(m, b) — Task vector of m over b."));
    // The import's path leads to the imported file.
    let def = c.at("textDocument/definition", &uri, 0, 10);
    assert_eq!(def["uri"], lib_uri.as_str(), "{def}");
    assert_eq!(def["range"]["start"], json!({"line": 0, "character": 0}));
    c.stop();
}

/// Hover on a name where it is bound (a binding, a `param`, a `fn`), and
/// hover and completion that keep working while another line, or the rest
/// of the line under the cursor, does not parse.
#[test]
fn lsp_hovers_definitions_and_keeps_working_around_syntax_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::demo().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    TinyLlama::demo().write(&d.join("math"), &[(1, 0.02), (2, 0.01)]).unwrap();
    let uri = format!("file://{}", d.join("merge.fuse").display());
    let lines = [
        "param k = 0.5",
        "base = model(\"base\")",
        "math = model(\"math\")",
        "# Scales a task vector.",
        "fn scaled(d, w=k) = w * d",
        "out = base + scaled(math - base)",
    ];
    let text = lines.join("\n") + "\n";
    let mut c = start();
    assert_eq!(c.open(&uri, 1, &text)["diagnostics"], json!([]));
    assert_eq!(c.hover(&uri, 1, 1), "`base`: Model");
    assert_eq!(c.hover(&uri, 0, 7), "`k`: Num");
    assert_eq!(c.hover(&uri, 5, 1), "`out`: Model");
    assert_eq!(c.hover(&uri, 4, 5), "**scaled**(d, w=k) — Scales a task vector.");
    // At a call: the signature, then the call's type.
    let h = c.hover(&uri, 5, 15);
    assert_eq!(h, "**scaled**(d, w=k) — Scales a task vector.\n\n`scaled(math - base)`: Delta");

    // A syntax error on line 6 and a call left open on line 7.
    let broken = format!("{text}z = math + * base\ny = ties(math, dens");
    let diags = c.open(&uri, 2, &broken)["diagnostics"].clone();
    assert_eq!(diags.as_array().unwrap().len(), 1, "{diags}");
    assert_eq!(diags[0]["code"], "E0001");
    assert_eq!(diags[0]["range"]["start"], json!({"line": 6, "character": 11}));
    // Other lines: expression types and definitions as before.
    assert_eq!(c.hover(&uri, 5, 22), "`math`: Model");
    assert_eq!(c.hover(&uri, 1, 1), "`base`: Model");
    let def = c.at("textDocument/definition", &uri, 5, 22);
    assert_eq!(def["range"]["start"], json!({"line": 2, "character": 0}), "{def}");
    // The broken lines themselves: names take their bindings' types, and
    // completion offers names and the open call's arguments.
    assert_eq!(c.hover(&uri, 6, 5), "`math`: Model");
    assert_eq!(c.complete(&uri, 7, 19), [("density=".to_string(), 10)]);
    let broken = format!("{text}z = math + * base\nw = ba");
    c.open(&uri, 3, &broken);
    assert_eq!(c.complete(&uri, 7, 6), [("base".to_string(), 6)]);
    c.stop();
}

#[test]
fn lsp_survives_deep_and_long_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    let mut c = start();
    let uri = format!("file://{}", d.join("deep.fuse").display());
    let n = 100_000;
    let documents = [
        format!("x = {}1{}\n", "(".repeat(n), ")".repeat(n)),
        format!("x = {}1\n", "-".repeat(n)),
        // A sum of 100,000 terms is fine: `base` plus 100,000 zero task vectors.
        format!("base = model(\"base\")\nbase{}\n", " + (base - base)".repeat(n)),
    ];
    for (version, text) in documents.iter().enumerate() {
        let diags = c.open(&uri, version as u32 + 1, text)["diagnostics"].clone();
        let codes: Vec<&str> = diags.as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
        let expect: &[&str] = if version < 2 { &["E0002"] } else { &[] };
        assert_eq!(codes, expect, "document {version}");
        if version < 2 {
            assert_eq!(diags[0]["range"]["start"], json!({"line": 0, "character": 4 + fuse::syntax::MAX_DEPTH}));
        }
        // The server is still there and answers the next request.
        let h = c.hover(&uri, 1, 13);
        if version == 2 {
            assert!(h.contains("`(base - base)`: Delta"), "{h}");
        }
    }
    c.stop();
}
