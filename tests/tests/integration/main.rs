//! tests integration tests in one binary (each file a module): the crates are linked and
//! monomorphised once instead of once per test file.

mod core_routing;
mod fuzz_loaders;
mod hub;
mod reproduce_presets;
mod router_granularity;
mod wgpu_parity;
