//! `--model` given as a Hugging Face Hub repo id: read from the HF cache without a network, and a clear
//! message naming the files to provide when it cannot be fetched.

use std::path::Path;

use mhr_models::hub::{Hub, ModelFiles, T5_TOKENIZER_REPO};
use mhr_models::{ModelError, T5ForConditionalGeneration};
use mhr_tests::t5_fixture;

type B = burn::backend::NdArray;

/// An endpoint where nothing listens: every download fails at once, as offline.
const NOWHERE: &str = "http://127.0.0.1:9";

/// Puts `files` into the HF cache layout (`models--owner--name/{refs/main,snapshots/<rev>/…}`) under `cache`.
fn cache_repo(cache: &Path, repo: &str, files: &[(&str, &Path)]) -> std::path::PathBuf {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), "0123abcd").unwrap();
    let snapshot = root.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    for (name, source) in files {
        std::fs::copy(source, snapshot.join(name)).unwrap();
    }
    snapshot
}

#[test]
fn a_cached_repo_resolves_offline_and_loads() {
    let cache = tempfile::tempdir().unwrap();
    let snapshot = cache_repo(
        cache.path(),
        "google/tiny-t5",
        &[
            ("config.json", &t5_fixture("t5-v1_1/config.json")),
            ("model.safetensors", &t5_fixture("t5-v1_1/model.safetensors")),
            ("tokenizer.json", &t5_fixture("tokenizer.json")),
        ],
    );
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        endpoint: Some(NOWHERE.into()),
    };
    let files = hub.resolve("google/tiny-t5").unwrap();
    assert_eq!(
        files,
        ModelFiles {
            dir: snapshot.clone(),
            tokenizer: Some(snapshot.join("tokenizer.json")),
        }
    );
    let model = T5ForConditionalGeneration::<B>::load(&files.dir, &Default::default()).unwrap();
    assert_eq!(model.config().vocab_size, 200);
}

#[test]
fn an_unreachable_repo_says_which_files_to_put_where() {
    let cache = tempfile::tempdir().unwrap();
    // Without weights the cached copy is incomplete, so the hub is asked, and it is unreachable.
    cache_repo(
        cache.path(),
        "google/t5-small-lm-adapt",
        &[("config.json", &t5_fixture("t5-v1_1/config.json"))],
    );
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        endpoint: Some(NOWHERE.into()),
    };
    let error = hub.resolve("google/t5-small-lm-adapt").unwrap_err();
    assert!(matches!(error, ModelError::Hub { .. }), "{error}");
    let message = error.to_string();
    for part in [
        "google/t5-small-lm-adapt",
        "config.json",
        "pytorch_model.bin",
        "tokenizer.json",
        "folder",
    ] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn the_t5_vocabulary_stands_in_for_a_missing_tokenizer_json() {
    let cache = tempfile::tempdir().unwrap();
    // A checkpoint with T5's 32,128 embedding rows that ships only spiece.model.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t5_fixture("t5-v1_1/config.json")).unwrap()).unwrap();
    let mut config = config.as_object().unwrap().clone();
    config.insert("vocab_size".into(), 32_128.into());
    let config_path = cache.path().join("config.json");
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    cache_repo(
        cache.path(),
        "google/t5-lm-adapt-like",
        &[
            ("config.json", &config_path),
            ("model.safetensors", &t5_fixture("t5-v1_1/model.safetensors")),
        ],
    );
    let t5 = cache_repo(
        cache.path(),
        T5_TOKENIZER_REPO,
        &[("tokenizer.json", &t5_fixture("tokenizer.json"))],
    );
    let hub = Hub {
        cache_dir: cache.path().to_path_buf(),
        endpoint: Some(NOWHERE.into()),
    };
    let files = hub.resolve("google/t5-lm-adapt-like").unwrap();
    assert_eq!(files.tokenizer, Some(t5.join("tokenizer.json")));
}

#[test]
fn a_missing_local_folder_is_not_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub {
        cache_dir: dir.path().to_path_buf(),
        endpoint: Some(NOWHERE.into()),
    };
    let missing = dir.path().join("model");
    let error = hub.resolve(missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(error, ModelError::NotAModel { .. }), "{error}");
    assert!(error.to_string().contains("not a directory"), "{error}");
}
