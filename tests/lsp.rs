//! `fuse lsp` as a process speaking JSON-RPC: diagnostics with range and
//! code, hover, completion and go-to-definition.

use fuse::testmodel::TinyLlama;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

struct Client {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
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
}

#[test]
fn lsp_diagnoses_hovers_completes_and_finds_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::demo().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    TinyLlama::demo().write(&d.join("math"), &[(1, 0.02), (2, 0.01)]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .arg("lsp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut c = Client { stdin: child.stdin.take().unwrap(), stdout: BufReader::new(child.stdout.take().unwrap()) };
    let init = c.request(1, "initialize", json!({"capabilities": {}, "processId": null, "rootUri": null}));
    assert_eq!(init["capabilities"]["hoverProvider"], true);
    c.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
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
    c.request(7, "shutdown", Value::Null);
    c.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    assert!(child.wait().unwrap().success());
}

#[test]
fn lsp_survives_deep_and_long_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    TinyLlama::default().write(&d.join("base"), &[(1, 0.02)]).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fuse"))
        .arg("lsp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut c = Client { stdin: child.stdin.take().unwrap(), stdout: BufReader::new(child.stdout.take().unwrap()) };
    c.request(1, "initialize", json!({"capabilities": {}, "processId": null, "rootUri": null}));
    c.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    let uri = format!("file://{}", d.join("deep.fuse").display());
    let n = 100_000;
    let documents = [
        format!("x = {}1{}\n", "(".repeat(n), ")".repeat(n)),
        format!("x = {}1\n", "-".repeat(n)),
        // A sum of 100,000 terms is fine: `base` plus 100,000 zero task vectors.
        format!("base = model(\"base\")\nbase{}\n", " + (base - base)".repeat(n)),
    ];
    for (version, text) in documents.iter().enumerate() {
        let method = if version == 0 { "textDocument/didOpen" } else { "textDocument/didChange" };
        c.send(json!({"jsonrpc": "2.0", "method": method, "params": {
            "textDocument": {"uri": uri, "languageId": "fuse", "version": version, "text": text},
            "contentChanges": [{"text": text}]}}));
        let diags = c.wait(|m| m["method"] == "textDocument/publishDiagnostics")["params"]["diagnostics"].clone();
        let codes: Vec<&str> = diags.as_array().unwrap().iter().map(|d| d["code"].as_str().unwrap()).collect();
        let expect: &[&str] = if version < 2 { &["E0002"] } else { &[] };
        assert_eq!(codes, expect, "document {version}");
        if version < 2 {
            assert_eq!(diags[0]["range"]["start"], json!({"line": 0, "character": 4 + fuse::syntax::MAX_DEPTH}));
        }
        // The server is still there and answers the next request.
        let h = c.request(
            10 + version as u64,
            "textDocument/hover",
            json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 13}}),
        );
        if version == 2 {
            assert!(h["contents"]["value"].as_str().unwrap().contains("`base - base`: Delta"), "{h}");
        }
    }
    c.request(99, "shutdown", Value::Null);
    c.send(json!({"jsonrpc": "2.0", "method": "exit"}));
    assert!(child.wait().unwrap().success());
}
