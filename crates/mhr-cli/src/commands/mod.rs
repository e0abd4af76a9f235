//! One module per subcommand: its clap `Args` and a `run` returning `anyhow::Result`.

pub mod inspect;
