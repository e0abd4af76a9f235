use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Task names ↔ routing-row ids, stored with an adapter (`tasks.json`) so that a checkpoint can be
/// routed by name. Ids are positions in `names`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskMap {
    names: Vec<String>,
    #[serde(skip)]
    index: HashMap<String, usize>,
    /// Unknown names resolve to id `len()`, which a router with `unknown_task_fallback` routes to the
    /// uniform average of the skills.
    #[serde(default)]
    pub unknown_fallback: bool,
}

impl TaskMap {
    /// Fails on duplicate names.
    pub fn new(names: Vec<String>) -> Result<Self, CoreError> {
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                return Err(CoreError::Config(format!("task `{n}` is listed twice")));
            }
        }
        Ok(Self {
            names,
            index,
            unknown_fallback: false,
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    pub fn id(&self, name: &str) -> Result<usize, CoreError> {
        match self.index.get(name) {
            Some(&i) => Ok(i),
            None if self.unknown_fallback => Ok(self.names.len()),
            None => Err(CoreError::UnknownTask(name.to_string())),
        }
    }

    /// Appends new task names (few-shot tasks), returning their ids.
    pub fn extend(&mut self, names: impl IntoIterator<Item = String>) -> Result<Vec<usize>, CoreError> {
        let mut ids = Vec::new();
        for n in names {
            if self.index.contains_key(&n) {
                return Err(CoreError::Config(format!("task `{n}` is listed twice")));
            }
            self.index.insert(n.clone(), self.names.len());
            ids.push(self.names.len());
            self.names.push(n);
        }
        Ok(ids)
    }

    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, CoreError> {
        let raw: TaskMap = crate::io::read_json(&path)?;
        let fallback = raw.unknown_fallback;
        let mut map = TaskMap::new(raw.names).map_err(|e| CoreError::Json {
            path: path.as_ref().to_path_buf(),
            reason: e.to_string(),
        })?;
        map.unknown_fallback = fallback;
        Ok(map)
    }

    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<(), CoreError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| CoreError::Config(e.to_string()))?;
        crate::io::write_atomic(path, json.as_bytes())
    }
}
