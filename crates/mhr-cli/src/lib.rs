//! The `mhr` command line, and the backend selection shared with `xtask`.

pub mod commands;
pub mod device;
