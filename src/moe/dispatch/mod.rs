//! Moving token rows to their experts and back, behind the [`TokenDispatcher`] seam (after
//! torchtitan's `TokenDispatcher`). The [`DispatchPlan`] (see [`crate::moe::plan`]) says where
//! each row goes; a dispatcher only moves rows.
//!
//! * [`SortDispatcher`] (`sort.rs`): one process holds every expert; rows are gathered in plan
//!   order and combined deterministically.
//! * [`ExpertParallelDispatcher`] (`expert_parallel.rs`): rows travel over a process group to the
//!   rank that owns their expert and back.
//!
//! [`dispatcher_for`] picks one for a layer from the process group it is built in.

mod expert_parallel;
mod sort;

pub use expert_parallel::ExpertParallelDispatcher;
pub use sort::SortDispatcher;

use crate::error::Result;
use crate::moe::config::MoeConfig;
use crate::moe::counts::{BatchCounts, PartCounts};
use crate::moe::experts::Experts;
use crate::moe::plan::{count_real, DispatchPlan};
use crate::moe::routing::Selection;
use crate::parallel::ProcessGroup;
use tch::Tensor;

/// Moves token rows to experts and expert outputs back to tokens.
pub trait TokenDispatcher: std::fmt::Debug + Send {
    /// Gathers the token rows of the kept assignments, grouped by expert.
    ///
    /// # Shapes
    /// `x`: `[N, D]` → `[M, D]` in plan order (expert `e` owns `plan.group_sizes[e]` rows).
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` does not have the plan's `N` rows.
    fn dispatch(&self, x: &Tensor, plan: &DispatchPlan) -> Result<Tensor>;

    /// Scales expert outputs by their gates (in f32) and sums each token's contributions.
    ///
    /// # Shapes
    /// `expert_out`: `[M, D]` in plan order → `[N, D]` in `expert_out`'s dtype; tokens with no
    /// kept assignment get exact zeros.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `expert_out` does not have `M` rows.
    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor>;

    /// Dispatch, expert computation and combine. A dispatcher that moves rows to other ranks
    /// runs `experts` (this rank's experts) on the rows it receives, using `batch` (from
    /// [`TokenDispatcher::count_batch`]) to know how many rows each rank sends.
    ///
    /// # Shapes
    /// `tokens`: `[N, D]` → `[N, D]`.
    ///
    /// # Errors
    /// Errors of dispatch, the experts, combine, or the transport.
    fn run(&self, tokens: &Tensor, plan: &DispatchPlan, batch: &BatchCounts, experts: &Experts) -> Result<Tensor> {
        let _ = batch;
        let rows = self.dispatch(tokens, plan)?;
        let expert_out = experts.forward(&rows, &plan.group_sizes)?;
        self.combine(&expert_out, plan)
    }

    /// The layer's token rows as this dispatcher needs them. Locally they are returned as they
    /// are; a dispatcher that exchanges rows cuts the graph here (the rows' gradient arrives in
    /// two parts, see [`crate::parallel::ExchangeTape`]).
    ///
    /// # Shapes
    /// `tokens`: `[N, D]` → `[N, D]`.
    ///
    /// # Errors
    /// [`crate::Error::Torch`] on libtorch failure.
    fn layer_input(&self, tokens: &Tensor) -> Result<Tensor> {
        Ok(tokens.shallow_clone())
    }

    /// The counts of the batch this pass's selection belongs to: held whole locally (the
    /// default); with expert parallelism, every rank's token and assignment counts (one
    /// collective per layer and pass), from which capacity and the layer's statistics become
    /// global.
    ///
    /// # Errors
    /// Transport errors; [`crate::Error::Input`] if ranks disagree on gradients.
    fn count_batch(&self, selection: &Selection) -> Result<BatchCounts> {
        Ok(BatchCounts::whole(PartCounts {
            tokens: selection.num_tokens,
            real_tokens: count_real(selection.valid.as_ref(), selection.num_tokens)?,
            needs_grad: selection.needs_grad,
        }))
    }
}

/// The dispatcher of an MoE layer built in `group`: local dispatch in one process, the
/// expert-parallel exchange in a group that exchanges rows.
///
/// # Errors
/// [`crate::Error::Config`] if the routing family or capacity priority needs the whole batch in
/// one place, or the ranks do not divide the experts.
pub fn dispatcher_for(group: &ProcessGroup, config: &MoeConfig) -> Result<Box<dyn TokenDispatcher>> {
    if !group.exchanges_rows() {
        return Ok(Box::new(SortDispatcher));
    }
    config.router.policy().check_expert_parallel(&config.routing_options())?;
    Ok(Box::new(ExpertParallelDispatcher::new(group.clone(), config.num_experts)?))
}
