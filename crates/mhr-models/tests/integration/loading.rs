//! Checkpoint layouts (sharded, bf16, tied copies) and the errors of malformed checkpoints and inputs.

use std::path::Path;

use crate::common::*;
use burn::prelude::*;
use burn::tensor::bf16;
use mhr_core::io::{SafetensorsFile, write_safetensors};
use mhr_core::peft::TargetModules;
use mhr_core::{AdapterConfig, AdapterHost, CoreError, LoraConfig, RoutingContext, RoutingMode};
use mhr_models::{GenerationConfig, ModelError, T5ForConditionalGeneration};
use serde_json::{Value, json};

type Tensors = Vec<(String, TensorData)>;

fn fixture_tensors(name: &str) -> Tensors {
    fixture_tensors_in(&fixture(name))
}

fn fixture_config(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap()
}

/// A checkpoint folder with `config` and `tensors` in one `model.safetensors`.
fn checkpoint(config: &Value, tensors: Tensors) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    write_safetensors(dir.path().join("model.safetensors"), tensors, None).unwrap();
    dir
}

fn load(dir: &Path) -> Result<T5ForConditionalGeneration<Cpu>, ModelError> {
    T5ForConditionalGeneration::load(dir, &Default::default())
}

fn logits(model: &T5ForConditionalGeneration<Cpu>, reference: &Reference) -> TensorData {
    let ctx = RoutingContext::untasked();
    let out = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &ctx,
        )
        .unwrap();
    out.logits.into_data()
}

/// `save_pretrained` writes the fixture's tensors back (same names, shapes and values) and a config that reads
/// as the fixture's; the saved folder loads to the same logits. An adapter stays out of it; a merged one is refused.
#[test]
fn save_pretrained_writes_the_checkpoint_back() {
    for name in ["t5-v1_1", "t5-v1_0"] {
        let reference = Reference::open(name);
        let model = load(&fixture(name)).unwrap();
        let lora = AdapterConfig::Lora(LoraConfig::new(2, 4.0));
        let model = model
            .with_adapters(&TargetModules::Regex(r".*SelfAttention\.(q|v)".into()), &lora)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path()).unwrap();
        let mut saved = fixture_tensors_in(dir.path());
        let mut original = fixture_tensors(name);
        saved.sort_by(|a, b| a.0.cmp(&b.0));
        original.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(saved, original, "{name}");
        let config = |dir: &Path| mhr_models::T5Config::load(dir.join("config.json")).unwrap();
        assert_eq!(config(dir.path()), config(&fixture(name)), "{name}");
        let reloaded = load(dir.path()).unwrap();
        assert_eq!(
            logits(&reloaded, &reference),
            logits(&load(&fixture(name)).unwrap(), &reference)
        );
        let merged = model
            .map_sites(|_, site| match site.adapter {
                Some(_) => site.merge(None),
                None => Ok(site),
            })
            .unwrap();
        let e = merged.save_pretrained(dir.path()).unwrap_err();
        assert!(e.to_string().contains("merged"), "{e}");
    }
}

fn fixture_tensors_in(dir: &Path) -> Tensors {
    let file = SafetensorsFile::open(dir.join("model.safetensors")).unwrap();
    file.names()
        .into_iter()
        .map(|k| (k.clone(), file.f32(&k).unwrap()))
        .collect()
}

#[test]
fn sharded_checkpoint_loads_like_a_single_file() {
    let tensors = fixture_tensors("t5-v1_1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        fixture_config("t5-v1_1").to_string(),
    )
    .unwrap();
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let shard = format!("model-0000{}-of-00002.safetensors", i + 1);
        for (key, _) in part {
            weight_map.insert(key.clone(), json!(shard));
        }
        write_safetensors(dir.path().join(&shard), part.to_vec(), None).unwrap();
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let reference = Reference::open("t5-v1_1");
    assert_close(
        "sharded logits",
        logits(&load(dir.path()).unwrap(), &reference),
        reference.data("logits"),
        1e-4,
    );
}

#[test]
fn bf16_checkpoint_loads_as_f32() {
    let tensors: Tensors = fixture_tensors("t5-v1_1")
        .into_iter()
        .map(|(k, d)| (k, d.convert::<bf16>()))
        .collect();
    let rounded = tensors
        .iter()
        .find(|(k, _)| k == "shared.weight")
        .unwrap()
        .1
        .clone()
        .convert::<f32>();
    let dir = checkpoint(&fixture_config("t5-v1_1"), tensors);
    let model = load(dir.path()).unwrap();
    assert_eq!(model.shared.val().into_data(), rounded);
}

#[test]
fn tied_copies_are_accepted() {
    let mut tensors = fixture_tensors("t5-v1_0");
    let shared = tensors
        .iter()
        .find(|(k, _)| k == "shared.weight")
        .unwrap()
        .1
        .clone();
    for key in [
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "lm_head.weight",
    ] {
        tensors.push((key.into(), shared.clone()));
    }
    let dir = checkpoint(&fixture_config("t5-v1_0"), tensors);
    let reference = Reference::open("t5-v1_0");
    assert_close(
        "with tied copies",
        logits(&load(dir.path()).unwrap(), &reference),
        reference.data("logits"),
        1e-4,
    );
}

#[test]
fn missing_tensor_is_named() {
    let key = "decoder.block.0.layer.2.DenseReluDense.wi_0.weight";
    let shape = fixture_tensors("t5-v1_1")
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap()
        .1
        .shape
        .to_vec();
    let tensors = fixture_tensors("t5-v1_1")
        .into_iter()
        .filter(|(k, _)| k != key)
        .collect();
    let dir = checkpoint(&fixture_config("t5-v1_1"), tensors);
    match load(dir.path()) {
        Err(ModelError::MissingTensor {
            key: k,
            path,
            expected,
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, shape);
            assert_eq!(path, dir.path().join("model.safetensors"));
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let key = "encoder.block.0.layer.1.DenseReluDense.wo.weight";
    let mut tensors = fixture_tensors("t5-v1_1");
    let (_, data) = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    let [rows, cols] = <[usize; 2]>::try_from(data.shape.to_vec()).unwrap();
    *data = TensorData::new(vec![0f32; rows * (cols - 1)], [rows, cols - 1]);
    let dir = checkpoint(&fixture_config("t5-v1_1"), tensors);
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { key: k, expected, found, .. }
            if k == key && expected == &[rows, cols] && found == &[rows, cols - 1]),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("{:?}", [rows, cols - 1])),
        "{err}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let mut tensors = fixture_tensors("t5-v1_1");
    tensors.push((
        "encoder.block.0.layer.0.SelfAttention.q.bias".into(),
        TensorData::new(vec![0f32; 64], [64]),
    ));
    let dir = checkpoint(&fixture_config("t5-v1_1"), tensors);
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::UnexpectedTensor { key, .. } if key == "encoder.block.0.layer.0.SelfAttention.q.bias"),
        "{err:?}"
    );
}

#[test]
fn untied_model_needs_its_head() {
    let tensors = fixture_tensors("t5-v1_1")
        .into_iter()
        .filter(|(k, _)| k != "lm_head.weight")
        .collect();
    let dir = checkpoint(&fixture_config("t5-v1_1"), tensors);
    assert!(
        matches!(load(dir.path()), Err(ModelError::MissingTensor { key, .. }) if key == "lm_head.weight")
    );
}

#[test]
fn missing_config_field_is_named() {
    let mut config = fixture_config("t5-v1_1");
    config.as_object_mut().unwrap().remove("d_model");
    let dir = checkpoint(&config, fixture_tensors("t5-v1_1"));
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { reason, .. } if reason.contains("d_model")),
        "{err:?}"
    );
}

#[test]
fn invalid_feed_forward_proj_is_refused() {
    let mut config = fixture_config("t5-v1_1");
    config["feed_forward_proj"] = json!("gated-tanh");
    let dir = checkpoint(&config, fixture_tensors("t5-v1_1"));
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Config { reason, .. } if reason.contains("feed_forward_proj")),
        "{err:?}"
    );
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = checkpoint(&fixture_config("t5-v1_1"), fixture_tensors("t5-v1_1"));
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, ModelError::Core(CoreError::Safetensors { path: p, .. }) if p == &path),
        "{err:?}"
    );
}

#[test]
fn folder_without_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        fixture_config("t5-v1_1").to_string(),
    )
    .unwrap();
    assert!(matches!(load(dir.path()), Err(ModelError::NoWeights { .. })));
}

/// The holdout fixtures' dims (`num_heads · d_kv ≠ d_model`, more encoder than decoder layers), written
/// with HF's names and layouts (`[out, in]` linears) independently of the loader.
#[test]
fn holdout_dims_load_from_hf_names() {
    let (v, d, kv, ff, h, buckets) = (173, 48, 24, 80, 2, 8);
    let inner = h * kv;
    let config = json!({
        "vocab_size": v, "d_model": d, "d_kv": kv, "d_ff": ff, "num_layers": 3, "num_decoder_layers": 1,
        "num_heads": h, "relative_attention_num_buckets": buckets, "relative_attention_max_distance": 20,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": false, "decoder_start_token_id": 0,
    });
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("shared.weight".into(), vec![v, d]),
        ("lm_head.weight".into(), vec![v, d]),
    ];
    for (stack, layers) in [("encoder", 3), ("decoder", 1)] {
        for i in 0..layers {
            let block = format!("{stack}.block.{i}");
            let mut attention = |name: &str| {
                for p in ["q", "k", "v"] {
                    shapes.push((format!("{block}.{name}.{p}.weight"), vec![inner, d]));
                }
                shapes.push((format!("{block}.{name}.o.weight"), vec![d, inner]));
            };
            attention("layer.0.SelfAttention");
            let mut norms = vec!["layer.0.layer_norm".to_string()];
            let ff_layer = if stack == "decoder" {
                attention("layer.1.EncDecAttention");
                norms.push("layer.1.layer_norm".into());
                2
            } else {
                1
            };
            norms.push(format!("layer.{ff_layer}.layer_norm"));
            for p in ["wi_0", "wi_1"] {
                shapes.push((
                    format!("{block}.layer.{ff_layer}.DenseReluDense.{p}.weight"),
                    vec![ff, d],
                ));
            }
            shapes.push((
                format!("{block}.layer.{ff_layer}.DenseReluDense.wo.weight"),
                vec![d, ff],
            ));
            shapes.extend(
                norms
                    .into_iter()
                    .map(|n| (format!("{block}.{n}.weight"), vec![d])),
            );
        }
        shapes.push((
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            vec![buckets, h],
        ));
        shapes.push((format!("{stack}.final_layer_norm.weight"), vec![d]));
    }
    let tensors = shapes
        .into_iter()
        .map(|(k, s)| {
            let n: usize = s.iter().product();
            (
                k,
                TensorData::new(
                    (0..n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect::<Vec<_>>(),
                    s,
                ),
            )
        })
        .collect();
    let dir = checkpoint(&config, tensors);
    let model = load(dir.path()).unwrap();
    assert_eq!(model.site_paths().len(), 3 * 7 + 11);
    let device = Default::default();
    let ids = Tensor::<Cpu, 2, Int>::from_data([[5, 9, 172, 1], [4, 1, 0, 0]], &device);
    let mask = Tensor::<Cpu, 2, Int>::from_data([[1, 1, 1, 1], [1, 1, 0, 0]], &device);
    let labels = Tensor::<Cpu, 2, Int>::from_data([[3, 1, -100], [7, 8, 1]], &device);
    let ctx = RoutingContext::untasked();
    let out = model.forward(ids.clone(), mask.clone(), labels, &ctx).unwrap();
    assert_eq!(out.logits.dims(), [2, 3, v]);
    assert!(out.loss.into_scalar().is_finite());
    let tokens = model
        .generate(ids, mask, &ctx, &GenerationConfig::beam(3, 2))
        .unwrap();
    assert_eq!(tokens.dims()[0], 2);
}

fn base() -> (Reference, T5ForConditionalGeneration<Cpu>) {
    (Reference::open("t5-v1_1"), load(&fixture("t5-v1_1")).unwrap())
}

#[test]
fn out_of_vocabulary_tokens_are_refused() {
    let (reference, model) = base();
    let vocab = model.config().vocab_size;
    let ctx = RoutingContext::untasked();
    let set_first = |t: Tensor<Cpu, 2, Int>, v: i64| {
        t.slice_assign([0..1, 0..1], Tensor::from_data([[v]], &Default::default()))
    };
    let ids = set_first(reference.ints("input_ids"), vocab as i64);
    let err = model
        .forward(
            ids,
            reference.ints("attention_mask"),
            reference.ints("labels"),
            &ctx,
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::TokenOutOfRange { name: "input_ids", id, vocab_size } if id == vocab as i64 && vocab_size == vocab),
        "{err:?}"
    );
    let labels = set_first(reference.ints("labels"), -1);
    let err = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            labels,
            &ctx,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::TokenOutOfRange {
                name: "labels",
                id: -1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn mismatched_shapes_are_refused() {
    let (reference, model) = base();
    let ctx = RoutingContext::untasked();
    let [b, s] = reference.ints::<Cpu, 2>("input_ids").dims();
    let mask = reference.ints::<Cpu, 2>("attention_mask").slice([0..b, 0..s - 1]);
    let err = model
        .forward(reference.ints("input_ids"), mask, reference.ints("labels"), &ctx)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputShape {
                name: "attention_mask",
                ..
            }
        ),
        "{err:?}"
    );
    let labels = reference.ints::<Cpu, 2>("labels");
    let t = labels.dims()[1];
    let labels = labels.slice([0..b - 1, 0..t]);
    let err = model
        .forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            labels,
            &ctx,
        )
        .unwrap_err();
    assert!(
        matches!(err, ModelError::InputShape { name: "labels", .. }),
        "{err:?}"
    );
    let mask = reference.ints::<Cpu, 2>("attention_mask") * 2;
    let err = model
        .forward(reference.ints("input_ids"), mask, reference.ints("labels"), &ctx)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InvalidInput {
                name: "attention_mask",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn routed_models_need_valid_task_ids() {
    let name = "t5-v1_1-mhr";
    let reference = Reference::open(name);
    let model = load(&fixture("t5-v1_1"))
        .unwrap()
        .load_peft_adapter(fixture(name))
        .unwrap();
    let adapter_config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("adapter_config.json")).unwrap())
            .unwrap();
    let n_tasks = adapter_config["n_tasks"].as_u64().unwrap() as i64;
    let forward = |ctx: &RoutingContext<Cpu>| {
        model.forward(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            reference.ints("labels"),
            ctx,
        )
    };
    let err = forward(&RoutingContext::untasked()).unwrap_err();
    assert!(
        matches!(err, ModelError::InvalidInput { name: "task_ids", .. }),
        "{err:?}"
    );
    let b = reference.ints::<Cpu, 2>("input_ids").dims()[0];
    let mut ids = vec![0i64; b];
    ids[b - 1] = n_tasks;
    let ids = Tensor::from_data(TensorData::new(ids, [b]), &Default::default());
    let err = forward(&RoutingContext::new(ids, RoutingMode::Deterministic)).unwrap_err();
    assert!(
        matches!(err, ModelError::TaskOutOfRange { id, n_tasks: n } if id == n_tasks && n as i64 == n_tasks),
        "{err:?}"
    );
    let ids = Tensor::from_data(TensorData::new(vec![0i64; b + 1], [b + 1]), &Default::default());
    let err = forward(&RoutingContext::new(ids, RoutingMode::Deterministic)).unwrap_err();
    assert!(
        matches!(err, ModelError::InputShape { name: "task_ids", .. }),
        "{err:?}"
    );
}

#[test]
fn target_modules_that_match_no_site_are_refused() {
    let config = AdapterConfig::Lora(LoraConfig::new(4, 4.0));
    for (targets, shown) in [
        (TargetModules::Names(vec!["query".into()]), r#"["query"]"#),
        // A regular expression must match the whole path, as in peft.
        (TargetModules::Regex("SelfAttention".into()), r#""SelfAttention""#),
    ] {
        let err = load(&fixture("t5-v1_1"))
            .unwrap()
            .with_adapters(&targets, &config)
            .unwrap_err();
        assert!(
            matches!(&err, CoreError::NoTargetSite { .. }) && err.to_string().contains(shown),
            "{err}"
        );
    }
    let matched = load(&fixture("t5-v1_1"))
        .unwrap()
        .with_adapters(&TargetModules::Regex(r".*SelfAttention\.(q|v)".into()), &config)
        .unwrap();
    let mut adapted = Vec::new();
    matched.for_each_site(|path, site| {
        if site.adapter.is_some() {
            adapted.push(path.to_string());
        }
    });
    let expected: Vec<String> = matched
        .site_paths()
        .into_iter()
        .filter(|p| p.ends_with("SelfAttention.q") || p.ends_with("SelfAttention.v"))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(adapted, expected);
}

/// As peft: `target_modules` naming no module of the model is refused ("Target modules … not found in the base
/// model"), and so are weights for modules that `target_modules` does not name.
#[test]
fn adapter_target_modules_are_checked_against_the_model_and_the_weights() {
    let source = fixture("t5-v1_1-lora");
    let with_targets = |targets: Value| {
        let dir = tempfile::tempdir().unwrap();
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("adapter_config.json")).unwrap())
                .unwrap();
        config["target_modules"] = targets;
        std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
        std::fs::copy(
            source.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
        let err = load(&fixture("t5-v1_1"))
            .unwrap()
            .load_peft_adapter(dir.path())
            .unwrap_err();
        (err.to_string(), err)
    };
    let (message, err) = with_targets(json!(["nonexistent_proj"]));
    assert!(
        matches!(err, CoreError::NoTargetSite { .. }) && message.contains(r#"["nonexistent_proj"]"#),
        "{message}"
    );
    // The weights hold every linear layer; only the attention projections are named.
    let (message, err) = with_targets(json!(["q", "k", "v", "o"]));
    let CoreError::UntargetedModules { modules, .. } = err else {
        panic!("{message}")
    };
    assert!(
        !modules.is_empty() && modules.iter().all(|m| m.ends_with(".wo") || m.contains(".wi_")),
        "{modules:?}"
    );
    assert!(
        message.contains(r#"["q","k","v","o"]"#) && message.contains(&modules[0]),
        "{message}"
    );
}

#[test]
fn adapter_for_a_missing_site_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("t5-v1_1-lora");
    std::fs::copy(
        source.join("adapter_config.json"),
        dir.path().join("adapter_config.json"),
    )
    .unwrap();
    let file = SafetensorsFile::open(source.join("adapter_model.safetensors")).unwrap();
    let renamed: Tensors = file
        .names()
        .into_iter()
        .map(|k| {
            (
                k.replace("decoder.block.0.", "decoder.block.9."),
                file.f32(&k).unwrap(),
            )
        })
        .collect();
    write_safetensors(dir.path().join("adapter_model.safetensors"), renamed, None).unwrap();
    let err = load(&fixture("t5-v1_1"))
        .unwrap()
        .load_peft_adapter(dir.path())
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::UnknownSite { module } if module.starts_with("decoder.block.9.")),
        "{err:?}"
    );
}

#[test]
fn zero_beams_are_refused() {
    let (reference, model) = base();
    let config = GenerationConfig::beam(4, 0);
    let err = model
        .generate(
            reference.ints("input_ids"),
            reference.ints("attention_mask"),
            &RoutingContext::untasked(),
            &config,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InvalidInput {
                name: "num_beams",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A randomly initialised relu / tied model with other dims trains and decodes (cache or not).
#[test]
fn random_model_trains_and_generates() {
    use burn::module::AutodiffModule;
    use mhr_core::TrainableSet;
    use mhr_models::T5Config;

    let config: T5Config = serde_json::from_value(json!({
        "vocab_size": 50, "d_model": 12, "d_kv": 5, "d_ff": 20, "num_layers": 2, "num_decoder_layers": 3,
        "num_heads": 3, "relative_attention_num_buckets": 6, "relative_attention_max_distance": 10,
        "decoder_start_token_id": 0,
    }))
    .unwrap();
    let device = Default::default();
    let model = T5ForConditionalGeneration::<Grad>::new(&config, &device).unwrap();
    assert!(model.lm_head.is_none());
    let model = TrainableSet {
        base: true,
        adapters: false,
        routing: false,
    }
    .apply(model);
    let ids = Tensor::<Grad, 2, Int>::from_data([[5, 9, 49, 1], [4, 1, 0, 0]], &device);
    let mask = Tensor::<Grad, 2, Int>::from_data([[1, 1, 1, 1], [1, 1, 0, 0]], &device);
    let labels = Tensor::<Grad, 2, Int>::from_data([[3, 1, -100], [7, 8, 1]], &device);
    let ctx = RoutingContext::untasked();
    let out = model.forward(ids.clone(), mask.clone(), labels, &ctx).unwrap();
    let grads = out.loss.backward();
    let grad = model.decoder.block[2]
        .self_attention
        .attention
        .v
        .weight
        .grad(&grads)
        .unwrap();
    assert_eq!(grad.dims(), [12, 15]);
    assert!(grad.abs().sum().into_scalar() > 0.0);
    // Generation runs on the inner backend, where T5's dropout (0.1 by default) is off.
    let model = model.valid();
    let (ids, mask) = (ids.inner(), mask.inner());
    let ctx = RoutingContext::untasked();
    for config in [GenerationConfig::greedy(5), GenerationConfig::beam(5, 3)] {
        let run = |use_cache| {
            let config = GenerationConfig {
                use_cache,
                ..config.clone()
            };
            rows(model.generate(ids.clone(), mask.clone(), &ctx, &config).unwrap())
        };
        assert_eq!(run(true), run(false));
    }
}
