//! Token choice: each token picks its top-k experts (Switch k = 1, arXiv 2101.03961; GShard and
//! Mixtral k = 2, arXiv 2006.16668 and 2401.04088), capacity filled by position or confidence
//! (batch prioritized routing, V-MoE, arXiv 2106.05974, §4.1).

use super::{CapacityPriority, Choice, RouterScores, RoutingOptions, RoutingPolicy, Selection};
use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::moe::counts::BatchCounts;
use crate::moe::plan::{count_real, count_values, expert_capacity, DispatchPlan, GroupSizes};
use crate::parallel::grad_mode_enabled;
use tch::{Kind, Tensor};

/// Token-choice routing ([`crate::moe::RouterKind::TokenChoice`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenChoice;

impl RoutingPolicy for TokenChoice {
    fn validate(&self, _config: &RoutingOptions) -> Result<()> {
        Ok(())
    }

    fn active_experts(&self, config: &RoutingOptions) -> usize {
        config.top_k
    }

    fn check_expert_parallel(&self, config: &RoutingOptions) -> Result<()> {
        if config.priority != CapacityPriority::Position {
            return Err(Error::Config(
                "expert parallelism supports token-choice routing with positional capacity priority (confidence \
                 priority needs every token of the batch in one place)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn select(
        &self,
        scores: &RouterScores,
        valid: Option<&Tensor>,
        expert_bias: Option<&Tensor>,
        options: &RoutingOptions,
    ) -> Result<Selection> {
        let probs = &scores.probs;
        let (n, e) = probs.size2()?;
        let (expert_index, gate) = select_top_k(probs, options.top_k as i64, options.normalize_gates, expert_bias)?;
        let priority = match options.priority {
            CapacityPriority::Position => None,
            CapacityPriority::Confidence => Some(probs.f_amax(-1, false)?),
        };
        Ok(Selection {
            num_tokens: n,
            num_experts: e,
            valid: valid.map(Tensor::shallow_clone),
            needs_grad: grad_mode_enabled(),
            choice: Choice::Tokens { expert_index, gate, priority },
        })
    }

    fn plan(
        &self,
        selection: &Selection,
        counts: &BatchCounts,
        options: &RoutingOptions,
        train: bool,
    ) -> Result<DispatchPlan> {
        let Choice::Tokens { expert_index, gate, priority } = &selection.choice else {
            return Err(Error::Input("token-choice planning needs a token-choice selection".into()));
        };
        let (e, k) = (selection.num_experts, options.top_k as i64);
        // Capacity counts the real tokens of the whole batch (every rank's, in parallel).
        let capacity = options
            .capacity_factor_for(train)
            .map(|cf| expert_capacity(counts.num_real_tokens(), e, k, cf, options.min_capacity as i64))
            .transpose()?;
        let limits = capacity.map(|c| counts.capacity_limits(c, expert_index.device())).transpose()?.flatten();
        let valid = selection.valid.as_ref();
        plan_token_choice_limited(expert_index, gate, e, valid, capacity, limits.as_ref(), priority.as_ref())
    }
}

/// Top-k selection after the softmax. With `selection_bias`, experts are *chosen* by
/// `probs + bias` but gated by the unbiased `probs` (DeepSeek-V3). With `normalize_gates` and
/// `k > 1` the k gates are divided by their sum (Mixtral); `k = 1` always keeps the raw probability.
///
/// # Shapes
/// `probs`: `[N, E]`; `selection_bias`: `[E]` → expert indices `[N, k]` i64 and gates `[N, k]`.
///
/// # Errors
/// [`Error::Shape`] if `k` is not in `1..=E`.
pub fn select_top_k(
    probs: &Tensor,
    k: i64,
    normalize_gates: bool,
    selection_bias: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (_, e) = probs.size2()?;
    if k < 1 || k > e {
        return Err(Error::Shape(format!("top_k ({k}) must be between 1 and the {e} experts")));
    }
    let (mut gate, expert_index) = match selection_bias {
        None => probs.f_topk(k, -1, true, true)?,
        Some(bias) => {
            let (_, index) = probs.f_add(&bias.like(probs)?)?.f_topk(k, -1, true, true)?;
            (probs.f_gather(1, &index, false)?, index)
        }
    };
    if normalize_gates && k > 1 {
        gate = gate.f_div(&gate.f_sum_dim_intlist(-1, true, gate.kind())?)?;
    }
    Ok((expert_index, gate))
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
    let dropless = limits.is_none() && capacity.is_none();
    let real = count_real(valid, n)?;
    if dropless {
        // Every real assignment is kept: `k · N_real` rows (no mask: `k · N`, known without a
        // read), and the group sizes stay on the device.
        let kept_total = k * real;
        let kept = sort.f_narrow(0, 0, kept_total)?;
        let assignment = flat_assignment.f_index_select(0, &kept)?;
        let gate = gate.f_transpose(0, 1)?.f_reshape([-1])?.f_index_select(0, &assignment)?;
        return Ok(DispatchPlan {
            num_tokens: n,
            num_slots: k,
            assignment,
            gate,
            group_sizes: GroupSizes::on_device(routed_per_expert.shallow_clone()),
            num_kept: kept_total,
            routed_per_expert,
            capacity,
            dropped_fraction: Tensor::f_zeros([], (Kind::Double, device))?,
        });
    }
    let mut keep = sorted_expert.f_lt(num_experts)?;
    let first = counts.f_cumsum(0, Kind::Int64)?.f_sub(&counts)?;
    let rank = Tensor::f_arange(k * n, int)?.f_sub(&first.f_index_select(0, &sorted_expert)?)?;
    let kept_per_expert = if let Some(limits) = limits {
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
        count_values(&sorted_expert.f_where_scalarother(&keep, num_experts)?, num_experts + 1)?.f_narrow(
            0,
            0,
            num_experts,
        )?
    } else {
        let c = capacity.unwrap_or(k * n); // dropless plans returned above
        keep = keep.f_logical_and(&rank.f_lt(c)?)?;
        routed_per_expert.f_clamp_max(c)?
    };
    // With a capacity the row count depends on the routing: the plan's one host read, the rows
    // per expert (every shape below needs their sum).
    let group_sizes = GroupSizes::read(kept_per_expert)?;
    let kept_total: i64 = group_sizes.host()?.iter().sum();
    // Kept assignments first, in expert order (a stable sort, not `masked_select`, which would
    // read the count back to the host once more).
    let kept =
        sort.f_index_select(0, &keep.f_logical_not()?.f_argsort_stable(true, 0, false)?.f_narrow(0, 0, kept_total)?)?;
    let assignment = flat_assignment.f_index_select(0, &kept)?;
    let gate = gate.f_transpose(0, 1)?.f_reshape([-1])?.f_index_select(0, &assignment)?;
    let total = k * real;
    let dropped_fraction = if total == 0 { 0.0 } else { 1.0 - kept_total as f64 / total as f64 };
    Ok(DispatchPlan {
        num_tokens: n,
        num_slots: k,
        assignment,
        gate,
        group_sizes,
        num_kept: kept_total,
        routed_per_expert,
        capacity,
        dropped_fraction: Tensor::from(dropped_fraction).f_to_device(device)?,
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
    fn earlier_tokens_win_capacity() {
        let plan = plan_token_choice(&t(&[1, 1, 1, 1, 0], [5, 1]), &half([5, 1]), 2, None, Some(2), None).unwrap();
        assert_eq!(plan.group_sizes.host().unwrap(), [1, 2]);
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![4, 0, 1]);
        assert!((plan.dropped_fraction.double_value(&[]) - 0.4).abs() < 1e-12);
        assert_eq!(Vec::<i64>::try_from(&plan.routed_per_expert).unwrap(), vec![1, 4]);
    }

    #[test]
    fn first_choices_have_priority_over_second_choices() {
        // token 0 -> (e0, e1), token 1 -> (e1, e0); capacity 1 keeps both first choices.
        let plan = plan_token_choice(&t(&[0, 1, 1, 0], [2, 2]), &half([2, 2]), 2, None, Some(1), None).unwrap();
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![0, 1]);
        assert!((plan.dropped_fraction.double_value(&[]) - 0.5).abs() < 1e-12);
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
        assert_eq!(plan.dropped_fraction.double_value(&[]), 0.0);
    }
}
