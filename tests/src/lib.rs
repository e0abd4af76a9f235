//! Helpers for the workspace-level integration tests: where `../shared` is, and tolerance checks.

use std::path::PathBuf;

/// `../shared` beside the repository (override with `MHR_SHARED`).
pub fn shared_dir() -> PathBuf {
    std::env::var_os("MHR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

/// A path under `../shared/fixtures/t5`.
pub fn t5_fixture(rel: &str) -> PathBuf {
    shared_dir().join("fixtures/t5").join(rel)
}

/// Largest absolute difference; panics with `what` when lengths differ.
pub fn max_abs_diff(actual: &[f32], expected: &[f32], what: &str) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f32::max)
}

/// Asserts `max|a − e| ≤ atol`.
pub fn assert_abs_close(actual: &[f32], expected: &[f32], atol: f32, what: &str) {
    let d = max_abs_diff(actual, expected, what);
    assert!(d <= atol, "{what}: max abs diff {d:e} > {atol:e}");
}

/// Asserts `max|a − e| ≤ rtol · max|e|` (relative to the tensor's scale, robust to zeros).
pub fn assert_rel_close(actual: &[f32], expected: &[f32], rtol: f32, what: &str) {
    let d = max_abs_diff(actual, expected, what);
    let scale = expected
        .iter()
        .fold(0.0f32, |m, e| m.max(e.abs()))
        .max(f32::MIN_POSITIVE);
    assert!(
        d <= rtol * scale,
        "{what}: max abs diff {d:e} > {rtol:e} × {scale:e}"
    );
}

/// Whether the WGPU parity tests must run (CI sets `MHR_REQUIRE_WGPU=1`; elsewhere they skip with a
/// message when no Vulkan adapter is present).
pub fn wgpu_required() -> bool {
    std::env::var("MHR_REQUIRE_WGPU").is_ok_and(|v| v == "1")
}

/// Burn's CPU backends draw from one process-wide RNG, and all workspace tests share one process: a test that
/// seeds it, or draws from it, holds this lock so that no seeded run sees another test's draws.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}
