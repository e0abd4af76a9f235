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
    /// An adapter file has weights for a module that is not an adapter site of the model.
    #[error("adapter module `{module}` is not an adapter site of this model")]
    UnknownSite { module: String },
    /// `target_modules` (names, or a regular expression that must match a whole path) select no site.
    #[error(
        "target_modules {targets} match no adapter site of this model (sites are module paths such as \
         `encoder.block.0.layer.0.SelfAttention.q`; a regular expression must match the whole path)"
    )]
    NoTargetSite { targets: String },
    /// An adapter file has weights for sites that its own `target_modules` do not name.
    #[error("adapter weights for {modules:?}, which target_modules {targets} do not name")]
    UntargetedModules { targets: String, modules: Vec<String> },
    #[error("invalid adapter configuration: {0}")]
    Config(String),
    #[error("unknown task `{0}` (and the unknown-task fallback is off)")]
    UnknownTask(String),
}
