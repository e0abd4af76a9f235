//! mhr-models integration tests in one binary (each file a module): the crates are linked and
//! monomorphised once instead of once per test file.

mod adapters;
mod base_models;
mod common;
mod loading;
mod precision;
mod pytorch_bin;
