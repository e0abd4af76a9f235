//! peft interop: `adapter_config.json` + `adapter_model.safetensors` for POLY (incl. `n_splits`), LORA and
//! IA3, with peft's tensor names and shapes, so adapters move between Python and Rust unchanged.
//!
//! peft fields that would change the math and that we cannot honour (DoRA, biases, per-layer rank patterns,
//! `modules_to_save`, ...) are refused with an error naming the field, never silently ignored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use serde_json::{Value, json};

use crate::adapted_linear::Adapter;
use crate::config::{RouterGranularity, RoutingConfig};
use crate::error::CoreError;
use crate::ia3::Ia3;
use crate::io::{SafetensorsFile, read_json, write_atomic, write_safetensors};
use crate::lora::Lora;
use crate::routed::RoutedLora;
use crate::router::PolyRouter;
use crate::tasks::TaskMap;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Our addition beside peft's files: the task names of the routing rows.
pub const TASKS_FILE: &str = "tasks.json";
const PREFIX: &str = "base_model.model.";

/// peft's `target_modules`: a list of names (a module matches when its path equals a name or ends with
/// `.name`) or one regular expression that must match the whole path.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

impl TargetModules {
    pub fn matches(&self, module_path: &str) -> bool {
        match self {
            TargetModules::Names(names) => names
                .iter()
                .any(|n| module_path == n || module_path.ends_with(&format!(".{n}"))),
            TargetModules::Regex(re) => {
                regex::Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(module_path))
            }
        }
    }

    fn to_json(&self) -> Value {
        match self {
            TargetModules::Names(n) => json!(n),
            TargetModules::Regex(r) => json!(r),
        }
    }
}

/// As written in `adapter_config.json`: a JSON list of names, or the regular expression as a JSON string.
impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

/// The adapter type of a peft folder, with the settings that shape its tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum PeftKind {
    Poly {
        r: usize,
        n_tasks: usize,
        n_skills: usize,
        n_splits: usize,
    },
    Lora {
        r: usize,
        alpha: f64,
        rslora: bool,
    },
    Ia3 {
        feedforward_modules: TargetModules,
    },
}

/// A parsed `adapter_config.json`. The raw JSON is kept so that saving what was loaded writes it back.
#[derive(Debug, Clone)]
pub struct PeftConfig {
    pub kind: PeftKind,
    pub target_modules: TargetModules,
    pub raw: Value,
}

/// One adapted module's tensors, in our layouts (LoRA transposed from peft's `[out, in]`).
#[derive(Debug, Clone)]
pub enum ModuleWeights {
    Poly {
        a: TensorData,
        b: TensorData,
        logits: TensorData,
    },
    Lora {
        a: TensorData,
        b: TensorData,
    },
    Ia3 {
        l: TensorData,
        feedforward: bool,
    },
}

/// A peft adapter folder in memory: config, weights per module path (HF names), optional task names.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    pub config: PeftConfig,
    pub modules: BTreeMap<String, ModuleWeights>,
    pub tasks: Option<TaskMap>,
}

fn field<'a>(raw: &'a Value, key: &str) -> Option<&'a Value> {
    raw.get(key).filter(|v| !v.is_null())
}

fn unsupported(path: &Path, field: &str, reason: impl Into<String>) -> CoreError {
    CoreError::Unsupported {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn usize_field(raw: &Value, path: &Path, key: &str, default: Option<usize>) -> Result<usize, CoreError> {
    match field(raw, key) {
        None => default.ok_or_else(|| unsupported(path, key, "missing")),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| unsupported(path, key, format!("expected a positive integer, found {v}"))),
    }
}

fn targets(raw: &Value, path: &Path, key: &str) -> Result<Option<TargetModules>, CoreError> {
    match field(raw, key) {
        None => Ok(None),
        Some(Value::String(s)) => {
            regex::Regex::new(s)
                .map_err(|e| unsupported(path, key, format!("invalid regular expression: {e}")))?;
            Ok(Some(TargetModules::Regex(s.clone())))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| unsupported(path, key, format!("not a string: {v}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| Some(TargetModules::Names(v))),
        Some(v) => Err(unsupported(
            path,
            key,
            format!("expected a list or a string, found {v}"),
        )),
    }
}

/// Fields whose non-default values change the model in ways we do not implement.
fn refuse_if_set(raw: &Value, path: &Path, keys: &[&str]) -> Result<(), CoreError> {
    for key in keys {
        let set = match field(raw, key) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Object(m)) => !m.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(unsupported(path, key, format!("{} is not supported", raw[key])));
        }
    }
    Ok(())
}

impl PeftConfig {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let path = path.as_ref();
        let raw: Value = read_json(path)?;
        Self::from_json(raw, path)
    }

    /// `path` is only used in error messages.
    pub fn from_json(raw: Value, path: &Path) -> Result<Self, CoreError> {
        let peft_type = field(&raw, "peft_type").and_then(Value::as_str).unwrap_or("");
        refuse_if_set(
            &raw,
            path,
            &[
                "modules_to_save",
                "exclude_modules",
                "layers_to_transform",
                "fan_in_fan_out",
            ],
        )?;
        let target_modules = targets(&raw, path, "target_modules")?.ok_or_else(|| {
            unsupported(
                path,
                "target_modules",
                "missing (peft's per-model defaults are not applied)",
            )
        })?;
        let kind = match peft_type {
            "POLY" => {
                let poly_type = field(&raw, "poly_type").and_then(Value::as_str).unwrap_or("poly");
                if poly_type != "poly" {
                    return Err(unsupported(
                        path,
                        "poly_type",
                        format!("`{poly_type}` (only `poly` exists)"),
                    ));
                }
                PeftKind::Poly {
                    r: usize_field(&raw, path, "r", Some(8))?,
                    n_tasks: usize_field(&raw, path, "n_tasks", Some(1))?,
                    n_skills: usize_field(&raw, path, "n_skills", Some(4))?,
                    n_splits: usize_field(&raw, path, "n_splits", Some(1))?,
                }
            }
            "LORA" => {
                refuse_if_set(
                    &raw,
                    path,
                    &[
                        "use_dora",
                        "rank_pattern",
                        "alpha_pattern",
                        "layer_replication",
                        "use_qalora",
                        "lora_bias",
                    ],
                )?;
                if let Some(b) = field(&raw, "bias")
                    .and_then(Value::as_str)
                    .filter(|b| *b != "none")
                {
                    return Err(unsupported(
                        path,
                        "bias",
                        format!("`{b}` (only `none` is supported)"),
                    ));
                }
                let r = usize_field(&raw, path, "r", Some(8))?;
                let alpha = match field(&raw, "lora_alpha") {
                    None => 8.0,
                    Some(v) => v
                        .as_f64()
                        .ok_or_else(|| unsupported(path, "lora_alpha", format!("not a number: {v}")))?,
                };
                let rslora = field(&raw, "use_rslora")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                PeftKind::Lora { r, alpha, rslora }
            }
            "IA3" => PeftKind::Ia3 {
                feedforward_modules: targets(&raw, path, "feedforward_modules")?
                    .unwrap_or(TargetModules::Names(Vec::new())),
            },
            other => {
                return Err(unsupported(
                    path,
                    "peft_type",
                    format!("`{other}` (supported: POLY, LORA, IA3)"),
                ));
            }
        };
        Ok(Self {
            kind,
            target_modules,
            raw,
        })
    }

    /// A fresh peft config for adapters built here.
    pub fn new(kind: PeftKind, target_modules: TargetModules, base_model: Option<&str>) -> Self {
        let targets = target_modules.to_json();
        let mut raw = match &kind {
            PeftKind::Poly {
                r,
                n_tasks,
                n_skills,
                n_splits,
            } => json!({
                "peft_type": "POLY", "poly_type": "poly", "r": r, "n_tasks": n_tasks, "n_skills": n_skills,
                "n_splits": n_splits, "init_weights": true,
            }),
            PeftKind::Lora { r, alpha, rslora } => json!({
                "peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "lora_dropout": 0.0,
                "bias": "none", "fan_in_fan_out": false, "init_lora_weights": true, "use_dora": false,
            }),
            PeftKind::Ia3 { feedforward_modules } => json!({
                "peft_type": "IA3", "feedforward_modules": feedforward_modules.to_json(),
                "fan_in_fan_out": false, "init_ia3_weights": true,
            }),
        };
        if let Value::Object(m) = &mut raw {
            m.insert("target_modules".into(), targets);
            m.insert("task_type".into(), json!("SEQ_2_SEQ_LM"));
            m.insert("inference_mode".into(), json!(true));
            m.insert("base_model_name_or_path".into(), json!(base_model));
            m.insert("modules_to_save".into(), Value::Null);
            m.insert("revision".into(), Value::Null);
        }
        Self {
            kind,
            target_modules,
            raw,
        }
    }
}

impl PeftAdapter {
    /// Reads a peft adapter folder; every tensor must belong to a module of the config's type.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, CoreError> {
        let dir = dir.as_ref();
        let config = PeftConfig::load(dir.join(CONFIG_FILE))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let file = SafetensorsFile::open(&weights_path)?;
        let suffixes: &[&str] = match config.kind {
            PeftKind::Poly { .. } => &["poly_lora_A", "poly_lora_B", "poly_router.module_logits"],
            PeftKind::Lora { .. } => &["lora_A.weight", "lora_B.weight"],
            PeftKind::Ia3 { .. } => &["ia3_l"],
        };
        let mut paths: Vec<String> = Vec::new();
        for key in file.names() {
            let module = key
                .strip_prefix(PREFIX)
                .and_then(|rest| suffixes.iter().find_map(|s| rest.strip_suffix(&format!(".{s}"))))
                .ok_or_else(|| CoreError::UnexpectedTensor {
                    path: weights_path.clone(),
                    key: key.clone(),
                })?;
            if !paths.iter().any(|p| p == module) {
                paths.push(module.to_string());
            }
        }
        let mut modules = BTreeMap::new();
        for module in paths {
            let key = |s: &str| format!("{PREFIX}{module}.{s}");
            let weights = match &config.kind {
                PeftKind::Poly {
                    r,
                    n_tasks,
                    n_skills,
                    n_splits,
                } => {
                    let a = file.f32(&key("poly_lora_A"))?;
                    let b = file.f32(&key("poly_lora_B"))?;
                    let [ah, as_, _, ar] = dims4(&a, &weights_path, &key("poly_lora_A"))?;
                    let [bh, bs, br, _] = dims4(&b, &weights_path, &key("poly_lora_B"))?;
                    let expect = [*n_splits, *n_skills, *r];
                    for (name, found) in [("poly_lora_A", [ah, as_, ar]), ("poly_lora_B", [bh, bs, br])] {
                        if found != expect {
                            return Err(CoreError::ShapeMismatch {
                                path: weights_path.clone(),
                                key: key(name),
                                expected: expect.to_vec(),
                                found: found.to_vec(),
                            });
                        }
                    }
                    let logits = file.f32_shaped(
                        &key("poly_router.module_logits"),
                        &[*n_tasks, n_splits * n_skills],
                    )?;
                    ModuleWeights::Poly { a, b, logits }
                }
                PeftKind::Lora { r, .. } => {
                    let a = file.f32(&key("lora_A.weight"))?; // [r, d_in]
                    let d_in = a.shape.get(1).copied().unwrap_or(0);
                    let a = file.f32_shaped(&key("lora_A.weight"), &[*r, d_in])?;
                    let b = file.f32(&key("lora_B.weight"))?; // [d_out, r]
                    let d_out = b.shape.first().copied().unwrap_or(0);
                    let b = file.f32_shaped(&key("lora_B.weight"), &[d_out, *r])?;
                    ModuleWeights::Lora {
                        a: transpose(a),
                        b: transpose(b),
                    }
                }
                PeftKind::Ia3 { feedforward_modules } => {
                    let l = file.f32(&key("ia3_l"))?;
                    let feedforward = feedforward_modules.matches(&module);
                    let n: usize = l.shape.iter().product();
                    let expected = if feedforward { vec![1, n] } else { vec![n, 1] };
                    if l.shape.to_vec() != expected {
                        return Err(CoreError::ShapeMismatch {
                            path: weights_path.clone(),
                            key: key("ia3_l"),
                            expected,
                            found: l.shape.to_vec(),
                        });
                    }
                    ModuleWeights::Ia3 {
                        l: TensorData::new(l.to_vec::<f32>().unwrap_or_default(), [n]),
                        feedforward,
                    }
                }
            };
            modules.insert(module, weights);
        }
        let tasks_path = dir.join(TASKS_FILE);
        let tasks = if tasks_path.exists() {
            Some(TaskMap::load(&tasks_path)?)
        } else {
            None
        };
        Ok(Self {
            config,
            modules,
            tasks,
        })
    }

    /// Writes `adapter_config.json`, `adapter_model.safetensors` (and `tasks.json`), each atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), CoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|error| CoreError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let mut tensors = Vec::new();
        for (module, weights) in &self.modules {
            let key = |s: &str| format!("{PREFIX}{module}.{s}");
            match weights {
                ModuleWeights::Poly { a, b, logits } => {
                    tensors.push((key("poly_lora_A"), a.clone()));
                    tensors.push((key("poly_lora_B"), b.clone()));
                    tensors.push((key("poly_router.module_logits"), logits.clone()));
                }
                ModuleWeights::Lora { a, b } => {
                    tensors.push((key("lora_A.weight"), transpose(a.clone())));
                    tensors.push((key("lora_B.weight"), transpose(b.clone())));
                }
                ModuleWeights::Ia3 { l, feedforward } => {
                    let n = l.num_elements();
                    let shape = if *feedforward { [1, n] } else { [n, 1] };
                    tensors.push((
                        key("ia3_l"),
                        TensorData::new(l.to_vec::<f32>().unwrap_or_default(), shape),
                    ));
                }
            }
        }
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(dir.join(WEIGHTS_FILE), tensors, Some(metadata))?;
        let config =
            serde_json::to_string_pretty(&self.config.raw).map_err(|e| CoreError::Config(e.to_string()))?;
        write_atomic(dir.join(CONFIG_FILE), config.as_bytes())?;
        if let Some(tasks) = &self.tasks {
            tasks.save(dir.join(TASKS_FILE))?;
        }
        Ok(())
    }

    /// The adapter for the module at `path` (HF name) of a `d_in → d_out` linear, if the folder has one.
    pub fn adapter_for<B: Backend>(
        &self,
        path: &str,
        d_in: usize,
        d_out: usize,
        routing: &RoutingConfig,
        device: &B::Device,
    ) -> Result<Option<Adapter<B>>, CoreError> {
        let Some(weights) = self.modules.get(path) else {
            return Ok(None);
        };
        let here = PathBuf::from(WEIGHTS_FILE);
        let mismatch = |key: &str, expected: Vec<usize>, found: &TensorData| CoreError::ShapeMismatch {
            path: here.clone(),
            key: format!("{PREFIX}{path}.{key}"),
            expected,
            found: found.shape.to_vec(),
        };
        Ok(Some(match (weights, &self.config.kind) {
            (
                ModuleWeights::Poly { a, b, logits },
                PeftKind::Poly {
                    r,
                    n_skills,
                    n_splits,
                    ..
                },
            ) => {
                let (h, s, r) = (*n_splits, *n_skills, *r);
                if !d_in.is_multiple_of(h) || !d_out.is_multiple_of(h) {
                    return Err(CoreError::Config(format!(
                        "{path}: n_splits = {h} does not divide d_in = {d_in} and d_out = {d_out}"
                    )));
                }
                if a.shape.to_vec() != [h, s, d_in / h, r] {
                    return Err(mismatch("poly_lora_A", vec![h, s, d_in / h, r], a));
                }
                if b.shape.to_vec() != [h, s, r, d_out / h] {
                    return Err(mismatch("poly_lora_B", vec![h, s, r, d_out / h], b));
                }
                // peft's routers are per layer, whatever granularity `routing` names.
                let routing = RoutingConfig {
                    granularity: RouterGranularity::PerLayer,
                    ..routing.clone()
                };
                let router =
                    PolyRouter::from_logits(Tensor::from_data(logits.clone(), device), h, s, routing);
                let a = Tensor::from_data(a.clone(), device);
                let b = Tensor::from_data(b.clone(), device);
                Adapter::RoutedLora(RoutedLora::from_parts(a, b, router, 1.0 / r as f64))
            }
            (ModuleWeights::Lora { a, b }, PeftKind::Lora { r, alpha, rslora }) => {
                if a.shape.to_vec() != [d_in, *r] {
                    return Err(mismatch("lora_A.weight", vec![*r, d_in], &transpose(a.clone())));
                }
                if b.shape.to_vec() != [*r, d_out] {
                    return Err(mismatch("lora_B.weight", vec![d_out, *r], &transpose(b.clone())));
                }
                let scale = if *rslora {
                    alpha / (*r as f64).sqrt()
                } else {
                    alpha / *r as f64
                };
                Adapter::Lora(Lora::from_tensors(
                    Tensor::from_data(a.clone(), device),
                    Tensor::from_data(b.clone(), device),
                    scale,
                ))
            }
            (ModuleWeights::Ia3 { l, feedforward }, PeftKind::Ia3 { .. }) => {
                let width = if *feedforward { d_in } else { d_out };
                if l.num_elements() != width {
                    return Err(mismatch(
                        "ia3_l",
                        if *feedforward {
                            vec![1, width]
                        } else {
                            vec![width, 1]
                        },
                        l,
                    ));
                }
                Adapter::Ia3(Ia3::from_tensor(
                    Tensor::from_data(l.clone(), device),
                    *feedforward,
                ))
            }
            _ => {
                return Err(CoreError::Config(format!(
                    "{path}: weights do not match the adapter type"
                )));
            }
        }))
    }

    /// The peft adapter holding `modules` (HF module path, adapter), the inverse of [`Self::adapter_for`]:
    /// every module must carry the same kind of adapter with the same settings (rank, skills, heads, tasks,
    /// scale), since one `adapter_config.json` describes them all. `target_modules` lists the paths.
    pub fn from_adapters<B: Backend>(
        modules: &[(String, Adapter<B>)],
        base_model: Option<&str>,
    ) -> Result<Self, CoreError> {
        let mut kind: Option<(PeftKind, &str)> = None;
        let mut weights = BTreeMap::new();
        let mut feedforward = Vec::new();
        for (path, adapter) in modules {
            let this = match adapter {
                Adapter::RoutedLora(r) => {
                    let [h, s, _, rank] = r.poly_lora_a.dims();
                    if (r.scale - 1.0 / rank as f64).abs() > 1e-12 {
                        return Err(CoreError::Config(format!(
                            "{path}: scale {} is not 1/r = 1/{rank}, which peft's POLY hard-codes",
                            r.scale
                        )));
                    }
                    PeftKind::Poly {
                        r: rank,
                        n_tasks: own_router(path, r)?.n_tasks(),
                        n_skills: s,
                        n_splits: h,
                    }
                }
                Adapter::Lora(l) => {
                    let rank = l.lora_a.dims()[1];
                    PeftKind::Lora {
                        r: rank,
                        alpha: l.scale * rank as f64,
                        rslora: false,
                    }
                }
                Adapter::Ia3(i) => {
                    if i.feedforward {
                        feedforward.push(path.clone());
                    }
                    PeftKind::Ia3 {
                        feedforward_modules: TargetModules::Names(Vec::new()),
                    }
                }
                Adapter::RoutedIa3(_) => {
                    return Err(CoreError::Config(format!(
                        "{path}: routed (IA)^3 has no peft format (peft has no Poly-(IA)^3)"
                    )));
                }
            };
            match &kind {
                None => kind = Some((this, path)),
                Some((first, first_path)) if *first != this => {
                    return Err(CoreError::Config(format!(
                        "one peft folder holds one adapter setting: {first_path} has {first:?} but {path} has \
                         {this:?}"
                    )));
                }
                Some(_) => {}
            }
            weights.insert(path.clone(), Self::weights_of(adapter)?);
        }
        let Some((mut kind, _)) = kind else {
            return Err(CoreError::Config(
                "the model has no adapters to save in peft format".into(),
            ));
        };
        if let PeftKind::Ia3 { feedforward_modules } = &mut kind {
            *feedforward_modules = TargetModules::Names(feedforward);
        }
        let targets = TargetModules::Names(weights.keys().cloned().collect());
        Ok(Self {
            config: PeftConfig::new(kind, targets, base_model),
            modules: weights,
            tasks: None,
        })
    }

    /// The tensors of one adapter, in peft's layout. Routed (IA)^3 has no peft format.
    pub fn weights_of<B: Backend>(adapter: &Adapter<B>) -> Result<ModuleWeights, CoreError> {
        Ok(match adapter {
            Adapter::RoutedLora(r) => ModuleWeights::Poly {
                a: r.poly_lora_a.val().into_data(),
                b: r.poly_lora_b.val().into_data(),
                logits: own_router("a routed LoRA", r)?.module_logits.val().into_data(),
            },
            Adapter::Lora(l) => ModuleWeights::Lora {
                a: l.lora_a.val().into_data(),
                b: l.lora_b.val().into_data(),
            },
            Adapter::Ia3(i) => ModuleWeights::Ia3 {
                l: i.ia3_l.val().into_data(),
                feedforward: i.feedforward,
            },
            Adapter::RoutedIa3(_) => {
                return Err(CoreError::Config(
                    "routed (IA)^3 has no peft format (peft has no Poly-(IA)^3)".into(),
                ));
            }
        })
    }
}

/// peft has per-layer routers only: a site of a shared group is exported through a per-layer copy.
fn own_router<'a, B: Backend>(path: &str, r: &'a RoutedLora<B>) -> Result<&'a PolyRouter<B>, CoreError> {
    r.router.own().ok_or_else(|| {
        CoreError::Config(format!(
            "{path}: its router is shared by its group and peft has per-layer routers only; export a \
             per-layer copy (Adapter::per_layer_copy)"
        ))
    })
}

fn dims4(t: &TensorData, path: &Path, key: &str) -> Result<[usize; 4], CoreError> {
    <[usize; 4]>::try_from(t.shape.to_vec()).map_err(|found| CoreError::ShapeMismatch {
        path: path.to_path_buf(),
        key: key.to_string(),
        expected: vec![0; 4],
        found,
    })
}

/// Transposes a 2-D f32 tensor's data (peft stores LoRA factors as PyTorch `[out, in]`).
fn transpose(t: TensorData) -> TensorData {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let v = t.to_vec::<f32>().unwrap_or_default();
    let mut out = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    TensorData::new(out, [cols, rows])
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    type B = NdArray;

    fn vector(values: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn ia3_adapters_round_trip_through_a_peft_folder() {
        let modules = vec![
            (
                "encoder.block.0.layer.0.SelfAttention.k".to_string(),
                Adapter::Ia3(Ia3::from_tensor(vector(&[1.5, -2.0]), false)),
            ),
            (
                "encoder.block.0.layer.1.DenseReluDense.wo".to_string(),
                Adapter::Ia3(Ia3::from_tensor(vector(&[0.25, 3.0, 4.0]), true)),
            ),
        ];
        let adapter = PeftAdapter::from_adapters(&modules, Some("base")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        adapter.save(dir.path()).unwrap();
        let loaded = PeftAdapter::load(dir.path()).unwrap();
        assert_eq!(loaded.config.raw["peft_type"], "IA3");
        assert_eq!(loaded.config.raw["base_model_name_or_path"], "base");
        let routing = RoutingConfig::default();
        let device = Default::default();
        let k = loaded
            .adapter_for::<B>(&modules[0].0, 4, 2, &routing, &device)
            .unwrap();
        let wo = loaded
            .adapter_for::<B>(&modules[1].0, 3, 4, &routing, &device)
            .unwrap();
        match (k, wo) {
            (Some(Adapter::Ia3(k)), Some(Adapter::Ia3(wo))) => {
                assert!(!k.feedforward && wo.feedforward);
                assert_eq!(k.ia3_l.val().into_data().to_vec::<f32>().unwrap(), [1.5, -2.0]);
                assert_eq!(
                    wo.ia3_l.val().into_data().to_vec::<f32>().unwrap(),
                    [0.25, 3.0, 4.0]
                );
            }
            other => panic!("expected two (IA)^3 adapters, found {other:?}"),
        }
    }

    #[test]
    fn one_folder_holds_one_adapter_setting() {
        let device = Default::default();
        let lora = |rank: usize| {
            Adapter::Lora(Lora::from_tensors(
                Tensor::<B, 2>::zeros([4, rank], &device),
                Tensor::<B, 2>::zeros([rank, 4], &device),
                1.0 / rank as f64,
            ))
        };
        let mixed = vec![
            ("a.q".to_string(), lora(2)),
            (
                "a.k".to_string(),
                Adapter::Ia3(Ia3::from_tensor(vector(&[1.0; 4]), false)),
            ),
        ];
        let err = PeftAdapter::from_adapters(&mixed, None).unwrap_err().to_string();
        assert!(err.contains("a.q") && err.contains("a.k"), "{err}");
        let ranks = vec![("a.q".to_string(), lora(2)), ("a.v".to_string(), lora(3))];
        assert!(PeftAdapter::from_adapters(&ranks, None).is_err());
        let none: Vec<(String, Adapter<B>)> = Vec::new();
        let err = PeftAdapter::from_adapters(&none, None).unwrap_err().to_string();
        assert!(err.contains("no adapters"), "{err}");
        let same = vec![("a.q".to_string(), lora(2)), ("a.v".to_string(), lora(2))];
        let adapter = PeftAdapter::from_adapters(&same, None).unwrap();
        assert_eq!(
            adapter.config.kind,
            PeftKind::Lora {
                r: 2,
                alpha: 1.0,
                rslora: false
            }
        );
    }
}
