//! Data-parallel training on Burn's collective operations: one peer (a thread) per device computes its rows
//! of every micro-batch, the peers sum their gradients and losses in one collective operation per step,
//! and each takes the same optimiser step, so the run equals one device with the whole batch.
//!
//! What makes it equal: a micro-batch's rows are split between the peers, each padded as the whole
//! micro-batch; a peer's loss is weighted by its share of the micro-batch's target tokens (or examples),
//! so the sum is the whole batch's mean; every random draw is made for the whole micro-batch and cut to the
//! peer's rows ([`mhr_core::Draws`]); clipping and the learning-rate schedule see the summed gradients.

use std::ops::Range;
use std::sync::Mutex;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, TensorPrimitive};
use burn_collective::{CollectiveConfig, CollectiveError, PeerId, ReduceOperation};
use mhr_core::to_dtype;
use mhr_models::T5ForConditionalGeneration;

use crate::error::TrainError;

/// Burn's collective server is one per process and backend: one data-parallel run at a time.
static RUN: Mutex<()> = Mutex::new(());

/// Which rows of each micro-batch a peer computes: rank `rank` of `count` peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub rank: usize,
    pub count: usize,
}

impl Share {
    pub const WHOLE: Self = Self { rank: 0, count: 1 };

    /// This peer's rows of a micro-batch of `batch` rows (contiguous, sizes differing by at most one).
    pub fn rows(&self, batch: usize) -> Range<usize> {
        batch * self.rank / self.count..batch * (self.rank + 1) / self.count
    }

    /// Only rank 0 writes checkpoints, metrics and progress.
    pub fn writes(&self) -> bool {
        self.rank == 0
    }
}

/// How a peer sums a step's gradients with the others.
pub(crate) struct Peer<B: Backend> {
    pub share: Share,
    id: PeerId,
    /// Peers on one device (CPU peers) gather every peer's buffer and add them in rank order: Burn's
    /// all-reduce adds same-device tensors in hash-map order, which would make the last bit vary between
    /// runs. Peers on distinct devices all-reduce, which adds them in device order.
    gather: bool,
    device: B::Device,
}

impl<B: Backend> Peer<B> {
    /// The only peer: nothing to exchange.
    pub fn alone(device: &B::Device) -> Self {
        Self {
            share: Share::WHOLE,
            id: PeerId(0),
            gather: false,
            device: device.clone(),
        }
    }

    /// Sums `values` (the same length on every peer) over the peers.
    fn sum(&self, values: Tensor<B, 1>) -> Result<Tensor<B, 1>, CollectiveError> {
        if self.share.count == 1 {
            return Ok(values);
        }
        if !self.gather {
            let summed = burn_collective::all_reduce::<B>(
                self.id,
                values.into_primitive().tensor(),
                ReduceOperation::Sum,
            )?;
            return Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)));
        }
        let mut total: Option<Tensor<B, 1>> = None;
        for root in 0..self.share.count {
            let mine = (root == self.share.rank).then(|| values.clone().into_primitive().tensor());
            let part = Tensor::from_primitive(TensorPrimitive::Float(burn_collective::broadcast::<B>(
                self.id, mine,
            )?));
            total = Some(match total {
                None => part,
                Some(total) => total + part,
            });
        }
        Ok(total.unwrap_or(values))
    }
}

/// A step's gradients and host values summed over the peers, in one collective operation: the trainable
/// parameters' gradients in module order (f32), then `values`.
pub(crate) fn sum_step<B: AutodiffBackend>(
    peer: &Peer<B::InnerBackend>,
    model: &T5ForConditionalGeneration<B>,
    mut grads: GradientsParams,
    values: &[f64],
) -> Result<(GradientsParams, Vec<f64>), TrainError>
where
    T5ForConditionalGeneration<B>: AutodiffModule<B>,
{
    if peer.share.count == 1 {
        return Ok((grads, values.to_vec()));
    }
    let mut pack = Pack::<B> {
        grads: &mut grads,
        parts: Vec::new(),
        packed: Vec::new(),
    };
    model.visit(&mut pack);
    let Pack { parts, packed, .. } = pack;
    let extra: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let mut all = parts;
    all.push(Tensor::from_floats(extra.as_slice(), &peer.device));
    let summed = peer
        .sum(Tensor::cat(all, 0))
        .map_err(|e| TrainError::Collective {
            peer: peer.share.rank,
            what: "summing the step's gradients".into(),
            cause: format!("{e:?}"),
        })?;
    let total = summed.dims()[0];
    let sums: Vec<f32> = summed
        .clone()
        .narrow(0, total - values.len(), values.len())
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::Config(format!("reading the summed losses: {e:?}")))?;
    let mut unpack = Unpack::<B> {
        flat: summed,
        offset: 0,
        packed: &packed,
        next: 0,
        grads,
    };
    model.visit(&mut unpack);
    Ok((unpack.grads, sums.into_iter().map(f64::from).collect()))
}

/// Moves each trainable parameter's gradient, flattened to f32, into `parts` (module order).
struct Pack<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    packed: Vec<(ParamId, DType)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Pack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dtype = grad.dtype();
            let n = grad.shape().num_elements();
            self.parts.push(to_dtype(grad.reshape([n]), DType::F32));
            self.packed.push((param.id, dtype));
        }
    }
}

/// Puts the summed gradients back, in the order and dtypes [`Pack`] took them.
struct Unpack<'a, B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    packed: &'a [(ParamId, DType)],
    next: usize,
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unpack<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(&(id, dtype)) = self.packed.get(self.next).filter(|(id, _)| *id == param.id) else {
            return;
        };
        let dims = param.val().dims();
        let n: usize = dims.iter().product();
        let grad = self.flat.clone().narrow(0, self.offset, n).reshape(dims);
        self.grads.register(id, to_dtype(grad, dtype));
        self.offset += n;
        self.next += 1;
    }
}

/// Runs `peer_run` on one thread per device, as the peers of one data-parallel run, and returns rank 0's
/// result. A peer that fails (or panics) releases the others from their collective operations, and the
/// error names it; the first failure is reported, not the others' "released" errors.
pub(crate) fn run_peers<B, T, F>(devices: &[B::Device], peer_run: F) -> Result<T, TrainError>
where
    B: Backend,
    T: Send,
    F: Fn(Peer<B>) -> Result<T, TrainError> + Sync,
{
    let _one_run = RUN.lock().unwrap_or_else(|e| e.into_inner());
    let count = devices.len();
    let gather = devices.iter().enumerate().any(|(i, d)| devices[..i].contains(d));
    let config = CollectiveConfig::default().with_num_devices(count);
    let results: Vec<Result<T, TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(rank, device)| {
                let (config, peer_run) = (config.clone(), &peer_run);
                scope.spawn(move || {
                    let id = PeerId::from(rank);
                    let fail = |e: TrainError| {
                        burn_collective::reset_collective::<B>();
                        e
                    };
                    burn_collective::register::<B>(id, device.clone(), config).map_err(|e| {
                        fail(TrainError::Collective {
                            peer: rank,
                            what: "joining the run".into(),
                            cause: format!("{e:?}"),
                        })
                    })?;
                    let peer = Peer {
                        share: Share { rank, count },
                        id,
                        gather,
                        device: device.clone(),
                    };
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| peer_run(peer)))
                        .unwrap_or_else(|panic| {
                            let message = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            Err(TrainError::PeerPanicked { peer: rank, message })
                        });
                    match outcome {
                        Ok(value) => {
                            burn_collective::finish_collective::<B>(id).map_err(|e| {
                                TrainError::Collective {
                                    peer: rank,
                                    what: "leaving the run".into(),
                                    cause: format!("{e:?}"),
                                }
                            })?;
                            Ok(value)
                        }
                        Err(e) => Err(fail(e)),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, handle)| {
                handle.join().unwrap_or_else(|_| {
                    Err(TrainError::PeerPanicked {
                        peer: rank,
                        message: String::new(),
                    })
                })
            })
            .collect()
    });
    // The cause, not the peers it released.
    let mut results: Vec<_> = results.into_iter().map(Some).collect();
    let first_cause = results
        .iter()
        .position(|r| matches!(r, Some(Err(e)) if !matches!(e, TrainError::Collective { .. })));
    let failed = first_cause.or_else(|| results.iter().position(|r| matches!(r, Some(Err(_)))));
    if let Some(rank) = failed
        && let Some(Err(e)) = results[rank].take()
    {
        return Err(match e {
            e @ (TrainError::Collective { .. } | TrainError::PeerPanicked { .. }) => e,
            e => TrainError::Peer {
                peer: rank,
                source: Box::new(e),
            },
        });
    }
    match results.swap_remove(0) {
        Some(Ok(value)) => Ok(value),
        _ => Err(TrainError::Config("data-parallel run without peers".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once() {
        for count in 1..5 {
            for batch in count..12 {
                let rows: Vec<usize> = (0..count)
                    .flat_map(|rank| Share { rank, count }.rows(batch))
                    .collect();
                assert_eq!(
                    rows,
                    (0..batch).collect::<Vec<_>>(),
                    "{batch} rows over {count} peers"
                );
            }
        }
    }
}
