//! Fixture access and numeric comparison shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use mhr_core::io::SafetensorsFile;

pub type Cpu = NdArray<f32>;
pub type Grad = Autodiff<Cpu>;

/// `$MHR_SHARED/fixtures/t5/<name>`, with `shared/` beside the workspace by default.
pub fn fixture(name: &str) -> PathBuf {
    let shared = std::env::var_os("MHR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    shared.join("fixtures/t5").join(name)
}

/// A fixture's `reference.safetensors`.
pub struct Reference(SafetensorsFile);

impl Reference {
    pub fn open(name: &str) -> Self {
        Self(SafetensorsFile::open(fixture(name).join("reference.safetensors")).expect("reference file"))
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains(key)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.names()
    }

    pub fn data(&self, key: &str) -> TensorData {
        self.0.f32(key).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn floats<B: Backend, const D: usize>(&self, key: &str) -> Tensor<B, D> {
        Tensor::from_data(self.data(key), &Default::default())
    }

    pub fn ints<B: Backend, const D: usize>(&self, key: &str) -> Tensor<B, D, Int> {
        Tensor::from_data(
            self.0.i64(key).unwrap_or_else(|e| panic!("{e}")),
            &Default::default(),
        )
    }

    pub fn int_rows(&self, key: &str) -> Vec<Vec<i64>> {
        let d = self.0.i64(key).unwrap_or_else(|e| panic!("{e}"));
        let cols = d.shape[1];
        d.to_vec::<i64>()
            .unwrap()
            .chunks(cols)
            .map(<[i64]>::to_vec)
            .collect()
    }
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff(found: TensorData, expected: TensorData) -> f32 {
    assert_eq!(found.shape, expected.shape, "shapes differ");
    found
        .iter::<f32>()
        .zip(expected.iter::<f32>())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Largest absolute difference relative to the largest magnitude of `expected`.
pub fn max_rel_diff(found: TensorData, expected: TensorData) -> f32 {
    let scale = expected
        .iter::<f32>()
        .map(f32::abs)
        .fold(0.0, f32::max)
        .max(f32::MIN_POSITIVE);
    max_abs_diff(found, expected) / scale
}

/// Asserts `max |found - expected| ≤ tol`, printing the measured error.
pub fn assert_close(what: &str, found: TensorData, expected: TensorData, tol: f32) {
    let err = max_abs_diff(found, expected);
    println!("{what}: max abs error {err:.3e}");
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
}

/// Asserts the error relative to the reference's largest magnitude is at most `tol`.
pub fn assert_rel_close(what: &str, found: TensorData, expected: TensorData, tol: f32) {
    let err = max_rel_diff(found, expected);
    println!("{what}: max rel error {err:.3e}");
    assert!(err <= tol, "{what}: max relative error {err} > {tol}");
}

/// Token rows of an int tensor.
pub fn rows<B: Backend>(t: Tensor<B, 2, Int>) -> Vec<Vec<i64>> {
    let cols = t.dims()[1];
    t.into_data()
        .iter::<i64>()
        .collect::<Vec<_>>()
        .chunks(cols)
        .map(<[i64]>::to_vec)
        .collect()
}
