use std::path::PathBuf;

/// Failures of a training or evaluation run, each naming what is at fault; wrapped errors stay reachable
/// through [`std::error::Error::source`] (print with `{:#}` in anyhow, or [`TrainError::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing `path` failed.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path` (a settings file) does not parse.
    #[error("{}", path.display())]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Burn's recorder could not write or read `what`.
    #[error("checkpoint: {what}")]
    Record {
        what: String,
        #[source]
        source: burn::record::RecorderError,
    },
    #[error("non-finite loss {loss} at step {step}; the last good checkpoint is kept")]
    NonFiniteLoss { step: usize, loss: f64 },
    /// Data-parallel peer `peer` failed; `source` says how.
    #[error("data-parallel peer {peer}")]
    Peer {
        peer: usize,
        #[source]
        source: Box<TrainError>,
    },
    /// A collective operation of peer `peer` failed, or was released because another peer failed.
    #[error("data-parallel peer {peer}, {what}: collective operation failed ({cause})")]
    Collective {
        peer: usize,
        what: String,
        cause: String,
    },
    #[error("data-parallel peer {peer} panicked: {message}")]
    PeerPanicked { peer: usize, message: String },
    #[error("non-finite scores in evaluation: {0}")]
    NonFiniteScores(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Installing the Ctrl-C handler failed.
    #[error("installing the SIGINT handler")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Core(#[from] mhr_core::CoreError),
    #[error(transparent)]
    Model(#[from] mhr_models::ModelError),
    #[error(transparent)]
    Data(#[from] mhr_data::DataError),
}

impl TrainError {
    /// A closure for `map_err` that names `path` on an I/O error.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    /// The message with every cause after it, `: `-separated (anyhow's `{:#}`).
    pub fn chain(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(e) = cause {
            message = format!("{message}: {e}");
            cause = e.source();
        }
        message
    }
}
