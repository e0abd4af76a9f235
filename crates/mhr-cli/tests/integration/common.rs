//! Helpers shared by the `mhr` integration tests: where the fixtures are, running the binary, and a
//! small safetensors reader/writer that can also craft broken files.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// `$MHR_SHARED`, or the `shared/` folder beside the repository.
pub fn shared() -> PathBuf {
    match std::env::var_os("MHR_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    shared().join("fixtures/t5").join(name)
}

pub fn reference(name: &str) -> PathBuf {
    fixture(name).join("reference.safetensors")
}

/// Runs `mhr` with `args`.
pub fn mhr<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_mhr"))
        .args(args)
        .output()
        .expect("the mhr binary runs")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails the test with the command's stderr unless it succeeded.
pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "mhr failed ({}): {}",
        output.status,
        stderr(output)
    );
}

/// One tensor of a safetensors file: dtype as written in the header (`I64`, `F32`, ...), shape, bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl Tensor {
    pub fn i64(values: &[i64], shape: &[usize]) -> Self {
        Self::new(
            "I64",
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    pub fn i32(values: &[i32], shape: &[usize]) -> Self {
        Self::new(
            "I32",
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    pub fn f32(values: &[f32], shape: &[usize]) -> Self {
        Self::new(
            "F32",
            shape,
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    fn new(dtype: &str, shape: &[usize], bytes: Vec<u8>) -> Self {
        assert_eq!(shape.iter().product::<usize>() * size_of(dtype), bytes.len());
        Self {
            dtype: dtype.into(),
            shape: shape.to_vec(),
            bytes,
        }
    }

    pub fn to_i64(&self) -> Vec<i64> {
        match self.dtype.as_str() {
            "I64" => self
                .bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            "I32" => self
                .bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            other => panic!("not an integer tensor: {other}"),
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        assert_eq!(self.dtype, "F32");
        self.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// The same values as int32 (for an int64 tensor).
    pub fn as_i32(&self) -> Self {
        let values: Vec<i32> = self.to_i64().iter().map(|&v| v as i32).collect();
        Self::i32(&values, &self.shape)
    }

    /// The same values as f32 (for an integer tensor).
    pub fn as_f32(&self) -> Self {
        let values: Vec<f32> = self.to_i64().iter().map(|&v| v as f32).collect();
        Self::f32(&values, &self.shape)
    }

    /// A copy with the value at flat index `i` replaced (integer tensors).
    pub fn with_value(&self, i: usize, value: i64) -> Self {
        let mut values = self.to_i64();
        values[i] = value;
        Self::i64(&values, &self.shape)
    }
}

fn size_of(dtype: &str) -> usize {
    match dtype {
        "I64" | "F64" => 8,
        "I32" | "F32" => 4,
        "I16" | "F16" | "BF16" => 2,
        _ => 1,
    }
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("a valid safetensors file");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let tensor = Tensor {
                dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            };
            (name, tensor)
        })
        .collect()
}

/// Serialises tensors to safetensors bytes (header JSON, then the data in the given order).
pub fn to_bytes(tensors: &[(&str, Tensor)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in tensors {
        let start = data.len();
        data.extend_from_slice(&t.bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend(data);
    bytes
}

pub fn write(path: &Path, tensors: &[(&str, Tensor)]) {
    std::fs::write(path, to_bytes(tensors)).unwrap();
}

/// The batch tensors (`input_ids`, `attention_mask`, `labels`, `task_ids` when present) of a reference.
pub fn batch_of(reference: &BTreeMap<String, Tensor>) -> Vec<(&'static str, Tensor)> {
    ["input_ids", "attention_mask", "labels", "task_ids"]
        .into_iter()
        .filter_map(|k| reference.get(k).map(|t| (k, t.clone())))
        .collect()
}

/// Largest absolute difference, failing on a length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A running `mhr serve`, stopped with SIGTERM on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// `mhr ARGS --addr 127.0.0.1:0`, once it listens.
    pub fn start(args: &[String]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mhr"))
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Lines before the address (tasks registered at start) are skipped.
        let mut seen = String::new();
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("mhr serve exited without listening: {seen}");
            }
            if line.contains("listening on") {
                let url = line.split_whitespace().find(|w| w.starts_with("http://"));
                break url.unwrap().to_string();
            }
            seen.push_str(&line);
        };
        // Keep reading so that the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Self { child, url }
    }

    /// Status, JSON body and `Retry-After` of a POST.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value, Option<String>) {
        self.post_as(path, body, None)
    }

    /// A POST with `Authorization: Bearer TOKEN` when `token` is given.
    pub fn post_as(&self, path: &str, body: &str, token: Option<&str>) -> (u16, Value, Option<String>) {
        let mut request = ureq::post(&format!("{}{path}", self.url)).set("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.send_string(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("{path}: {e}"),
        };
        let retry = response.header("retry-after").map(String::from);
        (response.status(), response.into_json().unwrap(), retry)
    }

    pub fn get(&self, path: &str) -> String {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
