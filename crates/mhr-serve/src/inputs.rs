//! Requests → token ids and routing rows, checked against the served tasks and the [`Limits`]. Runs on the
//! request's side (not the model worker), so a bad request is refused without waiting in the queue.

use std::sync::{Arc, PoisonError, RwLock};

use mhr_core::TaskMap;
use mhr_data::{EncodedChoices, TextTokenizer};

use crate::api::{GenerateRequest, ScoreRequest};
use crate::engine::Decoding;
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
    pub task_id: usize,
    /// Per input, its ids (ending in eos).
    pub sources: Vec<Vec<u32>>,
    pub decoding: Decoding,
}

/// A scoring request, encoded: one example with every choice as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreJob {
    pub example: EncodedChoices,
    pub choices: Vec<String>,
}

/// The tokenizer, the served tasks and the limits.
pub struct Inputs {
    tokenizer: Arc<dyn TextTokenizer>,
    /// `None`: the adapter does not route by task, and requests name none. Written by task registration.
    tasks: Option<RwLock<TaskMap>>,
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
            tasks: tasks.map(RwLock::new),
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn tokenizer(&self) -> &dyn TextTokenizer {
        self.tokenizer.as_ref()
    }

    /// The task names requests may give (none when the adapter does not route by task).
    pub fn task_names(&self) -> Vec<String> {
        self.tasks.as_ref().map_or_else(Vec::new, |t| {
            t.read().unwrap_or_else(PoisonError::into_inner).names().to_vec()
        })
    }

    /// The routing row of `name`: its own when served (`true`), else the next free one (`false`).
    pub fn task_row(&self, name: &str) -> Result<(usize, bool), RequestError> {
        let tasks = self.tasks.as_ref().ok_or_else(|| {
            RequestError::unprocessable("path", "the served adapter does not route by task")
        })?;
        let tasks = tasks.read().unwrap_or_else(PoisonError::into_inner);
        Ok(match tasks.names().iter().position(|n| n == name) {
            Some(row) => (row, true),
            None => (tasks.len(), false),
        })
    }

    /// Serves `name` (its row already in the model's routers).
    pub fn add_task(&self, name: &str) -> Result<usize, ServeError> {
        let Some(tasks) = &self.tasks else {
            return Err(ServeError::Config(
                "the served adapter does not route by task".into(),
            ));
        };
        let mut tasks = tasks.write().unwrap_or_else(PoisonError::into_inner);
        Ok(tasks
            .extend([name.to_string()])
            .map_err(|e| ServeError::Config(e.to_string()))?[0])
    }

    pub fn routed(&self) -> bool {
        self.tasks.is_some()
    }

    /// The routing row of `task`: required and known for a routed adapter, absent otherwise.
    pub fn task_id(&self, task: Option<&str>) -> Result<usize, RequestError> {
        match (&self.tasks, task) {
            (Some(tasks), Some(name)) => {
                let tasks = tasks.read().unwrap_or_else(PoisonError::into_inner);
                tasks
                    .id(name)
                    .map_err(|_| RequestError::unknown_task(name, tasks.len()))
            }
            (Some(_), None) => Err(RequestError::invalid(
                "task",
                "required: the adapter routes by task",
            )),
            (None, Some(_)) => Err(RequestError::invalid(
                "task",
                "the adapter does not route by task; leave `task` out",
            )),
            (None, None) => Ok(0),
        }
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
        let task_id = self.task_id(request.task.as_deref())?;
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
            task_id,
            sources,
            decoding: Decoding {
                max_new_tokens,
                num_beams,
            },
        })
    }

    pub fn score(&self, request: &ScoreRequest) -> Result<ScoreJob, RequestError> {
        let task_id = self.task_id(request.task.as_deref())?;
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
            example: EncodedChoices {
                input_ids,
                choices,
                gold: 0,
                task_id,
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
        assert_eq!(job.task_id, 1);
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
        assert_eq!(
            unrouted
                .generate(&parse(br#"{"input": "x"}"#).unwrap())
                .unwrap()
                .task_id,
            0
        );
    }
}
