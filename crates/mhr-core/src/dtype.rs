//! Mixed precision: adapters keep their own dtype (f32) on a base of another (bf16), as peft's.

use burn::prelude::*;
use burn::tensor::DType;

/// `x` in `dtype`: itself when it already is, so that an all-f32 model runs exactly the ops it always ran.
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}
