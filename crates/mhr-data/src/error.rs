//! The one error type of the crate: every failure names the file it came from (and the line or field
//! where that is known), so that a bad task file among 1,600 can be found without a debugger.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, rendering, tokenising or batching task data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Malformed or truncated JSON (a syntax error or an unexpected end of input).
    #[error("{}:{line}:{column}: invalid JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (for JSON Lines files: the line of the row).
        line: usize,
        /// 1-based column within that line.
        column: usize,
        /// What the parser saw.
        message: String,
    },
    /// Well-formed JSON of the wrong shape, e.g. a string where a list is expected or an instance without
    /// `output`; the message names the field.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's description, naming the field.
        message: String,
    },
    /// A required field is absent.
    #[error("{}: missing field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `Definition` or `label`.
        field: String,
    },
    /// A field is present but its value cannot be used (an empty `output` list, an unknown label).
    #[error("{}: field `{field}`: {message}", path.display())]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The field, with the row or instance where known (`Instances[3].output`, `line 7: label`).
        field: String,
        /// Why it is unusable.
        message: String,
    },
    /// A task file or dataset has no examples.
    #[error("{}: task has no examples", path.display())]
    EmptyTask {
        /// The task file.
        path: PathBuf,
    },
    /// A task named in a split or task list has no file.
    #[error("{}:{line}: task `{task}` is listed but {} does not exist", list.display(), expected.display())]
    MissingTask {
        /// The list that names the task.
        list: PathBuf,
        /// 1-based line of the name in the list.
        line: usize,
        /// The task name.
        task: String,
        /// Where its file was looked for.
        expected: PathBuf,
    },
    /// A YAML template file could not be parsed.
    #[error("{}: invalid template YAML: {message}", path.display())]
    Yaml {
        /// The `templates.yaml` file.
        path: PathBuf,
        /// What the parser saw.
        message: String,
    },
    /// A template name that the template file does not define.
    #[error("{}: unknown template `{name}`", path.display())]
    UnknownTemplate {
        /// The `templates.yaml` file.
        path: PathBuf,
        /// The requested name.
        name: String,
    },
    /// A template that the Jinja engine cannot compile or render, or that renders no usable prompt.
    #[error("{}: template `{template}`: {message}", path.display())]
    Template {
        /// The `templates.yaml` file.
        path: PathBuf,
        /// The template's name.
        template: String,
        /// The engine's message (with the row where known).
        message: String,
    },
    /// A CSV file (StoryCloze) could not be parsed.
    #[error("{}:{line}: invalid CSV: {message}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// What the parser saw.
        message: String,
    },
    /// The tokenizer file could not be loaded, or the tokenizer failed on some text.
    #[error("tokenizer: {message}")]
    Tokenizer {
        /// What went wrong.
        message: String,
    },
    /// An argument that cannot work (k = 0, an empty mixture, a dataset name that is not known).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DataError {
    /// Maps a `std::io::Error` on `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Maps a `serde_json` error on `path`, telling malformed or truncated input (`Json`) apart from
    /// input of the wrong shape (`Schema`). `line_offset` shifts the line for JSON Lines rows.
    pub(crate) fn json(path: &Path, err: &serde_json::Error, line_offset: usize) -> Self {
        use serde_json::error::Category;
        let full = err.to_string();
        // serde_json appends the position; it is kept in `line`/`column` instead (shifted for JSONL).
        let located = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&located).unwrap_or(&full).to_string();
        let (line, column, path) = (err.line() + line_offset, err.column(), path.to_path_buf());
        match err.classify() {
            Category::Io => Self::Io {
                path,
                source: std::io::Error::other(message),
            },
            Category::Syntax | Category::Eof => Self::Json {
                path,
                line,
                column,
                message,
            },
            Category::Data => Self::Schema {
                path,
                line,
                column,
                message,
            },
        }
    }

    /// Shorthand for [`DataError::InvalidField`].
    pub(crate) fn invalid(path: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidField {
            path: path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
