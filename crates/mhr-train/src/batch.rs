use burn::prelude::*;

/// Labels ignored by the loss (PyTorch's convention, kept so batches match transformers').
pub const IGNORE_INDEX: i64 = -100;

/// A tokenised seq2seq example with its task id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
    pub task_id: usize,
}

/// A padded batch on a device: pad 0 on the right, labels padded with [`IGNORE_INDEX`].
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
    pub labels: Tensor<B, 2, Int>,
    pub task_ids: Tensor<B, 1, Int>,
    /// Real (non-pad) source + target tokens, for throughput.
    pub tokens: usize,
}

impl<B: Backend> TrainBatch<B> {
    pub fn from_examples(examples: &[TokenizedExample], pad: i64, device: &B::Device) -> Self {
        let b = examples.len();
        let s = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let t = examples.iter().map(|e| e.labels.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad; b * s];
        let mut mask = vec![0i64; b * s];
        let mut labels = vec![IGNORE_INDEX; b * t];
        let mut tokens = 0;
        for (i, e) in examples.iter().enumerate() {
            ids[i * s..i * s + e.input_ids.len()].copy_from_slice(&e.input_ids);
            mask[i * s..i * s + e.input_ids.len()].fill(1);
            labels[i * t..i * t + e.labels.len()].copy_from_slice(&e.labels);
            tokens += e.input_ids.len() + e.labels.len();
        }
        let task_ids: Vec<i64> = examples.iter().map(|e| e.task_id as i64).collect();
        Self {
            input_ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
            attention_mask: Tensor::from_data(TensorData::new(mask, [b, s]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b, t]), device),
            task_ids: Tensor::from_data(TensorData::new(task_ids, [b]), device),
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn pads_right_with_ignored_labels() {
        let a = TokenizedExample {
            input_ids: vec![5, 6, 1],
            labels: vec![7, 1],
            task_id: 2,
        };
        let b = TokenizedExample {
            input_ids: vec![9, 1],
            labels: vec![8, 9, 1],
            task_id: 0,
        };
        let batch = TrainBatch::<NdArray>::from_examples(&[a, b], 0, &Default::default());
        let ints = |t: Tensor<NdArray, 2, Int>| t.into_data().to_vec::<i64>().unwrap();
        assert_eq!(ints(batch.input_ids), vec![5, 6, 1, 9, 1, 0]);
        assert_eq!(ints(batch.attention_mask), vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(ints(batch.labels), vec![7, 1, -100, 8, 9, 1]);
        assert_eq!(batch.task_ids.into_data().to_vec::<i64>().unwrap(), vec![2, 0]);
        assert_eq!(batch.tokens, 10);
    }
}
