//! Dispatch (token rows → expert order) and combine (expert outputs → token order), behind the
//! [`TokenDispatcher`] seam (after torchtitan's `TokenDispatcher`).
//!
//! [`SortDispatcher`] sorts the `k·N` token→expert assignments by expert with a *stable* argsort,
//! so within an expert assignments keep their order. Assignments are numbered choice-major,
//! `a = c·N + t` for choice `c` of token `t`: every token's first choice precedes any second
//! choice, which is GShard's priority rule (arXiv 2006.16668, §2.2) when capacity is limited.
//! Within the same choice, earlier tokens win (Switch, arXiv 2101.03961, §2.2).
//!
//! Capacity: `C = max(min_capacity, ceil(cf · k · N / E))`. Assignments past an expert's capacity
//! are dropped; a token whose every assignment was dropped gets a zero MoE output.
//!
//! Combine is deterministic: kept expert outputs are scaled by their gates in f32 and written to
//! *distinct* rows of a `[k, N, D]` buffer (`index_copy` with unique indices), which is summed
//! over `k`. No `index_add` / `scatter_add` with duplicate indices (non-deterministic on CUDA).
//! Likewise the gather reads from a `[k·N, D]` replica of the input, so its backward also writes
//! each gradient row exactly once.

use crate::error::{ensure_config, Result};
use crate::moe::router::Routing;
use crate::shape::{accumulate_kind, expect_shape};
use tch::{Kind, Tensor};

/// Expert capacity `C = max(min_capacity, ceil(capacity_factor · top_k · num_tokens / num_experts))`.
///
/// # Errors
/// [`Error::Config`] if `capacity_factor` is not positive and finite or `num_experts` is 0.
pub fn expert_capacity(
    num_tokens: i64,
    num_experts: i64,
    top_k: i64,
    capacity_factor: f64,
    min_capacity: i64,
) -> Result<i64> {
    ensure_config(capacity_factor > 0.0 && capacity_factor.is_finite(), || {
        format!("capacity_factor ({capacity_factor}) must be positive and finite")
    })?;
    ensure_config(num_experts > 0, || format!("num_experts ({num_experts}) must be positive"))?;
    let c = (capacity_factor * (top_k * num_tokens) as f64 / num_experts as f64).ceil() as i64;
    Ok(c.max(min_capacity))
}

/// Where each kept token→expert assignment went: the metadata that lets [`TokenDispatcher::combine`]
/// undo [`TokenDispatcher::dispatch`].
#[derive(Debug)]
pub struct DispatchPlan {
    /// Number of tokens `N`.
    pub num_tokens: i64,
    /// Experts per token `k`.
    pub top_k: i64,
    /// Kept assignments in expert order, `[M]` i64, each `a = c·N + t`.
    pub assignment: Tensor,
    /// Gate weight of each kept assignment, `[M]`, f32.
    pub gate: Tensor,
    /// Rows per expert after capacity, length `E`, summing to `M` (host copy).
    pub group_sizes: Vec<i64>,
    /// Assignments per expert before capacity, `[E]` i64 (sums to `k·N`).
    pub routed_per_expert: Tensor,
    /// Capacity applied, `None` when dropless.
    pub capacity: Option<i64>,
}

impl DispatchPlan {
    /// Number of kept assignments `M`.
    pub fn num_kept(&self) -> i64 {
        self.group_sizes.iter().sum()
    }

    /// Fraction of the `k·N` assignments dropped for lack of capacity, in `[0, 1]`.
    pub fn dropped_fraction(&self) -> f64 {
        let total = self.top_k * self.num_tokens;
        if total == 0 {
            0.0
        } else {
            1.0 - self.num_kept() as f64 / total as f64
        }
    }
}

/// Moves token rows to their experts and back. Implementations differ in how (a local sort,
/// or — later — an exchange between ranks); the MoE layer does not care.
pub trait TokenDispatcher: std::fmt::Debug + Send {
    /// Orders the token rows by expert.
    ///
    /// # Shapes
    /// `x`: `[N, D]`; `routing`: `[N, E]`/`[N, k]` → rows `[M, D]` grouped by expert, and the plan.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` and `routing` disagree on `N`.
    fn dispatch(&self, x: &Tensor, routing: &Routing, capacity: Option<i64>) -> Result<(Tensor, DispatchPlan)>;

    /// Scales expert outputs by their gates (in f32) and sums each token's `k` contributions.
    ///
    /// # Shapes
    /// `expert_out`: `[M, D]` in plan order → `[N, D]` in `expert_out`'s dtype; rows of fully
    /// dropped tokens are zero.
    ///
    /// # Errors
    /// [`Error::Shape`] if `expert_out` does not have `M` rows.
    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor>;
}

/// Local dispatch by stable sort (see the module docs). The default dispatcher.
#[derive(Debug, Default, Clone, Copy)]
pub struct SortDispatcher;

impl TokenDispatcher for SortDispatcher {
    fn dispatch(&self, x: &Tensor, routing: &Routing, capacity: Option<i64>) -> Result<(Tensor, DispatchPlan)> {
        let (n, k) = routing.expert_index.size2()?;
        let e = routing.probs.size()[1];
        expect_shape(x, "dispatch input", "[N, D]", &[Some(n), None])?;
        let d = x.size()[1];
        // Choice-major assignment list: a = c·N + t.
        let flat_expert = routing.expert_index.f_transpose(0, 1)?.f_reshape([-1])?;
        let flat_gate = routing.gate.f_transpose(0, 1)?.f_reshape([-1])?;
        let order = flat_expert.f_argsort_stable(true, 0, false)?;
        let routed_per_expert = flat_expert.f_bincount::<Tensor>(None, e)?;
        let (assignment, kept_per_expert) = match capacity {
            None => (order, routed_per_expert.shallow_clone()),
            Some(c) => {
                let sorted_expert = flat_expert.f_index_select(0, &order)?;
                let first_of_expert = routed_per_expert.f_cumsum(0, Kind::Int64)?.f_sub(&routed_per_expert)?;
                let rank = Tensor::f_arange(k * n, (Kind::Int64, x.device()))?
                    .f_sub(&first_of_expert.f_index_select(0, &sorted_expert)?)?;
                let keep = rank.f_lt(c)?;
                (order.f_masked_select(&keep)?, routed_per_expert.f_clamp_max(c)?)
            }
        };
        let group_sizes = Vec::<i64>::try_from(&kept_per_expert.f_to_device(tch::Device::Cpu)?)?;
        let gate = flat_gate.f_index_select(0, &assignment)?;
        let replicated = if k == 1 {
            x.shallow_clone()
        } else {
            x.f_unsqueeze(0)?.f_expand([k, n, d], false)?.f_reshape([k * n, d])?
        };
        let rows = replicated.f_index_select(0, &assignment)?;
        let plan = DispatchPlan { num_tokens: n, top_k: k, assignment, gate, group_sizes, routed_per_expert, capacity };
        Ok((rows, plan))
    }

    fn combine(&self, expert_out: &Tensor, plan: &DispatchPlan) -> Result<Tensor> {
        let m = plan.num_kept();
        expect_shape(expert_out, "expert output", "[M, D]", &[Some(m), None])?;
        let d = expert_out.size()[1];
        let acc = accumulate_kind(expert_out);
        let weighted = expert_out.f_to_kind(acc)?.f_mul(&plan.gate.f_to_kind(acc)?.f_unsqueeze(-1)?)?;
        let (n, k) = (plan.num_tokens, plan.top_k);
        let buffer = Tensor::f_zeros([k * n, d], (acc, expert_out.device()))?;
        let per_choice = buffer.f_index_copy(0, &plan.assignment, &weighted)?;
        let combined = per_choice.f_view([k, n, d])?.f_sum_dim_intlist(0, false, acc)?;
        Ok(combined.f_to_kind(expert_out.kind())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn routing(expert: &[i64], k: i64, e: i64) -> Routing {
        let n = expert.len() as i64 / k;
        let expert_index = Tensor::from_slice(expert).view([n, k]);
        let probs = Tensor::ones([n, e], (Kind::Float, Device::Cpu)) / e as f64;
        let gate = Tensor::ones([n, k], (Kind::Float, Device::Cpu)) * 0.5;
        Routing { logits: probs.log(), probs, expert_index, gate }
    }

    #[test]
    fn capacity_formula() {
        assert_eq!(expert_capacity(100, 8, 1, 1.25, 4).unwrap(), 16); // ceil(15.625)
        assert_eq!(expert_capacity(100, 8, 2, 1.0, 4).unwrap(), 25);
        assert_eq!(expert_capacity(8, 8, 1, 1.0, 4).unwrap(), 4); // min_capacity wins
        assert!(expert_capacity(8, 8, 1, 0.0, 4).unwrap_err().to_string().contains("capacity_factor (0)"));
    }

    #[test]
    fn earlier_tokens_win_capacity_and_dropped_rows_are_zero() {
        // Tokens 0..4 all want expert 1; capacity 2 keeps tokens 0 and 1.
        let r = routing(&[1, 1, 1, 1, 0], 1, 2);
        let x = Tensor::arange(5, (Kind::Float, Device::Cpu)).unsqueeze(1).expand([5, 3], false).contiguous() + 1.0;
        let (rows, plan) = SortDispatcher.dispatch(&x, &r, Some(2)).unwrap();
        assert_eq!(plan.group_sizes, vec![1, 2]);
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![4, 0, 1]);
        assert!((plan.dropped_fraction() - 0.4).abs() < 1e-12);
        let out = SortDispatcher.combine(&rows, &plan).unwrap();
        let expected = Tensor::from_slice(&[0.5f32, 1.0, 0.0, 0.0, 2.5]).unsqueeze(1).expand([5, 3], false);
        assert!(out.allclose(&expected, 0.0, 0.0, false), "{out}");
    }

    #[test]
    fn first_choices_have_priority_over_second_choices() {
        // k=2: token 0 -> (e0, e1), token 1 -> (e1, e0). Capacity 1: each expert keeps its
        // first-choice token, both second choices are dropped.
        let r = routing(&[0, 1, 1, 0], 2, 2);
        let x = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let (_, plan) = SortDispatcher.dispatch(&x, &r, Some(1)).unwrap();
        // assignments: a = c*N + t -> token0/choice0 = 0, token1/choice0 = 1.
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![0, 1]);
        assert!((plan.dropped_fraction() - 0.5).abs() < 1e-12);
    }
}
