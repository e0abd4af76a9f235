//! mhr-train integration tests in one binary (each file a module): the crates are linked and
//! monomorphised once instead of once per test file.

mod data_parallel;
mod training;
