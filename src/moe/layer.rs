//! The mixture-of-experts layer: router → plan → dispatch → experts → combine (+ shared
//! experts), with per-layer auxiliary losses and statistics (Switch Transformer,
//! arXiv 2101.03961; GShard, arXiv 2006.16668; Expert Choice, arXiv 2202.09368; DeepSeekMoE,
//! arXiv 2401.06066).

use crate::dtype::Cast;
use crate::error::{Error, Result};
use crate::moe::config::{Balancing, MoeConfig};
use crate::moe::dispatch::{dispatcher_for, TokenDispatcher};
use crate::moe::experts::Experts;
use crate::moe::loss::{load_balancing_loss, router_entropy, router_z_loss};
use crate::moe::router::Router;
use crate::nn::feed_forward::{FeedForward, FeedForwardConfig};
use crate::nn::var_builder::VarBuilder;
use crate::shape::{expect_float, mask_to_bool};
use tch::Tensor;

/// Per-layer auxiliary record of an MoE forward pass (typed, no global lists).
#[derive(Debug)]
pub struct MoeAux {
    /// Unscaled load-balancing loss over real tokens (1.0 = balanced), scalar f32, differentiable.
    pub load_balancing_loss: Tensor,
    /// Unscaled router z-loss over real tokens, scalar f32, differentiable.
    pub z_loss: Tensor,
    /// Assignments per expert before capacity, real tokens only, `[E]` i64.
    pub assignments_per_expert: Tensor,
    /// Token choice: fraction of assignments dropped for lack of capacity; expert choice:
    /// fraction of real tokens no expert picked. Scalar f64 on the layer's device (not read back:
    /// a training step reads it with its other statistics).
    pub dropped_fraction: Tensor,
    /// Mean router entropy per real token in nats, scalar f32, detached.
    pub router_entropy: Tensor,
    /// Capacity per expert used in this pass (`None` = dropless).
    pub capacity: Option<i64>,
    /// Number of real (unmasked) tokens.
    pub num_real_tokens: i64,
}

/// Mixture-of-experts feed-forward layer.
///
/// Parameters: `router.weight` `[E, D]` (and the buffer `router.expert_bias` `[E]` with
/// aux-loss-free balancing), `experts.w_in` `[E, D, F]`, `experts.w_gate` `[E, D, F]` (SwiGLU),
/// `experts.w_out` `[E, F, D]`, and `shared.{w_in,w_gate,w_out}.weight` with shared experts.
#[derive(Debug)]
pub struct MoeLayer {
    /// The router.
    pub router: Router,
    /// The routed experts.
    pub experts: Experts,
    /// Shared experts (one dense FFN of width `num_shared_experts · d_ff`).
    pub shared: Option<FeedForward>,
    dispatcher: Box<dyn TokenDispatcher>,
    config: MoeConfig,
}

impl MoeLayer {
    /// Builds the layer under the builder's path. In one process it holds every expert and
    /// dispatches locally ([`crate::moe::SortDispatcher`]); in a group that exchanges rows
    /// ([`crate::parallel::ProcessGroup::new`]) the router (and shared experts) are replicated, the
    /// experts are this rank's slice `r·E/R .. (r+1)·E/R`, initialised exactly as in the full
    /// layer, and tokens travel over the group ([`crate::moe::ExpertParallelDispatcher`]).
    /// Capacity and the layer's statistics are then global; each rank's auxiliary losses in
    /// [`MoeAux`] are its share, which add up over ranks to the whole batch's.
    ///
    /// # Errors
    /// [`Error::Config`] from [`MoeConfig::validate`]; in an expert-parallel group, if `E` is not a
    /// multiple of the ranks, or for expert-choice routing and batch-prioritized capacity, which
    /// need every token of the batch in one place.
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &MoeConfig) -> Result<Self> {
        config.validate()?;
        let vb = vb.into();
        let dispatcher = dispatcher_for(vb.group(), config)?;
        let router = Router::new(&vb / "router", d_model, config)?;
        let experts =
            Experts::new(&vb / "experts", config.num_experts, d_model, config.d_ff, config.activation, config.backend)?;
        let shared = (config.num_shared_experts > 0)
            .then(|| {
                let ffn =
                    FeedForwardConfig { d_ff: config.num_shared_experts * config.d_ff, activation: config.activation };
                FeedForward::new(&vb / "shared", d_model, &ffn)
            })
            .transpose()?;
        Ok(Self { router, experts, shared, dispatcher, config: config.clone() })
    }

    /// The layer's configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// [`MoeLayer::forward_masked_t`] without a mask (every token is real).
    ///
    /// # Errors
    /// As [`MoeLayer::forward_masked_t`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, MoeAux)> {
        self.forward_masked_t(x, None, train)
    }

    /// Routes every real token, runs the experts, and returns the gate-weighted sum of their
    /// outputs plus the shared experts' output. Masked tokens (mask `false`/0) take no capacity,
    /// get an exact-zero output, and are left out of the losses and statistics. Tokens dropped by
    /// every chosen expert get a zero routed output (the block's residual carries them).
    ///
    /// `train` selects the capacity factor (`capacity_factor` / `eval_capacity_factor`) and
    /// enables router jitter.
    ///
    /// # Shapes
    /// `x`: `[..., D]` (e.g. `[B, T, D]`); `mask`: `x`'s shape without `D` (e.g. `[B, T]`), bool
    /// or integer → output of `x`'s shape and dtype, and a [`MoeAux`].
    ///
    /// # Errors
    /// [`Error::Shape`] if the last dimension is not `D`, `x` is not floating point or on another
    /// device, holds no tokens, or the mask's shape does not match.
    pub fn forward_masked_t(&self, x: &Tensor, mask: Option<&Tensor>, train: bool) -> Result<(Tensor, MoeAux)> {
        expect_float(x, "MoE input")?;
        let size = x.size();
        let d = self.router.weight.size()[1];
        if size.last().copied() != Some(d) {
            return Err(Error::Shape(format!("MoE input must have last dimension {d}, got shape {size:?}")));
        }
        let tokens = self.dispatcher.layer_input(&x.f_reshape([-1, d])?)?;
        let valid = mask.map(|m| flat_mask(m, &size[..size.len() - 1], x.device())).transpose()?;
        let valid = valid.as_ref();

        let (policy, options) = (self.config.router.policy(), self.config.routing_options());
        let scores = self.router.scores(&tokens, train)?;
        let selection = policy.select(&scores, valid, self.router.expert_bias.as_ref(), &options)?;
        let batch = self.dispatcher.count_batch(&selection)?;
        if batch.num_tokens() == 0 {
            return Err(Error::Shape(format!("MoE input holds no tokens (shape {size:?})")));
        }
        let plan = policy.plan(&selection, &batch, &options, train)?;
        let mut out = self.dispatcher.run(&tokens, &plan, &batch, &self.experts)?;
        if let Some(shared) = &self.shared {
            let mut y = shared.forward(&tokens)?;
            if let Some(v) = valid {
                y = y.f_mul(&v.like(&y)?.f_unsqueeze(1)?)?;
            }
            out = out.f_add(&y)?;
        }
        // Statistics of the whole batch: global fractions, and this part's share of each mean.
        let routed = batch.routed_per_expert(&plan.routed_per_expert)?;
        let aux = MoeAux {
            load_balancing_loss: batch.share(load_balancing_loss(&scores.probs, &routed, valid)?)?,
            z_loss: batch.share(router_z_loss(&scores.logits, valid)?)?,
            router_entropy: batch.share(router_entropy(&scores.probs, valid)?)?,
            assignments_per_expert: routed,
            dropped_fraction: batch.dropped_fraction(plan.capacity, &plan.dropped_fraction)?,
            capacity: plan.capacity,
            num_real_tokens: batch.num_real_tokens(),
        };
        Ok((out.f_view(size.as_slice())?, aux))
    }

    /// Applies one aux-loss-free bias update from the assignment counts of a whole optimizer
    /// step (no-op unless `balancing` is aux-loss-free).
    ///
    /// # Shapes
    /// `counts`: `[E]`.
    ///
    /// # Errors
    /// [`Error::Shape`] if `counts` is not `[E]`.
    pub fn update_expert_bias(&self, counts: &Tensor) -> Result<()> {
        match self.config.balancing {
            Balancing::AuxFree { bias_update_rate } => self.router.update_expert_bias(counts, bias_update_rate),
            Balancing::AuxLoss => Ok(()),
        }
    }
}

/// Flattens a token mask to `[N]` bool after checking its shape.
fn flat_mask(mask: &Tensor, leading: &[i64], device: tch::Device) -> Result<Tensor> {
    if mask.size() != leading {
        return Err(Error::Shape(format!("token mask must have shape {leading:?}, got {:?}", mask.size())));
    }
    Ok(mask_to_bool(mask, "token mask")?.f_reshape([-1])?.f_to_device(device)?)
}
