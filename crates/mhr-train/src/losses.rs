//! Training losses beyond the model's mean token cross entropy.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::batch::IGNORE_INDEX;

/// fairseq's label-smoothed NLL (mttl's SNI loss): per token `(1 − ε)·nll + ε/V · Σ_v −log p_v`, summed
/// over the non-ignored tokens and divided by the batch size.
pub fn label_smoothed_nll<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
    epsilon: f64,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let ignored = labels.clone().equal_elem(IGNORE_INDEX);
    let targets = labels.mask_fill(ignored.clone(), 0).unsqueeze_dim(2);
    let valid = ignored.bool_not().float();
    let log_p = log_softmax(logits, 2);
    let nll = log_p.clone().gather(2, targets).reshape([b, t]).neg();
    let smooth = log_p.sum_dim(2).reshape([b, t]).neg();
    let eps_i = epsilon / v as f64;
    let per_token = nll * (1.0 - epsilon) + smooth * eps_i;
    (per_token * valid).sum() / b as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn label_smoothing_by_hand() {
        // One example, two positions (second ignored), vocabulary of 2 with logits [0, ln 3]: p = [1/4, 3/4].
        let dev = Default::default();
        let logits = Tensor::<NdArray, 3>::from_data([[[0.0f32, 3f32.ln()], [5.0, -5.0]]], &dev);
        let labels = Tensor::<NdArray, 2, Int>::from_data([[1i64, -100]], &dev);
        let eps = 0.1;
        let nll = -(0.75f64).ln();
        let smooth = -(0.25f64).ln() - (0.75f64).ln();
        let expected = (1.0 - eps) * nll + eps / 2.0 * smooth;
        let got: f32 = label_smoothed_nll(logits.clone(), labels.clone(), eps).into_scalar();
        assert!((got as f64 - expected).abs() < 1e-6, "{got} vs {expected}");
        let plain: f32 = label_smoothed_nll(logits, labels, 0.0).into_scalar();
        assert!((plain as f64 - nll).abs() < 1e-6);
    }
}
