use thiserror::Error;

/// A request refused before it reaches the model: the field it names and why. The server answers it with
/// a 4xx status and `{"error": {"field": …, "message": …}}`; other requests are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{field}`: {message}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    /// The field's path in the request (`task`, `inputs[2]`, `choices`); `body` for the request as a whole.
    pub field: String,
    pub message: String,
}

/// What was wrong with a request, for its status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorKind {
    /// Malformed JSON, a wrong type, a missing or unknown field, a value out of range (400).
    Invalid,
    /// A task the server does not know (404).
    UnknownTask,
    /// An input longer than the server takes (413).
    TooLong,
    /// A well-formed request the server cannot carry out (422): a task folder that is not a routing-only adaptation.
    Unprocessable,
}

impl RequestError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: RequestErrorKind::Invalid,
            field: field.into(),
            message: message.into(),
        }
    }

    /// `name` is not among the `served` tasks.
    pub fn unknown_task(name: &str, served: usize) -> Self {
        Self {
            kind: RequestErrorKind::UnknownTask,
            field: "task".into(),
            message: format!("unknown task `{name}`: not one of the {served} tasks served"),
        }
    }

    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: RequestErrorKind::Unprocessable,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn too_long(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: RequestErrorKind::TooLong,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A failure of the serving side itself (not of one request's content).
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] mhr_models::ModelError),
    #[error(transparent)]
    Core(#[from] mhr_core::CoreError),
    #[error(transparent)]
    Train(#[from] mhr_train::TrainError),
    #[error(transparent)]
    Data(#[from] mhr_data::DataError),
    #[error("{0}")]
    Config(String),
    #[error("the model panicked on this batch: {0}")]
    Panicked(String),
}
