//! `pytorch_model.bin` checkpoints (T0-3B ships only that) through burn-store's PyTorch reader: the pickle
//! is parsed when the file is opened, and each tensor's bytes are read from the archive only when asked for,
//! so a checkpoint never has to fit in memory twice.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;
use burn_store::pytorch::lazy_data::LazyDataSource;
use burn_store::pytorch::reader::FileFormat;
use mhr_core::CoreError;

use crate::error::ModelError;

/// One `.bin` file: its tensors' names, shapes and dtypes, with their data still in the file.
pub(crate) struct PytorchFile {
    path: PathBuf,
    tensors: HashMap<String, TensorSnapshot>,
    format: FileFormat,
    /// Whether every entry of the zip archive has been read once without error (see [`Self::f32`]).
    verified: bool,
}

impl PytorchFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let reader = PytorchReader::new(&path).map_err(|e| match LazyDataSource::from_zip(&path) {
            // burn-store falls back to the legacy formats when the zip cannot be opened and reports their
            // error ("invalid pickle opcode"); for a file that starts as a zip, the zip's error is the reason.
            Err(zip) if is_zip(&path) => unreadable(&path, format!("damaged zip archive: {zip}")),
            _ => unreadable(&path, e),
        })?;
        let format = reader.metadata().format_type.clone();
        Ok(Self {
            path,
            tensors: reader.into_tensors(),
            format,
            verified: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.to_vec())
    }

    /// A float tensor converted to f32 (from f32, f64, f16 or bf16).
    ///
    /// burn-store's reader yields zeros instead of an error when an archive entry cannot be read (a CRC
    /// mismatch, a missing entry), so a tensor that comes back all zeros has every entry of the archive read
    /// once: corruption becomes an error naming the file, never a silently zeroed weight.
    pub fn f32(&mut self, key: &str) -> Result<TensorData, ModelError> {
        let Some(snapshot) = self.tensors.get(key) else {
            return Err(CoreError::MissingTensor {
                path: self.path.clone(),
                key: key.to_string(),
            }
            .into());
        };
        if !matches!(snapshot.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return Err(CoreError::Dtype {
                path: self.path.clone(),
                key: key.to_string(),
                dtype: format!("{:?}", snapshot.dtype),
                wanted: "f32",
            }
            .into());
        }
        let data = snapshot
            .to_data()
            .map_err(|e| unreadable(&self.path, format!("tensor `{key}`: {e}")))?
            .convert::<f32>();
        if data.iter::<f32>().all(|x| x == 0.0) {
            self.verify_archive()?;
        }
        Ok(data)
    }

    /// Reads each entry of a zip archive in full (one at a time), which checks its CRC.
    fn verify_archive(&mut self) -> Result<(), ModelError> {
        if self.verified || self.format != FileFormat::Zip {
            return Ok(());
        }
        let archive = LazyDataSource::from_zip(&self.path).map_err(|e| unreadable(&self.path, e))?;
        for entry in archive.keys() {
            archive
                .read(&entry)
                .map_err(|e| unreadable(&self.path, format!("entry `{entry}`: {e}")))?;
        }
        self.verified = true;
        Ok(())
    }
}

/// Whether the file starts with a zip local-file header, as `torch.save` (PyTorch ≥ 1.6) writes.
fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"PK\x03\x04")
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Pytorch {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
