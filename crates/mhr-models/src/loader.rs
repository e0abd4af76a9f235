//! Where a model's parameters come from: a HuggingFace checkpoint (single or sharded safetensors, memory-mapped,
//! or single or sharded `pytorch_model.bin`; either read one tensor at a time) or HF's random initialisation.
//!
//! The model is built by one code path that asks a [`WeightSource`] for each tensor under its HF name,
//! so loading and initialising cannot disagree on names or shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::{DType, Distribution, TensorCreationOptions};
use mhr_core::io::SafetensorsFile;
use mhr_core::to_dtype;
use serde::Deserialize;

use crate::error::ModelError;
use crate::pytorch::PytorchFile;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const PYTORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";
pub const PYTORCH_WEIGHTS_INDEX_FILE: &str = "pytorch_model.bin.index.json";

/// How a tensor is drawn when it is not read from a checkpoint (transformers' `T5PreTrainedModel._init_weights`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Init {
    Normal { std: f64 },
    Ones,
}

pub(crate) trait WeightSource<B: Backend> {
    /// A tensor under its HF name, in HF's layout.
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError>;

    /// A linear layer's weight in Burn's `[d_in, d_out]` layout (HF stores `[d_out, d_in]` under `key`).
    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, std: f64) -> Result<Tensor<B, 2>, ModelError>;

    /// The first of `keys` that exists (a tensor saved under one of several tied names).
    fn tensor_any<const D: usize>(
        &mut self,
        keys: &[&str],
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError>;
}

/// Random initialisation with transformers' standard deviations, each tensor drawn in f32 and stored in `dtype`
/// (a bf16 model never exists in f32 as a whole).
pub(crate) struct RandomInit<'a, B: Backend> {
    pub device: &'a B::Device,
    pub dtype: DType,
}

impl<B: Backend> WeightSource<B> for RandomInit<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        _key: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        let tensor = match init {
            Init::Normal { std } => Tensor::random(shape, Distribution::Normal(0.0, std), self.device),
            Init::Ones => Tensor::ones(shape, self.device),
        };
        Ok(to_dtype(tensor, self.dtype))
    }

    fn linear(&mut self, key: &str, d_in: usize, d_out: usize, std: f64) -> Result<Tensor<B, 2>, ModelError> {
        self.tensor(key, [d_in, d_out], Init::Normal { std })
    }

    fn tensor_any<const D: usize>(
        &mut self,
        keys: &[&str],
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        self.tensor(keys.first().copied().unwrap_or_default(), shape, init)
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// How the files of a checkpoint are stored.
#[derive(Debug, Clone, Copy)]
enum Format {
    Safetensors,
    Pytorch,
}

/// The layouts a checkpoint folder may have, in transformers' order of preference: safetensors first.
const LAYOUTS: [(&str, &str, Format); 2] = [
    (WEIGHTS_FILE, WEIGHTS_INDEX_FILE, Format::Safetensors),
    (PYTORCH_WEIGHTS_FILE, PYTORCH_WEIGHTS_INDEX_FILE, Format::Pytorch),
];

/// Whether `dir` holds weights in one of the layouts [`T5ForConditionalGeneration::load`] reads.
///
/// [`T5ForConditionalGeneration::load`]: crate::T5ForConditionalGeneration::load
pub fn has_weights(dir: &Path) -> bool {
    LAYOUTS
        .iter()
        .any(|(single, index, _)| dir.join(single).is_file() || dir.join(index).is_file())
}

/// The weight layouts in order of preference: a single file and the index of its shards.
#[cfg(feature = "hub")]
pub(crate) fn weight_layouts() -> impl Iterator<Item = (&'static str, &'static str)> {
    LAYOUTS.iter().map(|&(single, index, _)| (single, index))
}

/// One file of a checkpoint: a memory-mapped safetensors file or a PyTorch archive read lazily.
enum WeightFile {
    Safetensors(SafetensorsFile),
    Pytorch(PytorchFile),
}

impl WeightFile {
    fn open(path: &Path, format: Format) -> Result<Self, ModelError> {
        Ok(match format {
            Format::Safetensors => Self::Safetensors(SafetensorsFile::open(path)?),
            Format::Pytorch => Self::Pytorch(PytorchFile::open(path)?),
        })
    }

    fn path(&self) -> &Path {
        match self {
            Self::Safetensors(f) => f.path(),
            Self::Pytorch(f) => f.path(),
        }
    }

    fn names(&self) -> Vec<String> {
        match self {
            Self::Safetensors(f) => f.names(),
            Self::Pytorch(f) => f.names(),
        }
    }

    fn contains(&self, key: &str) -> bool {
        match self {
            Self::Safetensors(f) => f.contains(key),
            Self::Pytorch(f) => f.contains(key),
        }
    }

    fn shape(&self, key: &str) -> Option<Vec<usize>> {
        match self {
            Self::Safetensors(f) => f.shape(key),
            Self::Pytorch(f) => f.shape(key),
        }
    }

    /// A float tensor converted to f32.
    fn f32(&mut self, key: &str) -> Result<TensorData, ModelError> {
        match self {
            Self::Safetensors(f) => Ok(f.f32(key)?),
            Self::Pytorch(f) => f.f32(key),
        }
    }
}

/// The weight files of a checkpoint folder, with the keys read so far.
pub(crate) struct Checkpoint<'a, B: Backend> {
    files: Vec<WeightFile>,
    /// Key → index in `files`.
    keys: BTreeMap<String, usize>,
    taken: BTreeSet<String>,
    /// Named in errors about missing keys: the single file, or the shard index.
    listing: PathBuf,
    device: &'a B::Device,
    /// What each tensor becomes on the device, one at a time (the host holds one tensor's f32 copy at most).
    dtype: DType,
}

impl<'a, B: Backend> Checkpoint<'a, B> {
    /// Opens the first layout of [`LAYOUTS`] the folder has: `model.safetensors`, the shards listed by
    /// `model.safetensors.index.json`, `pytorch_model.bin`, or the shards of `pytorch_model.bin.index.json`.
    pub fn open(dir: &Path, device: &'a B::Device, dtype: DType) -> Result<Self, ModelError> {
        for (single, index, format) in LAYOUTS {
            let single = dir.join(single);
            let index = dir.join(index);
            let (files, keys, listing) = if single.is_file() {
                let file = WeightFile::open(&single, format)?;
                let keys = file.names().into_iter().map(|k| (k, 0)).collect();
                (vec![file], keys, single)
            } else if index.is_file() {
                let (files, keys) = open_shards(dir, &index, format)?;
                (files, keys, index)
            } else {
                continue;
            };
            return Ok(Self {
                files,
                keys,
                taken: BTreeSet::new(),
                listing,
                device,
                dtype,
            });
        }
        Err(ModelError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// A tensor of `dtype` on the device (without it, `from_data` takes the device's default float dtype).
    fn options(&self) -> TensorCreationOptions<B> {
        TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype)
    }

    /// Reads `key` as f32 after checking its shape, and marks it used.
    fn read(&mut self, key: &str, shape: &[usize]) -> Result<TensorData, ModelError> {
        let Some(&i) = self.keys.get(key) else {
            return Err(ModelError::MissingTensor {
                path: self.listing.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
            });
        };
        let file = &mut self.files[i];
        let found = file.shape(key).unwrap_or_default();
        if found != shape {
            return Err(ModelError::ShapeMismatch {
                path: file.path().to_path_buf(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found,
            });
        }
        let data = file.f32(key)?;
        self.taken.insert(key.to_string());
        Ok(data)
    }

    /// Fails on the first key that no parameter used, unless `optional` lists it with its shape (tied copies).
    pub fn finish(self, optional: &[(&str, Vec<usize>)]) -> Result<(), ModelError> {
        for (key, &i) in &self.keys {
            if self.taken.contains(key) {
                continue;
            }
            let file = &self.files[i];
            let found = file.shape(key).unwrap_or_default();
            match optional.iter().find(|(k, _)| k == key) {
                Some((_, expected)) if *expected == found => {}
                Some((_, expected)) => {
                    return Err(ModelError::ShapeMismatch {
                        path: file.path().to_path_buf(),
                        key: key.clone(),
                        expected: expected.clone(),
                        found,
                    });
                }
                None => {
                    return Err(ModelError::UnexpectedTensor {
                        path: file.path().to_path_buf(),
                        key: key.clone(),
                        shape: found,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The shard file names an index lists, each once, validated as plain file names.
#[cfg(feature = "hub")]
pub(crate) fn shard_names(index_path: &Path) -> Result<BTreeSet<String>, ModelError> {
    let index: ShardIndex = mhr_core::io::read_json(index_path)?;
    let mut names = BTreeSet::new();
    for (key, shard) in index.weight_map {
        check_shard_name(index_path, &key, &shard)?;
        names.insert(shard);
    }
    Ok(names)
}

/// A shard must be a file of the checkpoint folder, never a path out of it.
fn check_shard_name(index_path: &Path, key: &str, shard: &str) -> Result<(), ModelError> {
    if Path::new(shard).file_name().and_then(|n| n.to_str()) != Some(shard) {
        return Err(ModelError::Config {
            path: index_path.to_path_buf(),
            reason: format!("shard `{shard}` of `{key}` is not a file name in the checkpoint folder"),
        });
    }
    Ok(())
}

/// The shards named by a `*.index.json` weight map, each opened once, and the shard of every key.
fn open_shards(
    dir: &Path,
    index_path: &Path,
    format: Format,
) -> Result<(Vec<WeightFile>, BTreeMap<String, usize>), ModelError> {
    let index: ShardIndex = mhr_core::io::read_json(index_path)?;
    let mut files: Vec<WeightFile> = Vec::new();
    let mut keys = BTreeMap::new();
    let mut shard_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, shard) in &index.weight_map {
        check_shard_name(index_path, key, shard)?;
        let i = match shard_of.get(shard.as_str()) {
            Some(&i) => i,
            None => {
                files.push(WeightFile::open(&dir.join(shard), format)?);
                shard_of.insert(shard, files.len() - 1);
                files.len() - 1
            }
        };
        if !files[i].contains(key) {
            return Err(ModelError::Config {
                path: index_path.to_path_buf(),
                reason: format!("`{key}` is not in its shard `{shard}`"),
            });
        }
        keys.insert(key.clone(), i);
    }
    Ok((files, keys))
}

impl<B: Backend> WeightSource<B> for Checkpoint<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        let data = self.read(key, &shape)?.convert_dtype(self.dtype);
        Ok(Tensor::from_data(data, self.options()))
    }

    fn linear(
        &mut self,
        key: &str,
        d_in: usize,
        d_out: usize,
        _std: f64,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let data = transpose(self.read(key, &[d_out, d_in])?, d_out, d_in).convert_dtype(self.dtype);
        Ok(Tensor::from_data(data, self.options()))
    }

    fn tensor_any<const D: usize>(
        &mut self,
        keys: &[&str],
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<B, D>, ModelError> {
        let key = keys
            .iter()
            .find(|k| self.keys.contains_key(**k))
            .or(keys.first())
            .copied()
            .unwrap_or_default();
        self.tensor(key, shape, init)
    }
}

/// `[rows, cols]` → `[cols, rows]` on the host, so parameters are contiguous in Burn's layout.
fn transpose(data: TensorData, rows: usize, cols: usize) -> TensorData {
    let v: Vec<f32> = data.iter::<f32>().collect();
    let mut out = vec![0f32; v.len()];
    for (i, row) in v.chunks_exact(cols).enumerate() {
        for (j, x) in row.iter().enumerate() {
            out[j * rows + i] = *x;
        }
    }
    TensorData::new(out, [cols, rows])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let t = transpose(TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]), 2, 3);
        assert_eq!(t.shape.to_vec(), vec![3, 2]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
    }
}
