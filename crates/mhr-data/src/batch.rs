//! Padding encoded examples into batches: as plain `i64` data (backend-free, e.g. for safetensors) and
//! as Burn tensors through [`Batcher`]s.
//!
//! Layout: `input_ids [b, s]` padded with the pad id to the longest source in the batch,
//! `attention_mask [b, s]` (1 real, 0 pad), `labels [b, t]` padded with [`IGNORE_INDEX`] (-100) to the
//! longest target, `task_ids [b]`. Multiple-choice batches are flattened to one row per
//! (example, choice) pair, with the map back to examples.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::{Backend, Device, Int, Tensor, TensorData};

use mhr_core::IGNORE_INDEX;

use crate::encode::{EncodedChoices, EncodedExample};

/// A padded batch as row-major `i64` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchData {
    /// Rows `b`.
    pub batch_size: usize,
    /// Padded source length `s`.
    pub source_len: usize,
    /// Padded target length `t`.
    pub target_len: usize,
    /// `[b, s]`.
    pub input_ids: Vec<i64>,
    /// `[b, s]`, 1 for real tokens and 0 for padding.
    pub attention_mask: Vec<i64>,
    /// `[b, t]`, -100 past each target's end.
    pub labels: Vec<i64>,
    /// `[b]`.
    pub task_ids: Vec<i64>,
}

/// Appends `ids` then `fill` up to `len`.
fn push_padded(out: &mut Vec<i64>, ids: &[u32], len: usize, fill: i64) {
    out.extend(ids.iter().map(|&id| i64::from(id)));
    out.extend(std::iter::repeat_n(fill, len.saturating_sub(ids.len())));
}

/// Task ids fit `i64` on every platform we build for; saturate rather than wrap if one did not.
fn id_i64(id: usize) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl BatchData {
    /// Pads `(source, target, task id)` rows.
    fn from_rows<'a>(rows: impl Iterator<Item = (&'a [u32], &'a [u32], usize)> + Clone, pad_id: u32) -> Self {
        // A batch with rows has at least one position: one whose targets are all empty then has only ignored
        // labels (a NaN mean loss, as in PyTorch) instead of a zero-width tensor.
        let source_len = rows
            .clone()
            .map(|(s, _, _)| s.len())
            .max()
            .map_or(0, |n| n.max(1));
        let target_len = rows
            .clone()
            .map(|(_, t, _)| t.len())
            .max()
            .map_or(0, |n| n.max(1));
        let mut data = Self {
            batch_size: 0,
            source_len,
            target_len,
            input_ids: Vec::new(),
            attention_mask: Vec::new(),
            labels: Vec::new(),
            task_ids: Vec::new(),
        };
        for (source, target, task_id) in rows {
            push_padded(&mut data.input_ids, source, source_len, i64::from(pad_id));
            data.attention_mask.extend(std::iter::repeat_n(1, source.len()));
            data.attention_mask
                .extend(std::iter::repeat_n(0, source_len - source.len()));
            push_padded(&mut data.labels, target, target_len, IGNORE_INDEX);
            data.task_ids.push(id_i64(task_id));
            data.batch_size += 1;
        }
        data
    }

    /// Pads generation examples to the longest source and target of the batch.
    pub fn collate(items: &[EncodedExample], pad_id: u32) -> Self {
        Self::from_rows(
            items
                .iter()
                .map(|e| (e.input_ids.as_slice(), e.labels.as_slice(), e.task_id)),
            pad_id,
        )
    }

    /// Rows `rows` of the batch, padded as the whole batch is (a data-parallel peer's share of it).
    ///
    /// # Panics
    /// When `rows` reaches past the batch.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let (s, t) = (self.source_len, self.target_len);
        Self {
            batch_size: rows.len(),
            source_len: s,
            target_len: t,
            input_ids: self.input_ids[rows.start * s..rows.end * s].to_vec(),
            attention_mask: self.attention_mask[rows.start * s..rows.end * s].to_vec(),
            labels: self.labels[rows.start * t..rows.end * t].to_vec(),
            task_ids: self.task_ids[rows].to_vec(),
        }
    }

    /// Target tokens the loss counts (labels other than [`IGNORE_INDEX`]).
    pub fn label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Real (non-pad) source and target tokens, for throughput.
    pub fn tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count() + self.label_tokens()
    }

    /// The batch on `device` as Int tensors.
    pub fn to_tensors<B: Backend>(&self, device: &Device<B>) -> Seq2SeqBatch<B> {
        let (b, s, t) = (self.batch_size, self.source_len, self.target_len);
        let int2 = |values: &[i64], cols: usize| {
            Tensor::<B, 2, Int>::from_data(TensorData::new(values.to_vec(), [b, cols]), device)
        };
        Seq2SeqBatch {
            input_ids: int2(&self.input_ids, s),
            attention_mask: int2(&self.attention_mask, s),
            labels: int2(&self.labels, t),
            task_ids: Tensor::from_data(TensorData::new(self.task_ids.clone(), [b]), device),
        }
    }
}

/// A flattened multiple-choice batch as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceBatchData {
    /// One row per (example, choice) pair, examples in order and their choices in order; the task id
    /// is repeated for each pair (as mttl's `repeat_interleave`).
    pub pairs: BatchData,
    /// For each row, the example it belongs to.
    pub example_index: Vec<usize>,
    /// For each row, the choice it scores.
    pub choice_index: Vec<usize>,
    /// For each example, its number of choices.
    pub num_choices: Vec<usize>,
    /// For each example, the correct choice.
    pub gold: Vec<usize>,
}

impl ChoiceBatchData {
    /// Flattens and pads multiple-choice examples.
    pub fn collate(items: &[EncodedChoices], pad_id: u32) -> Self {
        let rows = items.iter().flat_map(|item| {
            item.choices
                .iter()
                .map(move |choice| (item.input_ids.as_slice(), choice.as_slice(), item.task_id))
        });
        let (example_index, choice_index) = items
            .iter()
            .enumerate()
            .flat_map(|(e, item)| (0..item.choices.len()).map(move |c| (e, c)))
            .unzip();
        Self {
            pairs: BatchData::from_rows(rows, pad_id),
            example_index,
            choice_index,
            num_choices: items.iter().map(|item| item.choices.len()).collect(),
            gold: items.iter().map(|item| item.gold).collect(),
        }
    }

    /// The pairs on `device` as tensors, with the map back to examples.
    pub fn to_tensors<B: Backend>(&self, device: &Device<B>) -> ChoiceBatch<B> {
        ChoiceBatch {
            pairs: self.pairs.to_tensors(device),
            example_index: self.example_index.clone(),
            num_choices: self.num_choices.clone(),
            gold: self.gold.clone(),
        }
    }
}

/// A padded sequence-to-sequence batch on a Burn device.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatch<B: Backend> {
    /// `[b, s]` source ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[b, s]`, 1 real / 0 pad.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[b, t]` target ids, -100 on padding.
    pub labels: Tensor<B, 2, Int>,
    /// `[b]` routing rows.
    pub task_ids: Tensor<B, 1, Int>,
}

/// A flattened multiple-choice batch on a Burn device.
#[derive(Debug, Clone)]
pub struct ChoiceBatch<B: Backend> {
    /// One row per (example, choice) pair.
    pub pairs: Seq2SeqBatch<B>,
    /// For each row, its example.
    pub example_index: Vec<usize>,
    /// For each example, its number of choices.
    pub num_choices: Vec<usize>,
    /// For each example, the correct choice.
    pub gold: Vec<usize>,
}

/// Burn batcher for generation examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seq2SeqBatcher {
    /// The tokenizer's pad id.
    pub pad_id: u32,
}

impl<B: Backend> Batcher<B, EncodedExample, Seq2SeqBatch<B>> for Seq2SeqBatcher {
    fn batch(&self, items: Vec<EncodedExample>, device: &Device<B>) -> Seq2SeqBatch<B> {
        BatchData::collate(&items, self.pad_id).to_tensors(device)
    }
}

/// Burn batcher for multiple-choice examples (rank classification).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoiceBatcher {
    /// The tokenizer's pad id.
    pub pad_id: u32,
}

impl<B: Backend> Batcher<B, EncodedChoices, ChoiceBatch<B>> for ChoiceBatcher {
    fn batch(&self, items: Vec<EncodedChoices>, device: &Device<B>) -> ChoiceBatch<B> {
        ChoiceBatchData::collate(&items, self.pad_id).to_tensors(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    fn ex(input: &[u32], labels: &[u32], task_id: usize) -> EncodedExample {
        EncodedExample {
            input_ids: input.to_vec(),
            labels: labels.to_vec(),
            task_id,
        }
    }

    #[test]
    fn pads_to_the_longest_with_mask_and_minus_100() {
        let items = vec![ex(&[5, 6, 1], &[7, 1], 2), ex(&[8, 1], &[9, 10, 11, 1], 0)];
        let data = BatchData::collate(&items, 0);
        assert_eq!((data.batch_size, data.source_len, data.target_len), (2, 3, 4));
        assert_eq!(data.input_ids, vec![5, 6, 1, 8, 1, 0]);
        assert_eq!(data.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(data.labels, vec![7, 1, -100, -100, 9, 10, 11, 1]);
        assert_eq!(data.task_ids, vec![2, 0]);
        // 3 + 2 source tokens and 2 + 4 target tokens; padding does not count.
        assert_eq!(data.tokens(), 11);
        assert_eq!(data.label_tokens(), 6);
        // A peer's share keeps the whole batch's padding.
        let second = data.rows(1..2);
        assert_eq!(
            (second.batch_size, second.source_len, second.target_len),
            (1, 3, 4)
        );
        assert_eq!(second.input_ids, vec![8, 1, 0]);
        assert_eq!(second.labels, vec![9, 10, 11, 1]);
        assert_eq!((second.label_tokens(), second.task_ids), (4, vec![0]));

        let batch: Seq2SeqBatch<B> = Seq2SeqBatcher { pad_id: 0 }.batch(items, &Default::default());
        assert_eq!(batch.input_ids.dims(), [2, 3]);
        assert_eq!(batch.labels.dims(), [2, 4]);
        assert_eq!(batch.labels.to_data().to_vec::<i64>().unwrap(), data.labels);
        assert_eq!(
            batch.attention_mask.to_data().to_vec::<i64>().unwrap(),
            data.attention_mask
        );
        assert_eq!(batch.input_ids.to_data().to_vec::<i64>().unwrap(), data.input_ids);
        assert_eq!(batch.task_ids.to_data().to_vec::<i64>().unwrap(), vec![2, 0]);
    }

    #[test]
    fn multiple_choice_flattens_pairs_with_a_map_back() {
        let items = vec![
            EncodedChoices {
                input_ids: vec![4, 1],
                choices: vec![vec![5, 1], vec![6, 7, 1]],
                gold: 1,
                task_id: 3,
            },
            EncodedChoices {
                input_ids: vec![8, 9, 10, 1],
                choices: vec![vec![11, 1]; 3],
                gold: 2,
                task_id: 0,
            },
        ];
        let data = ChoiceBatchData::collate(&items, 0);
        assert_eq!(data.example_index, vec![0, 0, 1, 1, 1]);
        assert_eq!(data.choice_index, vec![0, 1, 0, 1, 2]);
        assert_eq!(data.num_choices, vec![2, 3]);
        assert_eq!(data.gold, vec![1, 2]);
        let p = &data.pairs;
        assert_eq!((p.batch_size, p.source_len, p.target_len), (5, 4, 3));
        assert_eq!(&p.input_ids[..8], &[4, 1, 0, 0, 4, 1, 0, 0]);
        assert_eq!(&p.attention_mask[..8], &[1, 1, 0, 0, 1, 1, 0, 0]);
        assert_eq!(&p.labels[..6], &[5, 1, -100, 6, 7, 1]);
        assert_eq!(p.task_ids, vec![3, 3, 0, 0, 0]);

        let batch: ChoiceBatch<B> = ChoiceBatcher { pad_id: 0 }.batch(items, &Default::default());
        assert_eq!(batch.pairs.input_ids.dims(), [5, 4]);
        assert_eq!(batch.pairs.labels.to_data().to_vec::<i64>().unwrap(), p.labels);
        assert_eq!(batch.example_index, data.example_index);
    }

    #[test]
    fn empty_batches_have_zero_rows() {
        let data = BatchData::collate(&[], 0);
        assert_eq!((data.batch_size, data.source_len, data.target_len), (0, 0, 0));
        let batch = data.to_tensors::<B>(&Default::default());
        assert_eq!(batch.input_ids.dims(), [0, 0]);
        assert_eq!(batch.task_ids.dims(), [0]);
    }
}
