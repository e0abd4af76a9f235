//! safetensors reading and atomic writing, shared by adapters, models and the CLI.
//!
//! Files are memory-mapped and tensors converted one at a time, so loading a checkpoint needs about one
//! tensor of extra memory beyond the result. The header is validated by the `safetensors` crate (offsets
//! contiguous, sizes consistent with the file length, checked arithmetic) before any tensor is read.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors, View};

use crate::error::CoreError;

/// A memory-mapped safetensors file with a validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let path = path.as_ref().to_path_buf();
        let io = |error| CoreError::Io {
            path: path.clone(),
            error,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated underneath us is outside what we can guard.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| CoreError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path,
            mmap,
            header_len,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<(usize, String)> = self
            .metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (info.data_offsets.0, name))
            .collect();
        names.sort();
        names.into_iter().map(|(_, n)| n).collect()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.metadata.info(key).is_some()
    }

    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.metadata.info(key).map(|i| i.shape.clone())
    }

    /// The `__metadata__` string map of the header.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    fn info(&self, key: &str) -> Result<&TensorInfo, CoreError> {
        self.metadata.info(key).ok_or_else(|| CoreError::MissingTensor {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len;
        &self.mmap[start + info.data_offsets.0..start + info.data_offsets.1]
    }

    /// A float tensor converted to f32 (from f32, f64, f16 or bf16).
    pub fn f32(&self, key: &str) -> Result<TensorData, CoreError> {
        let info = self.info(key)?;
        let bytes = self.bytes(info);
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => le_chunks::<4>(bytes).map(f32::from_le_bytes).collect(),
            Dtype::F64 => le_chunks::<8>(bytes)
                .map(|b| f64::from_le_bytes(b) as f32)
                .collect(),
            Dtype::F16 => le_chunks::<2>(bytes)
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            Dtype::BF16 => le_chunks::<2>(bytes)
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
            other => return Err(self.dtype_error(key, other, "f32")),
        };
        Ok(TensorData::new(values, info.shape.clone()))
    }

    /// An integer tensor converted to i64 (from i64, i32, i16, i8, u8 ...).
    pub fn i64(&self, key: &str) -> Result<TensorData, CoreError> {
        let info = self.info(key)?;
        let bytes = self.bytes(info);
        let values: Vec<i64> = match info.dtype {
            Dtype::I64 => le_chunks::<8>(bytes).map(i64::from_le_bytes).collect(),
            Dtype::I32 => le_chunks::<4>(bytes)
                .map(|b| i32::from_le_bytes(b) as i64)
                .collect(),
            Dtype::U32 => le_chunks::<4>(bytes)
                .map(|b| u32::from_le_bytes(b) as i64)
                .collect(),
            Dtype::I16 => le_chunks::<2>(bytes)
                .map(|b| i16::from_le_bytes(b) as i64)
                .collect(),
            Dtype::I8 => bytes.iter().map(|&b| b as i8 as i64).collect(),
            Dtype::U8 => bytes.iter().map(|&b| b as i64).collect(),
            other => return Err(self.dtype_error(key, other, "i64")),
        };
        Ok(TensorData::new(values, info.shape.clone()))
    }

    /// [`Self::f32`] with the shape checked against `expected`.
    pub fn f32_shaped(&self, key: &str, expected: &[usize]) -> Result<TensorData, CoreError> {
        let shape = self.info(key)?.shape.clone();
        if shape != expected {
            return Err(CoreError::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        self.f32(key)
    }

    fn dtype_error(&self, key: &str, dtype: Dtype, wanted: &'static str) -> CoreError {
        CoreError::Dtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{dtype:?}"),
            wanted,
        }
    }
}

fn le_chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

/// One tensor to write: name and data (f32, f64, f16, bf16, i64, i32, u8 or bool).
struct OwnedView {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn st_dtype(dtype: DType) -> Option<Dtype> {
    Some(match dtype {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
        DType::Bool(_) => Dtype::BOOL,
        _ => return None,
    })
}

/// Serialises tensors to safetensors bytes (keys sorted, as every writer does).
pub fn to_safetensors_bytes(
    tensors: Vec<(String, TensorData)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, CoreError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let dtype = st_dtype(data.dtype).ok_or_else(|| {
            CoreError::Config(format!(
                "tensor `{name}` has dtype {:?}, which safetensors output does not take",
                data.dtype
            ))
        })?;
        let shape = data.shape.to_vec();
        views.push((
            name,
            OwnedView {
                dtype,
                shape,
                data: data.as_bytes().to_vec(),
            },
        ));
    }
    safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), metadata)
        .map_err(|e| CoreError::Config(format!("cannot serialise tensors: {e}")))
}

/// Writes a safetensors file atomically.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: Vec<(String, TensorData)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CoreError> {
    write_atomic(path, &to_safetensors_bytes(tensors, metadata)?)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a reader
/// (or a crash) sees the old file or the new one, never a half-written one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), CoreError> {
    let path = path.as_ref();
    let io = |error| CoreError::Io {
        path: path.to_path_buf(),
        error,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Reads and parses a JSON file, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, CoreError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| CoreError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|e| CoreError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
