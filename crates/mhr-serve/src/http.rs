//! The HTTP/JSON front: `/v1/generate`, `/v1/score`, `/v1/tasks`, `/health`, `/metrics`.
//!
//! Every refusal is a JSON error naming the field (`{"error": {"field", "message"}}`): 400 for malformed or
//! out-of-range requests, 401 for a registration without the bearer token (403 when registration is off), 404 for
//! an unknown task or path, 413 for an over-long input, 422 for a registration the model cannot take (an adapter
//! that does not fit it, a name served otherwise), 503 with `Retry-After` when the queue is full, 500 when the
//! model failed on the batch.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::api::{
    ErrorBody, ErrorDetail, GenerateRequest, RegisterRequest, ScoreRequest, TasksResponse, parse,
};
use crate::error::{RequestError, RequestErrorKind};
use crate::inputs::Inputs;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::scheduler::{Answer, Refused, Scheduler, Work};

/// What the handlers share.
pub struct AppState {
    pub inputs: Arc<Inputs>,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/generate", post(generate))
        .route("/v1/score", post(score))
        .route("/v1/tasks", get(tasks).post(register))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight and closes the queue (the model
/// worker returns once it has answered every queued request).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    state.scheduler.close();
    served
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        // Without a handler there is nothing to wait for but SIGTERM.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

fn error(status: StatusCode, field: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            field: field.to_string(),
            message,
        },
    };
    (status, Json(body)).into_response()
}

fn refused(e: &RequestError) -> Response {
    let status = match e.kind {
        RequestErrorKind::Invalid => StatusCode::BAD_REQUEST,
        RequestErrorKind::UnknownTask => StatusCode::NOT_FOUND,
        RequestErrorKind::TooLong => StatusCode::PAYLOAD_TOO_LARGE,
        RequestErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(ErrorBody::from(e))).into_response()
}

fn json<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}

impl AppState {
    /// Queues `work` and waits for its answer.
    async fn run(&self, work: Work) -> Response {
        let answer = match self.scheduler.submit(work) {
            Ok(answer) => answer,
            Err(Refused::QueueFull) => {
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "body",
                    "the request queue is full; retry later".into(),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return response;
            }
            Err(Refused::Stopped) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "body",
                    "the server is shutting down".into(),
                );
            }
        };
        match answer.await {
            Ok(Ok(Answer::Generated(response))) => json(response),
            Ok(Ok(Answer::Scored(response))) => json(response),
            Ok(Ok(Answer::Registered(response))) => (StatusCode::CREATED, Json(response)).into_response(),
            Ok(Ok(Answer::Refused(e))) => refused(&e),
            Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, "body", message),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "body",
                "the model worker stopped before answering".into(),
            ),
        }
    }

    /// Answers a model request and records it.
    async fn answer(&self, endpoint: &str, started: Instant, work: Result<Work, RequestError>) -> Response {
        let response = match work {
            Ok(work) => self.run(work).await,
            Err(e) => refused(&e),
        };
        self.metrics.answered(
            endpoint,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        response
    }
}

async fn generate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let work = parse::<GenerateRequest>(&body)
        .and_then(|request| state.inputs.generate(&request))
        .map(Work::Generate);
    state.answer("generate", started, work).await
}

async fn score(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let work = parse::<ScoreRequest>(&body)
        .and_then(|request| state.inputs.score(&request))
        .map(Work::Score);
    state.answer("score", started, work).await
}

async fn tasks(State(state): State<Arc<AppState>>) -> Response {
    json(TasksResponse {
        tasks: state.inputs.task_names(),
        routed: state.inputs.routed(),
    })
}

/// `POST /v1/tasks`: reads the folder off the async threads, then puts the task in between two batches.
async fn register(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let response = match state.registry.authorizes(authorization) {
        None => error(
            StatusCode::FORBIDDEN,
            "authorization",
            "registration is off: start mhr serve with --token-file".into(),
        ),
        Some(false) => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "authorization",
                "give the server's token as `Authorization: Bearer TOKEN`".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
        Some(true) => {
            let registry = state.registry.clone();
            let registration = tokio::task::spawn_blocking(move || {
                parse::<RegisterRequest>(&body).and_then(|request| registry.registration(&request))
            })
            .await;
            match registration {
                Ok(Ok(registration)) => state.run(Work::Register(registration)).await,
                Ok(Err(e)) => refused(&e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "body", e.to_string()),
            }
        }
    };
    state.metrics.answered(
        "register",
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn health() -> Response {
    json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error(StatusCode::NOT_FOUND, "path", format!("no route {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Limits;
    use crate::scheduler::{BatchPolicy, queue};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct NoFolders;

    impl crate::registry::TaskSource for NoFolders {
        fn resolve(
            &self,
            path: &std::path::Path,
            _: Option<&str>,
        ) -> Result<crate::registry::Candidate, String> {
            Err(format!("{}: no folders here", path.display()))
        }
    }

    /// A server whose model never answers (its worker is not run): its queue fills up.
    fn stalled(queue_capacity: usize) -> (Router, crate::scheduler::Worker) {
        let metrics = Arc::new(Metrics::default());
        let policy = BatchPolicy {
            queue_capacity,
            ..BatchPolicy::default()
        };
        let (scheduler, worker) = queue(policy, metrics.clone()).unwrap();
        let inputs = Inputs::new(Arc::new(mhr_data::ByteTokenizer), None, Limits::default()).unwrap();
        let state = AppState {
            inputs: Arc::new(inputs),
            scheduler,
            metrics,
            registry: Arc::new(Registry::new(None, Box::new(NoFolders), None)),
        };
        (router(Arc::new(state)), worker)
    }

    fn post(body: &str) -> Request<Body> {
        Request::post("/v1/generate")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_answers_503_with_retry_after() {
        let (app, _worker) = stalled(1);
        let waiting = tokio::spawn(app.clone().oneshot(post(r#"{"input": "a"}"#)));
        // Let the first request reach the queue.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let response = app.clone().oneshot(post(r#"{"input": "b"}"#)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(body.error.message.contains("queue is full"), "{body:?}");
        // A bad request is still refused on its own, without queueing.
        let response = app.oneshot(post(r#"{"input": 1}"#)).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!waiting.is_finished());
        waiting.abort();
    }
}
