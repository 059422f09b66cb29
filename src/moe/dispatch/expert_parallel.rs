//! The expert-parallel token dispatcher: rows travel over a [`ProcessGroup`] to the rank that
//! owns their expert and back (GShard, arXiv 2006.16668, §2.3).

use super::{SortDispatcher, TokenDispatcher};
use crate::error::{Error, Result};
use crate::moe::counts::{BatchCounts, PartCounts};
use crate::moe::experts::Experts;
use crate::moe::plan::{count_real, DispatchPlan, GroupSizes};
use crate::moe::routing::Selection;
use crate::parallel::ProcessGroup;
use tch::Tensor;

/// Dispatches token rows to the ranks owning their experts: rank `r` owns experts
/// `r·E/R .. (r+1)·E/R`. Per MoE layer and pass: one all-gather of every rank's token and
/// assignment counts ([`TokenDispatcher::count_batch`]), one variable all-to-all of rows out and
/// one of results back, in the activations' dtype (see the module docs).
#[derive(Debug, Clone)]
pub struct ExpertParallelDispatcher {
    group: ProcessGroup,
    num_experts: usize,
}

impl ExpertParallelDispatcher {
    /// A dispatcher over `group` (its transport, and its tape for cuts and exchanges) for a layer
    /// of `num_experts` experts.
    ///
    /// # Errors
    /// [`Error::Config`] if `num_experts` is not a multiple of the number of ranks.
    pub fn new(group: ProcessGroup, num_experts: usize) -> Result<Self> {
        group.expert_slice(num_experts)?;
        Ok(Self { group, num_experts })
    }

    /// Experts owned by each rank.
    pub fn local_experts(&self) -> usize {
        self.num_experts / self.group.world_size()
    }
}

impl TokenDispatcher for ExpertParallelDispatcher {
    fn dispatch(&self, x: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        SortDispatcher.dispatch(x, plan)
    }

    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        SortDispatcher.combine(expert_out, plan)
    }

    fn layer_input(&self, tokens: &Tensor) -> Result<Tensor> {
        self.group.tape().cut(tokens)
    }

    fn count_batch(&self, selection: &Selection) -> Result<BatchCounts> {
        let index = selection.expert_index().ok_or_else(|| {
            Error::Config(
                "expert parallelism supports token-choice routing only (expert choice needs the whole batch)".into(),
            )
        })?;
        let (e, n, valid) = (selection.num_experts, selection.num_tokens, selection.valid.as_ref());
        let (_, k) = index.size2()?;
        // One all-gather: [rows, real rows, needs grad, assignments per (choice, expert)].
        let mut mine = vec![n, count_real(valid, n)?, selection.needs_grad as i64];
        mine.extend(BatchCounts::count_assignments(index, valid, e)?);
        let width = mine.len();
        let all = self.group.comm().all_gather_i64(&mine)?;
        if all.len() != width * self.group.world_size() {
            return Err(Error::Input(format!(
                "the ranks sent routing counts of different lengths ({} values for {} ranks of {width})",
                all.len(),
                self.group.world_size()
            )));
        }
        let parts =
            all.chunks(width).map(|c| PartCounts { tokens: c[0], real_tokens: c[1], needs_grad: c[2] != 0 }).collect();
        let assignments = all.chunks(width).flat_map(|c| c[3..].iter().copied()).collect();
        BatchCounts::split(self.group.rank(), parts, assignments, k as usize, e as usize)
    }

    fn run(&self, tokens: &Tensor, plan: &DispatchPlan, batch: &BatchCounts, experts: &Experts) -> Result<Tensor> {
        let comm = self.group.comm();
        let (ranks, local, me) = (comm.world_size(), self.local_experts(), comm.rank());
        if plan.group_sizes.len() != self.num_experts || experts.num_experts() as usize != local {
            return Err(Error::Shape(format!(
                "expert-parallel layer expects {} global and {local} local experts, got a plan over {} and {} local",
                self.num_experts,
                plan.group_sizes.len(),
                experts.num_experts()
            )));
        }
        let e = self.num_experts;
        // The exchange sizes its messages on the host.
        let group_sizes = plan.group_sizes.host()?;
        // Rows every rank keeps per expert, known to all from the gathered counts.
        let kept = batch
            .kept_rows(plan.capacity)
            .filter(|k| k.len() == ranks * e)
            .ok_or_else(|| Error::Input("the expert-parallel dispatcher needs every rank's routing counts".into()))?;
        if kept[me * e..(me + 1) * e] != *group_sizes {
            return Err(Error::Input(format!(
                "rank {me}'s plan keeps {group_sizes:?} rows per expert, the gathered counts say {:?}",
                &kept[me * e..(me + 1) * e]
            )));
        }
        // from[s·local + j]: rows rank s sends to my expert j.
        let from: Vec<i64> =
            (0..ranks).flat_map(|s| kept[s * e + me * local..s * e + (me + 1) * local].to_vec()).collect();
        let send_rows: Vec<usize> = group_sizes.chunks(local).map(|c| c.iter().sum::<i64>() as usize).collect();
        let recv_rows: Vec<usize> = from.chunks(local).map(|c| c.iter().sum::<i64>() as usize).collect();
        let needs_grad = batch.needs_grad();
        let rows = SortDispatcher.dispatch(tokens, plan)?; // grouped by global expert
        let received = self.group.tape().exchange(comm, &rows, &send_rows, &recv_rows, needs_grad)?; // [(s, j) order]
                                                                                                     // Group by local expert: all of expert 0's rows (from every rank), then expert 1's...
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
        let local_sizes: Vec<i64> = (0..local).map(|j| (0..ranks).map(|s| from[s * local + j]).sum()).collect();
        let identity = order.iter().enumerate().all(|(i, &o)| i as i64 == o);
        let device = tokens.device();
        let order = Tensor::from_slice(&order).f_to_device(device)?;
        let grouped = if identity { received.shallow_clone() } else { received.f_index_select(0, &order)? };
        let out = experts.forward(&grouped, &GroupSizes::from_host(&local_sizes, device)?)?;
        // Back to (source rank, expert) order and home.
        let home = if identity { out } else { out.f_index_select(0, &order.f_argsort_stable(true, 0, false)?)? };
        let returned = self.group.tape().exchange(comm, &home, &recv_rows, &send_rows, needs_grad)?;
        SortDispatcher.combine(&returned, plan)
    }
}
