//! The process group a model is built in and trained with: the transport, the exchange tape shared
//! by every MoE layer, and the few operations a training step needs across ranks — each the
//! identity in a group of one, so the step reads the same with one process or many.

use super::{all_gather_tensor, Collectives, ExchangeTape, GraphCuts, SingleProcess};
use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::host;
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// `R` ranks training one model: every rank holds a replica of the dense parameters (attention,
/// norms, embeddings, routers, shared experts, AltUp) and its slice `r·E/R .. (r+1)·E/R` of every
/// MoE layer's experts (the parameters created with the sharded role,
/// [`crate::nn::ParamRole::EXPERT`], sharded along dimension 0). Each rank runs `B/R` sequences of
/// the global batch (GShard §2.3: data parallel outside the MoE layers, expert parallel inside).
///
/// One process is a group of one ([`ProcessGroup::single`], the [`Default`]): its MoE layers
/// dispatch locally, nothing is cut or exchanged, and every method below returns its input.
/// Cloning shares the transport and the tape.
#[derive(Debug, Clone)]
pub struct ProcessGroup {
    comm: Arc<dyn Collectives>,
    tape: ExchangeTape,
    /// Whether MoE layers exchange their rows over `comm` (and the model cuts its graph for the
    /// segmented backward); false only for [`ProcessGroup::single`].
    exchanges: bool,
}

impl Default for ProcessGroup {
    fn default() -> Self {
        Self::single()
    }
}

impl ProcessGroup {
    /// One process, one rank: local dispatch, no cuts, no collectives.
    pub fn single() -> Self {
        Self { comm: Arc::new(SingleProcess), tape: ExchangeTape::new(), exchanges: false }
    }

    /// A group over `comm` with an empty exchange tape. Its MoE layers exchange their token rows
    /// over `comm` — even in a world of one (`SingleProcess`), which runs the whole exchange
    /// machinery in one process (the tests compare it with [`ProcessGroup::single`]).
    pub fn new(comm: Arc<dyn Collectives>) -> Self {
        Self::with_tape(comm, ExchangeTape::new())
    }

    /// A group over `comm` recording on `tape` (e.g. [`ExchangeTape::strict`], to check that a
    /// model's backward walks each part of its graph once).
    pub fn with_tape(comm: Arc<dyn Collectives>, tape: ExchangeTape) -> Self {
        Self { comm, tape, exchanges: true }
    }

    /// Whether MoE layers built in this group exchange token rows between ranks (and the model
    /// cuts its forward graph at their boundaries); false for [`ProcessGroup::single`].
    pub fn exchanges_rows(&self) -> bool {
        self.exchanges
    }

    /// The transport.
    pub fn comm(&self) -> &dyn Collectives {
        self.comm.as_ref()
    }

    /// The transport, shared.
    pub fn comm_arc(&self) -> Arc<dyn Collectives> {
        self.comm.clone()
    }

    /// The tape every MoE layer of the model records its exchanges on.
    pub fn tape(&self) -> &ExchangeTape {
        &self.tape
    }

    /// Where a model built in this group cuts its graph: on the tape when rows are exchanged,
    /// nowhere otherwise.
    pub fn cuts(&self) -> GraphCuts {
        if self.exchanges {
            GraphCuts::on(&self.tape)
        } else {
            GraphCuts::none()
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks `R`.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Whether this rank prints and writes files (rank 0, or the only process).
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The experts `r·E/R .. (r+1)·E/R` this rank holds of a layer of `num_experts` (all of them
    /// in a group that does not exchange rows).
    ///
    /// # Errors
    /// [`Error::Config`] if `num_experts` is not a positive multiple of the ranks.
    pub fn expert_slice(&self, num_experts: usize) -> Result<std::ops::Range<usize>> {
        if !self.exchanges {
            return Ok(0..num_experts);
        }
        let r = self.world_size();
        if num_experts == 0 || num_experts % r != 0 {
            return Err(Error::Config(format!(
                "num_experts ({num_experts}) must be a positive multiple of the {r} ranks"
            )));
        }
        let local = num_experts / r;
        Ok(self.rank() * local..(self.rank() + 1) * local)
    }

    /// The device this rank computes on when the job asked for `requested`: with CUDA, rank `r`
    /// takes `cuda:(r mod n)` of the `n` devices this process sees (one device per rank when
    /// each node runs as many ranks as it has GPUs); any other device is used as it is.
    pub fn rank_device(&self, requested: tch::Device) -> tch::Device {
        match requested {
            tch::Device::Cuda(_) => tch::Device::Cuda(self.rank() % (tch::Cuda::device_count().max(1) as usize)),
            other => other,
        }
    }

    /// This rank's rows `r·B/R .. (r+1)·B/R` of a batch tensor `[B, …]` (the tensor itself in a
    /// world of one; the caller checks that `R` divides `B`).
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn shard_rows(&self, t: &Tensor) -> Result<Tensor> {
        let ranks = self.world_size() as i64;
        if ranks == 1 {
            return Ok(t.shallow_clone());
        }
        let per = t.size().first().copied().unwrap_or(0) / ranks;
        Ok(t.f_narrow(0, self.rank() as i64 * per, per)?)
    }

    /// Backward of this rank's share of the objective: through the recorded cuts and exchanges
    /// ([`ExchangeTape::backward`]), or `loss.backward()` when nothing was recorded (one
    /// process). Every rank must call it.
    ///
    /// # Errors
    /// Transport and libtorch errors.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        self.tape.backward(self.comm(), loss)
    }

    /// Sums the gradients of `replicated` parameters over ranks (one all-reduce of all of them,
    /// in the given order, which every rank must share); expert gradients are already complete on
    /// their owner. A parameter that got a gradient on some rank gets the sum on every rank (a
    /// zero gradient slot is created where it had none), so the replicas stay identical. Nothing
    /// happens in a world of one.
    ///
    /// # Errors
    /// Transport and libtorch errors.
    pub fn all_reduce_grads(&self, replicated: &[&Tensor]) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        // One flag per parameter (has a gradient here), then every gradient, flattened.
        let mut flat: Vec<f32> = replicated.iter().map(|p| if p.grad().defined() { 1.0 } else { 0.0 }).collect();
        for p in replicated {
            let g = p.grad();
            let g = if g.defined() { g } else { p.f_zeros_like()? };
            flat.extend(host::f32s(&g)?);
        }
        self.comm.all_reduce_sum_f32(&mut flat)?;
        let mut at = replicated.len();
        for (i, p) in replicated.iter().enumerate() {
            let n = p.numel();
            let values = &flat[at..at + n];
            at += n;
            if flat[i] == 0.0 {
                continue; // no rank has a gradient for it
            }
            if !p.grad().defined() {
                p.f_mul_scalar(0.0)?.f_sum(Kind::Float)?.f_backward()?; // creates a zero gradient slot
            }
            let summed = Tensor::from_slice(values).f_view(p.size().as_slice())?.like(p)?.f_to_device(p.device())?;
            tch::no_grad(|| p.grad().f_copy_(&summed))?;
        }
        Ok(())
    }

    /// The global gradient norm: `local()` (the norm of this process's gradients, on the device)
    /// in a world of one; with several ranks, from `square_sums()` (`[replicated, sharded]` sums
    /// of squared gradient entries) with the sharded part summed over ranks, as a scalar f32 on
    /// the device of `square_sums`.
    ///
    /// # Errors
    /// Transport and libtorch errors.
    pub fn global_norm(
        &self,
        local: impl FnOnce() -> Result<Tensor>,
        square_sums: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if self.world_size() == 1 {
            return local();
        }
        let sums = square_sums()?;
        let mut values = host::f64s(&sums)?;
        let mut sharded = [values[1]];
        self.comm.all_reduce_sum_f64(&mut sharded)?;
        values[1] = sharded[0];
        Ok(Tensor::from((values[0] + values[1]).sqrt() as f32).f_to_device(sums.device())?)
    }

    /// Element-wise sum of statistics over ranks, in place (nothing to do in a world of one).
    ///
    /// # Errors
    /// Transport errors.
    pub fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        self.comm.all_reduce_sum_f64(values)
    }

    /// Whether a condition holds on any rank: `flag` (scalar f32, 0 or 1, on the device) summed
    /// over the ranks and capped at 1. In a group of one the flag itself, without a read; several
    /// ranks read it, since their collectives run on the host.
    ///
    /// # Errors
    /// Transport errors; [`Error::Torch`] on libtorch failure.
    pub fn any_rank(&self, flag: &Tensor) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(flag.shallow_clone());
        }
        let mut any = [host::f64_scalar(flag)?];
        self.comm.all_reduce_sum_f64(&mut any)?;
        Ok(Tensor::from(if any[0] > 0.0 { 1.0f32 } else { 0.0 }).f_to_device(flag.device())?)
    }

    /// Whether any rank failed, so that all stop together instead of waiting in a collective: the
    /// local failure (named with its rank when there are several), a note that another rank
    /// failed, or `None`. In a world of one, `local` itself.
    ///
    /// # Errors
    /// Transport errors.
    pub fn agree_on_failure(&self, local: Option<String>) -> Result<Option<String>> {
        if self.world_size() == 1 {
            return Ok(local);
        }
        let mut failed = [if local.is_some() { 1.0 } else { 0.0 }];
        self.comm.all_reduce_sum_f64(&mut failed)?;
        Ok(match local {
            Some(what) => Some(format!("{what} on rank {}", self.rank())),
            None if failed[0] > 0.0 => Some("another rank failed (see its message)".into()),
            None => None,
        })
    }

    /// Whole-model tensors from this rank's: the tensors `sharded` names (expert weights, or
    /// their optimizer moments) are concatenated over ranks along dimension 0; the others are
    /// returned as they are (all of them in a world of one). Every rank must call it with the
    /// same names.
    ///
    /// # Errors
    /// Transport errors.
    pub fn gather_sharded(
        &self,
        named: Vec<(String, Tensor)>,
        sharded: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Tensor)>> {
        named
            .into_iter()
            .map(|(name, t)| {
                if sharded(&name) && self.world_size() > 1 {
                    let full = all_gather_tensor(self.comm(), &t)?;
                    Ok((name, full))
                } else {
                    Ok((name, t))
                }
            })
            .collect()
    }

    /// This rank's part of whole-model tensors: the inverse of [`ProcessGroup::gather_sharded`].
    ///
    /// # Errors
    /// [`Error::Checkpoint`] if an expert tensor's first dimension is not a multiple of `R`.
    pub fn slice_sharded(
        &self,
        named: BTreeMap<String, Tensor>,
        sharded: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Tensor>> {
        let (r, ranks) = (self.rank() as i64, self.world_size() as i64);
        named
            .into_iter()
            .map(|(name, t)| {
                if !sharded(&name) || ranks == 1 {
                    return Ok((name, t));
                }
                let rows = t.size().first().copied().unwrap_or(0);
                if rows % ranks != 0 {
                    return Err(Error::Checkpoint(format!(
                        "expert tensor '{name}' has {rows} experts, not a multiple of the {ranks} ranks"
                    )));
                }
                let per = rows / ranks;
                Ok((name, t.f_narrow(0, r * per, per)?.f_contiguous()?))
            })
            .collect()
    }
}
