/// Failures of a training or evaluation run, each naming what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Io(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("non-finite loss {loss} at step {step}; the last good checkpoint is kept")]
    NonFiniteLoss { step: usize, loss: f64 },
    #[error("non-finite scores in evaluation: {0}")]
    NonFiniteScores(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Core(#[from] mhr_core::CoreError),
    #[error(transparent)]
    Model(#[from] mhr_models::ModelError),
}
