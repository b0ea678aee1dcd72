// Starts `fuse lsp` for .fuse files: diagnostics, hover, completion, definitions.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("fuse").get("path") || "fuse";
  client = new LanguageClient(
    "fuse",
    "fuse",
    { command, args: ["lsp"] },
    { documentSelector: [{ scheme: "file", language: "fuse" }] }
  );
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
