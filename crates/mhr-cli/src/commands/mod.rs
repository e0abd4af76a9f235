//! One module per subcommand: its clap `Args` and a `run` returning `anyhow::Result`.

pub mod adapt;
pub mod common;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod run_dir;
pub mod score;
pub mod serve;
pub mod texts;
pub mod train;
