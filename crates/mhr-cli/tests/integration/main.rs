//! mhr-cli integration tests in one binary (each file a module): the crates are linked and
//! monomorphised once instead of once per test file.

mod cli_errors;
mod cli_fixtures;
mod cli_serve;
mod cli_train;
mod common;
mod units;
