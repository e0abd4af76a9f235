use std::path::PathBuf;

use mhr_core::CoreError;

/// Every failure names the file, key, input or value at fault, with the shapes involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.json` is unreadable as a T5 config: a missing or mistyped field, or an invalid value.
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{dir}: no weights (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin and \
         pytorch_model.bin.index.json)"
    )]
    NoWeights { dir: PathBuf },
    /// A model given by a Hub repo id that could not be fetched (offline, unknown repo, …).
    #[error(
        "{repo}: could not fetch {what} from the Hugging Face Hub: {reason}; offline, put the repo's config.json, \
         weights (model.safetensors or pytorch_model.bin, or their shards with the index) and tokenizer.json in a \
         folder and pass that folder instead"
    )]
    Hub {
        repo: String,
        what: String,
        reason: String,
    },
    #[error("{spec}: not a directory, nor a Hugging Face Hub repo id (owner/name)")]
    NotAModel { spec: String },
    /// A `pytorch_model.bin` that burn-store's reader cannot parse or whose tensor data cannot be read.
    #[error("{path}: not a readable PyTorch checkpoint: {reason}")]
    Pytorch { path: PathBuf, reason: String },
    #[error("{path}: tensor `{key}` (shape {expected:?}) is missing")]
    MissingTensor {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    #[error("{path}: unexpected tensor `{key}` with shape {shape:?}")]
    UnexpectedTensor {
        path: PathBuf,
        key: String,
        shape: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An input tensor's shape does not fit the others (or is empty).
    #[error("`{name}` has shape {found:?}, expected {expected}")]
    InputShape {
        name: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    #[error("`{name}` holds token id {id}, outside the vocabulary of {vocab_size}")]
    TokenOutOfRange {
        name: &'static str,
        id: i64,
        vocab_size: usize,
    },
    #[error("task id {id} is outside the {n_tasks} tasks of the routed adapters")]
    TaskOutOfRange { id: i64, n_tasks: usize },
    /// Any other invalid argument: mask values, missing task ids, generation settings.
    #[error("invalid `{name}`: {reason}")]
    InvalidInput { name: &'static str, reason: String },
    #[error(transparent)]
    Core(#[from] CoreError),
}
