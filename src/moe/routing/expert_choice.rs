//! Expert choice: each expert picks its top-`C` tokens (Zhou et al. 2022, "Mixture-of-Experts
//! with Expert Choice Routing", arXiv 2202.09368, §3.1).

use super::{RoutingInput, RoutingOptions, RoutingPolicy};
use crate::error::{ensure_config, Error, Result};
use crate::moe::batch::BatchCounts;
use crate::moe::dispatch::LocalRouting;
use crate::moe::plan::{expert_capacity, plan_expert_choice, DispatchPlan};

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

    fn plan(&self, input: &RoutingInput) -> Result<(DispatchPlan, BatchCounts)> {
        let probs = &input.scores.probs;
        let (n, e) = probs.size2()?;
        let cf = input
            .options
            .capacity_factor_for(input.train)
            .ok_or_else(|| Error::Config("expert_choice routing needs a capacity factor".into()))?;
        let batch = input.dispatcher.count_batch(&LocalRouting {
            num_tokens: n,
            valid: input.valid,
            expert_index: None,
            num_experts: e,
            needs_grad: input.needs_grad,
        })?;
        let capacity = expert_capacity(batch.num_real_tokens(), e, 1, cf, input.options.min_capacity as i64)?;
        Ok((plan_expert_choice(probs, input.valid, capacity)?, batch))
    }
}
