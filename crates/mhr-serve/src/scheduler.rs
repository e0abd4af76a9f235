//! Dynamic batching: requests wait in a bounded queue; one worker thread owns the model and runs requests
//! of any mix of tasks together, as soon as a batch is full or `max_wait` after it became free.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use burn::prelude::Backend;
use tokio::sync::oneshot;

use crate::api::{GenerateResponse, Generated, RegisteredResponse, ScoreResponse};
use crate::engine::{Decoding, Engine, Route, Row};
use crate::error::{RequestError, ServeError};
use crate::inputs::{GenerateJob, Inputs, ScoreJob};
use crate::metrics::Metrics;
use crate::registry::Registration;

/// When the worker runs a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows in one model batch (inputs; (input, choice) pairs when scoring). A larger request runs alone.
    pub max_batch: usize,
    /// How long the worker, once free, waits for requests to fill a batch (it runs a full one at once).
    pub max_wait: Duration,
    /// Requests that may wait; past it a request is refused (503) instead of queued.
    pub queue_capacity: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue_capacity: 1024,
        }
    }
}

/// A checked request, ready for the model.
#[derive(Debug, Clone)]
pub enum Work {
    Generate(GenerateJob),
    Score(ScoreJob),
    /// Put a task's routing rows or its own adapter into the model: between batches, alone.
    Register(Registration),
}

impl Work {
    /// Rows it adds to a model batch.
    fn rows(&self) -> usize {
        match self {
            Work::Generate(job) => job.sources.len(),
            Work::Score(job) => job.example.choices.len(),
            Work::Register(_) => 1,
        }
    }

    /// Requests of the same key may share a batch: the same adapter, and for generation the same
    /// [`Decoding::batch_key`]. A registration shares none.
    fn batch_key(&self) -> Option<(Option<usize>, Option<Decoding>)> {
        match self {
            Work::Generate(job) => Some((job.route.adapter, Some(job.decoding.batch_key()))),
            Work::Score(job) => Some((job.adapter, None)),
            Work::Register(_) => None,
        }
    }
}

/// What the model made of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Generated(GenerateResponse),
    Scored(ScoreResponse),
    Registered(RegisteredResponse),
    /// A registration the model could not take (an adapter that does not fit it).
    Refused(RequestError),
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    Stopped,
}

type Reply = oneshot::Sender<Result<Answer, String>>;

struct Queued {
    work: Work,
    reply: Reply,
}

/// The queue's sending side, shared by the request handlers.
pub struct Scheduler {
    /// `None` once closed.
    sender: Mutex<Option<SyncSender<Queued>>>,
    metrics: Arc<Metrics>,
}

/// The queue's model side: [`Worker::run`] answers requests on the calling thread (where the backend's
/// thread pool is) until the queue is closed and drained.
pub struct Worker {
    receiver: Receiver<Queued>,
    policy: BatchPolicy,
    metrics: Arc<Metrics>,
}

/// A queue of `policy.queue_capacity` requests.
pub fn queue(policy: BatchPolicy, metrics: Arc<Metrics>) -> Result<(Scheduler, Worker), ServeError> {
    if policy.max_batch == 0 || policy.queue_capacity == 0 {
        return Err(ServeError::Config(format!(
            "max_batch ({}) and queue_capacity ({}) must be at least 1",
            policy.max_batch, policy.queue_capacity
        )));
    }
    let (sender, receiver) = sync_channel(policy.queue_capacity);
    let scheduler = Scheduler {
        sender: Mutex::new(Some(sender)),
        metrics: metrics.clone(),
    };
    Ok((
        scheduler,
        Worker {
            receiver,
            policy,
            metrics,
        },
    ))
}

impl Scheduler {
    /// Queues `work`; the receiver gets its answer (or the model's error message).
    pub fn submit(&self, work: Work) -> Result<oneshot::Receiver<Result<Answer, String>>, Refused> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Refused::Stopped)?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued { work, reply };
        // Counted before sending, so that the worker's decrement never comes first.
        self.metrics.queue_depth.inc();
        match sender.try_send(queued) {
            Ok(()) => Ok(answer),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => Refused::QueueFull,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Refuses new requests; the worker still answers the queued ones, then returns.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

impl Worker {
    /// Answers requests until the queue is closed and drained.
    pub fn run<B: Backend>(self, engine: &mut Engine<B>, inputs: &Inputs) {
        work(engine, inputs, &self.policy, &self.metrics, &self.receiver);
    }
}

fn work<B: Backend>(
    engine: &mut Engine<B>,
    inputs: &Inputs,
    policy: &BatchPolicy,
    metrics: &Metrics,
    receiver: &Receiver<Queued>,
) {
    let mut pending: VecDeque<Queued> = VecDeque::new();
    let mut open = true;
    loop {
        let take = |queued: Queued, pending: &mut VecDeque<Queued>| {
            metrics.queue_depth.dec();
            pending.push_back(queued);
        };
        if pending.is_empty() {
            match receiver.recv() {
                Ok(queued) => take(queued, &mut pending),
                // Closed and drained.
                Err(_) => return,
            }
        }
        // Gather until a batch is full or `max_wait` has passed since the worker became free: clients answered by
        // the last batch then have time to send their next request and join this one, instead of the load
        // settling into half-full batches that alternate.
        let deadline = Instant::now() + policy.max_wait;
        while open && pending.iter().map(|q| q.work.rows()).sum::<usize>() < policy.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(queued) => take(queued, &mut pending),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        let mut batch = next_batch(&mut pending, policy.max_batch);
        match batch.pop_if(|q| matches!(q.work, Work::Register(_))) {
            Some(Queued {
                work: Work::Register(registration),
                reply,
            }) => {
                let answer = match register(engine, inputs, &registration) {
                    Ok(registered) => Answer::Registered(registered),
                    Err(refused) => Answer::Refused(refused),
                };
                let _ = reply.send(Ok(answer));
            }
            _ => run_batch(engine, inputs, metrics, batch),
        }
    }
}

/// The oldest request and, in arrival order, the others of its key that fit beside it.
fn next_batch(pending: &mut VecDeque<Queued>, max_batch: usize) -> Vec<Queued> {
    let Some(first) = pending.pop_front() else {
        return Vec::new();
    };
    let Some(key) = first.work.batch_key() else {
        return vec![first];
    };
    let mut rows = first.work.rows();
    let mut batch = vec![first];
    let mut rest = VecDeque::with_capacity(pending.len());
    for queued in pending.drain(..) {
        if queued.work.batch_key() == Some(key) && rows + queued.work.rows() <= max_batch {
            rows += queued.work.rows();
            batch.push(queued);
        } else {
            rest.push_back(queued);
        }
    }
    *pending = rest;
    batch
}

fn run_batch<B: Backend>(engine: &mut Engine<B>, inputs: &Inputs, metrics: &Metrics, batch: Vec<Queued>) {
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    let works: Vec<&Work> = batch.iter().map(|q| &q.work).collect();
    // A panic deep in a backend fails this batch's requests, not the server.
    let answers = catch_unwind(AssertUnwindSafe(|| answer(engine, inputs, &works))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the model panicked".into());
        Err(ServeError::Panicked(message))
    });
    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
    metrics.batch_requests.observe(batch.len() as f64);
    metrics
        .batch_rows
        .observe(works.iter().map(|w| w.rows()).sum::<usize>() as f64);
    let input_tokens: usize = works
        .iter()
        .map(|w| match w {
            Work::Generate(job) => job.sources.iter().map(Vec::len).sum(),
            Work::Score(job) => job.example.input_ids.len() * job.example.choices.len(),
            Work::Register(_) => 0,
        })
        .sum();
    metrics.input_tokens.inc_by(input_tokens as u64);
    match answers {
        Ok(answers) => {
            for (queued, answer) in batch.into_iter().zip(answers) {
                if let Answer::Generated(response) = &answer {
                    let tokens: usize = response.outputs.iter().map(|o| o.tokens.len()).sum();
                    metrics.generated_tokens.inc_by(tokens as u64);
                }
                // A client that went away no longer waits for its answer.
                let _ = queued.reply.send(Ok(answer));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for queued in batch {
                let _ = queued.reply.send(Err(message.clone()));
            }
        }
    }
}

/// Serves a registered task: its routing rows appended to the served routers (or replacing its row), or its
/// adapter attached to the base model (appended, or replacing its earlier one).
pub fn register<B: Backend>(
    engine: &mut Engine<B>,
    inputs: &Inputs,
    registration: &Registration,
) -> Result<RegisteredResponse, RequestError> {
    let name = registration.name();
    let (task_id, replaced, own_adapter) = match registration {
        Registration::Routing { rows, .. } => {
            let (row, replaced) = inputs.task_row(name)?;
            engine
                .put_task(rows, row, !replaced)
                .map_err(|e| RequestError::unprocessable("path", e.to_string()))?;
            if !replaced {
                inputs
                    .add_task(name)
                    .map_err(|e| RequestError::unprocessable("name", e.to_string()))?;
            }
            (row, replaced, false)
        }
        Registration::Adapter { adapter, row, .. } => {
            let (index, replaced) = inputs.own_adapter(name)?;
            engine
                .put_adapter(adapter, index)
                .map_err(|e| RequestError::unprocessable("path", e.to_string()))?;
            let route = Route {
                adapter: Some(index),
                row: *row,
            };
            inputs.put_own_task(name, route);
            (*row, replaced, true)
        }
    };
    Ok(RegisteredResponse {
        task: name.to_string(),
        task_id,
        replaced,
        own_adapter,
    })
}

/// Runs requests of one batch key as one model batch; answers in request order.
fn answer<B: Backend>(
    engine: &mut Engine<B>,
    inputs: &Inputs,
    works: &[&Work],
) -> Result<Vec<Answer>, ServeError> {
    let generate: Vec<&GenerateJob> = works
        .iter()
        .filter_map(|w| match w {
            Work::Generate(job) => Some(job),
            _ => None,
        })
        .collect();
    if !generate.is_empty() {
        return Ok(generate_jobs(engine, inputs, &generate)?
            .into_iter()
            .map(|outputs| Answer::Generated(GenerateResponse { outputs }))
            .collect());
    }
    let score: Vec<&ScoreJob> = works
        .iter()
        .filter_map(|w| match w {
            Work::Score(job) => Some(job),
            _ => None,
        })
        .collect();
    Ok(score_jobs(engine, &score)?
        .into_iter()
        .map(Answer::Scored)
        .collect())
}

/// Generation requests of one [`Decoding::batch_key`] as one model batch; per request, its outputs.
pub fn generate_jobs<B: Backend>(
    engine: &mut Engine<B>,
    inputs: &Inputs,
    jobs: &[&GenerateJob],
) -> Result<Vec<Vec<Generated>>, ServeError> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let num_beams = first.decoding.num_beams;
    let key = |j: &GenerateJob| (j.route.adapter, j.decoding.batch_key());
    if let Some(other) = jobs.iter().find(|j| key(j) != key(first)) {
        return Err(ServeError::Config(format!(
            "cannot batch {:?} with {:?}",
            key(first),
            key(other)
        )));
    }
    let rows: Vec<Row<'_>> = jobs
        .iter()
        .flat_map(|job| {
            job.sources.iter().map(|source| Row {
                task_id: job.route.row,
                source,
                max_new_tokens: job.decoding.max_new_tokens,
            })
        })
        .collect();
    let mut tokens = engine
        .generate(first.route.adapter, &rows, num_beams)?
        .into_iter();
    jobs.iter()
        .map(|job| {
            tokens
                .by_ref()
                .take(job.sources.len())
                .map(|tokens| {
                    Ok(Generated {
                        text: inputs.text(&tokens)?,
                        tokens,
                    })
                })
                .collect()
        })
        .collect()
}

/// Scoring requests as one model batch.
pub fn score_jobs<B: Backend>(
    engine: &mut Engine<B>,
    jobs: &[&ScoreJob],
) -> Result<Vec<ScoreResponse>, ServeError> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    if let Some(other) = jobs.iter().find(|j| j.adapter != first.adapter) {
        return Err(ServeError::Config(format!(
            "cannot batch adapter {:?} with {:?}",
            first.adapter, other.adapter
        )));
    }
    let examples: Vec<_> = jobs.iter().map(|j| j.example.clone()).collect();
    Ok(engine
        .score(first.adapter, &examples)?
        .into_iter()
        .zip(jobs)
        .map(|(scores, job)| ScoreResponse {
            answer: job.choices.get(scores.best).cloned().unwrap_or_default(),
            answer_index: scores.best,
            logliks: scores.logliks,
            scores: scores.scores,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::GenerateJob;

    fn generate(rows: usize, decoding: Decoding) -> Work {
        Work::Generate(GenerateJob {
            route: Route {
                adapter: None,
                row: 0,
            },
            sources: vec![vec![1]; rows],
            decoding,
        })
    }

    fn score(choices: usize) -> Work {
        Work::Score(ScoreJob {
            adapter: None,
            example: mhr_data::EncodedChoices {
                input_ids: vec![1],
                choices: vec![vec![1]; choices],
                gold: 0,
                task_id: 0,
            },
            choices: vec![String::new(); choices],
        })
    }

    fn queued(work: Work) -> Queued {
        Queued {
            work,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_takes_the_oldest_and_what_shares_its_key_and_fits() {
        let greedy = |n| Decoding {
            max_new_tokens: n,
            num_beams: 1,
        };
        let beam = Decoding {
            max_new_tokens: 8,
            num_beams: 2,
        };
        let mut pending: VecDeque<Queued> = [
            generate(2, greedy(8)),
            score(3),
            generate(1, beam),
            generate(1, greedy(20)),
            generate(2, greedy(4)),
            generate(1, greedy(4)),
        ]
        .into_iter()
        .map(queued)
        .collect();
        let rows = |batch: &[Queued]| batch.iter().map(|q| q.work.rows()).collect::<Vec<_>>();
        // Greedy requests of any length share a batch while they fit 4 rows; the 2-row one waits.
        let batch = next_batch(&mut pending, 4);
        assert_eq!(rows(&batch), [2, 1, 1]);
        assert_eq!(pending.len(), 3);
        assert_eq!(rows(&next_batch(&mut pending, 4)), [3]);
        assert!(matches!(&next_batch(&mut pending, 4)[0].work, Work::Generate(j) if j.decoding == beam));
        assert_eq!(rows(&next_batch(&mut pending, 4)), [2]);
        assert!(pending.is_empty());
        // A request larger than a batch runs alone.
        let mut pending: VecDeque<Queued> = [score(9), score(1)].into_iter().map(queued).collect();
        assert_eq!(rows(&next_batch(&mut pending, 4)), [9]);
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_stops() {
        let metrics = Arc::new(Metrics::default());
        let policy = BatchPolicy {
            queue_capacity: 2,
            ..BatchPolicy::default()
        };
        let (scheduler, worker) = queue(policy, metrics.clone()).unwrap();
        let greedy = Decoding {
            max_new_tokens: 1,
            num_beams: 1,
        };
        let _first = scheduler.submit(generate(1, greedy)).unwrap();
        let _second = scheduler.submit(score(1)).unwrap();
        assert_eq!(scheduler.submit(score(1)).unwrap_err(), Refused::QueueFull);
        assert_eq!(metrics.queue_depth.get(), 2);
        scheduler.close();
        assert_eq!(scheduler.submit(score(1)).unwrap_err(), Refused::Stopped);
        drop(worker);
        assert!(
            queue(
                BatchPolicy {
                    max_batch: 0,
                    ..BatchPolicy::default()
                },
                metrics
            )
            .is_err()
        );
    }
}
