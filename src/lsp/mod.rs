//! `fuse lsp`: a language server over stdio (lsp-server for the transport,
//! lsp-types for the protocol's messages).
//!
//! Every open document is checked on open and change with the same checker
//! and the same [`Diagnostic`](crate::diag::Diagnostic) values as the command
//! line, converted in `convert.rs`: diagnostics (syntax, types, architecture
//! checks against the models' headers), hover (the type of the expression
//! under the cursor or of the name being defined, and the docs of
//! functions), completion (names, functions, named arguments) and
//! go-to-definition (bindings, params, `fn`s, imported names and import
//! paths). `document.rs` keeps each document's analysis, and keeps these
//! working while a line of it does not parse.

mod convert;
mod document;

use crate::check;
use document::Document;
use lsp_server::{Connection, Message, Notification, Request, Response};
use lsp_types::{
    CompletionItem, CompletionItemKind, CompletionOptions, CompletionRequest, CompletionResponse, Contents, Definition,
    DefinitionProvider, DefinitionRequest, DefinitionResponse, DidChangeTextDocumentNotification,
    DidChangeTextDocumentParams, DidOpenTextDocumentNotification, DidOpenTextDocumentParams, Hover, HoverProvider,
    HoverRequest, LspNotificationMethod, LspRequestMethod, MarkupContent, MarkupKind, Notification as _,
    PublishDiagnosticsNotification, PublishDiagnosticsParams, Request as _, ServerCapabilities,
    TextDocumentContentChangeEvent, TextDocumentPositionParams, TextDocumentSync, TextDocumentSyncKind, Uri,
};
use serde_json::Value;
use std::collections::HashMap;

/// Serves until the client asks to shut down.
pub fn run() -> Result<(), String> {
    let (conn, threads) = Connection::stdio();
    let caps = ServerCapabilities {
        text_document_sync: Some(TextDocumentSync::Kind(TextDocumentSyncKind::Full)),
        hover_provider: Some(HoverProvider::Bool(true)),
        definition_provider: Some(DefinitionProvider::Bool(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(["(", ",", " "].map(String::from).to_vec()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let caps = serde_json::to_value(caps).map_err(|e| e.to_string())?;
    conn.initialize(caps).map_err(|e| e.to_string())?;
    let mut docs: HashMap<Uri, Document> = HashMap::new();
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
                if let Some((uri, text)) = changed(n) {
                    let doc = Document::open(uri.clone(), text);
                    let params = PublishDiagnosticsParams::new(uri.clone(), None, doc.diagnostics().to_vec());
                    docs.insert(uri, doc);
                    let note = Notification::new(PublishDiagnosticsNotification::METHOD.into(), params);
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
fn changed(n: Notification) -> Option<(Uri, String)> {
    let method: LspNotificationMethod = n.method.as_str().into();
    match method {
        DidOpenTextDocumentNotification::METHOD => {
            let p: DidOpenTextDocumentParams = serde_json::from_value(n.params).ok()?;
            Some((p.text_document.uri, p.text_document.text))
        }
        DidChangeTextDocumentNotification::METHOD => {
            let p: DidChangeTextDocumentParams = serde_json::from_value(n.params).ok()?;
            // With full sync every change is the whole document; the last one counts.
            match p.content_changes.into_iter().last()? {
                TextDocumentContentChangeEvent::TextDocumentContentChangeWholeDocument(c) => {
                    Some((p.text_document.text_document_identifier.uri, c.text))
                }
                TextDocumentContentChangeEvent::TextDocumentContentChangePartial(_) => None,
            }
        }
        _ => None,
    }
}

/// The result of a request: null for a document that is not open, a
/// position with nothing there, or a request this server does not serve.
fn answer(req: &Request, docs: &HashMap<Uri, Document>) -> Value {
    let method: LspRequestMethod = req.method.as_str().into();
    // Hover, completion and definition params all hold a document and a position.
    let Ok(at) = serde_json::from_value::<TextDocumentPositionParams>(req.params.clone()) else {
        return Value::Null;
    };
    let Some(doc) = docs.get(&at.text_document.uri) else { return Value::Null };
    let offset = convert::offset(doc.text(), at.position);
    let result = match method {
        HoverRequest::METHOD => serde_json::to_value(doc.hover(offset).map(|value| Hover {
            contents: Contents::MarkupContent(MarkupContent { kind: MarkupKind::Markdown, value }),
            range: None,
        })),
        CompletionRequest::METHOD => {
            let items = doc.completion(offset).into_iter().map(completion_item).collect();
            serde_json::to_value(CompletionResponse::CompletionItemList(items))
        }
        DefinitionRequest::METHOD => serde_json::to_value(
            doc.definition(offset).map(|l| DefinitionResponse::Definition(Definition::Location(l))),
        ),
        _ => return Value::Null,
    };
    result.unwrap_or(Value::Null)
}

fn completion_item(c: crate::complete::Completion) -> CompletionItem {
    use crate::complete::Kind;
    let kind = match c.kind {
        Kind::Name => CompletionItemKind::Variable,
        Kind::Function => CompletionItemKind::Function,
        Kind::Argument => CompletionItemKind::Property,
        Kind::Command => CompletionItemKind::Keyword,
    };
    CompletionItem { label: c.text, kind: Some(kind), ..Default::default() }
}

/// The diagnostics the server would publish for `text` at `uri`, as JSON
/// (for tests that drive the analysis without a client).
pub fn diagnostics(uri: &str, text: &str) -> Vec<serde_json::Value> {
    let Ok(uri) = uri.parse::<lsp_types::Uri>() else { return Vec::new() };
    let doc = document::Document::open(uri, text.to_string());
    doc.diagnostics().iter().map(|d| serde_json::to_value(d).unwrap_or_default()).collect()
}

/// Documentation of a builtin, native method or standard-library function.
pub fn docs_of(name: &str) -> Option<String> {
    check::docs_of(name)
}

/// The `#` comment lines right above byte `pos` (a `fn`'s docs), joined.
fn comment_above(text: &str, pos: usize) -> String {
    let doc: Vec<&str> = text[..pos].lines().rev().take_while(|l| l.trim_start().starts_with('#')).collect();
    let doc: Vec<&str> = doc.into_iter().rev().map(|l| l.trim_start().trim_start_matches('#').trim()).collect();
    doc.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdlib_functions_have_docs() {
        assert!(docs_of("ties").unwrap().contains("TIES"));
        assert!(docs_of("slerp").unwrap().contains("Spherical"));
    }
}
