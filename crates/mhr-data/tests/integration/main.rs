//! mhr-data integration tests in one binary (each file a module): the crates are linked and
//! monomorphised once instead of once per test file.

mod common;
mod malformed;
mod sni;
mod t0;
mod tokenizer;
