//! `mhr serve`: the model with its adapter behind HTTP/JSON (`mhr_serve::http`), requests of any mix of tasks
//! batched into one forward pass. The model works on this thread (in the backend's thread pool); the HTTP
//! server runs beside it on a tokio runtime until SIGTERM or Ctrl-C, then finishes what it accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use mhr_core::peft::{PeftAdapter, PeftKind};
use mhr_serve::api::RegisterRequest;
use mhr_serve::http::{AppState, serve, shutdown_signal};
use mhr_serve::metrics::Metrics;
use mhr_serve::registry::{Candidate, Registry, TaskSource};
use mhr_serve::scheduler::register;
use mhr_serve::{BatchPolicy, Inputs, queue};

use crate::commands::common::{ModelArgs, Prepared, catch_panics, check_sizes};
use crate::commands::run_dir::{ADAPTER_DIR, Run, RunKind};
use crate::commands::texts::TextArgs;
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Address to listen on (port 0: any free port; the address is printed once bound).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Most rows (inputs, or (input, choice) pairs) in one model batch.
    #[arg(long, value_name = "N", default_value_t = BatchPolicy::default().max_batch)]
    pub max_batch: usize,
    /// How long the model, once free, waits for requests to fill a batch (a full one runs at once).
    #[arg(long, value_name = "MS", default_value_t = BatchPolicy::default().max_wait.as_millis() as u64)]
    pub max_wait_ms: u64,
    /// Requests that may wait; past it a request gets 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = BatchPolicy::default().queue_capacity)]
    pub queue: usize,
    /// The longest generation a request may ask for (and the default).
    #[arg(long, value_name = "N", default_value_t = mhr_serve::Limits::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Adaptations to serve from the start, each as its task (`mhr adapt` runs): a routing-only (-z) one as a routing
    /// row of the served adapter (a served name gets the adapted row), any other with its own adapter.
    #[arg(long, value_name = "DIR", num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Run a batch whose rows are all of one task on a copy of the model with that task's adapter merged into the
    /// weights (made for the first such batch, kept while batches stay on that task): faster per batch, at the
    /// memory of one more copy of the adapted weights; outputs equal the unmerged ones up to float rounding.
    #[arg(long)]
    pub merge_hot_task: bool,
    /// A file holding the bearer token of `POST /v1/tasks` (registration while serving); without it that is off.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// The folders a registration names: an `mhr adapt` run (its `adapter/`, its task by default), or a peft folder;
/// of a routed adapter, `task` names the row (a name of its `tasks.json`, else the row's number).
struct AdaptationFolders;

impl TaskSource for AdaptationFolders {
    fn resolve(&self, path: &Path, task: Option<&str>) -> Result<Candidate, String> {
        resolve(path, task).map_err(|e| format!("{e:#}"))
    }
}

fn resolve(path: &Path, task: Option<&str>) -> Result<Candidate> {
    if !path.is_dir() {
        bail!("{}: not a directory", path.display());
    }
    let (folder, own_task) = if Run::is_run(path) {
        let own_task = match Run::open(path)?.kind {
            RunKind::Adapt(adapt, _) => Some(adapt.task),
            RunKind::Pretrain => None,
        };
        (path.join(ADAPTER_DIR), own_task)
    } else {
        (path.to_path_buf(), None)
    };
    let adapter = PeftAdapter::load(&folder).with_context(|| path.display().to_string())?;
    if !matches!(adapter.config.kind, PeftKind::Poly { .. }) {
        if let Some(task) = task {
            bail!(
                "{}: its adapter does not route by task; `task` ({task}) has no row to name",
                folder.display()
            );
        }
        return Ok(Candidate {
            name: own_task,
            adapter,
            row: 0,
        });
    }
    let name = task.map(String::from).or(own_task).ok_or_else(|| {
        anyhow!(
            "{}: not an `mhr adapt` run; name its routing row with `task`",
            path.display()
        )
    })?;
    let row = match &adapter.tasks {
        Some(tasks) => tasks.id(&name).with_context(|| folder.display().to_string())?,
        None => name
            .parse()
            .map_err(|_| anyhow!("{}: no tasks.json; give `task` as a row number", folder.display()))?,
    };
    Ok(Candidate {
        name: Some(name),
        adapter,
        row,
    })
}

struct ServeTask {
    prepared: Prepared,
    inputs: Inputs,
    registry: Arc<Registry>,
    tasks: Vec<PathBuf>,
    merge_hot_task: bool,
    policy: BatchPolicy,
    addr: SocketAddr,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    bound: Box<dyn FnOnce(SocketAddr) + Send>,
}

impl BackendTask for ServeTask {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        let mut engine = self.prepared.engine::<B::InnerBackend>(&device)?;
        if self.merge_hot_task {
            engine = engine.merging_hot_task();
        }
        for dir in &self.tasks {
            let request = RegisterRequest {
                path: dir.display().to_string(),
                name: None,
                task: None,
            };
            let registered = self
                .registry
                .registration(&request)
                .and_then(|registration| register(&mut engine, &self.inputs, &registration))
                .with_context(|| format!("--tasks {}", dir.display()))?;
            eprintln!(
                "mhr serve: task `{}` from {} ({} {})",
                registered.task,
                dir.display(),
                if registered.own_adapter {
                    "its own adapter, row"
                } else {
                    "routing row"
                },
                registered.task_id
            );
        }
        let metrics = Arc::new(Metrics::default());
        let (scheduler, worker) = queue(self.policy, metrics.clone())?;
        let inputs = Arc::new(self.inputs);
        let state = Arc::new(AppState {
            inputs: inputs.clone(),
            scheduler,
            metrics,
            registry: self.registry,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the HTTP runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .with_context(|| format!("--addr {}: cannot listen", self.addr))?;
        let bound = listener.local_addr()?;
        let server_state = state.clone();
        let shutdown = self.shutdown;
        let server = std::thread::Builder::new()
            .name("mhr-http".into())
            .spawn(move || runtime.block_on(serve(listener, server_state, shutdown)))?;
        eprintln!(
            "mhr serve: listening on http://{bound} ({spec}, {} tasks)",
            inputs.task_names().len()
        );
        (self.bound)(bound);
        // Returns once the server has stopped accepting and the queue is drained.
        worker.run(&mut engine, &inputs);
        let served = server
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP server panicked"))?;
        served.context("serving")?;
        eprintln!("mhr serve: stopped");
        Ok(())
    }
}

pub fn run(args: Args) -> Result<()> {
    serve_until(args, shutdown_signal(), |_| {})
}

/// Serves until `shutdown` resolves (then answers what it accepted); `bound` gets the address once listening.
pub fn serve_until(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<()> {
    let prepared = args.model.prepare()?;
    let inputs = args.text.inputs(&prepared, Some(args.max_new_tokens))?;
    let policy = BatchPolicy {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(args.max_wait_ms),
        queue_capacity: args.queue,
    };
    let c = &prepared.config;
    let (b, s) = (policy.max_batch, inputs.limits().max_input_tokens);
    check_sizes(
        &[
            ("encoder attention scores", &[b, c.num_heads, s, s]),
            ("feed-forward activations", &[b, s, c.d_ff]),
            ("logits", &[b, c.vocab_size]),
        ],
        args.model.max_tensor_bytes(),
    )
    .context("a full batch (--max-batch inputs of --max-input-tokens)")?;
    let token = match &args.token_file {
        Some(path) => {
            let token =
                std::fs::read_to_string(path).with_context(|| format!("--token-file {}", path.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() || token.contains(char::is_whitespace) {
                bail!("--token-file {}: expected one token (no spaces)", path.display());
            }
            Some(token)
        }
        None => None,
    };
    let registry = Arc::new(Registry::new(
        prepared.adapter.as_ref().map(|(_, adapter)| adapter.clone()),
        Box::new(AdaptationFolders),
        token,
    ));
    let spec = args.model.device;
    catch_panics(&format!("serving on `{spec}`"), || {
        with_backend(
            spec,
            ServeTask {
                prepared,
                inputs,
                registry,
                tasks: args.tasks,
                merge_hot_task: args.merge_hot_task,
                policy,
                addr: args.addr,
                shutdown: Box::pin(shutdown),
                bound: Box::new(bound),
            },
        )
    })
}
