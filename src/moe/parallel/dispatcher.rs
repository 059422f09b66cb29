//! The expert-parallel token dispatcher.

use super::{Collectives, ExchangeTape};
use crate::error::{Error, Result};
use crate::moe::dispatch::{SortDispatcher, TokenDispatcher};
use crate::moe::experts::Experts;
use crate::moe::plan::DispatchPlan;
use std::sync::Arc;
use tch::Tensor;

/// Dispatches token rows to the ranks owning their experts: rank `r` owns experts
/// `r·E/R .. (r+1)·E/R`. Per MoE layer and pass: one fixed-size all-to-all of counts, one
/// variable all-to-all of rows out, one of results back (see the module docs).
#[derive(Debug, Clone)]
pub struct ExpertParallelDispatcher {
    comm: Arc<dyn Collectives>,
    tape: ExchangeTape,
    num_experts: usize,
}

impl ExpertParallelDispatcher {
    /// A dispatcher over `comm` for `num_experts` experts recording exchanges on `tape`.
    ///
    /// # Errors
    /// [`Error::Config`] if `num_experts` is not a multiple of the number of ranks.
    pub fn new(comm: Arc<dyn Collectives>, tape: ExchangeTape, num_experts: usize) -> Result<Self> {
        let r = comm.world_size();
        if num_experts == 0 || num_experts % r != 0 {
            return Err(Error::Config(format!(
                "num_experts ({num_experts}) must be a positive multiple of the {r} ranks"
            )));
        }
        Ok(Self { comm, tape, num_experts })
    }

    /// Experts owned by each rank.
    pub fn local_experts(&self) -> usize {
        self.num_experts / self.comm.world_size()
    }

    /// The range of global expert indices this rank owns.
    pub fn owned(&self) -> std::ops::Range<usize> {
        let l = self.local_experts();
        let r = self.comm.rank();
        r * l..(r + 1) * l
    }
}

impl TokenDispatcher for ExpertParallelDispatcher {
    fn dispatch(&self, x: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        SortDispatcher.dispatch(x, plan)
    }

    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        SortDispatcher.combine(expert_out, plan)
    }

    fn collectives(&self) -> Option<&dyn Collectives> {
        Some(self.comm.as_ref())
    }

    fn run(&self, tokens: &Tensor, plan: &DispatchPlan, experts: &Experts) -> Result<Tensor> {
        let comm = self.comm.as_ref();
        let (ranks, local) = (comm.world_size(), self.local_experts());
        if plan.group_sizes.len() != self.num_experts || experts.num_experts() as usize != local {
            return Err(Error::Shape(format!(
                "expert-parallel layer expects {} global and {local} local experts, got a plan over {} and {} local",
                self.num_experts,
                plan.group_sizes.len(),
                experts.num_experts()
            )));
        }
        let rows = SortDispatcher.dispatch(tokens, plan)?; // grouped by global expert
                                                           // 1. Counts: chunk r of the plan's group sizes goes to rank r.
        let from = comm.all_to_all_i64(&plan.group_sizes)?; // [R × local]: rows from rank s for my expert j
        let send_rows: Vec<usize> = plan.group_sizes.chunks(local).map(|c| c.iter().sum::<i64>() as usize).collect();
        let recv_rows: Vec<usize> = from.chunks(local).map(|c| c.iter().sum::<i64>() as usize).collect();
        // 2. Rows out.
        let received = self.tape.exchange(comm, &rows, &send_rows, &recv_rows)?; // [(s, j) order]
                                                                                 // 3. Group by local expert: all of expert 0's rows (from every rank), then expert 1's...
        let mut starts = vec![0i64; ranks * local];
        let mut acc = 0;
        for (i, &c) in from.iter().enumerate() {
            starts[i] = acc;
            acc += c;
        }
        let mut order = Vec::with_capacity(acc as usize);
        for j in 0..local {
            for s in 0..ranks {
                let i = s * local + j;
                order.extend(starts[i]..starts[i] + from[i]);
            }
        }
        let device = tokens.device();
        let order = Tensor::from_slice(&order).f_to_device(device)?;
        let grouped = received.f_index_select(0, &order)?;
        let local_sizes: Vec<i64> = (0..local).map(|j| (0..ranks).map(|s| from[s * local + j]).sum()).collect();
        let out = experts.forward(&grouped, &local_sizes)?;
        // 4. Back to (source rank, expert) order and home.
        let inverse = order.f_argsort_stable(true, 0, false)?;
        let home = out.f_index_select(0, &inverse)?;
        let returned = self.tape.exchange(comm, &home, &recv_rows, &send_rows)?;
        SortDispatcher.combine(&returned, plan)
    }
}
