//! Registering tasks while serving. A routing-only (`-z`) adaptation of the served adapter differs from it in one
//! routing row per routed layer, so registering it costs `h·S` numbers per layer: its row is put into the served
//! routers (appended for a new name, replacing the row of a served one). Any other adaptation (its skills trained,
//! a LoRA, an (IA)³ vector) is a full adapter: it is attached to the frozen base model for that task alone.

use std::collections::BTreeMap;
use std::path::Path;

use crate::api::RegisterRequest;
use crate::error::RequestError;
use mhr_core::peft::{ModuleWeights, PeftAdapter, PeftKind};

/// An adaptation folder, read: its adapter, its task's routing row (0 for an adapter that does not route by
/// task), and the task's name when the folder knows it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: Option<String>,
    pub adapter: PeftAdapter,
    pub row: usize,
}

/// Reads the folders named in registrations (the CLI knows run folders; this crate knows peft adapters).
pub trait TaskSource: Send + Sync {
    /// The adaptation in `path`, its row chosen by `task` (or the folder's own task); the error names what is wrong.
    fn resolve(&self, path: &Path, task: Option<&str>) -> Result<Candidate, String>;
}

/// What a registration puts into the server, for the task `name`.
#[derive(Debug, Clone)]
pub enum Registration {
    /// A routing-only adaptation of the served adapter: the task's routing rows, by site path.
    Routing {
        name: String,
        rows: BTreeMap<String, Vec<f32>>,
    },
    /// A full adapter of the task's own, routed by its row `row` when it routes by task.
    Adapter {
        name: String,
        adapter: Box<PeftAdapter>,
        row: usize,
    },
}

impl Registration {
    pub fn name(&self) -> &str {
        match self {
            Registration::Routing { name, .. } | Registration::Adapter { name, .. } => name,
        }
    }
}

/// The served adapter, the folder reader and the bearer token of `POST /v1/tasks`.
pub struct Registry {
    /// `None`: the base model is served without an adapter.
    served: Option<PeftAdapter>,
    source: Box<dyn TaskSource>,
    /// `None`: registration over HTTP is off.
    token: Option<String>,
}

impl Registry {
    pub fn new(served: Option<PeftAdapter>, source: Box<dyn TaskSource>, token: Option<String>) -> Self {
        Self {
            served,
            source,
            token,
        }
    }

    /// Whether `authorization` (the header's value) carries the token; `None` when registration is off.
    pub fn authorizes(&self, authorization: Option<&str>) -> Option<bool> {
        let token = self.token.as_deref()?;
        Some(authorization.and_then(|a| a.strip_prefix("Bearer ")) == Some(token))
    }

    /// What registering `request` puts into the server.
    pub fn registration(&self, request: &RegisterRequest) -> Result<Registration, RequestError> {
        let candidate = self
            .source
            .resolve(Path::new(&request.path), request.task.as_deref())
            .map_err(|message| RequestError::invalid("path", message))?;
        let name = request
            .name
            .clone()
            .or_else(|| candidate.name.clone())
            .ok_or_else(|| {
                RequestError::invalid(
                    "name",
                    format!("required: {} does not name its task", request.path),
                )
            })?;
        if name.is_empty() {
            return Err(RequestError::invalid("name", "empty"));
        }
        let n_tasks = match candidate.adapter.config.kind {
            PeftKind::Poly { n_tasks, .. } => n_tasks,
            _ => 1,
        };
        if candidate.row >= n_tasks {
            return Err(RequestError::invalid(
                "task",
                format!("row {} of {n_tasks}", candidate.row),
            ));
        }
        Ok(match &self.served {
            Some(served) if routing_only(served, &candidate.adapter) => Registration::Routing {
                rows: routing_rows(&candidate)?,
                name,
            },
            _ => Registration::Adapter {
                name,
                adapter: Box::new(candidate.adapter),
                row: candidate.row,
            },
        })
    }
}

/// Whether `adapter` is `served` with other routing: the same routed modules with the same skills.
fn routing_only(served: &PeftAdapter, adapter: &PeftAdapter) -> bool {
    let shape = |kind: &PeftKind| match kind {
        PeftKind::Poly {
            r,
            n_skills,
            n_splits,
            ..
        } => Some((*r, *n_skills, *n_splits)),
        _ => None,
    };
    let (ours, theirs) = (&served.modules, &adapter.modules);
    shape(&served.config.kind).is_some()
        && shape(&served.config.kind) == shape(&adapter.config.kind)
        && ours.len() == theirs.len()
        && theirs
            .iter()
            .all(|(module, weights)| match (weights, ours.get(module)) {
                (
                    ModuleWeights::Poly { a, b, .. },
                    Some(ModuleWeights::Poly {
                        a: served_a,
                        b: served_b,
                        ..
                    }),
                ) => a == served_a && b == served_b,
                _ => false,
            })
}

/// Row `candidate.row` of every router of `candidate`.
fn routing_rows(candidate: &Candidate) -> Result<BTreeMap<String, Vec<f32>>, RequestError> {
    let mut rows = BTreeMap::new();
    for (module, weights) in &candidate.adapter.modules {
        let ModuleWeights::Poly { logits, .. } = weights else {
            continue;
        };
        let unreadable =
            |why: String| RequestError::unprocessable("path", format!("{module}: routing logits {why}"));
        let width = match logits.shape.as_slice() {
            [n, w] if candidate.row < *n => *w,
            other => return Err(unreadable(format!("of shape {other:?}"))),
        };
        let values = logits.to_vec::<f32>().map_err(|e| unreadable(format!("{e:?}")))?;
        rows.insert(
            module.clone(),
            values[candidate.row * width..(candidate.row + 1) * width].to_vec(),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn fixture() -> PeftAdapter {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/t5/t5-v1_1-mhr"
        );
        PeftAdapter::load(
            std::env::var("MHR_SHARED").map_or(dir.into(), |s| format!("{s}/fixtures/t5/t5-v1_1-mhr")),
        )
        .unwrap()
    }

    #[test]
    fn a_routing_only_adaptation_gives_its_row_and_others_are_full_adapters() {
        let served = fixture();
        let candidate = Candidate {
            name: Some("t".into()),
            adapter: served.clone(),
            row: 2,
        };
        assert!(routing_only(&served, &candidate.adapter));
        let rows = routing_rows(&candidate).unwrap();
        assert_eq!(rows.len(), served.modules.len());
        for (module, row) in &rows {
            let ModuleWeights::Poly { logits, .. } = &served.modules[module] else {
                panic!("{module}: not routed");
            };
            let width = logits.shape[1];
            assert_eq!(
                row[..],
                logits.to_vec::<f32>().unwrap()[2 * width..3 * width],
                "{module}"
            );
        }
        // Skills trained, or fewer modules: a full adapter.
        let mut trained = candidate.adapter.clone();
        if let Some(ModuleWeights::Poly { a, .. }) = trained.modules.values_mut().nth(1) {
            let mut values = a.to_vec::<f32>().unwrap();
            values[0] += 1e-3;
            *a = TensorData::new(values, a.shape.clone());
        }
        assert!(!routing_only(&served, &trained));
        let mut fewer = candidate.adapter.clone();
        fewer.modules.pop_first();
        assert!(!routing_only(&served, &fewer));
        assert!(!routing_only(&fewer, &served));
    }

    struct Folder(Candidate);

    impl TaskSource for Folder {
        fn resolve(&self, _: &Path, _: Option<&str>) -> Result<Candidate, String> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn registrations_are_named_and_their_rows_checked() {
        let served = fixture();
        let registry = |name: Option<&str>, row: usize, served_adapter: Option<PeftAdapter>| {
            let candidate = Candidate {
                name: name.map(String::from),
                adapter: served.clone(),
                row,
            };
            Registry::new(served_adapter, Box::new(Folder(candidate)), None)
        };
        let request = |name: Option<&str>| RegisterRequest {
            path: "dir".into(),
            name: name.map(String::from),
            task: None,
        };
        let routing = registry(Some("t"), 1, Some(served.clone()))
            .registration(&request(Some("renamed")))
            .unwrap();
        assert!(matches!(&routing, Registration::Routing { name, .. } if name == "renamed"));
        // Without a served adapter everything is an adapter of its own.
        let own = registry(Some("t"), 1, None).registration(&request(None)).unwrap();
        assert!(matches!(&own, Registration::Adapter { name, row: 1, .. } if name == "t"));
        let e = registry(None, 0, None).registration(&request(None)).unwrap_err();
        assert_eq!(e.field, "name");
        let e = registry(Some("t"), 3, Some(served.clone()))
            .registration(&request(None))
            .unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("task", "row 3 of 3"));
    }
}
