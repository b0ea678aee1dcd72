//! Checkpoints on disk: safetensors headers, model directories (single file,
//! sharded with an index, the local Hugging Face cache) and the writer for
//! sharded outputs. Tensor data itself is read in `exec/`.

pub mod checkpoint;
pub mod pickle;
pub mod safetensors;
pub mod writer;

pub use checkpoint::{layer_of, with_layer, Checkpoint, OpenError};
pub use safetensors::DType;
