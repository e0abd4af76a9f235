//! Registering tasks while serving. A routing-only (`-z`) adaptation of the served adapter differs from it in one
//! routing row per routed layer, so registering it costs `h·S` numbers per layer: its row is put into the served
//! routers (appended for a new name, replacing the row of a served one). An adaptation that changed the skills
//! (a full per-task adapter) is refused.

use std::collections::BTreeMap;
use std::path::Path;

use crate::api::RegisterRequest;
use crate::error::RequestError;
use mhr_core::peft::{ModuleWeights, PeftAdapter, PeftKind};

/// An adaptation folder, read: its adapter, the routing row of the task, and the task's name.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub adapter: PeftAdapter,
    pub row: usize,
}

/// Reads the folders named in registrations (the CLI knows run folders; this crate knows peft adapters).
pub trait TaskSource: Send + Sync {
    /// The adaptation in `path`, its row chosen by `task` (or the folder's own task); the error names what is wrong.
    fn resolve(&self, path: &Path, task: Option<&str>) -> Result<Candidate, String>;
}

/// One task's routing rows, by site path.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingRows {
    pub name: String,
    pub rows: BTreeMap<String, Vec<f32>>,
}

/// The served adapter's skills, the folder reader and the bearer token of `POST /v1/tasks`.
pub struct Registry {
    served: PeftAdapter,
    source: Box<dyn TaskSource>,
    /// `None`: registration over HTTP is off.
    token: Option<String>,
}

impl Registry {
    pub fn new(served: PeftAdapter, source: Box<dyn TaskSource>, token: Option<String>) -> Self {
        Self {
            served,
            source,
            token,
        }
    }

    /// Whether `authorization` (the header's value) carries the token.
    pub fn authorizes(&self, authorization: Option<&str>) -> Option<bool> {
        let token = self.token.as_deref()?;
        Some(authorization.and_then(|a| a.strip_prefix("Bearer ")) == Some(token))
    }

    /// The routing rows a registration puts into the served routers.
    pub fn rows(&self, request: &RegisterRequest) -> Result<RoutingRows, RequestError> {
        let candidate = self
            .source
            .resolve(Path::new(&request.path), request.task.as_deref())
            .map_err(|message| RequestError::invalid("path", message))?;
        let name = request.name.clone().unwrap_or_else(|| candidate.name.clone());
        if name.is_empty() {
            return Err(RequestError::invalid("name", "empty"));
        }
        Ok(RoutingRows {
            rows: routing_rows(&self.served, &candidate, &request.path)?,
            name,
        })
    }
}

/// Row `candidate.row` of every router of `candidate`, refused unless `candidate` is `served` with other routing.
fn routing_rows(
    served: &PeftAdapter,
    candidate: &Candidate,
    path: &str,
) -> Result<BTreeMap<String, Vec<f32>>, RequestError> {
    let not_routing_only = |why: String| {
        RequestError::unprocessable(
            "path",
            format!(
                "{path}: {why}; only routing-only (-z) adaptations of the served adapter register as a task"
            ),
        )
    };
    let shape = |kind: &PeftKind| match kind {
        PeftKind::Poly {
            r,
            n_skills,
            n_splits,
            ..
        } => Some((*r, *n_skills, *n_splits)),
        _ => None,
    };
    let (served_shape, shape_of) = (shape(&served.config.kind), shape(&candidate.adapter.config.kind));
    if served_shape.is_none() || served_shape != shape_of {
        return Err(not_routing_only(format!(
            "its adapter is {:?}, the served one {:?}",
            candidate.adapter.config.kind, served.config.kind
        )));
    }
    let (ours, theirs) = (&served.modules, &candidate.adapter.modules);
    if let Some(module) = ours.keys().find(|m| !theirs.contains_key(*m)) {
        return Err(not_routing_only(format!("it has no adapter at {module}")));
    }
    if let Some(module) = theirs.keys().find(|m| !ours.contains_key(*m)) {
        return Err(not_routing_only(format!(
            "it adapts {module}, which the served adapter does not"
        )));
    }
    let mut rows = BTreeMap::new();
    for (module, weights) in theirs {
        let (
            ModuleWeights::Poly { a, b, logits },
            Some(ModuleWeights::Poly {
                a: served_a,
                b: served_b,
                ..
            }),
        ) = (weights, ours.get(module))
        else {
            return Err(not_routing_only(format!("{module} is not routed")));
        };
        if a != served_a || b != served_b {
            return Err(not_routing_only(format!(
                "its skills at {module} differ from the served ones"
            )));
        }
        let (n_tasks, width) = match logits.shape.as_slice() {
            [n, w] => (*n, *w),
            other => {
                return Err(not_routing_only(format!(
                    "{module}: routing logits of shape {other:?}"
                )));
            }
        };
        if candidate.row >= n_tasks {
            return Err(RequestError::invalid(
                "task",
                format!("row {} of {n_tasks}", candidate.row),
            ));
        }
        let values = logits
            .to_vec::<f32>()
            .map_err(|e| not_routing_only(format!("{module}: routing logits: {e:?}")))?;
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
    fn a_routing_only_adaptation_gives_its_row_and_others_are_refused() {
        let served = fixture();
        let candidate = Candidate {
            name: "t".into(),
            adapter: served.clone(),
            row: 2,
        };
        let rows = routing_rows(&served, &candidate, "dir").unwrap();
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
        let out_of_range = Candidate {
            row: 3,
            ..candidate.clone()
        };
        assert_eq!(
            routing_rows(&served, &out_of_range, "dir").unwrap_err().field,
            "task"
        );
        // Skills trained: a full adapter, refused.
        let mut trained = candidate.clone();
        let (module, weights) = trained.adapter.modules.iter_mut().nth(1).unwrap();
        let module = module.clone();
        if let ModuleWeights::Poly { a, .. } = weights {
            let mut values = a.to_vec::<f32>().unwrap();
            values[0] += 1e-3;
            *a = TensorData::new(values, a.shape.clone());
        }
        let e = routing_rows(&served, &trained, "dir").unwrap_err();
        assert!(
            e.message.contains(&format!("its skills at {module} differ")),
            "{e}"
        );
        let mut fewer = candidate;
        fewer.adapter.modules.pop_first();
        assert!(
            routing_rows(&served, &fewer, "dir")
                .unwrap_err()
                .message
                .contains("has no adapter at")
        );
    }
}
