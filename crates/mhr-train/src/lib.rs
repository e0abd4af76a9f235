//! mhr-train
