//! `cargo xtask loadtest`: a real HTTP client against `mhr serve` started in this process on 127.0.0.1, bounded in
//! requests and time. The same requests (inputs cycled from `--inputs` or built-in prompts) run four ways:
//! one client sending one request at a time (mixed tasks), N concurrent clients over M tasks, N concurrent
//! clients on one task, and the same on a server started with `--merge-hot-task`. Reports throughput and p50/p99
//! latency of each, and the ratios the serving targets are about (docs/serving.md). Every distinct request's answer is checked against `mhr generate --inputs` run offline on
//! the same model. With `--peer-python`, the same requests also run through transformers + peft
//! (`scripts/peer_serve.py`), batched by the same `--max-batch`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mhr_cli::commands::common::ModelArgs;
use mhr_cli::commands::serve::{self, Args as ServeArgs};
use mhr_cli::commands::texts::{TextArgs, read_input_lines};
use mhr_cli::device::DeviceSpec;
use mhr_models::Precision;
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct LoadtestArgs {
    /// Model folder (default: the tiny T5 fixture of ../shared, whose numbers are the server's own overhead).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Routed adapter folder or run (default: the fixture's MHR adapter, three tasks).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Default: the fixture's tokenizer with the default model, else as `mhr serve`.
    #[arg(long, value_name = "FILE|byte")]
    pub tokenizer: Option<String>,
    /// Requests as JSON lines `{"task", "input"}` (cycled); default: built-in prompts over every served task.
    #[arg(long, value_name = "FILE.jsonl")]
    pub inputs: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Concurrent clients of the concurrent runs.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Requests of each run (runs of a few seconds, as 1024 requests are on the fixture, vary by ±10 % in their
    /// ratios).
    #[arg(long, default_value_t = 4096)]
    pub requests: usize,
    /// Each run stops after this many seconds even if requests are left.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// The server's --max-batch (and --max-wait-ms).
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// A Python with torch, transformers and peft (`bash ../shared/peer/setup.sh` prints one): also run the requests
    /// through `scripts/peer_serve.py`.
    #[arg(long, value_name = "PYTHON")]
    pub peer_python: Option<PathBuf>,
    /// Afterwards, register this many tasks over `POST /v1/tasks` (copies of one served task's routing row from the
    /// adapter folder, under new names) and report the memory they add and the time each takes.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub register: usize,
    /// Report folder: loadtest.json, loadtest.md and the requests sent (requests.jsonl).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// A request's task (`None` for an adapter that does not route by task) and input.
type Request = (Option<String>, String);

/// One run's outcome.
struct Measured {
    name: &'static str,
    clients: usize,
    requests: usize,
    seconds: f64,
    tokens: usize,
    latencies_ms: Vec<f64>,
    batch_requests: f64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(i).copied().unwrap_or(f64::NAN)
    }

    fn json(&self) -> Value {
        json!({
            "run": self.name,
            "clients": self.clients,
            "requests": self.requests,
            "seconds": self.seconds,
            "requests_per_s": self.per_second(),
            "generated_tokens_per_s": self.tokens as f64 / self.seconds,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "mean_requests_per_batch": self.batch_requests,
        })
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from("../shared/fixtures/t5").join(name)
}

const PROMPTS: [&str; 4] = [
    "Definition: In this task, you are given a sentence. Output:",
    "Output:",
    "Now complete the following example - Input: the cat sat on the mat. Output:",
    "  leading and  double  spaces ",
];

pub fn run(args: LoadtestArgs) -> Result<()> {
    if args.clients == 0 || args.requests == 0 {
        bail!("--clients and --requests must be at least 1");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let default = args.model.is_none();
    let tokenizer = args
        .tokenizer
        .clone()
        .or_else(|| default.then(|| fixture("tokenizer.json").display().to_string()));
    let model = args.model.clone().unwrap_or_else(|| fixture("t5-v1_1"));
    let adapter = args
        .adapter
        .clone()
        .or_else(|| default.then(|| fixture("t5-v1_1-mhr")));
    let serve_args = ServeArgs {
        model: ModelArgs {
            model: model.clone(),
            adapter: adapter.clone(),
            device: args.device,
            precision: Precision::F32,
            max_tensor_gib: 8.0,
        },
        text: TextArgs {
            tokenizer: tokenizer.clone(),
            max_input_tokens: mhr_serve::Limits::default().max_input_tokens,
        },
        addr: "127.0.0.1:0".parse()?,
        max_batch: args.max_batch,
        max_wait_ms: args.max_wait_ms,
        queue: mhr_serve::BatchPolicy::default().queue_capacity,
        max_new_tokens: args.max_new_tokens,
        tasks: Vec::new(),
        merge_hot_task: false,
        token_file: Some(args.out.join(TOKEN_FILE)),
    };
    mhr_core::io::write_atomic(args.out.join(TOKEN_FILE), TOKEN.as_bytes())?;
    let Some(adapter) = adapter else {
        bail!("give --adapter: the load test serves a routed adapter's tasks");
    };
    let hot_args = ServeArgs {
        merge_hot_task: true,
        token_file: None,
        ..serve_args.clone()
    };
    let offline = (serve_args.model.clone(), serve_args.text.clone());
    let server = Server::start(serve_args)?;
    let outcome = measure(&args, server.addr, &adapter);
    server.stop()?;
    let Measurements {
        mut runs,
        tasks,
        registered,
        answers,
    } = outcome?;
    let equal_offline = check_offline(&args, offline, &answers)?;
    let server = Server::start(hot_args)?;
    let merged = measure_merged(&args, server.addr);
    server.stop()?;
    runs.push(merged?);
    // After the servers have stopped: the peer has the machine to itself, as the server had.
    let peer = peer(&args, &model, Some(adapter.as_path()), tokenizer.as_deref())?;
    report(
        &args,
        &runs,
        tasks,
        peer.as_ref(),
        registered.as_ref(),
        equal_offline,
    )
}

/// `mhr serve` running on a thread of this process until [`Server::stop`].
struct Server {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl Server {
    fn start(args: ServeArgs) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            serve::serve_until(
                args,
                async {
                    let _ = stopped.await;
                },
                move |addr| {
                    let _ = bound_tx.send(addr);
                },
            )
        });
        match bound_rx.recv() {
            Ok(addr) => Ok(Self { addr, stop, thread }),
            Err(_) => match thread.join() {
                Ok(result) => result.and_then(|()| bail!("the server stopped before listening")),
                Err(_) => bail!("the server panicked while starting"),
            },
        }
    }

    /// Stops accepting, waits for the answers in flight.
    fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the server panicked"))?
    }
}

/// (task, input) of the requests, cycled by every run, and the served task names (routing-row order; `[None]`
/// for an adapter that does not route by task).
fn requests(args: &LoadtestArgs, addr: SocketAddr) -> Result<(Vec<Request>, Vec<Option<String>>)> {
    let served: Value = ureq::get(&format!("http://{addr}/v1/tasks"))
        .call()?
        .into_json()?;
    let names: Vec<Option<String>> = match served["tasks"].as_array() {
        Some(tasks) if !tasks.is_empty() => tasks.iter().map(|t| t.as_str().map(String::from)).collect(),
        _ => vec![None],
    };
    let requests = match &args.inputs {
        Some(path) => read_input_lines(path)?
            .into_iter()
            .map(|(_, line)| (line.task, line.input))
            .collect(),
        None => (0..PROMPTS.len() * names.len())
            .map(|i| {
                (
                    names[i % names.len()].clone(),
                    PROMPTS[i % PROMPTS.len()].to_string(),
                )
            })
            .collect(),
    };
    Ok((requests, names))
}

/// `requests.jsonl`: the `--requests` requests of a run, in order, with their routing rows (for the peer).
fn write_requests(args: &LoadtestArgs, requests: &[Request], names: &[Option<String>]) -> Result<()> {
    let mut text = String::new();
    for (task, input) in requests.iter().cycle().take(args.requests) {
        let task_id = names.iter().position(|n| n == task).unwrap_or(0);
        text.push_str(&json!({"task": task, "task_id": task_id, "input": input}).to_string());
        text.push('\n');
    }
    Ok(mhr_core::io::write_atomic(
        args.out.join(REQUESTS_FILE),
        text.as_bytes(),
    )?)
}

const REQUESTS_FILE: &str = "requests.jsonl";
const TOKEN_FILE: &str = "token";
/// The registration token of the server the load test starts (on 127.0.0.1, for the test's duration).
const TOKEN: &str = "loadtest";

/// Memory and time of registering `args.register` tasks: copies of the first served task's routing row.
fn register_tasks(
    args: &LoadtestArgs,
    url: &str,
    adapter: &Path,
    first: &Option<String>,
) -> Result<Option<Value>> {
    if args.register == 0 {
        return Ok(None);
    }
    let task = first
        .clone()
        .context("--register: the served adapter does not route by task")?;
    let before = resident_bytes()?;
    let started = Instant::now();
    for i in 0..args.register {
        let body = json!({"path": adapter, "task": task, "name": format!("registered-{i}")});
        ureq::post(&format!("{url}/v1/tasks"))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body)
            .with_context(|| format!("registering task {i}"))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let added = resident_bytes()?.saturating_sub(before);
    let measured = json!({
        "registered": args.register,
        "seconds": seconds,
        "ms_each": seconds * 1e3 / args.register as f64,
        "resident_mb_added": added as f64 / 1e6,
        "bytes_per_task": added as f64 / args.register as f64,
    });
    eprintln!("registered: {measured}");
    Ok(Some(measured))
}

/// This process's resident memory (the server runs in it), from /proc.
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("/proc/self/statm (Linux only)")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .context("/proc/self/statm: no resident size")?;
    // 4 KiB pages on the Linux targets this runs on.
    Ok(pages * 4096)
}

/// The requests of `requests.jsonl` through transformers + peft; `None` without `--peer-python`.
fn peer(
    args: &LoadtestArgs,
    model: &Path,
    adapter: Option<&Path>,
    tokenizer: Option<&str>,
) -> Result<Option<Value>> {
    let Some(python) = &args.peer_python else {
        return Ok(None);
    };
    let tokenizer = match tokenizer {
        Some("byte") => bail!("the peer needs a tokenizer.json, not `byte`"),
        Some(path) => PathBuf::from(path),
        None => model.join("tokenizer.json"),
    };
    let mut command = std::process::Command::new(python);
    command
        .arg("scripts/peer_serve.py")
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(&tokenizer)
        .arg("--requests")
        .arg(args.out.join(REQUESTS_FILE))
        .args(["--batch", &args.max_batch.to_string()])
        .args(["--max-new-tokens", &args.max_new_tokens.to_string()]);
    if let Some(adapter) = adapter {
        // A run folder's adapters are in its `adapter/`.
        let folder = if adapter.join("adapter_config.json").is_file() {
            adapter.to_path_buf()
        } else {
            adapter.join("adapter")
        };
        command.arg("--adapter").arg(folder);
    }
    let output = command
        .output()
        .with_context(|| format!("--peer-python {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "scripts/peer_serve.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("scripts/peer_serve.py printed nothing")?;
    Ok(Some(
        serde_json::from_str(line).context("scripts/peer_serve.py's JSON line")?,
    ))
}

/// What the server started first measured.
struct Measurements {
    runs: Vec<Measured>,
    /// Distinct tasks of the requests.
    tasks: usize,
    registered: Option<Value>,
    /// Each distinct request with its generated tokens.
    answers: Vec<(Request, Value)>,
}

/// The three runs against the server at `addr`, then each distinct request once more with its answer.
fn measure(args: &LoadtestArgs, addr: SocketAddr, adapter: &Path) -> Result<Measurements> {
    let (requests, names) = requests(args, addr)?;
    write_requests(args, &requests, &names)?;
    let url = format!("http://{addr}");
    let tasks = requests
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let single = one_task(&requests);
    // Warm-up: the first batch pays one-off costs (allocations, kernel compilation on a GPU).
    load(&url, &requests, args, 1, "warm-up", args.requests.min(8))?;
    let runs = vec![
        load(&url, &requests, args, 1, "one at a time", args.requests)?,
        load(&url, &requests, args, args.clients, "mixed tasks", args.requests)?,
        load(&url, &single, args, args.clients, "one task", args.requests)?,
    ];
    let agent = ureq::agent();
    let answers = requests
        .iter()
        .map(|request| {
            let tokens = generate(&agent, &url, request, args.max_new_tokens)?;
            Ok((request.clone(), tokens))
        })
        .collect::<Result<Vec<_>>>()?;
    let registered = register_tasks(args, &url, adapter, &names[0])?;
    Ok(Measurements {
        runs,
        tasks,
        registered,
        answers,
    })
}

/// `request`'s generated tokens, sent by `agent`.
fn generate(agent: &ureq::Agent, url: &str, (task, input): &Request, max_new_tokens: usize) -> Result<Value> {
    let mut body = json!({"input": input, "max_new_tokens": max_new_tokens});
    if let Some(task) = task {
        body["task"] = json!(task);
    }
    let answer: Value = agent
        .post(&format!("{url}/v1/generate"))
        .send_json(body)?
        .into_json()?;
    Ok(answer["outputs"][0]["tokens"].clone())
}

/// Checks the `served` answers against `mhr generate --inputs` on the same model (its default batches of mixed
/// tasks); returns how many were compared.
fn check_offline(
    args: &LoadtestArgs,
    (model, text): (ModelArgs, TextArgs),
    served: &[(Request, Value)],
) -> Result<usize> {
    let inputs = args.out.join("offline-inputs.jsonl");
    let lines: String = served
        .iter()
        .map(|((task, input), _)| format!("{}\n", json!({"task": task, "input": input})))
        .collect();
    mhr_core::io::write_atomic(&inputs, lines.as_bytes())?;
    let out = args.out.join("offline.jsonl");
    mhr_cli::commands::generate::run(mhr_cli::commands::generate::Args {
        model,
        batch: None,
        inputs: Some(inputs),
        text,
        batch_size: 16,
        max_new_tokens: args.max_new_tokens,
        num_beams: 1,
        out: out.clone(),
    })
    .context("mhr generate --inputs (offline)")?;
    let offline = std::fs::read_to_string(&out)?;
    if offline.lines().count() != served.len() {
        bail!(
            "{}: {} lines for {} requests",
            out.display(),
            offline.lines().count(),
            served.len()
        );
    }
    for (i, (line, (request, tokens))) in offline.lines().zip(served).enumerate() {
        let line: Value = serde_json::from_str(line)?;
        if line["tokens"] != *tokens {
            bail!(
                "request {i} {request:?}: served {tokens}, mhr generate --inputs {}",
                line["tokens"]
            );
        }
    }
    eprintln!("outputs equal mhr generate --inputs on {} requests", served.len());
    Ok(served.len())
}

/// The requests, all on the first one's task.
fn one_task(requests: &[Request]) -> Vec<Request> {
    let task = requests[0].0.clone();
    requests
        .iter()
        .map(|(_, input)| (task.clone(), input.clone()))
        .collect()
}

/// The one-task run against a server started with `--merge-hot-task`.
fn measure_merged(args: &LoadtestArgs, addr: SocketAddr) -> Result<Measured> {
    let (requests, _) = requests(args, addr)?;
    let single = one_task(&requests);
    let url = format!("http://{addr}");
    load(&url, &single, args, 1, "warm-up", args.requests.min(8))?;
    load(
        &url,
        &single,
        args,
        args.clients,
        "one task, merged weights",
        args.requests,
    )
}

fn metric(url: &str, name: &str) -> Result<f64> {
    let text = ureq::get(&format!("{url}/metrics")).call()?.into_string()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .with_context(|| format!("/metrics has no {name}"))?
        .parse()
        .with_context(|| format!("/metrics: {name}"))
}

/// `total` requests (cycling `requests`) from `clients` concurrent clients, each sending its next request once
/// the previous is answered.
fn load(
    url: &str,
    requests: &[Request],
    args: &LoadtestArgs,
    clients: usize,
    name: &'static str,
    total: usize,
) -> Result<Measured> {
    let (sum0, count0) = (
        metric(url, "mhr_batch_requests_sum")?,
        metric(url, "mhr_batch_requests_count")?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let results: Vec<Result<Vec<(f64, usize)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let next = next.clone();
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut answered = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total || Instant::now() >= deadline {
                            return Ok(answered);
                        }
                        let sent = Instant::now();
                        let tokens =
                            generate(&agent, url, &requests[i % requests.len()], args.max_new_tokens)
                                .with_context(|| format!("request {i}"))?;
                        let tokens = tokens.as_array().map_or(0, Vec::len);
                        answered.push((sent.elapsed().as_secs_f64() * 1e3, tokens));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies_ms = Vec::new();
    let mut tokens = 0;
    for result in results {
        for (ms, n) in result? {
            latencies_ms.push(ms);
            tokens += n;
        }
    }
    let (sum1, count1) = (
        metric(url, "mhr_batch_requests_sum")?,
        metric(url, "mhr_batch_requests_count")?,
    );
    let measured = Measured {
        name,
        clients,
        requests: latencies_ms.len(),
        seconds,
        tokens,
        latencies_ms,
        batch_requests: (sum1 - sum0) / (count1 - count0).max(1.0),
    };
    eprintln!(
        "{name}: {} requests in {:.2} s, {:.1} requests/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} requests per batch",
        measured.requests,
        measured.seconds,
        measured.per_second(),
        measured.percentile(0.5),
        measured.percentile(0.99),
        measured.batch_requests
    );
    Ok(measured)
}

fn report(
    args: &LoadtestArgs,
    runs: &[Measured],
    tasks: usize,
    peer: Option<&Value>,
    registered: Option<&Value>,
    equal_offline: usize,
) -> Result<()> {
    let [alone, mixed, single, merged] = runs else {
        bail!("expected four runs");
    };
    let mixed_over_single = mixed.per_second() / single.per_second();
    let merged_over_single = merged.per_second() / single.per_second();
    let mixed_over_alone = mixed.per_second() / alone.per_second();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let json = json!({
        "device": args.device.to_string(),
        "cpu_cores": cores,
        "tasks": tasks,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "max_new_tokens": args.max_new_tokens,
        "runs": runs.iter().map(Measured::json).collect::<Vec<_>>(),
        "mixed_over_one_task": mixed_over_single,
        "mixed_over_one_at_a_time": mixed_over_alone,
        "merged_over_one_task": merged_over_single,
        "requests_equal_to_offline": equal_offline,
        "python_peer": peer.cloned().unwrap_or_else(|| json!("not measured")),
        "registered_tasks": registered.cloned().unwrap_or_else(|| json!("not measured")),
    });
    mhr_core::io::write_atomic(args.out.join("loadtest.json"), &serde_json::to_vec_pretty(&json)?)?;
    let mut md = format!(
        "# mhr serve load test\n\n{} on `{}` ({cores} cores), {tasks} tasks, --max-batch {} --max-wait-ms {}, \
         {} new tokens at most per request.\n\n\
         | run | clients | requests | s | requests/s | generated tokens/s | p50 ms | p99 ms | requests per batch |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.model
            .as_ref()
            .map_or("the tiny T5 fixture".to_string(), |m| m.display().to_string()),
        args.device,
        args.max_batch,
        args.max_wait_ms,
        args.max_new_tokens
    );
    for run in runs {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            run.name,
            run.clients,
            run.requests,
            run.seconds,
            run.per_second(),
            run.tokens as f64 / run.seconds,
            run.percentile(0.5),
            run.percentile(0.99),
            run.batch_requests
        ));
    }
    let peer_line = match peer {
        Some(peer) => {
            let per_second = peer["requests_per_s"].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| transformers + peft, batches of {} (no HTTP) | - | {} | {:.2} | {per_second:.1} | {:.1} | - | - | {} |\n",
                args.max_batch,
                peer["requests"],
                peer["seconds"].as_f64().unwrap_or(f64::NAN),
                peer["generated_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                args.max_batch
            ));
            format!("mixed tasks / the peer: {:.2}x", mixed.per_second() / per_second)
        }
        None => "Python peer (transformers + peft): not measured".to_string(),
    };
    md.push_str(&format!(
        "\nMixed tasks / one task: {mixed_over_single:.2}x (target >= 0.9). Mixed tasks at {} clients / one at a \
         time: {mixed_over_alone:.2}x (target >= 4); {peer_line}. One task on merged weights / one task: \
         {merged_over_single:.2}x. Answers equal to `mhr generate --inputs`: {equal_offline} of {equal_offline} \
         distinct requests.\n",
        args.clients
    ));
    if let Some(r) = registered {
        md.push_str(&format!(
            "\n{} tasks registered over POST /v1/tasks in {:.1} s ({:.2} ms each): +{:.1} MB resident ({:.0} bytes per \
             task; target <= 100 MB for 10,000).\n",
            r["registered"],
            r["seconds"].as_f64().unwrap_or(f64::NAN),
            r["ms_each"].as_f64().unwrap_or(f64::NAN),
            r["resident_mb_added"].as_f64().unwrap_or(f64::NAN),
            r["bytes_per_task"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    mhr_core::io::write_atomic(args.out.join("loadtest.md"), md.as_bytes())?;
    print!("{md}");
    Ok(())
}
