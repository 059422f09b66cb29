//! The expert-parallel group of a whole model: the transport, the exchange tape shared by every
//! MoE layer, and the parameter bookkeeping a data-and-expert-parallel trainer needs (which
//! parameters are sharded, gradient synchronisation, gathering and slicing for checkpoints).

use super::{all_gather_tensor, Collectives, ExchangeTape};
use crate::error::{Error, Result};
use crate::host;
use crate::nn::role::roles;
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{nn::VarStore, Kind, Tensor};

/// `R` ranks training one model: every rank holds a replica of the dense parameters (attention,
/// norms, embeddings, routers, shared experts, AltUp) and its slice `r·E/R .. (r+1)·E/R` of every
/// MoE layer's experts (the parameters created with the sharded role,
/// [`crate::nn::ParamRole::EXPERT`], sharded along dimension 0). Each rank
/// runs `B/R` sequences of the global batch (GShard §2.3: data parallel outside the MoE layers,
/// expert parallel inside).
#[derive(Debug, Clone)]
pub struct ExpertParallel {
    comm: Arc<dyn Collectives>,
    tape: ExchangeTape,
}

impl ExpertParallel {
    /// A group over `comm` with an empty exchange tape.
    pub fn new(comm: Arc<dyn Collectives>) -> Self {
        Self::with_tape(comm, ExchangeTape::new())
    }

    /// A group over `comm` recording on `tape` (e.g. [`ExchangeTape::strict`], to check that a
    /// model's backward walks each part of its graph once).
    pub fn with_tape(comm: Arc<dyn Collectives>, tape: ExchangeTape) -> Self {
        Self { comm, tape }
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

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
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

    /// Number of ranks `R`.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Backward of this rank's share of the objective through the recorded exchanges
    /// ([`ExchangeTape::backward`]); every rank must call it.
    ///
    /// # Errors
    /// Transport and libtorch errors.
    pub fn backward(&self, loss: &Tensor) -> Result<()> {
        self.tape.backward(self.comm(), loss)
    }

    /// Sums the gradients of `vs`'s replicated parameters over ranks (one all-reduce of all of
    /// them, in name order); expert gradients are already complete on their owner. A parameter
    /// that got a gradient on some rank gets the sum on every rank (a zero gradient slot is
    /// created where it had none), so the replicas stay identical.
    ///
    /// # Errors
    /// Transport and libtorch errors.
    pub fn all_reduce_replicated_grads(&self, vs: &VarStore) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let params: BTreeMap<String, Tensor> = vs.variables().into_iter().collect(); // name order
        let roles = roles(vs);
        let replicated: Vec<&Tensor> = params
            .iter()
            .filter(|(n, p)| !roles.get(*n).is_some_and(|r| r.sharded) && p.requires_grad())
            .map(|(_, p)| p)
            .collect();
        // One flag per parameter (has a gradient here), then every gradient, flattened.
        let mut flat: Vec<f32> = replicated.iter().map(|p| if p.grad().defined() { 1.0 } else { 0.0 }).collect();
        for p in &replicated {
            let g = p.grad();
            let g = if g.defined() { g } else { p.f_zeros_like()? };
            flat.extend(host::f32s(&g)?);
        }
        self.comm.all_reduce_sum_f32(&mut flat)?;
        let mut at = replicated.len();
        for (i, p) in replicated.into_iter().enumerate() {
            let n = p.numel();
            let values = &flat[at..at + n];
            at += n;
            if flat[i] == 0.0 {
                continue; // no rank has a gradient for it
            }
            if !p.grad().defined() {
                p.f_mul_scalar(0.0)?.f_sum(Kind::Float)?.f_backward()?; // creates a zero gradient slot
            }
            let summed =
                Tensor::from_slice(values).f_view(p.size().as_slice())?.f_to_kind(p.kind())?.f_to_device(p.device())?;
            tch::no_grad(|| p.grad().f_copy_(&summed))?;
        }
        Ok(())
    }

    /// Whole-model tensors from this rank's: the tensors `sharded` names (expert weights, or
    /// their optimizer moments) are concatenated over ranks along dimension 0; the others are
    /// returned as they are. Every rank must call it with the same names.
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

    /// This rank's part of whole-model tensors: the inverse of [`ExpertParallel::gather_sharded`].
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
