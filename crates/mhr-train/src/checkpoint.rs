//! Crash-safe checkpoints: each one is a folder written under a temporary name, with a CRC-32 of every
//! file in its manifest, renamed into place, and only then named by the `latest` pointer (written
//! atomically). A run killed at any moment leaves the previous checkpoint intact and readable; a
//! corrupted file is caught on load by its checksum, and [`Checkpointer::load_latest_good`] then falls back
//! to the older checkpoint kept beside it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use mhr_core::io::write_atomic;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;

const MANIFEST: &str = "manifest.json";
const LATEST: &str = "latest";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: usize,
    /// File name → CRC-32 of its bytes.
    files: BTreeMap<String, u32>,
    state: serde_json::Value,
}

/// A loaded checkpoint: its step, the run state saved with it, and its files' bytes.
#[derive(Debug)]
pub struct Checkpoint {
    pub step: usize,
    pub state: serde_json::Value,
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Checkpoint {
    pub fn file(&self, name: &str) -> Result<&[u8], TrainError> {
        self.files.get(name).map(Vec::as_slice).ok_or_else(|| {
            TrainError::Checkpoint(format!("checkpoint of step {} has no file `{name}`", self.step))
        })
    }
}

/// The checkpoints folder of a run.
pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

impl Checkpointer {
    /// Keeps the `keep` most recent checkpoints (at least one).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            dir: dir.into(),
            keep: keep.max(1),
        }
    }

    fn name(step: usize) -> String {
        format!("step-{step:09}")
    }

    pub fn save(
        &self,
        step: usize,
        files: &[(&str, &[u8])],
        state: serde_json::Value,
    ) -> Result<(), TrainError> {
        fs::create_dir_all(&self.dir).map_err(TrainError::io(&self.dir))?;
        let final_dir = self.dir.join(Self::name(step));
        let tmp = self
            .dir
            .join(format!(".{}.{}.tmp", Self::name(step), std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        let mut manifest = Manifest {
            step,
            files: BTreeMap::new(),
            state,
        };
        for (name, bytes) in files {
            write_atomic(tmp.join(name), bytes).map_err(TrainError::from)?;
            manifest.files.insert(name.to_string(), crc32fast::hash(bytes));
        }
        let json = serde_json::to_vec_pretty(&manifest)?;
        write_atomic(tmp.join(MANIFEST), &json).map_err(TrainError::from)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(TrainError::io(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(TrainError::io(&final_dir))?;
        write_atomic(self.dir.join(LATEST), Self::name(step).as_bytes()).map_err(TrainError::from)?;
        self.prune(step)
    }

    /// Drops checkpoints beyond the `keep` newest up to `latest`, and the temporary files and folders of
    /// saves that a killed process left half-written (one run writes a run directory at a time).
    fn prune(&self, latest: usize) -> Result<(), TrainError> {
        let steps: Vec<usize> = self.steps()?.into_iter().filter(|&s| s <= latest).collect();
        let excess = steps.len().saturating_sub(self.keep);
        for s in &steps[..excess] {
            let d = self.dir.join(Self::name(*s));
            fs::remove_dir_all(&d).map_err(TrainError::io(&d))?;
        }
        for entry in fs::read_dir(&self.dir).map_err(TrainError::io(&self.dir))? {
            let path = entry.map_err(TrainError::io(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let removed = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(TrainError::io(&path))?;
            }
        }
        Ok(())
    }

    /// The steps of the checkpoint folders present, ascending.
    fn steps(&self) -> Result<Vec<usize>, TrainError> {
        let mut steps: Vec<usize> = fs::read_dir(&self.dir)
            .map_err(TrainError::io(&self.dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.parse().ok())
            .collect();
        steps.sort_unstable();
        Ok(steps)
    }

    /// The checkpoint named by `latest`, verified; `None` when the run has none yet.
    pub fn load_latest(&self) -> Result<Option<Checkpoint>, TrainError> {
        let pointer = self.dir.join(LATEST);
        if !pointer.exists() {
            return Ok(None);
        }
        let name = fs::read_to_string(&pointer).map_err(TrainError::io(&pointer))?;
        self.load_dir(&self.dir.join(name.trim())).map(Some)
    }

    /// [`Self::load_latest`], or when that checkpoint is unreadable or corrupt, the newest older one that
    /// verifies (with a warning on stderr naming what was refused); the first error when none does.
    pub fn load_latest_good(&self) -> Result<Option<Checkpoint>, TrainError> {
        let refused = match self.load_latest() {
            Err(e @ (TrainError::Io { .. } | TrainError::Checkpoint(_))) => e.chain(),
            loaded => return loaded,
        };
        let pointer = self.dir.join(LATEST);
        let name = fs::read_to_string(&pointer).map_err(TrainError::io(&pointer))?;
        let latest: usize = name
            .trim()
            .strip_prefix("step-")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TrainError::Checkpoint(format!("{}: names no checkpoint", pointer.display())))?;
        for step in self.steps()?.into_iter().rev().filter(|&s| s < latest) {
            if let Ok(checkpoint) = self.load_dir(&self.dir.join(Self::name(step))) {
                eprintln!("warning: checkpoint: {refused}; resuming from the checkpoint of step {step}");
                return Ok(Some(checkpoint));
            }
        }
        Err(TrainError::Checkpoint(refused))
    }

    fn load_dir(&self, dir: &Path) -> Result<Checkpoint, TrainError> {
        let manifest_path = dir.join(MANIFEST);
        let bytes = fs::read(&manifest_path).map_err(TrainError::io(&manifest_path))?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", manifest_path.display())))?;
        let mut files = BTreeMap::new();
        for (name, crc) in manifest.files {
            let path = dir.join(&name);
            let data = fs::read(&path).map_err(TrainError::io(&path))?;
            if crc32fast::hash(&data) != crc {
                return Err(TrainError::Checkpoint(format!(
                    "{}: checksum mismatch (the file is corrupt)",
                    path.display()
                )));
            }
            files.insert(name, data);
        }
        Ok(Checkpoint {
            step: manifest.step,
            state: manifest.state,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_prunes_and_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpointer::new(dir.path(), 2);
        assert!(ck.load_latest().unwrap().is_none());
        for step in [10, 20, 30] {
            let payload = vec![step as u8; 100];
            ck.save(
                step,
                &[("model.mpk", &payload)],
                serde_json::json!({"step": step}),
            )
            .unwrap();
        }
        let latest = ck.load_latest().unwrap().unwrap();
        assert_eq!(latest.step, 30);
        assert_eq!(latest.file("model.mpk").unwrap(), &[30u8; 100][..]);
        assert_eq!(latest.state["step"], 30);
        assert!(!dir.path().join("step-000000010").exists(), "oldest pruned");
        assert!(dir.path().join("step-000000020").exists());

        let mut bytes = fs::read(dir.path().join("step-000000030/model.mpk")).unwrap();
        bytes[5] ^= 0xff;
        fs::write(dir.path().join("step-000000030/model.mpk"), bytes).unwrap();
        let err = ck.load_latest().unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("step-000000030/model.mpk"),
            "{err}"
        );
        // The older checkpoint kept beside it is the fallback; with it gone too, the newest error is reported.
        let fallback = ck.load_latest_good().unwrap().unwrap();
        assert_eq!(fallback.step, 20);
        assert_eq!(fallback.file("model.mpk").unwrap(), &[20u8; 100][..]);
        fs::remove_file(dir.path().join("step-000000020/manifest.json")).unwrap();
        let err = ck.load_latest_good().unwrap_err().to_string();
        assert!(err.contains("step-000000030/model.mpk"), "{err}");
    }

    #[test]
    fn a_save_removes_what_a_killed_save_left() {
        let dir = tempfile::tempdir().unwrap();
        let ck = Checkpointer::new(dir.path(), 2);
        let half_written = dir.path().join(".step-000000007.4242.tmp");
        fs::create_dir_all(&half_written).unwrap();
        fs::write(half_written.join("model.mpk"), b"half").unwrap();
        fs::write(dir.path().join(".latest.4242.tmp"), b"step-").unwrap();
        ck.save(7, &[("model.mpk", b"whole")], serde_json::json!({}))
            .unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["latest", "step-000000007"]);
        assert_eq!(
            ck.load_latest().unwrap().unwrap().file("model.mpk").unwrap(),
            b"whole"
        );
    }
}
