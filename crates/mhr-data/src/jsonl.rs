//! JSON Lines: one value per line, errors located at the file's line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{DataError, Result};

/// Reads every non-blank line of `path` as a `T`, with its 1-based line number.
pub(crate) fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| DataError::io(path, e))?;
        if !line.trim().is_empty() {
            rows.push((
                i + 1,
                serde_json::from_str(&line).map_err(|e| DataError::json(path, &e, i))?,
            ));
        }
    }
    Ok(rows)
}
