//! Requests → token ids and routing rows, checked against the served tasks and the [`Limits`]. Runs on the
//! request's side (not the model worker), so a bad request is refused without waiting in the queue.

use std::sync::{Arc, PoisonError, RwLock};

use mhr_core::TaskMap;
use mhr_data::{EncodedChoices, TextTokenizer};

use crate::api::{GenerateRequest, ScoreRequest};
use crate::engine::{Decoding, Route};
use crate::error::{RequestError, ServeError};

/// What one request may ask for. Past a limit a request is refused with the field named, never truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most input ids (eos included).
    pub max_input_tokens: usize,
    /// Most ids of one answer choice (eos included).
    pub max_choice_tokens: usize,
    /// Most choices of one scoring request.
    pub max_choices: usize,
    /// Most inputs of one generation request.
    pub max_inputs: usize,
    /// The largest `max_new_tokens` a request may ask for.
    pub max_new_tokens: usize,
    /// `max_new_tokens` of a request that gives none.
    pub default_new_tokens: usize,
    /// The largest `num_beams`.
    pub max_beams: usize,
}

impl Default for Limits {
    /// The paper's SNI lengths (1024 source, 128 target ids).
    fn default() -> Self {
        Self {
            max_input_tokens: 1024,
            max_choice_tokens: 128,
            max_choices: 64,
            max_inputs: 64,
            max_new_tokens: 128,
            default_new_tokens: 128,
            max_beams: 8,
        }
    }
}

/// A generation request, encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateJob {
    pub route: Route,
    /// Per input, its ids (ending in eos).
    pub sources: Vec<Vec<u32>>,
    pub decoding: Decoding,
}

/// A scoring request, encoded: one example with every choice as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreJob {
    /// The example's `task_id` is the routing row of [`Route::row`].
    pub adapter: Option<usize>,
    pub example: EncodedChoices,
    pub choices: Vec<String>,
}

/// The task names requests may give, written by task registration.
#[derive(Debug)]
struct Tasks {
    /// The served adapter's routing rows; `None`: it does not route by task, and its requests name none.
    routed: Option<TaskMap>,
    /// Tasks with an adapter of their own (not a row of the served one), by registration.
    own: Vec<(String, Route)>,
}

/// The tokenizer, the served tasks and the limits.
pub struct Inputs {
    tokenizer: Arc<dyn TextTokenizer>,
    tasks: RwLock<Tasks>,
    limits: Limits,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs")
            .field("tasks", &self.tasks)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Inputs {
    /// `tasks`: the routing rows' names for a routed adapter (`None` otherwise).
    pub fn new(
        tokenizer: Arc<dyn TextTokenizer>,
        tasks: Option<TaskMap>,
        limits: Limits,
    ) -> Result<Self, ServeError> {
        let positive = [
            ("max_input_tokens", limits.max_input_tokens),
            ("max_choice_tokens", limits.max_choice_tokens),
            ("max_choices", limits.max_choices),
            ("max_inputs", limits.max_inputs),
            ("max_new_tokens", limits.max_new_tokens),
            ("max_beams", limits.max_beams),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ServeError::Config(format!("limit {name} must be at least 1")));
        }
        if limits.default_new_tokens > limits.max_new_tokens {
            return Err(ServeError::Config(format!(
                "default_new_tokens {} exceeds max_new_tokens {}",
                limits.default_new_tokens, limits.max_new_tokens
            )));
        }
        Ok(Self {
            tokenizer,
            tasks: RwLock::new(Tasks {
                routed: tasks,
                own: Vec::new(),
            }),
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn tokenizer(&self) -> &dyn TextTokenizer {
        self.tokenizer.as_ref()
    }

    fn tasks(&self) -> std::sync::RwLockReadGuard<'_, Tasks> {
        self.tasks.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task names requests may give: the served adapter's routing rows in order, then the tasks with their own
    /// adapter.
    pub fn task_names(&self) -> Vec<String> {
        let tasks = self.tasks();
        let routed = tasks.routed.as_ref().map_or(&[][..], TaskMap::names);
        routed
            .iter()
            .chain(tasks.own.iter().map(|(name, _)| name))
            .cloned()
            .collect()
    }

    /// Where a registration of `name` as a routing row of the served adapter goes: its own row when served
    /// (`true`), else the next free one (`false`).
    pub fn task_row(&self, name: &str) -> Result<(usize, bool), RequestError> {
        let tasks = self.tasks();
        let routed = tasks.routed.as_ref().ok_or_else(|| {
            RequestError::unprocessable("path", "the served adapter does not route by task")
        })?;
        if tasks.own.iter().any(|(own, _)| own == name) {
            return Err(RequestError::unprocessable(
                "name",
                format!("task `{name}` is served by an adapter of its own; register it under another name"),
            ));
        }
        Ok(match routed.names().iter().position(|n| n == name) {
            Some(row) => (row, true),
            None => (routed.len(), false),
        })
    }

    /// Serves `name` at a routing row of the served adapter (its row already in the model's routers).
    pub fn add_task(&self, name: &str) -> Result<usize, ServeError> {
        let mut tasks = self.tasks.write().unwrap_or_else(PoisonError::into_inner);
        let Some(routed) = &mut tasks.routed else {
            return Err(ServeError::Config(
                "the served adapter does not route by task".into(),
            ));
        };
        Ok(routed
            .extend([name.to_string()])
            .map_err(|e| ServeError::Config(e.to_string()))?[0])
    }

    /// The adapter a registration of `name` with an adapter of its own goes to: its own when served (`true`),
    /// else the next one (`false`). Refused for a name served by a routing row.
    pub fn own_adapter(&self, name: &str) -> Result<(usize, bool), RequestError> {
        let tasks = self.tasks();
        if tasks
            .routed
            .as_ref()
            .is_some_and(|routed| routed.id(name).is_ok())
        {
            return Err(RequestError::unprocessable(
                "name",
                format!(
                    "task `{name}` is a routing row of the served adapter; its adaptation must be routing-only (-z), \
                     or register it under another name"
                ),
            ));
        }
        Ok(match tasks.own.iter().position(|(own, _)| own == name) {
            Some(i) => (i, true),
            None => (tasks.own.len(), false),
        })
    }

    /// Serves `name` by `route` (its adapter already in the engine), replacing the route of a served name.
    pub fn put_own_task(&self, name: &str, route: Route) {
        let mut tasks = self.tasks.write().unwrap_or_else(PoisonError::into_inner);
        match tasks.own.iter_mut().find(|(own, _)| own == name) {
            Some((_, served)) => *served = route,
            None => tasks.own.push((name.to_string(), route)),
        }
    }

    /// Whether requests must name a task.
    pub fn routed(&self) -> bool {
        self.tasks().routed.is_some()
    }

    /// Where the requests of `task` go: a task is required (and known) for a routed adapter, and names a task
    /// with its own adapter otherwise; without a task, requests go to an unrouted served adapter.
    pub fn route(&self, task: Option<&str>) -> Result<Route, RequestError> {
        let tasks = self.tasks();
        let Some(name) = task else {
            return match tasks.routed {
                Some(_) => Err(RequestError::invalid(
                    "task",
                    "required: the adapter routes by task",
                )),
                None => Ok(Route {
                    adapter: None,
                    row: 0,
                }),
            };
        };
        if let Some(row) = tasks.routed.as_ref().and_then(|routed| routed.id(name).ok()) {
            return Ok(Route { adapter: None, row });
        }
        if let Some((_, route)) = tasks.own.iter().find(|(own, _)| own == name) {
            return Ok(*route);
        }
        let known = tasks.routed.as_ref().map_or(0, TaskMap::len) + tasks.own.len();
        Err(match (&tasks.routed, known) {
            (None, 0) => {
                RequestError::invalid("task", "the adapter does not route by task; leave `task` out")
            }
            _ => RequestError::unknown_task(name, known),
        })
    }

    /// `text` as ids ending in eos, refused past `limit` ids.
    fn encode(&self, text: &str, field: &str, limit: usize) -> Result<Vec<u32>, RequestError> {
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| RequestError::invalid(field, e.to_string()))?;
        if ids.len() > limit {
            return Err(RequestError::too_long(
                field,
                format!("{} tokens; the server takes at most {limit}", ids.len()),
            ));
        }
        Ok(ids)
    }

    pub fn source(&self, text: &str, field: &str) -> Result<Vec<u32>, RequestError> {
        self.encode(text, field, self.limits.max_input_tokens)
    }

    pub fn generate(&self, request: &GenerateRequest) -> Result<GenerateJob, RequestError> {
        let limits = &self.limits;
        let route = self.route(request.task.as_deref())?;
        let sources = match (&request.input, &request.inputs) {
            (Some(input), None) => vec![self.source(input, "input")?],
            (None, Some(inputs)) => {
                if inputs.is_empty() || inputs.len() > limits.max_inputs {
                    return Err(RequestError::invalid(
                        "inputs",
                        format!("{} inputs; give 1 to {}", inputs.len(), limits.max_inputs),
                    ));
                }
                inputs
                    .iter()
                    .enumerate()
                    .map(|(i, text)| self.source(text, &format!("inputs[{i}]")))
                    .collect::<Result<_, _>>()?
            }
            _ => {
                return Err(RequestError::invalid(
                    "input",
                    "give exactly one of `input` and `inputs`",
                ));
            }
        };
        let max_new_tokens = request.max_new_tokens.unwrap_or(limits.default_new_tokens);
        if !(1..=limits.max_new_tokens).contains(&max_new_tokens) {
            return Err(RequestError::invalid(
                "max_new_tokens",
                format!("{max_new_tokens}; give 1 to {}", limits.max_new_tokens),
            ));
        }
        let num_beams = request.num_beams.unwrap_or(1);
        if !(1..=limits.max_beams).contains(&num_beams) {
            return Err(RequestError::invalid(
                "num_beams",
                format!("{num_beams}; give 1 to {}", limits.max_beams),
            ));
        }
        Ok(GenerateJob {
            route,
            sources,
            decoding: Decoding {
                max_new_tokens,
                num_beams,
            },
        })
    }

    pub fn score(&self, request: &ScoreRequest) -> Result<ScoreJob, RequestError> {
        let route = self.route(request.task.as_deref())?;
        let input_ids = self.source(&request.input, "input")?;
        let n = request.choices.len();
        if n == 0 || n > self.limits.max_choices {
            return Err(RequestError::invalid(
                "choices",
                format!("{n} choices; give 1 to {}", self.limits.max_choices),
            ));
        }
        let choices = request
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| self.encode(c, &format!("choices[{i}]"), self.limits.max_choice_tokens))
            .collect::<Result<_, _>>()?;
        Ok(ScoreJob {
            adapter: route.adapter,
            example: EncodedChoices {
                input_ids,
                choices,
                gold: 0,
                task_id: route.row,
            },
            choices: request.choices.clone(),
        })
    }

    /// The text of generated ids (special tokens skipped).
    pub fn text(&self, tokens: &[u32]) -> Result<String, ServeError> {
        Ok(self.tokenizer.decode(tokens)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse;
    use crate::error::RequestErrorKind;
    use mhr_data::ByteTokenizer;

    fn inputs(tasks: Option<&[&str]>) -> Inputs {
        let tasks = tasks.map(|t| TaskMap::new(t.iter().map(|s| s.to_string()).collect()).unwrap());
        let limits = Limits {
            max_input_tokens: 8,
            max_choices: 3,
            ..Limits::default()
        };
        Inputs::new(Arc::new(ByteTokenizer), tasks, limits).unwrap()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let routed = inputs(Some(&["a", "b"]));
        let job = routed
            .generate(&parse(br#"{"task": "b", "inputs": ["hi", "yo"], "num_beams": 2}"#).unwrap())
            .unwrap();
        assert_eq!(
            job.route,
            Route {
                adapter: None,
                row: 1
            }
        );
        // Byte ids are the byte + 3, then eos (1).
        assert_eq!(job.sources, [vec![107, 108, 1], vec![124, 114, 1]]);
        assert_eq!(
            job.decoding,
            Decoding {
                max_new_tokens: 128,
                num_beams: 2
            }
        );
        let refused = |body: &[u8]| routed.generate(&parse(body).unwrap()).unwrap_err();
        let e = refused(br#"{"task": "c", "input": "x"}"#);
        assert_eq!(
            (e.kind, e.field.as_str()),
            (RequestErrorKind::UnknownTask, "task")
        );
        assert_eq!(refused(br#"{"input": "x"}"#).field, "task");
        let e = refused(br#"{"task": "a", "inputs": ["x", "123456789"]}"#);
        assert_eq!(
            (e.kind, e.field.as_str()),
            (RequestErrorKind::TooLong, "inputs[1]")
        );
        assert_eq!(
            refused(br#"{"task": "a", "input": "x", "inputs": ["y"]}"#).field,
            "input"
        );
        assert_eq!(refused(br#"{"task": "a", "inputs": []}"#).field, "inputs");
        assert_eq!(
            refused(br#"{"task": "a", "input": "x", "max_new_tokens": 0}"#).field,
            "max_new_tokens"
        );
        assert_eq!(
            refused(br#"{"task": "a", "input": "x", "num_beams": 9}"#).field,
            "num_beams"
        );
        let score = |body: &[u8]| routed.score(&parse(body).unwrap());
        assert_eq!(
            score(br#"{"task": "a", "input": "x", "choices": []}"#)
                .unwrap_err()
                .field,
            "choices"
        );
        let job = score(br#"{"task": "a", "input": "x", "choices": ["y", "z"]}"#).unwrap();
        assert_eq!(job.example.choices, [vec![124, 1], vec![125, 1]]);
        let unrouted = inputs(None);
        let e = unrouted
            .generate(&parse(br#"{"task": "a", "input": "x"}"#).unwrap())
            .unwrap_err();
        assert_eq!(e.field, "task");
        let served = Route {
            adapter: None,
            row: 0,
        };
        assert_eq!(
            unrouted
                .generate(&parse(br#"{"input": "x"}"#).unwrap())
                .unwrap()
                .route,
            served
        );
        // Tasks with their own adapter: named beside the routing rows, refused under a routing row's name.
        let own = Route {
            adapter: Some(0),
            row: 2,
        };
        assert_eq!(routed.own_adapter("c").unwrap(), (0, false));
        routed.put_own_task("c", own);
        unrouted.put_own_task("c", own);
        assert_eq!(routed.task_names(), ["a", "b", "c"]);
        for inputs in [&routed, &unrouted] {
            let job = inputs
                .score(&parse(br#"{"task": "c", "input": "x", "choices": ["y"]}"#).unwrap())
                .unwrap();
            assert_eq!((job.adapter, job.example.task_id), (Some(0), 2));
        }
        assert_eq!(unrouted.route(None).unwrap(), served);
        assert_eq!(routed.own_adapter("c").unwrap(), (0, true));
        assert_eq!(routed.own_adapter("a").unwrap_err().field, "name");
        assert_eq!(routed.task_row("c").unwrap_err().field, "name");
        let e = routed.route(Some("d")).unwrap_err();
        assert_eq!(e.kind, RequestErrorKind::UnknownTask);
    }
}
