//! Checkpoints on disk: safetensors headers, GGUF files, model directories (single file,
//! sharded with an index, the local Hugging Face cache) and the writer for
//! sharded outputs. Tensor data itself is read in `exec/`.

pub mod checkpoint;
pub mod codec;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod layer_config;
pub mod modules;
pub mod package;
pub mod pickle;
pub mod read;
pub mod safetensors;
pub mod target;
pub mod writer;

pub use checkpoint::{is_vocab_tensor, layer_of, with_layer, Checkpoint, OpenError};
pub use safetensors::DType;

/// Files an output takes over from the model it is based on, when that
/// model has them: tokenizers of every kind (fast `tokenizer.json`, BERT's
/// `vocab.txt`, BPE's `vocab.json` + `merges.txt`, SentencePiece models),
/// chat templates, processor configs of multimodal models, generation
/// settings, and the sentence-transformers description (`modules::FILES`;
/// module folders are carried by `package.rs`).
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "tokenizer.model.v3",
    "tekken.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "spm.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];
