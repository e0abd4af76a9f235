//! `mhr serve`: the model with its adapter behind HTTP/JSON (`mhr_serve::http`), requests of any mix of tasks
//! batched into one forward pass. The model works on this thread (in the backend's thread pool); the HTTP
//! server runs beside it on a tokio runtime until SIGTERM or Ctrl-C, then finishes what it accepted.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use mhr_serve::http::{AppState, serve, shutdown_signal};
use mhr_serve::metrics::Metrics;
use mhr_serve::{BatchPolicy, Engine, Inputs, queue};

use crate::commands::common::{ModelArgs, Prepared, catch_panics, check_sizes};
use crate::commands::texts::TextArgs;
use crate::device::{BackendTask, DeviceSpec, with_backend};

#[derive(clap::Args, Debug)]
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
}

struct ServeTask {
    prepared: Prepared,
    inputs: Inputs,
    policy: BatchPolicy,
    addr: SocketAddr,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    bound: Box<dyn FnOnce(SocketAddr) + Send>,
}

impl BackendTask for ServeTask {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, spec: DeviceSpec) -> Result<()> {
        let model = self.prepared.load_model::<B::InnerBackend>(&device)?;
        let engine = Engine::new(model, self.prepared.n_tasks.is_some())?;
        let metrics = Arc::new(Metrics::default());
        let (scheduler, worker) = queue(self.policy, metrics.clone())?;
        let inputs = Arc::new(self.inputs);
        let state = Arc::new(AppState {
            inputs: inputs.clone(),
            scheduler,
            metrics,
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
        worker.run(&engine, &inputs);
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
    let spec = args.model.device;
    catch_panics(&format!("serving on `{spec}`"), || {
        with_backend(
            spec,
            ServeTask {
                prepared,
                inputs,
                policy,
                addr: args.addr,
                shutdown: Box::pin(shutdown),
                bound: Box::new(bound),
            },
        )
    })
}
