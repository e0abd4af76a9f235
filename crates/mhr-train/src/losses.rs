//! Training losses beyond the model's mean token cross entropy.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::error::TrainError;
use mhr_core::IGNORE_INDEX;

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

/// Log-probability of each label `[r, t]` (0 where ignored) and the 0/1 mask of real labels `[r, t]`.
fn label_log_likelihoods<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [r, t, _] = logits.dims();
    let ignored = labels.clone().equal_elem(IGNORE_INDEX);
    let targets = labels.mask_fill(ignored.clone(), 0).unsqueeze_dim(2);
    let valid = ignored.bool_not().float();
    let picked = log_softmax(logits, 2).gather(2, targets).reshape([r, t]);
    (picked * valid.clone(), valid)
}

/// The T-Few few-shot loss (PAPER.md §2.5) and its three terms, each a `[1]` tensor.
#[derive(Debug, Clone)]
pub struct TfewLoss<B: Backend> {
    /// `lm + mc + unlikelihood` (all three weighted 1, as in every T0 dataset config).
    pub total: Tensor<B, 1>,
    /// Token cross entropy of the correct choices, averaged over their tokens.
    pub lm: Tensor<B, 1>,
    /// Cross entropy over each example's choices, scored by their mean token log-likelihood
    /// (`length_norm = 1`), averaged over the examples.
    pub mc: Tensor<B, 1>,
    /// `−log(1 − p(token) + 0.01)` averaged over the tokens of the wrong choices.
    pub unlikelihood: Tensor<B, 1>,
}

/// Added inside T-Few's unlikelihood log so that a token with p = 1 costs `−log 0.01`, not infinity.
const UNLIKELIHOOD_FLOOR: f64 = 0.01;

/// Stands in for the scores of missing choices when examples have different numbers of them: far below
/// any mean log-likelihood, and finite so that softmax gradients stay numbers.
const NO_CHOICE: f32 = -1e9;

/// T-Few's multiple-choice training loss on a flattened choice batch (mhr-data's `ChoiceBatch` layout):
/// `logits [r, t, v]` and `labels [r, t]` hold one row per (example, choice), each example's choices
/// consecutively, `num_choices[e]` of them, the correct one at `gold[e]`.
///
/// T-Few's own sum also runs over the padding and correct-choice positions it masks to a log-likelihood
/// of −100, each adding the constant `−log 1.01` before the division; that changes the reported value
/// by a parameter-independent offset and no gradient, and is left out here, as PAPER.md states the term.
pub fn tfew_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
    num_choices: &[usize],
    gold: &[usize],
) -> Result<TfewLoss<B>, TrainError> {
    let rows = logits.dims()[0];
    if num_choices.iter().sum::<usize>() != rows || gold.len() != num_choices.len() {
        return Err(TrainError::Config(format!(
            "T-Few loss: {rows} rows of logits for {} examples with {} choices and {} gold indices",
            num_choices.len(),
            num_choices.iter().sum::<usize>(),
            gold.len()
        )));
    }
    if let Some((e, (&n, &g))) = num_choices
        .iter()
        .zip(gold)
        .enumerate()
        .find(|&(_, (&n, &g))| n < 2 || g >= n)
    {
        return Err(TrainError::Config(format!(
            "T-Few loss: example {e} has {n} choices and gold index {g} (needs at least 2 choices, gold below their number)"
        )));
    }
    let device = logits.device();
    let (token_ll, valid) = label_log_likelihoods(logits, labels);
    let starts: Vec<usize> = num_choices
        .iter()
        .scan(0, |offset, &n| {
            let start = *offset;
            *offset += n;
            Some(start)
        })
        .collect();
    let mut is_gold = vec![0f32; rows];
    for (&start, &g) in starts.iter().zip(gold) {
        is_gold[start + g] = 1.0;
    }
    let is_gold = Tensor::<B, 1>::from_floats(is_gold.as_slice(), &device).unsqueeze_dim::<2>(1);

    let gold_tokens = valid.clone() * is_gold.clone();
    let lm = (token_ll.clone() * is_gold.clone()).sum().neg() / gold_tokens.sum();

    // Scores [e, max choices]: each row's mean log-likelihood, gathered per example, missing choices masked.
    let width = num_choices.iter().copied().max().unwrap_or(0);
    let mut index = Vec::with_capacity(num_choices.len() * width);
    let mut missing = Vec::with_capacity(num_choices.len() * width);
    for (&start, &n) in starts.iter().zip(num_choices) {
        for c in 0..width {
            index.push(if c < n { (start + c) as i64 } else { 0 });
            missing.push(c >= n);
        }
    }
    let shape = [num_choices.len(), width];
    let mean_ll = token_ll.clone().sum_dim(1) / valid.clone().sum_dim(1);
    let scores = mean_ll
        .reshape([rows])
        .select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(index, [shape[0] * shape[1]]), &device),
        )
        .reshape(shape)
        .mask_fill(
            Tensor::<B, 2, Bool>::from_data(TensorData::new(missing, shape), &device),
            NO_CHOICE,
        );
    let gold_index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(gold.iter().map(|&g| g as i64).collect::<Vec<_>>(), [gold.len()]),
        &device,
    );
    let mc = log_softmax(scores, 1)
        .gather(1, gold_index.unsqueeze_dim(1))
        .mean()
        .neg();

    let wrong_tokens = valid * is_gold.neg().add_scalar(1.0);
    let unlikely = token_ll
        .exp()
        .neg()
        .add_scalar(1.0 + UNLIKELIHOOD_FLOOR)
        .log()
        .neg();
    let unlikelihood = (unlikely * wrong_tokens.clone()).sum() / wrong_tokens.sum();

    Ok(TfewLoss {
        total: lm.clone() + mc.clone() + unlikelihood.clone(),
        lm,
        mc,
        unlikelihood,
    })
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

    #[test]
    fn tfew_loss_by_hand() {
        // Vocabulary of 2; rows of logits [0, ln 3] give p = [1/4, 3/4], [0, 0] give [1/2, 1/2].
        // Example A, 2 choices, gold 0: choice 0 = tokens [1, 0] (p 3/4, 1/2); choice 1 = [0] (p 1/4).
        // Example B, 3 choices, gold 2: choice 0 = [1] (3/4); choice 1 = [0, 1] (1/4, 1/2); choice 2 = [0] (1/2).
        let l3 = 3f32.ln();
        let (q, h) = ([0.0, l3], [0.0, 0.0]);
        let dev = Default::default();
        let logits = Tensor::<NdArray, 3>::from_data(
            [
                [q, h],
                [q, [7.0, -7.0]],
                [q, [2.0, 1.0]],
                [q, h],
                [h, [-3.0, 3.0]],
            ],
            &dev,
        );
        let labels =
            Tensor::<NdArray, 2, Int>::from_data([[1i64, 0], [0, -100], [1, -100], [0, 1], [0, -100]], &dev);
        let loss = tfew_loss(logits, labels, &[2, 3], &[0, 2]).unwrap();
        let ln = f64::ln;
        // L_LM: mean over the 3 gold tokens of −log p.
        let lm = -(ln(0.75) + ln(0.5) + ln(0.5)) / 3.0;
        // L_MC: choice scores are mean token log-likelihoods; cross entropy at the gold index.
        let ce = |scores: &[f64], gold: usize| -> f64 {
            let z: f64 = scores.iter().map(|s| s.exp()).sum();
            -(scores[gold] - z.ln())
        };
        let a = [(ln(0.75) + ln(0.5)) / 2.0, ln(0.25)];
        let b = [ln(0.75), (ln(0.25) + ln(0.5)) / 2.0, ln(0.5)];
        let mc = (ce(&a, 0) + ce(&b, 2)) / 2.0;
        // L_UL: the 4 wrong-choice tokens, p = 1/4 (A), 3/4, 1/4, 1/2 (B).
        let ul = [0.25, 0.75, 0.25, 0.5]
            .iter()
            .map(|p: &f64| -ln(1.0 - p + 0.01))
            .sum::<f64>()
            / 4.0;
        for (name, got, want) in [
            ("lm", loss.lm, lm),
            ("mc", loss.mc, mc),
            ("unlikelihood", loss.unlikelihood, ul),
            ("total", loss.total, lm + mc + ul),
        ] {
            let got: f32 = got.into_scalar();
            assert!((got as f64 - want).abs() < 1e-5, "{name}: {got} vs {want}");
        }
    }

    #[test]
    fn tfew_loss_rejects_inconsistent_choices() {
        let dev = Default::default();
        let logits = Tensor::<NdArray, 3>::zeros([3, 1, 2], &dev);
        let labels = Tensor::<NdArray, 2, Int>::zeros([3, 1], &dev);
        let err = |n: &[usize], g: &[usize]| {
            tfew_loss(logits.clone(), labels.clone(), n, g)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(
            err(&[2, 2], &[0, 0]).contains("3 rows"),
            "{}",
            err(&[2, 2], &[0, 0])
        );
        assert!(err(&[3], &[3]).contains("gold index 3"));
        assert!(err(&[1, 2], &[0, 0]).contains("example 0 has 1 choices"));
    }
}
