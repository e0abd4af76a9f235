//! The paper's experiments and the synthetic prototype's, end to end (`cargo xtask reproduce`): each preset's
//! settings and reference numbers, its run on `mhr-train`'s loop, and its reports and figures.

mod overrides;
pub mod plots;
mod report;
pub mod sni;
pub mod synthetic;
pub mod t0;

pub use overrides::with_overrides;
pub use report::write_results;

/// The first of `devices`, where a preset builds and evaluates its models; all of them train as
/// data-parallel peers (docs/distributed.md).
fn home<B: burn::tensor::backend::Backend>(
    devices: &[B::Device],
) -> Result<&B::Device, mhr_train::TrainError> {
    devices
        .first()
        .ok_or_else(|| mhr_train::TrainError::Config("a preset needs at least one device".into()))
}
