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
