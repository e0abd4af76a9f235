//! Model folders from the Hugging Face Hub (feature `hub`). A repo id such as `google/t5-small-lm-adapt` is
//! fetched once into the HF cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`, shared with Python's
//! `huggingface_hub`) and read from there afterwards without a network; `HF_ENDPOINT` points at a mirror.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::config::T5Config;
use crate::error::ModelError;
use crate::loader::{CONFIG_FILE, shard_names, weight_layouts};

/// Where the T5 SentencePiece vocabulary is fetched from for checkpoints that ship only `spiece.model`
/// (the LM-adapted and v1.1 ones): every T5 checkpoint with 32,128 embedding rows uses the same vocabulary.
pub const T5_TOKENIZER_REPO: &str = "google-t5/t5-small";
const T5_VOCAB_ROWS: usize = 32_128;
const TOKENIZER_FILE: &str = "tokenizer.json";

/// The files of a model: its folder (config and weights) and its `tokenizer.json`, when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub tokenizer: Option<PathBuf>,
}

/// The cache folder and the endpoint that repo ids are fetched through.
#[derive(Debug, Clone)]
pub struct Hub {
    pub cache_dir: PathBuf,
    pub endpoint: Option<String>,
}

impl Hub {
    /// `HF_HOME` and `HF_ENDPOINT`, as `huggingface_hub` reads them.
    pub fn from_env() -> Self {
        Self {
            cache_dir: Cache::from_env().path().clone(),
            endpoint: std::env::var("HF_ENDPOINT").ok(),
        }
    }

    /// `spec` is a model folder, or a Hub repo id fetched (or found in the cache) with its weights and tokenizer.
    pub fn resolve(&self, spec: &str) -> Result<ModelFiles, ModelError> {
        let dir = Path::new(spec);
        if dir.is_dir() {
            let tokenizer = Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file());
            return Ok(ModelFiles {
                dir: dir.to_path_buf(),
                tokenizer,
            });
        }
        // `runs/model` under an existing `runs/` is a mistyped folder, not a repo to download.
        let local_parent = dir
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
        if local_parent || !is_repo_id(spec) {
            return Err(ModelError::NotAModel { spec: spec.into() });
        }
        match self.cached(spec) {
            Some(files) => Ok(files),
            None => self.download(spec),
        }
    }

    /// A complete earlier download: the config, one weight layout and the tokenizer, all in the cache.
    fn cached(&self, repo: &str) -> Option<ModelFiles> {
        let cache = Cache::new(self.cache_dir.clone());
        let model = cache.model(repo.into());
        let config = model.get(CONFIG_FILE)?;
        let dir = config.parent()?.to_path_buf();
        let complete_layout = weight_layouts().any(|(single, index)| {
            dir.join(single).is_file()
                || shard_names(&dir.join(index))
                    .is_ok_and(|shards| shards.iter().all(|s| dir.join(s).is_file()))
        });
        let tokenizer = model.get(TOKENIZER_FILE).or_else(|| {
            uses_t5_vocabulary(&config)
                .ok()?
                .then(|| cache.model(T5_TOKENIZER_REPO.into()).get(TOKENIZER_FILE))
                .flatten()
        });
        (complete_layout && tokenizer.is_some()).then_some(ModelFiles { dir, tokenizer })
    }

    fn download(&self, repo: &str) -> Result<ModelFiles, ModelError> {
        let api = self.api(repo)?;
        let model = api.repo(Repo::new(repo.into(), RepoType::Model));
        let listing = model.info().map_err(|e| hub_error(repo, "the file list", e))?;
        let has = |name: &str| listing.siblings.iter().any(|s| s.rfilename == name);
        let config = fetch(&model, repo, CONFIG_FILE)?;
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        // The first layout the repo has, as `T5ForConditionalGeneration::load` prefers them.
        let Some((single, index)) = weight_layouts().find(|(single, index)| has(single) || has(index)) else {
            return Err(ModelError::NoWeights { dir });
        };
        if has(single) {
            fetch(&model, repo, single)?;
        } else {
            for shard in shard_names(&fetch(&model, repo, index)?)? {
                fetch(&model, repo, &shard)?;
            }
        }
        let tokenizer = if has(TOKENIZER_FILE) {
            Some(fetch(&model, repo, TOKENIZER_FILE)?)
        } else if uses_t5_vocabulary(&config)? {
            let t5 = api.repo(Repo::new(T5_TOKENIZER_REPO.into(), RepoType::Model));
            Some(fetch(&t5, T5_TOKENIZER_REPO, TOKENIZER_FILE)?)
        } else {
            None
        };
        Ok(ModelFiles { dir, tokenizer })
    }

    fn api(&self, repo: &str) -> Result<hf_hub::api::sync::Api, ModelError> {
        let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder.build().map_err(|e| hub_error(repo, "the client", e))
    }
}

/// A checkpoint without `tokenizer.json` can take T5's when its embedding has T5's 32,128 rows.
fn uses_t5_vocabulary(config: &Path) -> Result<bool, ModelError> {
    Ok(T5Config::load(config)?.vocab_size == T5_VOCAB_ROWS)
}

fn fetch(model: &ApiRepo, repo: &str, file: &str) -> Result<PathBuf, ModelError> {
    model.get(file).map_err(|e| hub_error(repo, file, e))
}

fn hub_error(repo: &str, what: &str, error: hf_hub::api::sync::ApiError) -> ModelError {
    ModelError::Hub {
        repo: repo.into(),
        what: what.into(),
        reason: error.to_string(),
    }
}

/// `owner/name`: two non-empty parts of letters, digits, `-`, `_` and `.`, neither starting with a dot.
fn is_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

#[cfg(test)]
mod tests {
    use super::is_repo_id;

    #[test]
    fn repo_ids_are_owner_slash_name() {
        assert!(is_repo_id("google/t5-small-lm-adapt"));
        assert!(is_repo_id("bigscience/T0_3B"));
        for bad in ["t5-small", "a/b/c", "/abs", "../x", "a/", "a b/c", "./model"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }
}
