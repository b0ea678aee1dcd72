//! Checkpoints on disk: safetensors headers, model directories (single file,
//! sharded with an index, the local Hugging Face cache) and the writer for
//! sharded outputs. Tensor data itself is read in `exec/`.

pub mod checkpoint;
pub mod codec;
pub mod layer_config;
pub mod package;
pub mod pickle;
pub mod read;
pub mod safetensors;
pub mod target;
pub mod writer;

pub use checkpoint::{is_vocab_tensor, layer_of, with_layer, Checkpoint, OpenError};
pub use safetensors::DType;

/// Files an output takes over from the model it is based on (tokenizer,
/// generation settings, chat template), when that model has them.
pub const COPIED_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];
