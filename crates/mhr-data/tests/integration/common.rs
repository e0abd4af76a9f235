//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// The shared data folder: `$MHR_SHARED` if set, else `shared/` beside the project checkout.
pub fn shared() -> PathBuf {
    std::env::var_os("MHR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")))
}

/// The shipped Super-NaturalInstructions subset.
#[allow(dead_code)] // each test binary uses its own subset of these helpers
pub fn sni_root() -> PathBuf {
    shared().join("data/sni")
}

/// The shipped T0 held-out evaluation data.
#[allow(dead_code)]
pub fn t0_root() -> PathBuf {
    shared().join("data/t0eval")
}
