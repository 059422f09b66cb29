//! Token and assignment counts of every part (rank) of the batch, as one MoE layer pass sees it:
//! how many tokens every part holds and where they were routed. In one process the batch is one part; with expert parallelism
//! each rank holds a part, and the dispatcher gathers every rank's counts once per layer and
//! pass ([`crate::moe::TokenDispatcher::count_batch`]). From those counts every rank derives
//! the same capacity, its own capacity limits, the rows each rank sends to each expert, and the
//! layer's global statistics — without further communication.
//!
//! Capacity across ranks follows the positional priority of one process holding the whole
//! batch (GShard, arXiv 2006.16668, §2.2; ranks hold consecutive rows of it): all first choices
//! before any second choice, and within a choice, rank 0's tokens before rank 1's. So the kept
//! assignments are exactly those of the single process.

use crate::error::{Error, Result};
use crate::host;
use crate::moe::plan::count_values;
use tch::{Device, Kind, Tensor};

/// What one part (rank) of the batch reports for a layer pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartCounts {
    /// Token rows (real and masked).
    pub tokens: i64,
    /// Real (unmasked) tokens.
    pub real_tokens: i64,
    /// Whether the part's pass records autograd (gradient mode on).
    pub needs_grad: bool,
}

/// Token and assignment counts of every part of a batch for one MoE layer pass (module docs).
#[derive(Debug, Clone)]
pub struct BatchCounts {
    rank: usize,
    parts: Vec<PartCounts>,
    /// Assignments per part, choice and expert before capacity, `[R, k, E]` row-major; empty in
    /// one process (the plan counts on the device there).
    assignments: Vec<i64>,
    top_k: usize,
    num_experts: usize,
}

impl BatchCounts {
    /// A batch held whole by this process.
    pub fn whole(part: PartCounts) -> Self {
        Self { rank: 0, parts: vec![part], assignments: Vec::new(), top_k: 0, num_experts: 0 }
    }

    /// A batch split over ranks: `parts[r]` and `assignments[r·k·E + c·E + e]` (the real
    /// assignments of rank `r`'s choice `c` to expert `e`) as gathered from every rank.
    ///
    /// # Errors
    /// [`Error::Shape`] if the lengths do not fit `R`, `k` and `E`; [`Error::Input`] if the
    /// ranks disagree on whether the pass takes part in autograd (one rank under `no_grad`, for
    /// instance: its backward would miss exchanges the others wait for).
    pub fn split(
        rank: usize,
        parts: Vec<PartCounts>,
        assignments: Vec<i64>,
        top_k: usize,
        num_experts: usize,
    ) -> Result<Self> {
        let ranks = parts.len();
        if rank >= ranks || assignments.len() != ranks * top_k * num_experts {
            return Err(Error::Shape(format!(
                "batch counts of {ranks} ranks need {} assignment counts (k = {top_k}, E = {num_experts}) and a rank below {ranks}, got {} and rank {rank}",
                ranks * top_k * num_experts,
                assignments.len()
            )));
        }
        if parts.iter().any(|p| p.needs_grad != parts[0].needs_grad) {
            let flags: Vec<String> =
                parts.iter().enumerate().map(|(r, p)| format!("rank {r}: {}", p.needs_grad)).collect();
            return Err(Error::Input(format!(
                "the ranks disagree on whether the MoE layer's pass records gradients ({}); every rank must run the same pass, with or without gradients",
                flags.join(", ")
            )));
        }
        Ok(Self { rank, parts, assignments, top_k, num_experts })
    }

    /// Number of parts (ranks) `R`.
    pub fn num_parts(&self) -> usize {
        self.parts.len()
    }

    /// Token rows of the whole batch.
    pub fn num_tokens(&self) -> i64 {
        self.parts.iter().map(|p| p.tokens).sum()
    }

    /// Real tokens of the whole batch (capacity counts these).
    pub fn num_real_tokens(&self) -> i64 {
        self.parts.iter().map(|p| p.real_tokens).sum()
    }

    /// Real tokens of this rank's part.
    pub fn local_real_tokens(&self) -> i64 {
        self.parts[self.rank].real_tokens
    }

    /// Whether the pass takes part in autograd (every rank agrees).
    pub fn needs_grad(&self) -> bool {
        self.parts[self.rank].needs_grad
    }

    /// Whether every rank's assignment counts are known (a split batch).
    fn gathered(&self) -> bool {
        !self.assignments.is_empty()
    }

    fn count(&self, r: usize, c: usize, e: usize) -> i64 {
        self.assignments[(r * self.top_k + c) * self.num_experts + e]
    }

    /// How many of rank `r`'s choice-`c` assignments expert `e` keeps under `capacity`.
    fn limit(&self, r: usize, c: usize, e: usize, capacity: i64) -> i64 {
        let ranks = self.parts.len();
        let earlier_choices: i64 = (0..c).map(|c2| (0..ranks).map(|s| self.count(s, c2, e)).sum::<i64>()).sum();
        let earlier_ranks: i64 = (0..r).map(|s| self.count(s, c, e)).sum();
        (capacity - earlier_choices - earlier_ranks).max(0)
    }

    /// This rank's capacity limits `[k, E]` (i64, on `device`): how many assignments of each
    /// choice each expert keeps here. `None` for a batch held whole, where `capacity` applies
    /// per expert as it is.
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn capacity_limits(&self, capacity: i64, device: Device) -> Result<Option<Tensor>> {
        if self.parts.len() == 1 || !self.gathered() {
            return Ok(None);
        }
        let (k, e) = (self.top_k, self.num_experts);
        let limits: Vec<i64> = (0..k)
            .flat_map(|c| (0..e).map(move |x| (c, x)))
            .map(|(c, x)| self.limit(self.rank, c, x, capacity))
            .collect();
        Ok(Some(Tensor::from_slice(&limits).f_view([k as i64, e as i64])?.f_to_device(device)?))
    }

    /// Rows every rank keeps for every expert, `[R × E]` (rank-major), under `capacity`
    /// (`None` = dropless); `None` when the counts were not gathered.
    pub fn kept_rows(&self, capacity: Option<i64>) -> Option<Vec<i64>> {
        if !self.gathered() {
            return None;
        }
        let (ranks, k, e) = (self.parts.len(), self.top_k, self.num_experts);
        Some(
            (0..ranks)
                .flat_map(|r| (0..e).map(move |x| (r, x)))
                .map(|(r, x)| {
                    (0..k)
                        .map(|c| {
                            let n = self.count(r, c, x);
                            capacity.map_or(n, |cap| n.min(self.limit(r, c, x, cap)))
                        })
                        .sum()
                })
                .collect(),
        )
    }

    /// Assignments per expert before capacity over the whole batch, `[E]` i64 on `local`'s
    /// device (`local`, this part's counts, itself for a batch held whole).
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn routed_per_expert(&self, local: &Tensor) -> Result<Tensor> {
        if !self.gathered() {
            return Ok(local.shallow_clone());
        }
        let (ranks, k, e) = (self.parts.len(), self.top_k, self.num_experts);
        let routed: Vec<i64> = (0..e)
            .map(|x| (0..ranks).flat_map(|r| (0..k).map(move |c| (r, c))).map(|(r, c)| self.count(r, c, x)).sum())
            .collect();
        Ok(Tensor::from_slice(&routed).f_to_device(local.device())?)
    }

    /// Fraction of the whole batch's assignments dropped for lack of capacity, a scalar f64 on
    /// `local`'s device; `local` (the plan's own fraction) for a batch held whole.
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn dropped_fraction(&self, capacity: Option<i64>, local: &Tensor) -> Result<Tensor> {
        let Some(kept) = self.kept_rows(capacity) else { return Ok(local.shallow_clone()) };
        let total: i64 = self.assignments.iter().sum();
        let fraction = if total == 0 { 0.0 } else { 1.0 - kept.iter().sum::<i64>() as f64 / total as f64 };
        Ok(Tensor::from(fraction).f_to_device(local.device())?)
    }

    /// This part's share of a mean over the whole batch's real tokens, from `local_mean` (the
    /// mean over this part's real tokens): `local_mean · N_local / N` — the shares of all
    /// parts add up to the whole batch's mean. `local_mean` itself for a batch held whole; an
    /// exact zero for a part without real tokens.
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn share(&self, local_mean: Tensor) -> Result<Tensor> {
        if self.parts.len() == 1 {
            return Ok(local_mean);
        }
        let local = self.local_real_tokens();
        if local == 0 {
            return Ok(Tensor::f_zeros([], (local_mean.kind(), local_mean.device()))?);
        }
        Ok(local_mean.f_mul_scalar(local as f64 / self.num_real_tokens().max(1) as f64)?)
    }

    /// Per-(choice, expert) counts `[k, E]` of the real assignments in `expert_index` `[N, k]`
    /// (masked tokens left out), copied to the host row-major — what a rank contributes to
    /// [`BatchCounts::split`].
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn count_assignments(expert_index: &Tensor, valid: Option<&Tensor>, num_experts: i64) -> Result<Vec<i64>> {
        let (_, k) = expert_index.size2()?;
        let device = expert_index.device();
        let mut experts = expert_index.f_transpose(0, 1)?; // [k, N]
        if let Some(v) = valid {
            experts =
                experts.f_where_self(&v.f_unsqueeze(0)?, &Tensor::f_full([1], num_experts, (Kind::Int64, device))?)?;
        }
        let key = experts
            .f_add(&Tensor::f_arange(k, (Kind::Int64, device))?.f_mul_scalar(num_experts + 1)?.f_unsqueeze(1)?)?;
        let counts =
            count_values(&key, k * (num_experts + 1))?.f_view([k, num_experts + 1])?.f_narrow(1, 0, num_experts)?;
        host::i64s(&counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(real_tokens: i64) -> PartCounts {
        PartCounts { tokens: real_tokens, real_tokens, needs_grad: true }
    }

    #[test]
    fn limits_follow_the_priority_of_one_process_holding_the_batch() {
        // Two ranks, top-2, two experts. Counts [r][c][e]:
        // rank 0: first choices (3, 1), second choices (1, 3); rank 1: (2, 2), (2, 2).
        let counts = vec![3, 1, 1, 3, 2, 2, 2, 2];
        let b0 = BatchCounts::split(0, vec![part(4), part(4)], counts.clone(), 2, 2).unwrap();
        let b1 = BatchCounts::split(1, vec![part(4), part(4)], counts, 2, 2).unwrap();
        // Capacity 4: expert 0 keeps rank 0's 3 first choices, then 1 of rank 1's 2; no second choice.
        let l0 = Vec::<i64>::try_from(b0.capacity_limits(4, Device::Cpu).unwrap().unwrap().view([-1])).unwrap();
        let l1 = Vec::<i64>::try_from(b1.capacity_limits(4, Device::Cpu).unwrap().unwrap().view([-1])).unwrap();
        assert_eq!(l0, vec![4, 4, 0, 1]); // [c0: e0, e1, c1: e0, e1]
        assert_eq!(l1, vec![1, 3, 0, 0]);
        // Kept: rank 0 (3, 1 + 1), rank 1 (1, 2); 8 of 16 assignments.
        assert_eq!(b0.kept_rows(Some(4)).unwrap(), vec![3, 2, 1, 2]);
        assert_eq!(b1.kept_rows(None).unwrap(), vec![4, 4, 4, 4]);
        assert!((b0.dropped_fraction(Some(4), &Tensor::from(f64::NAN)).unwrap().double_value(&[]) - 0.5).abs() < 1e-12);
        assert_eq!(b0.num_real_tokens(), 8);
    }

    #[test]
    fn shares_add_up_to_the_whole_batch_mean() {
        let counts = vec![0; 4];
        let parts = vec![part(3), part(1), part(0)];
        let means = [2.0f64, 6.0, f64::NAN];
        let total: f64 = (0..3)
            .map(|r| {
                let b = BatchCounts::split(r, parts.clone(), vec![0; 6], 1, 2).unwrap();
                b.share(Tensor::from(means[r])).unwrap().double_value(&[])
            })
            .sum();
        assert_eq!(total, (3.0 * 2.0 + 6.0) / 4.0, "the empty rank contributes an exact zero");
        let whole = BatchCounts::whole(part(5));
        assert_eq!(whole.share(Tensor::from(1.5)).unwrap().double_value(&[]), 1.5);
        assert!(whole.kept_rows(None).is_none());
        assert!(BatchCounts::split(0, vec![part(1)], counts, 1, 2).is_err(), "4 counts for 1 rank × 1 × 2");
    }

    #[test]
    fn ranks_that_disagree_on_gradients_are_an_error() {
        let parts = vec![part(2), PartCounts { needs_grad: false, ..part(2) }];
        let err = BatchCounts::split(1, parts, vec![0; 4], 1, 2).unwrap_err().to_string();
        assert!(err.contains("rank 0: true, rank 1: false"), "{err}");
    }

    #[test]
    fn assignment_counts_leave_masked_tokens_out() {
        let index = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 0]).view([3, 2]);
        let valid = Tensor::from_slice(&[true, false, true]);
        let counts = BatchCounts::count_assignments(&index, Some(&valid), 3).unwrap();
        assert_eq!(counts, vec![1, 0, 1, 1, 1, 0]); // c0: tokens 0 → e0, 2 → e2; c1: e1, e0
        assert_eq!(BatchCounts::count_assignments(&index, None, 3).unwrap(), vec![1, 1, 1, 1, 1, 1]);
    }
}
