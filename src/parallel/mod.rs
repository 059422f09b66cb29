//! Several ranks training one model: the process group, the collectives under it, and the
//! segmented backward that makes row exchanges differentiable (GShard, Lepikhin et al. 2020,
//! arXiv 2006.16668, §2.3: data parallel outside the MoE layers, expert parallel inside).
//!
//! * [`ProcessGroup`] is what a model is built in and trained with. One process is a group of
//!   one ([`ProcessGroup::single`]): no exchanges, no graph cuts, and every group method (backward,
//!   gradient reduction, global norm, statistic reduction, checkpoint gathering) is the identity.
//!   A group over a transport ([`ProcessGroup::new`]) makes every MoE layer exchange its token rows
//!   over it (`moe::dispatch::ExpertParallelDispatcher`) and cuts the forward graph so that the
//!   backward walks each block once.
//! * [`Collectives`] is the seam to the transport: [`SingleProcess`] (one rank, no-op),
//!   [`ThreadGroup`] (one thread per device in one process, rows staged through host memory),
//!   and with the `mpi` cargo feature [`MpiWorld`] (several processes over MPI). An NCCL backend
//!   would implement the same trait.
//! * tch has no custom autograd functions, so an exchange cuts the graph: the received rows are a
//!   fresh leaf. [`ExchangeTape`] records every exchange and cut of a forward pass, and
//!   [`ExchangeTape::backward`] runs the backward in segments in reverse order — the gradient
//!   reaching each cut leaf is sent back with the splits swapped and continued on the sending side
//!   with `(sent · incoming_grad).sum().backward()`. This gives exact gradients.
//!
//! The MoE layers' statistics are global: capacity is agreed across ranks (the positional priority
//! of one rank holding the whole batch, ranks taken in order), and the load-balancing loss, z-loss
//! and router entropy are per-rank partial sums over the global token count, so their sum over
//! ranks equals the single-process value.

mod collectives;
mod group;
mod launch;
#[cfg(feature = "mpi")]
mod mpi_world;
mod tape;
mod threads;

pub use collectives::{all_gather_tensor, all_reduce_tensor, Collectives, SingleProcess};
pub use group::ProcessGroup;
pub use launch::{launch, Ranks};
#[cfg(feature = "mpi")]
pub use mpi_world::MpiWorld;
pub(crate) use tape::grad_mode_enabled;
pub use tape::{ExchangeTape, GraphCuts};
pub use threads::ThreadGroup;
