//! Expert choice: each expert picks its top-`C` tokens (Zhou et al. 2022, "Mixture-of-Experts
//! with Expert Choice Routing", arXiv 2202.09368, §3.1).

use super::{Choice, RouterScores, RoutingOptions, RoutingPolicy, Selection};
use crate::error::{ensure_config, Error, Result};
use crate::host;
use crate::moe::counts::BatchCounts;
use crate::moe::plan::{count_real, count_values, expert_capacity, DispatchPlan, GroupSizes};
use crate::parallel::grad_mode_enabled;
use tch::{Kind, Tensor};

/// Expert-choice routing ([`crate::moe::RouterKind::ExpertChoice`]): `C = ceil(cf · N / E)`
/// tokens per expert; a token may get 0..E experts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpertChoice;

impl RoutingPolicy for ExpertChoice {
    fn validate(&self, config: &RoutingOptions) -> Result<()> {
        for (name, cf) in
            [("capacity_factor", config.capacity_factor), ("eval_capacity_factor", config.eval_capacity_factor)]
        {
            ensure_config(cf.is_some(), || {
                format!("expert_choice routing needs a {name} (experts pick C = cf·N/E tokens)")
            })?;
        }
        ensure_config(config.top_k == 1, || {
            format!(
                "top_k ({}) is not used by expert_choice routing (experts pick C = cf·N/E tokens); leave it at 1",
                config.top_k
            )
        })
    }

    fn active_experts(&self, config: &RoutingOptions) -> usize {
        // On average cf experts per token (C = cf·N/E tokens per expert).
        (config.capacity_factor.unwrap_or(1.0).ceil() as usize).clamp(1, config.num_experts)
    }

    fn default_capacity_factor(&self) -> Option<f64> {
        Some(2.0) // Zhou et al.
    }

    fn check_expert_parallel(&self, _config: &RoutingOptions) -> Result<()> {
        Err(Error::Config(
            "expert parallelism supports token-choice routing only (expert choice needs every token of the batch in \
             one place)"
                .into(),
        ))
    }

    fn select(
        &self,
        scores: &RouterScores,
        valid: Option<&Tensor>,
        _expert_bias: Option<&Tensor>,
        _options: &RoutingOptions,
    ) -> Result<Selection> {
        let (n, e) = scores.probs.size2()?;
        Ok(Selection {
            num_tokens: n,
            num_experts: e,
            valid: valid.map(Tensor::shallow_clone),
            needs_grad: grad_mode_enabled(),
            choice: Choice::Experts { probs: scores.probs.shallow_clone() },
        })
    }

    fn plan(
        &self,
        selection: &Selection,
        counts: &BatchCounts,
        options: &RoutingOptions,
        train: bool,
    ) -> Result<DispatchPlan> {
        let Choice::Experts { probs } = &selection.choice else {
            return Err(Error::Input("expert-choice planning needs an expert-choice selection".into()));
        };
        let cf = options
            .capacity_factor_for(train)
            .ok_or_else(|| Error::Config("expert_choice routing needs a capacity factor".into()))?;
        let capacity =
            expert_capacity(counts.num_real_tokens(), selection.num_experts, 1, cf, options.min_capacity as i64)?;
        plan_expert_choice(probs, selection.valid.as_ref(), capacity)
    }
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
    // The row count depends on the routing: one read of the rows per expert.
    let group_sizes = GroupSizes::read(keep.f_sum_dim_intlist(1, false, Kind::Int64)?)?;
    let kept_total: i64 = group_sizes.host()?.iter().sum();
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
    let routed_per_expert = group_sizes.tensor().shallow_clone();
    Ok(DispatchPlan {
        num_tokens: n,
        num_slots,
        assignment,
        gate,
        group_sizes,
        num_kept: kept_total,
        routed_per_expert,
        capacity: Some(c),
        dropped_fraction: Tensor::from(dropped_fraction).f_to_device(device)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expert_choice_picks_top_tokens_per_expert_and_assigns_slots() {
        // 3 tokens, 2 experts, capacity 2.
        let probs = Tensor::from_slice(&[0.9f32, 0.1, 0.6, 0.4, 0.2, 0.8]).view([3, 2]);
        let plan = plan_expert_choice(&probs, None, 2).unwrap();
        assert_eq!(plan.group_sizes.host().unwrap(), [2, 2]);
        // expert 0 takes tokens 0, 1; expert 1 takes tokens 2, 1 -> token 1 has two slots.
        assert_eq!(plan.num_slots, 2);
        let tokens = Vec::<i64>::try_from(plan.tokens().unwrap()).unwrap();
        assert_eq!(tokens, vec![0, 1, 2, 1]);
        assert_eq!(Vec::<i64>::try_from(&plan.assignment).unwrap(), vec![0, 1, 2, 4]);
        assert_eq!(Vec::<f32>::try_from(&plan.gate).unwrap(), vec![0.9, 0.6, 0.8, 0.4]);
        assert_eq!(plan.dropped_fraction.double_value(&[]), 0.0);
        let masked = plan_expert_choice(&probs, Some(&Tensor::from_slice(&[true, false, true])), 2).unwrap();
        assert_eq!(Vec::<i64>::try_from(masked.tokens().unwrap()).unwrap(), vec![0, 2, 2, 0]);
    }
}
