//! Dispatch plans: which token goes to which expert row, decided from the routing, the capacity
//! and the token mask — before any row moves.
//!
//! A plan lists the *kept* assignments grouped by expert (expert 0's rows first). Each assignment
//! has a slot `s` in its token's output buffer and is identified by `a = s·N + t` for token `t`:
//! for token choice the slot is the choice index `c` (`0..k`); for expert choice it is the rank
//! of the assignment among its token's assignments. The combine writes each kept assignment to
//! its own row of a `[slots·N, D]` buffer and sums over slots — no duplicate-index scatter.
//!
//! Capacity: `C = max(min_capacity, ceil(cf · k · N_real / E))`, counting real (unmasked) tokens
//! only; masked tokens take no capacity and get no expert.

use crate::error::{ensure_config, Error, Result};
use crate::host;
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

/// Where each kept token→expert assignment goes.
#[derive(Debug)]
pub struct DispatchPlan {
    /// Number of token rows `N` (real and masked).
    pub num_tokens: i64,
    /// Output slots per token (`k` for token choice).
    pub num_slots: i64,
    /// Kept assignments in expert order, `[M]` i64, each `a = slot·N + token`.
    pub assignment: Tensor,
    /// Gate weight of each kept assignment, `[M]`, f32.
    pub gate: Tensor,
    /// Rows per expert after capacity (host copy), length `E`, summing to `M`.
    pub group_sizes: Vec<i64>,
    /// Assignments per expert before capacity, real tokens only, `[E]` i64.
    pub routed_per_expert: Tensor,
    /// Capacity per expert (`None` = dropless).
    pub capacity: Option<i64>,
    /// Token choice: fraction of the `k · N_real` assignments dropped for lack of capacity.
    /// Expert choice: fraction of real tokens that no expert picked.
    pub dropped_fraction: f64,
}

impl DispatchPlan {
    /// Number of kept assignments `M`.
    pub fn num_kept(&self) -> i64 {
        self.group_sizes.iter().sum()
    }

    /// Token row of each kept assignment, `[M]` i64.
    ///
    /// # Errors
    /// [`Error::Torch`] on libtorch failure.
    pub fn tokens(&self) -> Result<Tensor> {
        Ok(self.assignment.f_remainder(self.num_tokens)?)
    }
}

/// Number of `true` entries of an optional `[N]` mask (all `N` tokens without a mask; one host
/// read with a mask).
pub(crate) fn count_real(valid: Option<&Tensor>, n: i64) -> Result<i64> {
    match valid {
        Some(v) => host::i64_scalar(&v.f_sum(Kind::Int64)?),
        None => Ok(n),
    }
}

/// Occurrences of each value `0..bins` in the integer tensor `values` (any shape), `[bins]` i64.
/// Unlike `bincount`, which reads the minimum and maximum back to the host on CUDA, this stays on
/// the device (integer `scatter_add` is exact and deterministic).
///
/// # Errors
/// [`Error::Shape`] if a value lies outside `0..bins`; [`Error::Torch`] on libtorch failure.
pub(crate) fn count_values(values: &Tensor, bins: i64) -> Result<Tensor> {
    let flat = values.f_reshape([-1])?;
    let ones = Tensor::f_ones_like(&flat)?;
    Ok(Tensor::f_zeros([bins], (Kind::Int64, values.device()))?.f_scatter_add(0, &flat, &ones)?)
}

/// Plans token-choice dispatch.
///
/// Assignments are visited in priority order — choice-major (all first choices, then all second
/// choices), tokens by position or by `token_priority` (descending) — and a stable sort by
/// expert keeps that order inside each expert, so capacity keeps the first `C` of them.
///
/// # Shapes
/// `expert_index`, `gate`: `[N, k]`; `valid`: `[N]` bool; `token_priority`: `[N]` (higher first).
///
/// # Errors
/// [`Error::Shape`] on inconsistent shapes or an expert index outside `0..E`.
pub fn plan_token_choice(
    expert_index: &Tensor,
    gate: &Tensor,
    num_experts: i64,
    valid: Option<&Tensor>,
    capacity: Option<i64>,
    token_priority: Option<&Tensor>,
) -> Result<DispatchPlan> {
    plan_token_choice_limited(expert_index, gate, num_experts, valid, capacity, None, token_priority)
}

/// [`plan_token_choice`] where, instead of one capacity per expert, `limits` (`[k, E]` i64) may
/// cap how many assignments of choice `c` expert `e` keeps (a batch split over ranks: the slots
/// left for this rank after the assignments that precede it on other ranks, see
/// [`crate::moe::BatchCounts::capacity_limits`]). With limits, `capacity` is only reported.
///
/// # Errors
/// As [`plan_token_choice`]; [`Error::Shape`] if `limits` is not `[k, E]`.
pub(crate) fn plan_token_choice_limited(
    expert_index: &Tensor,
    gate: &Tensor,
    num_experts: i64,
    valid: Option<&Tensor>,
    capacity: Option<i64>,
    limits: Option<&Tensor>,
    token_priority: Option<&Tensor>,
) -> Result<DispatchPlan> {
    let (n, k) = expert_index.size2()?;
    if gate.size() != [n, k] {
        return Err(Error::Shape(format!("gate must match expert_index {:?}, got {:?}", [n, k], gate.size())));
    }
    let device = expert_index.device();
    let int = (Kind::Int64, device);
    // Token visiting order.
    let order = match token_priority {
        Some(p) => p.f_argsort_stable(true, 0, true)?,
        None => Tensor::f_arange(n, int)?,
    };
    // Masked tokens get the sentinel expert E: sorted last, never kept, never counted.
    let mut experts = expert_index.f_index_select(0, &order)?;
    if let Some(v) = valid {
        let v = v.f_index_select(0, &order)?.f_unsqueeze(1)?;
        experts = experts.f_where_self(&v, &Tensor::f_full([1], num_experts, int)?)?;
    }
    let flat_expert = experts.f_transpose(0, 1)?.f_reshape([-1])?; // [k·N], choice-major
    let flat_assignment =
        Tensor::f_arange(k, int)?.f_mul_scalar(n)?.f_unsqueeze(1)?.f_add(&order.f_unsqueeze(0)?)?.f_reshape([-1])?; // a = c·N + t, in visiting order
    let sort = flat_expert.f_argsort_stable(true, 0, false)?;
    let sorted_expert = flat_expert.f_index_select(0, &sort)?;
    let counts = count_values(&flat_expert, num_experts + 1)
        .map_err(|_| Error::Shape(format!("expert indices must lie in 0..{num_experts}")))?;
    let routed_per_expert = counts.f_narrow(0, 0, num_experts)?;
    let mut keep = sorted_expert.f_lt(num_experts)?;
    let first = counts.f_cumsum(0, Kind::Int64)?.f_sub(&counts)?;
    let rank = Tensor::f_arange(k * n, int)?.f_sub(&first.f_index_select(0, &sorted_expert)?)?;
    match (limits, capacity) {
        (Some(limits), _) => {
            if limits.size() != [k, num_experts] {
                return Err(Error::Shape(format!("limits must be [{k}, {num_experts}], got {:?}", limits.size())));
            }
            // Rank within (choice, expert): subtract the expert's assignments of earlier choices.
            let sorted_choice = sort.f_div_scalar_mode(n, "floor")?;
            let expert_safe = sorted_expert.f_clamp_max(num_experts - 1)?;
            let per_choice = flat_expert
                .f_view([k, n])?
                .f_one_hot(num_experts + 1)?
                .f_sum_dim_intlist(1, false, Kind::Int64)?
                .f_narrow(1, 0, num_experts)?; // [k, E]
            let earlier = per_choice.f_cumsum(0, Kind::Int64)?.f_sub(&per_choice)?.f_flatten(0, -1)?;
            let key = sorted_choice.f_mul_scalar(num_experts)?.f_add(&expert_safe)?;
            let rank_in_choice = rank.f_sub(&earlier.f_index_select(0, &key)?)?;
            let limit = limits.f_to_device(device)?.f_flatten(0, -1)?.f_index_select(0, &key)?;
            keep = keep.f_logical_and(&rank_in_choice.f_lt_tensor(&limit)?)?;
        }
        (None, Some(c)) => keep = keep.f_logical_and(&rank.f_lt(c)?)?,
        (None, None) => {}
    }
    let kept_per_expert = match (limits, capacity) {
        (Some(_), _) => count_values(&sorted_expert.f_where_scalarother(&keep, num_experts)?, num_experts + 1)?
            .f_narrow(0, 0, num_experts)?,
        (None, Some(c)) => routed_per_expert.f_clamp_max(c)?,
        (None, None) => routed_per_expert.shallow_clone(),
    };
    // The one host read of the plan: rows per expert (the expert kernels and every shape below
    // need them).
    let group_sizes = host::i64s(&kept_per_expert)?;
    let kept_total: i64 = group_sizes.iter().sum();
    // Kept assignments first, in expert order (a stable sort, not `masked_select`, which would
    // read the count back to the host once more).
    let kept =
        sort.f_index_select(0, &keep.f_logical_not()?.f_argsort_stable(true, 0, false)?.f_narrow(0, 0, kept_total)?)?;
    let assignment = flat_assignment.f_index_select(0, &kept)?;
    let gate = gate.f_transpose(0, 1)?.f_reshape([-1])?.f_index_select(0, &assignment)?;
    let total = k * count_real(valid, n)?;
    let dropped_fraction = if total == 0 { 0.0 } else { 1.0 - kept_total as f64 / total as f64 };
    Ok(DispatchPlan {
        num_tokens: n,
        num_slots: k,
        assignment,
        gate,
        group_sizes,
        routed_per_expert,
        capacity,
        dropped_fraction,
    })
}

/// Plans expert-choice dispatch (Zhou et al. 2022, arXiv 2202.09368, §3.1): expert `e` takes the
/// `C` real tokens with the highest probability `probs[t, e]`, gated by that probability.
///
/// # Shapes
/// `probs`: `[N, E]`; `valid`: `[N]` bool.
///
/// # Errors
/// [`Error::Shape`] if `capacity < 1`.
pub fn plan_expert_choice(probs: &Tensor, valid: Option<&Tensor>, capacity: i64) -> Result<DispatchPlan> {
    let (n, _) = probs.size2()?;
    if capacity < 1 {
        return Err(Error::Shape(format!("expert-choice capacity ({capacity}) must be positive")));
    }
    let device = probs.device();
    let int = (Kind::Int64, device);
    let c = capacity.min(n);
    // Masked tokens score -1, below every probability, and are discarded after top-C.
    let scores = match valid {
        Some(v) => probs.f_where_self(&v.f_unsqueeze(1)?, &Tensor::f_full([1], -1.0, (probs.kind(), device))?)?,
        None => probs.shallow_clone(),
    };
    let (top_scores, top_tokens) = scores.f_transpose(0, 1)?.f_topk(c, -1, true, true)?; // [E, C]
    let keep = top_scores.f_ge(0.0)?;
    let group_sizes = host::i64s(&keep.f_sum_dim_intlist(1, false, Kind::Int64)?)?;
    let kept_total: i64 = group_sizes.iter().sum();
    let kept = keep.f_reshape([-1])?.f_logical_not()?.f_argsort_stable(true, 0, false)?.f_narrow(0, 0, kept_total)?;
    let tokens = top_tokens.f_reshape([-1])?.f_index_select(0, &kept)?; // expert order
    let gate = top_scores.f_reshape([-1])?.f_index_select(0, &kept)?;
    // Slot of each assignment = its rank among the same token's assignments.
    let m = tokens.size()[0];
    let by_token = tokens.f_argsort_stable(true, 0, false)?;
    let sorted_tokens = tokens.f_index_select(0, &by_token)?;
    let per_token = count_values(&tokens, n)?;
    let first = per_token.f_cumsum(0, Kind::Int64)?.f_sub(&per_token)?;
    let rank_sorted = Tensor::f_arange(m, int)?.f_sub(&first.f_index_select(0, &sorted_tokens)?)?;
    let slot = Tensor::f_zeros([m], int)?.f_index_copy(0, &by_token, &rank_sorted)?;
    // One read for the slot count and the served tokens together (none without tokens).
    let (max_per_token, served) = if n == 0 {
        (0, 0)
    } else {
        let read = host::i64s(&Tensor::f_stack(&[per_token.f_max()?, per_token.f_gt(0)?.f_sum(Kind::Int64)?], 0)?)?;
        (read[0], read[1])
    };
    let num_slots = if m == 0 { 1 } else { max_per_token.max(1) };
    let assignment = slot.f_mul_scalar(n)?.f_add(&tokens)?;
    let real = count_real(valid, n)?;
    let dropped_fraction = if real == 0 { 0.0 } else { 1.0 - served as f64 / real as f64 };
    let routed_per_expert = Tensor::from_slice(&group_sizes).f_to_device(device)?;
    Ok(DispatchPlan {
        num_tokens: n,
        num_slots,
        assignment,
        gate,
        group_sizes,
        routed_per_expert,
        capacity: Some(c),
        dropped_fraction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[i64], shape: [i64; 2]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    fn half(shape: [i64; 2]) -> Tensor {
        Tensor::full(shape, 0.5, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn capacity_formula_rounds_up() {
        assert_eq!(expert_capacity(100, 8, 1, 1.25, 4).unwrap(), 16); // ceil(15.625)
        assert_eq!(expert_capacity(10, 4, 1, 1.0, 1).unwrap(), 3); // ceil(2.5): no token lost to rounding
        assert_eq!(expert_capacity(100, 8, 2, 1.0, 4).unwrap(), 25);
        assert_eq!(expert_capacity(8, 8, 1, 1.0, 4).unwrap(), 4); // min_capacity wins
        assert!(expert_capacity(8, 8, 1, 0.0, 4).unwrap_err().to_string().contains("capacity_factor (0)"));
    }

    #[test]
    fn earlier_tokens_win_capacity() {
        let plan = plan_token_choice(&t(&[1, 1, 1, 1, 0], [5, 1]), &half([5, 1]), 2, None, Some(2), None).unwrap();
        assert_eq!(plan.group_sizes, vec![1, 2]);
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![4, 0, 1]);
        assert!((plan.dropped_fraction - 0.4).abs() < 1e-12);
        assert_eq!(Vec::<i64>::try_from(&plan.routed_per_expert).unwrap(), vec![1, 4]);
    }

    #[test]
    fn first_choices_have_priority_over_second_choices() {
        // token 0 -> (e0, e1), token 1 -> (e1, e0); capacity 1 keeps both first choices.
        let plan = plan_token_choice(&t(&[0, 1, 1, 0], [2, 2]), &half([2, 2]), 2, None, Some(1), None).unwrap();
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![0, 1]);
        assert!((plan.dropped_fraction - 0.5).abs() < 1e-12);
    }

    #[test]
    fn confident_tokens_win_with_batch_prioritized_routing() {
        // All four tokens want expert 0 (capacity 2); tokens 3 and 1 are the most confident.
        let priority = Tensor::from_slice(&[0.3f32, 0.8, 0.5, 0.9]);
        let plan =
            plan_token_choice(&t(&[0, 0, 0, 0], [4, 1]), &half([4, 1]), 2, None, Some(2), Some(&priority)).unwrap();
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![3, 1]);
    }

    #[test]
    fn masked_tokens_take_no_capacity_and_are_not_counted() {
        let valid = Tensor::from_slice(&[false, true, false, true, true]);
        let plan =
            plan_token_choice(&t(&[0, 0, 0, 0, 1], [5, 1]), &half([5, 1]), 2, Some(&valid), Some(2), None).unwrap();
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![1, 3, 4]);
        assert_eq!(Vec::<i64>::try_from(&plan.routed_per_expert).unwrap(), vec![2, 1]);
        assert_eq!(plan.dropped_fraction, 0.0);
    }

    #[test]
    fn expert_choice_picks_top_tokens_per_expert_and_assigns_slots() {
        // 3 tokens, 2 experts, capacity 2.
        let probs = Tensor::from_slice(&[0.9f32, 0.1, 0.6, 0.4, 0.2, 0.8]).view([3, 2]);
        let plan = plan_expert_choice(&probs, None, 2).unwrap();
        assert_eq!(plan.group_sizes, vec![2, 2]);
        // expert 0 takes tokens 0, 1; expert 1 takes tokens 2, 1 -> token 1 has two slots.
        assert_eq!(plan.num_slots, 2);
        let tokens = Vec::<i64>::try_from(plan.tokens().unwrap()).unwrap();
        assert_eq!(tokens, vec![0, 1, 2, 1]);
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![0, 1, 2, 4]);
        assert_eq!(Vec::<f32>::try_from(&plan.gate).unwrap(), vec![0.9, 0.6, 0.8, 0.4]);
        assert_eq!(plan.dropped_fraction, 0.0);
        let masked = plan_expert_choice(&probs, Some(&Tensor::from_slice(&[true, false, true])), 2).unwrap();
        assert_eq!(Vec::<i64>::try_from(masked.tokens().unwrap()).unwrap(), vec![0, 2, 2, 0]);
    }
}
