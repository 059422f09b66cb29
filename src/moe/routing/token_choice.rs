//! Token choice: each token picks its top-k experts (Switch k = 1, arXiv 2101.03961; GShard and
//! Mixtral k = 2, arXiv 2006.16668 and 2401.04088), capacity filled by position or confidence.

use super::CapacityPriority;
use super::{RoutingInput, RoutingOptions, RoutingPolicy};
use crate::error::{Error, Result};
use crate::moe::batch::BatchCounts;
use crate::moe::dispatch::LocalRouting;
use crate::moe::plan::{expert_capacity, plan_token_choice_limited, DispatchPlan};
use tch::Tensor;

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

    fn plan(&self, input: &RoutingInput) -> Result<(DispatchPlan, BatchCounts)> {
        let config = &input.options;
        let probs = &input.scores.probs;
        let (n, e) = probs.size2()?;
        let k = config.top_k as i64;
        let (index, gate) = select_top_k(probs, k, config.normalize_gates, input.expert_bias)?;
        // Capacity counts the real tokens of the whole batch (every rank's, in parallel).
        let batch = input.dispatcher.count_batch(&LocalRouting {
            num_tokens: n,
            valid: input.valid,
            expert_index: Some(&index),
            num_experts: e,
            needs_grad: input.needs_grad,
        })?;
        let cf = config.capacity_factor_for(input.train);
        let min_capacity = config.min_capacity as i64;
        let capacity = cf.map(|cf| expert_capacity(batch.num_real_tokens(), e, k, cf, min_capacity)).transpose()?;
        let limits = capacity.map(|c| batch.capacity_limits(c, input.device)).transpose()?.flatten();
        let priority = match config.priority {
            CapacityPriority::Position => None,
            CapacityPriority::Confidence => Some(probs.f_amax(-1, false)?),
        };
        let plan =
            plan_token_choice_limited(&index, &gate, e, input.valid, capacity, limits.as_ref(), priority.as_ref())?;
        Ok((plan, batch))
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
            let (_, index) = probs.f_add(&bias.f_to_kind(probs.kind())?)?.f_topk(k, -1, true, true)?;
            (probs.f_gather(1, &index, false)?, index)
        }
    };
    if normalize_gates && k > 1 {
        gate = gate.f_div(&gate.f_sum_dim_intlist(-1, true, gate.kind())?)?;
    }
    Ok((expert_index, gate))
}
