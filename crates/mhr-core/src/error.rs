use std::path::PathBuf;

/// Every failure of this crate names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: tensor `{key}` is missing")]
    MissingTensor { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{key}` has dtype {dtype}, which cannot be read as {wanted}")]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
        wanted: &'static str,
    },
    #[error("{path}: unexpected tensor `{key}`")]
    UnexpectedTensor { path: PathBuf, key: String },
    #[error("{path}: {field}: {reason}")]
    Unsupported {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("invalid adapter configuration: {0}")]
    Config(String),
    #[error("unknown task `{0}` (and the unknown-task fallback is off)")]
    UnknownTask(String),
}
