//! The JSON of `/v1/*` and of the `--inputs` files, and parsing that names the offending field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RequestError;

/// `POST /v1/generate`: one task, one input or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The task's name (`GET /v1/tasks`); absent for an adapter that does not route by task.
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
    /// Default: [`crate::Limits::default_new_tokens`].
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// 1: greedy search (the default); more: beam search.
    #[serde(default)]
    pub num_beams: Option<usize>,
}

/// One generated output, in input order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub text: String,
    /// The generated ids, without the decoder start token, up to and with eos when it came.
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub outputs: Vec<Generated>,
}

/// `POST /v1/score`: rank classification of `choices` as continuations of `input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[serde(default)]
    pub task: Option<String>,
    pub input: String,
    pub choices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResponse {
    /// Per choice, its summed token log-likelihood.
    pub logliks: Vec<f64>,
    /// Per choice, its mean token log-likelihood: what rank classification ranks by (T-Few's `length_norm`).
    pub scores: Vec<f64>,
    /// The best-scoring choice.
    pub answer: String,
    pub answer_index: usize,
}

/// `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TasksResponse {
    /// The task names requests may give: the served adapter's routing rows in order, then the tasks registered
    /// with an adapter of their own.
    pub tasks: Vec<String>,
    /// Whether requests must name a task.
    pub routed: bool,
}

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// An adaptation folder on the server's machine: an `mhr adapt` run, or a peft folder.
    pub path: String,
    /// The name requests will give (default: the adapted task's).
    #[serde(default)]
    pub name: Option<String>,
    /// Which of the folder's routing rows (default: an `mhr adapt` run's own task).
    #[serde(default)]
    pub task: Option<String>,
}

/// A registered task: its name and routing row; `replaced` when the name was served before (it is served by the
/// registered adaptation now); `own_adapter` when it is served by an adapter of its own rather than a routing row
/// of the served one (`task_id` is then its row in that adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredResponse {
    pub task: String,
    pub task_id: usize,
    pub replaced: bool,
    pub own_adapter: bool,
}

/// One line of an `--inputs` file of `mhr generate` / `mhr score`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputLine {
    /// Copied to the output line.
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    #[serde(default)]
    pub task: Option<String>,
    pub input: String,
    /// Answer choices: required by `mhr score`, not read by `mhr generate`.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
}

/// An error body: `{"error": {"field": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub field: String,
    pub message: String,
}

impl From<&RequestError> for ErrorBody {
    fn from(e: &RequestError) -> Self {
        Self {
            error: ErrorDetail {
                field: e.field.clone(),
                message: e.message.clone(),
            },
        }
    }
}

/// Parses `bytes` as a JSON object `T`; an error names the field it is about (`max_new_tokens`, `inputs[1]`,
/// a missing or unknown field), or `body` for malformed JSON or a body that is not an object.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RequestError> {
    // serde would read a struct from an array too, by position.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RequestError::invalid("body", "expected a JSON object"));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let error = e.into_inner();
        let message = error.to_string();
        if error.is_syntax() || error.is_eof() {
            return RequestError::invalid("body", message);
        }
        // A missing field is not in the path (which ends at its parent); serde's message names it.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_string(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (".", None) => "body".to_string(),
            (path, None) => path.to_string(),
        };
        RequestError::invalid(field, message)
    })?;
    json.end()
        .map_err(|e| RequestError::invalid("body", e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse::<GenerateRequest>(br#"{"task": "a", "max_new_tokens": "ten"}"#).unwrap_err();
        assert_eq!(e.field, "max_new_tokens");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse::<GenerateRequest>(br#"{"inputs": ["a", 3]}"#).unwrap_err();
        assert_eq!(e.field, "inputs[1]");
        let e = parse::<GenerateRequest>(br#"{"input": "a", "beams": 2}"#).unwrap_err();
        assert_eq!(e.field, "beams");
        assert!(e.message.contains("unknown field `beams`"), "{e}");
        let e = parse::<ScoreRequest>(br#"{"input": "a"}"#).unwrap_err();
        assert_eq!(e.field, "choices");
        assert!(e.message.contains("missing field `choices`"), "{e}");
        let e = parse::<ScoreRequest>(b"{\"input\": ").unwrap_err();
        assert_eq!(e.field, "body");
        let e = parse::<ScoreRequest>(br#"{"input": "a", "choices": []} x"#).unwrap_err();
        assert_eq!(e.field, "body");
        let e = parse::<ScoreRequest>(br#"["a", []]"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("body", "expected a JSON object")
        );
    }
}
