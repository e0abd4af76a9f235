//! The number format of a model's frozen base: f32, or bf16 as the paper's 3B runs (PAPER.md §2.4).

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The dtype of the base weights and of the activations between them.
///
/// Under `bf16` the base weights are stored and multiplied in bf16, while adapters, routing logits and
/// optimiser state stay f32 and the numerically sensitive steps run in f32 (layer-norm variance, attention
/// softmax, loss), as transformers + peft do for a model loaded with `dtype=torch.bfloat16`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// Refuses a precision the backend cannot compute in (bf16 on ndarray or wgpu), naming both.
    pub fn check<B: Backend>(self, device: &B::Device) -> Result<(), ModelError> {
        if B::supports_dtype(device, self.dtype()) {
            Ok(())
        } else {
            Err(ModelError::InvalidInput {
                name: "precision",
                reason: format!(
                    "{self} is not supported by the {} backend; use flex (the CPU default) or cuda",
                    B::name(device)
                ),
            })
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    /// The names [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Precision::F32, Precision::Bf16]
            .into_iter()
            .find(|p| p.to_string() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: expected f32 or bf16"))
    }
}
