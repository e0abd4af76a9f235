//! The paper's experiments end to end (`cargo xtask reproduce`): presets, result rows and reports.

pub mod plots;
mod report;
pub mod sni;
pub mod synthetic;
pub mod t0;

pub use report::{ResultRow, Results, write_results};
